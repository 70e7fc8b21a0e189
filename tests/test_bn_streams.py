"""bnbook._bn_streams: the compiled passes of the doctor and of re-estimation give what eager calls give."""

import keras
import numpy as np
import pytest

from bnbook._bn_streams import _batches, _Passes, _Stream
from bnbook.probes import _bn_paths
from bnbook.reproducibility import set_up

L = keras.layers

X = np.random.default_rng(3).normal(0.5, 2.0, size=(70, 6)).astype("float32")
IMAGES = np.random.default_rng(8).uniform(-1, 1, (20, 32, 32, 3)).astype("float32")


def _mlp():
    set_up(0)
    return keras.Sequential(
        [keras.Input((6,)), L.Dense(5), L.BatchNormalization(name="bn1"), L.Dropout(0.3), L.Dense(3), L.BatchNormalization(name="bn2")]
    )


def _nested():
    set_up(0)
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, include_top=False)
    inputs = keras.Input((32, 32, 3))
    inner = keras.Sequential([base], name="inner")  # two deep: Input -> Sequential([base]) -> head
    return keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(inner(inputs, training=False))))


def _shared():
    set_up(0)
    inputs = keras.Input((6,))
    shared = L.BatchNormalization(name="shared")
    return keras.Model(inputs, L.Add()([shared(L.Dense(4)(inputs)), shared(L.Dense(4)(inputs))]))


class _Untraceable(keras.Model):
    """A subclassed model whose call reads a tensor's value in Python: it cannot run inside a tf.function."""

    def __init__(self):
        super().__init__()
        self.dense, self.bn = L.Dense(4), L.BatchNormalization(name="bn")

    def call(self, x, training=False):
        scale = float(keras.ops.convert_to_numpy(keras.ops.max(keras.ops.abs(x))))
        return self.bn(self.dense(x / scale), training=training)


def _pass(model, x, mode, training, eager, size=32):
    bns = _bn_paths(model)
    passes = _Passes(model, bns)
    passes.eager = eager
    streams: dict[str, _Stream] = {}
    keras.utils.set_random_seed(5)
    outputs = passes.run(x, _batches(len(x), size, drop_last=False), mode, training, streams)
    return passes, streams, np.concatenate([keras.ops.convert_to_numpy(o) for o in outputs])


@pytest.mark.parametrize("build", [_mlp, _nested, _shared], ids=["sequential", "nested two deep", "shared layer"])
@pytest.mark.parametrize("mode", ["batch", "inference"])
def test_a_compiled_pass_gives_the_moments_and_outputs_of_an_eager_pass(build, mode):
    model = build()
    x = IMAGES if build is _nested else X
    compiled, streams, out = _pass(model, x, mode, False, eager=False, size=8)
    assert not compiled.eager  # it did run compiled: no silent fallback
    _, reference, expected = _pass(model, x, mode, False, eager=True, size=8)
    assert list(streams) == list(reference) and len(streams) == len(_bn_paths(model))
    for path, stream in streams.items():
        ref = reference[path]
        assert (stream.count, stream.calls, stream.masked) == (ref.count, ref.calls, ref.masked)
        np.testing.assert_allclose(stream.mean, ref.mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stream.variance, ref.variance, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(stream.bad, ref.bad)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_a_shared_layer_is_recorded_once_per_call():
    _, streams, _ = _pass(_shared(), X, "inference", False, eager=False)
    slices = len(_batches(len(X), 32, drop_last=False))
    assert streams["shared"].calls == 2 * slices
    assert streams["shared"].count == 2 * len(X) * 1  # both calls pooled: 2 values per example and channel


def test_the_compiled_graph_is_reused_and_reads_the_moving_statistics_of_each_pass():
    model = _mlp()
    bns = _bn_paths(model)
    passes = _Passes(model, bns)
    slices = _batches(len(X), 32, drop_last=False)
    first: dict[str, _Stream] = {}
    passes.run(X, slices, "inference", False, first)
    model.get_layer("bn1").moving_variance.assign(np.full(5, 100.0, "float32"))  # bn2's input shrinks 10x
    second: dict[str, _Stream] = {}
    passes.run(X, slices, "inference", False, second)
    assert len(passes._compiled) == 1
    np.testing.assert_allclose(second["bn1"].variance, first["bn1"].variance, rtol=1e-5)
    assert np.all(second["bn2"].variance < first["bn2"].variance / 5)


def test_the_training_mode_pass_is_compiled_with_dropout_and_batch_statistics():
    model = _mlp()
    passes, streams, out = _pass(model, X, "training", True, eager=False)
    assert not passes.eager and set(streams) == {"bn1", "bn2"}
    dense = model.layers[0]
    np.testing.assert_allclose(streams["bn1"].mean, (X @ dense.kernel.numpy() + dense.bias.numpy()).mean(0), rtol=1e-4, atol=1e-5)
    assert out.shape == (len(X), 3)


def test_a_model_that_cannot_be_traced_runs_eagerly_with_the_same_result():
    set_up(0)
    model = _Untraceable()
    model(X[:2])
    passes, streams, out = _pass(model, X, "inference", False, eager=False)
    assert passes.eager  # it fell back
    _, reference, expected = _pass(model, X, "inference", False, eager=True)
    np.testing.assert_allclose(streams["bn"].variance, reference["bn"].variance, rtol=1e-5)
    assert streams["bn"].count == len(X)  # the failed compiled attempt left nothing behind
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_a_non_finite_input_flags_its_channel_only():
    model = _mlp()
    kernel = model.layers[0].kernel.numpy()
    kernel[2, 3] = np.nan
    model.layers[0].kernel.assign(kernel)
    _, streams, _ = _pass(model, X, "inference", False, eager=False)
    assert np.flatnonzero(streams["bn1"].bad).tolist() == [3]


def test_a_failed_trace_leaves_no_keras_name_scope_behind():
    # The fallback used to leave the untraceable call's name scope on Keras's stack: every variable created
    # afterwards got "__untraceable/" in its path (tests/test_probes.py's bn_variables failed after this file).
    model = _Untraceable()
    model(X[:2])
    _pass(model, X, "inference", False, eager=False)
    fresh = L.BatchNormalization(name="after")
    fresh.build((None, 4))
    assert fresh.gamma.path == "after/gamma"
