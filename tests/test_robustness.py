"""tools/robustness.py: every configuration's environment reaches the kernel; failures are located."""

import nbformat
import pytest

from tools import robustness


def _write(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return str(path)


def test_configurations_are_the_four_of_the_protocol():
    assert robustness.CONFIGS == {
        "default": {},
        "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
        "onednn-off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
        "seed+100": {"BNBOOK_SEED_OFFSET": "100"},
    }


def test_a_failing_assertion_is_reported_with_its_cell_and_values(tmp_path, capsys):
    ok = _write(tmp_path / "ok.ipynb", "import os\nprint(os.environ['BNBOOK_QUIET'])")
    bad = _write(
        tmp_path / "bad.ipynb",
        "x = 1",
        "import os\noffset = os.environ.get('BNBOOK_SEED_OFFSET')\nassert offset is None, ('offset', offset)",
    )
    report = tmp_path / "out" / "table.md"
    assert robustness.main([ok, bad, "--configs", "default,seed+100", "--report", str(report)]) == 1
    table = report.read_text()
    assert "| ok.ipynb | pass (" in table
    bad_row = next(line for line in table.splitlines() if line.startswith("| bad.ipynb"))
    default_cell, offset_cell = bad_row.split(" | ")[1:3]
    assert default_cell.startswith("pass")
    assert "FAIL cell 1" in offset_cell and "AssertionError: ('offset', '100')" in offset_cell
    assert "3 passed, 1 failed" in capsys.readouterr().out


def test_all_pass_exits_zero(tmp_path):
    ok = _write(tmp_path / "ok.ipynb", "1 + 1")
    assert robustness.main([ok, "--configs", "onednn-off"]) == 0


@pytest.mark.parametrize("args", [["--configs", "fast"], ["--jobs", "0"], []])
def test_bad_arguments(tmp_path, args):
    ok = _write(tmp_path / "ok.ipynb", "1 + 1")
    with pytest.raises(SystemExit):
        robustness.main([ok, *args] if args else [str(tmp_path / "missing.ipynb")])
