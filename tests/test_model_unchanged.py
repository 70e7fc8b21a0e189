"""Every function that only reads the user's model leaves it exactly as it was.

Checked with :func:`tests.model_state.assert_model_unchanged` (variables, random-generator
states, optimizer state, ``trainable`` flags, layers' call counts, global random states)
on four trained, compiled models: flat, nested (``Input -> base -> head``), with Dropout,
and reloaded from a ``.keras`` file. Functions that refuse a model (the probes need
top-level BN layers) must refuse it without changing it.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pandas as pd
import pytest

from bnbook import folding, landscape, probes, recorders, stats
from bnbook.experiments import final_metrics, last_epoch
from bnbook.reproducibility import set_up
from tests.model_state import assert_model_unchanged, differences, model_snapshot
from tests.models import mlp, trained

L = keras.layers

X = np.random.default_rng(10).normal(0.5, 2.0, size=(40, 6)).astype("float32")
Y = np.random.default_rng(11).integers(0, 3, size=40)
KINDS = ("flat", "nested", "dropout", "reloaded")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    set_up(0)
    built = {
        "flat": trained(mlp(), X, Y),
        "nested": trained(mlp(nested=True), X, Y),
        "dropout": trained(mlp(dropout=0.5), X, Y),
    }
    path = tmp_path_factory.mktemp("saved") / "model.keras"
    trained(mlp(dropout=0.5), X, Y).save(path)
    built["reloaded"] = keras.models.load_model(path)
    return built


def _bn_recorder(model):
    recorder = recorders.BNRecorder(inputs=X)
    recorder.set_model(model)
    recorder.on_train_begin()
    recorder.on_epoch_end(0)
    return recorder.table


def _percentiles(training):
    def run(model):
        recorder = recorders.InputPercentiles("bn2", X, every=1, training=training)
        recorder.set_model(model)
        recorder.on_train_begin()
        recorder.on_train_batch_end(0)
        return recorder.table

    return run


def _step_accuracy(model):
    recorder = recorders.StepAccuracy(X, Y, every=None)
    recorder.set_model(model)
    recorder.on_train_begin()
    return recorder.table


def _in_unchanged_state(model):
    with probes.unchanged_state(model):
        model(X, training=True)  # moves the moving statistics and dropout's random state


def _quiet(fold):
    def run(model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", folding.FoldingWarning)
            return fold(model)

    return run


# (id, function of the model, the model kinds it refuses with a ValueError matching "nested")
READERS = [
    ("bn_layers", probes.bn_layers, ()),
    ("bn_variables", probes.bn_variables, ()),
    ("probed_bn_layers", probes.probed_bn_layers, ("nested",)),
    ("layer_input_model", lambda m: probes.layer_input_model(m, [m.get_layer("bn2")])(X), ()),
    ("bn_input_variances", lambda m: probes.bn_input_variances(m, X, batch_size=8), ("nested",)),
    ("unchanged_state", _in_unchanged_state, ()),
    ("profile_along_gradient", lambda m: landscape.profile_along_gradient(m, X, Y, [0.0, 0.1]), ()),
    ("profile_inference_mode", lambda m: landscape.profile_along_gradient(m, X, Y, [0.1], training=False), ()),
    ("BNRecorder", _bn_recorder, ("nested",)),
    ("InputPercentiles", _percentiles(training=False), ()),
    ("InputPercentiles_training", _percentiles(training=True), ()),
    ("StepAccuracy", _step_accuracy, ()),
    ("plan_folding", _quiet(folding.plan_folding), ()),
    ("fold_batchnorm", _quiet(folding.fold_batchnorm), ()),
]


def _params():
    for name, function, refuses in READERS:
        yield pytest.param(function, refuses, id=name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("reader", "refuses"), list(_params()))
def test_readers_leave_the_model_unchanged(models, kind, reader, refuses):
    model = models[kind]
    with assert_model_unchanged(model):
        if kind in refuses:
            with pytest.raises(ValueError, match="nested"):
                reader(model)
        else:
            reader(model)


def _with_unbuildable_layer():
    """A model around a subclassed layer without get_config: fold_batchnorm reuses that object."""

    class Net(keras.Model):
        def __init__(self, width):
            super().__init__()
            self.dense, self.bn = L.Dense(width), L.BatchNormalization()

        def call(self, x):
            return self.bn(self.dense(x))

    inputs = keras.Input((6,))
    model = keras.Model(inputs, L.BatchNormalization(name="bn_ok")(L.Dense(2, name="d")(Net(3)(inputs))))
    return model


def test_fold_batchnorm_keeps_variables_of_a_model_with_a_reused_layer():
    model = _with_unbuildable_layer()
    before = model_snapshot(model)
    _quiet(folding.fold_batchnorm)(model)
    changed = differences(before, model_snapshot(model))
    assert [line for line in changed if line.startswith(("variables", "optimizer", "trainable"))] == []


def test_fold_batchnorm_keeps_the_call_count_of_a_reused_layer():
    model = _with_unbuildable_layer()
    with assert_model_unchanged(model):
        _quiet(folding.fold_batchnorm)(model)


@pytest.mark.parametrize("kind", ["dropout", "reloaded"])
def test_recording_during_fit_does_not_change_the_training(tmp_path, kind):
    """Same seed, with and without every recorder (training-mode percentiles included): same weights."""

    def run(with_recorders):
        set_up(0)
        model = trained(mlp(dropout=0.5), X, Y)
        if kind == "reloaded":
            model.save(tmp_path / "m.keras")
            model = keras.models.load_model(tmp_path / "m.keras")
        callbacks = (
            [
                recorders.BNRecorder(every=1, inputs=X),
                recorders.InputPercentiles("bn2", X[:16], every=1, training=True),
                recorders.StepAccuracy(X, Y, every=2),
            ]
            if with_recorders
            else []
        )
        keras.utils.set_random_seed(1)
        model.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks)
        values = [v.numpy() for v in [*model.variables, *model.optimizer.variables]]
        return values, callbacks

    plain, _ = run(False)
    recorded, callbacks = run(True)
    assert all(len(c.table) > 0 for c in callbacks)  # they did record
    assert len(plain) == len(recorded)
    for a, b in zip(plain, recorded):  # the same training, bit for bit (dropout's random draws included)
        np.testing.assert_array_equal(a, b)


def test_the_helper_sees_each_kind_of_change(models):
    """assert_model_unchanged is not vacuous: each thing it promises to compare, changed, fails it."""
    model = trained(mlp(dropout=0.5), X, Y)
    changes = {
        "moving statistic": lambda: model.get_layer("bn1").moving_mean.assign(np.ones(5, "float32")),
        "dropout random state": lambda: model(X, training=True),
        "optimizer iterations": lambda: model.optimizer.iterations.assign_add(1),
        "trainable flag": lambda: setattr(model.get_layer("bn2"), "trainable", False),
        "call count": lambda: model.get_layer("head")(keras.Input((4,))),
        "numpy global random": lambda: np.random.random(),  # noqa: NPY002
        "keras global random": lambda: keras.random.uniform((1,)),
    }
    for name, change in changes.items():
        with pytest.raises(AssertionError, match="the model was changed"):
            with assert_model_unchanged(model):
                change()
        model.get_layer("bn2").trainable = True


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("paired_differences", lambda t: stats.paired_differences(t, "a", "b")),
        ("last_epoch", last_epoch),
        ("final_metrics", final_metrics),
        ("steps_to_reach", lambda t: recorders.steps_to_reach(t.rename(columns={"epoch": "step", "val_accuracy": "accuracy"}), 0.5)),
        ("summarize_profile", lambda t: landscape.summarize_profile(t.rename(columns={"val_accuracy": "loss", "epoch": "distance", "seed": "grad_change"}))),
    ],
)
def test_table_readers_leave_the_table_unchanged(name, call):
    table = pd.DataFrame(
        {"variant": ["b", "a"] * 4, "seed": [1, 1, 0, 0] * 2, "epoch": [2] * 4 + [1] * 4, "val_accuracy": np.linspace(0.1, 0.8, 8)}
    )
    copy = table.copy(deep=True)
    call(table)
    pd.testing.assert_frame_equal(table, copy)
