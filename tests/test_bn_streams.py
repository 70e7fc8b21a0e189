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
    outputs = []
    passes.run(x, _batches(len(x), size, drop_last=False), mode, training, streams, lambda part, out: outputs.append(out))
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
    fn = passes._compiled[("inference", False)][0]
    uneven: dict[str, _Stream] = {}
    passes.run(X, [slice(0, 3), slice(3, 40), slice(40, 70)], "inference", False, uneven)  # three batch sizes
    assert fn.experimental_get_tracing_count() == 1  # traced once: no retrace per pass or per batch size
    np.testing.assert_allclose(second["bn1"].variance, first["bn1"].variance, rtol=1e-5)
    assert np.all(second["bn2"].variance < first["bn2"].variance / 5)


def test_the_training_mode_pass_is_compiled_with_dropout_and_batch_statistics():
    """From the same random state, the compiled training pass draws the same dropout masks as an eager one:
    bn2 (after the dropout) gets the same moments and the outputs agree."""
    from bnbook.probes import unchanged_state

    model = _mlp()
    with unchanged_state(model):  # the dropout layer's seed-generator state is restored for the eager pass
        passes, streams, out = _pass(model, X, "training", True, eager=False)
    assert not passes.eager and set(streams) == {"bn1", "bn2"}
    _, reference, expected = _pass(model, X, "training", True, eager=True)
    for path in ("bn1", "bn2"):
        np.testing.assert_allclose(streams[path].mean, reference[path].mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(streams[path].variance, reference[path].variance, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    dense = model.layers[0]
    np.testing.assert_allclose(streams["bn1"].mean, (X @ dense.kernel.numpy() + dense.bias.numpy()).mean(0), rtol=1e-4, atol=1e-5)


def _masked_gru():
    set_up(0)
    inputs = keras.Input((7,), dtype="int32")
    h = L.Embedding(20, 6, mask_zero=True)(inputs)
    return keras.Model(inputs, L.GRU(3)(L.BatchNormalization(name="bn")(h)))


def _mixed_cnn():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        set_up(0)
        return keras.Sequential(
            [keras.Input((12, 12, 3)), L.Conv2D(4, 3), L.BatchNormalization(name="bn"), L.ReLU(), L.GlobalAveragePooling2D(), L.Dense(2)]
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("build", [_masked_gru, _mixed_cnn], ids=["masked", "mixed_float16"])
@pytest.mark.parametrize(("mode", "training"), [("batch", False), ("inference", False), ("training", True)])
def test_masked_and_mixed_precision_passes_compile_and_match_eager(build, mode, training):
    model = build()
    if build is _masked_gru:
        x = np.random.default_rng(1).integers(0, 20, (30, 7)).astype("int32")
        x[:, 5:] = 0  # padding
    else:
        x = np.random.default_rng(1).normal(size=(30, 12, 12, 3)).astype("float32")
    passes, streams, out = _pass(model, x, mode, training, eager=False, size=8)
    assert not passes.eager
    _, reference, expected = _pass(model, x, mode, training, eager=True, size=8)
    assert streams["bn"].masked == reference["bn"].masked == (build is _masked_gru)
    np.testing.assert_allclose(streams["bn"].mean, reference["bn"].mean, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(streams["bn"].variance, reference["bn"].variance, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(out.astype("float32"), expected.astype("float32"), rtol=1e-3, atol=1e-3)


def test_a_model_that_cannot_be_traced_runs_eagerly_with_the_same_result():
    set_up(0)
    model = _Untraceable()
    model(X[:2])
    passes, streams, out = _pass(model, X, "inference", False, eager=False)
    assert passes.eager  # it fell back, and says why
    assert passes.fallback is not None and passes.fallback.split(":")[0].endswith("Error")
    _, reference, expected = _pass(model, X, "inference", False, eager=True)
    np.testing.assert_allclose(streams["bn"].variance, reference["bn"].variance, rtol=1e-5)
    assert streams["bn"].count == len(X)  # the failed compiled attempt left nothing behind
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_running_out_of_memory_is_raised_not_retried_eagerly():
    """Eager passes hold every activation: retrying them after an out-of-memory error would need more."""
    import tensorflow as tf

    class Hungry(L.Layer):
        def call(self, x):
            if isinstance(x, keras.KerasTensor):  # building the functional model
                return x
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

        def compute_output_spec(self, x):
            return keras.KerasTensor(x.shape, x.dtype)

    set_up(0)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, Hungry()(L.BatchNormalization(name="bn")(inputs)))
    passes = _Passes(model, _bn_paths(model))
    with pytest.raises(tf.errors.ResourceExhaustedError):
        passes.run(X, _batches(len(X), 32, drop_last=False), "inference", False, {})
    assert not passes.eager


def test_a_non_finite_input_flags_its_channel_only():
    model = _mlp()
    kernel = model.layers[0].kernel.numpy()
    kernel[2, 3] = np.nan
    model.layers[0].kernel.assign(kernel)
    _, streams, _ = _pass(model, X, "inference", False, eager=False)
    assert np.flatnonzero(streams["bn1"].bad).tolist() == [3]


def test_the_memory_pass_size_follows_the_widest_bn_input():
    from bnbook._bn_streams import _memory_pass_size, _widest_bn_input
    from bnbook.doctor.diagnosis import PASS_MEMORY_BYTES, PASS_SIZE_LARGEST

    mlp = _mlp()
    assert _widest_bn_input(mlp, _bn_paths(mlp), X) == 5
    assert _memory_pass_size(5, PASS_MEMORY_BYTES, PASS_SIZE_LARGEST) == 128  # the book's networks: unchanged
    set_up(0)
    app = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=0.35, weights=None)
    widest = _widest_bn_input(app, _bn_paths(app), np.zeros((2, 224, 224, 3), "float32"))
    assert widest == 112 * 112 * 48  # block_1_expand_BN's input, before its stride-2 depthwise convolution
    assert _memory_pass_size(widest, PASS_MEMORY_BYTES, PASS_SIZE_LARGEST) == 89  # the docstring's number
    assert _memory_pass_size(widest, 10, PASS_SIZE_LARGEST) == 2  # never below 2 (a batch variance exists)


def test_the_widest_bn_input_is_measured_when_the_base_has_no_input_shape():
    """keras.applications(include_top=False) without input_shape: its BN layers' built shapes have no spatial
    size, so the widest input is measured on the images (review 3, L-a)."""
    from bnbook._bn_streams import _widest_bn_input

    set_up(0)
    base = keras.applications.MobileNetV2(alpha=0.35, weights=None, include_top=False)
    inputs = keras.Input((96, 96, 3))
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(base(inputs))))
    bns = _bn_paths(model)
    assert any(None in tuple(shape)[1:] for _, bn in bns for shape in bn._build_shapes_dict.values())
    assert _widest_bn_input(model, bns, np.zeros((3, 96, 96, 3), "float32")) == 48 * 48 * 48


def test_diagnose_passes_default_to_the_memory_pass_size(monkeypatch):
    from bnbook import doctor
    from bnbook.doctor import diagnosis

    sizes = []
    original = diagnosis._batches
    def spy(n, size, drop_last, at_most=False):
        slices = original(n, size, drop_last, at_most)
        sizes.append(max(part.stop - part.start for part in slices))
        return slices

    monkeypatch.setattr(diagnosis, "_batches", spy)
    monkeypatch.setattr(diagnosis, "PASS_MEMORY_BYTES", 20 * 5 * 10)  # 10 examples of the MLP's widest BN input
    doctor.diagnose(_mlp(), X)  # 70 examples
    assert sizes[0] == 10  # 7 passes of 10: none above the memory bound
    sizes.clear()
    doctor.diagnose(_mlp(), X, pass_size=7)
    assert sizes[0] == 7  # a given pass_size: 10 passes of 7


@pytest.mark.parametrize(("n", "size"), [(256, 89), (70, 10), (71, 10), (3, 2), (5, 128), (2, 2), (9, 4)])
def test_passes_of_at_most_a_size_cover_x_and_keep_two_examples(n, size):
    slices = _batches(n, size, drop_last=False, at_most=True)
    lengths = [part.stop - part.start for part in slices]
    assert sum(lengths) == n and slices[0].start == 0 and all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    assert max(lengths) <= max(size, 3) and min(lengths) >= 2  # (3, 2): 3 examples cannot be split into 2s
    assert max(lengths) - min(lengths) <= 1


def test_successive_passes_do_not_trigger_the_frequent_retracing_warning():
    """Each _Passes traces its own tf.function once; many diagnoses in a row (a chapter, a loop over models)
    must not add up to TensorFlow's "N out of the last N calls ... triggered tf.function retracing" warning
    (it counts traces per code object: closures made anew per pass did add up)."""
    import logging

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    handler = Collect()
    model = _mlp()  # (set_up quiets TensorFlow's logger: its level is raised back to WARNING below)
    bns = _bn_paths(model)
    logger = logging.getLogger("tensorflow")  # TensorFlow's logger does not propagate to the root
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        for _ in range(8):
            _Passes(model, bns).run(X, _batches(len(X), 128, drop_last=False), "inference", False, {})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert not [m for m in handler.messages if "retracing" in m]


def test_a_failed_trace_leaves_no_keras_name_scope_behind():
    # The fallback used to leave the untraceable call's name scope on Keras's stack: every variable created
    # afterwards got "__untraceable/" in its path (tests/test_probes.py's bn_variables failed after this file).
    model = _Untraceable()
    model(X[:2])
    _pass(model, X, "inference", False, eager=False)
    fresh = L.BatchNormalization(name="after")
    fresh.build((None, 4))
    assert fresh.gamma.path == "after/gamma"


def test_the_doctor_says_when_its_passes_ran_eagerly(monkeypatch):
    import bnbook._bn_streams as streams_module
    from bnbook import doctor

    monkeypatch.setattr(streams_module, "_COMPILE_ABOVE_BYTES", 0)  # compile even this small model's passes
    set_up(0)
    model = _Untraceable()
    model(X[:2])
    report = doctor.diagnose(model, X)
    (found,) = [f for f in report.findings if f.kind == "eager_passes"]
    assert found.severity == "info" and found.evidence["reason"].split(":")[0].endswith("Error")
    assert "eager_passes" not in doctor.diagnose(_mlp(), X).kinds("info")


def test_small_passes_run_eagerly_and_large_ones_compiled(monkeypatch):
    """Tracing costs seconds on a deep network; a pass that holds little memory runs eagerly instead."""
    import bnbook._bn_streams as streams_module
    from bnbook import doctor, probes
    from bnbook.doctor import diagnosis

    made = []

    class Spy(_Passes):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(diagnosis, "_Passes", Spy)
    monkeypatch.setattr(probes, "_Passes", Spy)
    model = _mlp()
    doctor.diagnose(model, X)
    probes.reestimate_bn_statistics(model, X)
    assert [p.eager for p in made] == [True, True]  # 70 x 5 values in 1 and 2 slices: little memory, few calls
    made.clear()
    monkeypatch.setattr(streams_module, "_COMPILE_ABOVE_BYTES", 20 * 5 * 69)  # just below one pass of all 70
    doctor.diagnose(model, X)
    probes.reestimate_bn_statistics(model, X)
    assert [p.eager for p in made] == [False, False]
    made.clear()
    monkeypatch.setattr(streams_module, "_COMPILE_ABOVE_BYTES", 2**40)
    probes.reestimate_bn_statistics(model, X, batch_size=8)  # 8 slices: many calls
    probes.reestimate_bn_statistics(model, X, batch_size=10)  # 7 slices
    assert [p.eager for p in made] == [False, True]
