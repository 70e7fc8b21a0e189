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
    assert len(ours.trainable_weights) == len(theirs.trainable_weights)


@pytest.mark.parametrize(("shape", "axis", "kwargs"), CASES)
def test_same_outputs_and_statistics_over_many_batches_both_modes(shape, axis, kwargs):
    ours, theirs = _pair(axis, kwargs, shape)
    rng = np.random.default_rng(1)
    for _ in range(25):
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
