"""Small, honest timing helpers: interleaved repeats, reported as medians, never a single run.

Speed is measured here and reported as ratios in the chapters; it is never asserted
as an absolute time. Interleaving the candidates (A, B, then B, A, ...) spreads slow
drifts of the machine (other processes, frequency changes) over all of them, and
rotating their order from one round to the next gives each the same share of every
position in a round (first after the others' work, last before the next round, ...),
so that effects of position (cache state, a clock ramping up) do not favour one.

:func:`xla_by_default` says whether ``compile()``'s default ``jit_compile="auto"``
compiles with XLA on this machine, which decides what a timing measures.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import pandas as pd

from bnbook._checks import check_int, check_model

__all__ = ["interleaved_call_seconds", "interleaved_epoch_seconds", "rotated", "xla_by_default"]


def rotated(names: list[str], round_index: int) -> list[str]:
    """The order of the candidates in round ``round_index``: ``names`` rotated left by ``round_index``.

    Over ``len(names)`` consecutive rounds every candidate takes every position once.
    """
    shift = round_index % len(names) if names else 0
    return list(names[shift:]) + list(names[:shift])


def xla_by_default() -> bool:
    """Whether ``compile()`` with its default ``jit_compile="auto"`` compiles with XLA here (TensorFlow backend).

    Keras 3.15 resolves ``"auto"`` to XLA when TensorFlow sees a device other than the
    CPU (a GPU or TPU), and then only if the model supports it, which it does not while
    TensorFlow's op determinism is on (``_resolve_auto_jit_compile`` and
    ``model_supports_jit`` in ``keras/src/trainers/trainer.py``; no distribution
    strategy and every layer supporting XLA, both true in this book), and never on an
    Apple-silicon Mac that lists a GPU (``platform.system() == "Darwin"`` with "arm" in
    ``platform.processor()``, the test ``model_supports_jit`` makes).
    So: a non-CPU device is visible, op determinism is off, and it is not a GPU Mac.
    """
    import tensorflow as tf  # noqa: PLC0415
    from tensorflow.python.framework.config import is_op_determinism_enabled  # noqa: PLC0415

    accelerators = [d for d in tf.config.list_physical_devices() if d.device_type != "CPU"]
    gpu_mac = (
        platform.system() == "Darwin"
        and "arm" in platform.processor().lower()
        and any(d.device_type == "GPU" for d in accelerators)
    )
    return bool(accelerators) and not gpu_mac and not is_op_determinism_enabled()


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
    take turns, one epoch each, ``repeats`` times, in an order rotated by one from
    each round to the next (:func:`rotated`). The models are trained by this:
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
    for round_index in range(repeats):
        for name in rotated(list(models), round_index):
            start = time.perf_counter()
            models[name].fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
            times[name].append(time.perf_counter() - start)
    return pd.DataFrame(times).rename_axis("repeat")


def interleaved_call_seconds(calls: Mapping[str, Callable[[], Any]], *, repeats: int = 30) -> pd.DataFrame:
    """Wall time of each zero-argument callable, after one warm-up call, interleaved, every repeat.

    The callables take turns, one call each per round, in an order rotated by one from
    each round to the next (:func:`rotated`): with ``repeats`` a multiple of their
    number, each is called equally often in every position of a round.

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
    for round_index in range(repeats):
        for name in rotated(list(calls), round_index):
            start = time.perf_counter()
            run(calls[name])
            times[name].append(time.perf_counter() - start)
    return pd.DataFrame(times).rename_axis("repeat")
