"""fold_batchnorm on real architectures: keras.applications models and a graph of raw tensor operations.

The models are built with ``weights=None`` at 32x32 (their smallest input) and every BN
layer gets random moving statistics, gamma and beta (and every bias a random value),
so that folding is not the identity. Outputs are logits (``classifier_activation=None``):
with these random statistics they reach about 100, and float32 rounding alone moves the
original model's logits by about 1e-5 of that between two of TensorFlow's code paths
(eager call vs ``predict``), so the folded model is held to 1e-4 of the largest logit.
"""

import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from bnbook.folding import FoldingWarning, fold_batchnorm, fold_report, plan_folding
from tests.test_folding import count_bn, randomise_bn

L = keras.layers
SIZE = 32

# (application, its BN layers, the kinds of layer before a BN that an exact fold must leave)
APPLICATIONS = [
    ("ResNet50", 53, set()),  # every BN follows a Conv2D
    ("MobileNetV2", 52, set()),  # 17 of them follow a DepthwiseConv2D
    ("EfficientNetB0", 49, set()),  # 16 follow a DepthwiseConv2D
    # Pre-activation: a conv block starts with BN on the features so far (after a
    # Concatenate, or after the stem's max pooling / a transition's average pooling),
    # followed by a ReLU; the BN after each block's 1x1 conv is folded.
    ("DenseNet121", 121, {"Concatenate", "MaxPooling2D", "AveragePooling2D"}),
    ("ConvNeXtTiny", 0, set()),  # LayerNormalization only, and raw tensor operations (it used to crash)
]


def _application(name):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(SIZE, SIZE, 3), classes=10, classifier_activation=None
    )
    randomise_bn(model, np.random.default_rng(0))
    return model


def _residual_net_with_tensor_operators():
    """An inverted-residual network written with operators and keras.ops between its layers."""
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.ops.relu(L.BatchNormalization()(L.Conv2D(16, 3, strides=2, use_bias=False)(inputs)))
    for expand in (2, 4):
        shortcut = h
        h = keras.ops.minimum(keras.ops.relu(L.BatchNormalization()(L.Conv2D(16 * expand, 1)(h))), 6.0)
        h = L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", use_bias=False)(h)) * 0.5
        h = L.BatchNormalization()(L.Conv2D(16, 1, use_bias=False)(h))
        h = h + shortcut  # raw tensor operation between Keras tensors
    h = L.BatchNormalization()(L.SeparableConv2D(24, 3, depth_multiplier=2)(h))
    return keras.Model(inputs, L.Dense(10)(keras.ops.mean(h, axis=(1, 2))), name="residual_ops")


def _relative_difference(model, folded, x):
    original = np.asarray(model(x, training=False))
    return float(np.max(np.abs(np.asarray(folded(x, training=False)) - original)) / np.max(np.abs(original)))


@pytest.mark.parametrize(("name", "n_bn", "kinds_left"), APPLICATIONS)
def test_applications_fold_exactly(name, n_bn, kinds_left):
    model = _application(name)
    assert count_bn(model) == n_bn
    # From the architecture: a BN is foldable exactly when the layer before it is a convolution
    # without activation whose output only it uses (every BN here feeds a ReLU or the next
    # block, never a Dense or "valid" convolution, so there is no forward fold).
    before = {}
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            (node,) = layer._inbound_nodes
            producer = node.input_tensors[0]._keras_history.operation
            foldable = (
                type(producer) in (L.Conv2D, L.DepthwiseConv2D)
                and producer.activation is keras.activations.linear
                and len(producer._outbound_nodes) == 1
            )
            before[layer.name] = (type(producer).__name__, foldable)
    left = {bn for bn, (_, foldable) in before.items() if not foldable}
    assert {before[bn][0] for bn in left} == kinds_left
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FoldingWarning)
        folded = fold_batchnorm(model)
    assert count_bn(folded) == len(left)
    # "BN layer 'conv2_block1_0_bn' was not folded: follows 'conv2_block1_concat', a Concatenate layer, not a
    # Dense or convolution layer; forward: feeds 'conv2_block1_0_relu', an Activation layer, ..."
    reported = {re.search(r"BN layer '([^']*)'", str(w.message)).group(1): str(w.message) for w in caught}
    assert set(reported) == left
    for bn, message in reported.items():
        assert re.search(r"follows '[^']*', an? (\w+) layer", message).group(1) == before[bn][0]
    assert len(folded.layers) == len(model.layers) - (n_bn - len(left))
    x = np.random.default_rng(1).normal(size=(4, SIZE, SIZE, 3)).astype("float32")
    assert _relative_difference(model, folded, x) < 1e-4


def test_a_network_of_raw_tensor_operations_folds_exactly(tmp_path):
    model = _residual_net_with_tensor_operators()
    randomise_bn(model, np.random.default_rng(0))
    assert count_bn(model) == 8
    folded = fold_batchnorm(model)  # no warning: every BN follows a convolution
    assert count_bn(folded) == 0
    x = np.random.default_rng(1).normal(size=(4, SIZE, SIZE, 3)).astype("float32")
    assert _relative_difference(model, folded, x) < 1e-4
    folded.save(tmp_path / "folded.keras")
    assert _relative_difference(model, keras.saving.load_model(tmp_path / "folded.keras"), x) < 1e-4


def test_folded_model_matches_tflite_on_the_original():
    """TensorFlow Lite's converter folds BN itself; our folded Keras model must agree with it."""
    if not hasattr(tf, "lite"):  # tf.lite ships with tensorflow and tensorflow-cpu 2.21
        pytest.skip("this TensorFlow has no tf.lite")
    model = _residual_net_with_tensor_operators()
    randomise_bn(model, np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = tf.lite.Interpreter(model_content=tf.lite.TFLiteConverter.from_keras_model(model).convert())
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    x = np.random.default_rng(1).normal(size=tuple(inp["shape"])).astype("float32")
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    tflite = interpreter.get_tensor(out["index"])
    folded = np.asarray(fold_batchnorm(model)(x, training=False))
    assert np.max(np.abs(folded - tflite)) < 1e-4 * np.max(np.abs(tflite))


def test_mobilenet_v2_under_mixed_float16_folds_into_a_float32_copy():
    """The models trained on GPUs are mixed precision: dtype="float32" folds them, checked numerically."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.applications.MobileNetV2(
            weights=None, input_shape=(SIZE, SIZE, 3), alpha=0.35, classes=10, classifier_activation=None
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)
    randomise_bn(model, np.random.default_rng(0))
    plan = plan_folding(model)
    assert len(plan) == 52 and not any(d.folded for d in plan)
    assert all("computes in float16" in d.reason and "dtype='float32'" in d.reason for d in plan)
    x = np.random.default_rng(1).uniform(-1, 1, size=(8, SIZE, SIZE, 3)).astype("float32")
    report = fold_report(model, dtype="float32", verify=x)
    assert len(report.folded) == 52 and count_bn(report.model) == 0
    assert {layer.compute_dtype for layer in report.model.layers} == {"float32"}
    # Against the same network computed in float32 (same weights, no folding): float32 rounding only.
    reference = keras.applications.MobileNetV2(
        weights=None, input_shape=(SIZE, SIZE, 3), alpha=0.35, classes=10, classifier_activation=None
    )
    reference.set_weights(model.get_weights())
    expected = np.asarray(reference(x, training=False))
    assert _relative_difference(reference, report.model, x) < 1e-4 < np.max(np.abs(expected))
    # Against the float16 original: its own rounding, which the report measures and the default tolerance allows.
    assert report.verified and report.max_difference < 1e-2 * report.max_output
    assert report.max_difference > 1e-5 * report.max_output  # float16's rounding is visible
