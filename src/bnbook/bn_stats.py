"""What a BN layer's statistics are, what they should be, and how to recompute them.

Two helpers for models that contain batch normalization layers
(``keras.layers.BatchNormalization`` or :class:`bnbook.layers.BatchNorm`):

- :func:`bn_input_variances` measures, for every BN layer, the per-channel variance
  of its input in training mode (dropout active, earlier BN layers on batch
  statistics) and in inference mode (dropout off, moving statistics), next to the
  layer's ``moving_variance``. It leaves the model exactly as it found it.
- :func:`reestimate_bn_statistics` replaces every BN layer's moving mean and
  variance by the exact mean and (biased) variance of its input over a data set,
  computed in inference mode (dropout off) with the weights untouched. For a
  network with dropout before BN this is the remedy Li et al. (2019) give for
  the variance shift: re-estimate the statistics with dropout off.

  It is not "precise BN" (Ioffe & Szegedy 2015, Algorithm 2; revisited by Wu &
  Johnson 2021, and computed by hand in chapter 4), which averages the
  statistics of mini-batches passed through the network in training mode:
  earlier BN layers on batch statistics and dropout active, so that a variance
  inflated by dropout is stored again. Without dropout or other noise layers
  the two differ only in how the earlier BN layers normalise while the
  statistics are collected.

Both work on single-input Sequential or Functional models whose BN layers are
top-level layers called once (not inside a nested model, not shared).
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd

from bnbook._checks import check_int
from bnbook.layers import BatchNorm

__all__ = ["BN_TYPES", "bn_input_variances", "reestimate_bn_statistics"]

#: The layer classes these helpers treat as batch normalization.
BN_TYPES: tuple[type, ...] = (keras.layers.BatchNormalization, BatchNorm)


def _contains_bn(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, BN_TYPES):
        return True
    return isinstance(layer, keras.Model) and any(_contains_bn(inner) for inner in layer.layers)


def _bn_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's BN layers in the order of ``model.layers``, checked usable."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}")
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model) and _contains_bn(layer)]
    if nested:
        raise ValueError(
            f"BN layers inside nested models ({', '.join(nested)}) are not supported: "
            "build the model with its BN layers at the top level"
        )
    layers = [layer for layer in model.layers if isinstance(layer, BN_TYPES)]
    if not layers:
        raise ValueError("the model has no BN layer (keras.layers.BatchNormalization or bnbook.layers.BatchNorm)")
    if len(model.inputs) != 1:
        raise ValueError(f"only single-input models are supported; this one has {len(model.inputs)} inputs")
    for layer in layers:
        calls = len(getattr(layer, "_inbound_nodes", [None]))
        if calls != 1:
            raise ValueError(f"BN layer {layer.name!r} must be called exactly once in the model, not {calls} times")
    return layers


def _check_data(x: object, batch_size: int) -> tuple[np.ndarray, int]:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy array of model inputs, got {type(x).__name__}")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if len(x) < 2:
        raise ValueError(f"x must hold at least 2 examples to give a variance, got {len(x)}")
    return x, batch_size


def _channel_rows(values: np.ndarray, axis: int) -> np.ndarray:
    """Reshape to (samples, channels), the channels being ``axis``, in float64."""
    values = np.asarray(values, dtype=np.float64)
    return np.moveaxis(values, axis % values.ndim, -1).reshape(-1, values.shape[axis])


class _Moments:
    """Per-channel mean and biased variance, merged batch by batch (Chan et al.'s rule)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = np.zeros(0)
        self.m2 = np.zeros(0)

    def add(self, rows: np.ndarray) -> None:
        n, mean = len(rows), rows.mean(axis=0)
        m2 = ((rows - mean) ** 2).sum(axis=0)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / self.count


def _input_of(model: keras.Model, layers: list[keras.layers.Layer]) -> keras.Model:
    """A model from ``model``'s input to the inputs of ``layers`` (shares their weights)."""
    return keras.Model(model.inputs[0], [layer.input for layer in layers])


def _outputs(probe: keras.Model, x: np.ndarray, training: bool) -> list[np.ndarray]:
    outputs = probe(x, training=training)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [keras.ops.convert_to_numpy(values) for values in outputs]


def reestimate_bn_statistics(
    model: keras.Model, x: np.ndarray, *, batch_size: int = 500
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Set every BN layer's moving statistics to the exact ones of its input over ``x``.

    The statistics are re-estimated for the inference network, with dropout off
    (Li et al.'s remedy for the variance shift, not training-mode precise BN: see
    the module docstring). The weights stay as they are, and, layer by layer in
    the order of ``model.layers``, each BN layer's ``moving_mean`` and
    ``moving_variance`` become the per-channel mean and biased variance (divide by
    N, as Keras stores it) of that layer's input over all of ``x``, computed in
    inference mode: dropout off, and the earlier BN layers already using their
    re-estimated statistics. Afterwards each BN layer normalises with the
    statistics of exactly what it receives at inference on ``x``. (Precise BN
    passes the data in training mode instead, with the earlier BN layers on batch
    statistics and dropout active: other values, and with dropout before a BN
    layer, the variance shift stays.)

    Args:
        model: A single-input Keras model with top-level BN layers.
        x: Model inputs, e.g. the training images; at least 2 examples.
        batch_size: Examples per forward pass (memory only: inference mode does
            not depend on it).

    Returns:
        ``{layer name: (moving_mean, moving_variance)}``, the new values as
        float32 arrays, in layer order.

    Raises:
        TypeError: ``model`` is not a Keras model, ``x`` not a NumPy array, or
            ``batch_size`` not an int.
        ValueError: No BN layer, BN inside a nested model or called more than
            once, several model inputs, fewer than 2 examples, or
            ``batch_size`` < 1.
    """
    layers = _bn_layers(model)
    x, batch_size = _check_data(x, batch_size)
    new: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer in layers:
        probe = _input_of(model, [layer])
        moments = _Moments()
        for start in range(0, len(x), batch_size):
            (values,) = _outputs(probe, x[start : start + batch_size], training=False)
            moments.add(_channel_rows(values, layer.axis))
        mean, variance = moments.mean.astype(np.float32), moments.variance.astype(np.float32)
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
        new[layer.name] = (mean, variance)
    return new


def bn_input_variances(model: keras.Model, x: np.ndarray, *, batch_size: int = 64) -> pd.DataFrame:
    """The variance each BN layer's input has in training and in inference mode.

    For every BN layer and channel:

    - ``train_variance``: ``x`` is cut into consecutive batches of ``batch_size``
      (a last, smaller batch is left out) and passed in training mode: dropout and
      other noise layers active, earlier BN layers normalising with the batch
      statistics. It is the mean over batches of the biased batch variance of the
      layer's input, the quantity whose moving average training stores in
      ``moving_variance``.
    - ``inference_variance``: the biased variance of the layer's input over all of
      ``x`` in inference mode (dropout off, moving statistics): what the layer
      actually receives at test time.
    - ``moving_variance``: the layer's current moving variance.

    The model is left exactly as it was: the moving statistics that the
    training-mode pass updates and the dropout layers' random-generator states are
    restored afterwards.

    Args:
        model: A single-input Keras model with top-level BN layers.
        x: Model inputs; at least ``batch_size`` examples (and at least 2).
        batch_size: The training batch size whose statistics BN saw.

    Returns:
        One row per (layer, channel), columns ``layer``, ``channel``,
        ``train_variance``, ``inference_variance``, ``moving_variance``; layers in
        the order of ``model.layers``.

    Raises:
        TypeError: ``model`` is not a Keras model, ``x`` not a NumPy array, or
            ``batch_size`` not an int.
        ValueError: As :func:`reestimate_bn_statistics`, or fewer than
            ``batch_size`` examples.
    """
    layers = _bn_layers(model)
    x, batch_size = _check_data(x, batch_size)
    if len(x) < batch_size:
        raise ValueError(f"x has {len(x)} examples, fewer than one batch of batch_size={batch_size}")
    probe = _input_of(model, layers)
    saved = [variable.numpy() for variable in model.non_trainable_variables]
    try:
        per_batch: list[list[np.ndarray]] = [[] for _ in layers]
        for start in range(0, len(x) - batch_size + 1, batch_size):
            outputs = _outputs(probe, x[start : start + batch_size], training=True)
            for i, (layer, values) in enumerate(zip(layers, outputs)):
                per_batch[i].append(_channel_rows(values, layer.axis).var(axis=0))
    finally:
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)
    moments = [_Moments() for _ in layers]
    step = max(batch_size, 500)
    for start in range(0, len(x), step):
        outputs = _outputs(probe, x[start : start + step], training=False)
        for i, (layer, values) in enumerate(zip(layers, outputs)):
            moments[i].add(_channel_rows(values, layer.axis))
    tables = []
    for layer, batches, inference in zip(layers, per_batch, moments):
        train = np.mean(batches, axis=0)
        tables.append(
            pd.DataFrame(
                {
                    "layer": layer.name,
                    "channel": np.arange(len(train)),
                    "train_variance": train,
                    "inference_variance": inference.variance,
                    "moving_variance": keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64),
                }
            )
        )
    return pd.concat(tables, ignore_index=True)
