"""Tests of bnbook.bn_variables: listing and recording BN variables."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bnbook.bn_variables import BNRecorder, bn_layers, bn_variables
from bnbook.reproducibility import set_up

L = keras.layers


def _model(momentum: float = 0.5) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(4, use_bias=False, name="dense"),
            L.BatchNormalization(momentum=momentum, name="bn1"),
            L.Activation("relu"),
            L.Dense(3, use_bias=False, name="dense2"),
            L.BatchNormalization(center=False, name="bn2"),
            L.Dense(2, activation="softmax", name="head"),
        ],
        name="net",
    )


def test_bn_variables_lists_names_shapes_and_trainability():
    model = _model()
    table = bn_variables(model)
    assert list(table["variable"]) == [
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
        "gamma",
        "moving_mean",
        "moving_variance",
    ]
    assert list(table["layer"]) == ["bn1"] * 4 + ["bn2"] * 3
    assert table["path"].iloc[0] == "net/bn1/gamma"
    assert list(table["trainable"]) == [True, True, False, False, True, False, False]
    assert list(table["shape"]) == [(4,)] * 4 + [(3,)] * 3
    bn_total = sum(layer.count_params() for layer in bn_layers(model))
    assert table["size"].sum() == bn_total == 4 * 4 + 3 * 3


def test_bn_layers_finds_nested_models():
    inner = _model()
    outer = keras.Sequential([keras.Input((6,)), inner, L.Dense(1)])
    assert [layer.name for layer in bn_layers(outer)] == ["bn1", "bn2"]
    assert len(bn_variables(outer)) == 7


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="keras.Model"):
        bn_variables("not a model")
    plain = keras.Sequential([keras.Input((3,)), L.Dense(2)], name="plain")
    with pytest.raises(ValueError, match="no BatchNormalization"):
        bn_variables(plain)
    with pytest.raises(TypeError, match="BatchNormalization"):
        BNRecorder([L.Dense(2)])
    with pytest.raises(ValueError, match="every"):
        BNRecorder(every=0)
    with pytest.raises(TypeError):
        BNRecorder(every=1.5)
    with pytest.raises(ValueError, match="empty"):
        BNRecorder(inputs=np.zeros((0, 6)))
    with pytest.raises(ValueError, match="empty"):
        BNRecorder([])


def _fit(model: keras.Model, recorder: BNRecorder, x: np.ndarray, y: np.ndarray, **kwargs) -> None:
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.fit(x, y, verbose=0, callbacks=[recorder], shuffle=False, **kwargs)


def test_recorder_follows_the_averaging_rule_by_hand():
    set_up(0)
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(32, 6)).astype("float32")
    y = rng.integers(0, 2, size=32)
    model = _model(momentum=0.5)
    bn = model.get_layer("bn1")
    recorder = BNRecorder([bn], every=1, inputs=x)
    # one step on the whole batch: the batch statistics are those of `inputs`
    _fit(model, recorder, x, y, epochs=1, batch_size=32)
    table = recorder.table
    assert sorted(table["step"].unique()) == [0, 1]
    start = table[table["step"] == 0].pivot(index="feature", columns="variable", values="value")
    end = table[table["step"] == 1].pivot(index="feature", columns="variable", values="value")
    np.testing.assert_allclose(start["gamma"], 1.0)
    np.testing.assert_allclose(start["moving_mean"], 0.0)
    np.testing.assert_allclose(start["moving_variance"], 1.0)
    # moving = 0.5 * initial + 0.5 * batch statistic of step 0's input
    np.testing.assert_allclose(end["moving_mean"], 0.5 * start["input_mean"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(end["moving_variance"], 0.5 * 1.0 + 0.5 * start["input_variance"], rtol=1e-4, atol=1e-5)
    # the last record equals the layer's variables
    np.testing.assert_allclose(end["moving_mean"], bn.moving_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(end["gamma"], bn.gamma.numpy(), rtol=1e-6)
    # gamma moved by gradient descent
    assert np.max(np.abs(end["gamma"] - 1.0)) > 0


def test_recorder_input_statistics_match_numpy():
    set_up(0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 6)).astype("float32")
    model = _model()
    recorder = BNRecorder([model.get_layer("bn1")], inputs=x)
    recorder.set_model(model)
    recorder.on_train_begin()
    rows = recorder.table.pivot(index="feature", columns="variable", values="value")
    z = x.astype("float64") @ model.get_layer("dense").kernel.numpy().astype("float64")
    np.testing.assert_allclose(rows["input_mean"], z.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rows["input_variance"], z.var(axis=0), rtol=1e-4, atol=1e-5)


def test_recorder_per_epoch_and_every_k_steps():
    set_up(0)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 6)).astype("float32")
    y = rng.integers(0, 2, size=40)
    model = _model()
    per_epoch = BNRecorder()  # every BN layer, once per epoch
    _fit(model, per_epoch, x, y, epochs=3, batch_size=10)
    table = per_epoch.table
    assert sorted(table["epoch"].unique()) == [0, 1, 2, 3]
    assert sorted(table["step"].unique()) == [0, 4, 8, 12]
    assert set(table["layer"]) == {"bn1", "bn2"}
    assert set(table[table["layer"] == "bn2"]["variable"]) == {"gamma", "moving_mean", "moving_variance"}
    every3 = BNRecorder([model.get_layer("bn2")], every=3)
    _fit(model, every3, x, y, epochs=2, batch_size=10)
    steps = sorted(every3.table["step"].unique())
    assert steps == [0, 3, 6]
    assert list(every3.table.columns) == ["step", "epoch", "layer", "variable", "feature", "value"]
    # records per step: 3 variables x 3 features
    assert (every3.table.groupby("step").size() == 9).all()


def test_recorder_rejects_nested_layers_with_inputs():
    inner = _model()
    outer = keras.Sequential([keras.Input((6,)), inner, L.Dense(2, activation="softmax")])
    recorder = BNRecorder([inner.get_layer("bn1")], inputs=np.ones((4, 6), "float32"))
    recorder.set_model(outer)
    with pytest.raises(ValueError, match="nested"):
        recorder.on_train_begin()
