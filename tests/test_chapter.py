"""bnbook.start_chapter / finish_chapter and bnbook.quiet."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import bnbook
from bnbook import chapter
from bnbook.quiet import QUIET_ENV_VAR, show_progress


def test_importing_the_package_quiets_tensorflow_first_without_loading_it() -> None:
    code = (
        "import os, sys; os.environ.pop('TF_CPP_MIN_LOG_LEVEL', None); import bnbook; "
        "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], 'tensorflow' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3", "False"]


def test_start_chapter_seeds_loads_and_prints(capsys: pytest.CaptureFixture[str]) -> None:
    (x_train, y_train), (x_test, y_test) = bnbook.start_chapter(seed=3)
    line = capsys.readouterr().out
    assert x_train.shape[1:] == (28, 28, 1) and len(x_train) == len(y_train)
    assert len(x_test) == len(y_test) == 1000
    assert "seed 3" in line and "TensorFlow" in line and "Keras" in line
    first = np.random.random()
    bnbook.start_chapter(seed=3)
    assert np.random.random() == first  # seeded again, same draw


def test_start_chapter_flatten_and_bad_input() -> None:
    (x_train, _), _ = bnbook.start_chapter(seed=0, flatten=True)
    assert x_train.shape[1:] == (784,)
    with pytest.raises(TypeError, match="seed"):
        bnbook.start_chapter(seed="0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        bnbook.start_chapter(seed=-1)
    with pytest.raises(TypeError, match="deterministic"):
        bnbook.start_chapter(seed=0, deterministic="yes")  # type: ignore[arg-type]


def test_finish_chapter_glues_the_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    glued = {}
    import myst_nb

    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: glued.update({name: value}))
    monkeypatch.setattr(chapter, "_started", None)
    with pytest.raises(RuntimeError, match="start_chapter"):
        bnbook.finish_chapter()
    bnbook.start_chapter(seed=0)
    assert bnbook.finish_chapter() is None  # nothing to display in the notebook
    assert list(glued) == ["runtime_s"] and glued["runtime_s"] >= 0
    with pytest.raises(TypeError, match="name"):
        bnbook.finish_chapter(3)  # type: ignore[arg-type]


def test_show_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(QUIET_ENV_VAR, "1")
    assert show_progress(None) is False and show_progress(True) is True
    monkeypatch.setenv(QUIET_ENV_VAR, "0")
    assert show_progress(None) is True and show_progress(False) is False
    with pytest.raises(TypeError, match="progress"):
        show_progress("yes")  # type: ignore[arg-type]



def test_quiet_cpp_logs_keeps_a_level_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    from bnbook.quiet import TF_LOG_LEVEL, quiet_cpp_logs

    monkeypatch.delenv(TF_LOG_LEVEL[0], raising=False)
    quiet_cpp_logs()
    assert os.environ[TF_LOG_LEVEL[0]] == "3"
    monkeypatch.setenv(TF_LOG_LEVEL[0], "1")  # a reader who wants some logs keeps them
    quiet_cpp_logs()
    assert os.environ[TF_LOG_LEVEL[0]] == "1"


def test_quiet_tensorflow_lowers_the_python_loggers() -> None:
    import logging

    from bnbook.quiet import quiet_tensorflow

    logging.getLogger("tensorflow").setLevel(logging.INFO)
    quiet_tensorflow()
    assert logging.getLogger("tensorflow").level == logging.ERROR
