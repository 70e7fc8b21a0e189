"""Plots in one style for every chapter: learning curves over seeds, final metrics per variant."""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from bnbook._checks import require_columns
from bnbook.experiments import last_epoch

__all__ = ["COLORS", "plot_curves", "plot_final", "use_style"]

#: Colour cycle shared by all chapters (colour-blind safe, Okabe & Ito).
COLORS: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def use_style() -> None:
    """Set the book's matplotlib style: readable sizes, light grid, the shared colours."""
    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 3.6),
            "figure.dpi": 100,
            "savefig.dpi": 100,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": mpl.cycler(color=list(COLORS)),
            "legend.frameon": False,
            "font.size": 10,
        }
    )


def plot_curves(
    results: pd.DataFrame,
    y: str,
    *,
    x: str = "epoch",
    hue: str = "variant",
    ax: Axes | None = None,
    ylabel: str | None = None,
) -> Axes:
    """Plot ``y`` against ``x`` per ``hue`` group: the mean over seeds, and a min-max band.

    Args:
        results: A tidy table (e.g. from ``bnbook.experiments.run_experiments``).
        y: Column on the vertical axis.
        x: Column on the horizontal axis.
        hue: Column whose groups get one line each.
        ax: Axes to draw into; a new figure if ``None``.
        ylabel: Axis label; ``y`` if ``None``.

    Returns:
        The axes.

    Raises:
        TypeError: ``results`` is not a DataFrame.
        ValueError: A column is missing.
    """
    require_columns(results, (x, y, hue))
    if ax is None:
        _, ax = plt.subplots()
    for name, group in results.groupby(hue, sort=False):
        stats = group.groupby(x)[y].agg(["mean", "min", "max"])
        (line,) = ax.plot(stats.index, stats["mean"], label=str(name))
        if group.groupby(x)[y].size().max() > 1:
            ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.2, linewidth=0)
    if pd.api.types.is_integer_dtype(results[x]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.5"
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.legend()
    return ax


def plot_final(
    results: pd.DataFrame,
    y: str,
    *,
    hue: str = "variant",
    ax: Axes | None = None,
    ylabel: str | None = None,
) -> Axes:
    """Plot the last-epoch value of ``y`` per group: one dot per seed and the mean as a bar.

    Args:
        results: A tidy table with ``epoch`` and ``seed`` columns.
        y: The metric.
        hue: Grouping column, one position on the horizontal axis per group.
        ax: Axes to draw into; a new figure if ``None``.
        ylabel: Axis label; ``y`` if ``None``.

    Returns:
        The axes.

    Raises:
        TypeError: ``results`` is not a DataFrame.
        ValueError: A column is missing.
    """
    require_columns(results, (y, hue, "epoch", "seed"))
    if ax is None:
        _, ax = plt.subplots()
    last = last_epoch(results, by=hue)
    names = list(dict.fromkeys(last[hue]))
    for i, name in enumerate(names):
        values = last.loc[last[hue] == name, y].to_numpy()
        color = COLORS[i % len(COLORS)]
        ax.bar(i, values.mean(), color=color, alpha=0.35, width=0.6)
        ax.plot([i] * len(values), values, "o", color=color, markersize=4)
    ax.set_xticks(range(len(names)), [str(n) for n in names])
    ax.set_ylabel(ylabel or y)
    return ax
