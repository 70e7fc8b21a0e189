"""bnbook.plotting: curves with bands, final-metric charts, style, bad input."""

import matplotlib
import matplotlib.pyplot as plt  # the Agg backend: MPLBACKEND, set in conftest
import numpy as np
import pandas as pd
import pytest

from bnbook.plotting import COLORS, plot_curves, plot_final, use_style

RESULTS = pd.DataFrame({
    "variant": ["a"] * 6 + ["b"] * 6,
    "seed": [0, 0, 0, 1, 1, 1] * 2,
    "epoch": [1, 2, 3] * 4,
    "val_accuracy": [0.1, 0.2, 0.3, 0.3, 0.4, 0.5, 0.5, 0.6, 0.7, 0.7, 0.8, 0.9],
})


def test_use_style_sets_the_shared_colours():
    use_style()
    assert matplotlib.rcParams["axes.prop_cycle"].by_key()["color"] == list(COLORS)


def test_plot_curves_draws_the_mean_and_a_band_per_variant():
    ax = plot_curves(RESULTS, "val_accuracy")
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["a", "b"]
    np.testing.assert_allclose(lines[0].get_ydata(), [0.2, 0.3, 0.4])
    assert len(ax.collections) == 2  # one min-max band each
    ax.figure.canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())  # integer epochs only
    plt.close("all")


def test_plot_final_one_bar_per_variant_one_dot_per_seed():
    ax = plot_final(RESULTS, "val_accuracy")
    assert [round(p.get_height(), 6) for p in ax.patches] == [0.4, 0.8]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), [0.7, 0.9])
    plt.close("all")


def test_bad_input():
    with pytest.raises(ValueError, match="'loss'"):
        plot_curves(RESULTS, "loss")
    with pytest.raises(TypeError, match="DataFrame"):
        plot_final(RESULTS.to_dict(), "val_accuracy")
