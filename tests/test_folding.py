"""bnbook.folding: folded models predict like the originals; unfoldable BN is kept and reported."""

import itertools
import warnings

import keras
import numpy as np
import pytest

from bnbook.folding import (
    BN_TYPES,
    FoldDecision,
    FoldingWarning,
    fold_batchnorm,
    fold_report,
    folded_weights,
    plan_folding,
)
from bnbook.layers import BatchNorm
from bnbook.reproducibility import set_up

L = keras.layers


def randomise_bn(model, rng):
    """Give every BN layer (nested ones too) non-trivial statistics and parameters, as after training."""
    for layer in model._flatten_layers():
        if isinstance(layer, BN_TYPES):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(size=n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, size=n).astype("float32"))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 2.0, size=n).astype("float32"))
            if layer.center:
                layer.beta.assign(rng.normal(size=n).astype("float32"))
        elif getattr(layer, "use_bias", False):
            layer.bias.assign(rng.normal(size=layer.bias.shape[0]).astype("float32"))


def count_bn(model):
    """BN layers of a model, nested ones included."""
    return sum(isinstance(layer, BN_TYPES) for layer in model._flatten_layers())


def _check_same_predictions(model, x, expected_bn_left):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FoldingWarning)
        folded = fold_batchnorm(model)
    assert count_bn(folded) == expected_bn_left
    assert len([d for d in plan_folding(model) if not d.folded]) == expected_bn_left
    np.testing.assert_allclose(folded(x, training=False), model(x, training=False), atol=1e-4)
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
    randomise_bn(model, rng)
    x = rng.normal(size=(16, *shape)).astype("float32")
    folded = _check_same_predictions(model, x, expected_bn_left=0)
    assert isinstance(folded, keras.Sequential)
    assert folded.count_params() < model.count_params()


def _conv2d_nchw(x, kernel, bias):
    """A valid, stride-1 2D convolution of channels-first x with a Keras kernel (kh, kw, in, out), in NumPy."""
    kh, kw = kernel.shape[:2]
    rows, cols = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    out = np.zeros((x.shape[0], kernel.shape[-1], rows, cols))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,co->nohw", x[:, :, i : i + rows, j : j + cols], kernel[i, j])
    return out + bias[None, :, None, None]


def _bn_nchw(z, bn):
    """BN in inference mode along axis 1, from its variables, in NumPy (float64)."""
    shape = (1, -1, 1, 1)
    mean, var = bn.moving_mean.numpy().reshape(shape), bn.moving_variance.numpy().reshape(shape)
    return bn.gamma.numpy().reshape(shape) * (z - mean) / np.sqrt(var + bn.epsilon) + bn.beta.numpy().reshape(shape)


def test_channels_first_conv_folds_along_axis_1():
    """Checked against a NumPy convolution (channels-first Conv2D does not run on TensorFlow's CPU kernels)."""
    model = keras.Sequential([
        keras.Input((2, 8, 8)),
        L.BatchNormalization(axis=1, name="bn_in"),  # folded forward into conv
        L.Conv2D(4, 3, data_format="channels_first", name="conv"),
        L.BatchNormalization(axis=1, name="bn_channels"),  # folded backward into conv
        L.Conv2D(4, 3, data_format="channels_first", name="conv2"),
        L.BatchNormalization(axis=-1, name="bn_width"),  # normalises the width axis: not foldable
    ])
    randomise_bn(model, np.random.default_rng(3))
    plan = {d.bn: d for d in plan_folding(model)}
    assert (plan["bn_in"].direction, plan["bn_in"].into) == ("forward", "conv")
    assert (plan["bn_channels"].direction, plan["bn_channels"].into) == ("backward", "conv")
    assert not plan["bn_width"].folded and "axis" in plan["bn_width"].reason
    with pytest.warns(FoldingWarning) as record:
        folded = fold_batchnorm(model)
    assert [str(w.message).split("'")[1] for w in record] == ["bn_width"]
    x = np.random.default_rng(4).normal(size=(3, 2, 8, 8))
    conv = model.get_layer("conv")
    expected = _bn_nchw(_conv2d_nchw(_bn_nchw(x, model.get_layer("bn_in")), conv.kernel.numpy(), conv.bias.numpy()),
                        model.get_layer("bn_channels"))
    conv_folded = folded.get_layer("conv")
    got = _conv2d_nchw(x, conv_folded.kernel.numpy().astype(np.float64), conv_folded.bias.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(expected)) > 1.0  # not a comparison of near-zeros

@pytest.mark.parametrize("seed", range(6))
def test_random_functional_networks(seed):
    """Random depth and widths, BN before the activation (backward) or after it (forward), shared outputs."""
    set_up(seed)
    rng = np.random.default_rng(seed)
    inputs = keras.Input((10,))
    h, expected_left = inputs, 0
    for _ in range(rng.integers(2, 5)):
        h = L.Dense(int(rng.integers(3, 9)), use_bias=bool(rng.integers(2)))(h)
        kind = rng.integers(3)
        if kind == 0:  # BN before the activation: foldable
            h = L.Activation("relu")(L.BatchNormalization()(h))
        elif kind == 1:  # BN after the activation: folded forward into the next Dense
            h = L.BatchNormalization()(L.Activation("tanh")(h))
        else:  # the Dense output feeds BN and a skip connection: not foldable
            h = L.Concatenate()([L.BatchNormalization()(h), h])
            expected_left += 1
    model = keras.Model(inputs, L.Dense(2)(h))
    randomise_bn(model, rng)
    x = rng.normal(size=(32, 10)).astype("float32")
    folded = _check_same_predictions(model, x, expected_left)
    assert not isinstance(folded, keras.Sequential)


def test_bn_before_a_linear_layer_is_folded_forward():
    model = keras.Sequential([
        keras.Input((3, 4)),  # Dense acts on the last axis; axis 1 is not a channel axis
        L.BatchNormalization(name="bn_input"),  # forward into dense_relu
        L.Dense(5, activation="relu", name="dense_relu"),
        L.BatchNormalization(name="bn_after_relu"),  # forward into dense_plain
        L.Dense(5, name="dense_plain"),
        L.BatchNormalization(axis=1, name="bn_wrong_axis"),  # neither direction: axis 1
        L.Dense(5, name="dense_ok"),
        L.BatchNormalization(name="bn_ok"),  # backward into dense_ok
        L.Activation("tanh", name="tanh"),
        L.BatchNormalization(name="bn_last"),  # after an activation, and the model's output
    ])
    randomise_bn(model, np.random.default_rng(0))
    plan = {d.bn: d for d in plan_folding(model)}
    assert (plan["bn_input"].into, plan["bn_input"].direction) == ("dense_relu", "forward")
    assert (plan["bn_after_relu"].into, plan["bn_after_relu"].direction) == ("dense_plain", "forward")
    assert (plan["bn_ok"].into, plan["bn_ok"].direction) == ("dense_ok", "backward")
    assert "its axis 1 is not the channel axis of dense_plain" in plan["bn_wrong_axis"].reason
    assert "forward: its axis 1 is not the input channel axis of dense_ok" in plan["bn_wrong_axis"].reason
    assert "follows 'tanh', an Activation layer" in plan["bn_last"].reason
    assert "model output" in plan["bn_last"].reason
    x = np.random.default_rng(1).normal(size=(8, 3, 4)).astype("float32")
    with pytest.warns(FoldingWarning) as record:
        folded = fold_batchnorm(model, verify=x)
    assert sorted(str(w.message).split("'")[1] for w in record) == ["bn_last", "bn_wrong_axis"]
    assert [layer.name for layer in folded.layers if isinstance(layer, L.BatchNormalization)] == [
        "bn_wrong_axis", "bn_last",
    ]
    np.testing.assert_allclose(folded(x), model(x, training=False), rtol=1e-5, atol=1e-5)


def _bn_conv_model(make_layer, shape, before="relu"):
    """Input -> relu -> BN -> layer -> BN -> output: the first BN can only fold forward."""
    inputs = keras.Input(shape)
    h = L.Activation(before)(inputs)
    h = L.BatchNormalization(name="bn_before")(h)
    h = make_layer()(h)
    h = L.BatchNormalization(name="bn_after")(h)
    return keras.Model(inputs, L.Flatten()(h))


FORWARD_CASES = [
    # (layer with padding="valid", input shape): strides, dilation, groups, multipliers, no bias
    (lambda: L.Dense(4, name="target"), (6,)),
    (lambda: L.Dense(4, use_bias=False, name="target"), (3, 6)),
    (lambda: L.Conv1D(6, 3, strides=2, groups=2, name="target"), (9, 4)),
    (lambda: L.Conv2D(5, 3, dilation_rate=2, use_bias=False, name="target"), (9, 9, 3)),
    (lambda: L.Conv2D(6, (2, 3), strides=(2, 1), groups=3, name="target"), (7, 7, 6)),
    (lambda: L.Conv3D(3, 2, name="target"), (4, 4, 4, 2)),
    (lambda: L.DepthwiseConv1D(3, depth_multiplier=2, name="target"), (9, 3)),
    (lambda: L.DepthwiseConv2D(3, depth_multiplier=3, strides=2, use_bias=False, name="target"), (8, 8, 2)),
    (lambda: L.SeparableConv1D(5, 3, depth_multiplier=2, name="target"), (9, 3)),
    (lambda: L.SeparableConv2D(4, 3, depth_multiplier=2, use_bias=False, name="target"), (7, 7, 3)),
]


@pytest.mark.parametrize(("make_layer", "shape"), FORWARD_CASES)
def test_forward_folding_into_valid_layers_is_exact(make_layer, shape):
    set_up(0)
    model = _bn_conv_model(make_layer, shape)
    randomise_bn(model, np.random.default_rng(0))
    plan = {d.bn: d for d in plan_folding(model)}
    assert (plan["bn_before"].direction, plan["bn_before"].into, plan["bn_before"].exact) == ("forward", "target", True)
    assert plan["bn_after"].direction == "backward"  # both fold into the same layer
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")
    report = fold_report(model, verify=x)
    assert count_bn(report.model) == 0 and report.verified
    assert report.max_difference < 1e-5 * report.max_output and report.max_output > 1.0
    assert report.model.get_layer("target").use_bias


@pytest.mark.parametrize(
    "make_layer",
    [lambda: L.Conv2D(4, 3, padding="same", name="target"),
     lambda: L.DepthwiseConv2D(3, padding="same", name="target"),
     lambda: L.Conv1D(4, 3, padding="causal", name="target")],
)
def test_forward_folding_with_zero_padding_is_reported_inexact_and_done_only_when_asked(make_layer):
    shape = (8, 4) if "Conv1D" in repr(make_layer()) else (8, 8, 4)
    set_up(0)
    model = _bn_conv_model(make_layer, shape)
    randomise_bn(model, np.random.default_rng(0))
    (before,) = [d for d in plan_folding(model) if d.bn == "bn_before"]
    assert not before.folded and "inexact at the borders" in before.reason and "allow_inexact=True" in before.reason
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")
    with pytest.warns(FoldingWarning, match="'bn_before' was not folded"):
        report = fold_report(model, verify=x)
    assert count_bn(report.model) == 1 and report.verified
    with pytest.warns(FoldingWarning, match="'bn_before' was folded inexactly"):
        inexact = fold_report(model, verify=x, allow_inexact=True)
    (decision,) = [d for d in inexact.decisions if d.bn == "bn_before"]
    assert decision.folded and not decision.exact and "inexact" in decision.reason
    assert count_bn(inexact.model) == 0 and inexact.verified is False
    # Wrong at the borders only: the outputs whose receptive field lies inside the input agree.
    original = np.asarray(model(x, training=False)).reshape(4, *shape[:-1], -1)
    folded = np.asarray(inexact.model(x)).reshape(4, *shape[:-1], -1)
    inner = (slice(None), slice(2, -1)) + ((slice(1, -1),) if len(shape) == 3 else ())
    np.testing.assert_allclose(folded[inner], original[inner], rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(folded - original)) > 1e-2
    with pytest.raises(ValueError, match="above the tolerance"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FoldingWarning)
            fold_batchnorm(model, allow_inexact=True, verify=x)


def test_transposed_convolutions_take_no_forward_fold():
    model = _bn_conv_model(lambda: L.Conv2DTranspose(3, 3, strides=2, name="target"), (5, 5, 2))
    (before,) = [d for d in plan_folding(model) if d.bn == "bn_before"]
    assert not before.folded and "feeds 'target', a Conv2DTranspose layer, not a Dense or (non-transposed)" in before.reason

class _ScaledDense(L.Dense):
    """A Dense subclass whose call differs: must not be folded as a Dense."""

    def call(self, inputs):
        return 2.0 * super().call(inputs)


@pytest.mark.parametrize(
    ("make_producer", "reason"),
    [
        (lambda: _ScaledDense(3, name="producer"), "a _ScaledDense layer, not a Dense"),
        (lambda: L.Dense(3, dtype="mixed_float16", name="producer"), "computes in float16"),
        (lambda: L.Dense(3, dtype="float64", name="producer"), "computes in float64"),
    ],
)
def test_layers_that_would_fold_wrongly_are_refused(make_producer, reason):
    model = keras.Sequential([keras.Input((4,)), make_producer(), L.BatchNormalization(name="bn")])
    randomise_bn(model, np.random.default_rng(0))
    assert reason in plan_folding(model)[0].reason
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    _check_same_predictions(model, x, expected_bn_left=1)


def test_quantized_and_lora_layers_are_refused():
    for change, reason in ((lambda d: d.quantize("int8"), "quantized"), (lambda d: d.enable_lora(2), "LoRA")):
        model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="producer"), L.BatchNormalization(name="bn")])
        randomise_bn(model, np.random.default_rng(0))
        change(model.get_layer("producer"))
        assert reason in plan_folding(model)[0].reason


def test_shared_bn_is_reported():
    shared = L.BatchNormalization(name="shared_bn")
    inputs = keras.Input((4,))
    a, b = L.Dense(3, name="da")(inputs), L.Dense(3, name="db")(inputs)
    model = keras.Model(inputs, L.Add()([shared(a), shared(b)]))
    randomise_bn(model, np.random.default_rng(0))
    assert "shared" in plan_folding(model)[0].reason
    folded = _check_same_predictions(model, np.random.default_rng(1).normal(size=(8, 4)).astype("float32"), 1)
    assert len(folded.get_layer("shared_bn")._inbound_nodes) == 2  # still one layer, called twice


def test_bn_inside_nested_models_is_folded_there():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3), L.BatchNormalization(name="inner_bn")], name="inner")
    outer = keras.Sequential([keras.Input((4,)), inner, L.Dense(2)])
    randomise_bn(outer, np.random.default_rng(0))
    (decision,) = plan_folding(outer)
    assert decision == FoldDecision("inner/inner_bn", f"inner/{inner.layers[0].name}", True, "folded", "backward", True)
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    folded = _check_same_predictions(outer, x, 0)
    assert isinstance(folded.layers[0], keras.Sequential) and folded.layers[0].name == "inner"
    # a functional model nested twice (shared), a BN right after it, a BN inside a plain layer
    block_in = keras.Input((6,))
    block = keras.Model(block_in, L.BatchNormalization(name="block_bn")(L.Dense(6, name="block_dense")(block_in)),
                        name="block")
    inputs = keras.Input((6,))
    h = block(block(inputs))
    h = L.BatchNormalization(name="after_block")(h)
    h = _WithBN(name="wrapper")(h)
    model = keras.Model(inputs, h)
    randomise_bn(model, np.random.default_rng(2))
    plan = {d.bn: d for d in plan_folding(model)}
    assert plan["block/block_bn"].folded and plan["block/block_bn"].into == "block/block_dense"
    assert "follows the nested model 'block'" in plan["after_block"].reason
    assert "inside 'wrapper' (_WithBN), whose graph is not visible" in plan["inner_of_wrapper"].reason
    folded = _check_same_predictions(model, np.random.default_rng(3).normal(size=(8, 6)).astype("float32"), 2)
    assert len(folded.get_layer("block")._inbound_nodes) == 2  # the nested model stays shared


@keras.saving.register_keras_serializable(package="bnbook_tests")
class _WithBN(L.Layer):
    """A layer with a BN inside: its graph is not visible to folding."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bn = L.BatchNormalization(name="inner_of_wrapper")

    def call(self, inputs):
        return self.bn(inputs) * 2.0


def test_the_original_model_is_not_modified():
    set_up(1)
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, use_bias=False), L.BatchNormalization(), L.Dense(2)])
    randomise_bn(model, np.random.default_rng(1))
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


CONV_CASES = [
    # (layer, input shape, BN center): every kind of layer BN folds into, with strides, padding, groups, multipliers
    (lambda: L.Conv1D(6, 3, strides=2, padding="same", groups=2), (9, 4), True),
    (lambda: L.Conv3D(4, 2, padding="same"), (5, 5, 5, 2), False),
    (lambda: L.DepthwiseConv1D(3, depth_multiplier=2), (9, 3), True),
    (lambda: L.DepthwiseConv2D(3, depth_multiplier=1, padding="same"), (7, 7, 4), False),
    (lambda: L.DepthwiseConv2D(3, depth_multiplier=3, strides=2, use_bias=False), (8, 8, 2), True),
    (lambda: L.SeparableConv1D(5, 3, depth_multiplier=2), (9, 3), False),
    (lambda: L.SeparableConv2D(5, 3, depth_multiplier=2, use_bias=False), (7, 7, 3), True),
    (lambda: L.Conv1DTranspose(4, 3, strides=2), (6, 3), False),
    (lambda: L.Conv2DTranspose(5, 3, strides=2, padding="same", output_padding=1), (5, 5, 3), True),
    (lambda: L.Conv2DTranspose(4, 3, strides=3, use_bias=False), (4, 4, 2), False),  # some outputs are bias only
    (lambda: L.Conv3DTranspose(3, 2, strides=2), (3, 3, 3, 2), True),
]


@pytest.mark.parametrize(("make_layer", "shape", "center"), CONV_CASES)
def test_every_linear_layer_kind_folds_exactly(make_layer, shape, center):
    set_up(0)
    producer = make_layer()
    model = keras.Sequential([keras.Input(shape), producer, L.BatchNormalization(center=center), L.Activation("relu")])
    randomise_bn(model, np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")
    folded = _check_same_predictions(model, x, expected_bn_left=0)
    assert type(folded.layers[0]) is type(producer) and folded.layers[0].use_bias


def test_bnbook_batchnorm_after_dense_is_folded():
    model = keras.Sequential([keras.Input((5,)), L.Dense(4, name="dense"), BatchNorm(name="ours"), L.Dense(2)])
    randomise_bn(model, np.random.default_rng(0))
    assert plan_folding(model) == [FoldDecision("ours", "dense", True, "folded", "backward", True)]
    _check_same_predictions(model, np.random.default_rng(1).normal(size=(8, 5)).astype("float32"), 0)


def _graph_with_raw_ops():
    """Tensor operators and keras.ops between layers, multi-input layers, a shared layer."""
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same", name="c1")(inputs)
    h = L.BatchNormalization(name="bn_c1")(h)  # foldable
    h = h + h  # raw tensor operation
    h = L.BatchNormalization(name="bn_after_add")(h)  # follows an operation
    c2 = L.Conv2D(4, 1, name="c2")(h)
    h = L.BatchNormalization(name="bn_c2")(c2)  # c2's output also goes to the Add below
    h = L.Add(name="add")([h, c2])
    h = L.BatchNormalization(name="bn_after_layer_add")(h)  # follows a multi-input layer
    shared = L.Conv2D(4, 1, name="shared_conv")
    a = L.BatchNormalization(name="bn_shared_a")(shared(h))  # the producer is called twice
    b = shared(keras.ops.relu(h))
    h = keras.ops.concatenate([a, b * 0.5], axis=-1)
    h = L.Conv2D(6, 3, name="c3")(h)
    h = L.BatchNormalization(name="bn_training", momentum=0.5)(h, training=True)  # batch statistics always
    h = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(keras.ops.tanh(h))
    h = L.BatchNormalization(name="bn_dw")(h)
    return keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(h)))


def test_graphs_with_raw_tensor_operations_shared_and_multi_input_layers():
    model = _graph_with_raw_ops()
    randomise_bn(model, np.random.default_rng(0))
    plan = {d.bn: d for d in plan_folding(model)}
    assert {name for name, d in plan.items() if d.folded} == {"bn_c1", "bn_dw", "bn_after_add"}
    assert (plan["bn_after_add"].direction, plan["bn_after_add"].into) == ("forward", "c2")  # after h + h
    assert "output of c2 is used elsewhere" in plan["bn_c2"].reason
    assert "follows 'add', an Add layer, not a Dense or convolution layer" in plan["bn_after_layer_add"].reason
    assert "shared_conv is shared" in plan["bn_shared_a"].reason
    assert "training=True" in plan["bn_training"].reason
    x = np.random.default_rng(1).normal(size=(6, 8, 8, 3)).astype("float32")
    folded = _check_same_predictions(model, x, expected_bn_left=4)
    assert len(folded.get_layer("shared_conv")._inbound_nodes) == 2


def test_folded_models_save_and_reload_without_custom_objects(tmp_path):
    inputs = keras.Input((6, 6, 2))
    h = L.SeparableConv2D(4, 3, name="sep")(inputs)
    h = BatchNorm(name="ours")(h)
    h = keras.ops.relu(h) - 0.5
    h = L.DepthwiseConv2D(3, name="dw")(h)
    h = L.BatchNormalization(name="theirs")(h)
    h = L.BatchNormalization(name="second")(h)  # follows a BN: left in place
    model = keras.Model(inputs, L.Flatten()(h))
    randomise_bn(model, np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(4, 6, 6, 2)).astype("float32")
    folded = _check_same_predictions(model, x, expected_bn_left=1)
    folded.save(tmp_path / "folded.keras")
    reloaded = keras.saving.load_model(tmp_path / "folded.keras")
    assert "bnbook" not in str(reloaded.get_config())
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4)


def test_subclassed_models_are_refused_with_a_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense, self.bn = L.Dense(3), L.BatchNormalization()

        def call(self, x):
            return self.bn(self.dense(x))

    net = Net()
    net(np.zeros((2, 4), "float32"))
    with pytest.raises(TypeError, match="subclassed model"):
        fold_batchnorm(net)


def test_nested_subclassed_models_and_layers_without_config_are_reused_and_reported():
    class Net(keras.Model):  # subclassed, no get_config: cannot be copied, its graph is not visible
        def __init__(self, width):
            super().__init__()
            self.dense, self.bn = L.Dense(width), L.BatchNormalization(name="bn_in_net")

        def call(self, x):
            return self.bn(self.dense(x))

    inputs = keras.Input((4,))
    net = Net(3)
    model = keras.Model(inputs, L.BatchNormalization(name="bn_ok")(L.Dense(2, name="d")(net(inputs))))
    randomise_bn(model, np.random.default_rng(0))
    with pytest.warns(FoldingWarning) as record:
        folded = fold_batchnorm(model)
    messages = [str(w.message) for w in record]
    assert f"BN layer 'bn_in_net' was not folded: inside {net.name!r} (Net), whose graph is not visible" in messages
    assert any(f"{net.name!r} (Net) cannot be rebuilt from its config" in m for m in messages)
    assert folded.get_layer(net.name) is net and count_bn(folded) == 1
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    np.testing.assert_allclose(folded(x), model(x), atol=1e-5)


def _efficientnet_on_pixels():
    """EfficientNetB0 at 64x64 with random BN statistics on inputs 0-255: an ill-conditioned network
    whose float32 logits (about 7e3) are a few units off a float64 computation of the same model."""
    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetB0(
        weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None
    )
    randomise_bn(model, np.random.default_rng(0))
    return model, np.random.default_rng(1).uniform(0, 255, size=(4, 64, 64, 3)).astype("float32")


def test_verify_calibrates_its_tolerance_on_an_ill_conditioned_network():
    model, x = _efficientnet_on_pixels()
    report = fold_report(model, verify=x)
    # The original itself is far from exact arithmetic: a flat 1e-4 of the largest logit would refuse
    # a correct fold; the tolerance comes from that rounding instead.
    assert report.rounding > 1e-4 * report.max_output
    assert report.max_difference > 1e-4 * report.max_output
    assert report.tolerance == pytest.approx(4 * report.rounding + 1e-6 * report.max_output)
    assert report.verified and report.checked_difference == report.max_difference
    fold_batchnorm(model, verify=x)  # does not raise


def _cnn():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((12, 12, 3)), L.Conv2D(8, 3, use_bias=False), L.BatchNormalization(epsilon=1e-3),
        L.Activation("relu"), L.BatchNormalization(epsilon=1e-3), L.Conv2D(8, 3), L.Flatten(), L.Dense(5),
    ])
    randomise_bn(model, np.random.default_rng(0))
    return model, np.random.default_rng(1).normal(size=(8, 12, 12, 3)).astype("float32")


@pytest.mark.parametrize("direction", ["backward", "forward"])
def test_verify_catches_a_fold_with_epsilon_left_out(direction, monkeypatch):
    model, x = _cnn()
    good = fold_report(model, verify=x)
    assert good.verified and good.rounding > 0
    assert [d.direction for d in good.decisions] == ["backward", "forward"]
    import bnbook.folding as folding

    right = folding._bn_map

    def without_epsilon(bn):  # the bug: epsilon forgotten in one of the two directions
        wrong = (bn is model.layers[1]) == (direction == "backward")
        if not wrong:
            return right(bn)
        return folding._scale_and_shift(
            bn.gamma.numpy(), bn.beta.numpy(), bn.moving_mean.numpy(), bn.moving_variance.numpy(), 0.0
        )

    monkeypatch.setattr(folding, "_bn_map", without_epsilon)
    bad = fold_report(model, verify=x)
    assert bad.verified is False and bad.checked_difference > 10 * bad.tolerance
    with pytest.raises(ValueError, match="above the tolerance"):
        fold_batchnorm(model, verify=x)


def test_decisions_left_in_place_say_nothing_about_exactness():
    model = keras.Sequential([keras.Input((4,)), L.BatchNormalization(), L.Activation("relu")])
    (decision,) = plan_folding(model)
    assert not decision.folded and decision.exact is None and decision.direction is None


def test_a_non_trainable_bn_called_with_training_true_is_folded():
    # Keras 3 runs it in inference mode (batch_normalization.py: `if training and self.trainable`).
    inputs = keras.Input((4,))
    bn = L.BatchNormalization(trainable=False)
    model = keras.Model(inputs, bn(L.Dense(3)(inputs), training=True))
    randomise_bn(model, np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    report = fold_report(model, verify=x)
    assert report.decisions[0].folded and report.verified
    np.testing.assert_allclose(report.model(x), model(x), rtol=1e-5, atol=1e-5)  # model(x) as called
    bn.trainable = True  # now it would use the batch's statistics: refused
    assert not plan_folding(model)[0].folded


def test_a_masked_bn_is_folded_and_its_mask_still_reaches_the_pooling():
    inputs = keras.Input((5,), dtype="int32")
    h = L.Dense(3)(L.Embedding(10, 4, mask_zero=True)(inputs))
    model = keras.Model(inputs, L.GlobalAveragePooling1D()(L.BatchNormalization()(h)))
    randomise_bn(model, np.random.default_rng(0))
    x = np.array([[1, 2, 0, 0, 3], [4, 5, 6, 0, 0]])
    report = fold_report(model, verify=x)
    assert report.decisions[0].folded and report.decisions[0].direction == "backward"
    assert report.verified and count_bn(report.model) == 0
    # Independent reference: BN of the Dense outputs, averaged over the unmasked tokens only.
    embedding, dense, bn = model.layers[1], model.layers[2], model.layers[3]
    h = embedding.embeddings.numpy()[x] @ dense.kernel.numpy() + dense.bias.numpy()
    z = bn.gamma.numpy() * (h - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    z = z + bn.beta.numpy()
    mask = (x != 0)[..., None]
    expected = (z * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(report.model(x), expected, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(z.mean(1) - expected)) > 1e-2  # the mask matters


@pytest.mark.parametrize(
    ("between", "shape", "tile"),
    [
        (lambda: [L.Flatten()], (3, 4, 5), 12),
        (lambda: [L.Flatten(data_format="channels_first")], (5, 3, 4), 12),
        (lambda: [L.GlobalAveragePooling2D()], (3, 4, 5), 1),
        (lambda: [L.GlobalAveragePooling1D(), L.Dropout(0.5)], (6, 5), 1),
        (lambda: [L.Dropout(0.5)], (5,), 1),
        (lambda: [L.Dropout(0.3), L.Flatten()], (2, 3, 5), 6),
    ],
    ids=["flatten", "flatten-channels-first", "gap2d", "gap1d-dropout", "dropout", "dropout-flatten"],
)
def test_forward_folding_through_flatten_pooling_and_dropout(between, shape, tile):
    channels_first = "channels_first" in str(between()[0].get_config())
    inputs = keras.Input(shape)
    h = L.Activation("relu")(L.Dense(shape[-1])(inputs) if len(shape) == 1 else inputs)
    h = L.BatchNormalization(axis=1 if channels_first else -1, name="bn")(h)
    for layer in between():
        h = layer(h)
    model = keras.Model(inputs, L.Dense(7, name="target")(h))
    randomise_bn(model, np.random.default_rng(0))
    (decision,) = plan_folding(model)
    assert (decision.folded, decision.direction, decision.into, decision.exact) == (True, "forward", "target", True)
    x = np.random.default_rng(1).normal(size=(8, *shape)).astype("float32")
    report = fold_report(model, verify=x)
    assert count_bn(report.model) == 0 and report.verified
    # Independent reference: the original model itself, in inference mode.
    np.testing.assert_allclose(report.model(x), model(x, training=False), rtol=1e-5, atol=1e-5 * report.max_output)
    assert report.model.get_layer("target").kernel.shape[0] == tile * (shape[0] if channels_first else shape[-1])


def test_no_forward_fold_through_pooling_into_a_convolution_or_through_training_dropout():
    inputs = keras.Input((6, 6, 4))
    h = L.BatchNormalization(name="bn")(L.Activation("relu")(inputs))
    h = L.GlobalAveragePooling2D(keepdims=True)(h)  # keepdims: not followed
    model = keras.Model(inputs, L.Conv2D(3, 1)(h))
    assert not plan_folding(model)[0].folded
    inputs = keras.Input((4,))
    h = L.Dropout(0.5)(L.BatchNormalization()(L.Activation("relu")(inputs)), training=True)
    model = keras.Model(inputs, L.Dense(3)(h))
    assert not plan_folding(model)[0].folded
