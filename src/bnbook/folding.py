"""Fold inference-mode BN layers into the linear layer before or after them.

In inference mode a BN layer is a fixed affine map per channel,
``y = s * z + t`` with ``s = gamma / sqrt(moving_variance + epsilon)`` and
``t = beta - moving_mean * s``. It can disappear into a neighbouring linear layer:

**Backward**, into the layer before it. When ``z = x W + b`` is the output of a Dense
or convolution layer (no activation in between), the two collapse into one layer with

    W' = W * s                      (per output channel)
    b' = beta + (b - moving_mean) * s

Every output channel of ``Dense``, ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D`` (output
channel ``c * depth_multiplier + m`` comes from ``kernel[..., c, m]``), the pointwise
kernel of ``SeparableConv1D/2D`` and ``Conv1D/2D/3DTranspose`` (kernel
``(..., out, in)``) is linear in its own slice of the kernel plus its bias, so the
fold is exact for all of them.

**Forward**, into the layer after it (BN at the model input, or BN after an
activation followed by a linear layer). When BN's output ``s * z + t`` feeds a Dense
or convolution layer, that layer computes ``(s * z + t) W + b``: its kernel is scaled
per *input* channel, ``W' = diag(s) W``, and the shift becomes part of its bias,
``b' = b + W^T t``, where for a convolution the sum runs over the kernel's spatial taps
too. This is exact for ``Dense`` and for ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D`` and
``SeparableConv1D/2D`` with ``padding="valid"``, where every output position sees
every tap. With ``padding="same"`` (or ``"causal"``) the layer pads its input with
zeros, which BN would have turned into ``t``: at the borders the folded layer adds a
shift the original did not, so the fold is inexact there. Such a BN is left in place
and reported, unless ``allow_inexact=True``. Transposed convolutions give their output
positions different numbers of taps, so no forward fold is offered for them.

A forward fold also passes through layers that commute with BN's per-channel map in
inference mode: ``Dropout`` (the identity there), ``Flatten`` (each channel's ``s`` and
``t`` repeat once per position, so the Dense kernel's rows are scaled by the tiled
``s``) and ``GlobalAveragePooling1D/2D/3D`` without ``keepdims`` (an average of
``s * z + t`` is ``s * mean(z) + t``), into the ``Dense`` layer after them.

:func:`fold_batchnorm` applies this to every BN layer it can (backward first, forward
when backward is not possible), in the model and in the Sequential/Functional models
nested in it, and leaves the others in place, saying why (:func:`plan_folding` gives
the same report without folding; :func:`fold_report` returns the folded model with a
:class:`FoldReport`, and with ``verify=x`` the largest difference between the two
models' outputs). Anything else in the graph (layers with several inputs, shared
layers, raw tensor operations such as ``keras.ops.add`` or ``h + h``) is copied as it is.

Mixed precision: a layer that computes in float16 or bfloat16 is folded only into a
float32 copy, ``fold_batchnorm(model, dtype="float32")``; the copy then computes in
float32 everywhere, and differs from the original by the original's float16 rounding.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from keras.src.models.functional import Functional  # the class of keras.Model(inputs, outputs)

from bnbook._checks import check_model
from bnbook.probes import BN_TYPES

__all__ = [
    "FoldDecision",
    "FoldReport",
    "FoldingWarning",
    "fold_batchnorm",
    "fold_report",
    "folded_weights",
    "plan_folding",
]

L = keras.layers
# Exact types only (type(layer) in _FOLDABLE): a subclass may override call() and compute something else.
# For each layer BN can be folded into: the weight that holds the output channels and
# where they are in it ("last" axis, "depthwise" (..., in, multiplier), "transposed" (..., out, in)).
_FOLDABLE: dict[type, tuple[str, str]] = {
    L.Dense: ("kernel", "last"),
    L.Conv1D: ("kernel", "last"),
    L.Conv2D: ("kernel", "last"),
    L.Conv3D: ("kernel", "last"),
    L.DepthwiseConv1D: ("kernel", "depthwise"),
    L.DepthwiseConv2D: ("kernel", "depthwise"),
    L.SeparableConv1D: ("pointwise_kernel", "last"),
    L.SeparableConv2D: ("pointwise_kernel", "last"),
    L.Conv1DTranspose: ("kernel", "transposed"),
    L.Conv2DTranspose: ("kernel", "transposed"),
    L.Conv3DTranspose: ("kernel", "transposed"),
}
# The layers a BN can be folded forward into (exact with padding="valid", and always for Dense).
_FORWARD = (
    L.Dense,
    L.Conv1D,
    L.Conv2D,
    L.Conv3D,
    L.DepthwiseConv1D,
    L.DepthwiseConv2D,
    L.SeparableConv1D,
    L.SeparableConv2D,
)
_KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")
_DTYPES = (None, "float32")


class FoldingWarning(UserWarning):
    """A BN layer was left in place because it cannot be folded (exactly)."""


@dataclass(frozen=True)
class FoldDecision:
    """What :func:`fold_batchnorm` does with one BN layer (names of nested layers are ``model/layer``).

    Attributes:
        bn: The BN layer's name.
        into: The layer it is (or would be) folded into, or None.
        folded: Whether it is folded.
        reason: ``"folded"``, or why not (or why the fold is inexact).
        direction: ``"backward"`` (into the layer before it), ``"forward"`` (into the
            layer after it), or None when it is not folded.
        exact: For a folded BN: False only for a forward fold into a
            ``padding="same"``/``"causal"`` convolution that ``allow_inexact=True`` asked
            for, else True. None for a BN left in place.
    """

    bn: str
    into: str | None
    folded: bool
    reason: str
    direction: str | None = None
    exact: bool | None = None


@dataclass
class FoldReport:
    """What :func:`fold_report` did: the folded model, the decisions, and the check on ``verify``.

    Attributes:
        model: The folded copy.
        decisions: One :class:`FoldDecision` per BN layer.
        layers_removed, parameters_removed: How much smaller the copy is.
        dtype: The ``dtype`` argument (None: every layer kept its own).
        max_difference: With ``verify=x``: the largest absolute difference between the
            original's and the copy's outputs on ``x`` in inference mode; else None.
        max_output: The largest absolute output of the original on ``x`` (the scale of
            ``max_difference``); None without ``verify``.
        rounding: The original's own rounding error on ``x``: the largest absolute
            difference between the unfolded model at the copy's precision (the original,
            or with ``dtype="float32"`` its unfolded float32 copy) and a float64 rebuild of
            it; None without ``verify`` or when no float64 rebuild could be made.
        checked_difference: The difference the check uses: the largest absolute
            difference between the folded copy and the unfolded model at the copy's
            precision (equal to ``max_difference`` when ``dtype`` is None).
        tolerance: The largest ``checked_difference`` accepted (``atol``, or the default
            given in :func:`fold_report`); None without ``verify``.
    """

    model: keras.Model
    decisions: list[FoldDecision] = field(default_factory=list)
    layers_removed: int = 0
    parameters_removed: int = 0
    dtype: str | None = None
    max_difference: float | None = None
    max_output: float | None = None
    rounding: float | None = None
    checked_difference: float | None = None
    tolerance: float | None = None

    @property
    def folded(self) -> list[FoldDecision]:
        """The decisions of the BN layers that were folded."""
        return [d for d in self.decisions if d.folded]

    @property
    def left(self) -> list[FoldDecision]:
        """The decisions of the BN layers left in place."""
        return [d for d in self.decisions if not d.folded]

    @property
    def verified(self) -> bool | None:
        """Whether ``checked_difference <= tolerance`` (None without ``verify``)."""
        if self.checked_difference is None or self.tolerance is None:
            return None
        return self.checked_difference <= self.tolerance

    def __str__(self) -> str:
        backward = sum(d.direction == "backward" for d in self.folded)
        lines = [
            f"folded {len(self.folded)} of {len(self.decisions)} BN layers "
            f"({backward} backward, {len(self.folded) - backward} forward); "
            f"{self.layers_removed} layers and {self.parameters_removed} parameters removed"
        ]
        lines += [f"inexact: {d.bn} -> {d.into}: {d.reason}" for d in self.folded if not d.exact]
        lines += [f"left: {d.bn}: {d.reason}" for d in self.left]
        if self.max_difference is not None:
            verdict = "within" if self.verified else "ABOVE"
            rounding = "unknown" if self.rounding is None else f"{self.rounding:.3g}"
            lines.append(
                f"verify: largest |difference| {self.max_difference:.3g} (largest |output| {self.max_output:.3g}, "
                f"the original's own float rounding {rounding}); checked {self.checked_difference:.3g}, "
                f"{verdict} the tolerance {self.tolerance:.3g}"
            )
        return "\n".join(lines)


def _vector(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        bad = np.flatnonzero(~np.isfinite(array.reshape(-1)))
        raise ValueError(f"{name} has non-finite values (at channels {bad[:8].tolist()})")
    return array


def _scale_and_shift(
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    epsilon: float,
    channels: int | None = None,
    context: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """BN's inference map as ``s * z + t`` (float64), with every argument checked."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating, np.integer)):
        raise TypeError(f"epsilon must be a number, got {epsilon!r} of type {type(epsilon).__name__}")
    if not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon}")
    mean = _vector(moving_mean, "moving_mean")
    variance = _vector(moving_variance, "moving_variance")
    channels = mean.shape[0] if channels is None and mean.ndim == 1 else channels
    vectors = {"moving_mean": mean, "moving_variance": variance}
    for name, value in (("gamma", gamma), ("beta", beta)):
        if value is not None:
            vectors[name] = _vector(value, name)
    for name, value in vectors.items():
        if value.shape != (channels,):
            raise ValueError(f"{name} has shape {value.shape}, expected ({channels},){context}")
    if np.any(variance + epsilon <= 0):
        bad = np.flatnonzero(variance + epsilon <= 0)
        raise ValueError(
            f"moving_variance + epsilon must be > 0, got {(variance + epsilon)[bad[:8]].tolist()} "
            f"at channels {bad[:8].tolist()}"
        )
    scale = vectors.get("gamma", np.ones(channels)) / np.sqrt(variance + epsilon)
    return scale, vectors.get("beta", np.zeros(channels)) - mean * scale


def folded_weights(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    epsilon: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(W', b')``: the kernel and bias of a layer followed by an inference-mode BN.

    Args:
        kernel: The layer's kernel, output channels on the last axis (Keras's layout
            for Dense and ConvND, whatever the data format).
        bias: The layer's bias, or ``None`` (``use_bias=False``).
        gamma: BN's scale, or ``None`` (``scale=False``, i.e. 1).
        beta: BN's offset, or ``None`` (``center=False``, i.e. 0).
        moving_mean, moving_variance: BN's moving statistics.
        epsilon: BN's epsilon, a finite number >= 0.

    Returns:
        float32 arrays (computed in float64).

    Raises:
        ValueError: The channel counts do not match (the message gives the shapes); a
            value is not finite; ``epsilon`` < 0; ``moving_variance + epsilon`` <= 0 in
            some channel (the message names them).
        TypeError: ``epsilon`` is not a number.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    channels = kernel.shape[-1]
    context = f" to match the kernel {kernel.shape}"
    scale, shift = _scale_and_shift(gamma, beta, moving_mean, moving_variance, epsilon, channels, context)
    bias64 = np.zeros(channels) if bias is None else _vector(bias, "bias")
    if bias64.shape != (channels,):
        raise ValueError(f"bias has shape {bias64.shape}, expected ({channels},){context}")
    new_kernel = kernel * scale
    new_bias = bias64 * scale + shift
    return new_kernel.astype(np.float32), new_bias.astype(np.float32)


def _bn_map(bn: L.Layer) -> tuple[np.ndarray, np.ndarray]:
    return _scale_and_shift(
        bn.gamma.numpy() if bn.scale else None,
        bn.beta.numpy() if bn.center else None,
        bn.moving_mean.numpy(),
        bn.moving_variance.numpy(),
        float(bn.epsilon),
    )


def _forward_into(
    layer: L.Layer, weights: dict[str, np.ndarray], bias: np.ndarray, bn: L.Layer, tile: int = 1
) -> np.ndarray:
    """Fold ``bn`` (before ``layer``) into ``weights`` in place; return the new bias (float64).

    ``tile`` > 1: a Flatten between them (channels last) repeats BN's channels ``tile`` times.
    """
    scale, shift = _bn_map(bn)
    scale, shift = np.tile(scale, tile), np.tile(shift, tile)
    if isinstance(layer, L.Dense):  # kernel (in, out)
        kernel = weights["kernel"]
        weights["kernel"] = kernel * scale[:, None]
        return bias + shift @ kernel
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        # depthwise (taps..., in, multiplier), then pointwise (1..., in * multiplier, out)
        depthwise, pointwise = weights["depthwise_kernel"], weights["pointwise_kernel"]
        weights["depthwise_kernel"] = depthwise * scale[:, None]
        after_depthwise = (depthwise * shift[:, None]).reshape(-1, depthwise.shape[-2] * depthwise.shape[-1]).sum(0)
        return bias + after_depthwise @ pointwise.reshape(-1, pointwise.shape[-1])
    kernel = weights["kernel"]
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):  # (taps..., in, multiplier)
        weights["kernel"] = kernel * scale[:, None]
        return bias + (kernel * shift[:, None]).reshape(-1, kernel.shape[-2] * kernel.shape[-1]).sum(0)
    # ConvND: (taps..., in / groups, out); output o of group g = o // (out / groups) reads
    # input channels g * (in / groups) + i
    per_group, out = kernel.shape[-2], kernel.shape[-1]
    group = np.arange(out) // (out // layer.groups)
    index = group[None, :] * per_group + np.arange(per_group)[:, None]  # (in / groups, out): input channel
    weights["kernel"] = kernel * scale[index]
    return bias + (kernel * shift[index]).reshape(-1, out).sum(0)


def _folded_layer_weights(
    layer: L.Layer, before: L.Layer | None, after: L.Layer | None, tile: int = 1
) -> dict[str, np.ndarray]:
    """The weights of ``layer`` with ``before`` folded forward and ``after`` folded backward, by name."""
    weights = {
        name: getattr(layer, name).numpy().astype(np.float64)
        for name in _KERNELS
        if getattr(layer, name, None) is not None
    }
    name, layout = _FOLDABLE[type(layer)]
    channels = weights[name].shape[-2] if layout == "transposed" else None
    if layout == "depthwise":
        channels = weights[name].shape[-2] * weights[name].shape[-1]
    elif layout == "last":
        channels = weights[name].shape[-1]
    bias = layer.bias.numpy().astype(np.float64) if layer.use_bias else np.zeros(channels)
    if before is not None:
        bias = _forward_into(layer, weights, bias, before, tile)
    if after is not None:
        kernel = weights[name]
        # Bring the output channels to the last axis, as folded_weights wants them.
        if layout == "depthwise":  # (..., in, multiplier) -> (..., in * multiplier): channel c * multiplier + m
            as_last = kernel.reshape(*kernel.shape[:-2], kernel.shape[-2] * kernel.shape[-1])
        elif layout == "transposed":  # (..., out, in) -> (..., in, out)
            as_last = np.swapaxes(kernel, -1, -2)
        else:
            as_last = kernel
        scale, shift = _bn_map(after)
        new_kernel = as_last * scale
        bias = bias * scale + shift
        weights[name] = np.swapaxes(new_kernel, -1, -2) if layout == "transposed" else new_kernel.reshape(kernel.shape)
    weights["bias"] = bias
    return {name: value.astype(np.float32) for name, value in weights.items()}


def _check_model(model: Any) -> None:
    check_model(model)
    if not model.built or (isinstance(model, keras.Sequential) and _graph(model) is None):
        raise ValueError("the model is not built: call it on data or give it an Input first")
    if _graph(model) is None:
        raise TypeError(
            f"{model.name!r} is a subclassed model ({type(model).__name__}): its graph is not visible; "
            "fold the Sequential or Functional models it is made of"
        )


def _graph(model: keras.Model) -> Functional | None:
    """The Functional graph of a Sequential or Functional model; None for other (subclassed) models."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return model if isinstance(model, Functional) else None


def _channel_axis(layer: L.Layer, rank: int) -> int:
    if isinstance(layer, L.Dense):
        return rank - 1
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else rank - 1


def _a(name: str) -> str:
    return f"an {name}" if name[:1] in "AEIOU" else f"a {name}"


def _bn_base(layer: L.Layer) -> type | None:
    """The BN class ``layer`` is (or derives from), or None."""
    return next((base for base in BN_TYPES if isinstance(layer, base)), None)


@dataclass
class _Edge:
    """One BN layer of a graph, the layer it is folded into (before or after it), and the decision."""

    bn: L.Layer
    target: Any
    decision: FoldDecision
    tile: int = 1  # forward through a Flatten: how many times BN's channels repeat in the target's input


@dataclass
class _GraphInfo:
    nodes: list
    calls: dict[int, int]  # operation -> number of calls in this graph
    uses: dict[int, int]  # tensor -> number of uses in this graph (as an input or an output)
    consumers: dict[int, list]  # tensor -> the nodes that take it as an input


def _graph_info(graph: Functional) -> _GraphInfo:
    nodes = [node for depth_nodes in graph._nodes_by_depth.values() for node in depth_nodes]
    info = _GraphInfo(nodes, {}, {}, {})
    for node in nodes:
        info.calls[id(node.operation)] = info.calls.get(id(node.operation), 0) + 1
        for tensor in node.input_tensors:
            info.uses[id(tensor)] = info.uses.get(id(tensor), 0) + 1
            info.consumers.setdefault(id(tensor), []).append(node)
    for tensor in keras.tree.flatten(graph.outputs):
        info.uses[id(tensor)] = info.uses.get(id(tensor), 0) + 1
    return info


def _edges(model: keras.Model, options: dict[str, Any], prefix: str = "") -> list[_Edge]:
    """Every BN layer of ``model``'s graph and of the graphs nested in it, with its decision."""
    graph = _graph(model)
    info = _graph_info(graph)
    edges, seen = [], set()
    for operation in graph.operations:
        if id(operation) in seen:
            continue
        seen.add(id(operation))
        if isinstance(operation, keras.Model) and _graph(operation) is not None:
            edges += _edges(operation, options, f"{prefix}{operation.name}/")
        elif _bn_base(operation) is not None:
            bn_nodes = [node for node in info.nodes if node.operation is operation]
            edges.append(_decide(operation, bn_nodes, info, prefix, options))
        elif isinstance(operation, L.Layer):  # BN inside a layer whose graph is not visible
            for inner in operation._flatten_layers(include_self=False):
                if isinstance(inner, BN_TYPES):
                    reason = f"inside {operation.name!r} ({type(operation).__name__}), whose graph is not visible"
                    edges.append(_Edge(inner, None, FoldDecision(f"{prefix}{inner.name}", None, False, reason)))
    return edges


def _dtype_problem(layers: list[L.Layer], options: dict[str, Any]) -> str | None:
    """Why a layer's precision stops the fold (naming that layer), or None."""
    if options["dtype"] is not None:
        return None  # the copy computes in options["dtype"]
    for layer in layers:
        if layer.compute_dtype != "float32":
            return (
                f"{layer.name} computes in {layer.compute_dtype}; only float32 is folded "
                "(fold_batchnorm(model, dtype='float32') folds into a float32 copy)"
            )
    return None


def _layer_problem(layer: Any, info: _GraphInfo, role: str) -> str | None:
    """Why ``layer`` (the layer before or after a BN: ``role`` "follows" or "feeds") cannot take the fold, or None."""
    if not isinstance(layer, L.Layer):
        return f"{role} the operation {layer.name!r} ({type(layer).__name__}), not a layer"
    if isinstance(layer, keras.Model):
        return f"{role} the nested model {layer.name!r}, not a Dense or convolution layer"
    if type(layer) not in _FOLDABLE or (role == "feeds" and type(layer) not in _FORWARD):
        kinds = "Dense or convolution" if role == "follows" else "Dense or (non-transposed) convolution"
        return f"{role} {layer.name!r}, {_a(type(layer).__name__)} layer, not a {kinds} layer"
    if info.calls.get(id(layer), 0) != 1:
        return f"{layer.name} is shared (called more than once)"
    if getattr(layer.dtype_policy, "quantization_mode", None) is not None:
        return f"{layer.name} is quantized"
    if getattr(layer, "lora_enabled", False):
        return f"{layer.name} has LoRA enabled"
    return None


def _backward(bn: L.Layer, tensor: Any, info: _GraphInfo, options: dict[str, Any]) -> tuple[Any, str | None]:
    """The layer before ``bn`` and why it cannot take the fold (None: it can)."""
    producer = tensor._keras_history.operation
    if producer is None or isinstance(producer, L.InputLayer):
        return None, "no layer before it (it normalises a model input)"
    problem = _layer_problem(producer, info, "follows")
    if problem is not None:
        return producer, problem
    problem = _dtype_problem([producer, bn], options)
    if problem is not None:
        return producer, problem
    if producer.activation is not keras.activations.linear:
        act = getattr(producer.activation, "__name__", str(producer.activation))
        return producer, f"{producer.name} applies activation {act!r} before BN"
    if info.uses.get(id(tensor), 0) != 1:
        return producer, f"the output of {producer.name} is used elsewhere too"
    rank = len(tensor.shape)
    if bn.axis % rank != _channel_axis(producer, rank):
        return producer, f"its axis {bn.axis} is not the channel axis of {producer.name}"
    return producer, None


def _single_consumer(tensor: Any, info: _GraphInfo) -> Any:
    consumers = info.consumers.get(id(tensor), [])
    return consumers[0] if info.uses.get(id(tensor), 0) == 1 and len(consumers) == 1 else None


def _through(bn: L.Layer, rank: int, node: Any, info: _GraphInfo) -> int | None:
    """If ``node`` calls a layer that commutes with BN's per-channel map at inference (Dropout,
    Flatten or GlobalAveragePooling with BN's axis as its channel axis): how many times each of
    BN's channels appears in its output (Flatten: the positions); else None."""
    layer = node.operation
    passes = (L.Dropout, L.Flatten, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D)
    if type(layer) not in passes or info.calls.get(id(layer), 0) != 1 or len(node.output_tensors) != 1:
        return None
    if node.arguments.kwargs.get("training") is True:
        return None  # a Dropout forced into training mode is not the identity
    if isinstance(layer, L.Dropout):
        return 1
    if bn.axis % rank != _channel_axis(layer, rank):
        return None
    if isinstance(layer, L.Flatten):
        shape = node.input_tensors[0].shape
        spatial = [d for i, d in enumerate(shape[1:], 1) if i != bn.axis % rank]
        return None if any(d is None for d in spatial) else int(np.prod(spatial))
    return None if layer.keepdims else 1  # the average of s * z + t over positions is s * mean(z) + t


def _forward(
    bn: L.Layer, node: Any, info: _GraphInfo, options: dict[str, Any]
) -> tuple[Any, str | None, bool, int]:
    """The layer after ``bn``, why it cannot take the fold (None: it can), whether the fold is exact,
    and how many times BN's channels repeat in that layer's input (after a Flatten)."""
    (output,) = node.output_tensors
    consumer_node = _single_consumer(output, info)
    if consumer_node is None:
        return None, "its output is used by several layers or is a model output", True, 1
    rank = len(output.shape)
    tile, passed = 1, []
    while (factor := _through(bn, rank, consumer_node, info)) is not None:
        reduced = any(not isinstance(layer, L.Dropout) for layer in passed)
        if reduced and not isinstance(consumer_node.operation, L.Dropout):
            break  # after a Flatten or pooling only Dropout is followed (BN's axis no longer applies)
        passed.append(consumer_node.operation)
        tile *= factor
        following = _single_consumer(consumer_node.output_tensors[0], info)
        if following is None:
            return consumer_node.operation, f"the output of {consumer_node.operation.name} is used elsewhere too", True, 1
        consumer_node = following
    consumer = consumer_node.operation
    problem, exact = _into_forward(bn, consumer, consumer_node, passed, rank, info, options)
    return consumer, problem, exact, tile


def _into_forward(
    bn: L.Layer, consumer: Any, consumer_node: Any, passed: list, rank: int, info: _GraphInfo, options: dict[str, Any]
) -> tuple[str | None, bool]:
    reduced = any(not isinstance(layer, L.Dropout) for layer in passed)  # channels now on the last axis of a 2D input
    if reduced and type(consumer) is not L.Dense:
        name = getattr(consumer, "name", "?")
        return f"feeds {passed[-1].name!r} then {name!r}: only a Dense layer takes a fold through it", True
    problem = _layer_problem(consumer, info, "feeds")
    if problem is not None:
        return problem, True
    if len(consumer_node.input_tensors) != 1:
        return f"{consumer.name} is called on {len(consumer_node.input_tensors)} tensors", True
    problem = _dtype_problem([bn, *passed, consumer], options)
    if problem is not None:
        return problem, True
    if not reduced and bn.axis % rank != _channel_axis(consumer, rank):
        return f"its axis {bn.axis} is not the input channel axis of {consumer.name}", True
    padding = getattr(consumer, "padding", "valid")
    if padding != "valid":
        reason = (
            f"a forward fold into {consumer.name} (padding={padding!r}) is inexact at the borders "
            "(its zero padding would count as BN outputs beta - mean * s instead of 0)"
        )
        if options["allow_inexact"]:
            return None, False
        return f"{reason}; allow_inexact=True folds it anyway", True
    return None, True


def _decide(bn: L.Layer, bn_nodes: list, info: _GraphInfo, prefix: str, options: dict[str, Any]) -> _Edge:
    def no(reason: str, target: Any = None) -> _Edge:
        into = f"{prefix}{target.name}" if target is not None else None
        return _Edge(bn, target, FoldDecision(f"{prefix}{bn.name}", into, False, reason))

    def yes(target: Any, direction: str, exact: bool = True, reason: str = "folded") -> _Edge:
        decision = FoldDecision(f"{prefix}{bn.name}", f"{prefix}{target.name}", True, reason, direction, exact)
        return _Edge(bn, target, decision)

    base = _bn_base(bn)
    if type(bn) is not base and type(bn).call is not base.call:
        return no(
            f"it is {_a(type(bn).__name__)}, a subclass of {base.__name__} that overrides call(): "
            "folding applies BN's inference formula, which it may not compute"
        )
    if len(bn_nodes) != 1:
        return no("the BN layer is shared (called more than once)")
    node = bn_nodes[0]
    # Keras 3 runs a non-trainable BN in inference mode even with training=True
    # (keras/src/layers/normalization/batch_normalization.py: `if training and self.trainable`).
    if node.arguments.kwargs.get("training") is True and bn.trainable:
        return no(
            "it is called with training=True in the graph, so model(x) without training= uses batch "
            "statistics (predict/evaluate pass training=False, which overrides it): folding would change model(x)"
        )
    # A mask (e.g. from Embedding(mask_zero=True)) comes as the keyword argument mask=,
    # which inference-mode BN ignores: only the positional arguments are its data.
    data = [t for t in keras.tree.flatten(node.arguments.args) if isinstance(t, keras.KerasTensor)]
    if len(data) != 1:
        return no(f"it is called on {len(data)} tensors")
    try:
        _bn_map(bn)
    except ValueError as error:
        return no(f"its variables cannot be folded: {error}")
    producer, backward_problem = _backward(bn, data[0], info, options)
    if backward_problem is None:
        return yes(producer, "backward")
    consumer, forward_problem, exact, tile = _forward(bn, node, info, options)
    if forward_problem is None:
        if exact:
            edge = yes(consumer, "forward")
        else:
            padding = consumer.padding
            edge = yes(consumer, "forward", False, f"folded forward; inexact at the borders (padding={padding!r})")
        edge.tile = tile
        return edge
    return no(f"{backward_problem}; forward: {forward_problem}", producer if producer is not None else consumer)


def _options(dtype: Any, allow_inexact: Any) -> dict[str, Any]:
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be None (keep each layer's) or 'float32', got {dtype!r}")
    if not isinstance(allow_inexact, bool):
        raise TypeError(f"allow_inexact must be a bool, got {allow_inexact!r} of type {type(allow_inexact).__name__}")
    return {"dtype": dtype, "allow_inexact": allow_inexact}


def plan_folding(model: keras.Model, *, dtype: str | None = None, allow_inexact: bool = False) -> list[FoldDecision]:
    """Say, for every BN layer of ``model``, whether it can be folded and why (or why not).

    BN layers inside nested Sequential or Functional models are planned too (their
    names are given as ``nested_model/bn``); BN inside other layers or subclassed
    models is reported as not folded. A subclass of a BN class is folded when it does
    not override ``call`` (it then computes BN's formula), otherwise reported.

    Args:
        model: A built Sequential or Functional Keras model.
        dtype: As in :func:`fold_batchnorm`.
        allow_inexact: As in :func:`fold_batchnorm`.

    Raises:
        TypeError: ``model`` is not a Keras model, or a subclassed one; ``allow_inexact``
            is not a bool.
        ValueError: ``model`` is not built; ``dtype`` is not None or ``"float32"``.
    """
    options = _options(dtype, allow_inexact)
    _check_model(model)
    return [edge.decision for edge in _edges(model, options)]


class _Folder:
    """Copies a model layer by layer, fusing each folded BN into the layer before or after it."""

    def __init__(self, edges: list[_Edge], dtype: str | None) -> None:
        folded = [edge for edge in edges if edge.decision.folded]
        self.removed = {id(edge.bn) for edge in folded}
        self.bn_after = {id(e.target): e.bn for e in folded if e.decision.direction == "backward"}
        self.bn_before = {id(e.target): e.bn for e in folded if e.decision.direction == "forward"}
        self.tiles = {id(e.target): e.tile for e in folded if e.decision.direction == "forward"}
        self.dtype = dtype
        self.copies: dict[int, Any] = {}  # original operation -> its copy (shared layers stay shared)
        self.weights: dict[int, Any] = {}  # copy -> weights to give it once it is built
        self.reused: list[Any] = []  # original objects used in the copy (their call counts are restored)

    def copy(self, layer: Any) -> Any:
        if id(layer) not in self.copies:
            self.copies[id(layer)] = self._new_copy(layer)
        return self.copies[id(layer)]

    def _config(self, layer: Any) -> dict[str, Any]:
        config = layer.get_config()
        quantized = getattr(getattr(layer, "dtype_policy", None), "quantization_mode", None) is not None
        if self.dtype is not None and "dtype" in config and not quantized:
            config["dtype"] = self.dtype
        return config

    def _new_copy(self, layer: Any) -> Any:
        if id(layer) in self.removed:
            return _REMOVED
        if isinstance(layer, keras.Model) and _graph(layer) is not None:
            return self.fold(layer, layer.name)
        if not isinstance(layer, L.Layer):  # a stateless operation (keras.ops, tensor operators)
            try:
                return layer.__class__.from_config(layer.get_config())
            except (NotImplementedError, TypeError, ValueError):
                self.reused.append(layer)
                return layer
        if id(layer) in self.bn_after or id(layer) in self.bn_before:
            clone = layer.__class__.from_config({**self._config(layer), "use_bias": True, "bias_initializer": "zeros"})
            self.weights[id(clone)] = _folded_layer_weights(
                layer, self.bn_before.get(id(layer)), self.bn_after.get(id(layer)), self.tiles.get(id(layer), 1)
            )
            return clone
        try:
            clone = layer.__class__.from_config(self._config(layer))
        except (NotImplementedError, TypeError, ValueError) as error:  # e.g. a subclassed layer without get_config
            warnings.warn(
                f"{layer.name!r} ({type(layer).__name__}) cannot be rebuilt from its config "
                f"({type(error).__name__}), so the folded model uses the original layer object",
                FoldingWarning,
                stacklevel=4,
            )
            self.reused.append(layer)
            return layer
        self.weights[id(clone)] = layer.get_weights()
        return clone

    def set_weights(self, clone: Any) -> None:
        weights = self.weights.pop(id(clone), None)
        if isinstance(weights, dict):
            for name, value in weights.items():
                getattr(clone, name).assign(value)
        elif weights:
            clone.set_weights(weights)

    def call(self, layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer is _REMOVED:
            return args[0]  # the folded BN disappears: its input goes straight on
        outputs = layer(*args, **kwargs)
        self.set_weights(layer)  # built by the call
        return outputs

    def _input(self, x: Any, **kwargs: Any) -> Any:
        dtype = x.dtype
        if self.dtype is not None and keras.backend.is_float_dtype(dtype):
            dtype = self.dtype
        return keras.Input(batch_shape=x.shape, dtype=dtype, **kwargs)

    def fold(self, model: keras.Model, name: str) -> keras.Model:
        if isinstance(model, keras.Sequential):
            layers = [self.copy(layer) for layer in model.layers if id(layer) not in self.removed]
            copy = keras.Sequential([self._input(model.inputs[0]), *layers], name=name)
            for layer in layers:
                self.set_weights(layer)
            return copy
        # What keras.models.clone_model does, without compiling the copy.
        graph = _graph(model)
        inputs = keras.tree.map_structure(lambda x: self._input(x, name=x.name), graph.input)
        outputs = graph._run_through_graph(inputs, operation_fn=self.copy, call_fn=self.call)
        return keras.Model(inputs, outputs, name=name)


_REMOVED = object()  # stands for a folded BN layer while the graph is copied


def _operations(model: keras.Model) -> list[Any]:
    """Every operation of ``model``'s graph and of the graphs nested in it, and the model itself."""
    found, stack, seen = [], [model], set()
    while stack:
        operation = stack.pop()
        if id(operation) in seen:
            continue
        seen.add(id(operation))
        found.append(operation)
        if isinstance(operation, L.Layer):
            stack += list(operation._flatten_layers(include_self=False))
        graph = _graph(operation) if isinstance(operation, keras.Model) else None
        if graph is not None:
            stack += list(graph.operations)
    return found


def _outputs(model: keras.Model, x: Any) -> list[np.ndarray]:
    outputs = keras.tree.flatten(model(x, training=False))
    return [np.asarray(keras.ops.convert_to_numpy(y), dtype=np.float64) for y in outputs]


def _low_precision(model: keras.Model) -> bool:
    return any(
        getattr(op, "compute_dtype", "float32") in ("float16", "bfloat16") for op in _operations(model)
    )


def fold_report(
    model: keras.Model,
    *,
    dtype: str | None = None,
    allow_inexact: bool = False,
    verify: Any = None,
    atol: float | None = None,
    warn: bool = True,
) -> FoldReport:
    """Fold ``model`` as :func:`fold_batchnorm` does and return the copy with a :class:`FoldReport`.

    Args:
        model, dtype, allow_inexact, warn: As in :func:`fold_batchnorm`.
        verify: Inputs (arrays or tensors: a batch, or the structure the model takes,
            not a ``tf.data.Dataset`` or generator) on which the models are run in
            inference mode (``training=False``), with TF32 switched off on GPUs; the
            report gives the largest absolute difference of their outputs. None: no check.
        atol: The largest ``checked_difference`` accepted by ``report.verified``. None:
            self-calibrated from the network's own rounding: ``4 * rounding + 1e-6 *
            max_output``, where ``rounding`` is how far the unfolded model at the copy's
            precision is from a float64 rebuild of it on ``verify`` (a correct fold
            rounds differently but no worse, so the copy and the unfolded model differ
            by up to about twice that; 1e-6 of the largest output is a few float32
            units in the last place, for networks that round almost nothing). If no
            float64 rebuild can be made (a layer that cannot compute in float64), the
            fallback is ``1e-4`` times the largest absolute output, or ``1e-2`` times it
            when the original computes anything in float16/bfloat16.

    Returns:
        A :class:`FoldReport`; ``str(report)`` is a readable summary.

    Raises:
        As :func:`fold_batchnorm`; ``ValueError`` also when ``verify`` holds non-finite
        values, or ``atol`` is not a finite number >= 0; ``TypeError`` when ``verify`` is
        a dataset, generator or anything but (a structure of) arrays or tensors.
    """
    if not isinstance(warn, bool):
        raise TypeError(f"warn must be a bool, got {warn!r} of type {type(warn).__name__}")
    if atol is not None and (
        isinstance(atol, bool) or not isinstance(atol, (int, float)) or not math.isfinite(atol) or atol < 0
    ):
        raise ValueError(f"atol must be None or a finite number >= 0, got {atol!r}")
    options = _options(dtype, allow_inexact)
    _check_model(model)
    if verify is not None:
        for value in keras.tree.flatten(verify):
            if not (isinstance(value, (np.ndarray, int, float)) or keras.ops.is_tensor(value)):
                raise TypeError(
                    f"verify must be an array, a tensor or a list/tuple/dict of them, got {type(value).__name__}; "
                    "for a tf.data.Dataset pass one batch: next(iter(dataset)) (its inputs only)"
                )
            array = np.asarray(value)
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                bad = int(np.sum(~np.isfinite(array)))
                raise ValueError(f"verify holds {bad} non-finite values: pass finite inputs")
    operations = _operations(model)
    counts = {id(op): (len(op._inbound_nodes), len(op._outbound_nodes)) for op in operations}
    edges = _edges(model, options)
    if warn:
        for edge in edges:
            d = edge.decision
            if not d.folded:
                warnings.warn(f"BN layer {d.bn!r} was not folded: {d.reason}", FoldingWarning, stacklevel=3)
            elif not d.exact:
                warnings.warn(f"BN layer {d.bn!r} was folded inexactly: {d.reason}", FoldingWarning, stacklevel=3)
    folded = _rebuild(model, edges, dtype, f"{model.name}_folded", operations, counts)
    report = FoldReport(
        folded,
        [edge.decision for edge in edges],
        layers_removed=_count_layers(model) - _count_layers(folded),
        parameters_removed=model.count_params() - folded.count_params(),
        dtype=dtype,
    )
    if verify is not None:
        _verify(report, model, edges, verify, atol, operations, counts)
    return report


def _largest(arrays: list[np.ndarray], others: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(arrays, others, strict=True))


def _verify(
    report: FoldReport, model: keras.Model, edges: list[_Edge], verify: Any, atol: float | None,
    operations: list[Any], counts: dict[int, tuple[int, int]],
) -> None:
    """Fill in the check's numbers of ``report`` (see :func:`fold_report`)."""
    import tensorflow as tf  # noqa: PLC0415

    unfolded = [_Edge(e.bn, None, FoldDecision(e.decision.bn, None, False, "")) for e in edges]
    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        original, copied = _outputs(model, verify), _outputs(report.model, verify)
        same_precision = original
        if report.dtype is not None:
            plain = _rebuild(model, unfolded, report.dtype, f"{model.name}_{report.dtype}", operations, counts)
            same_precision = _outputs(plain, verify)
        try:
            exact = _rebuild(model, unfolded, "float64", f"{model.name}_float64", operations, counts)
            as64 = keras.tree.map_structure(
                lambda v: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else v, verify
            )
            reference = _outputs(exact, as64)
        except Exception:  # noqa: BLE001 - a layer that cannot compute in float64: the fallback tolerance
            reference = None
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(tf32)
    report.max_output = max(float(np.max(np.abs(a), initial=0.0)) for a in original)
    report.max_difference = _largest(original, copied)
    report.checked_difference = _largest(same_precision, copied)
    if reference is not None:
        report.rounding = _largest(same_precision, reference)
    if atol is None:
        if report.rounding is not None:
            atol = 4 * report.rounding + 1e-6 * report.max_output
        else:
            atol = (1e-2 if _low_precision(model) else 1e-4) * report.max_output
    report.tolerance = float(atol)


def _rebuild(
    model: keras.Model, edges: list[_Edge], dtype: str | None, name: str,
    operations: list[Any], counts: dict[int, tuple[int, int]],
) -> keras.Model:
    """A copy of ``model`` with the folded BN of ``edges`` folded, its layers in ``dtype`` (None: their own)."""
    folder = _Folder(edges, dtype)
    # Building the copy's layers draws seeds for their (then overwritten) initializers from
    # Python's global generator (keras/src/random/seed_generator.py, make_default_seed): put it
    # back, so that folding does not change what the user's next seeded model gets.
    python_random = random.getstate()
    try:
        return folder.fold(model, name)
    finally:
        random.setstate(python_random)
        # Reused objects (no config; stateless operations that could not be rebuilt) were called
        # in the copy: take those calls off the original model's books, which readers of
        # _inbound_nodes (shared-layer checks) rely on.
        for op in operations + folder.reused:
            inbound, outbound = counts.get(id(op), (None, None))
            if inbound is not None:
                del op._inbound_nodes[inbound:]
                del op._outbound_nodes[outbound:]


def _count_layers(model: keras.Model) -> int:
    return sum(1 for op in _operations(model) if isinstance(op, L.Layer) and not isinstance(op, keras.Model))


def fold_batchnorm(
    model: keras.Model,
    *,
    warn: bool = True,
    dtype: str | None = None,
    allow_inexact: bool = False,
    verify: Any = None,
    atol: float | None = None,
) -> keras.Model:
    """Return a copy of ``model`` with every foldable BN layer folded into a neighbouring linear layer.

    A BN layer (``keras.layers.BatchNormalization`` or :class:`bnbook.layers.BatchNorm`,
    or a subclass that does not override ``call``) called once is folded:

    - **backward**, when it directly follows a plain ``Dense``, ``Conv1D/2D/3D``,
      ``DepthwiseConv1D/2D``, ``SeparableConv1D/2D`` or ``Conv1D/2D/3DTranspose``
      layer that has no activation, whose output nothing else uses, and whose channel
      axis is BN's axis;
    - otherwise **forward**, when its output feeds only a plain ``Dense``,
      ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D`` or ``SeparableConv1D/2D`` layer whose
      input channel axis is BN's axis, with ``padding="valid"`` (exact), or a ``Dense``
      layer after a ``Flatten`` or ``GlobalAveragePooling`` (and ``Dropout``). With
      ``padding="same"``/``"causal"`` the fold is inexact at the borders: the BN is
      left in place and reported, unless ``allow_inexact=True``.

    The layer folded into must be of that exact type (not a subclass), called once,
    not quantized, without LoRA, and compute in float32 (or ``dtype="float32"``).
    Nested Sequential and Functional models are folded the same way inside. The copy's
    predictions equal the original's in inference mode up to float32 rounding. Other BN
    layers are kept (with their weights) and reported; every other layer and operation
    is copied unchanged. The original model is not modified (variables, and the call
    counts of its layers): every layer is a new copy, except layers that cannot be
    rebuilt from their config (a :class:`FoldingWarning` names them), which are reused.

    Args:
        model: A built Sequential or Functional Keras model.
        warn: Emit a :class:`FoldingWarning` for each BN layer left in place (or folded
            inexactly). A bool.
        dtype: None: every layer keeps its precision, and BN next to a layer that does
            not compute in float32 is left in place. ``"float32"``: the copy is rebuilt
            with float32 layers (e.g. from a ``mixed_float16`` model), and folded there.
        allow_inexact: Fold forward into ``padding="same"``/``"causal"`` convolutions too.
        verify: Inputs on which to compare both models (see :func:`fold_report`);
            a ``ValueError`` if the difference exceeds the tolerance, which by default
            is calibrated from the original's own float rounding on these inputs.
        atol: The tolerance for ``verify`` (see :func:`fold_report`).

    Returns:
        A new model of the same kind (Sequential stays Sequential), for inference,
        made of standard layers (it saves to ``.keras`` and loads without custom
        objects, unless the original had some). :func:`fold_report` returns it with a
        report.

    Raises:
        TypeError: ``model`` is not a Keras model, or a subclassed one; ``warn`` or
            ``allow_inexact`` is not a bool.
        ValueError: ``model`` is not built; ``dtype`` is not None or ``"float32"``; the
            check on ``verify`` failed (the message gives the numbers).
    """
    report = fold_report(model, dtype=dtype, allow_inexact=allow_inexact, verify=verify, atol=atol, warn=warn)
    if report.verified is False:
        raise ValueError(
            f"the folded model differs from the unfolded one by up to {report.checked_difference:.3g} on verify "
            f"(largest |output| {report.max_output:.3g}, the original's own rounding {report.rounding}), "
            f"above the tolerance {report.tolerance:.3g}"
        )
    return report.model
