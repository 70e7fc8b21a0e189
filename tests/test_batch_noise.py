"""bnbook.batch_noise: the spread of batch statistics (against theory and numpy) and the sweep runner."""

import keras
import numpy as np
import pandas as pd
import pytest

from bnbook.batch_noise import batch_statistics_spread, sweep_batch_sizes
from bnbook.reproducibility import set_up
from bnbook.training import train

rng = np.random.default_rng(0)
GAUSS = rng.normal(loc=3.0, scale=2.0, size=(20000, 4))


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
    x = rng.normal(size=(50, 3, 3, 2))
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


X = rng.normal(size=(48, 4)).astype("float32")
Y = (X[:, 0] > 0).astype("int64")
DATA = ((X, Y), (X[:16], Y[:16]))


def _model(bn=True):
    layers = [keras.Input((4,)), keras.layers.Dense(8, use_bias=not bn)]
    if bn:
        layers.append(keras.layers.BatchNormalization(momentum=0.9))
    model = keras.Sequential([*layers, keras.layers.Activation("relu"), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_sweep_equals_fresh_runs_with_the_chosen_learning_rates():
    table = sweep_batch_sizes({"BN": _model}, [4, 16], [1], DATA, epochs=2, learning_rate=lambda b: 0.01 * b)
    assert list(table.columns[:4]) == ["variant", "batch_size", "learning_rate", "seed"]
    assert len(table) == 2 * 2  # 2 batch sizes x 2 epochs
    assert table.groupby("batch_size")["learning_rate"].first().tolist() == pytest.approx([0.04, 0.16])
    for size in (4, 16):
        for seed in (1,):
            set_up(seed)
            fresh = _model()
            fresh.optimizer.learning_rate = 0.01 * size
            expected = train(fresh, X, Y, epochs=2, batch_size=size)
            test_loss = fresh.evaluate(*DATA[1], verbose=0)[0]
            got = table[(table["batch_size"] == size) & (table["seed"] == seed)]
            np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)
            assert np.isnan(got["test_loss"].iloc[0])  # test metrics: last epoch only
            assert got["test_loss"].iloc[-1] == pytest.approx(test_loss, rel=1e-5)
            assert 0 <= got["test_accuracy"].iloc[-1] <= 1


def test_sweep_keeps_trained_models_on_request():
    table, models = sweep_batch_sizes(
        {"BN": _model}, [8], [0], DATA, epochs=1, learning_rate=lambda b: 0.1, keep_models=True
    )
    assert isinstance(table, pd.DataFrame)
    assert list(models) == [("BN", 8, 0)]
    loss = models[("BN", 8, 0)].evaluate(*DATA[1], verbose=0)[0]
    assert loss == pytest.approx(table["test_loss"].iloc[-1], rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"variants": {}}, ValueError, "variants is empty"),
        ({"batch_sizes": []}, ValueError, "batch_sizes is empty"),
        ({"seeds": []}, ValueError, "seeds is empty"),
        ({"batch_sizes": [0]}, ValueError, "batch size"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"eval_batch_size": 0}, ValueError, "eval_batch_size"),
        ({"learning_rate": 0.1}, TypeError, "learning_rate"),
        ({"learning_rate": lambda b: 0.0}, ValueError, "> 0"),
        ({"variants": {"x": 3}}, TypeError, "variant 'x'"),
    ],
)
def test_sweep_refuses_bad_input(kwargs, error, match):
    args = {"variants": {"BN": _model}, "batch_sizes": [8], "seeds": [0], "epochs": 1, "learning_rate": lambda b: 0.1}
    args.update(kwargs)
    variants, sizes, seeds = args.pop("variants"), args.pop("batch_sizes"), args.pop("seeds")
    with pytest.raises(error, match=match):
        sweep_batch_sizes(variants, sizes, seeds, DATA, **args)
