"""bnbook.recorders: the every-k-steps callbacks (BN variables, input percentiles, accuracy) and their summaries."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from bnbook.recorders import BNRecorder, InputPercentiles, StepAccuracy, percentile_drift, steps_to_reach
from bnbook.reproducibility import set_up
from tests.models import two_bn_model

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
    table = recorder.table
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
    got = recorder.table.pivot(index="percentile", columns="unit", values="value").to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_images_pool_positions_per_channel():
    model = keras.Sequential([keras.Input((3, 3, 2)), L.Activation("linear", name="id")])
    model.compile(optimizer="sgd", loss="mse")
    x = np.arange(2 * 3 * 3 * 2, dtype="float32").reshape(2, 3, 3, 2)
    recorder = InputPercentiles("id", x, every=1, percentiles=(0, 100))
    recorder.set_model(model)
    recorder.on_train_begin()
    table = recorder.table.set_index(["percentile", "unit"])["value"]
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
    table = recorder.table
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


X, Y = np.random.default_rng(0).normal(size=(32, 4)).astype("float32"), np.arange(32) % 2
TABLE = pd.DataFrame({"step": [0], "unit": [0], "percentile": [50.0], "value": [0.0]})


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        pytest.param(lambda: InputPercentiles("act", X, every=0), ValueError, "every must be >= 1", id="every 0"),
        pytest.param(lambda: StepAccuracy(X, Y, every=1.5), TypeError, "every must be an int", id="every 1.5"),
        pytest.param(lambda: InputPercentiles("act", X, every=1, percentiles=(50, 101)), ValueError, "percentiles", id="101"),
        pytest.param(lambda: InputPercentiles(3, X, every=1), TypeError, "layer must be", id="layer 3"),
        pytest.param(lambda: InputPercentiles("act", X, every=1, training="yes"), TypeError, "training", id="training yes"),
        pytest.param(lambda: StepAccuracy(X, Y[:-1], every=1), ValueError, "same length", id="lengths"),
        pytest.param(lambda: percentile_drift(TABLE), ValueError, "not recorded", id="drift not recorded"),
        pytest.param(lambda: percentile_drift(TABLE, low=50, high=50), ValueError, "high must be greater", id="drift low=high"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_tables_are_empty_with_their_columns_before_fit():
    assert list(InputPercentiles("act", X, every=1).table.columns) == ["step", "unit", "percentile", "value"]
    assert list(StepAccuracy(X, Y, every=1).table.columns) == ["step", "accuracy"]
    table = BNRecorder().table
    assert table.empty and list(table.columns) == ["step", "epoch", "layer", "variable", "feature", "value"]


def test_bn_recorder_bad_inputs_raise():
    with pytest.raises(TypeError, match="BN layers"):
        BNRecorder([L.Dense(2)])
    with pytest.raises(ValueError, match="every"):
        BNRecorder(every=0)
    with pytest.raises(TypeError, match="every must be an int, got 1.5"):
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
    model = two_bn_model(momentum=0.5)
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
    model = two_bn_model()
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
    model = two_bn_model()
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
    inner = two_bn_model()
    outer = keras.Sequential([keras.Input((6,)), inner, L.Dense(2, activation="softmax")])
    recorder = BNRecorder([inner.get_layer("bn1")], inputs=np.ones((4, 6), "float32"))
    recorder.set_model(outer)
    with pytest.raises(ValueError, match="nested"):
        recorder.on_train_begin()


def test_bn_recorder_on_a_model_without_bn_says_so():
    model = _model(bn=False)
    recorder = BNRecorder()
    recorder.set_model(model)
    with pytest.raises(ValueError, match="has no BN layer to record"):
        recorder.on_train_begin()


def test_bn_recorder_finds_the_bn_layers_of_a_nested_model():
    set_up(0)
    inner = two_bn_model()
    outer = keras.Sequential([keras.Input((6,)), inner, L.Dense(2, activation="softmax")])
    x, y = np.random.default_rng(3).normal(size=(16, 6)).astype("float32"), np.arange(16) % 2
    recorder = BNRecorder()
    _fit(outer, recorder, x, y, epochs=1, batch_size=8)
    assert [layer.name for layer in recorder.layers] == ["bn1", "bn2"]
    end = recorder.table[recorder.table["step"] == 2]
    moving = end[(end["layer"] == "bn1") & (end["variable"] == "moving_mean")]["value"]
    np.testing.assert_allclose(moving, inner.get_layer("bn1").moving_mean.numpy(), rtol=1e-6)


def test_bn_recorder_every_k_steps_with_steps_per_execution():
    set_up(0)
    model = two_bn_model()
    x, y = np.random.default_rng(4).normal(size=(48, 6)).astype("float32"), np.arange(48) % 2
    recorder = BNRecorder(every=2)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", steps_per_execution=2)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[recorder], shuffle=False)
    assert sorted(recorder.table["step"].unique()) == [0, 2, 4, 6]


def test_input_percentiles_accepts_the_layer_object():
    set_up(0)
    model = _model(bn=False)
    x, _ = _data()
    by_name, by_object = InputPercentiles("act", x, every=1), InputPercentiles(model.get_layer("act"), x, every=1)
    for recorder in (by_name, by_object):
        recorder.set_model(model)
        recorder.on_train_begin()
    pd.testing.assert_frame_equal(by_name.table, by_object.table)
    assert len(by_object.table) == 3 * 3


def test_steps_to_reach_sorts_the_curve_by_step():
    curve = pd.DataFrame({"step": [30, 0, 20, 10], "accuracy": [0.95, 0.1, 0.9, 0.5]})
    assert steps_to_reach(curve, 0.85) == 20  # not 30, the first row


def test_percentile_drift_of_a_unit_with_zero_spread():
    rows = []
    for step, level in ((0, 0.0), (10, 0.0), (20, 1.0)):
        for q in (15.0, 85.0):
            rows.append({"step": step, "unit": 0, "percentile": q, "value": 0.0})  # dead: constant 0
            rows.append({"step": step, "unit": 1, "percentile": q, "value": level})  # constant, but moves
    drift = percentile_drift(pd.DataFrame(rows))
    assert np.isnan(drift[0]) and drift[1] == np.inf
