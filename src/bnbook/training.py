"""Training loops that return tidy pandas tables: one run, or variants x seeds.

The chapters build and compile their models themselves (the BN layer, the bias and
the placement stay visible there); these helpers only run ``fit`` quietly, time each
epoch, and collect the history.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import pandas as pd

from bnbook._checks import check_int
from bnbook.reproducibility import set_up

__all__ = ["QUIET_ENV_VAR", "final_metrics", "last_epoch", "run_experiments", "train"]

#: When this environment variable is "1", helpers print nothing (set by ``make execute``/``make test``).
QUIET_ENV_VAR = "BNBOOK_QUIET"


def _quiet_by_default() -> bool:
    return os.environ.get(QUIET_ENV_VAR, "") == "1"


class _EpochTimer(keras.callbacks.Callback):
    """Record the wall time of every epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def _same_variables(a: keras.Model, b: keras.Model) -> bool:
    """Whether two models have variables of the same shapes and dtypes, in the same order."""
    return [(tuple(v.shape), v.dtype) for v in a.variables] == [(tuple(v.shape), v.dtype) for v in b.variables]


def _strip_names(config: Any) -> Any:
    """A copy of a nested config without its ``name`` entries."""
    if isinstance(config, dict):
        return {key: _strip_names(value) for key, value in config.items() if key != "name"}
    if isinstance(config, list):
        return [_strip_names(value) for value in config]
    return config


def _graph_signature(model: keras.Model) -> str | None:
    """What decides a compiled model's traced training graph, apart from names and a float learning rate.

    Two models with the same signature run the same computation, so one traced graph can
    train both once the variables (the learning rate is one of the optimizer's) are copied.
    ``None`` when the model cannot describe itself (a subclassed model without
    ``get_config``): such a model is never shared between variants.
    """
    try:
        config = model.get_config()
        compile_config = model.get_compile_config()
    except Exception:  # noqa: BLE001 - any failure to describe the model means: do not share
        return None
    if not isinstance(compile_config, dict) or not isinstance(compile_config.get("optimizer"), dict):
        return None
    optimizer = json.loads(json.dumps(compile_config["optimizer"], default=str))
    if isinstance(optimizer.get("config", {}).get("learning_rate"), float):
        del optimizer["config"]["learning_rate"]  # a variable of the optimizer, copied like the others
    compile_config = {**compile_config, "optimizer": optimizer}
    cls = type(model)
    return json.dumps(
        [f"{cls.__module__}.{cls.__qualname__}", _strip_names(config), _strip_names(compile_config)],
        sort_keys=True,
        default=str,
    )


def _copy_variables(sources: Sequence[Any], targets: Sequence[Any]) -> None:
    for source, target in zip(sources, targets):
        target.assign(source)


def train(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 64,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    shuffle: bool = True,
) -> pd.DataFrame:
    """Fit a compiled model silently and return its history, one row per epoch.

    Args:
        model: A compiled Keras model.
        x, y: Training inputs and labels.
        epochs: Number of epochs, >= 1.
        batch_size: Mini-batch size, >= 1.
        validation_data: ``(x_val, y_val)``; adds ``val_*`` columns, computed in
            inference mode (moving statistics) by ``fit``.
        callbacks: Extra Keras callbacks.
        shuffle: Shuffle the training data every epoch (seeded by ``set_up``).

    Returns:
        A DataFrame with columns ``epoch`` (1-based), every metric Keras logged
        (``loss``, ``accuracy``, ``val_loss``, ...) and ``seconds``, the wall time
        of the epoch.

    Raises:
        TypeError: ``model`` is not a Keras model, or ``epochs``/``batch_size`` not ints.
        ValueError: ``model`` is not compiled, or ``epochs``/``batch_size`` < 1.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}")
    if not model.compiled:
        raise ValueError("model must be compiled first: call model.compile(optimizer=..., loss=..., metrics=[...])")
    epochs = check_int(epochs, "epochs", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    timer = _EpochTimer()
    history = model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=validation_data,
        callbacks=[*callbacks, timer],
        shuffle=shuffle,
        verbose=0,
    )
    table = pd.DataFrame(history.history)
    table.insert(0, "epoch", np.arange(1, len(table) + 1))
    table["seconds"] = timer.seconds
    return table


def run_experiments(
    variants: Mapping[str, Callable[[], keras.Model]],
    seeds: Sequence[int],
    data: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    *,
    epochs: int,
    batch_size: int = 64,
    progress: bool | None = None,
    keep_models: bool = False,
    reuse_graphs: bool = True,
    callbacks: Callable[[], Sequence[keras.callbacks.Callback]] | None = None,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[tuple[str, int], keras.Model]]:
    """Train every variant with every seed and return one tidy table.

    For each ``(variant, seed)`` it calls ``set_up(seed)`` first, so that every variant
    sees the same initialisation seed and the same data order, then builds a fresh
    model with the variant's function, which must return a *compiled* model.

    Tracing a new model's training graph costs about 2 s on a small CPU, more than a
    short run itself. With ``reuse_graphs`` (the default) each variant's first model
    is kept, and for the next seeds every variable of it (weights, moving statistics,
    random-generator states) is set to the freshly built model's, and its optimizer
    variables to the fresh optimizer's, so the traced graph is reused. Variants whose
    models differ only in layer names and a float learning rate (the same classes,
    layer configurations, optimizer settings, loss and metrics) share one traced graph
    too; the learning rate is an optimizer variable and is copied with the others.
    The results are the same as training fresh models (the unit tests check it).

    Args:
        variants: ``{name: build_fn}``; each ``build_fn()`` returns a compiled model.
        seeds: The seeds, one run each per variant.
        data: ``(x_train, y_train), (x_test, y_test)`` as returned by ``bnbook.data.load``;
            the test set is the validation data.
        epochs, batch_size: As in :func:`train`.
        progress: Print one line per finished run. ``None``: print unless the
            environment variable ``BNBOOK_QUIET`` is ``"1"``.
        keep_models: Also return the trained models, to inspect them afterwards.
        reuse_graphs: Reuse each variant's traced graph across seeds (see above).
        callbacks: A function returning fresh Keras callbacks for each run (e.g. one
            that stops at a target accuracy); runs may then have different lengths.

    Returns:
        A DataFrame with columns ``variant``, ``seed``, then those of :func:`train`;
        with ``keep_models=True``, the pair ``(table, {(variant, seed): model})``.

    Raises:
        TypeError: A variant's function is not callable or does not return a Keras model.
        ValueError: ``variants`` or ``seeds`` is empty.
    """
    if not variants:
        raise ValueError("variants is empty: pass {'name': build_fn, ...}")
    if len(seeds) == 0:
        raise ValueError("seeds is empty: pass at least one seed, e.g. [0, 1, 2]")
    for name, build in variants.items():
        if not callable(build):
            raise TypeError(f"variant {name!r} must map to a function returning a compiled model, got {build!r}")
    show = (not _quiet_by_default()) if progress is None else progress
    (x_train, y_train), test = data
    runs, models = [], {}
    traced: dict[str, keras.Model] = {}  # the model whose graph each variant reuses
    by_signature: dict[str, keras.Model] = {}  # the same, for variants with the same graph
    total = len(variants) * len(seeds)
    done = 0
    for name, build in variants.items():
        for seed in seeds:
            set_up(seed)
            fresh = build()
            if not isinstance(fresh, keras.Model):
                raise TypeError(f"variant {name!r} returned {type(fresh).__name__}, not a keras.Model")
            model = fresh
            if reuse_graphs:
                fresh.optimizer.build(fresh.trainable_variables)
                signature = _graph_signature(fresh)
                candidate = traced.get(name)
                if candidate is None and signature is not None:
                    candidate = by_signature.get(signature)
                if candidate is not None and _same_variables(candidate, fresh):
                    model = candidate
                    _copy_variables(fresh.variables, model.variables)
                    _copy_variables(fresh.optimizer.variables, model.optimizer.variables)
                else:
                    traced[name] = fresh
                    if signature is not None:
                        by_signature.setdefault(signature, fresh)
            table = train(
                model,
                x_train,
                y_train,
                epochs=epochs,
                batch_size=batch_size,
                validation_data=test,
                callbacks=callbacks() if callbacks is not None else (),
            )
            table.insert(0, "seed", seed)
            table.insert(0, "variant", name)
            runs.append(table)
            if keep_models:
                keeper = build() if reuse_graphs else model  # the traced model is reused
                if keeper is not model:
                    _copy_variables(model.variables, keeper.variables)
                models[(name, seed)] = keeper
            done += 1
            if show:
                last = table.iloc[-1]
                metrics = ", ".join(f"{k}={last[k]:.4f}" for k in table.columns if k.startswith("val_"))
                print(f"[{done}/{total}] {name}, seed {seed}: {metrics} ({table['seconds'].sum():.1f} s)", flush=True)
    results = pd.concat(runs, ignore_index=True)
    return (results, models) if keep_models else results


def last_epoch(results: pd.DataFrame, *, by: str = "variant") -> pd.DataFrame:
    """Return the rows of the last epoch of every run, a run being one ``(by, seed)`` pair.

    Raises:
        ValueError: ``by``, ``seed`` or ``epoch`` is not a column (the message lists those present).
    """
    for column in (by, "epoch", "seed"):
        if column not in results.columns:
            raise ValueError(f"column {column!r} is not in the results; present: {', '.join(map(str, results.columns))}")
    return results[results["epoch"] == results.groupby([by, "seed"])["epoch"].transform("max")]


def final_metrics(results: pd.DataFrame, metric: str = "val_accuracy", *, by: str = "variant") -> pd.DataFrame:
    """Summarise the last epoch of each run: mean, std, min and max over seeds per group.

    Args:
        results: A table from :func:`run_experiments`.
        metric: The column to summarise.
        by: The grouping column.

    Returns:
        One row per group (index ``by``), columns ``mean``, ``std``, ``min``, ``max``, ``runs``.

    Raises:
        ValueError: A needed column is missing (the message lists those present).
    """
    if metric not in results.columns:
        raise ValueError(f"column {metric!r} is not in the results; present: {', '.join(map(str, results.columns))}")
    summary = last_epoch(results, by=by).groupby(by, sort=False)[metric].agg(["mean", "std", "min", "max", "count"])
    return summary.rename(columns={"count": "runs"})
