"""bnbook.stats: paired differences, intervals against scipy, verdicts, the figure, bad input."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

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


def test_interval_and_p_value_match_scipy():
    values = np.array([0.012, -0.003, 0.008, 0.004, 0.01, 0.0, 0.007, 0.002, 0.011, 0.005])
    summary = compare_paired(values)
    half = st.t.ppf(0.975, 9) * values.std(ddof=1) / np.sqrt(10)
    assert summary.n == 10 and summary.mean == pytest.approx(values.mean())
    assert (summary.low, summary.high) == pytest.approx((values.mean() - half, values.mean() + half))
    assert summary.p == pytest.approx(st.ttest_1samp(values, 0).pvalue)
    assert (summary.wins, summary.losses, summary.ties) == (8, 1, 1)
    assert summary.verdict == "a better"
    assert compare_paired(-values).verdict == "b better"


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
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        compare_paired(**kwargs)


def test_plot_draws_one_row_per_comparison_with_the_interval():
    diffs = {"x - y": np.array([0.01, 0.02, 0.0]), "x - z": np.array([-0.01, 0.0, 0.01])}
    ax = plot_paired_differences(diffs, margin=0.005)
    assert [t.get_text().split("\n")[0] for t in ax.get_yticklabels()] == ["x - y", "x - z"]
    # The mean of the first row, in points, is where its diamond is drawn.
    means = [line.get_xdata()[0] for line in ax.lines if line.get_marker() == "D"]
    assert means == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_paired_differences({})


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
