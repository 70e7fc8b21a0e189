"""The nbval run of `make test`: two notebooks at a time, and the execution-time table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _notebook(path: Path, source: str, output: str) -> None:
    cell = nbformat.v4.new_code_cell(source)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=output)]
    cell.execution_count = 1
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)


@pytest.mark.parametrize("jobs", [1, 2])
def test_parallel_nbval_runs_every_notebook_and_reports_its_time(tmp_path, jobs):
    _notebook(tmp_path / "a.ipynb", "print(6 * 7)", "42\n")
    _notebook(tmp_path / "b.ipynb", "print(2 + 2)", "5\n")  # stored output wrong: must fail
    parallel = ["-n", str(jobs), "--dist", "loadfile"] if jobs > 1 else []
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "a.ipynb", "b.ipynb", "--nbval-current-env",
         "-p", "tests.nbval_plugin", "-p", "no:cacheprovider", "-q", *parallel],
        cwd=tmp_path, env={"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )
    out = run.stdout
    assert run.returncode == 1, out  # b's wrong output is found, with or without workers
    assert "1 failed, 1 passed" in out, out
    table = out.split("execution time per notebook")[1]
    assert "a.ipynb  (ok)" in table and "b.ipynb  (1 failed)" in table, table
    assert f"wall time of the run, {jobs} notebook(s) at a time" in table, table
