"""tools/notebooks.py: execution in place, all or nothing, and the noise check."""

import nbformat
import pytest

from tools import notebooks


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


_ONEDNN = (
    "I0000 00:00:1795946632.504077    2654 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. "
    "To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n"
)
_ABSL = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"


def test_tensorflow_startup_notices_are_dropped_and_nothing_else():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x"), nbformat.v4.new_code_cell("y")])
    nb.cells[0].outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=_ABSL + _ONEDNN),
        nbformat.v4.new_output("stream", name="stdout", text="data set 'mnist5k'\n"),
    ]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stderr", text=_ONEDNN + "UserWarning: real\n")]
    assert notebooks.noisy_outputs(nb)  # the oneDNN notice counts as noise until dropped
    assert notebooks.drop_startup_notices(nb) == 3
    assert [o["name"] for o in nb.cells[0].outputs] == ["stdout"]
    assert nb.cells[1].outputs[0]["text"] == "UserWarning: real\n"  # a real warning stays ...
    assert notebooks.noisy_outputs(nb) == ["cell 1: unhandled warning or log on stderr: 'UserWarning: real\\n'"]
    nb.cells[1].outputs = []  # ... and is refused until the chapter handles it
    assert notebooks.noisy_outputs(nb) == []
    # The same notice on stdout, or quoted inside a line, is not a start-up notice: kept.
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text=_ONEDNN)]
    assert notebooks.drop_startup_notices(nb) == 0 and notebooks.noisy_outputs(nb)


def test_a_notebook_that_prints_the_notice_to_stderr_is_saved_clean(tmp_path):
    text = _ABSL + _ONEDNN
    path = _write(tmp_path / "notice.ipynb", f"import sys\nsys.stderr.write({text!r})\nprint('ok')")
    notebooks.execute_notebook(path)
    nb = nbformat.read(path, as_version=4)
    assert [(o["name"], o["text"]) for o in nb.cells[0].outputs] == [("stdout", "ok\n")]


def test_other_stderr_noise_is_still_refused(tmp_path):
    path = _write(tmp_path / "noise.ipynb", "import sys\nsys.stderr.write('E0000 cpu_feature_guard.cc:1] oneDNN custom operations are off\\n')")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="log noise"):
        notebooks.execute_notebook(path)
    assert path.read_bytes() == before


_WARNS = "import warnings\nwarnings.warn('The model does not have any trainable weights.', UserWarning)"


def test_an_unhandled_warning_is_refused_and_the_file_left_unchanged(tmp_path):
    # What Python (and Keras through absl) writes to stderr when nobody handled the warning.
    path = _write(tmp_path / "warns.ipynb", "print('fine')", _WARNS)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"(?s)unhandled warnings.*cell 1: unhandled warning.*UserWarning: The model does not"):
        notebooks.execute_notebook(path)
    assert path.read_bytes() == before


def test_a_warning_shown_on_purpose_or_ignored_by_its_message_is_stored(tmp_path):
    shown = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    exec({_WARNS!r})\n"
        "print('Keras warns:', caught[0].message)"
    )
    ignored = (
        "# this chapter's models have no trainable weights on purpose\n"
        "warnings.filterwarnings('ignore', message='The model does not have any trainable weights')\n"
        f"{_WARNS}"
    )
    path = _write(tmp_path / "handled.ipynb", shown, ignored)
    notebooks.execute_notebook(path)
    nb = nbformat.read(path, as_version=4)
    assert [(o["name"], o["text"]) for o in nb.cells[0].outputs] == [
        ("stdout", "Keras warns: The model does not have any trainable weights.\n")
    ]
    assert nb.cells[1].outputs == []
