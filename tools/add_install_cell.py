"""Put the guarded install cell at the top of every chapter notebook, so that Colab and Binder can run them.

Colab opens a chapter straight from GitHub, with no clone around it: ``import bnbook`` fails unless the chapter
installs the helper package itself. This tool writes, as the first code cell of each notebook (after the title),
a cell that installs the package from the repository that ``_config.yml`` names (``repository.url`` and
``repository.branch``, the one place that holds the address), together with ``myst-nb`` (the chapters call
``myst_nb.glue``) at the version ``requirements.txt`` pins. The install is guarded: where ``bnbook`` and
``myst_nb`` can be imported already (a local clone after ``make``, Binder, CI's nbval), the cell does nothing and
prints nothing, so the stored outputs do not change.

The cell is shown on the website (not hidden or removed): it is four lines, it tells a reader where the
``bnbook`` imported below comes from and how to get it outside the book, and it is the cell a Colab reader sees
first anyway. It carries the tag ``bnbook-install`` and the id ``install-bnbook``, by which a later run finds it.

Idempotent: a notebook that already has the current cell in place is not rewritten; a cell made from an older
address (a fork changed ``_config.yml``) is updated in place. Run it again after changing the address::

    .venv/bin/python tools/add_install_cell.py              # every chapters/*.ipynb
    .venv/bin/python tools/add_install_cell.py chapters/01_what_bn_computes.ipynb
    .venv/bin/python tools/add_install_cell.py --check      # exit 1 if a chapter lacks the current cell

The notebooks are not executed: the cell is inserted with no outputs, which is what it produces where the
package is installed (nbval compares outputs, not execution counts).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "_config.yml"
REQUIREMENTS = ROOT / "requirements.txt"
CHAPTERS = ROOT / "chapters"

#: Tag and id of the install cell.
TAG = "bnbook-install"
CELL_ID = "install-bnbook"
#: Modules the chapters import that Colab lacks; the cell installs when any of them is missing.
GUARDED_MODULES = ("bnbook", "myst_nb")
#: Packages installed besides bnbook (at requirements.txt's pin): the chapters import them, bnbook does not.
EXTRA_PACKAGES = ("myst-nb",)

__all__ = [
    "CELL_ID", "TAG", "add_install_cell", "check", "install_cell_source", "install_command", "main",
    "pinned_requirement", "repository",
]


def repository(config_path: str | Path = CONFIG) -> tuple[str, str]:
    """Return ``(url, branch)`` of the book's repository as ``_config.yml`` states them.

    Raises:
        ValueError: If ``repository.url`` is missing or not an ``https://`` address, or the branch is empty.
    """
    config = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    repo = config.get("repository") or {}
    url = str(repo.get("url") or "").rstrip("/")
    branch = str(repo.get("branch") or "main")
    if not re.fullmatch(r"https://[\w.-]+/[\w.-]+/[\w.-]+", url):
        raise ValueError(
            f"repository.url in {config_path} must be an https address like https://github.com/<owner>/<repository>,"
            f" got {url!r}"
        )
    if not re.fullmatch(r"[\w./-]+", branch):
        raise ValueError(f"repository.branch in {config_path} must be a branch name, got {branch!r}")
    return url, branch


def pinned_requirement(name: str, requirements_path: str | Path = REQUIREMENTS) -> str:
    """Return the line ``name==version`` that ``requirements.txt`` pins for the package ``name``.

    Raises:
        ValueError: If the file does not pin ``name`` with ``==`` exactly once.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a package name, got {name!r}")
    canonical = re.sub(r"[-_.]+", "-", name).lower()
    pins = []
    for line in Path(requirements_path).read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9][\w.-]*)\s*==\s*([\w.+!-]+)\s*(;.*)?$", line.split("#")[0])
        if match and re.sub(r"[-_.]+", "-", match.group(1)).lower() == canonical and not match.group(3):
            pins.append(f"{name}=={match.group(2)}")
    if len(pins) != 1:
        raise ValueError(f"{requirements_path} must pin {name!r} with '==' exactly once, found {pins}")
    return pins[0]


def install_command(config_path: str | Path = CONFIG, requirements_path: str | Path = REQUIREMENTS) -> str:
    """Return the ``%pip install`` line of the install cell, e.g.
    ``%pip install --quiet "bnbook @ git+https://github.com/<owner>/<repo>@main" "myst-nb==1.4.0"``.
    """
    url, branch = repository(config_path)
    packages = [f"bnbook @ git+{url}@{branch}"] + [pinned_requirement(p, requirements_path) for p in EXTRA_PACKAGES]
    return "%pip install --quiet " + " ".join(f'"{p}"' for p in packages)


def install_cell_source(config_path: str | Path = CONFIG, requirements_path: str | Path = REQUIREMENTS) -> str:
    """Return the source of the guarded install cell (installs only where a guarded module is missing)."""
    modules = ", ".join(f'"{m}"' for m in GUARDED_MODULES)
    return (
        "# On Colab or Binder: install the book's helper package (does nothing where it is installed).\n"
        "import importlib.util\n"
        "\n"
        f"if any(importlib.util.find_spec(m) is None for m in ({modules})):\n"
        f"    {install_command(config_path, requirements_path)}"
    )


def _is_install_cell(cell) -> bool:
    return TAG in cell.get("metadata", {}).get("tags", []) or cell.get("id") == CELL_ID


def add_install_cell(nb: nbformat.NotebookNode, source: str) -> bool:
    """Make ``source`` the notebook's first code cell (tagged ``bnbook-install``), in place; return whether it changed.

    The cell goes right before the first other code cell (after the title's markdown). An existing install cell
    is updated and moved there if needed; a second one is removed. Nothing else is touched.
    """
    if not isinstance(nb, nbformat.NotebookNode) or "cells" not in nb:
        raise TypeError(f"nb must be a notebook (nbformat.NotebookNode), got {type(nb).__name__}")
    if not isinstance(source, str) or not source.strip():
        raise ValueError("source must be the cell's code, got an empty value")
    existing = [i for i, c in enumerate(nb.cells) if _is_install_cell(c)]
    others = [c for c in nb.cells if not _is_install_cell(c)]
    first_code = next((i for i, c in enumerate(others) if c.cell_type == "code"), len(others))
    if existing:
        cell = nb.cells[existing[0]]
    else:
        cell = nbformat.v4.new_code_cell(source)
        if nb.get("nbformat_minor", 5) >= 5:
            cell["id"] = CELL_ID
    before = nbformat.writes(nb)
    cell.cell_type = "code"
    cell.source = source
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if TAG not in tags:
        tags.append(TAG)
    if not existing:
        cell.outputs, cell.execution_count = [], None
    nb.cells = others[:first_code] + [cell] + others[first_code:]
    return nbformat.writes(nb) != before


def check(paths: Sequence[str | Path], config_path: str | Path = CONFIG,
          requirements_path: str | Path = REQUIREMENTS) -> list[str]:
    """Return one line per notebook of ``paths`` that lacks the current install cell in place (empty: all fine)."""
    source = install_cell_source(config_path, requirements_path)
    problems = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if add_install_cell(nb, source):
            problems.append(f"{path}: no current install cell before its first code cell")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: add or update the cell in the given notebooks (default: every chapter), or ``--check``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks (default: chapters/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook lacks the cell")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted(CHAPTERS.glob("*.ipynb"))
    bad = [p for p in paths if p.suffix != ".ipynb" or not p.is_file()]
    if bad:
        parser.error(f"not notebook files: {', '.join(map(str, bad))}")
    if args.check:
        problems = check(paths)
        print("\n".join(problems) or f"{len(paths)} notebooks have the current install cell")
        return 1 if problems else 0
    source = install_cell_source()
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if add_install_cell(nb, source):
            nbformat.write(nb, path)
            print(f"{path}: install cell written")
        else:
            print(f"{path}: unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
