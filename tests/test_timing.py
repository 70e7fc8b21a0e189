"""bnbook.timing: interleaved medians, warm-up excluded, bad input."""

import time

import keras
import numpy as np
import pytest

from bnbook.timing import interleaved_call_seconds, interleaved_epoch_seconds


def test_call_medians_rank_slow_and_fast_calls():
    calls = {"slow": lambda: time.sleep(0.02), "fast": lambda: None}
    seconds = interleaved_call_seconds(calls, repeats=5)
    assert list(seconds.columns) == ["slow", "fast"] and len(seconds) == 5
    assert (seconds["slow"] >= 0.02).all() and (seconds["fast"] < 0.02).all()


def test_warm_up_call_is_not_timed():
    state = {"calls": 0}

    def first_call_slow():
        state["calls"] += 1
        if state["calls"] == 1:
            time.sleep(0.2)

    seconds = interleaved_call_seconds({"f": first_call_slow}, repeats=3)
    assert state["calls"] == 4 and (seconds["f"] < 0.1).all()


def test_epoch_medians_for_compiled_models():
    x, y = np.random.default_rng(0).normal(size=(64, 4)).astype("float32"), np.zeros(64, "int64")
    models = {}
    for name in ("a", "b"):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        models[name] = model
    seconds = interleaved_epoch_seconds(models, x, y, batch_size=16, repeats=2)
    assert list(seconds.columns) == ["a", "b"] and len(seconds) == 2 and (seconds > 0).all().all()


def test_bad_input():
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        interleaved_call_seconds({"f": lambda: None}, repeats=0)
    with pytest.raises(TypeError, match="repeats"):
        interleaved_call_seconds({"f": lambda: None}, repeats=2.0)
    with pytest.raises(TypeError, match="calls\\['f'\\] must be callable"):
        interleaved_call_seconds({"f": 3})
    with pytest.raises(ValueError, match="calls is empty"):
        interleaved_call_seconds({})
    uncompiled = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="must be compiled"):
        interleaved_epoch_seconds({"m": uncompiled}, np.zeros((4, 4)), np.zeros(4))
