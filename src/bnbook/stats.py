"""Paired comparisons of trained variants over seeds: differences, intervals, verdicts, one figure.

The book's comparison protocol (CONTRIBUTING.md, "Comparing trained variants"): two
variants trained with the same seed share initial kernels and data order, so they
are compared seed by seed. A verdict needs at least :data:`MIN_SEEDS_FOR_VERDICT`
seeds; "no difference" is only ever claimed as equivalence within a margin stated in
advance (both ends of the interval inside it), never because an interval contains 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from bnbook._checks import require_columns

__all__ = [
    "MIN_SEEDS_FOR_VERDICT",
    "PairedComparison",
    "compare_paired",
    "expected_calibration_error",
    "interval_half_width",
    "paired_differences",
    "plot_paired_differences",
    "sd_upper_bound",
    "seeds_for_equivalence",
]

#: Fewer seeds than this: the comparison is exploratory, whatever its interval says.
MIN_SEEDS_FOR_VERDICT = 10


def paired_differences(
    results: pd.DataFrame,
    a: str,
    b: str,
    metric: str = "val_accuracy",
    *,
    by: str = "variant",
) -> pd.Series:
    """Return ``metric`` of ``a`` minus that of ``b``, seed by seed, at each run's last epoch.

    Args:
        results: A tidy table with columns ``by``, ``seed`` and ``metric`` (and ``epoch``
            when it holds several epochs per run, as from ``run_experiments``).
        a, b: The two groups of column ``by`` to compare.
        metric: The column compared.
        by: The column naming the groups.

    Returns:
        A Series indexed by seed (sorted), named ``"<a> - <b>"``.

    Raises:
        TypeError: ``results`` is not a DataFrame.
        ValueError: A column is missing, ``a`` or ``b`` is not a group (the message lists
            the groups), ``a == b``, or the two groups were not run with the same seeds.
    """
    require_columns(results, (by, "seed", metric))
    groups = list(dict.fromkeys(results[by]))
    for name in (a, b):
        if name not in groups:
            raise ValueError(f"{name!r} is not a value of column {by!r}; present: {', '.join(map(str, groups))}")
    if a == b:
        raise ValueError(f"a and b must differ, got {a!r} twice")
    rows = results[results[by].isin([a, b])]
    if "epoch" in rows.columns:
        rows = rows[rows["epoch"] == rows.groupby([by, "seed"])["epoch"].transform("max")]
    if rows.duplicated([by, "seed"]).any():
        raise ValueError(f"several rows per ({by}, seed) at the last epoch: pass one row per run")
    table = rows.pivot(index="seed", columns=by, values=metric)
    unpaired = table.index[table[[a, b]].isna().any(axis=1)].tolist()
    if unpaired:
        raise ValueError(f"seeds {unpaired} were not run for both {a!r} and {b!r}: a paired comparison needs the same seeds")
    diff = (table[a] - table[b]).sort_index().astype(float)
    diff.name = f"{a} - {b}"
    return diff


class PairedComparison(dict):
    """The summary of one paired comparison (a ``dict`` with attribute access).

    Keys: ``n`` (seeds), ``mean``, ``std`` (of the per-seed differences), ``low``/``high``
    (the two-sided confidence interval of the mean, Student's t), ``p`` (two-sided paired
    t-test), ``wins``/``losses``/``ties`` (seeds where ``a`` is better, worse, equal: the
    difference is > 0, < 0, == 0, or the reverse with ``higher_is_better=False``),
    ``higher_is_better``, ``margin`` (the equivalence margin, or None) and ``verdict``, one of
    ``"exploratory"`` (fewer than :data:`MIN_SEEDS_FOR_VERDICT` seeds), ``"a better"``,
    ``"b better"`` (the interval excludes 0), ``"equivalent"`` (the interval lies inside
    ``(-margin, margin)``) or ``"inconclusive"``.
    """

    def __getattr__(self, name: str) -> object:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _one_column(differences: object) -> np.ndarray:
    """The per-seed differences as a 1-D float array; a table of several columns is refused, not flattened."""
    if isinstance(differences, pd.DataFrame):
        if differences.shape[1] != 1:
            raise TypeError(
                f"differences must be one difference per seed (a Series or 1-D array), got a DataFrame with "
                f"columns {list(differences.columns)}: pass paired_differences(results, a, b), or table[a] - table[b]"
            )
        differences = differences.iloc[:, 0]
    if isinstance(differences, Mapping):
        raise TypeError(f"differences must be one difference per seed (a Series or 1-D array), got a {type(differences).__name__}")
    try:
        values = np.asarray(differences, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"differences must be numbers, got {differences!r}") from None
    if values.ndim > 1 and sum(d > 1 for d in values.shape) > 1:
        raise TypeError(
            f"differences must be one difference per seed (1-D), got an array of shape {values.shape}: "
            "subtract the two variants' columns first (a - b per seed)"
        )
    return values.ravel()


def compare_paired(
    differences: pd.Series | np.ndarray,
    *,
    margin: float | None = None,
    confidence: float = 0.95,
    higher_is_better: bool = True,
) -> PairedComparison:
    """Summarise per-seed paired differences: mean, confidence interval, p-value, verdict.

    Args:
        differences: One difference ``a - b`` per seed (e.g. from :func:`paired_differences`).
        margin: The equivalence margin, stated in advance with its reason, in the units
            of ``differences``; ``None``: no equivalence verdict is possible.
        confidence: Level of the interval, in (0, 1).
        higher_is_better: ``True`` for a metric such as accuracy; ``False`` for one such as
            a loss or a calibration error, where the lower value is the better. It decides
            which sign of the interval reads ``"a better"`` and which seeds count as
            ``wins`` (seeds where ``a`` is better) and ``losses``; the mean and the
            interval keep the sign of ``a - b``.

    Returns:
        A :class:`PairedComparison`.

    Raises:
        TypeError: ``differences`` is not numeric, is a table of several columns or a 2-D
            array (e.g. both variants' accuracies: pass their difference instead),
            ``margin``/``confidence`` not a number, or ``higher_is_better`` not a bool.
        ValueError: Fewer than 2 differences, a non-finite one, ``margin <= 0`` or
            ``confidence`` outside (0, 1).
    """
    from scipy import stats  # noqa: PLC0415  (scipy comes with scikit-learn)

    values = _one_column(differences)
    if values.size < 2:
        raise ValueError(f"need at least 2 paired differences for an interval, got {values.size}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"differences must be finite, got {values.tolist()}")
    for name, value in (("margin", margin), ("confidence", confidence)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.floating))):
            raise TypeError(f"{name} must be a number, got {value!r}")
    if not isinstance(higher_is_better, (bool, np.bool_)):
        raise TypeError(f"higher_is_better must be True or False, got {higher_is_better!r}")
    if margin is not None and not margin > 0:
        raise ValueError(f"margin must be > 0 (or None), got {margin}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = values.size
    mean, std = float(values.mean()), float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n))
    low, high = mean - half, mean + half
    p = 1.0 if std == 0 and mean == 0 else (0.0 if std == 0 else float(stats.ttest_1samp(values, 0.0).pvalue))
    sign = 1.0 if higher_is_better else -1.0
    better_low, better_high = sorted((sign * low, sign * high))  # the interval of "how much better a is"
    if n < MIN_SEEDS_FOR_VERDICT:
        verdict = "exploratory"
    elif better_low > 0:
        verdict = "a better"
    elif better_high < 0:
        verdict = "b better"
    elif margin is not None and -margin < low and high < margin:
        verdict = "equivalent"
    else:
        verdict = "inconclusive"
    return PairedComparison(
        n=n,
        mean=mean,
        std=std,
        low=low,
        high=high,
        p=p,
        wins=int(np.sum(sign * values > 0)),
        losses=int(np.sum(sign * values < 0)),
        ties=int(np.sum(values == 0)),
        margin=None if margin is None else float(margin),
        confidence=float(confidence),
        higher_is_better=bool(higher_is_better),
        verdict=verdict,
    )


def plot_paired_differences(
    differences: Mapping[str, pd.Series | np.ndarray],
    *,
    margin: float | None = None,
    scale: float = 100.0,
    unit: str = "percentage points",
    ax: Axes | None = None,
    confidence: float = 0.95,
) -> Axes:
    """Plot per-seed paired differences, one row per comparison: dots, mean and interval.

    Each row shows every seed's difference as a dot, the mean as a diamond and its
    confidence interval as a bar; a line marks 0 and a shaded band ``±margin``.

    Args:
        differences: ``{label: per-seed differences}``, e.g. ``{"after - before": diff}``.
        margin: The equivalence margin (in the units of ``differences``), or ``None``.
        scale: Factor applied to every value for display (100: fractions as points).
        unit: Axis label's unit.
        ax: Axes to draw into (a new figure if ``None``).
        confidence: Level of the interval.

    Returns:
        The axes.

    Raises:
        TypeError, ValueError: As :func:`compare_paired`; ``differences`` empty or not a mapping.
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415

    if not isinstance(differences, Mapping) or not differences:
        raise ValueError("differences must be a non-empty mapping {label: per-seed differences}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 0.9 + 0.6 * len(differences)))
    if margin is not None:
        ax.axvspan(-margin * scale, margin * scale, color="0.9", zorder=0, label=f"±{margin * scale:g} margin")
    ax.axvline(0, color="0.4", linewidth=1, zorder=1)
    labels = list(differences)
    for row, label in enumerate(labels):
        summary = compare_paired(differences[label], margin=margin, confidence=confidence)
        values = _one_column(differences[label])
        jitter = np.linspace(-0.15, 0.15, values.size) if values.size > 1 else np.zeros(1)
        ax.scatter(values * scale, row + jitter, s=14, color="#0072B2", alpha=0.7, zorder=2)
        ax.errorbar(
            summary.mean * scale,
            row,
            xerr=[[(summary.mean - summary.low) * scale], [(summary.high - summary.mean) * scale]],
            fmt="D",
            color="#D55E00",
            capsize=4,
            zorder=3,
        )
    ax.set_yticks(range(len(labels)), [f"{label}\n(n={_one_column(differences[label]).size})" for label in labels])
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel(f"paired difference per seed ({unit}); diamond: mean, bar: {confidence:.0%} interval")
    ax.grid(axis="y", visible=False)
    if margin is not None:
        ax.legend(loc="best", fontsize=8)
    return ax


def _check_positive(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{what} must be a number, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {value}")
    return float(value)


def interval_half_width(std: float, n: int, *, confidence: float = 0.95) -> float:
    """Return the half-width of the paired interval for ``n`` seeds: ``t(n-1) * std / sqrt(n)``.

    The interval :func:`compare_paired` reports is ``mean ± interval_half_width(std, n)``,
    where ``std`` is the standard deviation of the per-seed differences. Use it to plan an
    equivalence design: an "equivalent" verdict needs ``|mean| + half-width < margin``.

    Raises:
        TypeError: ``std`` or ``confidence`` not a number, ``n`` not an int.
        ValueError: ``std`` <= 0, ``n`` < 2, ``confidence`` outside (0, 1).
    """
    from scipy import stats  # noqa: PLC0415

    std = _check_positive(std, "std")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {n!r}")
    if n < 2:
        raise ValueError(f"n must be >= 2 for an interval, got {n}")
    confidence = _check_positive(confidence, "confidence")
    if not confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n))


def sd_upper_bound(differences: pd.Series | np.ndarray, *, confidence: float = 0.8) -> float:
    """Return a one-sided upper confidence bound for the standard deviation of per-seed differences.

    With ``k`` differences of sample standard deviation ``s`` (``ddof=1``), the bound is
    ``s * sqrt((k - 1) / chi2.ppf(1 - confidence, k - 1))``: if the differences are a normal
    sample, the true standard deviation lies below it with probability ``confidence``. Plan
    a design with :func:`seeds_for_equivalence` from this bound, not from ``s`` itself:
    the number of seeds is then large enough with about that probability.

    Args:
        differences: One difference per seed (a Series or 1-D array), at least 2, finite.
        confidence: The one-sided confidence level, in (0, 1) (default 0.8).

    Raises:
        TypeError: ``differences`` is not one number per seed, or ``confidence`` not a number.
        ValueError: Fewer than 2 differences, a non-finite one, or ``confidence`` outside (0, 1).
    """
    from scipy import stats  # noqa: PLC0415

    values = _one_column(differences)
    if values.size < 2:
        raise ValueError(f"differences must hold at least 2 values for a standard deviation, got {values.size}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"differences must be finite numbers, got {values[~np.isfinite(values)][:3].tolist()} among them")
    confidence = _check_positive(confidence, "confidence")
    if not confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    k = values.size
    return float(np.std(values, ddof=1) * np.sqrt((k - 1) / stats.chi2.ppf(1 - confidence, k - 1)))


def seeds_for_equivalence(
    std: float, margin: float, *, fraction: float = 0.5, confidence: float = 0.95, max_seeds: int = 10_000
) -> int:
    """Return the fewest seeds whose interval half-width is at most ``fraction * margin``.

    An equivalence verdict needs the whole interval inside ``±margin``; with a half-width
    of half the margin (the default ``fraction``), a true mean difference up to half the
    margin can still be shown equivalent. ``std`` is the standard deviation of the per-seed
    differences, estimated beforehand (a pilot run) and stated with the result.

    Planning from a pilot's *point estimate* of the SD gives only about a 50 % chance that
    the sample SD of the real run -- and so its half-width -- comes out at or below the
    target; pass an upper confidence bound of the SD instead (:func:`sd_upper_bound`, e.g.
    the 80 % bound ``s * sqrt((k - 1) / chi2.ppf(0.2, k - 1))`` from ``k`` pilot differences)
    to meet the target with about that probability.

    Returns:
        The smallest ``n >= max(2, MIN_SEEDS_FOR_VERDICT)`` with
        ``interval_half_width(std, n) <= fraction * margin``.

    Raises:
        TypeError: A non-numeric argument.
        ValueError: A non-positive ``std``/``margin``, ``fraction`` outside (0, 1], or no
            ``n <= max_seeds`` is enough (the message gives the half-width at ``max_seeds``).
    """
    std = _check_positive(std, "std")
    margin = _check_positive(margin, "margin")
    fraction = _check_positive(fraction, "fraction")
    if fraction > 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    target = fraction * margin
    n = MIN_SEEDS_FOR_VERDICT
    while interval_half_width(std, n, confidence=confidence) > target:
        n += 1
        if n > max_seeds:
            width = interval_half_width(std, max_seeds, confidence=confidence)
            raise ValueError(
                f"even {max_seeds} seeds give a half-width of {width:.3g} > {target:.3g} "
                f"({fraction:g} x margin {margin:g}): widen the margin or reduce the seed-to-seed spread"
            )
    return n


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    """Return the expected calibration error (ECE) of class probabilities, in [0, 1].

    Each example's confidence is its largest probability; the examples are grouped into
    ``n_bins`` equal-width bins of confidence on [0, 1] (a confidence of exactly 1 goes
    into the last bin), and the ECE is the average over bins, weighted by their share of
    the examples, of ``|accuracy in the bin - mean confidence in the bin|``
    (Guo et al. 2017, eq. 3). 0: as confident as accurate; an under- or over-confident
    model scores above 0. On a finite sample even a perfectly calibrated model scores
    above 0 (the binned estimator is biased upwards: about 0.02 for 1,000 examples at
    a confidence near 0.9 with 15 bins); to know what a sample can resolve, score labels
    drawn from the model's own probabilities the same way. It sees what accuracy cannot: a softmax whose logits are all
    scaled down keeps its argmax (the same accuracy) but its confidence drops.

    Args:
        probs: ``(examples, classes)`` class probabilities (rows sum to 1), e.g.
            ``model.predict(x)`` of a softmax output.
        labels: ``(examples,)`` integer class indices.
        n_bins: Number of confidence bins, >= 1 (15, as Guo et al.).

    Returns:
        The ECE as a float (a fraction, not points).

    Raises:
        TypeError: ``n_bins`` not an int.
        ValueError: ``probs`` not 2-D, non-finite, negative or with rows that do not sum
            to 1; ``labels`` not 1-D integers in ``[0, classes)``; different lengths; no
            examples; ``n_bins`` < 1.
    """
    from bnbook._checks import check_int  # noqa: PLC0415

    n_bins = check_int(n_bins, "n_bins", minimum=1)
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty (examples, classes) array of probabilities, got shape {probs.shape}")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        finite = np.where(np.isfinite(probs), probs, np.nan)
        sums = finite.sum(axis=1)
        raise ValueError(
            "probs must be class probabilities: finite, >= 0, every row summing to 1 (a softmax output), "
            f"got {int(np.sum(~np.isfinite(probs)))} non-finite value(s), row sums from {sums.min():.4g} "
            f"to {sums.max():.4g} and a minimum of {np.nanmin(finite) if np.isfinite(finite).any() else float('nan'):.4g}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D array of integer class indices, got shape {labels.shape}, dtype {labels.dtype}")
    if len(labels) != len(probs):
        raise ValueError(f"probs has {len(probs)} examples but labels {len(labels)}: pass matching arrays")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(
            f"labels must be class indices in [0, {probs.shape[1]}) (the columns of probs), "
            f"got {labels.min()} to {labels.max()}"
        )
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        inside = bins == b
        total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / len(labels))
