"""Tests of bnbook.activation_stats: recording callbacks and their summaries."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from bnbook.activation_stats import InputPercentiles, StepAccuracy, percentile_drift, steps_to_reach
from bnbook.reproducibility import set_up

L = keras.layers


def _model(bn: bool = True) -> keras.Model:
    layers = [keras.Input((4,)), L.Dense(3, use_bias=not bn, name="dense")]
    if bn:
        layers.append(L.BatchNormalization(momentum=0.5, name="bn"))
    layers += [L.Activation("sigmoid", name="act"), L.Dense(2, activation="softmax", name="out")]
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return model


def _data(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x[:, 0] > 0).astype("int64")


def test_input_percentiles_match_numpy_at_the_start():
    set_up(0)
    model = _model(bn=False)
    x, y = _data()
    probe = x[:10]
    recorder = InputPercentiles("act", probe, every=2, percentiles=(15, 50, 85))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[recorder])
    table = recorder.table()
    # Records at steps 0, 2, 4 (4 steps per epoch).
    assert sorted(table["step"].unique()) == [0, 2, 4]
    assert len(table) == 3 * 3 * 3  # steps x percentiles x units
    # The last record is the final model: compare with numpy on the Dense output.
    z = model.get_layer("dense")(probe).numpy()
    expected = np.percentile(z, [15, 50, 85], axis=0)
    last = table[table["step"] == 4].pivot(index="percentile", columns="unit", values="value").to_numpy()
    np.testing.assert_allclose(last, expected, rtol=1e-5, atol=1e-6)


def test_input_percentiles_training_mode_is_stateless():
    set_up(0)
    model = _model(bn=True)
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    bn = model.get_layer("bn")
    moving = [bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()]
    recorder = InputPercentiles("act", x[:16], every=1, training=True)
    recorder.set_model(model)
    recorder.on_train_begin()
    np.testing.assert_array_equal(bn.moving_mean.numpy(), moving[0])
    np.testing.assert_array_equal(bn.moving_variance.numpy(), moving[1])
    # Training mode: normalised with the probe batch's own statistics.
    z = model.get_layer("dense")(x[:16]).numpy()
    z_hat = (z - z.mean(0)) / np.sqrt(z.var(0) + bn.epsilon)
    expected = np.percentile(bn.gamma.numpy() * z_hat + bn.beta.numpy(), [15, 50, 85], axis=0)
    got = recorder.table().pivot(index="percentile", columns="unit", values="value").to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_images_pool_positions_per_channel():
    model = keras.Sequential([keras.Input((3, 3, 2)), L.Activation("linear", name="id")])
    model.compile(optimizer="sgd", loss="mse")
    x = np.arange(2 * 3 * 3 * 2, dtype="float32").reshape(2, 3, 3, 2)
    recorder = InputPercentiles("id", x, every=1, percentiles=(0, 100))
    recorder.set_model(model)
    recorder.on_train_begin()
    table = recorder.table().set_index(["percentile", "unit"])["value"]
    assert table[(0.0, 0)] == 0.0 and table[(100.0, 0)] == 34.0
    assert table[(0.0, 1)] == 1.0 and table[(100.0, 1)] == 35.0


def test_step_accuracy_matches_evaluate_and_works_with_steps_per_execution():
    set_up(0)
    model = _model(bn=True)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", steps_per_execution=2
    )
    x, y = _data()
    recorder = StepAccuracy(x, y, every=2)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[recorder])
    table = recorder.table()
    assert table["step"].tolist() == [0, 2, 4, 6, 8]
    final = float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))
    assert table["accuracy"].iloc[-1] == pytest.approx(final)


def test_steps_to_reach():
    curve = pd.DataFrame({"step": [0, 10, 20, 30], "accuracy": [0.1, 0.5, 0.9, 0.8]})
    assert steps_to_reach(curve, 0.5) == 10
    assert steps_to_reach(curve, 0.85) == 20
    assert np.isnan(steps_to_reach(curve, 0.95))
    with pytest.raises(ValueError, match="'loss'"):
        steps_to_reach(curve, 0.5, column="loss")


def test_percentile_drift_by_hand():
    rows = []
    # unit 0: fixed distribution, width 2; unit 1: shifts by 4 over time, width 2.
    for step, shift in ((0, 0.0), (10, 2.0), (20, 4.0)):
        for q, v in ((15, -1.0), (50, 0.0), (85, 1.0)):
            rows.append({"step": step, "unit": 0, "percentile": float(q), "value": v})
            rows.append({"step": step, "unit": 1, "percentile": float(q), "value": v + shift})
    drift = percentile_drift(pd.DataFrame(rows))
    assert drift[0] == pytest.approx(0.0)
    assert drift[1] == pytest.approx(4.0 / 2.0)


def test_bad_arguments():
    x, y = _data()
    with pytest.raises(ValueError, match="every"):
        InputPercentiles("act", x, every=0)
    with pytest.raises(TypeError, match="every"):
        StepAccuracy(x, y, every=1.5)
    with pytest.raises(ValueError, match="percentiles"):
        InputPercentiles("act", x, every=1, percentiles=(50, 101))
    with pytest.raises(TypeError, match="layer"):
        InputPercentiles(3, x, every=1)
    with pytest.raises(TypeError, match="training"):
        InputPercentiles("act", x, every=1, training="yes")
    with pytest.raises(ValueError, match="same length"):
        StepAccuracy(x, y[:-1], every=1)
    with pytest.raises(ValueError, match="nothing recorded"):
        InputPercentiles("act", x, every=1).table()
    table = pd.DataFrame({"step": [0], "unit": [0], "percentile": [50.0], "value": [0.0]})
    with pytest.raises(ValueError, match="not recorded"):
        percentile_drift(table)
    with pytest.raises(ValueError, match="high must be greater"):
        percentile_drift(table, low=50, high=50)
