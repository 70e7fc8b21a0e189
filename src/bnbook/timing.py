"""Small, honest timing helpers: interleaved repeats, reported as medians, never a single run.

Speed is measured here and reported as ratios in the chapters; it is never asserted
as an absolute time. Interleaving the candidates (A, B, A, B, ...) spreads slow
drifts of the machine (other processes, frequency changes) over all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import pandas as pd

from bnbook._checks import check_int, check_model

__all__ = ["interleaved_call_seconds", "interleaved_epoch_seconds"]


def interleaved_epoch_seconds(
    models: Mapping[str, keras.Model],
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 64,
    repeats: int = 5,
) -> pd.DataFrame:
    """Wall time of one training epoch for each compiled model, interleaved, every repeat.

    Each model first trains one untimed epoch (tracing, warm-up), then the models
    take turns, one epoch each, ``repeats`` times. The models are trained by this:
    pass copies if their weights matter.

    Returns:
        Seconds per epoch: one row per repeat, one column per model (take ``.median()``).

    Raises:
        TypeError: A value is not a compiled Keras model, or ``repeats`` not an int.
        ValueError: ``models`` is empty or ``repeats`` < 1.
    """
    repeats = check_int(repeats, "repeats", minimum=1)
    if not models:
        raise ValueError("models is empty: pass {'name': compiled_model, ...}")
    for name, model in models.items():
        check_model(model, f"models[{name!r}]")
        if not model.compiled:
            raise ValueError(f"models[{name!r}] must be compiled first: call compile(optimizer=..., loss=...)")
    for model in models.values():
        model.fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
            times[name].append(time.perf_counter() - start)
    return pd.DataFrame(times).rename_axis("repeat")


def interleaved_call_seconds(calls: Mapping[str, Callable[[], Any]], *, repeats: int = 30) -> pd.DataFrame:
    """Wall time of each zero-argument callable, after one warm-up call, interleaved, every repeat.

    A callable's result is converted with ``numpy()`` when it has that method, so that
    TensorFlow's asynchronous execution is included in the time.

    Returns:
        Seconds per call: one row per repeat, one column per callable (take ``.median()``).

    Raises:
        TypeError: A value is not callable, or ``repeats`` not an int.
        ValueError: ``calls`` is empty or ``repeats`` < 1.
    """
    repeats = check_int(repeats, "repeats", minimum=1)
    if not calls:
        raise ValueError("calls is empty: pass {'name': function, ...}")
    for name, call in calls.items():
        if not callable(call):
            raise TypeError(f"calls[{name!r}] must be callable, got {type(call).__name__}")

    def run(call: Callable[[], Any]) -> None:
        result = call()
        if hasattr(result, "numpy"):
            result.numpy()

    for call in calls.values():
        run(call)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            run(call)
            times[name].append(time.perf_counter() - start)
    return pd.DataFrame(times).rename_axis("repeat")
