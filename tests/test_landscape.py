"""Tests of bnbook.landscape against closed forms for a linear model with squared loss."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from bnbook.landscape import profile_along_gradient, summarize_profile
from bnbook.reproducibility import set_up

L = keras.layers


def _mse(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(y_pred[:, 0] - y_true))


def _linear():
    set_up(0)
    model = keras.Sequential([keras.Input((3,)), L.Dense(1, use_bias=False, name="w")])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=16).astype("float32")
    return model, x, y


def test_quadratic_loss_matches_closed_form():
    model, x, y = _linear()
    w = model.get_layer("w").kernel.numpy()[:, 0].astype("float64")
    xd, yd = x.astype("float64"), y.astype("float64")
    n = len(x)
    hessian = 2.0 / n * xd.T @ xd
    g = 2.0 / n * xd.T @ (xd @ w - yd)
    etas = [0.0, 0.1, 0.2]
    profile = profile_along_gradient(model, x, y, etas, loss=_mse)
    for eta, row in zip(etas, profile.itertuples()):
        moved = w - eta * g
        assert row.loss == pytest.approx(np.mean((xd @ moved - yd) ** 2), rel=1e-5)
        # grad(w - eta g) - g = -eta H g for a quadratic.
        assert row.grad_change == pytest.approx(eta * np.linalg.norm(hessian @ g), rel=1e-4, abs=1e-6)
        assert row.distance == pytest.approx(eta * np.linalg.norm(g), rel=1e-5)
    summary = summarize_profile(profile)
    assert summary["beta"] == pytest.approx(np.linalg.norm(hessian @ g) / np.linalg.norm(g), rel=1e-4)
    losses = profile["loss"]
    assert summary["loss_range"] == pytest.approx(losses.max() - losses.min())


def test_model_is_not_changed_bn_included():
    set_up(0)
    model = keras.Sequential(
        [keras.Input((3,)), L.Dense(4, use_bias=False), L.BatchNormalization(), L.Dense(2, activation="softmax")]
    )
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = np.array([0, 1] * 4)
    before = [v.numpy().copy() for v in model.variables]
    profile = profile_along_gradient(model, x, y, [0.0, 0.5])
    assert len(profile) == 2 and profile["grad_change"].iloc[0] == pytest.approx(0.0)
    for a, b in zip(before, model.variables):
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        pytest.param(lambda m, x, y: profile_along_gradient(m, x, y, [], loss=_mse), ValueError, "empty", id="no step"),
        pytest.param(lambda m, x, y: profile_along_gradient(m, x, y, [-0.1], loss=_mse), ValueError, ">= 0", id="negative"),
        pytest.param(lambda m, x, y: profile_along_gradient("model", x, y, [0.1]), TypeError, "keras.Model", id="not a model"),
        pytest.param(lambda m, x, y: profile_along_gradient(m, x, y, [0.1], training=1), TypeError, "training", id="training=1"),
        pytest.param(lambda m, x, y: profile_along_gradient(m, x, y[:-1], [0.1], loss=_mse), ValueError, "same length", id="lengths"),
        pytest.param(
            lambda m, x, y: summarize_profile(pd.DataFrame({"loss": [1.0], "grad_change": [0.0]})), ValueError, "'distance'", id="column"
        ),
    ],
)
def test_bad_arguments(call, error, match):
    model, x, y = _linear()
    with pytest.raises(error, match=match):
        call(model, x, y)


def test_summarize_profile_names_a_missing_column():
    with pytest.raises(ValueError, match=r"\['grad_change'\].*present: loss, distance"):
        summarize_profile(pd.DataFrame({"loss": [1.0], "distance": [0.0]}))
    with pytest.raises(TypeError, match="DataFrame"):
        summarize_profile({"loss": [1.0]})


def test_inference_mode_uses_the_moving_statistics():
    set_up(0)
    model = keras.Sequential([keras.Input((3,)), L.Dense(4), L.BatchNormalization(name="bn"), L.Dense(2, activation="softmax")])
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full(4, 0.7, "float32"))
    bn.moving_variance.assign(np.full(4, 3.0, "float32"))
    x = np.random.default_rng(2).normal(size=(8, 3)).astype("float32")
    y = np.array([0, 1] * 4)
    loss = keras.losses.SparseCategoricalCrossentropy()
    inference = profile_along_gradient(model, x, y, [0.0], training=False)
    training = profile_along_gradient(model, x, y, [0.0], training=True)
    assert inference["loss"].iloc[0] == pytest.approx(float(loss(y, model(x, training=False))), rel=1e-5)
    assert training["loss"].iloc[0] == pytest.approx(float(loss(y, model(x, training=True))), rel=1e-5)
    assert inference["loss"].iloc[0] != pytest.approx(training["loss"].iloc[0], rel=1e-3)


def test_a_model_without_trainable_variables_is_refused():
    model, x, y = _linear()
    model.trainable = False
    with pytest.raises(ValueError, match="no trainable variables"):
        profile_along_gradient(model, x, y, [0.1], loss=_mse)


def test_a_zero_gradient_gives_a_nan_beta():
    model, x, _ = _linear()
    model.get_layer("w").kernel.assign(np.zeros((3, 1), "float32"))
    y = np.zeros(len(x), "float32")  # the model fits exactly: the gradient is exactly 0
    profile = profile_along_gradient(model, x, y, [0.0, 0.1], loss=_mse)
    assert (profile["grad_norm"] == 0).all() and (profile["distance"] == 0).all()
    summary = summarize_profile(profile)
    assert np.isnan(summary["beta"]) and summary["loss_range"] == pytest.approx(0.0, abs=1e-12)
