"""Fold inference-mode BN layers into the Dense or Conv2D layer before them.

In inference mode a BN layer is a fixed affine map per channel,
``y = gamma * (z - moving_mean) / sqrt(moving_variance + epsilon) + beta``. When ``z``
is the output of a Dense or Conv2D layer ``z = x W + b`` (no activation in between),
the two collapse into one layer with

    s  = gamma / sqrt(moving_variance + epsilon)
    W' = W * s                      (per output channel, the kernel's last axis)
    b' = beta + (b - moving_mean) * s

:func:`fold_batchnorm` applies this to every BN layer it can and leaves the others in
place, saying why (:func:`plan_folding` gives the same report without folding).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

__all__ = ["FoldDecision", "FoldingWarning", "fold_batchnorm", "folded_weights", "plan_folding"]

# Exact types only: a subclass may override call() and compute something else.
_FOLDABLE = (keras.layers.Dense, keras.layers.Conv2D)


class FoldingWarning(UserWarning):
    """A BN layer was left in place because it cannot be folded."""


@dataclass(frozen=True)
class FoldDecision:
    """What :func:`fold_batchnorm` does with one BN layer."""

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
            for Dense and Conv2D, whatever the data format).
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


def _channel_axis(layer: keras.layers.Layer, rank: int) -> int:
    if isinstance(layer, keras.layers.Conv2D) and layer.data_format == "channels_first":
        return 1
    return rank - 1


def _check_model(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(f"fold_batchnorm needs a keras.Model (Sequential or Functional), got {type(model).__name__}")
    if not model.built:
        raise ValueError("the model is not built: call it on data or give it an Input first")


def _edges(model: keras.Model) -> list[tuple[keras.layers.Layer, keras.layers.Layer | None, int]]:
    """(bn, producer or None, number of consumers of the producer's output) for every BN layer."""
    if isinstance(model, keras.Sequential):
        layers = model.layers
        return [
            (layer, layers[i - 1] if i > 0 else None, 1)
            for i, layer in enumerate(layers)
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
    consumers: dict[int, int] = {}
    for operation in model.operations:
        for node in operation._inbound_nodes:
            for tensor in node.input_tensors:
                consumers[id(tensor)] = consumers.get(id(tensor), 0) + 1
    for tensor in keras.tree.flatten(model.outputs):
        consumers[id(tensor)] = consumers.get(id(tensor), 0) + 1
    result = []
    for operation in model.operations:
        if not isinstance(operation, keras.layers.BatchNormalization):
            continue
        nodes = operation._inbound_nodes
        if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
            result.append((operation, None, 0))
            continue
        tensor = nodes[0].input_tensors[0]
        producer = tensor._keras_history.operation
        result.append((operation, producer, consumers.get(id(tensor), 0)))
    return result


def _decide(bn: keras.layers.BatchNormalization, producer: Any, n_consumers: int) -> FoldDecision:
    name = bn.name
    if len(bn._inbound_nodes) != 1:
        return FoldDecision(name, None, False, "the BN layer is shared (called more than once)")
    if producer is None or isinstance(producer, keras.layers.InputLayer):
        return FoldDecision(name, None, False, "no Dense or Conv2D layer before it")
    if type(producer) not in _FOLDABLE:
        return FoldDecision(name, producer.name, False, f"follows a {type(producer).__name__}, not a Dense or Conv2D")
    if getattr(producer.dtype_policy, "quantization_mode", None) is not None:
        return FoldDecision(name, producer.name, False, f"{producer.name} is quantized")
    if getattr(producer, "lora_enabled", False):
        return FoldDecision(name, producer.name, False, f"{producer.name} has LoRA enabled")
    if producer.compute_dtype != "float32" or bn.compute_dtype != "float32":
        return FoldDecision(name, producer.name, False, f"{producer.name} computes in {producer.compute_dtype}; only float32 is folded")
    if producer.activation is not keras.activations.linear:
        act = getattr(producer.activation, "__name__", str(producer.activation))
        return FoldDecision(name, producer.name, False, f"{producer.name} applies activation {act!r} before BN")
    if n_consumers != 1 or len(producer._inbound_nodes) != 1 or len(bn._inbound_nodes) != 1:
        return FoldDecision(name, producer.name, False, f"the output of {producer.name} is used elsewhere too, or a layer is shared")
    rank = len(producer.output.shape)
    if bn.axis % rank != _channel_axis(producer, rank):
        return FoldDecision(name, producer.name, False, f"its axis {bn.axis} is not the channel axis of {producer.name}")
    return FoldDecision(name, producer.name, True, "folded")


def _nested_bn(model: keras.Model) -> list[FoldDecision]:
    """BN layers inside nested models: reported, not searched."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            for inner in layer._flatten_layers(include_self=False):
                if isinstance(inner, keras.layers.BatchNormalization):
                    found.append(FoldDecision(inner.name, None, False, f"inside the nested model {layer.name!r}"))
    return found


def plan_folding(model: keras.Model) -> list[FoldDecision]:
    """Say, for every BN layer of ``model``, whether it can be folded and why (or why not).

    BN layers inside nested models are listed as not folded (fold the inner model
    separately if needed).

    Raises:
        TypeError: ``model`` is not a Keras model.
        ValueError: ``model`` is not built.
    """
    _check_model(model)
    return [_decide(bn, producer, n) for bn, producer, n in _edges(model)] + _nested_bn(model)


def _fused_layer(producer: keras.layers.Layer, bn: keras.layers.BatchNormalization) -> keras.layers.Layer:
    config = {**producer.get_config(), "use_bias": True, "bias_initializer": "zeros"}
    fused = producer.__class__.from_config(config)
    fused.build(producer.input.shape)
    kernel, bias = folded_weights(
        producer.kernel.numpy(),
        producer.bias.numpy() if producer.use_bias else None,
        bn.gamma.numpy() if bn.scale else None,
        bn.beta.numpy() if bn.center else None,
        bn.moving_mean.numpy(),
        bn.moving_variance.numpy(),
        bn.epsilon,
    )
    fused.kernel.assign(kernel)
    fused.bias.assign(bias)
    return fused


def fold_batchnorm(model: keras.Model, *, warn: bool = True) -> keras.Model:
    """Return a copy of ``model`` with every foldable BN layer folded into the layer before it.

    A BN layer is folded when it directly follows a plain ``Dense`` or ``Conv2D`` layer
    (not a subclass, not quantized, no LoRA, computing in float32) that has no
    activation, whose output nothing else uses, and whose channel axis is BN's axis.
    The copy's predictions equal the original's in inference mode up to float32
    rounding. Other BN layers, including any inside nested models, are kept (with
    their weights) and reported. The original model is not modified: every layer is
    a new copy.

    Args:
        model: A built Sequential or Functional Keras model.
        warn: Emit a :class:`FoldingWarning` for each BN layer left in place.

    Returns:
        A new model of the same kind (Sequential stays Sequential), for inference.

    Raises:
        TypeError: ``model`` is not a Keras model.
        ValueError: ``model`` is not built.
    """
    _check_model(model)
    decisions = plan_folding(model)
    if warn:
        for d in decisions:
            if not d.folded:
                warnings.warn(f"BN layer {d.bn!r} was not folded: {d.reason}", FoldingWarning, stacklevel=2)
    to_fold = {d.bn for d in decisions if d.folded}
    bn_after: dict[str, keras.layers.BatchNormalization] = {}
    for bn, producer, _ in _edges(model):
        if bn.name in to_fold:
            bn_after[producer.name] = bn

    def clone_function(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name in bn_after:
            return _fused_layer(layer, bn_after[layer.name])
        clone = layer.__class__.from_config(layer.get_config())
        if layer.weights:
            clone.build(layer.input.shape)
            clone.set_weights(layer.get_weights())
        return clone

    if isinstance(model, keras.Sequential):
        layers = [clone_function(layer) for layer in model.layers if layer.name not in to_fold]
        folded = keras.Sequential([keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype), *layers], name=f"{model.name}_folded")
        return folded

    def call_function(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        if layer.name in to_fold:
            return args[0]  # the BN disappears: its input goes straight on
        return layer(*args, **kwargs)

    folded = keras.models.clone_model(model, clone_function=clone_function, call_function=call_function)
    return keras.Model(folded.inputs, folded.outputs, name=f"{model.name}_folded")
