"""The variables of BN layers: list them, and record them during training.

``bn_variables(model)`` lists every BatchNormalization variable of a model (name,
path, shape, trainable) as a table. ``BNRecorder`` is a Keras callback that records
gamma, beta, moving_mean and moving_variance of chosen BN layers every ``k`` steps
(or every epoch) into one tidy DataFrame, optionally with the actual per-feature
mean and variance of each layer's input on a fixed set of examples, so a chapter can
plot the moving statistics approaching the statistics they estimate.

These helpers only record; the BN layers themselves stay in the notebooks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import pandas as pd

from bnbook._checks import check_int

__all__ = ["BNRecorder", "bn_layers", "bn_variables"]

#: The variables a BN layer can have, in ``layer.weights`` order.
BN_VARIABLES: tuple[str, ...] = ("gamma", "beta", "moving_mean", "moving_variance")


def _check_model(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}")


def bn_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Return every ``BatchNormalization`` layer of ``model``, nested models included.

    The layers come in the order of ``model.layers``, depth first.

    Raises:
        TypeError: ``model`` is not a Keras model.
    """
    _check_model(model)
    found: list[keras.layers.BatchNormalization] = []

    def walk(layers: Sequence[keras.layers.Layer]) -> None:
        for layer in layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                found.append(layer)
            elif hasattr(layer, "layers"):
                walk(layer.layers)

    walk(model.layers)
    return found


def bn_variables(model: keras.Model) -> pd.DataFrame:
    """List the variables of every BN layer of a built model, one row per variable.

    Args:
        model: A built Keras model (nested models are searched too).

    Returns:
        A DataFrame with columns ``layer`` (the layer's name), ``variable`` (the
        variable's name, e.g. ``"gamma"``), ``path`` (its unique path, e.g.
        ``"net/bn/gamma"``), ``shape`` (a tuple), ``size`` (number of values) and
        ``trainable`` (bool, as Keras reports it).

    Raises:
        TypeError: ``model`` is not a Keras model.
        ValueError: The model has no BN layer, or is not built yet.
    """
    layers = bn_layers(model)
    if not layers:
        raise ValueError(f"model {model.name!r} has no BatchNormalization layer")
    rows = []
    for layer in layers:
        if not layer.built:
            raise ValueError(f"BN layer {layer.name!r} is not built: call the model on data or build it first")
        for variable in layer.weights:
            rows.append(
                {
                    "layer": layer.name,
                    "variable": variable.name,
                    "path": variable.path,
                    "shape": tuple(int(d) for d in variable.shape),
                    "size": int(np.prod(variable.shape)),
                    "trainable": bool(variable.trainable),
                }
            )
    return pd.DataFrame(rows)


class BNRecorder(keras.callbacks.Callback):
    """Record the variables of BN layers during ``fit``, as one tidy table.

    A record is taken before the first step (step 0) and then after every
    ``every`` training steps, or at the end of every epoch when ``every`` is None.
    Each record holds, for every chosen layer and every feature, the values of
    gamma, beta, moving_mean and moving_variance (those the layer has), and, when
    ``inputs`` is given, ``input_mean`` and ``input_variance``: the mean and the
    biased variance of the layer's input over ``inputs``, computed with the
    model in inference mode (the statistics the moving ones estimate).

    Args:
        layers: The BN layers to record, or None for every BN layer of the model
            (direct layers of the model, found when training starts).
        every: Record every this many steps (>= 1), or None for once per epoch.
        inputs: Optional examples on which to measure the statistics of each
            layer's input. Needs a Sequential or Functional model whose BN layers
            are its direct layers.

    Attributes:
        table: A DataFrame with columns ``step`` (optimizer steps done),
            ``epoch`` (the 1-based epoch the step belongs to; 0 before training),
            ``layer``, ``variable``, ``feature`` (index) and ``value``.

    Steps are counted with ``on_train_batch_end``, so with ``steps_per_execution``
    > 1 one counted step is one execution (several optimizer steps).

    Raises:
        TypeError: ``layers`` holds something other than BatchNormalization layers,
            or ``every`` is not an int.
        ValueError: ``layers`` is empty, ``every`` < 1, or ``inputs`` is empty.
    """

    def __init__(
        self,
        layers: Sequence[keras.layers.BatchNormalization] | None = None,
        *,
        every: int | None = None,
        inputs: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if layers is not None:
            layers = list(layers)
            for layer in layers:
                if not isinstance(layer, keras.layers.BatchNormalization):
                    raise TypeError(f"layers must be BatchNormalization layers, got {type(layer).__name__}")
            if not layers:
                raise ValueError("layers is empty: pass BN layers, or None for all of them")
        self._layers = layers
        self.every = None if every is None else check_int(every, "every", minimum=1)
        if inputs is not None and len(inputs) == 0:
            raise ValueError("inputs is empty: pass some examples, or None")
        self.inputs = inputs
        self._rows: list[dict[str, Any]] = []
        self._step = 0
        self._epoch = 0
        self._probe: keras.Model | None = None

    @property
    def layers(self) -> list[keras.layers.BatchNormalization]:
        """The recorded layers (known once training has started)."""
        return list(self._layers or [])

    @property
    def table(self) -> pd.DataFrame:
        """Every record so far, one row per (record, layer, variable, feature)."""
        columns = ["step", "epoch", "layer", "variable", "feature", "value"]
        return pd.DataFrame(self._rows, columns=columns)

    def _record(self) -> None:
        assert self._layers is not None
        input_stats: list[tuple[np.ndarray, np.ndarray]] = []
        if self._probe is not None:
            outputs = self._probe(self.inputs, training=False)
            if len(self._layers) == 1:
                outputs = [outputs]
            for value in outputs:
                value = np.asarray(value, dtype="float64")
                axes = tuple(range(value.ndim - 1))
                input_stats.append((value.mean(axis=axes), value.var(axis=axes)))
        for index, layer in enumerate(self._layers):
            values = {v.name: np.asarray(v.numpy()).ravel() for v in layer.weights if v.name in BN_VARIABLES}
            if input_stats:
                values["input_mean"], values["input_variance"] = input_stats[index]
            for name, vector in values.items():
                for feature, value in enumerate(vector):
                    self._rows.append(
                        {
                            "step": self._step,
                            "epoch": self._epoch,
                            "layer": layer.name,
                            "variable": name,
                            "feature": feature,
                            "value": float(value),
                        }
                    )

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        if self._layers is None:
            self._layers = bn_layers(self.model)
            if not self._layers:
                raise ValueError(f"model {self.model.name!r} has no BatchNormalization layer to record")
        if self.inputs is not None and self._probe is None:
            for layer in self._layers:
                if layer not in self.model.layers:
                    raise ValueError(
                        f"inputs needs BN layers that are direct layers of the model; {layer.name!r} is nested"
                    )
            outputs = [layer.input for layer in self._layers]
            self._probe = keras.Model(self.model.inputs, outputs[0] if len(outputs) == 1 else outputs)
        if not self._rows:
            self._record()

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch += 1

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._step += 1
        if self.every is not None and self._step % self.every == 0:
            self._record()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.every is None:
            self._record()
