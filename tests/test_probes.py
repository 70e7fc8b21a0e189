"""bnbook.probes: finding BN layers, their variables, their inputs' moments, re-estimation, batch noise."""

import keras
import numpy as np
import pandas as pd
import pytest

from bnbook.probes import (
    BN_TYPES,
    batch_statistics_spread,
    bn_input_variances,
    bn_layers,
    bn_variables,
    channel_moments,
    layer_input_model,
    probed_bn_layers,
    reestimate_bn_statistics,
    unchanged_state,
)
from bnbook.layers import BatchNorm
from bnbook.reproducibility import set_up
from tests.model_state import assert_model_unchanged
from tests.models import two_bn_model

L = keras.layers


def _randomise(model, rng):
    """Non-trivial weights, biases and BN parameters/statistics, as after training."""
    for layer in model.layers:
        for variable in layer.weights:
            if "seed_generator" in variable.path:
                continue
            shape = tuple(variable.shape)
            if "variance" in variable.path:
                variable.assign(rng.uniform(0.5, 2.0, size=shape).astype("float32"))
            else:
                variable.assign(rng.normal(0.3, 1.0, size=shape).astype("float32"))


def _bn_numpy(z, layer, mean, var):
    gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
    return (z - mean) / np.sqrt(var + layer.epsilon) * gamma + beta


def _mlp(bn_class=L.BatchNormalization, dropout=0.0):
    set_up(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(5, name="dense1"),
            bn_class(name="bn1"),
            L.Activation("relu"),
            L.Dropout(dropout),
            L.Dense(4, name="dense2"),
            bn_class(name="bn2"),
        ]
    )
    _randomise(model, np.random.default_rng(1))
    return model


def _numpy_forward(model, x, training_batches=None):
    """The inputs of bn1 and bn2, inference mode, computed with NumPy."""
    d1, bn1, d2 = (model.get_layer(n) for n in ("dense1", "bn1", "dense2"))
    z1 = x @ d1.kernel.numpy() + d1.bias.numpy()
    if training_batches is None:
        h = _bn_numpy(z1, bn1, bn1.moving_mean.numpy(), bn1.moving_variance.numpy())
    else:
        h = np.concatenate([_bn_numpy(b, bn1, b.mean(0), b.var(0)) for b in np.split(z1, training_batches)])
    z2 = np.maximum(h, 0) @ d2.kernel.numpy() + d2.bias.numpy()
    return z1, z2


X = np.random.default_rng(2).normal(1.0, 2.0, size=(300, 6)).astype("float32")


@pytest.mark.parametrize("bn_class", [L.BatchNormalization, BatchNorm])
def test_reestimate_matches_numpy_layer_by_layer(bn_class):
    model = _mlp(bn_class, dropout=0.5)
    new = reestimate_bn_statistics(model, X, batch_size=64)  # 64 does not divide 300
    assert list(new) == ["bn1", "bn2"]
    # bn1's input does not depend on any BN; bn2's uses bn1's *new* statistics.
    z1 = X @ model.get_layer("dense1").kernel.numpy() + model.get_layer("dense1").bias.numpy()
    np.testing.assert_allclose(model.get_layer("bn1").moving_mean.numpy(), z1.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.get_layer("bn1").moving_variance.numpy(), z1.var(0), rtol=1e-4)
    _, z2 = _numpy_forward(model, X)
    np.testing.assert_allclose(model.get_layer("bn2").moving_mean.numpy(), z2.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.get_layer("bn2").moving_variance.numpy(), z2.var(0), rtol=1e-4)
    np.testing.assert_array_equal(new["bn2"][1], model.get_layer("bn2").moving_variance.numpy())
    # Weights untouched: re-estimating twice gives the same statistics.
    again = reestimate_bn_statistics(model, X, batch_size=300)
    np.testing.assert_allclose(again["bn2"][1], new["bn2"][1], rtol=1e-5)


def test_reestimate_conv_channels():
    set_up(0)
    model = keras.Sequential([keras.Input((5, 5, 2)), L.Conv2D(3, 3, name="conv"), L.BatchNormalization(name="bn")])
    _randomise(model, np.random.default_rng(3))
    x = np.random.default_rng(4).normal(size=(40, 5, 5, 2)).astype("float32")
    reestimate_bn_statistics(model, x, batch_size=7)
    z = keras.Model(model.inputs[0], model.get_layer("conv").output)(x).numpy()  # (40, 3, 3, 3)
    np.testing.assert_allclose(model.get_layer("bn").moving_mean.numpy(), z.mean(axis=(0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(model.get_layer("bn").moving_variance.numpy(), z.var(axis=(0, 1, 2)), rtol=1e-4)


@pytest.mark.parametrize("bn_class", [L.BatchNormalization, BatchNorm])
def test_variances_without_dropout_match_numpy(bn_class):
    model = _mlp(bn_class, dropout=0.0)
    table = bn_input_variances(model, X, batch_size=100)
    assert list(table.columns) == ["layer", "channel", "train_variance", "inference_variance", "moving_variance"]
    assert table["layer"].tolist() == ["bn1"] * 5 + ["bn2"] * 4
    z1, z2 = _numpy_forward(model, X)
    t1, t2 = _numpy_forward(model, X, training_batches=3)  # 3 batches of 100
    bn1, bn2 = table[table["layer"] == "bn1"], table[table["layer"] == "bn2"]
    np.testing.assert_allclose(bn1["inference_variance"], z1.var(0), rtol=1e-4)
    np.testing.assert_allclose(bn2["inference_variance"], z2.var(0), rtol=1e-4)
    np.testing.assert_allclose(bn1["train_variance"], np.mean([b.var(0) for b in np.split(t1, 3)], 0), rtol=1e-4)
    np.testing.assert_allclose(bn2["train_variance"], np.mean([b.var(0) for b in np.split(t2, 3)], 0), rtol=1e-4)
    np.testing.assert_allclose(bn2["moving_variance"], model.get_layer("bn2").moving_variance.numpy())


def test_variances_leave_the_model_unchanged_and_drop_a_partial_batch():
    model = _mlp(dropout=0.5)
    before = [v.numpy().copy() for v in model.variables]
    first = bn_input_variances(model, X, batch_size=128)  # 2 full batches, 44 left out
    second = bn_input_variances(model, X[:256], batch_size=128)
    for old, variable in zip(before, model.variables):
        np.testing.assert_array_equal(old, variable.numpy())
    np.testing.assert_allclose(first["train_variance"], second["train_variance"], rtol=1e-6)


def test_dropout_variance_shift_follows_the_formula():
    # Dropout(rate) -> BN on a unit with mean c and variance v: in training BN sees
    # (1/p)(c^2 + v) - c^2, at inference v (Li et al. 2019).
    set_up(0)
    c, v, rate = 1.5, 0.5, 0.4
    p = 1 - rate
    model = keras.Sequential([keras.Input((8,)), L.Dropout(rate), L.BatchNormalization(name="bn")])
    x = (c + np.sqrt(v) * np.random.default_rng(5).normal(size=(40_000, 8))).astype("float32")
    table = bn_input_variances(model, x, batch_size=1000)
    expected_train = ((c**2 + v) / p - c**2) * (1000 - 1) / 1000  # biased batch variance
    np.testing.assert_allclose(table["inference_variance"], x.var(0), rtol=1e-4)
    assert abs(table["train_variance"].mean() / expected_train - 1) < 0.01
    np.testing.assert_allclose(table["moving_variance"], 1.0)  # untouched


def _nested():
    return keras.Sequential([keras.Input((6,)), _mlp(), L.Dense(2)])


def _shared_twice():
    shared = L.BatchNormalization(name="shared")
    inputs = keras.Input((6,))
    return keras.Model(inputs, shared(shared(inputs)))


def _two_inputs():
    a, b = keras.Input((6,)), keras.Input((6,))
    return keras.Model([a, b], L.BatchNormalization(name="bn")(L.Add()([a, b])))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        pytest.param(lambda: bn_input_variances("model", X), TypeError, "keras.Model", id="not a model"),
        pytest.param(lambda: reestimate_bn_statistics(_mlp(), X.tolist()), TypeError, "NumPy array", id="x a list"),
        pytest.param(lambda: reestimate_bn_statistics(_mlp(), X, batch_size=2.0), TypeError, "batch_size", id="float batch"),
        pytest.param(lambda: bn_input_variances(_mlp(), X, batch_size=0), ValueError, "batch_size", id="batch 0"),
        pytest.param(lambda: bn_input_variances(_mlp(), X[:10], batch_size=64), ValueError, "fewer than one batch", id="short x"),
        pytest.param(lambda: reestimate_bn_statistics(_mlp(), X[:1]), ValueError, "at least 2", id="one example"),
        pytest.param(
            lambda: reestimate_bn_statistics(keras.Sequential([keras.Input((6,)), L.Dense(2)]), X), ValueError, "no BN layer", id="no BN"
        ),
        pytest.param(lambda: bn_input_variances(_nested(), X), ValueError, "nested", id="nested"),
        pytest.param(lambda: probed_bn_layers(_shared_twice()), ValueError, "exactly once", id="called twice"),
        pytest.param(lambda: reestimate_bn_statistics(_mlp(), X, batch_size=1), ValueError, "batch_size must be >= 2", id="batch 1"),
        pytest.param(lambda: reestimate_bn_statistics(_mlp(), X, tolerance=-1e-3), ValueError, "tolerance.*-0.001", id="tolerance < 0"),
        pytest.param(lambda: reestimate_bn_statistics(_mlp(), X, tolerance="small"), TypeError, "tolerance.*'small'", id="tolerance str"),
        pytest.param(lambda: reestimate_bn_statistics(_mlp(), X, max_passes=0), ValueError, "max_passes must be >= 1", id="passes 0"),
        pytest.param(lambda: reestimate_bn_statistics(_two_inputs(), X), ValueError, "2 inputs", id="two inputs, reestimate"),
        pytest.param(lambda: probed_bn_layers(_two_inputs()), ValueError, "single-input models.*2 inputs", id="two inputs"),
        pytest.param(
            lambda: layer_input_model(_two_inputs(), [_two_inputs().layers[-1]]), ValueError, "2 inputs", id="two inputs, probe"
        ),
        pytest.param(lambda: bn_variables(keras.Sequential([L.Dense(2), L.BatchNormalization(name="lazy")])), ValueError, "'lazy' is not built", id="not built"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_reestimation_never_half_writes_the_model():
    """A later BN layer whose input is not finite: nothing is written, not even the earlier layers."""
    model = _mlp()
    dense2 = model.get_layer("dense2")
    kernel = dense2.kernel.numpy()
    kernel[0, 1] = np.nan
    dense2.kernel.assign(kernel)
    with assert_model_unchanged(model):
        with pytest.raises(ValueError, match=r"BN layer 'bn2' is not finite on x in channels \[1\]"):
            reestimate_bn_statistics(model, X)


def test_reestimation_and_variances_on_a_channels_first_layer():
    set_up(0)
    model = keras.Sequential([keras.Input((3, 4)), L.Dense(4, name="dense"), L.BatchNormalization(axis=1, name="bn")])
    _randomise(model, np.random.default_rng(6))
    x = np.random.default_rng(7).normal(size=(30, 3, 4)).astype("float32")
    dense = model.get_layer("dense")
    z = x @ dense.kernel.numpy() + dense.bias.numpy()  # (30, 3, 4): 3 channels on axis 1
    table = bn_input_variances(model, x, batch_size=10)
    np.testing.assert_allclose(table["inference_variance"], z.var(axis=(0, 2)), rtol=1e-4)
    batches = np.split(z, 3)
    np.testing.assert_allclose(table["train_variance"], np.mean([b.var(axis=(0, 2)) for b in batches], 0), rtol=1e-4)
    new = reestimate_bn_statistics(model, x, batch_size=7)
    np.testing.assert_allclose(new["bn"][0], z.mean(axis=(0, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.get_layer("bn").moving_variance.numpy(), z.var(axis=(0, 2)), rtol=1e-4)


def test_a_sequential_model_reloaded_from_keras_file_can_be_probed(tmp_path):
    """Keras rebuilds a loaded Sequential model several times; each rebuild is a call of its layers."""
    model = _mlp(dropout=0.5)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert len(loaded.get_layer("bn1")._inbound_nodes) > 1  # what made probed_bn_layers refuse it
    assert [layer.name for layer in probed_bn_layers(loaded)] == ["bn1", "bn2"]
    expected = reestimate_bn_statistics(model, X)
    got = reestimate_bn_statistics(loaded, X)
    for name in expected:
        np.testing.assert_allclose(got[name][1], expected[name][1], rtol=1e-6)


def test_after_reestimation_moving_variance_is_the_inference_variance():
    model = _mlp(dropout=0.5)
    reestimate_bn_statistics(model, X, batch_size=50)
    table = bn_input_variances(model, X, batch_size=100)
    np.testing.assert_allclose(table["moving_variance"], table["inference_variance"], rtol=1e-4)


def test_bn_variables_lists_names_shapes_and_trainability():
    model = two_bn_model()
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
    inner = two_bn_model()
    outer = keras.Sequential([keras.Input((6,)), inner, L.Dense(1)])
    assert [layer.name for layer in bn_layers(outer)] == ["bn1", "bn2"]
    assert len(bn_variables(outer)) == 7


def test_bn_variables_refuses_a_model_without_bn():
    with pytest.raises(TypeError, match="keras.Model"):
        bn_variables("not a model")
    plain = keras.Sequential([keras.Input((3,)), L.Dense(2)], name="plain")
    with pytest.raises(ValueError, match="no BN layer"):
        bn_variables(plain)


GAUSS = np.random.default_rng(0).normal(loc=3.0, scale=2.0, size=(20000, 4))


def test_spread_of_independent_values_follows_the_textbook_formulas():
    sizes = [2, 8, 32, 128]
    table = batch_statistics_spread(GAUSS, sizes, n_batches=2000, seed=1)
    assert table.index.tolist() == sizes
    b = np.array(sizes, dtype=float)
    # Mean of b independent values: error std 1/sqrt(b).
    np.testing.assert_allclose(table["mean_error"], 1 / np.sqrt(b), rtol=0.05)
    # Biased variance of b Gaussian values, relative: bias -1/b, variance 2(b-1)/b^2.
    np.testing.assert_allclose(table["variance_error"], np.sqrt(2 * b - 1) / b, rtol=0.05)


def test_spread_matches_a_direct_numpy_computation_with_the_same_draws():
    x = np.random.default_rng(20).normal(size=(50, 3, 3, 2))
    table = batch_statistics_spread(x, [5], n_batches=7, seed=3)
    draws = np.random.default_rng(3)
    picks = [draws.choice(50, 5, replace=False) for _ in range(7)]
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    mean_errors, var_errors = [], []
    for batch in picks:
        values = x[batch]  # BN pools examples, height and width per channel
        mean_errors.append((values.mean(axis=(0, 1, 2)) - mean) / np.sqrt(var))
        var_errors.append(values.var(axis=(0, 1, 2)) / var - 1)
    assert table.loc[5, "mean_error"] == pytest.approx(np.sqrt(np.mean(np.square(mean_errors))), rel=1e-9)
    assert table.loc[5, "variance_error"] == pytest.approx(np.sqrt(np.mean(np.square(var_errors))), rel=1e-9)


def test_a_batch_of_all_examples_has_no_error():
    table = batch_statistics_spread(GAUSS[:100], [100], n_batches=3)
    assert table.loc[100].abs().max() < 1e-9


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((GAUSS[:, 0], [2]), {}, ValueError, "shape"),
        ((GAUSS[:10], []), {}, ValueError, "empty"),
        ((GAUSS[:10], [11]), {}, ValueError, "1 to 10"),
        ((GAUSS[:10], [0]), {}, ValueError, "batch size"),
        ((GAUSS[:10], [2.5]), {}, TypeError, "batch size"),
        ((GAUSS[:10], [2]), {"n_batches": 0}, ValueError, "n_batches"),
        ((np.ones((10, 2)), [2]), {}, ValueError, "zero variance"),
    ],
)
def test_spread_refuses_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        batch_statistics_spread(*args, **kwargs)


def test_bn_layers_knows_both_classes_and_probed_layers_say_why_not():
    model = keras.Sequential([keras.Input((6,)), L.Dense(4), BatchNorm(name="mine"), L.BatchNormalization(name="keras")])
    assert [layer.name for layer in bn_layers(model)] == ["mine", "keras"]
    assert probed_bn_layers(model) == bn_layers(model)
    class MyBN(L.BatchNormalization):
        pass

    assert isinstance(MyBN(), BN_TYPES)  # subclasses of either class count too
    outer = keras.Sequential([keras.Input((6,)), two_bn_model(), L.Dense(1)])
    with pytest.raises(ValueError, match="nested"):
        probed_bn_layers(outer)
    with pytest.raises(ValueError, match="no BN layer"):
        probed_bn_layers(keras.Sequential([keras.Input((3,)), L.Dense(2)]))
    with pytest.raises(TypeError, match="keras.Model"):
        bn_layers([L.BatchNormalization()])


def test_layer_input_model_outputs_each_layers_input():
    model = two_bn_model()
    probe = layer_input_model(model, [model.get_layer("bn1"), model.get_layer("bn2")])
    x = np.random.default_rng(21).normal(size=(5, 6)).astype("float32")
    first, second = probe(x)
    np.testing.assert_allclose(first, model.get_layer("dense")(x), rtol=1e-6)
    assert second.shape == (5, 3)
    with pytest.raises(ValueError, match="empty"):
        layer_input_model(model, [])
    outer = keras.Sequential([keras.Input((6,)), model, L.Dense(1)])
    with pytest.raises(ValueError, match="not a top-level layer"):
        layer_input_model(outer, [model.get_layer("bn1")])


def test_channel_moments_respect_the_axis():
    x = np.random.default_rng(22).normal(size=(4, 3, 5, 5))  # channels first: 3 channels on axis 1
    mean, var = channel_moments(x, axis=1)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(var, x.var(axis=(0, 2, 3)))
    layer = L.BatchNormalization(axis=1, epsilon=0.0, momentum=0.0)
    layer(x.astype("float32"), training=True)  # momentum 0: the moving statistics become the batch's
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-4)
    with pytest.raises(ValueError, match="out of range"):
        channel_moments(x, axis=4)
    with pytest.raises(ValueError, match="channel axis"):
        channel_moments(np.ones(3))
    with pytest.raises(TypeError, match="axis"):
        channel_moments(x, axis=1.0)


def test_unchanged_state_restores_moving_statistics_even_on_error():
    model = two_bn_model(momentum=0.0)
    x = np.random.default_rng(23).normal(3.0, 2.0, size=(16, 6)).astype("float32")
    before = [v.numpy() for v in model.non_trainable_variables]
    with unchanged_state(model):
        model(x, training=True)
        assert not np.allclose(model.get_layer("bn1").moving_mean.numpy(), before[0])
    for variable, value in zip(model.non_trainable_variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)
    with pytest.raises(RuntimeError):
        with unchanged_state(model):
            model(x, training=True)
            raise RuntimeError("inside")
    np.testing.assert_array_equal(model.non_trainable_variables[0].numpy(), before[0])
    with pytest.raises(TypeError, match="keras.Model"):
        with unchanged_state("model"):
            pass


def test_spread_honours_a_channels_first_axis():
    x = np.random.default_rng(24).normal(size=(40, 2, 3, 3))
    first = batch_statistics_spread(x, [4], n_batches=5, seed=2, axis=1)
    last = batch_statistics_spread(np.moveaxis(x, 1, -1), [4], n_batches=5, seed=2)
    np.testing.assert_allclose(first.to_numpy(), last.to_numpy(), rtol=1e-10)
    with pytest.raises(ValueError, match="channel axis"):
        batch_statistics_spread(x, [4], axis=0)


def test_spread_honours_the_seed_offset(monkeypatch):
    x = np.random.default_rng(25).normal(size=(60, 3))
    unshifted = batch_statistics_spread(x, [4], n_batches=5, seed=103)
    monkeypatch.setenv("BNBOOK_SEED_OFFSET", "100")
    shifted = batch_statistics_spread(x, [4], n_batches=5, seed=3)
    pd.testing.assert_frame_equal(shifted, unshifted)
    monkeypatch.delenv("BNBOOK_SEED_OFFSET")
    assert not batch_statistics_spread(x, [4], n_batches=5, seed=3).equals(unshifted)


# ----------------------------------------------------------------------------- nested and shared BN layers


def _inference_moments(model, layers, x):
    """Each layer's input moments in inference mode, by a prefix model (independent of the streaming code)."""
    outputs = layer_input_model(model, layers)(x, training=False)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    return [channel_moments(keras.ops.convert_to_numpy(v), layer.axis if isinstance(layer.axis, int) else layer.axis[0]) for layer, v in zip(layers, outputs)]


def _nested_application():
    """The keras.io transfer-learning layout: Input -> frozen MobileNetV2 base (training=False) -> head."""
    set_up(0)
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, include_top=False)
    base.trainable = False
    inputs = keras.Input((32, 32, 3))
    features = L.GlobalAveragePooling2D()(base(inputs, training=False))
    return keras.Model(inputs, L.Dense(3, activation="softmax")(features)), base


IMAGES = np.random.default_rng(8).uniform(-1, 1, (48, 32, 32, 3)).astype("float32")


def test_reestimation_on_a_nested_frozen_application_base_gives_the_inference_statistics():
    model, base = _nested_application()
    layers = [layer for layer in base.layers if isinstance(layer, BN_TYPES)]
    new = reestimate_bn_statistics(model, IMAGES, batch_size=16, tolerance=0.0)  # exact: run to the fixed point
    assert list(new) == [f"{base.name}/{layer.name}" for layer in layers]
    # Untrained, the statistics were (0, 1); now each is what the layer receives at inference, measured by a
    # prefix model of the base (every BN layer of the base is top-level there), so not by the code under test.
    for layer, (mean, variance) in zip(layers, _inference_moments(base, layers, IMAGES)):
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-3, atol=1e-4 * np.sqrt(variance.max()))
        np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-3, atol=1e-6)
    assert not base.trainable and all(not layer.trainable for layer in layers)  # frozen stays frozen


def test_reestimation_in_one_batch_is_exact_after_its_first_pass(monkeypatch):
    """With all of x in one batch, normalising with the batch's statistics *is* the inference network's:
    the second pass only confirms (a deep untrained network in batches of 16 needs about one pass per BN layer)."""
    from bnbook import probes

    passes = []
    original = probes._pass_statistics
    monkeypatch.setattr(probes, "_pass_statistics", lambda *a, **k: passes.append(a[-1]) or original(*a, **k))
    model, base = _nested_application()
    layers = [layer for layer in base.layers if isinstance(layer, BN_TYPES)]
    reestimate_bn_statistics(model, IMAGES)  # 48 images: one batch of the default batch_size
    assert passes == ["batch", "inference"]
    for layer, (mean, variance) in zip(layers, _inference_moments(base, layers, IMAGES)):
        np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-3, atol=1e-6)


def test_reestimation_pools_the_calls_of_a_shared_bn_layer():
    set_up(0)
    inputs = keras.Input((6,))
    shared = L.BatchNormalization(name="shared")
    small = L.Dense(4, name="small")(inputs)
    large = L.Rescaling(3.0)(L.Dense(4, name="large")(inputs))
    model = keras.Model(inputs, L.Concatenate()([shared(small), shared(large)]))
    new = reestimate_bn_statistics(model, X)
    z_small = X @ model.get_layer("small").kernel.numpy() + model.get_layer("small").bias.numpy()
    z_large = 3.0 * (X @ model.get_layer("large").kernel.numpy() + model.get_layer("large").bias.numpy())
    pooled = np.concatenate([z_small, z_large])
    np.testing.assert_allclose(new["shared"][0], pooled.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new["shared"][1], pooled.var(0), rtol=1e-4)
    np.testing.assert_array_equal(model.get_layer("shared").moving_variance.numpy(), new["shared"][1])


def test_reestimation_of_a_shared_bn_layer_after_another_bn_uses_its_new_statistics():
    """bn1 feeds both calls of the shared layer: the shared statistics must be those under bn1's new ones."""
    set_up(0)
    inputs = keras.Input((6,))
    h = L.BatchNormalization(name="bn1")(L.Dense(5, name="d1")(inputs))
    shared = L.BatchNormalization(name="shared")
    a, b = L.Dense(3, name="a")(h), L.Dense(3, name="b")(h)
    model = keras.Model(inputs, L.Add()([shared(a), shared(b)]))
    _randomise(model, np.random.default_rng(4))
    reestimate_bn_statistics(model, X, tolerance=0.0)
    z1 = X @ model.get_layer("d1").kernel.numpy() + model.get_layer("d1").bias.numpy()
    bn1 = model.get_layer("bn1")
    np.testing.assert_allclose(bn1.moving_variance.numpy(), z1.var(0), rtol=1e-4)
    h = _bn_numpy(z1, bn1, z1.mean(0), z1.var(0))
    za = h @ model.get_layer("a").kernel.numpy() + model.get_layer("a").bias.numpy()
    zb = h @ model.get_layer("b").kernel.numpy() + model.get_layer("b").bias.numpy()
    pooled = np.concatenate([za, zb])
    np.testing.assert_allclose(model.get_layer("shared").moving_variance.numpy(), pooled.var(0), rtol=1e-4)


def test_reestimation_of_a_nested_model_never_half_writes():
    model, base = _nested_application()
    deep = [layer for layer in base.layers if isinstance(layer, L.Conv2D)][-1]
    kernel = deep.kernel.numpy()
    kernel[0, 0, 0, 2] = np.inf
    deep.kernel.assign(kernel)
    with assert_model_unchanged(model):
        with pytest.raises(ValueError, match=rf"BN layer '{base.name}/\w+' is not finite on x in channels \[2\]"):
            reestimate_bn_statistics(model, IMAGES)


def test_bn_paths_lists_nested_and_shared_layers_once():
    from bnbook.probes import _bn_paths

    model, base = _nested_application()
    paths = [path for path, _ in _bn_paths(model)]
    assert len(paths) == len(set(paths)) == len([layer for layer in base.layers if isinstance(layer, BN_TYPES)])
    assert all(path.startswith(base.name + "/") for path in paths)
    assert [path for path, _ in _bn_paths(_shared_twice())] == ["shared"]
