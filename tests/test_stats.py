"""bnbook.stats: paired differences, intervals against scipy, verdicts, the figure, bad input."""

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import special

from bnbook.stats import MIN_SEEDS_FOR_VERDICT, compare_paired, paired_differences, plot_paired_differences


def _results(acc_a, acc_b, epochs=2):
    rows = []
    for variant, accs in (("a", acc_a), ("b", acc_b)):
        for seed, acc in enumerate(accs):
            for epoch in range(1, epochs + 1):
                rows.append({"variant": variant, "seed": seed, "epoch": epoch, "val_accuracy": acc if epoch == epochs else 0.0})
    return pd.DataFrame(rows)


def test_paired_differences_takes_the_last_epoch_seed_by_seed():
    diff = paired_differences(_results([0.9, 0.8, 0.7], [0.85, 0.9, 0.7]), "a", "b")
    assert diff.name == "a - b"
    assert diff.index.tolist() == [0, 1, 2]
    np.testing.assert_allclose(diff.to_numpy(), [0.05, -0.1, 0.0], atol=1e-12)


def test_paired_differences_without_an_epoch_column_takes_each_row():
    table = pd.DataFrame({"variant": ["a", "b", "a", "b"], "seed": [1, 1, 0, 0], "val_accuracy": [0.9, 0.8, 0.7, 0.75]})
    diff = paired_differences(table, "a", "b")
    assert diff.index.tolist() == [0, 1]
    np.testing.assert_allclose(diff.to_numpy(), [-0.05, 0.1])


def test_paired_differences_refuses_several_rows_per_run():
    table = _results([0.9, 0.8], [0.85, 0.9], epochs=1)
    with pytest.raises(ValueError, match=r"several rows per \(variant, seed\)"):
        paired_differences(pd.concat([table, table]), "a", "b")


def test_paired_differences_rejects_unpaired_seeds_and_unknown_groups():
    table = _results([0.9, 0.8], [0.85, 0.9])
    with pytest.raises(ValueError, match="not run for both"):
        paired_differences(table[~((table["variant"] == "b") & (table["seed"] == 1))], "a", "b")
    with pytest.raises(ValueError, match="'c' is not a value.*present: a, b"):
        paired_differences(table, "a", "c")
    with pytest.raises(ValueError, match="columns \\['accuracy'\\]"):
        paired_differences(table, "a", "b", "accuracy")
    with pytest.raises(ValueError, match="differ"):
        paired_differences(table, "a", "a")
    with pytest.raises(TypeError, match="DataFrame"):
        paired_differences([1, 2], "a", "b")


VALUES = [0.012, -0.003, 0.008, 0.004, 0.01, 0.0, 0.007, 0.002, 0.011, 0.005]
# Student's t quantiles for 9 degrees of freedom, from a printed table (two-sided 95 % and 90 %).
T_975_9, T_95_9 = 2.262157, 1.833113


def _by_hand(values, t_quantile):
    """Mean, sample std, interval and two-sided p by the textbook formulas, without scipy.stats."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile * sd / math.sqrt(n)
    t = mean / (sd / math.sqrt(n))
    p = special.betainc((n - 1) / 2, 0.5, (n - 1) / ((n - 1) + t * t))  # P(|T| > t), T ~ t(n - 1)
    return mean, sd, mean - half, mean + half, p


@pytest.mark.parametrize(("confidence", "t_quantile"), [(0.95, T_975_9), (0.90, T_95_9)])
def test_interval_and_p_value_match_the_textbook_formulas(confidence, t_quantile):
    mean, sd, low, high, p = _by_hand(VALUES, t_quantile)
    assert (mean, sd) == pytest.approx((0.0056, 0.00492612), rel=1e-6)  # by hand: sum 0.056, SS 0.0002184
    summary = compare_paired(VALUES, confidence=confidence)
    assert summary.n == 10 and summary.confidence == confidence
    assert (summary.mean, summary.std) == pytest.approx((mean, sd), rel=1e-12)
    assert (summary.low, summary.high) == pytest.approx((low, high), rel=1e-6)  # the table has 7 digits
    assert summary.p == pytest.approx(p, rel=1e-9)
    assert (summary.wins, summary.losses, summary.ties) == (8, 1, 1)
    assert summary.verdict == "a better"
    assert compare_paired([-v for v in VALUES], confidence=confidence).verdict == "b better"


def test_for_a_loss_the_lower_value_wins():
    # Test losses a - b: a lower on 8 seeds, higher on 1, equal on 1. With accuracy's
    # reading these would be "b better"; for a loss a is the better one.
    loss = compare_paired([-v for v in VALUES], higher_is_better=False)
    assert loss.verdict == "a better" and (loss.wins, loss.losses, loss.ties) == (8, 1, 1)
    assert loss.mean < 0 and loss.high < 0  # the interval keeps the sign of a - b
    assert loss.higher_is_better is False
    assert compare_paired(VALUES, higher_is_better=False).verdict == "b better"
    # Equivalence and the interval do not depend on the direction.
    small = np.linspace(-0.001, 0.001, 10)
    assert compare_paired(small, margin=0.005, higher_is_better=False).verdict == "equivalent"
    up, down = compare_paired(VALUES), compare_paired(VALUES, higher_is_better=False)
    assert (up.low, up.high, up.p) == (down.low, down.high, down.p)


def test_a_wider_confidence_gives_a_wider_interval():
    narrow, wide = compare_paired(VALUES, confidence=0.8), compare_paired(VALUES, confidence=0.99)
    assert wide.low < narrow.low < narrow.high < wide.high


@pytest.mark.parametrize(
    ("values", "p", "verdict"),
    [
        (np.zeros(10), 1.0, "equivalent"),  # no difference at all on any seed, inside the margin
        (np.full(10, 0.5), 0.0, "a better"),  # the same exactly representable gain on every seed
        (np.full(10, -0.25), 0.0, "b better"),
    ],
)
def test_constant_differences_take_the_zero_std_branches(values, p, verdict):
    summary = compare_paired(values, margin=0.1)
    assert summary.std == 0.0 and summary.p == p and summary.verdict == verdict
    assert summary.low == summary.high == summary.mean


def test_verdicts_need_enough_seeds_and_a_margin_for_equivalence():
    rng = np.random.default_rng(0)
    small = rng.normal(0, 0.001, size=MIN_SEEDS_FOR_VERDICT)
    small -= small.mean()  # mean exactly 0: no superiority
    assert compare_paired(small).verdict == "inconclusive"  # no margin: never "no difference"
    assert compare_paired(small, margin=0.005).verdict == "equivalent"
    assert compare_paired(small, margin=0.0001).verdict == "inconclusive"  # interval wider than the margin
    # Too few seeds: exploratory, even with a clear sign.
    assert compare_paired([0.05, 0.06, 0.07]).verdict == "exploratory"
    assert compare_paired(np.full(MIN_SEEDS_FOR_VERDICT - 1, 0.01) + np.arange(9) * 1e-4).verdict == "exploratory"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"differences": [0.1]}, ValueError, "at least 2"),
        ({"differences": [0.1, np.nan]}, ValueError, "finite"),
        ({"differences": ["x", "y"]}, TypeError, "numbers"),
        ({"differences": [0.1, 0.2], "margin": 0}, ValueError, "margin"),
        ({"differences": [0.1, 0.2], "margin": "1"}, TypeError, "margin"),
        ({"differences": [0.1, 0.2], "confidence": 1.5}, ValueError, "confidence"),
        ({"differences": [0.1, 0.2], "higher_is_better": "no"}, TypeError, "higher_is_better must be True or False, got 'no'"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        compare_paired(**kwargs)


def test_plot_draws_one_row_per_comparison_with_the_interval():
    diffs = {"x - y": np.array([0.01, 0.02, 0.0]), "x - z": np.array([-0.01, 0.0, 0.01])}
    ax = plot_paired_differences(diffs, margin=0.005)
    assert [t.get_text().split("\n")[0] for t in ax.get_yticklabels()] == ["x - y", "x - z"]
    # The mean of each row, in points, is where its diamond is drawn.
    means = [line.get_xdata()[0] for line in ax.lines if line.get_marker() == "D"]
    assert means == pytest.approx([1.0, 0.0])
    # The margin band spans -margin to +margin, in points.
    (band,) = ax.patches
    assert (band.get_x(), band.get_x() + band.get_width()) == pytest.approx((-0.5, 0.5))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["±0.5 margin"]


def test_plot_without_margin_has_no_band_and_refuses_bad_rows():
    ax = plot_paired_differences({"x - y": [0.01, 0.02, 0.0]})
    assert not ax.patches and ax.get_legend() is None
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_paired_differences({})
    with pytest.raises(ValueError, match="at least 2 paired differences"):
        plot_paired_differences({"one seed": [0.01]})


def test_interval_half_width_matches_compare_paired():
    from bnbook.stats import interval_half_width

    values = np.array([0.3, -0.1, -0.2, 0.1, 0.4, 0.6, -0.2, 0.3, -0.2, -0.2])
    result = compare_paired(values)
    assert interval_half_width(result.std, 10) == pytest.approx(result.high - result.mean)
    assert interval_half_width(1.0, 40) < interval_half_width(1.0, 10)
    with pytest.raises(ValueError, match="n must be >= 2"):
        interval_half_width(1.0, 1)
    with pytest.raises(ValueError, match="std must be a finite number > 0, got -1"):
        interval_half_width(-1.0, 5)
    with pytest.raises(TypeError, match="n must be an int"):
        interval_half_width(1.0, 5.0)


def test_seeds_for_equivalence_is_the_smallest_enough():
    from scipy import stats as scipy_stats

    from bnbook.stats import MIN_SEEDS_FOR_VERDICT, interval_half_width, seeds_for_equivalence

    n = seeds_for_equivalence(0.58, 0.5)
    assert interval_half_width(0.58, n) <= 0.25 < interval_half_width(0.58, n - 1)
    t = scipy_stats.t.ppf(0.975, n - 1)
    assert t * 0.58 / np.sqrt(n) <= 0.25
    assert seeds_for_equivalence(0.01, 1.0) == MIN_SEEDS_FOR_VERDICT  # never fewer than a verdict needs
    with pytest.raises(ValueError, match="fraction must be in"):
        seeds_for_equivalence(1.0, 1.0, fraction=2.0)
    with pytest.raises(ValueError, match="even 20 seeds give a half-width"):
        seeds_for_equivalence(1.0, 0.1, max_seeds=20)
    with pytest.raises(TypeError, match="margin must be a number"):
        seeds_for_equivalence(1.0, "0.5")


def test_sd_upper_bound_is_the_chi_square_bound_and_covers_the_true_sd():
    from scipy import stats as scipy_stats

    from bnbook.stats import sd_upper_bound

    d = np.array([0.3, -0.1, -0.2, 0.1, 0.4, 0.6, -0.2, 0.3, -0.2, -0.2])
    s = np.std(d, ddof=1)
    assert sd_upper_bound(d, confidence=0.8) == pytest.approx(s * np.sqrt(9 / scipy_stats.chi2.ppf(0.2, 9)))
    assert s < sd_upper_bound(d, confidence=0.8) < sd_upper_bound(d, confidence=0.95)
    assert sd_upper_bound(pd.Series(d)) == sd_upper_bound(d)
    assert sd_upper_bound([0.5, 0.5, 0.5]) == 0.0
    # Coverage: for normal samples of 10 with SD 1, the 80 % bound lies above 1 in about 80 % of them.
    rng = np.random.default_rng(0)
    covered = np.mean([sd_upper_bound(rng.normal(size=10)) > 1.0 for _ in range(4000)])
    assert 0.77 < covered < 0.83


def test_expected_calibration_error_by_hand():
    from bnbook.stats import expected_calibration_error

    # Three classes, two bins of unequal size, so that the weighting by bin share matters:
    # three examples at confidence 0.9 (one right), one at confidence 0.4 (right).
    probs = np.array([[0.9, 0.05, 0.05]] * 3 + [[0.4, 0.3, 0.3]])
    labels = np.array([0, 1, 2, 0])
    # n_bins=2: bin [0.5, 1] holds 3 examples (accuracy 1/3, confidence 0.9), bin [0, 0.5)
    # holds 1 (accuracy 1, confidence 0.4): 0.75 * (0.9 - 1/3) + 0.25 * 0.6 = 0.575
    # (an unweighted mean of the bin gaps would give 0.5833).
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.575)
    # A confidence of exactly 1 goes into the last bin [14/15, 1], together with the other
    # confident examples: 1.0 (wrong), 0.96 and 0.94 (right) -> accuracy 2/3, confidence
    # 0.9667, ECE 0.3. In a bin of its own, 1.0 would give 1/3 * 1 + 2/3 * 0.05 = 0.3667.
    certain = np.array([[0.0, 1.0], [0.96, 0.04], [0.94, 0.06]])
    assert expected_calibration_error(certain, np.array([0, 0, 0])) == pytest.approx(2.9 / 3 - 2 / 3)
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0


def test_expected_calibration_error_sees_a_rescaling_that_accuracy_does_not():
    from bnbook.stats import expected_calibration_error

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=5000)
    logits = rng.normal(size=(5000, 10))
    logits[np.arange(5000), labels] += 2.5
    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    # Calibrated by construction: sample the labels from the model's own probabilities.
    probs = softmax(logits)
    sampled = np.array([rng.choice(10, p=p) for p in probs])
    assert expected_calibration_error(probs, sampled) < 0.03
    cooled = softmax(0.5 * logits)  # same argmax, lower confidence
    assert np.array_equal(cooled.argmax(1), probs.argmax(1))
    assert expected_calibration_error(cooled, sampled) > 0.1


@pytest.mark.parametrize(
    "probs, labels, kwargs, error, match",
    [
        (np.full((2, 2), 0.5), np.array([0, 1]), {"n_bins": 0}, ValueError, "n_bins must be >= 1"),
        (np.full((2, 2), 0.5), np.array([0, 1]), {"n_bins": 2.5}, TypeError, "n_bins must be an int"),
        (np.full((2, 2), 0.4), np.array([0, 1]), {}, ValueError, "summing to 1"),
        (np.array([[np.nan, 1.0]]), np.array([0]), {}, ValueError, "finite"),
        (np.full(4, 0.25), np.array([0]), {}, ValueError, "shape (4,)"),
        (np.full((2, 2), 0.5), np.array([0.0, 1.0]), {}, ValueError, "integer class indices"),
        (np.full((2, 2), 0.5), np.array([0, 1, 1]), {}, ValueError, "2 examples but labels 3"),
        (np.full((2, 2), 0.5), np.array([0, 2]), {}, ValueError, "in [0, 2)"),
    ],
)
def test_expected_calibration_error_refuses_bad_input(probs, labels, kwargs, error, match):
    from bnbook.stats import expected_calibration_error

    with pytest.raises(error, match=re.escape(match)):
        expected_calibration_error(probs, labels, **kwargs)
