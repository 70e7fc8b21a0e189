"""bnbook.quiet: TensorFlow's log noise is silenced, Keras's own warnings are not."""

import logging
import warnings

import pytest

from bnbook.quiet import quiet_tensorflow


@pytest.fixture
def restore_loggers():
    """Put the loggers' levels back after the test (quiet_tensorflow sets them process-wide)."""
    levels = {name: logging.getLogger(name).level for name in ("tensorflow", "absl")}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_keras_python_warnings_still_reach_the_reader(restore_loggers) -> None:
    import keras

    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # Python's default filters, as in a fresh kernel (no "always")
        quiet_tensorflow()
        keras.layers.Dense(2, input_shape=(3,))  # Keras warns: input_shape on a layer
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert any("input_shape" in m for m in messages), messages
    assert any(w.filename.replace("\\", "/").endswith(".py") for w in caught)


def test_no_filter_ignores_keras_or_its_absl_warnings(restore_loggers) -> None:
    with warnings.catch_warnings():
        warnings.resetwarnings()
        quiet_tensorflow()
        assert [f for f in warnings.filters if f[0] == "ignore"] == []
    # Keras logs some warnings through absl (e.g. legacy HDF5 saving): not lowered.
    assert logging.getLogger("absl").isEnabledFor(logging.WARNING)
    assert logging.getLogger("tensorflow").level == logging.ERROR  # TensorFlow's own notices are noise
