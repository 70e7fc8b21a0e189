"""bnbook.notebooks: execution in place, all or nothing, and the noise check."""

import nbformat
import pytest

from bnbook import notebooks


def _write(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_executes_in_place_with_the_book_environment(tmp_path):
    path = _write(tmp_path / "ok.ipynb", "import os\nprint(os.environ['BNBOOK_QUIET'], os.environ['TF_CPP_MIN_LOG_LEVEL'])", "1 + 1")
    seconds = notebooks.execute_notebook(path)
    assert seconds > 0
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].outputs[0]["text"] == "1 3\n"
    assert nb.cells[1].outputs[0]["data"]["text/plain"] == "2"
    assert [c.execution_count for c in nb.cells] == [1, 2]


def test_the_file_keeps_its_mode(tmp_path):
    path = _write(tmp_path / "mode.ipynb", "1 + 1")
    path.chmod(0o644)
    notebooks.execute_notebook(path)
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_failing_notebook_is_left_unchanged(tmp_path):
    path = _write(tmp_path / "bad.ipynb", "print('fine')", "raise RuntimeError('boom')")
    before = path.read_bytes()
    assert notebooks.main([str(path)]) == 1
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bad.ipynb"]


def test_noise_is_detected():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="63/63 [==============] - 1s")]
    assert notebooks.noisy_outputs(nb) and "cell 0" in notebooks.noisy_outputs(nb)[0]
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="63/63 ━━━━━━━━━━ 1s 3ms/step")]
    assert notebooks.noisy_outputs(nb)
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="accuracy 0.97")]
    assert notebooks.noisy_outputs(nb) == []
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="┏━━━━━━━┳━━━━━┓ model.summary() table")]
    assert notebooks.noisy_outputs(nb) == []


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="ipynb"):
        notebooks.execute_notebook(tmp_path / "chapter.md")
    with pytest.raises(FileNotFoundError, match="missing.ipynb"):
        notebooks.execute_notebook(tmp_path / "missing.ipynb")
