"""Chapter 01's from-scratch layer against the package's copy, bnbook.layers.BatchNorm.

Chapter 01 writes its BN layer in a notebook cell (tagged ``bnbook-layer``) where the
reader can read and change it; later chapters import the package's copy. This test runs
that cell and checks that the two compute the same thing on what both do: float32
inputs without a mask, training and inference mode, several shapes, axes and arguments.
"""

from pathlib import Path

import keras
import nbformat
import numpy as np
import pytest
import tensorflow as tf

from bnbook.layers import BatchNorm as PackageBatchNorm

CHAPTER = Path(__file__).resolve().parents[1] / "chapters" / "01_what_bn_computes.ipynb"
TAG = "bnbook-layer"

CASES = [
    # (input shape, axis, keyword arguments)
    ((32, 7), -1, {}),
    ((16, 6), 1, {"momentum": 0.5, "epsilon": 1e-5}),
    ((8, 5, 5, 3), -1, {"momentum": 0.9}),
    ((8, 3, 5, 5), 1, {"momentum": 0.9}),
    ((8, 5, 5, 3), 3, {"center": False}),
    ((4, 6, 7), 1, {"scale": False, "epsilon": 0.1}),
    ((8, 4), -1, {"center": False, "scale": False}),
]


def _layer_cells():
    notebook = nbformat.read(CHAPTER, as_version=4)
    return [c for c in notebook.cells if c.cell_type == "code" and TAG in c.metadata.get("tags", [])]


@pytest.fixture(scope="module")
def chapter_layer():
    """The class the tagged cell defines, executed with only keras and tf in scope."""
    (cell,) = _layer_cells()
    namespace = {"keras": keras, "tf": tf, "__name__": "chapter01_layer"}
    exec(compile(cell.source, f"{CHAPTER.name}[{TAG}]", "exec"), namespace)  # noqa: S102
    return namespace["BatchNorm"]


def test_exactly_one_cell_is_tagged():
    assert len(_layer_cells()) == 1


def test_the_cell_defines_a_keras_layer(chapter_layer):
    assert issubclass(chapter_layer, keras.layers.Layer)


def _pair(chapter_layer, shape, axis, kwargs):
    """Both layers, built, with the same non-trivial gamma and beta."""
    ours = chapter_layer(axis=axis, **kwargs)
    packaged = PackageBatchNorm(axis=axis, **kwargs)
    ours.build(shape)
    packaged.build(shape)
    rng = np.random.default_rng(1)
    for a, b in zip(ours.trainable_weights, packaged.trainable_weights):
        value = rng.uniform(0.5, 2.0, size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return ours, packaged


@pytest.mark.parametrize(("shape", "axis", "kwargs"), CASES)
def test_same_variables(chapter_layer, shape, axis, kwargs):
    ours, packaged = _pair(chapter_layer, shape, axis, kwargs)
    assert [(w.name, tuple(w.shape), w.trainable) for w in ours.weights] == [
        (w.name, tuple(w.shape), w.trainable) for w in packaged.weights
    ]


@pytest.mark.parametrize(("shape", "axis", "kwargs"), CASES)
def test_same_outputs_and_moving_statistics(chapter_layer, shape, axis, kwargs):
    ours, packaged = _pair(chapter_layer, shape, axis, kwargs)
    rng = np.random.default_rng(0)
    batches = rng.normal(1.5, 2.5, size=(6, *shape)).astype("float32")
    for batch in batches[:5]:  # training mode: batch statistics, moving update
        np.testing.assert_allclose(ours(batch, training=True), packaged(batch, training=True), atol=1e-5)
        np.testing.assert_allclose(ours.moving_mean, packaged.moving_mean, atol=1e-6)
        np.testing.assert_allclose(ours.moving_variance, packaged.moving_variance, rtol=1e-6)
    for training in (False, None):  # inference mode: the moving statistics
        np.testing.assert_allclose(
            ours(batches[5], training=training), packaged(batches[5], training=training), atol=1e-5
        )
    # trainable=False: inference mode even when called with training=True, no update
    ours.trainable = packaged.trainable = False
    kept = np.array(ours.moving_mean)
    np.testing.assert_allclose(ours(batches[5], training=True), packaged(batches[5], training=True), atol=1e-5)
    np.testing.assert_array_equal(ours.moving_mean, kept)
    np.testing.assert_allclose(ours.moving_mean, packaged.moving_mean, atol=1e-6)


def test_same_result_inside_a_trained_model(chapter_layer):
    """One fit() step of the same small model with either layer gives the same weights."""
    x = np.random.default_rng(2).normal(size=(64, 10)).astype("float32")
    y = np.random.default_rng(3).normal(size=(64, 2)).astype("float32")
    weights = {}
    for name, layer_class in (("chapter", chapter_layer), ("package", PackageBatchNorm)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((10,)), keras.layers.Dense(8, use_bias=False), layer_class(momentum=0.9), keras.layers.Dense(2)]
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        weights[name] = [np.array(w) for w in model.weights]
    for a, b in zip(weights["chapter"], weights["package"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
