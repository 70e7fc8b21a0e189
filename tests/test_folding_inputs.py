"""bnbook.folding on what users bring: mixed precision, BN subclasses, bad arguments, broken statistics,
and the guarantee that the user's model is left as it was."""

import contextlib
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from bnbook.folding import FoldingWarning, fold_batchnorm, fold_report, folded_weights, plan_folding
from bnbook.reproducibility import set_up
from tests.test_folding import count_bn, randomise_bn

L = keras.layers


# --- mixed precision -------------------------------------------------------------------------------


def _mixed_cnn(policy="mixed_float16"):
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2D(6, 3, use_bias=False, dtype=policy, name="conv")(inputs)
    h = L.BatchNormalization(dtype=policy, name="bn_conv")(h)
    h = L.Flatten(dtype=policy)(L.Activation("relu", dtype=policy)(h))
    h = L.BatchNormalization(dtype=policy, name="bn_relu")(h)  # forward into dense
    return keras.Model(inputs, L.Dense(4, dtype="float32", name="dense")(h))


def test_mixed_precision_is_refused_by_default_naming_the_layer_and_folded_with_dtype_float32():
    set_up(0)
    model = _mixed_cnn()
    randomise_bn(model, np.random.default_rng(0))
    plan = {d.bn: d for d in plan_folding(model)}
    assert not any(d.folded for d in plan.values())
    assert "conv computes in float16" in plan["bn_conv"].reason and "dtype='float32'" in plan["bn_conv"].reason
    assert "bn_relu computes in float16" in plan["bn_relu"].reason
    x = np.random.default_rng(1).normal(size=(16, 8, 8, 3)).astype("float32")
    report = fold_report(model, dtype="float32", verify=x)
    assert [d.direction for d in report.decisions] == ["backward", "forward"]
    assert count_bn(report.model) == 0 and report.verified
    assert {layer.compute_dtype for layer in report.model.layers} == {"float32"}
    # The copy computes the original's function in float32: checked against the unfolded model in float32.
    reference = keras.Model.from_config(
        {**model.get_config(), "layers": [
            {**layer, "config": {**layer["config"], "dtype": "float32"}} for layer in model.get_config()["layers"]
        ]}
    )
    reference.set_weights(model.get_weights())
    np.testing.assert_allclose(report.model(x), reference(x, training=False), rtol=1e-5, atol=1e-5)
    # ... and differs from the float16 original by float16 rounding only.
    assert report.max_difference < 1e-2 * report.max_output
    assert report.max_difference > 1e-6 * report.max_output  # float16 rounding is there to see


def test_the_refusal_names_the_bn_when_only_the_bn_is_in_low_precision():
    model = keras.Sequential([
        keras.Input((4,)), L.Dense(3, name="dense_6"), L.BatchNormalization(dtype="mixed_bfloat16", name="bn"),
    ])
    (decision,) = plan_folding(model)
    assert decision.reason.startswith("bn computes in bfloat16") and "dense_6 computes" not in decision.reason


def test_float64_layers_are_folded_into_float32_only_when_asked():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, dtype="float64"), L.BatchNormalization(dtype="float64")])
    randomise_bn(model, np.random.default_rng(0))
    assert "computes in float64" in plan_folding(model)[0].reason
    x = np.random.default_rng(1).normal(size=(8, 4))
    folded = fold_batchnorm(model, dtype="float32", verify=x)
    assert count_bn(folded) == 0 and folded.layers[0].compute_dtype == "float32"


# --- subclasses of BatchNormalization --------------------------------------------------------------


@keras.saving.register_keras_serializable(package="bnbook_tests")
class _RenamedBN(L.BatchNormalization):
    """A subclass that only adds a config entry: it computes BN's formula."""

    def __init__(self, note="", **kwargs):
        super().__init__(**kwargs)
        self.note = note

    def get_config(self):
        return {**super().get_config(), "note": self.note}


class _ClippedBN(L.BatchNormalization):
    """A subclass that overrides call: not BN's formula any more."""

    def call(self, inputs, training=None, mask=None):
        return keras.ops.clip(super().call(inputs, training=training, mask=mask), -1.0, 1.0)


def test_a_bn_subclass_that_keeps_bn_s_call_is_folded():
    model = keras.Sequential([keras.Input((5,)), L.Dense(4, name="dense"), _RenamedBN(note="x", name="sub"), L.Dense(2)])
    randomise_bn(model, np.random.default_rng(0))
    (decision,) = plan_folding(model)
    assert decision.folded and decision.into == "dense"
    x = np.random.default_rng(1).normal(size=(8, 5)).astype("float32")
    assert count_bn(fold_batchnorm(model, verify=x)) == 0


def test_a_bn_subclass_that_overrides_call_is_reported_not_skipped():
    model = keras.Sequential([keras.Input((5,)), L.Dense(4), _ClippedBN(name="clipped"), L.Dense(2)])
    randomise_bn(model, np.random.default_rng(0))
    (decision,) = plan_folding(model)  # one decision: not "0 of 0"
    assert not decision.folded and "_ClippedBN, a subclass of BatchNormalization that overrides call()" in decision.reason
    x = np.random.default_rng(1).normal(size=(8, 5)).astype("float32")
    with pytest.warns(FoldingWarning, match="'clipped' was not folded"):
        folded = fold_batchnorm(model, verify=x)
    assert isinstance(folded.layers[1], _ClippedBN)


# --- bad arguments and broken statistics ------------------------------------------------------------


def _small():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="dense"), L.BatchNormalization(name="bn")])
    randomise_bn(model, np.random.default_rng(0))
    return model


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"warn": "no"}, TypeError, "warn must be a bool, got 'no'"),
        ({"warn": 0}, TypeError, "warn must be a bool"),
        ({"allow_inexact": "yes"}, TypeError, "allow_inexact must be a bool"),
        ({"dtype": "float16"}, ValueError, "dtype must be None .* or 'float32', got 'float16'"),
        ({"atol": -1.0}, ValueError, "atol must be None or a finite number >= 0"),
        ({"verify": np.full((2, 4), np.nan, "float32")}, ValueError, "verify holds 8 non-finite values"),
        ({"verify": tf.data.Dataset.from_tensor_slices(np.zeros((2, 4), "float32")).batch(2)}, TypeError,
         "verify must be an array, a tensor or a list/tuple/dict of them, got _BatchDataset"),
        ({"verify": (np.zeros(4, "float32") for _ in range(2))}, TypeError, "verify must be an array"),
    ],
    ids=["warn-str", "warn-int", "allow_inexact-str", "dtype-float16", "atol-negative", "verify-nan",
         "verify-dataset", "verify-generator"],
)
def test_bad_arguments_of_fold_batchnorm(kwargs, error, match):
    with pytest.raises(error, match=match):
        fold_batchnorm(_small(), **kwargs)


_FW = {"kernel": np.ones((2, 3)), "bias": None, "gamma": None, "beta": None,
       "moving_mean": np.zeros(3), "moving_variance": np.ones(3), "epsilon": 1e-3}


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"epsilon": -1}, ValueError, "epsilon must be a finite number >= 0, got -1"),
        ({"epsilon": float("nan")}, ValueError, "epsilon must be a finite number >= 0"),
        ({"epsilon": True}, TypeError, "epsilon must be a number"),
        ({"moving_variance": np.array([-1.0, 1.0, 1.0])}, ValueError, r"moving_variance \+ epsilon must be > 0.*channels \[0\]"),
        ({"moving_mean": np.array([0.0, np.nan, 0.0])}, ValueError, r"moving_mean has non-finite values \(at channels \[1\]\)"),
        ({"gamma": np.ones(4)}, ValueError, r"gamma has shape \(4,\), expected \(3,\) to match the kernel"),
        ({"bias": np.ones(2)}, ValueError, r"bias has shape \(2,\), expected \(3,\)"),
    ],
    ids=["epsilon-negative", "epsilon-nan", "epsilon-bool", "variance-negative", "mean-nan", "gamma-shape", "bias-shape"],
)
def test_folded_weights_refuses_what_would_give_nan_or_wrong_weights(change, error, match):
    with pytest.raises(error, match=match):
        folded_weights(**{**_FW, **change})


def test_epsilon_zero_is_allowed_with_positive_variances():
    kernel, bias = folded_weights(**{**_FW, "epsilon": 0, "moving_variance": np.full(3, 4.0)})
    np.testing.assert_allclose(kernel, np.full((2, 3), 0.5))
    np.testing.assert_allclose(bias, np.zeros(3))


def test_bn_with_non_finite_statistics_is_left_in_place_with_the_reason():
    model = _small()
    bn = model.get_layer("bn")
    bn.moving_variance.assign(np.array([1.0, np.nan, 1.0], "float32"))
    (decision,) = plan_folding(model)
    assert not decision.folded and "moving_variance has non-finite values (at channels [1])" in decision.reason
    bn.moving_variance.assign(np.array([1.0, -5.0, 1.0], "float32"))
    (decision,) = plan_folding(model)
    assert not decision.folded and "moving_variance + epsilon must be > 0" in decision.reason


def test_the_report_summarises_what_was_removed_and_the_check():
    model = keras.Sequential([
        keras.Input((4,)), L.Dense(3, use_bias=False), L.BatchNormalization(), L.Activation("relu"),
        L.BatchNormalization(), L.Dense(2),
    ])
    randomise_bn(model, np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    report = fold_report(model, verify=x)
    assert (report.layers_removed, report.parameters_removed) == (2, 3 * 4 + 4 * 3 - 3)
    assert report.parameters_removed == model.count_params() - report.model.count_params()
    text = str(report)
    assert "folded 2 of 2 BN layers (1 backward, 1 forward); 2 layers and 21 parameters removed" in text
    assert "within the tolerance" in text
    assert fold_report(model).max_difference is None and fold_report(model).verified is None


# --- the user's model is left unchanged ---------------------------------------------------------------


def _state(model):
    """Every variable, trainable flag and call count (per layer, nested ones too) of a model, and its optimizer."""
    layers = [model, *model._flatten_layers(include_self=False)]
    ops = []
    for layer in layers:  # raw tensor operations of Functional graphs
        ops += [op for op in getattr(layer, "operations", []) if not isinstance(op, L.Layer)]
    optimizer = getattr(model, "optimizer", None)
    return {
        "variables": [v.numpy().copy() for v in model.variables],
        "optimizer": [v.numpy().copy() for v in optimizer.variables] if optimizer is not None else [],
        "trainable": [layer.trainable for layer in layers],
        "calls": [(len(op._inbound_nodes), len(op._outbound_nodes)) for op in layers + ops],
    }


@contextlib.contextmanager
def assert_model_unchanged(model):
    """Fail if the block changes a variable, a trainable flag, or a layer's call count in ``model``."""
    before = _state(model)
    yield
    after = _state(model)
    assert after["calls"] == before["calls"], "call counts changed"
    assert after["trainable"] == before["trainable"], "trainable flags changed"
    for key in ("variables", "optimizer"):
        assert len(after[key]) == len(before[key])
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(after[key], before[key])), f"{key} changed"


class _NoConfig(L.Layer):
    """A layer that cannot be rebuilt from its config: folding reuses it."""

    def __init__(self, scale):
        super().__init__()
        self.scale = np.asarray(scale)

    def call(self, inputs):
        return inputs * self.scale[0]


def _flat():
    return keras.Sequential([
        keras.Input((6,)), L.Dense(5, use_bias=False), L.BatchNormalization(), L.Activation("relu"),
        L.Dropout(0.3), L.BatchNormalization(), L.Dense(3),
    ])


def _nested():
    block_in = keras.Input((6,))
    block = keras.Model(block_in, L.BatchNormalization()(L.Dense(6)(block_in)), name="block")
    inputs = keras.Input((6,))
    h = block(block(inputs))  # a nested model called twice
    h = _NoConfig([2.0])(h)  # reused by the copy
    h = L.BatchNormalization()(keras.ops.relu(h) + 1.0)  # raw operations, forward into the Dense
    return keras.Model(inputs, L.Dense(3)(h))


def _reloaded(tmp_path):
    model = _flat()
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((8, 6)), np.ones((8, 3)), epochs=1, verbose=0)  # optimizer variables exist
    model.save(tmp_path / "m.keras")
    return keras.saving.load_model(tmp_path / "m.keras")


@pytest.mark.parametrize("kind", ["flat", "nested", "reloaded"])
@pytest.mark.parametrize("call", ["plan_folding", "fold_batchnorm", "fold_report_verify"])
def test_folding_leaves_the_users_model_unchanged(kind, call, tmp_path):
    set_up(0)
    model = {"flat": _flat, "nested": _nested, "reloaded": lambda: _reloaded(tmp_path)}[kind]()
    randomise_bn(model, np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(8, 6)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FoldingWarning)
        with assert_model_unchanged(model):
            if call == "plan_folding":
                plan_folding(model)
            elif call == "fold_batchnorm":
                fold_batchnorm(model)
            else:
                report = fold_report(model, verify=x)
    if call == "fold_report_verify":
        assert report.verified and count_bn(report.model) == 0
    # Calling the original still works, and reports the same call counts as before.
    np.asarray(model(x, training=False))


def test_the_helper_detects_a_changed_call_count():
    model = _flat()
    with pytest.raises(AssertionError, match="call counts changed"):
        with assert_model_unchanged(model):
            model.layers[0](keras.Input((6,)))  # a second symbolic call
