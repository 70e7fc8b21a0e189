"""Train compiled models quietly and collect tidy tables: one run, or variants x seeds (x batch sizes).

The chapters build and compile their models themselves (the BN layer, the bias and the
placement stay visible there); these helpers only run ``fit`` quietly, time each epoch,
reuse traced graphs across runs, and collect the history: :func:`train` (one model),
:func:`run_experiments` (every variant with every seed, optionally over a grid of batch
sizes with a learning rate per batch size), :func:`last_epoch` and :func:`final_metrics`
(their summaries). The test set is the validation data, so test-set metrics are the
``val_*`` columns everywhere.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import pandas as pd

from bnbook._checks import check_int, check_model, check_sequence, require_columns
from bnbook.quiet import show_progress
from bnbook.reproducibility import set_up

__all__ = ["RUN_COLUMNS", "final_metrics", "last_epoch", "run_experiments", "train"]

#: The columns of :func:`run_experiments`'s table that identify one run (those present).
RUN_COLUMNS: tuple[str, ...] = ("variant", "batch_size", "seed")


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
    validation_batch_size: int | None = None,
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
            inference mode (moving statistics) by ``fit`` after every epoch.
        validation_batch_size: Batch size of that evaluation (memory and speed only:
            inference mode does not depend on it); ``None``: ``batch_size``.
        callbacks: Extra Keras callbacks.
        shuffle: Shuffle the training data every epoch (seeded by ``set_up``).

    Returns:
        A DataFrame with columns ``epoch`` (1-based), every metric Keras logged
        (``loss``, ``accuracy``, ``val_loss``, ...) and ``seconds``, the wall time of
        the epoch (validation included).

    Raises:
        TypeError: ``model`` is not a Keras model, ``epochs``/``batch_size`` not ints, or
            ``callbacks`` not a list of Keras callbacks.
        ValueError: ``model`` is not compiled, or ``epochs``/``batch_size`` < 1.
    """
    check_model(model)
    if not model.compiled:
        raise ValueError("model must be compiled first: call model.compile(optimizer=..., loss=..., metrics=[...])")
    epochs = check_int(epochs, "epochs", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if validation_batch_size is not None:
        validation_batch_size = check_int(validation_batch_size, "validation_batch_size", minimum=1)
    if isinstance(callbacks, keras.callbacks.Callback) or not all(
        isinstance(c, keras.callbacks.Callback) for c in check_sequence(callbacks, "callbacks", "[keras.callbacks.EarlyStopping()]")
    ):
        raise TypeError(f"callbacks must be a list of keras.callbacks.Callback objects, got {callbacks!r}")
    timer = _EpochTimer()
    history = model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=validation_data,
        validation_batch_size=validation_batch_size,
        callbacks=[*callbacks, timer],
        shuffle=shuffle,
        verbose=0,
    )
    table = pd.DataFrame(history.history)
    table.insert(0, "epoch", np.arange(1, len(table) + 1))
    table["seconds"] = timer.seconds
    return table


class _GraphCache:
    """Reuse each variant's traced training graph for the next runs (see run_experiments)."""

    def __init__(self) -> None:
        self.by_variant: dict[str, keras.Model] = {}
        self.by_signature: dict[str, keras.Model] = {}

    def model_for(self, name: str, fresh: keras.Model) -> keras.Model:
        if not fresh.trainable_variables:  # not built yet (a subclassed model): fit builds it, nothing to share
            return fresh
        fresh.optimizer.build(fresh.trainable_variables)
        signature = _graph_signature(fresh)
        candidate = self.by_variant.get(name)
        if candidate is None and signature is not None:
            candidate = self.by_signature.get(signature)
        if candidate is not None and _same_variables(candidate, fresh):
            _copy_variables(fresh.variables, candidate.variables)
            _copy_variables(fresh.optimizer.variables, candidate.optimizer.variables)
            return candidate
        self.by_variant[name] = fresh
        if signature is not None:
            self.by_signature.setdefault(signature, fresh)
        return fresh


def run_experiments(
    variants: Mapping[str, Callable[[], keras.Model]],
    seeds: Sequence[int],
    data: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    *,
    epochs: int,
    batch_size: int | Sequence[int] = 64,
    learning_rate: Callable[[int], float] | None = None,
    validation_batch_size: int | None = None,
    callbacks: Callable[[], Sequence[keras.callbacks.Callback]] | None = None,
    models: dict[tuple[Any, ...], keras.Model] | None = None,
    reuse_graphs: bool = True,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Train every variant with every seed (and every batch size) and return one tidy table.

    For each run it calls ``set_up(seed)`` first, so that every variant sees the same
    initialisation seed and the same data order, then builds a fresh model with the
    variant's function, which must return a *compiled* model. The test set is the
    validation data: ``val_accuracy`` is the test accuracy after every epoch.

    With a sequence of batch sizes, every variant and seed is trained at each of them
    for the same number of epochs (so every run sees the same examples), with the
    optimizer's learning rate set to ``learning_rate(batch_size)`` when given.

    Tracing a new model's training graph costs about 2 s on a small CPU, more than a
    short run itself. With ``reuse_graphs`` (the default) each variant's first model is
    kept, and for the next runs every variable of it (weights, moving statistics,
    random-generator states) is set to the freshly built model's, and its optimizer
    variables (the learning rate among them) to the fresh optimizer's, so the traced
    graph is reused. Variants whose models differ only in layer names and a float
    learning rate share one traced graph too. The results are the same as training
    fresh models (the unit tests check it).

    Args:
        variants: ``{name: build_fn}``; each ``build_fn()`` returns a compiled model.
        seeds: The seeds, one run each per variant (and batch size).
        data: ``(x_train, y_train), (x_test, y_test)`` as returned by ``bnbook.data.load``.
        epochs: Epochs per run, >= 1.
        batch_size: One batch size, or a sequence of them (a grid).
        learning_rate: Maps a batch size to the learning rate to train it with
            (needs an optimizer whose ``learning_rate`` is a number); ``None`` keeps
            the compiled one.
        validation_batch_size: Batch size of the per-epoch test-set evaluation;
            ``None``: the training batch size.
        callbacks: A function returning fresh Keras callbacks for each run (e.g. one
            that stops at a target accuracy); runs may then have different lengths.
        models: A dict to receive the trained models (copies with their own traced
            state), keyed by the run's values of :data:`RUN_COLUMNS` that the table has:
            ``(variant, seed)``, or ``(variant, batch_size, seed)`` for a grid.
        reuse_graphs: Reuse traced graphs across runs (see above).
        progress: Print one line per finished run. ``None``: print unless the
            environment variable ``BNBOOK_QUIET`` is ``"1"``.

    Returns:
        A DataFrame with columns ``variant``, (for a grid: ``batch_size``,
        ``learning_rate``), ``seed``, then those of :func:`train`.

    Raises:
        TypeError: ``variants`` is not a dict, a variant's function, ``learning_rate``
            or ``callbacks`` is not callable, a variant does not return a Keras model,
            ``seeds`` is not a sequence of ints, ``batch_size`` is neither an int nor a
            sequence of ints, or ``models`` is not a dict.
        ValueError: ``variants``, ``seeds`` or the batch sizes are empty, a seed appears
            twice or is negative, a batch size < 1, a learning rate is not positive, or
            a variant returns a model that is not compiled.
    """
    if not isinstance(variants, Mapping):
        raise TypeError(f"variants must be a dict {{name: function returning a compiled model}}, got {type(variants).__name__}")
    if not variants:
        raise ValueError("variants is empty: pass {'name': build_fn, ...}")
    seeds = [check_int(seed, "each seed", minimum=0) for seed in check_sequence(seeds, "seeds", "[0, 1, 2]")]
    if len(seeds) == 0:
        raise ValueError("seeds is empty: pass at least one seed, e.g. [0, 1, 2]")
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ValueError(f"seeds {repeated} appear more than once in seeds={seeds}: each seed is one run, pass distinct seeds")
    for name, build in variants.items():
        if not callable(build):
            raise TypeError(f"variant {name!r} must map to a function returning a compiled model, got {build!r}")
    if callbacks is not None and not callable(callbacks):
        raise TypeError(
            "callbacks must be a function returning fresh callbacks for each run, e.g. "
            f"lambda: [keras.callbacks.EarlyStopping()]; got {type(callbacks).__name__}"
        )
    grid = not isinstance(batch_size, (int, np.integer))
    if grid:
        batch_size = check_sequence(batch_size, "batch_size", "64 or [2, 8, 32]")
    if grid and len(batch_size) == 0:  # type: ignore[arg-type]
        raise ValueError("batch_size is an empty sequence: pass one batch size or e.g. [2, 8, 32]")
    sizes = [check_int(b, "batch size", minimum=1) for b in (batch_size if grid else [batch_size])]  # type: ignore[union-attr]
    rates: dict[int, float] = {}
    if learning_rate is not None:
        if not callable(learning_rate):
            raise TypeError(f"learning_rate must map a batch size to a float, got {learning_rate!r}")
        rates = {b: float(learning_rate(b)) for b in sizes}
        bad = {b: r for b, r in rates.items() if not r > 0}
        if bad:
            raise ValueError(f"learning rates must be > 0, got {bad} (batch size: rate)")
    if models is not None and not isinstance(models, dict):
        raise TypeError(f"models must be a dict to fill, or None; got {type(models).__name__}")
    show = show_progress(progress)
    (x_train, y_train), test = data
    runs = []
    cache = _GraphCache()
    total = len(variants) * len(seeds) * len(sizes)
    done = 0
    for name, build in variants.items():
        for size in sizes:
            for seed in seeds:
                set_up(seed)
                fresh = build()
                if not isinstance(fresh, keras.Model):
                    raise TypeError(f"variant {name!r} returned {type(fresh).__name__}, not a keras.Model")
                if not fresh.compiled:
                    raise ValueError(
                        f"variant {name!r} returned a model that is not compiled: call "
                        "model.compile(optimizer=..., loss=..., metrics=[...]) in its function"
                    )
                if learning_rate is not None:
                    try:
                        fresh.optimizer.learning_rate = rates[size]
                    except TypeError as error:  # e.g. an optimizer built on a LearningRateSchedule
                        raise TypeError(
                            f"learning_rate= sets the optimizer's learning rate for each batch size, but variant "
                            f"{name!r}'s optimizer does not allow it ({error}); compile it with a float learning rate"
                        ) from error
                model = cache.model_for(name, fresh) if reuse_graphs else fresh
                table = train(
                    model,
                    x_train,
                    y_train,
                    epochs=epochs,
                    batch_size=size,
                    validation_data=test,
                    validation_batch_size=validation_batch_size,
                    callbacks=callbacks() if callbacks is not None else (),
                )
                table.insert(0, "seed", seed)
                key: tuple[Any, ...] = (name, seed)
                if grid:
                    table.insert(0, "learning_rate", float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
                    table.insert(0, "batch_size", size)
                    key = (name, size, seed)
                table.insert(0, "variant", name)
                runs.append(table)
                if models is not None:
                    keeper = build() if reuse_graphs else model  # a reused model is trained again next
                    if keeper is not model:
                        _copy_variables(model.variables, keeper.variables)
                    models[key] = keeper
                done += 1
                if show:
                    last = table.iloc[-1]
                    metrics = ", ".join(f"{k}={last[k]:.4f}" for k in table.columns if k.startswith("val_"))
                    where = f", batch {size}" if grid else ""
                    print(f"[{done}/{total}] {name}{where}, seed {seed}: {metrics} ({table['seconds'].sum():.1f} s)", flush=True)
    return pd.concat(runs, ignore_index=True)


def _by_columns(by: str | Sequence[str]) -> list[str]:
    return [by] if isinstance(by, str) else list(by)


def last_epoch(results: pd.DataFrame, *, by: str | Sequence[str] = "variant") -> pd.DataFrame:
    """Return the rows of the last epoch of every run.

    A run is one combination of the :data:`RUN_COLUMNS` the table has (``variant``,
    ``batch_size``, ``seed``) and of the ``by`` columns.

    Raises:
        TypeError: ``results`` is not a DataFrame.
        ValueError: A ``by`` column, ``seed`` or ``epoch`` is missing (the message lists those present).
    """
    columns = _by_columns(by)
    require_columns(results, (*columns, "epoch", "seed"))
    run = list(dict.fromkeys([*columns, *(c for c in RUN_COLUMNS if c in results.columns)]))
    return results[results["epoch"] == results.groupby(run)["epoch"].transform("max")]


def final_metrics(
    results: pd.DataFrame, metric: str = "val_accuracy", *, by: str | Sequence[str] = "variant"
) -> pd.DataFrame:
    """Summarise the last epoch of each run: mean, std, min and max over seeds per group.

    Args:
        results: A table from :func:`run_experiments`.
        metric: The column to summarise (``val_accuracy``: the test accuracy).
        by: The grouping column(s), e.g. ``["variant", "batch_size"]`` for a grid.

    Returns:
        One row per group (index ``by``), columns ``mean``, ``std``, ``min``, ``max``, ``runs``.

    Raises:
        TypeError: ``results`` is not a DataFrame.
        ValueError: A needed column is missing (the message lists those present).
    """
    require_columns(results, (metric,))
    columns = _by_columns(by)
    summary = last_epoch(results, by=columns).groupby(columns if len(columns) > 1 else columns[0], sort=False)[metric]
    return summary.agg(["mean", "std", "min", "max", "count"]).rename(columns={"count": "runs"})
