"""bnbook.ensembles: a branch trains exactly like the model alone; branches are independent; choices on validation."""

import keras
import numpy as np
import pandas as pd
import pytest

from bnbook.ensembles import at_rates, choose_rates, epoch_order, train_parallel
from bnbook.reproducibility import set_up

L = keras.layers


@pytest.fixture(scope="module")
def small_data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 12)).astype("float32")
    y = rng.integers(0, 4, size=600)
    x = (centres[y] + rng.normal(scale=1.5, size=(600, 12))).astype("float32")
    return (x[:400], y[:400]), (x[400:500], y[400:500]), (x[500:], y[500:])


def net(optimizer=lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True), bn=True):
    def build():
        layers = [keras.Input((12,)), L.Dense(16, use_bias=not bn)]
        layers += [L.BatchNormalization(momentum=0.9)] if bn else []
        model = keras.Sequential([*layers, L.Activation("relu"), L.Dense(4, activation="softmax")])
        model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy")
        return model

    return build


def alone(build, seed, train, validation, test, *, epochs, batch_size, rate=None):
    """The reference: one model, fit alone on the same batches (epoch_order), scored the same way."""
    set_up(seed)
    model = build()
    if rate is not None:
        model.optimizer.learning_rate = rate
    x, y = train
    for epoch in range(epochs):
        order = epoch_order(seed, epoch, len(x))
        model.fit(x[order], y[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    out = {}
    for name, (xs, ys) in (("val", validation), ("test", test)):
        probs = model.predict(xs, verbose=0).astype(np.float64)
        out[f"{name}_loss"] = float(-np.mean(np.log(np.clip(probs[np.arange(len(ys)), ys], 1e-7, 1))))
        out[f"{name}_accuracy"] = float(np.mean(probs.argmax(1) == ys))
    return out


def last_rows(table):
    return table[table["step"] == table["step"].max()].set_index(["variant", "learning_rate", "seed"])


def test_a_branch_reproduces_the_model_trained_alone(small_data):
    train, val, test = small_data
    variants = {"bn": net(), "plain": net(bn=False)}
    table = train_parallel(variants, [3, 4], train, validation=val, test=test, epochs=2, batch_size=32)
    assert set(table.columns) >= {"variant", "learning_rate", "seed", "step", "epoch", "val_loss", "test_accuracy"}
    assert len(table) == 2 * 2 * 2  # 2 variants x 2 seeds x 2 epochs
    ends = last_rows(table)
    for variant, build in variants.items():
        for seed in (3, 4):
            expected = alone(build, seed, train, val, test, epochs=2, batch_size=32)
            got = ends.loc[(variant, 0.05, seed)]
            for key, value in expected.items():
                assert got[key] == pytest.approx(value, abs=2e-4), (variant, seed, key)


def test_rates_as_loss_weights_reproduce_sgd_at_that_rate(small_data):
    train, val, test = small_data
    table = train_parallel(
        {"bn": net()}, [5], train, validation=val, test=test, epochs=2, batch_size=32, learning_rates=[0.01, 0.1]
    )
    ends = last_rows(table)
    for rate in (0.01, 0.1):
        expected = alone(net(), 5, train, val, test, epochs=2, batch_size=32, rate=rate)
        for key, value in expected.items():
            assert ends.loc[("bn", rate, 5)][key] == pytest.approx(value, abs=2e-4), (rate, key)
    # and the two rates really trained differently
    assert ends.loc[("bn", 0.01, 5), "val_loss"] != pytest.approx(ends.loc[("bn", 0.1, 5), "val_loss"], abs=1e-3)


def test_use_ema_ends_as_fit_does(small_data):
    """With use_ema, each branch averages its own weights and ends with the averages, as fit leaves a model."""
    train, val, test = small_data
    build = net(lambda: keras.optimizers.SGD(0.05, momentum=0.9, use_ema=True, ema_momentum=0.9))
    models, raw_models = {}, {}
    table = train_parallel({"ema": build}, [3, 4], train, validation=val, test=test, epochs=2, batch_size=40, models=models)
    train_parallel({"raw": net(lambda: keras.optimizers.SGD(0.05, momentum=0.9))}, [3], train, validation=val, epochs=2, batch_size=40, models=raw_models)
    ends = last_rows(table)
    x, y = train
    for seed in (3, 4):
        set_up(seed)
        model = build()
        order = np.concatenate([epoch_order(seed, epoch, len(x)) for epoch in range(2)])  # 10 full batches an epoch
        model.fit(x[order], y[order], batch_size=40, epochs=1, shuffle=False, verbose=0)  # one fit: one finalize
        branch = models[("ema", 0.05, seed)]
        for mine, reference in zip(branch.variables, model.variables):
            assert np.allclose(mine.numpy(), reference.numpy(), atol=1e-5), (seed, mine.path)
        probs = model.predict(test[0], verbose=0).astype(np.float64)
        loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(test[1])), test[1]], 1e-7, 1))))
        assert ends.loc[("ema", 0.05, seed), "test_loss"] == pytest.approx(loss, abs=2e-4)
    # the averages really replaced the weights (net() is the same model and optimizer without use_ema)
    averaged, raw = models[("ema", 0.05, 3)].trainable_variables[0], raw_models[("raw", 0.05, 3)].trainable_variables[0]
    assert not np.allclose(averaged.numpy(), raw.numpy(), atol=1e-3)


def test_branches_are_independent(small_data):
    train, val, test = small_data
    kwargs = {"validation": val, "test": test, "epochs": 2, "batch_size": 32}
    with_one = last_rows(train_parallel({"bn": net()}, [0, 1], train, **kwargs))
    with_two = last_rows(train_parallel({"bn": net()}, [0, 2], train, **kwargs))
    alone_0 = last_rows(train_parallel({"bn": net()}, [0], train, **kwargs))
    for other in (with_one, with_two):
        assert np.allclose(other.loc[("bn", 0.05, 0)].to_numpy(float), alone_0.loc[("bn", 0.05, 0)].to_numpy(float), atol=2e-4)
    assert not np.allclose(with_one.loc[("bn", 0.05, 1), "val_loss"], with_two.loc[("bn", 0.05, 2), "val_loss"])


def test_adam_at_one_rate_is_per_branch_too(small_data):
    train, val, test = small_data
    build = net(optimizer=lambda: keras.optimizers.Adam(3e-3))
    ends = last_rows(train_parallel({"adam": build}, [0, 1], train, validation=val, test=test, epochs=1, batch_size=32))
    expected = alone(build, 1, train, val, test, epochs=1, batch_size=32)
    assert ends.loc[("adam", 3e-3, 1), "val_loss"] == pytest.approx(expected["val_loss"], abs=2e-4)


def test_a_branch_with_dropout_draws_the_masks_of_the_model_alone(small_data):
    train, val, test = small_data

    def build():
        model = keras.Sequential(
            [keras.Input((12,)), L.Dense(16), L.BatchNormalization(), L.Activation("relu"), L.Dropout(0.5), L.Dense(4, activation="softmax")]
        )
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy")
        return model

    ends = last_rows(train_parallel({"drop": build}, [0, 1], train, validation=val, test=test, epochs=2, batch_size=32))
    for seed in (0, 1):
        expected = alone(build, seed, train, val, test, epochs=2, batch_size=32)
        for key, value in expected.items():
            assert ends.loc[("drop", 0.05, seed), key] == pytest.approx(value, abs=2e-4), (seed, key)


def test_the_models_written_back_reproduce_the_table(small_data):
    train, val, _ = small_data
    models = {}
    table = train_parallel({"bn": net()}, [0, 1], train, validation=val, epochs=1, batch_size=32, learning_rates=[0.01, 0.05], models=models)
    ends = last_rows(table)
    assert set(models) == {("bn", rate, seed) for rate in (0.01, 0.05) for seed in (0, 1)}
    x, y = val
    for key, model in models.items():
        probs = model.predict(x, verbose=0).astype(np.float64)
        loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1))))
        assert loss == pytest.approx(ends.loc[key, "val_loss"], abs=1e-5), key
    assert len({round(ends.loc[key, "val_loss"], 4) for key in models}) == 4  # four different models


def test_evaluate_every_gives_a_learning_curve(small_data):
    train, val, _ = small_data
    table = train_parallel({"bn": net()}, [0], train, validation=val, epochs=2, batch_size=32, evaluate_every=5)
    steps_per_epoch = 13  # 400 / 32, rounded up
    assert table["step"].tolist() == [5, 10, 13, 18, 23, 26]
    assert table["epoch"].iloc[-1] == 2.0 and table["epoch"].iloc[2] == pytest.approx(13 / steps_per_epoch)
    assert "test_loss" not in table.columns


def test_epoch_order_is_a_seeded_permutation(monkeypatch):
    a = epoch_order(0, 0, 50)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, epoch_order(0, 0, 50))
    assert not np.array_equal(a, epoch_order(0, 1, 50)) and not np.array_equal(a, epoch_order(1, 0, 50))
    monkeypatch.setenv("BNBOOK_SEED_OFFSET", "7")
    assert np.array_equal(epoch_order(0, 0, 50), np.random.default_rng([7, 0]).permutation(50))
    with pytest.raises(ValueError, match="epoch"):
        epoch_order(0, -1, 5)


class _no_training:
    """Bad input must be refused before the first training step (not after the whole run)."""

    def __enter__(self):
        from bnbook import ensembles

        self._saved = ensembles._StackedTrainer.step
        ensembles._StackedTrainer.step = lambda *_: pytest.fail("trained before refusing bad input")

    def __exit__(self, *exc):
        from bnbook import ensembles

        ensembles._StackedTrainer.step = self._saved
        return False


def constrained():
    model = keras.Sequential([keras.Input((12,)), L.Dense(16, kernel_constraint=keras.constraints.MaxNorm(0.3)), L.Dense(4, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    return model


def mixed():
    keras.config.set_dtype_policy("mixed_float16")  # compile wraps the optimizer in a LossScaleOptimizer
    try:
        model = keras.Sequential([keras.Input((12,)), L.Dense(16), L.Dense(4, activation="softmax", dtype="float32")])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    finally:
        keras.config.set_dtype_policy("float32")
    return model


class _CustomStep(keras.Sequential):
    def train_step(self, data):  # pragma: no cover - refused before it could run
        return super().train_step(data)


class _CustomLoss(keras.Sequential):
    def compute_loss(self, *args, **kwargs):  # pragma: no cover - refused before it could run
        return super().compute_loss(*args, **kwargs)


def _subclassed(cls):
    def build():
        model = cls([keras.Input((12,)), L.Dense(4, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
        return model

    return build


custom_step, custom_loss = _subclassed(_CustomStep), _subclassed(_CustomLoss)


def weighted():
    model = keras.Sequential([keras.Input((12,)), L.Dense(4, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy", loss_weights=0.5)
    return model


def changing_loss():
    calls = []

    def build():
        calls.append(1)
        model = keras.Sequential([keras.Input((12,)), L.Dense(4, activation="softmax")])
        loss = "sparse_categorical_crossentropy" if len(calls) == 1 else keras.losses.SparseCategoricalCrossentropy(ignore_class=0)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
        return model

    return build


@pytest.mark.parametrize(
    ("variants", "kwargs", "error", "words"),
    [
        ({}, {}, ValueError, ["non-empty"]),
        ({"a": 3}, {}, TypeError, ["'a'", "function"]),
        ({"a": lambda: keras.Sequential([keras.Input((12,)), L.Dense(4, activation="softmax")])}, {}, ValueError, ["not compiled"]),
        ({"a": lambda: L.Dense(4)}, {}, TypeError, ["Dense", "keras.Model"]),
        ({"a": net(lambda: keras.optimizers.Adam(1e-3))}, {"learning_rates": [1e-3, 1e-2]}, ValueError, ["linear in the gradient", "SGD"]),
        ({"a": net(lambda: keras.optimizers.SGD(0.1, clipnorm=1.0))}, {"learning_rates": [0.1, 0.3]}, ValueError, ["clipnorm"]),
        ({"a": net(lambda: keras.optimizers.SGD(0.1, global_clipnorm=1.0))}, {}, ValueError, ["global_clipnorm"]),
        ({"a": net(), "b": net(lambda: keras.optimizers.Adam(1e-3))}, {}, ValueError, ["'a'", "'b'", "different optimizers"]),
        ({"a": net()}, {"learning_rates": [0.1, -1.0]}, ValueError, ["> 0", "-1.0"]),
        ({"a": net()}, {"learning_rates": [0.1, 0.1]}, ValueError, ["twice"]),
        ({"a": net()}, {"learning_rates": {"b": [0.1]}}, ValueError, ["unknown: ['b']", "missing: ['a']"]),
        ({"a": net()}, {"seeds": [1, 1]}, ValueError, ["distinct"]),
        ({"a": net()}, {"seeds": []}, ValueError, ["seeds is empty"]),
        ({"a": net()}, {"epochs": 0}, ValueError, ["epochs", ">= 1"]),
        ({"a": net()}, {"train": ([1, 2], [1, 2])}, TypeError, ["train", "NumPy"]),
        # E1-E5 of the review: each would train, but not as the model alone (or crash after the run)
        ({"a": net(lambda: keras.optimizers.SGD(0.05, loss_scale_factor=128.0))}, {}, ValueError, ["loss_scale_factor=128.0"]),
        ({"a": net(lambda: keras.optimizers.Lamb(1e-3))}, {}, ValueError, ["Lamb", "element-wise", "AdamW", "Lion"]),
        ({"a": net(lambda: keras.optimizers.Adafactor(1e-3))}, {}, ValueError, ["Adafactor", "element-wise"]),
        ({"a": constrained}, {}, ValueError, ["constraints", "kernel"]),
        ({"a": mixed}, {}, ValueError, ["mixed_float16", "float32"]),
        ({"a": custom_step}, {}, ValueError, ["train_step"]),
        ({"a": custom_loss}, {}, ValueError, ["compute_loss"]),
        ({"a": weighted}, {}, ValueError, ["loss_weights=0.5"]),
        ({"a": changing_loss()}, {"seeds": [0, 1]}, ValueError, ["'a'", "different losses"]),
        ({"a": net()}, {"seeds": 3}, TypeError, ["seeds", "3", "range(10)"]),
        ({"a": net()}, {"train": "one-hot"}, ValueError, ["train labels", "shape (400, 4)", "argmax"]),
        ({"a": net()}, {"validation": "float"}, ValueError, ["validation labels", "float", "integer"]),
        ({"a": net()}, {"validation": "too many classes"}, ValueError, ["below 4", "7"]),
        ({"a": lambda: keras.Sequential([keras.Input((12,)), L.Dense(4)])}, {}, None, None),
    ],
)
def test_bad_input_is_refused_clearly(small_data, variants, kwargs, error, words):
    train, val, _ = small_data
    arguments = {"seeds": [0], "train": train, "validation": val, "epochs": 1, **kwargs}
    if error is None:  # a model that outputs logits: it trains, but its outputs are not probabilities
        def build():
            model = variants["a"]()
            model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            return model

        with pytest.raises(ValueError, match="class probabilities"), _no_training():
            train_parallel({"a": build}, **arguments)
        return
    if arguments["train"] == "one-hot":
        arguments["train"] = (train[0], np.eye(4, dtype="float32")[train[1]])
    if arguments["validation"] == "float":
        arguments["validation"] = (val[0], val[1].astype("float32"))
    elif arguments["validation"] == "too many classes":
        arguments["validation"] = (val[0], np.where(np.arange(len(val[1])) == 5, 7, val[1]))
    seeds = arguments.pop("seeds")
    data = arguments.pop("train")
    with pytest.raises(error) as info, _no_training():
        train_parallel(variants, seeds, data, **arguments)
    assert all(w in str(info.value) for w in words), info.value


def test_choose_rates_on_validation_and_flags_the_edge():
    rows = []
    for variant, losses in (("a", {0.01: 0.5, 0.03: 0.3, 0.1: 0.4}), ("b", {0.01: 0.5, 0.03: 0.4, 0.1: 0.3})):
        for rate, loss in losses.items():
            for seed in (0, 1):
                rows.append({"variant": variant, "learning_rate": rate, "seed": seed, "step": 1, "val_loss": 9.0, "val_accuracy": 0.0})
                rows.append({"variant": variant, "learning_rate": rate, "seed": seed, "step": 2, "val_loss": loss + seed / 100, "val_accuracy": 1 - loss})
    table = pd.DataFrame(rows)
    chosen = choose_rates(table)
    assert chosen.loc["a", "learning_rate"] == 0.03 and not chosen.loc["a", "at_edge"]
    assert chosen.loc["b", "learning_rate"] == 0.1 and chosen.loc["b", "at_edge"]
    assert chosen.loc["a", "val_loss"] == pytest.approx(0.305)
    assert choose_rates(table, "val_accuracy", lower_is_better=False).loc["a", "learning_rate"] == 0.03
    picked = at_rates(table, chosen["learning_rate"])
    assert set(zip(picked["variant"], picked["learning_rate"])) == {("a", 0.03), ("b", 0.1)}
    with pytest.raises(ValueError, match="validation data"):
        choose_rates(table.assign(test_loss=0.0), "test_loss")
    with pytest.raises(ValueError, match="not trained at learning rate 0.3; trained"):
        at_rates(table, {"a": 0.3})


def test_sweep_rates_extends_a_grid_whose_best_is_at_its_edge(small_data):
    from bnbook.ensembles import sweep_rates

    train, val, test = small_data
    models = {}
    # 1e-4 and 3e-4 are far too small for 1 epoch: the best is at the top edge, so the sweep extends upwards
    results, chosen = sweep_rates(
        {"bn": net()}, [0], train, validation=val, test=test, epochs=1, batch_size=32,
        rates=[1e-4, 3e-4], max_extensions=2, models=models,
    )
    tried = chosen.loc["bn", "grid"]
    assert tried[:2] == [1e-4, 3e-4] and len(tried) == 4 and tried[2] == pytest.approx(9e-4)
    assert set(results["learning_rate"]) == set(tried)
    assert set(models) == {("bn", rate, 0) for rate in tried}
    assert all(isinstance(m, keras.Model) for m in models.values())
    with pytest.raises(ValueError, match="ascending"):
        sweep_rates({"bn": net()}, [0], train, validation=val, epochs=1, rates=[0.1, 0.01])


def test_a_diverged_run_scores_infinite_loss_and_is_never_chosen(small_data):
    from bnbook.ensembles import _cross_entropy_and_accuracy

    probs = np.array([[0.9, 0.1], [np.nan, np.nan], [0.2, 0.8]])
    loss, accuracy = _cross_entropy_and_accuracy(probs, np.array([0, 0, 1]))
    assert loss == float("inf") and accuracy == pytest.approx(2 / 3)
    train, val, _ = small_data
    table = train_parallel({"bn": net(bn=False)}, [0], train, validation=val, epochs=1, batch_size=32, learning_rates=[0.05, 1e4])
    ends = last_rows(table)
    assert ends.loc[("bn", 1e4, 0), "val_loss"] == float("inf")
    assert choose_rates(table).loc["bn", "learning_rate"] == 0.05
    alone_run = last_rows(train_parallel({"bn": net(bn=False)}, [0], train, validation=val, epochs=1, batch_size=32))
    assert ends.loc[("bn", 0.05, 0), "val_loss"] == pytest.approx(alone_run.loc[("bn", 0.05, 0), "val_loss"], abs=2e-4)


def test_sweep_rates_scores_the_test_images_at_the_chosen_rate_only(small_data):
    from bnbook.ensembles import sweep_rates

    train, val, test = small_data
    models = {}
    results, chosen = sweep_rates(
        {"a": net(), "b": net(bn=False)}, [0, 1], train, validation=val, test=test, epochs=1, batch_size=32,
        rates=[0.003, 0.03, 0.3], max_extensions=0, models=models,
    )
    ends = last_rows(results)
    scored = ends[ends["test_accuracy"].notna()]
    picked = {(v, r) for v, r, _ in scored.index}
    assert picked == {(v, chosen.loc[v, "learning_rate"]) for v in ("a", "b")}  # one rate per variant
    assert len(scored) == 4 and results["test_loss"].notna().sum() == 4  # every seed, once
    assert len(models) == 2 * 3 * 2  # every model still returned
    for variant in ("a", "b"):  # the same scores as train_parallel's test= at that rate alone
        rate = chosen.loc[variant, "learning_rate"]
        build = {"a": net(), "b": net(bn=False)}[variant]
        ref = last_rows(train_parallel({variant: build}, [0, 1], train, validation=val, test=test, epochs=1,
                                       batch_size=32, learning_rates=[rate]))
        for seed in (0, 1):
            key = (variant, rate, seed)
            assert scored.loc[key, "test_loss"] == pytest.approx(ref.loc[key, "test_loss"], abs=1e-5)
            assert scored.loc[key, "test_accuracy"] == pytest.approx(ref.loc[key, "test_accuracy"], abs=0.011)
    no_test, _ = sweep_rates({"a": net()}, [0], train, validation=val, epochs=1, batch_size=32, rates=[0.01, 0.1])
    assert "test_loss" not in no_test.columns
    with pytest.raises(ValueError, match="test labels"):
        sweep_rates({"a": net()}, [0], train, validation=val, test=(test[0], test[1].astype("float32")),
                    epochs=1, batch_size=32, rates=[0.01, 0.1])
    with pytest.raises(TypeError, match="models must be a dict"):
        sweep_rates({"a": net()}, [0], train, validation=val, epochs=1, batch_size=32, rates=[0.01, 0.1], models=[])


class _UniformNoise(L.Layer):
    """x * (1 + r), r uniform on [-b, b], in training (chapter 7's Uout): a custom layer with its own SeedGenerator."""

    def __init__(self, b, **kwargs):
        super().__init__(**kwargs)
        self.b = b
        self.seed_generator = keras.random.SeedGenerator(None)

    def call(self, x, training=False):
        if not training:
            return x
        return x * (1.0 + keras.random.uniform(keras.ops.shape(x), -self.b, self.b, seed=self.seed_generator))


@pytest.mark.parametrize("noise", [lambda: L.Dropout(0.5), lambda: _UniformNoise(0.5)], ids=["dropout", "custom-uniform"])
def test_noise_before_bn_draws_each_seeds_own_noise_as_alone(small_data, noise):
    """Noise right before BN (chapter 7's orderings): each branch draws the noise the model alone would draw,
    with a different draw per seed (the moving variance depends on it, so a shared draw would show)."""
    train, val, test = small_data

    def build():
        layers = [keras.Input((12,)), L.Dense(16, use_bias=False), noise(), L.BatchNormalization(momentum=0.9)]
        model = keras.Sequential([*layers, L.Activation("relu"), L.Dense(4, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy")
        return model

    models = {}
    ends = last_rows(
        train_parallel({"noisy": build}, [0, 1], train, validation=val, test=test, epochs=2, batch_size=32, models=models)
    )
    for seed in (0, 1):
        expected = alone(build, seed, train, val, test, epochs=2, batch_size=32)
        for key, value in expected.items():
            assert ends.loc[("noisy", 0.05, seed), key] == pytest.approx(value, abs=2e-4), (seed, key)
    seeds_state = [
        [keras.ops.convert_to_numpy(v) for v in models[("noisy", 0.05, s)].non_trainable_variables if "seed" in v.path]
        for s in (0, 1)
    ]
    assert seeds_state[0] and not np.array_equal(seeds_state[0][0], seeds_state[1][0])  # each seed its own generator


def test_steps_per_execution_takes_the_same_steps(small_data):
    # 400 images in batches of 32: 12 full batches and a last one of 16, so calls of 5 steps
    # end early at the epoch's last full batch and the small batch runs alone.
    train, val, test = small_data
    kwargs = {"validation": val, "test": test, "epochs": 2, "batch_size": 32, "learning_rates": [0.01, 0.1]}
    one = last_rows(train_parallel({"bn": net()}, [0, 1], train, **kwargs))
    five = last_rows(train_parallel({"bn": net()}, [0, 1], train, steps_per_execution=5, **kwargs))
    assert np.allclose(one.to_numpy(float), five.to_numpy(float), atol=2e-5)
    with pytest.raises(ValueError, match="steps_per_execution"):
        train_parallel({"bn": net()}, [0], train, steps_per_execution=0, **kwargs)
