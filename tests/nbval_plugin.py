"""pytest plugin for the nbval run: the kernel environment, and each notebook's run time.

Loaded with ``-p tests.nbval_plugin`` by ``make test``. It gives the kernels nbval
starts the same environment as ``make execute`` (``tools.notebooks.EXECUTION_ENV``),
so stored and fresh outputs are made alike. nbval makes one test item per cell; the
plugin sums their durations per notebook and prints a table at the end, so the
per-notebook budget (90 s on the 2-core CI machine) can be read off every run, and the
run's wall time (the book's budget, 8 minutes): with pytest-xdist (``-n 2 --dist
loadfile``, as ``make test`` runs it) two notebooks execute at once, so the wall time is
less than the sum of the notebooks' times.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

import pytest

from tools.notebooks import EXECUTION_ENV

_seconds: dict[str, float] = defaultdict(float)
_failed: dict[str, int] = defaultdict(int)
_started: list[float] = []


def pytest_configure(config: pytest.Config) -> None:
    """Kernels started by nbval inherit this process's environment: set the book's."""
    os.environ.update(EXECUTION_ENV)
    _started.append(time.monotonic())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add each cell's duration (setup starts the kernel, so it counts too) to its notebook."""
    notebook = report.nodeid.split("::")[0]
    if notebook.endswith(".ipynb"):
        _seconds[notebook] += report.duration
        if report.failed:
            _failed[notebook] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the per-notebook table."""
    if not _seconds:
        return
    terminalreporter.section("execution time per notebook (kernel start included)")
    for notebook, seconds in sorted(_seconds.items()):
        status = f"{_failed[notebook]} failed" if _failed[notebook] else "ok"
        terminalreporter.write_line(f"{seconds:7.1f} s  {notebook}  ({status})")
    terminalreporter.write_line(f"{sum(_seconds.values()):7.1f} s  total of the notebooks' times")
    workers = getattr(terminalreporter.config.option, "numprocesses", None) or 1
    wall = time.monotonic() - _started[0]
    terminalreporter.write_line(f"{wall:7.1f} s  wall time of the run, {workers} notebook(s) at a time")
