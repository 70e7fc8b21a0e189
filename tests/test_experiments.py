"""bnbook.experiments: one run, variants x seeds (x batch sizes), graph reuse, the summaries, bad input."""

import keras
import numpy as np
import pandas as pd
import pytest

from bnbook.experiments import final_metrics, last_epoch, run_experiments, train

X = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
Y = (X[:, 0] > 0).astype("int64")
DATA = ((X, Y), (X[:32], Y[:32]))


def _model(bn=False, *, units=4, momentum=0.99, lr=0.1):
    """Dense(units)[-BN]-ReLU-Dense(2, softmax), SGD: the plain and BN variants of these tests."""
    layers = [keras.Input((4,)), keras.layers.Dense(units, use_bias=not bn)]
    if bn:
        layers.append(keras.layers.BatchNormalization(momentum=momentum))
    model = keras.Sequential([*layers, keras.layers.Activation("relu"), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_train_returns_one_row_per_epoch_with_times():
    table = train(_model(), X, Y, epochs=3, batch_size=16, validation_data=DATA[1])
    assert list(table.columns) == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss", "seconds"]
    assert table["epoch"].tolist() == [1, 2, 3]
    assert (table["seconds"] > 0).all()
    assert table["loss"].iloc[-1] < table["loss"].iloc[0]


def test_run_experiments_is_tidy_and_reproducible(capsys):
    variants = {"plain": _model, "BN": lambda: _model(bn=True)}
    first = run_experiments(variants, [0, 1], DATA, epochs=1, batch_size=16, progress=True)
    assert len(first) == 2 * 2
    assert first.groupby(["variant", "seed"]).size().tolist() == [1, 1, 1, 1]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["[1/4] plain, seed 0", "[2/4] plain, seed 1", "[3/4] BN, seed 0", "[4/4] BN, seed 1"]
    second = run_experiments(variants, [0, 1], DATA, epochs=1, batch_size=16, progress=False)
    assert capsys.readouterr().out == ""
    pd.testing.assert_series_equal(first["loss"], second["loss"])  # same seeds, same numbers
    assert not np.isclose(first["loss"].iloc[0], first["loss"].iloc[1])  # different seeds differ


def _dropout_bn_model():
    model = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(8, use_bias=False), keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.Activation("relu"), keras.layers.Dropout(0.3), keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _adam_bn_model(activation="relu", lr=0.05, prefix=""):
    model = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(8, use_bias=False, name=prefix + "dense"),
        keras.layers.BatchNormalization(momentum=0.9), keras.layers.Activation(activation),
        keras.layers.Dense(2, activation="softmax", name=prefix + "head"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class Opaque(keras.Model):
    """A subclassed model without get_config: it cannot describe its graph, so no other variant may share it."""

    def __init__(self, activation):
        super().__init__()
        self.dense, self.head, self.activation = keras.layers.Dense(8), keras.layers.Dense(2, activation="softmax"), activation

    def call(self, x):
        return self.head(keras.activations.get(self.activation)(self.dense(x)))


def _opaque(activation, built=True):
    def build():
        model = Opaque(activation)
        if built:
            model(X[:1])  # creates the variables
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    return build


GRAPH_VARIANTS = {
    "dropout, BN": _dropout_bn_model,
    "relu, lr 0.05": _adam_bn_model,
    "relu, lr 0.001, other names": lambda: _adam_bn_model(lr=0.001, prefix="x_"),  # shares relu's graph
    "sigmoid, lr 0.05": lambda: _adam_bn_model("sigmoid"),  # same shapes, another graph
    "opaque relu": _opaque("relu"),
    "opaque tanh": _opaque("tanh"),  # same shapes and no config: must not share opaque relu's graph
}


@pytest.fixture(scope="module")
def graph_runs():
    """The variants above trained with reused graphs (training graphs traced counted) and fresh, once per module."""
    # Counts the models whose training function is traced. Keras 3.15 internals
    # (keras/src/backend/tensorflow/trainer.py, TensorFlowTrainer.make_train_function).
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    traced, make = set(), TensorFlowTrainer.make_train_function

    def counting(self, force=False):
        traced.add(id(self))
        return make(self, force)

    args = {"epochs": 1, "batch_size": 16, "progress": False}  # 4 steps: momentum and Adam slots carry over
    reused_models, fresh_models = {}, {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TensorFlowTrainer, "make_train_function", counting)
        reused = run_experiments(GRAPH_VARIANTS, [0, 1], DATA, models=reused_models, **args)
    fresh = run_experiments(GRAPH_VARIANTS, [0, 1], DATA, models=fresh_models, reuse_graphs=False, **args)
    return reused, fresh, reused_models, fresh_models, len(traced)


def test_reusing_the_traced_graph_gives_the_same_results_as_fresh_models(graph_runs):
    reused, fresh, reused_models, fresh_models, _ = graph_runs
    for column in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(reused[column], fresh[column], rtol=1e-6, atol=1e-7)
    assert sorted(fresh_models) == sorted(reused_models) == sorted((v, s) for v in GRAPH_VARIANTS for s in (0, 1))
    for key in fresh_models:  # kept models are distinct objects holding each run's trained weights
        for a, b in zip(reused_models[key].variables, fresh_models[key].variables):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert reused_models[("dropout, BN", 0)] is not reused_models[("dropout, BN", 1)]


def test_variants_differing_only_in_learning_rate_and_names_share_one_graph(graph_runs):
    reused, *_, traced = graph_runs
    # one per variant, except the relu pair (one graph for both learning rates): 6 - 1
    assert traced == 5
    last = reused.groupby("variant")["loss"].last()
    assert last["relu, lr 0.05"] != last["relu, lr 0.001, other names"]  # the learning rate did change
    assert last["opaque relu"] != last["opaque tanh"]  # each opaque variant ran its own graph


def test_an_unbuilt_subclassed_model_trains_as_a_fresh_one():
    """Its variables appear only in fit: no optimizer may be built on the empty list before (reuse or not)."""
    args = {"epochs": 1, "batch_size": 16, "progress": False}
    reused = run_experiments({"lazy": _opaque("relu", built=False)}, [0, 1], DATA, **args)
    fresh = run_experiments({"lazy": _opaque("relu", built=False)}, [0, 1], DATA, reuse_graphs=False, **args)
    np.testing.assert_allclose(reused["loss"], fresh["loss"], rtol=1e-6)


def test_models_receives_the_trained_models():
    models = {}
    results = run_experiments({"plain": _model}, [0, 1], DATA, epochs=1, batch_size=32, progress=False, models=models)
    assert isinstance(results, pd.DataFrame)
    assert sorted(models) == [("plain", 0), ("plain", 1)]
    model = models[("plain", 1)]
    loss = model.evaluate(*DATA[1], verbose=0)[0]
    assert loss == pytest.approx(results.loc[(results["seed"] == 1), "val_loss"].iloc[-1], rel=1e-5)


def test_progress_follows_the_quiet_variable(monkeypatch, capsys):
    monkeypatch.setenv("BNBOOK_QUIET", "1")
    run_experiments({"plain": _model}, [0], DATA, epochs=1, batch_size=32)
    assert capsys.readouterr().out == ""


def test_final_metrics_summarises_the_last_epoch():
    results = pd.DataFrame({
        "variant": ["a"] * 4 + ["b"] * 4, "seed": [0, 0, 1, 1] * 2, "epoch": [1, 2] * 4,
        "val_accuracy": [0.1, 0.5, 0.2, 0.7, 0.3, 0.8, 0.4, 0.9],
    })
    summary = final_metrics(results)
    assert summary.loc["a", "mean"] == pytest.approx(0.6) and summary.loc["b", "max"] == pytest.approx(0.9)
    assert summary["runs"].tolist() == [2, 2]
    with pytest.raises(ValueError, match="'val_loss'.*present"):
        final_metrics(results, "val_loss")


def test_last_epoch_keeps_one_row_per_run():
    results = pd.DataFrame({"variant": ["a"] * 3 + ["b"] * 2, "seed": [0, 0, 1, 0, 0], "epoch": [1, 2, 1, 1, 2], "x": range(5)})
    assert last_epoch(results)["x"].tolist() == [1, 2, 4]
    with pytest.raises(ValueError, match="'seed'"):
        last_epoch(results.drop(columns="seed"))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        pytest.param(lambda: train("model", X, Y, epochs=1), TypeError, "keras.Model", id="train not a model"),
        pytest.param(
            lambda: train(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), X, Y, epochs=1), ValueError, "compile", id="uncompiled"
        ),
        pytest.param(lambda: train(_model(), X, Y, epochs=0), ValueError, "epochs must be >= 1, got 0", id="epochs 0"),
        pytest.param(lambda: train(_model(), X, Y, epochs=1, batch_size=1.5), TypeError, "batch_size", id="batch 1.5"),
        pytest.param(lambda: run_experiments({}, [0], DATA, epochs=1), ValueError, "variants is empty", id="no variant"),
        pytest.param(lambda: run_experiments({"a": _model}, [], DATA, epochs=1), ValueError, "seeds is empty", id="no seed"),
        pytest.param(lambda: run_experiments({"a": 3}, [0], DATA, epochs=1), TypeError, "variant 'a'", id="not callable"),
        pytest.param(lambda: run_experiments({"a": lambda: "not a model"}, [0], DATA, epochs=1), TypeError, "returned str", id="not a model"),
        pytest.param(lambda: run_experiments({"a": _model}, [0], DATA, epochs=1, models=[]), TypeError, "models must be a dict", id="models list"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_learning_rate_grid_needs_a_settable_learning_rate():
    def scheduled():
        model = _model(bn=True)
        schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.9)
        model.compile(optimizer=keras.optimizers.SGD(schedule), loss="sparse_categorical_crossentropy")
        return model

    with pytest.raises(TypeError, match="variant 'decay'.*LearningRateSchedule"):
        run_experiments({"decay": scheduled}, [0], DATA, epochs=1, batch_size=[8], learning_rate=lambda b: 0.01, progress=False)


def test_callbacks_are_fresh_per_run_and_can_stop_a_run():
    made = []

    class StopAfterOne(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    def callbacks():
        made.append(StopAfterOne())
        return [made[-1]]

    results = run_experiments({"BN": lambda: _model(bn=True)}, [0, 1], DATA, epochs=3, batch_size=16, progress=False, callbacks=callbacks)
    assert len(made) == 2 and made[0] is not made[1]
    assert results.groupby("seed")["epoch"].max().tolist() == [1, 1]  # stopped after one epoch instead of 3


def _sgd_model():
    return _model(bn=True, units=8, momentum=0.9)


def test_a_batch_size_grid_equals_fresh_runs_with_the_chosen_learning_rates():
    models = {}
    table = run_experiments(
        {"BN": _sgd_model}, [1], DATA, epochs=2, batch_size=[4, 16], learning_rate=lambda b: 0.01 * b,
        validation_batch_size=32, models=models, progress=False,
    )
    assert list(table.columns[:5]) == ["variant", "batch_size", "learning_rate", "seed", "epoch"]
    assert len(table) == 2 * 2  # 2 batch sizes x 2 epochs
    assert table.groupby("batch_size")["learning_rate"].first().tolist() == pytest.approx([0.04, 0.16])
    assert sorted(models) == [("BN", 4, 1), ("BN", 16, 1)]
    for size in (4, 16):
        keras.utils.set_random_seed(1)
        fresh = _sgd_model()
        fresh.optimizer.learning_rate = 0.01 * size
        expected = train(fresh, X, Y, epochs=2, batch_size=size, validation_data=DATA[1])
        got = table[table["batch_size"] == size]
        np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)
        np.testing.assert_allclose(got["val_loss"], expected["val_loss"], rtol=1e-5)  # test metrics every epoch
        assert models[("BN", size, 1)].evaluate(*DATA[1], verbose=0)[0] == pytest.approx(got["val_loss"].iloc[-1], rel=1e-5)
    summary = final_metrics(table, by=["variant", "batch_size"])
    assert summary["runs"].tolist() == [1, 1]
    assert len(last_epoch(table, by="variant")) == 2  # one row per run: the batch size is part of a run


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": []}, ValueError, "empty sequence"),
        ({"batch_size": [0]}, ValueError, "batch size"),
        ({"batch_size": [2.5]}, TypeError, "batch size"),
        ({"learning_rate": 0.1}, TypeError, "learning_rate"),
        ({"learning_rate": lambda b: 0.0}, ValueError, "> 0"),
        ({"learning_rate": lambda b: float("nan")}, ValueError, "> 0"),
        ({"validation_batch_size": 0}, ValueError, "validation_batch_size"),
        ({"epochs": 0}, ValueError, "epochs"),
    ],
)
def test_grid_refuses_bad_input(kwargs, error, match):
    args = {"epochs": 1, "batch_size": [8], "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        run_experiments({"BN": _sgd_model}, [0], DATA, **args)
