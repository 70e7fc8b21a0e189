"""Fold inference-mode BN layers into the Dense or convolution layer before them.

In inference mode a BN layer is a fixed affine map per channel,
``y = gamma * (z - moving_mean) / sqrt(moving_variance + epsilon) + beta``. When ``z``
is the output of a Dense or convolution layer ``z = x W + b`` (no activation in
between), the two collapse into one layer with

    s  = gamma / sqrt(moving_variance + epsilon)
    W' = W * s                      (per output channel)
    b' = beta + (b - moving_mean) * s

Every output channel of ``Dense``, ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D`` (output
channel ``c * depth_multiplier + m`` comes from ``kernel[..., c, m]``), the pointwise
kernel of ``SeparableConv1D/2D`` and ``Conv1D/2D/3DTranspose`` (kernel
``(..., out, in)``) is linear in its own slice of the kernel plus its bias, so the
fold is exact for all of them.

:func:`fold_batchnorm` applies this to every BN layer it can, in the model and in the
Sequential/Functional models nested in it, and leaves the others in place, saying
why (:func:`plan_folding` gives the same report without folding). Anything else in
the graph (layers with several inputs, shared layers, raw tensor operations such as
``keras.ops.add`` or ``h + h``) is copied as it is.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras.src.models.functional import Functional  # the class of keras.Model(inputs, outputs)

from bnbook._checks import check_model
from bnbook.probes import BN_TYPES

__all__ = ["FoldDecision", "FoldingWarning", "fold_batchnorm", "folded_weights", "plan_folding"]

L = keras.layers
# Exact types only (type(layer) in BN_TYPES): a subclass may override call() and compute something else.
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
_KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")


class FoldingWarning(UserWarning):
    """A BN layer was left in place because it cannot be folded."""


@dataclass(frozen=True)
class FoldDecision:
    """What :func:`fold_batchnorm` does with one BN layer (names of nested layers are ``model/layer``)."""

    bn: str
    into: str | None
    folded: bool
    reason: str


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
        epsilon: BN's epsilon.

    Raises:
        ValueError: The channel counts do not match (the message gives the shapes).
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    channels = kernel.shape[-1]
    mean = np.asarray(moving_mean, dtype=np.float64)
    variance = np.asarray(moving_variance, dtype=np.float64)
    vectors = {"moving_mean": mean, "moving_variance": variance}
    for name, value in (("bias", bias), ("gamma", gamma), ("beta", beta)):
        if value is not None:
            vectors[name] = np.asarray(value, dtype=np.float64)
    for name, value in vectors.items():
        if value.shape != (channels,):
            raise ValueError(f"{name} has shape {value.shape}, expected ({channels},) to match the kernel {kernel.shape}")
    scale = (vectors.get("gamma", 1.0)) / np.sqrt(variance + epsilon)
    new_kernel = kernel * scale
    new_bias = vectors.get("beta", 0.0) + (vectors.get("bias", 0.0) - mean) * scale
    return new_kernel.astype(np.float32), np.broadcast_to(new_bias, (channels,)).astype(np.float32)


def _fold_into(producer: L.Layer, bn: L.Layer) -> dict[str, np.ndarray]:
    """The weights of ``producer`` with ``bn`` folded in, by attribute name."""
    weights = {name: getattr(producer, name).numpy() for name in _KERNELS if getattr(producer, name, None) is not None}
    name, layout = _FOLDABLE[type(producer)]
    kernel = weights[name]
    # Bring the output channels to the last axis, as folded_weights wants them.
    if layout == "depthwise":  # (..., in, multiplier) -> (..., in * multiplier): channel c * multiplier + m
        as_last = kernel.reshape(*kernel.shape[:-2], kernel.shape[-2] * kernel.shape[-1])
    elif layout == "transposed":  # (..., out, in) -> (..., in, out)
        as_last = np.swapaxes(kernel, -1, -2)
    else:
        as_last = kernel
    new_kernel, weights["bias"] = folded_weights(
        as_last,
        producer.bias.numpy() if producer.use_bias else None,
        bn.gamma.numpy() if bn.scale else None,
        bn.beta.numpy() if bn.center else None,
        bn.moving_mean.numpy(),
        bn.moving_variance.numpy(),
        bn.epsilon,
    )
    weights[name] = np.swapaxes(new_kernel, -1, -2) if layout == "transposed" else new_kernel.reshape(kernel.shape)
    return weights


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
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else rank - 1


@dataclass
class _Edge:
    """One BN layer of a graph, the layer before it, and the decision."""

    bn: L.Layer
    producer: Any
    decision: FoldDecision


def _edges(model: keras.Model, prefix: str = "") -> list[_Edge]:
    """Every BN layer of ``model``'s graph and of the graphs nested in it, with its decision."""
    graph = _graph(model)
    nodes = [node for depth_nodes in graph._nodes_by_depth.values() for node in depth_nodes]
    calls: dict[int, int] = {}  # operation -> number of calls in this graph
    uses: dict[int, int] = {}  # tensor -> number of uses in this graph (as an input or an output)
    for node in nodes:
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        for tensor in node.input_tensors:
            uses[id(tensor)] = uses.get(id(tensor), 0) + 1
    for tensor in keras.tree.flatten(graph.outputs):
        uses[id(tensor)] = uses.get(id(tensor), 0) + 1
    edges, seen = [], set()
    for operation in graph.operations:
        if id(operation) in seen:
            continue
        seen.add(id(operation))
        if isinstance(operation, keras.Model) and _graph(operation) is not None:
            edges += _edges(operation, f"{prefix}{operation.name}/")
        elif type(operation) in BN_TYPES:
            bn_nodes = [node for node in nodes if node.operation is operation]
            edges.append(_decide(operation, bn_nodes, calls, uses, prefix))
        elif isinstance(operation, L.Layer):  # BN inside a layer whose graph is not visible
            for inner in operation._flatten_layers(include_self=False):
                if isinstance(inner, BN_TYPES):
                    reason = f"inside {operation.name!r} ({type(operation).__name__}), whose graph is not visible"
                    edges.append(_Edge(inner, None, FoldDecision(f"{prefix}{inner.name}", None, False, reason)))
    return edges


def _decide(bn: L.Layer, bn_nodes: list, calls: dict[int, int], uses: dict[int, int], prefix: str) -> _Edge:
    def no(reason: str, producer: Any = None) -> _Edge:
        into = f"{prefix}{producer.name}" if producer is not None else None
        return _Edge(bn, producer, FoldDecision(f"{prefix}{bn.name}", into, False, reason))

    if len(bn_nodes) != 1:
        return no("the BN layer is shared (called more than once)")
    node = bn_nodes[0]
    if node.arguments.kwargs.get("training") is True:
        return no(
            "it is called with training=True in the graph, so model(x) without training= uses batch "
            "statistics (predict/evaluate pass training=False, which overrides it): folding would change model(x)"
        )
    if len(node.input_tensors) != 1:
        return no(f"it is called on {len(node.input_tensors)} tensors")
    tensor = node.input_tensors[0]
    producer = tensor._keras_history.operation
    if producer is None or isinstance(producer, L.InputLayer):
        return no("no layer before it: it normalises a model input")
    if not isinstance(producer, L.Layer):
        return no(f"follows the operation {producer.name!r} ({type(producer).__name__}), not a layer", producer)
    if isinstance(producer, keras.Model):
        return no(f"follows the nested model {producer.name!r}, not a Dense or convolution layer", producer)
    if type(producer) not in _FOLDABLE:
        return no(f"follows a {type(producer).__name__}, not a Dense or convolution layer", producer)
    if calls.get(id(producer), 0) != 1:
        return no(f"{producer.name} is shared (called more than once)", producer)
    if getattr(producer.dtype_policy, "quantization_mode", None) is not None:
        return no(f"{producer.name} is quantized", producer)
    if getattr(producer, "lora_enabled", False):
        return no(f"{producer.name} has LoRA enabled", producer)
    if producer.compute_dtype != "float32" or bn.compute_dtype != "float32":
        return no(f"{producer.name} computes in {producer.compute_dtype}; only float32 is folded", producer)
    if producer.activation is not keras.activations.linear:
        act = getattr(producer.activation, "__name__", str(producer.activation))
        return no(f"{producer.name} applies activation {act!r} before BN", producer)
    if uses.get(id(tensor), 0) != 1:
        return no(f"the output of {producer.name} is used elsewhere too", producer)
    rank = len(tensor.shape)
    if bn.axis % rank != _channel_axis(producer, rank):
        return no(f"its axis {bn.axis} is not the channel axis of {producer.name}", producer)
    return _Edge(bn, producer, FoldDecision(f"{prefix}{bn.name}", f"{prefix}{producer.name}", True, "folded"))


def plan_folding(model: keras.Model) -> list[FoldDecision]:
    """Say, for every BN layer of ``model``, whether it can be folded and why (or why not).

    BN layers inside nested Sequential or Functional models are planned too (their
    names are given as ``nested_model/bn``); BN inside other layers or subclassed
    models is reported as not folded.

    Raises:
        TypeError: ``model`` is not a Keras model, or a subclassed one.
        ValueError: ``model`` is not built.
    """
    _check_model(model)
    return [edge.decision for edge in _edges(model)]


class _Folder:
    """Copies a model layer by layer, fusing each folded BN into the layer before it."""

    def __init__(self, edges: list[_Edge]) -> None:
        folded = [edge for edge in edges if edge.decision.folded]
        self.removed = {id(edge.bn) for edge in folded}
        self.bn_after = {id(edge.producer): edge.bn for edge in folded}
        self.copies: dict[int, Any] = {}  # original operation -> its copy (shared layers stay shared)
        self.weights: dict[int, Any] = {}  # copy -> weights to give it once it is built

    def copy(self, layer: Any) -> Any:
        if id(layer) not in self.copies:
            self.copies[id(layer)] = self._new_copy(layer)
        return self.copies[id(layer)]

    def _new_copy(self, layer: Any) -> Any:
        if id(layer) in self.removed:
            return _REMOVED
        if isinstance(layer, keras.Model) and _graph(layer) is not None:
            return self.fold(layer, layer.name)
        if not isinstance(layer, L.Layer):
            return layer  # a stateless operation (keras.ops, tensor operators): reused
        if id(layer) in self.bn_after:
            config = {**layer.get_config(), "use_bias": True, "bias_initializer": "zeros"}
            clone = layer.__class__.from_config(config)
            self.weights[id(clone)] = _fold_into(layer, self.bn_after[id(layer)])
            return clone
        try:
            clone = layer.__class__.from_config(layer.get_config())
        except (NotImplementedError, TypeError, ValueError) as error:  # e.g. a subclassed layer without get_config
            warnings.warn(
                f"{layer.name!r} ({type(layer).__name__}) cannot be rebuilt from its config "
                f"({type(error).__name__}), so the folded model uses the original layer object",
                FoldingWarning,
                stacklevel=2,
            )
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

    def fold(self, model: keras.Model, name: str) -> keras.Model:
        if isinstance(model, keras.Sequential):
            layers = [self.copy(layer) for layer in model.layers if id(layer) not in self.removed]
            x = model.inputs[0]
            copy = keras.Sequential([keras.Input(batch_shape=x.shape, dtype=x.dtype), *layers], name=name)
            for layer in layers:
                self.set_weights(layer)
            return copy
        # What keras.models.clone_model does, without compiling the copy.
        graph = _graph(model)
        inputs = keras.tree.map_structure(
            lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name), graph.input
        )
        outputs = graph._run_through_graph(inputs, operation_fn=self.copy, call_fn=self.call)
        return keras.Model(inputs, outputs, name=name)


_REMOVED = object()  # stands for a folded BN layer while the graph is copied


def fold_batchnorm(model: keras.Model, *, warn: bool = True) -> keras.Model:
    """Return a copy of ``model`` with every foldable BN layer folded into the layer before it.

    A BN layer (``keras.layers.BatchNormalization`` or :class:`bnbook.layers.BatchNorm`,
    not a subclass) is folded when it is called once and directly follows a plain
    ``Dense``, ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D``, ``SeparableConv1D/2D`` or
    ``Conv1D/2D/3DTranspose`` layer (not a subclass, called once, not quantized, no
    LoRA, computing in float32) that has no activation, whose output nothing else
    uses, and whose channel axis is BN's axis. Nested Sequential and Functional models
    are folded the same way inside. The copy's predictions equal the original's in
    inference mode up to float32 rounding. Other BN layers are kept (with their
    weights) and reported; every other layer and operation (several inputs, shared
    layers, raw tensor operations) is copied unchanged. The original model is not
    modified: every layer is a new copy, except stateless operations such as
    ``keras.ops.add`` and layers that cannot be rebuilt from their config (a
    :class:`FoldingWarning` names them), which are reused.

    Args:
        model: A built Sequential or Functional Keras model.
        warn: Emit a :class:`FoldingWarning` for each BN layer left in place.

    Returns:
        A new model of the same kind (Sequential stays Sequential), for inference,
        made of standard layers (it saves to ``.keras`` and loads without custom
        objects, unless the original had some).

    Raises:
        TypeError: ``model`` is not a Keras model, or a subclassed one.
        ValueError: ``model`` is not built.
    """
    _check_model(model)
    edges = _edges(model)
    if warn:
        for edge in edges:
            if not edge.decision.folded:
                d = edge.decision
                warnings.warn(f"BN layer {d.bn!r} was not folded: {d.reason}", FoldingWarning, stacklevel=2)
    return _Folder(edges).fold(model, f"{model.name}_folded")
