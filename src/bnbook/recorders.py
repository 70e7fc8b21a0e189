"""Keras callbacks that record what happens during ``fit`` every few steps, as tidy tables.

Every recorder counts steps with the optimizer's ``iterations`` (so it also works with
``steps_per_execution > 1``, seeing every ``steps_per_execution``-th step: choose
``every`` as a multiple of it), records once before the first step and then every
``every`` steps (or at the end of every epoch when ``every`` is None), and exposes what
it recorded as the property ``table``, a DataFrame (empty, with its columns, before
``fit``). Recording never changes the model: passes run in inference mode, or
statelessly.

- :class:`BNRecorder`: gamma, beta and the moving statistics of BN layers, optionally
  with the actual statistics of each layer's input;
- :class:`InputPercentiles`: percentiles of one layer's input per unit on a probe batch;
- :class:`StepAccuracy`: accuracy on fixed data.

:func:`steps_to_reach` and :func:`percentile_drift` summarise their tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import pandas as pd

from bnbook._checks import check_bool, check_finite, check_int, check_model_inputs, check_sequence, require_columns
from bnbook.probes import BN_TYPES, BN_VARIABLES, bn_layers, channel_moments, layer_input_model

__all__ = ["BNRecorder", "InputPercentiles", "StepAccuracy", "percentile_drift", "steps_to_reach"]


def _as_list(outputs: Any) -> list[Any]:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _as_batch(x: Any, what: str) -> np.ndarray:
    array = np.asarray(x)
    if array.ndim < 2 or len(array) == 0:
        raise ValueError(f"{what} must be a non-empty batch (at least 2 dimensions), got shape {array.shape}")
    check_finite(array, what)
    return array


class _Recorder(keras.callbacks.Callback):
    """Call ``_record(step)`` before training and every ``every`` optimizer steps (or each epoch)."""

    _columns: tuple[str, ...] = ()

    def __init__(self, every: int | None) -> None:
        super().__init__()
        self.every = None if every is None else check_int(every, "every", minimum=1)
        self._last = -1
        self._rows: list[dict[str, Any]] = []

    def _step(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)  # None: used by hand on an uncompiled model
        return 0 if optimizer is None else int(keras.ops.convert_to_numpy(optimizer.iterations))

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._prepare()
        step = self._step()
        if step != self._last:
            self._last = step
            self._record(step)

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.every is None:
            return
        step = self._step()
        if step - self._last >= self.every:
            self._last = step
            self._record(step)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.every is None:
            step = self._step()
            self._last = step
            self._record(step)

    @property
    def table(self) -> pd.DataFrame:
        """Every record so far, one row per value (empty, with its columns, before ``fit``)."""
        return pd.DataFrame(self._rows, columns=list(self._columns))

    def _prepare(self) -> None:  # pragma: no cover - overridden where needed
        pass

    def _record(self, step: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class BNRecorder(_Recorder):
    """Record the variables of BN layers during ``fit``.

    Each record holds, for every chosen layer and feature, gamma, beta, moving_mean and
    moving_variance (those the layer has), and, when ``inputs`` is given,
    ``input_mean`` and ``input_variance``: the per-feature mean and biased variance of
    the layer's input over ``inputs`` (over every axis but the layer's ``axis``),
    computed in inference mode: the statistics the moving ones estimate.

    Args:
        layers: The BN layers to record (``keras.layers.BatchNormalization`` or
            ``bnbook.layers.BatchNorm``), or None for every BN layer of the model,
            nested ones included (found when training starts).
        every: Record every this many optimizer steps (>= 1), or None once per epoch.
        inputs: Optional examples on which to measure the statistics of each layer's
            input; needs BN layers that are top-level layers of a single-input model.

    ``table`` has the columns ``step`` (optimizer steps done), ``epoch`` (the 1-based
    epoch the record ends; 0 before training), ``layer``, ``variable``, ``feature``
    (index) and ``value``.

    Raises:
        TypeError: ``layers`` is a single layer or holds something other than BN
            layers, or ``every`` is not an int; when training starts, ``inputs`` is
            integer where the model takes floats.
        ValueError: ``layers`` is empty, ``every`` < 1, or ``inputs`` is empty or holds
            NaN or inf.
    """

    _columns = ("step", "epoch", "layer", "variable", "feature", "value")

    def __init__(
        self,
        layers: Sequence[keras.layers.Layer] | None = None,
        *,
        every: int | None = None,
        inputs: np.ndarray | None = None,
    ) -> None:
        super().__init__(every)
        if isinstance(layers, keras.layers.Layer):
            raise TypeError(f"layers must be a list of BN layers (or None); wrap one layer in a list: [{layers.name!r} layer]")
        if layers is not None:
            layers = list(layers)
            for layer in layers:
                if not isinstance(layer, BN_TYPES):
                    raise TypeError(
                        f"layers must be BN layers (keras.layers.BatchNormalization or bnbook.layers.BatchNorm), "
                        f"got {type(layer).__name__}"
                    )
            if not layers:
                raise ValueError("layers is empty: pass BN layers, or None for all of them")
        self._layers = layers
        if inputs is not None and len(inputs) == 0:
            raise ValueError("inputs is empty: pass some examples, or None")
        self.inputs = None if inputs is None else _as_batch(inputs, "inputs")
        self._epoch = 0
        self._probe: keras.Model | None = None

    @property
    def layers(self) -> list[keras.layers.Layer]:
        """The recorded layers (known once training has started)."""
        return list(self._layers or [])

    def _prepare(self) -> None:
        if self._layers is None:
            self._layers = bn_layers(self.model)
            if not self._layers:
                raise ValueError(f"model {self.model.name!r} has no BN layer to record")
        if self.inputs is not None and self._probe is None:
            check_model_inputs(self.model, self.inputs, "inputs")
            self._probe = layer_input_model(self.model, self._layers)

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch += 1

    def _record(self, step: int) -> None:
        assert self._layers is not None
        input_stats: list[tuple[np.ndarray, np.ndarray]] = []
        if self._probe is not None:
            outputs = _as_list(self._probe(self.inputs, training=False))
            for layer, value in zip(self._layers, outputs):
                input_stats.append(channel_moments(keras.ops.convert_to_numpy(value), layer.axis))
        for index, layer in enumerate(self._layers):
            values = {v.name: np.asarray(v.numpy()).ravel() for v in layer.weights if v.name in BN_VARIABLES}
            if input_stats:
                values["input_mean"], values["input_variance"] = input_stats[index]
            for name, vector in values.items():
                for feature, value in enumerate(vector):
                    self._rows.append(
                        {
                            "step": step,
                            "epoch": self._epoch,
                            "layer": layer.name,
                            "variable": name,
                            "feature": feature,
                            "value": float(value),
                        }
                    )


class InputPercentiles(_Recorder):
    """Record percentiles of the input of one layer, per unit, on a fixed probe batch.

    Every ``every`` training steps (and once before the first), the model's inputs
    ``probe_x`` are passed through the model up to the layer, and for each unit (the
    layer's ``axis`` if it has one, else the last axis) of the layer's input the given
    percentiles over the probe batch (and over the spatial positions, for images) are
    stored.

    With ``training=False`` (the default) the pass is in inference mode: BN layers use
    their moving statistics. With ``training=True`` it is in training mode (BN layers
    normalise with the probe batch's own statistics, dropout is active), but
    *stateless*: the model's variables, moving statistics included, are not changed.

    Args:
        layer: The layer whose *input* is recorded, or its name (e.g. the
            ``Activation("sigmoid")`` layer, to record what the sigmoid receives).
        probe_x: A fixed batch of model inputs.
        every: Record every this many training steps, >= 1 (None: once per epoch).
        percentiles: Percentiles in [0, 100], e.g. ``(15, 50, 85)``.
        training: Run the probe pass in training mode (statelessly), see above.

    ``table`` has the columns ``step``, ``unit``, ``percentile``, ``value``.

    Raises:
        TypeError: ``layer`` is neither a str nor a Keras layer; ``every`` not an int;
            ``training`` not a bool; ``percentiles`` not a sequence; when training
            starts, ``probe_x`` integer where the model takes floats.
        ValueError: ``every`` < 1, a percentile not a number in [0, 100], ``percentiles``
            empty, or ``probe_x`` not a non-empty batch or holding NaN or inf.
    """

    _columns = ("step", "unit", "percentile", "value")

    def __init__(
        self,
        layer: str | keras.layers.Layer,
        probe_x: np.ndarray,
        *,
        every: int | None,
        percentiles: Sequence[float] = (15, 50, 85),
        training: bool = False,
    ) -> None:
        super().__init__(every)
        self.training = check_bool(training, "training")
        if not isinstance(layer, (str, keras.layers.Layer)):
            raise TypeError(f"layer must be a layer name (str) or a keras layer, got {type(layer).__name__}")
        percentiles = check_sequence(percentiles, "percentiles", "(15, 50, 85)")
        if len(percentiles) == 0:
            raise ValueError("percentiles is empty: pass e.g. (15, 50, 85)")
        for q in percentiles:
            if isinstance(q, bool) or not isinstance(q, (int, float, np.integer, np.floating)) or not 0 <= q <= 100:
                raise ValueError(f"percentiles must be numbers in [0, 100], e.g. (15, 50, 85); got {q!r}")
        self.layer = layer
        self.probe_x = _as_batch(probe_x, "probe_x")
        self.percentiles = tuple(float(q) for q in percentiles)
        self._probe: keras.Model | None = None
        self._axis = -1

    def _prepare(self) -> None:
        layer = self.model.get_layer(self.layer) if isinstance(self.layer, str) else self.layer
        axis = getattr(layer, "axis", -1)
        self._axis = axis if isinstance(axis, int) else -1
        check_model_inputs(self.model, self.probe_x, "probe_x")
        self._probe = layer_input_model(self.model, [layer])

    def _record(self, step: int) -> None:
        assert self._probe is not None
        if self.training:
            outputs, _ = self._probe.stateless_call(
                [v.value for v in self._probe.trainable_variables],
                [v.value for v in self._probe.non_trainable_variables],
                self.probe_x,
                training=True,
            )
        else:
            outputs = self._probe(self.probe_x, training=False)
        values = keras.ops.convert_to_numpy(_as_list(outputs)[0])
        values = np.moveaxis(values, self._axis % values.ndim, -1).reshape(-1, values.shape[self._axis])
        table = np.percentile(values, self.percentiles, axis=0)  # (percentiles, units)
        for p, q in enumerate(self.percentiles):
            for unit, value in enumerate(table[p]):
                self._rows.append({"step": step, "unit": unit, "percentile": q, "value": float(value)})


class StepAccuracy(_Recorder):
    """Record the classification accuracy on fixed data every ``every`` training steps.

    The model is called in inference mode on ``x`` (in one batch), and the accuracy is
    the share of rows whose arg-max output equals the integer label in ``y``.

    Args:
        x: Inputs, e.g. the test images.
        y: Integer labels, one per row of ``x``.
        every: Record every this many training steps, >= 1 (None: once per epoch).

    ``table`` has the columns ``step`` and ``accuracy``.

    Raises:
        TypeError: ``every`` is not an int; when training starts, ``x`` integer where
            the model takes floats.
        ValueError: ``every`` < 1, ``x`` and ``y`` differ in length, or ``x`` holds NaN or inf.
    """

    _columns = ("step", "accuracy")

    def __init__(self, x: np.ndarray, y: np.ndarray, *, every: int | None) -> None:
        super().__init__(every)
        self.x = _as_batch(x, "x")
        self.y = np.asarray(y).reshape(-1)
        if len(self.y) != len(self.x):
            raise ValueError(f"x and y must have the same length, got {len(self.x)} and {len(self.y)}")

    def _prepare(self) -> None:
        check_model_inputs(self.model, self.x, "x")

    def _record(self, step: int) -> None:
        outputs = keras.ops.convert_to_numpy(self.model(self.x, training=False))
        self._rows.append({"step": step, "accuracy": float(np.mean(outputs.argmax(axis=-1) == self.y))})


def steps_to_reach(curve: pd.DataFrame, target: float, *, column: str = "accuracy") -> float:
    """Return the first ``step`` at which ``column`` is at least ``target``; ``nan`` if never.

    Args:
        curve: A table with a ``step`` column and ``column``, e.g. ``StepAccuracy(...).table``.
        target: The value to reach.
        column: The column compared with ``target``.

    Raises:
        TypeError: ``curve`` is not a DataFrame.
        ValueError: ``step`` or ``column`` is not a column of ``curve``.
    """
    require_columns(curve, ("step", column))
    ordered = curve.sort_values("step")
    reached = ordered.loc[ordered[column] >= target, "step"]
    return float(reached.iloc[0]) if len(reached) else float("nan")


def percentile_drift(records: pd.DataFrame, *, low: float = 15, high: float = 85) -> pd.Series:
    """How far each unit's recorded percentiles move, in units of the unit's own spread.

    For one unit, each percentile traces a curve over the recorded steps. Its drift is
    the mean, over the recorded percentiles, of ``max - min`` of that curve, divided by
    the mean over steps of the spread ``percentile(high) - percentile(low)``. A unit
    whose input distribution keeps its place and width scores near 0; a score of 1
    means the percentiles moved, on average, by as much as the distribution is wide.

    Args:
        records: ``InputPercentiles(...).table``: columns ``step``, ``unit``,
            ``percentile``, ``value``.
        low, high: The percentiles whose difference is the spread; both must be recorded.

    Returns:
        The drift per unit (index ``unit``). A unit whose spread is 0 (its input is
        constant on the probe batch, e.g. a dead ReLU) has no scale: its drift is NaN
        if its percentiles did not move, and inf if they did.

    Raises:
        TypeError: ``records`` is not a DataFrame.
        ValueError: A column is missing, ``low``/``high`` were not recorded, or ``high <= low``.
    """
    require_columns(records, ("step", "unit", "percentile", "value"))
    if not high > low:
        raise ValueError(f"high must be greater than low, got low={low}, high={high}")
    recorded = set(records["percentile"].unique())
    for q in (low, high):
        if float(q) not in recorded:
            raise ValueError(f"percentile {q} was not recorded; recorded: {sorted(recorded)}")
    wide = records.pivot_table(index=["unit", "step"], columns="percentile", values="value")
    spread = (wide[float(high)] - wide[float(low)]).groupby("unit").mean()
    movement = wide.groupby("unit").agg(lambda s: s.max() - s.min()).mean(axis=1)
    return (movement / spread).rename("drift")
