"""Shared set-up: quiet TensorFlow before anything imports it (importing bnbook does), CPU only,
and every test isolated from the shell's ``BNBOOK_*`` variables and from the random state,
figures and cached data other tests leave behind."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")  # before anything imports pyplot (start_chapter does)

import random  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import bnbook  # noqa: F401, E402  (sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

#: The variables a reader or ``make robustness`` may set in the shell; no test sees them
#: unless it sets them itself (monkeypatch.setenv).
BNBOOK_VARIABLES = ("BNBOOK_SEED_OFFSET", "BNBOOK_DATASET", "BNBOOK_QUIET")


@pytest.fixture(scope="session", autouse=True)
def _no_bnbook_variables():
    """The shell's ``BNBOOK_*`` variables are gone for the whole run, module and session fixtures
    and the kernels and subprocesses that tests start included."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith("BNBOOK_")]:
            patch.delenv(name)
        yield


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    """Each test starts with no ``BNBOOK_*`` variable, seeded global generators, no open figure."""
    for name in [*BNBOOK_VARIABLES, *(k for k in os.environ if k.startswith("BNBOOK_"))]:
        monkeypatch.delenv(name, raising=False)
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002  (the legacy global generator some libraries still use)
    if "keras" in sys.modules:  # Python, NumPy, TensorFlow and Keras's global SeedGenerator
        import keras  # noqa: PLC0415

        keras.utils.set_random_seed(0)
    yield
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt  # noqa: PLC0415

        plt.close("all")


@pytest.fixture(scope="session")
def mnist5k():
    """The offline data set's default split, loaded once per test run (treat it as read-only)."""
    from bnbook.data import load  # noqa: PLC0415

    return load("mnist5k")  # after _no_bnbook_variables (autouse fixtures of a scope come first)
