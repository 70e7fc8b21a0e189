"""bnbook.layers.BatchNorm against keras.layers.BatchNormalization."""

import keras
import numpy as np
import pytest

from bnbook.layers import BatchNorm
from bnbook.reproducibility import set_up

CASES = [
    # (input shape, axis, extra keyword arguments)
    ((32, 7), -1, {}),
    ((16, 6), 1, {"momentum": 0.5, "epsilon": 1e-5}),
    ((8, 5, 5, 3), -1, {"momentum": 0.9}),
    ((8, 3, 5, 5), 1, {"momentum": 0.9}),
    ((8, 5, 5, 3), 3, {"center": False}),
    ((8, 5, 5, 3), -1, {"scale": False, "epsilon": 0.1}),
    ((8, 4), -1, {"center": False, "scale": False}),
    ((8, 4), -1, {"gamma_initializer": "random_uniform", "beta_initializer": "random_normal",
                  "moving_mean_initializer": "ones", "moving_variance_initializer": "random_uniform"}),
]


def _pair(axis, kwargs, shape):
    set_up(0)
    ours = BatchNorm(axis=axis, **kwargs)
    ours.build(shape)
    set_up(0)
    theirs = keras.layers.BatchNormalization(axis=axis, **kwargs)
    theirs.build(shape)
    for a, b in zip(ours.weights, theirs.weights):
        a.assign(b)  # same start even for random initialisers
    return ours, theirs


@pytest.mark.parametrize(("shape", "axis", "kwargs"), CASES)
def test_same_variables_in_the_same_order(shape, axis, kwargs):
    ours, theirs = _pair(axis, kwargs, shape)
    assert [(w.name, tuple(w.shape), w.trainable) for w in ours.weights] == [
        (w.name, tuple(w.shape), w.trainable) for w in theirs.weights
    ]


@pytest.mark.parametrize(("shape", "axis", "kwargs"), CASES)
def test_same_outputs_and_statistics_over_many_batches_both_modes(shape, axis, kwargs):
    ours, theirs = _pair(axis, kwargs, shape)
    rng = np.random.default_rng(1)
    for _ in range(10):
        batch = (rng.normal(size=shape) * 3 + 2).astype("float32")
        np.testing.assert_allclose(ours(batch, training=True), theirs(batch, training=True), atol=1e-4, rtol=1e-5)
        np.testing.assert_allclose(ours(batch, training=False), theirs(batch, training=False), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(ours.moving_mean, theirs.moving_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.moving_variance, theirs.moving_variance, rtol=1e-5, atol=1e-6)


def test_training_mode_moves_statistics_inference_mode_does_not():
    layer = BatchNorm(momentum=0.5)
    x = np.full((4, 2), 3.0, "float32")
    layer(x, training=False)
    np.testing.assert_array_equal(layer.moving_mean, [0.0, 0.0])
    layer(x, training=True)
    np.testing.assert_allclose(layer.moving_mean, [1.5, 1.5])
    np.testing.assert_allclose(layer.moving_variance, [0.5, 0.5])  # 1 * 0.5 + 0 * 0.5


def test_trainable_false_means_inference_mode_like_keras():
    ours, theirs = _pair(-1, {}, (16, 3))
    ours.trainable = theirs.trainable = False
    batch = np.random.default_rng(2).normal(size=(16, 3)).astype("float32") + 5
    np.testing.assert_allclose(ours(batch, training=True), theirs(batch, training=True), atol=1e-5)
    np.testing.assert_array_equal(ours.moving_mean, [0.0, 0.0, 0.0])


def test_gradients_equal_keras():
    import tensorflow as tf

    ours, theirs = _pair(-1, {"gamma_initializer": "random_uniform"}, (32, 4))
    x = tf.Variable(np.random.default_rng(3).normal(size=(32, 4)).astype("float32"))
    w = tf.constant(np.random.default_rng(4).normal(size=(32, 4)).astype("float32"))
    grads = []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(w * layer(x, training=True))
        grads.append(tape.gradient(loss, [x, *layer.trainable_weights]))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_in_a_model_saved_and_reloaded(tmp_path):
    set_up(0)
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, use_bias=False), BatchNorm(momentum=0.8), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(32, 6, 6, 2)).astype("float32"), rng.normal(size=(32, 2)).astype("float32")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert not np.allclose(model.layers[1].moving_mean, 0.0)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(reloaded.layers[1], BatchNorm)
    assert reloaded.layers[1].get_config() == model.layers[1].get_config()
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "word"),
    [({"axis": 1.0}, TypeError, "axis"), ({"axis": [1, 2]}, TypeError, "axis"), ({"momentum": 1.5}, ValueError, "momentum"),
     ({"epsilon": 0}, ValueError, "epsilon"), ({"center": "yes"}, TypeError, "center"), ({"scale": None}, TypeError, "scale")],
)
def test_bad_arguments(kwargs, error, word):
    with pytest.raises(error, match=word):
        BatchNorm(**kwargs)


def test_axis_out_of_range_at_build():
    with pytest.raises(ValueError, match="axis=3"):
        BatchNorm(axis=3).build((4, 2))


def test_numpy_integer_axis_is_accepted():
    layer = BatchNorm(axis=np.int64(1))
    assert layer.axis == 1 and type(layer.axis) is int
    assert layer(np.ones((2, 3, 4), "float32")).shape == (2, 3, 4)


@pytest.mark.parametrize(
    "name",
    ["beta_regularizer", "gamma_regularizer", "beta_constraint", "gamma_constraint", "renorm", "renorm_clipping", "renorm_momentum", "synchronized"],
)
def test_keras_arguments_it_does_not_take_are_refused(name):
    with pytest.raises(ValueError, match=f"Unrecognized keyword arguments passed to BatchNorm.*{name}"):
        BatchNorm(**{name: None})


def test_input_of_another_rank_than_at_build_raises_like_keras():
    for layer in (BatchNorm(), keras.layers.BatchNormalization()):
        layer(np.ones((4, 5, 3), "float32"))
        with pytest.raises(ValueError, match="expected ndim=3, found ndim=2"):
            layer(np.ones((4, 3), "float32"))
        with pytest.raises(ValueError, match="expected axis -?[0-9] of input shape to have value 3"):
            layer(np.ones((4, 5, 2), "float32"))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize(("mean", "variance", "x"), [(0.0, 70000.0, 300.0), (1000.3, 0.01, 1000.0)])
def test_half_precision_inputs_are_normalised_in_float32_like_keras(policy, mean, variance, x):
    """Variance 70000 overflows float16; 1000.3 is 1000.5 in float16 (both broke the layer before)."""
    outputs = []
    keras.mixed_precision.set_global_policy(policy)
    try:
        for layer in (BatchNorm(), keras.layers.BatchNormalization()):
            layer.build((None, 1))
            assert [w.dtype for w in layer.weights] == ["float32"] * 4
            layer.moving_mean.assign([mean])
            layer.moving_variance.assign([variance])
            y = layer(np.array([[x]]), training=False)
            assert y.dtype == policy.split("_")[1]
            outputs.append(float(np.asarray(y, "float32")[0, 0]))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    exact = (float(np.asarray(np.array(x, policy.split("_")[1]), "float64")) - mean) / np.sqrt(variance + 1e-3)
    assert outputs[0] == outputs[1]
    # the float32 result, rounded to the 11 (float16) or 8 (bfloat16) significant bits of the output
    np.testing.assert_allclose(outputs[0], exact, rtol=2.0 ** -10 if policy == "mixed_float16" else 2.0 ** -7)


def test_trains_under_mixed_float16_like_keras():
    results = []
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for bn in (BatchNorm, keras.layers.BatchNormalization):
            set_up(0)
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), bn(momentum=0.5),
                                      keras.layers.Dense(1, dtype="float32")])
            model.compile(optimizer="sgd", loss="mse")
            rng = np.random.default_rng(0)
            x, y = (rng.normal(size=(64, 6)) * 50 + 300).astype("float32"), rng.normal(size=(64, 1)).astype("float32")
            history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
            layer = model.layers[1]
            assert layer.moving_mean.dtype == "float32" and layer.gamma.dtype == "float32"
            results.append((history.history["loss"], layer.moving_mean.numpy(), layer.moving_variance.numpy(),
                            model.predict(x[:8], verbose=0)))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.all(np.isfinite(results[0][0]))
    for ours, theirs in zip(results[0], results[1]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-2, atol=1e-2)


def test_a_mask_keeps_positions_out_of_the_batch_moments_and_is_passed_on():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(6, 5, 3)).astype("float32") * 2 + 1
    mask = rng.random((6, 5)) < 0.6
    ours, theirs = _pair(-1, {"momentum": 0.3}, x.shape)
    for _ in range(3):
        np.testing.assert_allclose(ours(x, training=True, mask=mask), theirs(x, training=True, mask=mask), atol=1e-5)
    np.testing.assert_allclose(ours.moving_mean, theirs.moving_mean, rtol=1e-5)
    np.testing.assert_allclose(ours.moving_variance, theirs.moving_variance, rtol=1e-5)
    kept = x[mask]  # the statistics of the unmasked positions only
    fresh = BatchNorm(momentum=0.0)
    fresh(x, training=True, mask=mask)
    np.testing.assert_allclose(fresh.moving_mean, kept.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(fresh.moving_variance, kept.var(axis=0), rtol=1e-4)
    # in a model: the mask from Masking reaches the layer after BN
    inputs = keras.Input((5, 3))
    normed = BatchNorm()(keras.layers.Masking(0.0)(inputs))
    assert normed._keras_mask is not None and tuple(normed._keras_mask.shape) == (None, 5)
    with pytest.raises(ValueError, match="without the last axis"):
        BatchNorm()(x, training=True, mask=mask[:, :, None])


def test_float64_layer_computes_in_float64_like_keras():
    ours, theirs = BatchNorm(dtype="float64"), keras.layers.BatchNormalization(dtype="float64")
    x = np.random.default_rng(8).normal(size=(16, 3)) * 1e-4 + 1e4
    a, b = ours(x, training=True), theirs(x, training=True)
    assert a.dtype == b.dtype == "float64"
    np.testing.assert_allclose(a, b, atol=1e-9)
