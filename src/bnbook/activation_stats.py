"""Record what happens during training every few steps, on fixed data, as tidy tables.

Two Keras callbacks and two small summaries, used by chapter 2 to redraw Ioffe &
Szegedy's MNIST figure: :class:`InputPercentiles` records percentiles of the input
of one layer (for example an activation) on a fixed probe batch, and
:class:`StepAccuracy` the accuracy on a fixed test set, both every ``every``
training steps and both in inference mode, so that recording changes nothing in
the model (no moving-statistics update, no dropout). :func:`steps_to_reach` and
:func:`percentile_drift` summarise the recorded tables.

The step counter is the optimizer's ``iterations``, so the callbacks also work with
``steps_per_execution > 1`` (they then see every ``steps_per_execution``-th step:
choose ``every`` as a multiple of it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import pandas as pd

from bnbook._checks import check_int

__all__ = ["InputPercentiles", "StepAccuracy", "percentile_drift", "steps_to_reach"]


def _as_batch(x: Any, what: str) -> np.ndarray:
    array = np.asarray(x)
    if array.ndim < 2 or len(array) == 0:
        raise ValueError(f"{what} must be a non-empty batch (at least 2 dimensions), got shape {array.shape}")
    return array


class _EveryKSteps(keras.callbacks.Callback):
    """Call ``self._record(step)`` at the start and whenever ``every`` steps have passed."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = check_int(every, "every", minimum=1)
        self._last = -1

    def _step(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._prepare()
        step = self._step()
        self._last = step
        self._record(step)

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        step = self._step()
        if step - self._last >= self.every:
            self._last = step
            self._record(step)

    def _prepare(self) -> None:  # pragma: no cover - overridden
        pass

    def _record(self, step: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class InputPercentiles(_EveryKSteps):
    """Record percentiles of the input of one layer, per unit, on a fixed probe batch.

    Every ``every`` training steps (and once before the first), the model's inputs
    ``probe_x`` are passed through the model up to the layer, and for each unit (last
    axis) of the layer's input the given percentiles over the probe batch (and over
    the spatial positions, for images) are stored.

    With ``training=False`` (the default) the pass is in inference mode: BN layers
    use their moving statistics. With ``training=True`` it is in training mode (BN
    layers normalise with the probe batch's own statistics, dropout is active), but
    *stateless*: the model's variables, moving statistics included, are not changed.

    Args:
        layer: The layer whose *input* is recorded, or its name (e.g. the
            ``Activation("sigmoid")`` layer, to record what the sigmoid receives).
        probe_x: A fixed batch of model inputs.
        every: Record every this many training steps, >= 1.
        percentiles: Percentiles in [0, 100], e.g. ``(15, 50, 85)``.
        training: Run the probe pass in training mode (statelessly), see above.

    Raises:
        TypeError: ``layer`` is neither a str nor a Keras layer; ``every`` not an
            int; ``training`` not a bool.
        ValueError: ``every`` < 1, a percentile outside [0, 100], ``percentiles``
            empty, or ``probe_x`` not a non-empty batch.
    """

    def __init__(
        self,
        layer: str | keras.layers.Layer,
        probe_x: np.ndarray,
        *,
        every: int,
        percentiles: Sequence[float] = (15, 50, 85),
        training: bool = False,
    ) -> None:
        super().__init__(every)
        if not isinstance(training, bool):
            raise TypeError(f"training must be True or False, got {training!r}")
        self.training = training
        if not isinstance(layer, (str, keras.layers.Layer)):
            raise TypeError(f"layer must be a layer name (str) or a keras layer, got {type(layer).__name__}")
        if len(percentiles) == 0:
            raise ValueError("percentiles is empty: pass e.g. (15, 50, 85)")
        for q in percentiles:
            if not 0 <= float(q) <= 100:
                raise ValueError(f"percentiles must be in [0, 100], got {q!r}")
        self.layer = layer
        self.probe_x = _as_batch(probe_x, "probe_x")
        self.percentiles = tuple(float(q) for q in percentiles)
        self._rows: list[pd.DataFrame] = []
        self._probe: keras.Model | None = None

    def _prepare(self) -> None:
        layer = self.model.get_layer(self.layer) if isinstance(self.layer, str) else self.layer
        inputs = self.model.inputs
        self._probe = keras.Model(inputs[0] if len(inputs) == 1 else inputs, layer.input)

    def _record(self, step: int) -> None:
        if self.training:
            outputs, _ = self._probe.stateless_call(
                [v.value for v in self._probe.trainable_variables],
                [v.value for v in self._probe.non_trainable_variables],
                self.probe_x,
                training=True,
            )
        else:
            outputs = self._probe(self.probe_x, training=False)
        values = keras.ops.convert_to_numpy(outputs)
        values = values.reshape(-1, values.shape[-1])  # (examples x positions, units)
        table = np.percentile(values, self.percentiles, axis=0)  # (percentiles, units)
        n_units = table.shape[1]
        self._rows.append(
            pd.DataFrame(
                {
                    "step": step,
                    "unit": np.tile(np.arange(n_units), len(self.percentiles)),
                    "percentile": np.repeat(self.percentiles, n_units),
                    "value": table.ravel(),
                }
            )
        )

    def table(self) -> pd.DataFrame:
        """All records: columns ``step``, ``unit``, ``percentile``, ``value`` (one row each).

        Raises:
            ValueError: Nothing was recorded yet (the callback was not used in ``fit``).
        """
        if not self._rows:
            raise ValueError("nothing recorded yet: pass the callback to fit(..., callbacks=[...]) first")
        return pd.concat(self._rows, ignore_index=True)


class StepAccuracy(_EveryKSteps):
    """Record the classification accuracy on fixed data every ``every`` training steps.

    The model is called in inference mode on ``x`` (in one batch), and the accuracy
    is the share of rows whose arg-max output equals the integer label in ``y``.

    Args:
        x: Inputs, e.g. the test images.
        y: Integer labels, one per row of ``x``.
        every: Record every this many training steps, >= 1.

    Raises:
        TypeError: ``every`` is not an int.
        ValueError: ``every`` < 1, or ``x`` and ``y`` differ in length.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, every: int) -> None:
        super().__init__(every)
        self.x = _as_batch(x, "x")
        self.y = np.asarray(y).reshape(-1)
        if len(self.y) != len(self.x):
            raise ValueError(f"x and y must have the same length, got {len(self.x)} and {len(self.y)}")
        self._steps: list[int] = []
        self._accuracy: list[float] = []

    def _record(self, step: int) -> None:
        outputs = keras.ops.convert_to_numpy(self.model(self.x, training=False))
        self._steps.append(step)
        self._accuracy.append(float(np.mean(outputs.argmax(axis=-1) == self.y)))

    def table(self) -> pd.DataFrame:
        """All records: columns ``step`` and ``accuracy``, one row per record."""
        return pd.DataFrame({"step": self._steps, "accuracy": self._accuracy})


def steps_to_reach(curve: pd.DataFrame, target: float, *, column: str = "accuracy") -> float:
    """Return the first ``step`` at which ``column`` is at least ``target``; ``nan`` if never.

    Args:
        curve: A table with a ``step`` column and ``column``, e.g. ``StepAccuracy.table()``.
        target: The value to reach.
        column: The column compared with ``target``.

    Raises:
        ValueError: ``step`` or ``column`` is not a column of ``curve``.
    """
    for name in ("step", column):
        if name not in curve.columns:
            raise ValueError(f"column {name!r} is not in the table; present: {', '.join(map(str, curve.columns))}")
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
        records: ``InputPercentiles.table()``: columns ``step``, ``unit``,
            ``percentile``, ``value``.
        low, high: The percentiles whose difference is the spread; both must be recorded.

    Returns:
        The drift per unit (index ``unit``).

    Raises:
        ValueError: A column is missing, or ``low``/``high`` were not recorded, or
            ``high <= low``.
    """
    for name in ("step", "unit", "percentile", "value"):
        if name not in records.columns:
            raise ValueError(f"column {name!r} is not in the table; present: {', '.join(map(str, records.columns))}")
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
