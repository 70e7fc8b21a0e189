"""Execute the book's notebooks in place, the way the committed outputs are made.

``python -m bnbook.notebooks chapters/*.ipynb`` (what ``make execute`` runs) executes
each notebook top to bottom in a fresh kernel, with the environment the tests use,
and writes it back only if every cell ran: a failed run leaves the file untouched.
It prints the execution time of each notebook.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbclient import NotebookClient

__all__ = ["EXECUTION_ENV", "execute_notebook", "main", "noisy_outputs"]

#: Environment of the kernel, the same under ``make execute`` and ``make test`` (nbval).
EXECUTION_ENV: dict[str, str] = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # no C++ log lines from TensorFlow
    "BNBOOK_QUIET": "1",  # no progress lines from bnbook.training
    "PYTHONHASHSEED": "0",
    "CUDA_VISIBLE_DEVICES": "-1",  # the book's numbers are CPU numbers
}

# What must never reach a stored output: TF/absl log lines, Keras progress bars, memory addresses.
# (Keras 3's bar is "63/63 ━━━━ 1s 3ms/step"; model.summary() uses the same box characters, legitimately.)
_NOISE = re.compile(r"absl::InitializeLog|cpu_feature_guard|oneDNN custom operations|\d+/\d+ (\[=+|━+)|0x[0-9a-f]{8,}")


def noisy_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """List the cells whose stored outputs contain log noise, progress bars or addresses.

    Returns:
        One ``"cell N: <excerpt>"`` entry per offending output; empty if clean.
    """
    found = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            text = output.get("text", "") or "".join(
                v for k, v in output.get("data", {}).items() if k.startswith("text/") and isinstance(v, str)
            )
            match = _NOISE.search(text)
            if match:
                found.append(f"cell {index}: {text[max(0, match.start() - 40):match.end() + 40]!r}")
    return found


def execute_notebook(path: str | os.PathLike, *, timeout: int = 900) -> float:
    """Execute one notebook in place in a fresh kernel; return its run time in seconds.

    The kernel runs in the notebook's folder with :data:`EXECUTION_ENV` added to the
    environment. The file is replaced atomically, and only when every cell ran and
    no output contains log noise.

    Args:
        path: The ``.ipynb`` file.
        timeout: Limit per cell, in seconds.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not an ``.ipynb`` file, or an output contains log noise.
        nbclient.exceptions.CellExecutionError: A cell raised; the file is left unchanged.
    """
    path = Path(path)
    if path.suffix != ".ipynb":
        raise ValueError(f"{path} is not a notebook: expected a .ipynb file")
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent.resolve())}},
        record_timing=False,
    )
    start = time.perf_counter()
    client.execute(env={**os.environ, **EXECUTION_ENV})
    elapsed = time.perf_counter() - start
    noise = noisy_outputs(nb)
    if noise:
        raise ValueError(f"{path}: outputs contain log noise, not saved:\n" + "\n".join(noise))
    mode = path.stat().st_mode & 0o777  # mkstemp makes 0600 files; keep the notebook's mode
    fd, tmp = tempfile.mkstemp(suffix=".ipynb", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: execute each notebook given, print its time; exit 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=900, help="limit per cell in seconds (default 900)")
    args = parser.parse_args(argv)
    failed = 0
    for nb in args.notebooks:
        try:
            seconds = execute_notebook(nb, timeout=args.timeout)
        except Exception as err:  # noqa: BLE001  (report every notebook, then fail)
            failed += 1
            print(f"FAILED {nb}: {type(err).__name__}: {str(err)[-2000:]}", file=sys.stderr, flush=True)
        else:
            print(f"executed {nb} in {seconds:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
