"""Batch size and BN: how noisy batch statistics are, and a batch-size sweep runner.

:func:`batch_statistics_spread` measures how far the mean and variance of random
batches fall from the statistics of the whole data, per batch size.
:func:`sweep_batch_sizes` trains variants x batch sizes x seeds, with a learning
rate chosen per batch size, reusing each variant's traced graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import keras
import numpy as np
import pandas as pd

from bnbook._checks import check_int
from bnbook.reproducibility import set_up, shifted
from bnbook.training import _copy_variables, train

__all__ = ["batch_statistics_spread", "sweep_batch_sizes"]


def batch_statistics_spread(
    features: np.ndarray,
    batch_sizes: Sequence[int],
    *,
    n_batches: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Spread of BN's batch mean and variance around the whole data's, per batch size.

    ``features`` has the examples on the first axis and the channels (what BN
    normalises separately) on the last; any axes between (image height, width)
    are pooled with the examples, as BN does for convolution outputs. For each
    batch size, ``n_batches`` batches are drawn at random (examples without
    replacement within a batch), and for every batch and channel the errors

    - of the mean, in units of the channel's standard deviation:
      ``(batch mean - mean) / std``;
    - of the (biased) variance, relative: ``batch variance / variance - 1``

    are computed against the statistics of all of ``features``. Their root mean
    square over batches and channels is reported. For independent values the
    first is ``1 / sqrt(n)`` with ``n`` values per channel in a batch.

    Args:
        features: Array of shape ``(N, C)`` or ``(N, ..., C)``; every channel must
            vary (non-zero variance).
        batch_sizes: Batch sizes to measure, each in ``[1, N]``.
        n_batches: Random batches per batch size, >= 1.
        seed: Seed of the batch draws (``BNBOOK_SEED_OFFSET`` is added).

    Returns:
        One row per batch size (index ``batch_size``), columns ``mean_error`` and
        ``variance_error`` (root mean squares, as above).

    Raises:
        TypeError: A batch size, ``n_batches`` or ``seed`` is not an int.
        ValueError: ``features`` has fewer than 2 axes, a channel has zero
            variance, ``batch_sizes`` is empty, or a batch size is outside ``[1, N]``.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"features must have shape (N, C) or (N, ..., C), got shape {x.shape}")
    n_examples, channels = x.shape[0], x.shape[-1]
    if len(batch_sizes) == 0:
        raise ValueError("batch_sizes is empty: pass e.g. [2, 8, 32]")
    sizes = [check_int(b, "batch size", minimum=1) for b in batch_sizes]
    too_big = [b for b in sizes if b > n_examples]
    if too_big:
        raise ValueError(f"batch sizes {too_big} exceed the {n_examples} examples; accepted: 1 to {n_examples}")
    n_batches = check_int(n_batches, "n_batches", minimum=1)
    seed = check_int(seed, "seed", minimum=0)

    per_example = x.reshape(n_examples, -1, channels)
    values_per_example = per_example.shape[1]
    sums = per_example.sum(axis=1)  # (N, C)
    squares = (per_example**2).sum(axis=1)
    mean = sums.sum(axis=0) / (n_examples * values_per_example)
    variance = squares.sum(axis=0) / (n_examples * values_per_example) - mean**2
    if np.any(variance <= 0):
        raise ValueError(f"channels {np.flatnonzero(variance <= 0).tolist()} have zero variance: nothing to normalise")

    rng = np.random.default_rng(shifted(seed))  # honours BNBOOK_SEED_OFFSET
    rows = []
    for size in sizes:
        # Each row of `picks`: one batch, `size` distinct examples.
        picks = np.stack([rng.choice(n_examples, size, replace=False) for _ in range(n_batches)])
        count = size * values_per_example
        batch_mean = sums[picks].sum(axis=1) / count  # (n_batches, C)
        batch_variance = squares[picks].sum(axis=1) / count - batch_mean**2
        mean_error = (batch_mean - mean) / np.sqrt(variance)
        variance_error = batch_variance / variance - 1.0
        rows.append(
            {
                "batch_size": size,
                "mean_error": float(np.sqrt(np.mean(mean_error**2))),
                "variance_error": float(np.sqrt(np.mean(variance_error**2))),
            }
        )
    return pd.DataFrame(rows).set_index("batch_size")


def sweep_batch_sizes(
    variants: Mapping[str, Callable[[], keras.Model]],
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    data: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    *,
    epochs: int,
    learning_rate: Callable[[int], float],
    keep_models: bool = False,
    eval_batch_size: int = 500,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[tuple[str, int, int], keras.Model]]:
    """Train every variant at every batch size with every seed; return one tidy table.

    For each run it calls ``set_up(seed)`` and builds a fresh model with the
    variant's function (which must return a model compiled with an optimizer
    whose ``learning_rate`` is a plain number), sets the optimizer's learning rate to
    ``learning_rate(batch_size)``, and trains it for ``epochs`` epochs on the
    training data, so every batch size sees the same number of examples. Then it
    evaluates the model on the test set in inference mode, in batches of
    ``eval_batch_size`` whatever the training batch size (cheaper than ``fit``'s
    validation, which would use the training batch size).

    To avoid tracing a new graph for every run, each variant's first model is
    kept and the next runs copy the fresh model's variables (weights, moving
    statistics, random-generator states) into it and reset its optimizer, as
    :func:`bnbook.training.run_experiments` does.

    Args:
        variants: ``{name: build_fn}``; each ``build_fn()`` returns a compiled model.
        batch_sizes: Batch sizes, each >= 1.
        seeds: Seeds, one run each per variant and batch size.
        data: ``(x_train, y_train), (x_test, y_test)``.
        epochs: Epochs per run, >= 1.
        learning_rate: Maps a batch size to the learning rate to train it with.
        keep_models: Also return the trained models (copies), to inspect them.
        eval_batch_size: Batch size of the test-set evaluation, >= 1.

    Returns:
        The columns of :func:`bnbook.training.train` preceded by ``variant``,
        ``batch_size``, ``learning_rate`` and ``seed``, then ``test_<metric>`` for
        every metric of ``evaluate`` (``test_loss``, ``test_accuracy``, ...), set on
        the last epoch's row of each run and NaN on the others; with ``keep_models=True``,
        the pair ``(table, {(variant, batch_size, seed): model})``.

    Raises:
        TypeError: A batch size or ``epochs`` is not an int, ``learning_rate`` or a
            variant's function is not callable, or a variant returns no Keras model.
        ValueError: ``variants``, ``batch_sizes`` or ``seeds`` is empty, a batch size
            or ``epochs`` < 1, or a learning rate is not positive.
    """
    if not variants:
        raise ValueError("variants is empty: pass {'name': build_fn, ...}")
    if len(batch_sizes) == 0:
        raise ValueError("batch_sizes is empty: pass e.g. [2, 8, 32]")
    if len(seeds) == 0:
        raise ValueError("seeds is empty: pass at least one seed, e.g. [0, 1]")
    sizes = [check_int(b, "batch size", minimum=1) for b in batch_sizes]
    epochs = check_int(epochs, "epochs", minimum=1)
    eval_batch_size = check_int(eval_batch_size, "eval_batch_size", minimum=1)
    if not callable(learning_rate):
        raise TypeError(f"learning_rate must map a batch size to a float, got {learning_rate!r}")
    rates = {b: float(learning_rate(b)) for b in sizes}
    bad = {b: r for b, r in rates.items() if not r > 0}
    if bad:
        raise ValueError(f"learning rates must be > 0, got {bad} (batch size: rate)")
    for name, build in variants.items():
        if not callable(build):
            raise TypeError(f"variant {name!r} must map to a function returning a compiled model, got {build!r}")

    (x_train, y_train), (x_test, y_test) = data
    runs, models = [], {}
    for name, build in variants.items():
        kept: keras.Model | None = None
        optimizer_start: list[np.ndarray] = []
        for size in sizes:
            for seed in seeds:
                set_up(seed)
                fresh = build()
                if not isinstance(fresh, keras.Model):
                    raise TypeError(f"variant {name!r} returned {type(fresh).__name__}, not a keras.Model")
                if kept is None:
                    kept = fresh
                    kept.optimizer.build(kept.trainable_variables)
                    optimizer_start = [v.numpy() for v in kept.optimizer.variables]
                else:
                    _copy_variables(fresh.variables, kept.variables)
                    _copy_variables(optimizer_start, kept.optimizer.variables)
                kept.optimizer.learning_rate = rates[size]
                table = train(kept, x_train, y_train, epochs=epochs, batch_size=size)
                scores = kept.evaluate(x_test, y_test, batch_size=eval_batch_size, verbose=0, return_dict=True)
                for metric, value in scores.items():
                    table[f"test_{metric}"] = np.nan
                    table.loc[table.index[-1], f"test_{metric}"] = float(value)
                table.insert(0, "seed", seed)
                table.insert(0, "learning_rate", rates[size])
                table.insert(0, "batch_size", size)
                table.insert(0, "variant", name)
                runs.append(table)
                if keep_models:
                    keeper = build()  # an untraced copy; `kept` is trained again next
                    _copy_variables(kept.variables, keeper.variables)
                    models[(name, size, seed)] = keeper
    results = pd.concat(runs, ignore_index=True)
    return (results, models) if keep_models else results
