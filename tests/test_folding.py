"""bnbook.folding: folded models predict like the originals; unfoldable BN is kept and reported."""

import itertools
import warnings

import keras
import numpy as np
import pytest

from bnbook.folding import FoldingWarning, fold_batchnorm, folded_weights, plan_folding
from bnbook.reproducibility import set_up

L = keras.layers


def _randomise_bn(model, rng):
    """Give every BN layer non-trivial statistics and parameters, as after training."""
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(size=n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, size=n).astype("float32"))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 2.0, size=n).astype("float32"))
            if layer.center:
                layer.beta.assign(rng.normal(size=n).astype("float32"))
        elif getattr(layer, "use_bias", False):
            layer.bias.assign(rng.normal(size=layer.bias.shape[0]).astype("float32"))


def _check_same_predictions(model, x, expected_bn_left):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FoldingWarning)
        folded = fold_batchnorm(model)
    left = sum(isinstance(layer, L.BatchNormalization) for layer in folded.layers)
    assert left == expected_bn_left
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4)
    return folded


@pytest.mark.parametrize(
    ("use_bias", "center", "scale", "data_format"),
    # channels_first convolutions do not run on TensorFlow's CPU kernels: see the next test
    list(itertools.product([True, False], [True, False], [True, False], ["channels_last"])),
)
def test_conv_and_dense_stacks_fold_exactly(use_bias, center, scale, data_format):
    set_up(0)
    rng = np.random.default_rng(0)
    shape = (8, 8, 2) if data_format == "channels_last" else (2, 8, 8)
    axis = -1 if data_format == "channels_last" else 1
    model = keras.Sequential([
        keras.Input(shape),
        L.Conv2D(4, 3, use_bias=use_bias, data_format=data_format),
        L.BatchNormalization(axis=axis, center=center, scale=scale, epsilon=1e-3),
        L.Activation("relu"),
        L.Flatten(),
        L.Dense(6, use_bias=use_bias),
        L.BatchNormalization(center=center, scale=scale),
        L.Activation("relu"),
        L.Dense(3, activation="softmax"),
    ])
    _randomise_bn(model, rng)
    x = rng.normal(size=(16, *shape)).astype("float32")
    folded = _check_same_predictions(model, x, expected_bn_left=0)
    assert isinstance(folded, keras.Sequential)
    assert folded.count_params() < model.count_params()


def test_channels_first_conv_folds_along_axis_1():
    model = keras.Sequential([
        keras.Input((2, 8, 8)),
        L.Conv2D(4, 3, data_format="channels_first", name="conv"),
        L.BatchNormalization(axis=1, name="bn_channels"),
        L.Conv2D(4, 3, data_format="channels_first", name="conv2"),
        L.BatchNormalization(axis=-1, name="bn_width"),  # normalises the width axis: not foldable
    ])
    _randomise_bn(model, np.random.default_rng(3))
    plan = {d.bn: d for d in plan_folding(model)}
    assert plan["bn_channels"].folded
    assert not plan["bn_width"].folded and "axis" in plan["bn_width"].reason
    with pytest.warns(FoldingWarning) as record:
        folded = fold_batchnorm(model)
    assert [str(w.message).split("'")[1] for w in record] == ["bn_width"]
    conv, bn = model.get_layer("conv"), model.get_layer("bn_channels")
    kernel, bias = folded_weights(conv.kernel.numpy(), conv.bias.numpy(), bn.gamma.numpy(), bn.beta.numpy(),
                                  bn.moving_mean.numpy(), bn.moving_variance.numpy(), bn.epsilon)
    np.testing.assert_allclose(folded.get_layer("conv").kernel.numpy(), kernel)
    np.testing.assert_allclose(folded.get_layer("conv").bias.numpy(), bias)


@pytest.mark.parametrize("seed", range(6))
def test_random_functional_networks(seed):
    """Random depth and widths, BN before or after the activation, branches that share an output."""
    set_up(seed)
    rng = np.random.default_rng(seed)
    inputs = keras.Input((10,))
    h, expected_left = inputs, 0
    for _ in range(rng.integers(2, 5)):
        h = L.Dense(int(rng.integers(3, 9)), use_bias=bool(rng.integers(2)))(h)
        kind = rng.integers(3)
        if kind == 0:  # BN before the activation: foldable
            h = L.Activation("relu")(L.BatchNormalization()(h))
        elif kind == 1:  # BN after the activation: not foldable
            h = L.BatchNormalization()(L.Activation("tanh")(h))
            expected_left += 1
        else:  # the Dense output feeds BN and a skip connection: not foldable
            h = L.Concatenate()([L.BatchNormalization()(h), h])
            expected_left += 1
    model = keras.Model(inputs, L.Dense(2)(h))
    _randomise_bn(model, rng)
    x = rng.normal(size=(32, 10)).astype("float32")
    folded = _check_same_predictions(model, x, expected_left)
    assert not isinstance(folded, keras.Sequential)


def test_unfoldable_bn_is_reported_with_a_reason():
    model = keras.Sequential([
        keras.Input((3, 4)),  # Dense acts on the last axis; axis 1 is not a channel axis
        L.BatchNormalization(name="bn_input"),
        L.Dense(5, activation="relu", name="dense_relu"),
        L.BatchNormalization(name="bn_after_relu"),
        L.Dense(5, name="dense_plain"),
        L.BatchNormalization(axis=1, name="bn_wrong_axis"),
        L.Dense(5, name="dense_ok"),
        L.BatchNormalization(name="bn_ok"),
    ])
    plan = {d.bn: d for d in plan_folding(model)}
    assert plan["bn_ok"].folded and plan["bn_ok"].into == "dense_ok"
    assert "no Dense or Conv2D" in plan["bn_input"].reason
    assert "activation 'relu'" in plan["bn_after_relu"].reason
    assert "axis" in plan["bn_wrong_axis"].reason
    with pytest.warns(FoldingWarning) as record:
        folded = fold_batchnorm(model)
    warned = sorted(str(w.message).split("'")[1] for w in record)
    assert warned == ["bn_after_relu", "bn_input", "bn_wrong_axis"]
    assert [layer.name for layer in folded.layers if isinstance(layer, L.BatchNormalization)] == [
        "bn_input", "bn_after_relu", "bn_wrong_axis",
    ]


class _ScaledDense(L.Dense):
    """A Dense subclass whose call differs: must not be folded as a Dense."""

    def call(self, inputs):
        return 2.0 * super().call(inputs)


@pytest.mark.parametrize(
    ("make_producer", "reason"),
    [
        (lambda: _ScaledDense(3, name="producer"), "_ScaledDense, not a Dense"),
        (lambda: L.Dense(3, dtype="mixed_float16", name="producer"), "computes in float16"),
        (lambda: L.Dense(3, dtype="float64", name="producer"), "computes in float64"),
    ],
)
def test_layers_that_would_fold_wrongly_are_refused(make_producer, reason):
    model = keras.Sequential([keras.Input((4,)), make_producer(), L.BatchNormalization(name="bn")])
    _randomise_bn(model, np.random.default_rng(0))
    assert reason in plan_folding(model)[0].reason
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    _check_same_predictions(model, x, expected_bn_left=1)


def test_quantized_and_lora_layers_are_refused():
    for change, reason in ((lambda d: d.quantize("int8"), "quantized"), (lambda d: d.enable_lora(2), "LoRA")):
        model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="producer"), L.BatchNormalization(name="bn")])
        _randomise_bn(model, np.random.default_rng(0))
        change(model.get_layer("producer"))
        assert reason in plan_folding(model)[0].reason


def test_shared_bn_and_nested_models_are_reported():
    shared = L.BatchNormalization(name="shared_bn")
    inputs = keras.Input((4,))
    a, b = L.Dense(3, name="da")(inputs), L.Dense(3, name="db")(inputs)
    model = keras.Model(inputs, L.Add()([shared(a), shared(b)]))
    assert "shared" in plan_folding(model)[0].reason
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3), L.BatchNormalization(name="inner_bn")], name="inner")
    outer = keras.Sequential([keras.Input((4,)), inner, L.Dense(2)])
    _randomise_bn(inner, np.random.default_rng(0))
    plan = plan_folding(outer)
    assert [(d.bn, d.folded) for d in plan] == [("inner_bn", False)] and "nested model 'inner'" in plan[0].reason
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    with pytest.warns(FoldingWarning, match="inner_bn"):
        folded = fold_batchnorm(outer)
    np.testing.assert_allclose(folded.predict(x, verbose=0), outer.predict(x, verbose=0), atol=1e-5)


def test_the_original_model_is_not_modified():
    set_up(1)
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, use_bias=False), L.BatchNormalization(), L.Dense(2)])
    _randomise_bn(model, np.random.default_rng(1))
    before = [w.numpy().copy() for w in model.weights]
    folded = fold_batchnorm(model)
    assert [w.shape for w in model.weights] == [b.shape for b in before]
    assert all(np.array_equal(w.numpy(), b) for w, b in zip(model.weights, before))
    assert not set(map(id, folded.layers)) & set(map(id, model.layers))  # no shared layer objects
    assert len(model.layers) == 3 and len(folded.layers) == 2


def test_folded_weights_formula():
    kernel, bias = np.ones((2, 3)), np.array([1.0, 2.0, 3.0])
    gamma, beta = np.array([2.0, 1.0, 0.5]), np.array([0.0, 1.0, -1.0])
    mean, var = np.array([1.0, 0.0, 3.0]), np.array([3.0, 0.0, 15.0])
    w, b = folded_weights(kernel, bias, gamma, beta, mean, var, epsilon=1.0)
    s = np.array([1.0, 1.0, 0.125])  # gamma / sqrt(var + 1)
    np.testing.assert_allclose(w, kernel * s)
    np.testing.assert_allclose(b, beta + (bias - mean) * s)
    w0, b0 = folded_weights(kernel, None, None, None, mean, var, epsilon=1.0)
    np.testing.assert_allclose(b0, -mean / np.sqrt(var + 1.0))
    with pytest.raises(ValueError, match="gamma has shape"):
        folded_weights(kernel, None, np.ones(4), None, mean, var, 1e-3)


def test_bad_input():
    with pytest.raises(TypeError, match="keras.Model.*list"):
        fold_batchnorm([L.Dense(2)])
    with pytest.raises(ValueError, match="not built"):
        fold_batchnorm(keras.Sequential([L.Dense(2), L.BatchNormalization()]))
