"""Colab and Binder: the chapters' guarded install cell (tools/add_install_cell.py) and binder/."""

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
import yaml
from IPython.core.inputtransformer2 import TransformerManager

from tools import add_install_cell as tool

ROOT = Path(__file__).resolve().parents[1]


def _requirements(path):
    """name -> full line (without comments) of each requirement of a requirements file."""
    lines = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name = re.split(r"[=<>;\s\[]", line, maxsplit=1)[0].lower().replace("_", "-")
            lines[name] = line
    return lines


def _run_cell(source, missing=()):
    """Run the cell's code as IPython would, with a stand-in IPython; return the line magics it called."""
    calls = []

    class FakeIPython:
        def run_line_magic(self, name, line, _stack_depth=1):
            calls.append((name, line))

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name in missing else real_find_spec(name, *args)

    code = TransformerManager().transform_cell(source)
    namespace = {"get_ipython": lambda: FakeIPython()}
    original, importlib.util.find_spec = importlib.util.find_spec, find_spec
    try:
        exec(code, namespace)  # noqa: S102 (our own cell)
    finally:
        importlib.util.find_spec = original
    return calls


def test_install_command_uses_the_configured_address():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    url, branch = config["repository"]["url"].rstrip("/"), config["repository"]["branch"]
    command = tool.install_command()
    assert f'"bnbook @ git+{url}@{branch}"' in command
    pin = _requirements(ROOT / "requirements.txt")["myst-nb"]
    assert f'"{pin}"' in command
    assert command.startswith("%pip install ")
    assert tool.install_command() in tool.install_cell_source()


def test_guard_skips_the_install_where_bnbook_imports():
    assert importlib.util.find_spec("bnbook") is not None  # the test environment has the package
    assert _run_cell(tool.install_cell_source()) == []


@pytest.mark.parametrize("missing", [("bnbook",), ("myst_nb",), ("bnbook", "myst_nb")])
def test_guard_installs_where_a_module_is_missing(missing):
    calls = _run_cell(tool.install_cell_source(), missing=missing)
    assert calls == [("pip", tool.install_command().removeprefix("%pip "))]


def test_the_cell_runs_in_a_kernel_and_prints_nothing_where_bnbook_is_installed():
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(tool.install_cell_source())])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    assert nb.cells[0].outputs == []


def test_a_fork_changes_only_config(tmp_path):
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: https://github.com/someone/bn-book-fork/\n  branch: draft\n")
    command = tool.install_command(config)
    assert '"bnbook @ git+https://github.com/someone/bn-book-fork@draft"' in command


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("title: x\n", "repository.url"),
        ("repository:\n  url: https://github.com/<owner>/<repository>\n", "repository.url"),
        ("repository:\n  url: git@github.com:a/b.git\n", "https address"),
        ("repository:\n  url: https://github.com/a/b\n  branch: 'a b'\n", "branch"),
    ],
)
def test_bad_configuration(tmp_path, text, match):
    config = tmp_path / "_config.yml"
    config.write_text(text)
    with pytest.raises(ValueError, match=match):
        tool.install_command(config)


def test_pins_are_read_exactly(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("myst_nb==1.4.0  # comment\nfoo>=1\n")
    assert tool.pinned_requirement("myst-nb", requirements) == "myst-nb==1.4.0"
    with pytest.raises(ValueError, match="'foo'"):
        tool.pinned_requirement("foo", requirements)
    with pytest.raises(TypeError):
        tool.pinned_requirement("", requirements)


def _chapter():
    return nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# 1. A chapter"),
            nbformat.v4.new_code_cell("import bnbook"),
            nbformat.v4.new_markdown_cell("## A section"),
            nbformat.v4.new_code_cell("1 + 1"),
        ]
    )


def test_add_install_cell_is_idempotent_and_touches_nothing_else():
    nb = _chapter()
    before = [dict(c) for c in nb.cells]
    source = tool.install_cell_source()
    assert tool.add_install_cell(nb, source) is True
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code", "markdown", "code"]
    cell = nb.cells[1]
    assert cell.source == source and cell.id == tool.CELL_ID and tool.TAG in cell.metadata.tags
    assert cell.outputs == [] and cell.execution_count is None
    assert [dict(c) for c in nb.cells[:1] + nb.cells[2:]] == before
    text = nbformat.writes(nb)
    assert tool.add_install_cell(nb, source) is False
    assert nbformat.writes(nb) == text
    nbformat.validate(nb)


def test_add_install_cell_updates_a_stale_cell_and_moves_it(tmp_path):
    nb = _chapter()
    tool.add_install_cell(nb, "%pip install old-address")
    nb.cells.append(nb.cells.pop(1))  # moved to the end, and stale
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: https://github.com/someone/fork\n  branch: main\n")
    source = tool.install_cell_source(config)
    assert tool.add_install_cell(nb, source) is True
    assert [c.get("id") for c in nb.cells].count(tool.CELL_ID) == 1
    assert nb.cells[1].source == source and "someone/fork" in nb.cells[1].source


def test_check_and_command_line(tmp_path, capsys):
    path = tmp_path / "chapter.ipynb"
    nbformat.write(_chapter(), path)
    assert tool.main(["--check", str(path)]) == 1
    assert tool.main([str(path)]) == 0
    assert tool.main(["--check", str(path)]) == 0
    assert "install cell written" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "notes.md")])
    with pytest.raises(TypeError):
        tool.add_install_cell({"cells": []}, "x")
    with pytest.raises(ValueError):
        tool.add_install_cell(_chapter(), " ")


def test_every_chapter_has_the_current_install_cell():
    """Fails until `.venv/bin/python tools/add_install_cell.py` has been run (again after the address changed)."""
    chapters = sorted((ROOT / "chapters").glob("*.ipynb"))
    problems = tool.check(chapters)
    assert not problems, "run `.venv/bin/python tools/add_install_cell.py`:\n" + "\n".join(problems)


# --- Binder (repo2docker reads binder/ in preference to the repository root) ----------------------------------

BUILD_AND_TEST_TOOLS = {"jupyter-book", "sphinx", "playwright", "nbval", "pytest", "nbconvert", "zizmor", "check-jsonschema",
                        "django-static-mathjax"}


def test_binder_runtime_is_the_python_of_the_book():
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == "python-3.11"


def test_binder_requirements_run_the_chapters_without_the_build_tools():
    binder = _requirements(ROOT / "binder" / "requirements.txt")
    full = _requirements(ROOT / "requirements.txt")
    assert not BUILD_AND_TEST_TOOLS & set(binder), f"build/test tools in binder/requirements.txt: {BUILD_AND_TEST_TOOLS & set(binder)}"
    assert "-e ." in binder.values() or "." in binder.values(), "binder/requirements.txt must install the package (-e .)"
    # What the chapters import (and bnbook needs), pinned as in requirements.txt
    needed = {"tensorflow-cpu", "tensorflow", "keras", "numpy", "pandas", "scikit-learn", "mlxtend", "matplotlib", "myst-nb", "ipykernel"}
    assert needed <= set(binder), f"missing from binder/requirements.txt: {needed - set(binder)}"
    for name, line in binder.items():
        if name in full:
            assert line == full[name], f"binder/requirements.txt pins {line!r}, requirements.txt {full[name]!r}"
