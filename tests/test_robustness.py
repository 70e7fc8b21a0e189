"""tools/robustness.py: every configuration's environment reaches the kernel; failures are located."""

from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest

from tools import robustness


def _write(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return str(path)


def _executed(path, *sources, tags=None):
    """A notebook whose stored outputs are those of one run (as the executor leaves them)."""
    from tools.notebooks import run_notebook

    _write(path, *sources)
    nb, _ = run_notebook(path)
    for index, cell_tags in (tags or {}).items():
        nb.cells[index].metadata["tags"] = cell_tags
    nbformat.write(nb, path)
    return str(path)


def test_configurations_are_the_four_of_the_protocol_and_two_more_seed_offsets():
    assert robustness.CONFIGS == {
        "default": {},
        "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
        "onednn-off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
        "seed+100": {"BNBOOK_SEED_OFFSET": "100"},
        "seed+200": {"BNBOOK_SEED_OFFSET": "200"},
        "seed+300": {"BNBOOK_SEED_OFFSET": "300"},
    }
    assert robustness.DEFAULT_CONFIGS == ("default", "avx2", "onednn-off", "seed+100")


def test_all_runs_every_configuration_and_an_unknown_one_is_refused(tmp_path, monkeypatch, capsys):
    ok = _executed(tmp_path / "ok.ipynb", "print(1)")
    ran = []
    monkeypatch.setattr(robustness, "ProcessPoolExecutor", ThreadPoolExecutor)  # the fake below is not picklable
    monkeypatch.setattr(robustness, "run_one", lambda nb, c, env, timeout: ran.append(c) or robustness.Outcome(nb, c, True, 0.0))
    assert robustness.main([ok, "--configs", "all"]) == 0
    assert ran == list(robustness.CONFIGS)
    ran.clear()
    assert robustness.main([ok]) == 0
    assert ran == list(robustness.DEFAULT_CONFIGS)
    with pytest.raises(SystemExit):
        robustness.main([ok, "--configs", "seed+400"])
    assert "accepted: default, avx2, onednn-off, seed+100, seed+200, seed+300" in capsys.readouterr().err


def test_a_failing_assertion_is_reported_with_its_cell_and_values(tmp_path, capsys):
    ok = _executed(tmp_path / "ok.ipynb", "import os\nprint(os.environ['BNBOOK_QUIET'])")
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
    ok = _executed(tmp_path / "ok.ipynb", "1 + 1")
    assert robustness.main([ok, "--configs", "onednn-off"]) == 0


@pytest.mark.parametrize("args", [["--configs", "fast"], ["--jobs", "0"], []])
def test_bad_arguments(tmp_path, args):
    ok = _write(tmp_path / "ok.ipynb", "1 + 1")
    with pytest.raises(SystemExit):
        robustness.main([ok, *args] if args else [str(tmp_path / "missing.ipynb")])


def test_outputs_that_differ_on_another_cpu_fail_where_nbval_would(tmp_path):
    shown = "import os\nprint(os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'on'))"
    compared = _executed(tmp_path / "compared.ipynb", "1 + 1", shown)
    ignored = _executed(tmp_path / "ignored.ipynb", shown, tags={0: ["nbval-ignore-output"]})
    timed = _executed(tmp_path / "timed.ipynb", "import random\nprint(f'took {random.random():.3f} s')")
    outcomes = {nb: robustness.run_one(nb, "onednn-off", robustness.CONFIGS["onednn-off"]) for nb in (compared, ignored, timed)}
    assert not outcomes[compared].ok and outcomes[compared].cell == 1
    assert "outputs nbval compares differ" in outcomes[compared].error
    assert outcomes[ignored].ok  # the tag: nbval does not compare it either
    assert outcomes[timed].ok  # timings are sanitised as in make test
    seeded = robustness.run_one(compared, "seed+100", {"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert seeded.ok  # seed+100 only has to run: its outputs are not compared


def test_a_stream_split_into_several_outputs_compares_equal_as_in_nbval():
    one = {"cell_type": "code", "source": "", "metadata": {}, "outputs": [{"output_type": "stream", "name": "stdout", "text": "a\nb\n"}]}
    two = {**one, "outputs": [{"output_type": "stream", "name": "stdout", "text": "a\n"}, {"output_type": "stream", "name": "stdout", "text": ["b\n"]}]}
    assert robustness.output_differences({"cells": [one]}, {"cells": [two]}) == []
    other = {**one, "outputs": [{"output_type": "stream", "name": "stdout", "text": "a\nc\n"}]}
    assert robustness.output_differences({"cells": [one]}, {"cells": [other]}) == [0]
