"""bnbook.timing: interleaved medians, warm-up excluded, bad input."""

import time
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from bnbook.timing import interleaved_call_seconds, interleaved_epoch_seconds, rotated, xla_by_default


def test_call_medians_rank_slow_and_fast_calls():
    calls = {"slow": lambda: time.sleep(0.02), "fast": lambda: None}
    seconds = interleaved_call_seconds(calls, repeats=5)
    assert list(seconds.columns) == ["slow", "fast"] and len(seconds) == 5
    assert (seconds["slow"] >= 0.02).all() and (seconds["fast"] < seconds["slow"]).all()


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


def test_calls_take_turns_in_an_order_rotated_every_round():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    seconds = interleaved_call_seconds(calls, repeats=6)
    assert list(seconds.columns) == ["a", "b", "c"] and len(seconds) == 6
    warm_up, timed = order[:3], order[3:]
    assert warm_up == ["a", "b", "c"]
    rounds = [timed[i : i + 3] for i in range(0, len(timed), 3)]
    assert rounds == [list("abc"), list("bca"), list("cab")] * 2  # interleaved, never a, a, b, b
    for position in range(3):  # every callable in every position equally often
        assert sorted(r[position] for r in rounds) == ["a", "a", "b", "b", "c", "c"]


def test_rows_pair_the_calls_of_one_round():
    """Row r holds round r's time of every callable, whatever the position it had in that round."""
    clock = {"t": 0.0}

    def fake_counter():
        return clock["t"]

    def advance(seconds):
        def call():
            clock["t"] += seconds
        return call

    with mock.patch("bnbook.timing.time.perf_counter", fake_counter):
        seconds = interleaved_call_seconds({"one": advance(1.0), "two": advance(2.0)}, repeats=4)
    assert (seconds["one"] == 1.0).all() and (seconds["two"] == 2.0).all()


def test_rotated():
    assert rotated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert rotated(["a", "b", "c"], 4) == ["b", "c", "a"]
    assert rotated([], 3) == []


def test_epoch_timing_excludes_the_warm_up_and_interleaves():
    x, y = np.random.default_rng(0).normal(size=(32, 4)).astype("float32"), np.zeros(32, "int64")
    order = []

    class Record(keras.callbacks.Callback):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def on_train_begin(self, logs=None):
            order.append(self.name)

    models = {}
    for name in ("a", "b"):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        fit = model.fit
        model.fit = lambda *args, _fit=fit, _name=name, **kwargs: _fit(*args, callbacks=[Record(_name)], **kwargs)
        models[name] = model
    seconds = interleaved_epoch_seconds(models, x, y, batch_size=16, repeats=3)
    assert len(seconds) == 3  # the warm-up epochs are not rows
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # 2 warm-ups, then rounds ab, ba, ab


@pytest.mark.parametrize(
    ("devices", "determinism", "mac", "expected"),
    [
        (["CPU"], False, False, False),  # CPU only: no XLA
        (["CPU", "GPU"], False, False, True),  # a GPU: XLA by default
        (["CPU", "GPU"], True, False, False),  # ... unless op determinism is on
        (["CPU", "TPU"], False, False, True),
        (["CPU", "GPU"], False, True, False),  # ... or on an Apple-silicon Mac
        (["CPU"], False, True, False),
    ],
    ids=["cpu", "gpu", "gpu-determinism", "tpu", "gpu-mac", "cpu-mac"],
)
def test_xla_by_default_follows_keras_on_every_device(devices, determinism, mac, expected):
    fake = [tf.config.PhysicalDevice(f"/physical_device:{kind}:0", kind) for kind in devices]
    system, processor = ("Darwin", "arm") if mac else ("Linux", "x86_64")
    with mock.patch.object(tf.config, "list_physical_devices", return_value=fake), mock.patch.object(
        tf_config, "is_op_determinism_enabled", return_value=determinism
    ), mock.patch("platform.system", return_value=system), mock.patch(
        "platform.processor", return_value=processor
    ):
        assert xla_by_default() is expected
        # ... and Keras agrees: what compile()'s default jit_compile="auto" resolves to
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile(optimizer="sgd", loss="mse")
        assert model.jit_compile is expected
