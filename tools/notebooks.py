"""Execute the book's notebooks in place, the way the committed outputs are made.

``python -m tools.notebooks chapters/*.ipynb`` (what ``make execute`` runs; also
``python tools/notebooks.py ...``) executes
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
from collections.abc import Mapping, Sequence
from pathlib import Path

import nbformat
from nbclient import NotebookClient

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bnbook.quiet import QUIET_ENV_VAR, TF_LOG_LEVEL  # noqa: E402

__all__ = ["EXECUTION_ENV", "drop_startup_notices", "execute_in", "execute_notebook", "main", "noisy_outputs", "run_notebook"]

#: Environment of the kernel, the same under ``make execute`` and ``make test`` (nbval).
EXECUTION_ENV: dict[str, str] = {
    TF_LOG_LEVEL[0]: TF_LOG_LEVEL[1],  # no C++ log lines from TensorFlow
    QUIET_ENV_VAR: "1",  # no progress lines from bnbook.experiments
    "PYTHONHASHSEED": "0",
    "CUDA_VISIBLE_DEVICES": "-1",  # the book's numbers are CPU numbers
}

# What must never reach a stored output: TF/absl log lines, Keras progress bars, memory addresses.
# (Keras 3's bar is "63/63 ━━━━ 1s 3ms/step"; model.summary() uses the same box characters, legitimately.)
_NOISE = re.compile(r"absl::InitializeLog|cpu_feature_guard|oneDNN custom operations|\d+/\d+ (\[=+|━+)|0x[0-9a-f]{8,}")


# TensorFlow's C++ start-up notices, written to stderr at import before absl logging is
# initialised, whatever TF_CPP_MIN_LOG_LEVEL says (which ones depends on the CPU: the
# oneDNN notice appears where oneDNN is used, e.g. on AVX-512). Only these exact lines
# are dropped; any other stderr text stays and is refused by `noisy_outputs`.
_STARTUP_NOTICE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:. ]+\d+ (port|cpu_feature_guard)\.cc:\d+\] "
    r"(oneDNN custom operations are on\.|This TensorFlow binary is optimized to use available CPU instructions).*)$"
)


def drop_startup_notices(nb: nbformat.NotebookNode) -> int:
    """Remove TensorFlow's import-time stderr notices from the stored outputs, in place.

    Only stderr stream outputs are touched, and in them only lines that are exactly one
    of TensorFlow's start-up notices (the absl "before InitializeLog" line, the oneDNN
    notice, the CPU-instructions notice); an output left empty is removed.

    Returns:
        The number of lines removed.
    """
    removed = 0
    for cell in nb.cells:
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                lines = output.get("text", "").splitlines(keepends=True)
                rest = [line for line in lines if not _STARTUP_NOTICE.match(line.rstrip("\n"))]
                removed += len(lines) - len(rest)
                if not rest:
                    continue
                output["text"] = "".join(rest)
            kept.append(output)
        if "outputs" in cell:
            cell["outputs"] = kept
    return removed


def noisy_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """List the outputs that must not be stored: log noise, progress bars, addresses, unhandled warnings.

    The rule for warnings: a stored notebook has no stderr output at all (once
    :func:`drop_startup_notices` has removed TensorFlow's import-time notices). Python
    writes a warning nobody handled to stderr (``path:line: UserWarning: message``), and
    so do ``absl``/``logging`` (Keras's ``absl.logging.warning`` calls among them), so
    every such warning is refused, whatever its text. A warning a chapter shows on
    purpose is caught (``warnings.catch_warnings(record=True)``) and printed by the cell
    on stdout, with the chapter saying why; one it wants gone is ignored by its message in
    a visible cell (``warnings.filterwarnings("ignore", message=...)``). Both pass.

    Returns:
        One ``"cell N: <excerpt>"`` entry per offending output; empty if clean.
    """
    found = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            text = output.get("text", "") or "".join(
                v for k, v in output.get("data", {}).items() if k.startswith("text/") and isinstance(v, str)
            )
            if output.get("output_type") == "stream" and output.get("name") == "stderr" and text.strip():
                found.append(f"cell {index}: unhandled warning or log on stderr: {text[:300]!r}")
                continue
            match = _NOISE.search(text)
            if match:
                found.append(f"cell {index}: {text[max(0, match.start() - 40):match.end() + 40]!r}")
    return found


def run_notebook(
    path: str | os.PathLike, *, timeout: int = 900, env: Mapping[str, str] | None = None
) -> tuple[nbformat.NotebookNode, float]:
    """Execute a notebook in a fresh kernel without saving it; return it and its run time.

    The kernel runs in the notebook's folder with this process's environment,
    :data:`EXECUTION_ENV` and then ``env`` on top (``make robustness`` passes, e.g.,
    ``{"ONEDNN_MAX_CPU_ISA": "AVX2"}``).

    Args:
        path: The ``.ipynb`` file.
        timeout: Limit per cell, in seconds.
        env: Extra environment variables for the kernel.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not an ``.ipynb`` file.
        nbclient.exceptions.CellExecutionError: A cell raised (the notebook object
            holds the outputs up to and including the failing cell).
    """
    path = Path(path)
    if path.suffix != ".ipynb":
        raise ValueError(f"{path} is not a notebook: expected a .ipynb file")
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    nb = nbformat.read(path, as_version=4)
    return nb, execute_in(nb, path.parent, timeout=timeout, env=env)


def execute_in(
    nb: nbformat.NotebookNode,
    folder: str | os.PathLike,
    *,
    timeout: int = 900,
    env: Mapping[str, str] | None = None,
    allow_errors: bool = False,
) -> float:
    """Execute ``nb`` (in memory, in place) in a fresh kernel running in ``folder``; return the seconds.

    The kernel gets this process's environment, :data:`EXECUTION_ENV`, then ``env``.
    With ``allow_errors`` a failing cell leaves its error in the outputs and the next
    cells run; otherwise it raises ``nbclient.exceptions.CellExecutionError``.
    """
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(Path(folder).resolve())}},
        record_timing=False,
        allow_errors=allow_errors,
    )
    start = time.perf_counter()
    client.execute(env={**os.environ, **EXECUTION_ENV, **(env or {})})
    return time.perf_counter() - start


def execute_notebook(path: str | os.PathLike, *, timeout: int = 900) -> float:
    """Execute one notebook in place in a fresh kernel; return its run time in seconds.

    Runs it with :func:`run_notebook`. TensorFlow's import-time stderr notices are
    dropped (:func:`drop_startup_notices`). The file is replaced atomically, and only
    when every cell ran and no output is refused by :func:`noisy_outputs` (log noise,
    progress bars, or any warning left on stderr).

    Args:
        path: The ``.ipynb`` file.
        timeout: Limit per cell, in seconds.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not an ``.ipynb`` file, or an output contains log noise or
            an unhandled warning.
        nbclient.exceptions.CellExecutionError: A cell raised; the file is left unchanged.
    """
    path = Path(path)
    nb, elapsed = run_notebook(path, timeout=timeout)
    drop_startup_notices(nb)
    noise = noisy_outputs(nb)
    if noise:
        raise ValueError(f"{path}: outputs contain log noise or unhandled warnings, not saved:\n" + "\n".join(noise))
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
