"""Conventions every chapter keeps so that `make test` passes on any CPU (checked on the stored notebooks)."""

import re
from pathlib import Path

import nbformat
import pytest

CHAPTERS = sorted((Path(__file__).resolve().parent.parent / "chapters").glob("*.ipynb"))


def _code_cells(path: Path) -> list[tuple[int, nbformat.NotebookNode]]:
    nb = nbformat.read(path, as_version=4)
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_cells_that_glue_numbers_are_not_compared_by_nbval(path: Path) -> None:
    # A glued value is a computed number: its last digits differ between CPUs (oneDNN kernels),
    # so nbval must not compare it; the cell's assertions still run.
    offending = [
        i
        for i, cell in _code_cells(path)
        if re.search(r"\bglue\(", cell.source) and "nbval-ignore-output" not in cell.metadata.get("tags", [])
    ]
    assert not offending, f"{path.name}: cells {offending} call glue() without the tag nbval-ignore-output"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_starts_and_finishes_the_book_way(path: Path) -> None:
    cells = [c for _, c in _code_cells(path) if "bnbook-install" not in c.metadata.get("tags", [])]
    assert cells[0].source.startswith("import bnbook"), f"{path.name}: the set-up cell must import bnbook first"
    assert any("bnbook.start_chapter(" in c.source for c in cells[:2]), f"{path.name}: no bnbook.start_chapter()"
    if path.name != "appendix_tf1.ipynb":  # the appendix quotes no run time
        assert cells[-1].source.startswith("bnbook.finish_chapter()"), f"{path.name}: must end with finish_chapter()"
        assert {"remove-cell", "nbval-ignore-output"} <= set(cells[-1].metadata.get("tags", []))
