"""Train the seeds (and learning rates, and variants) of a comparison together, as parallel branches of one model.

Ten seeds of a small model need not cost ten fits. :func:`train_parallel` trains every
run of a comparison -- each variant, at each learning rate, with each seed -- as one
*branch* of a single computation: the branches of a variant have their variables stacked
along a new first axis, and ``tf.vectorized_map`` runs the variant's own Keras model
(``stateless_call``) over them, so the training step is traced once, as for one model, and
the matrix products of all branches run as one batched product. Nothing is shared between
the branches but the step counter:

- **Initialisation**: branch ``(variant, rate, seed)`` is built by the variant's function
  right after ``set_up(seed)``, exactly as :func:`bnbook.experiments.run_experiments` builds
  a run, so the same seed gives every variant the same initial kernels.
- **Data order**: every branch of seed ``s`` reads its own mini-batches, in the order
  :func:`epoch_order` gives for ``s``: the variants of one seed see the same mini-batches
  (the paired design), different seeds see different ones.
- **Batch statistics**: a branch's BN layers only ever see that branch's activations, so
  its batch statistics and moving averages are exactly those of the model trained alone.
- **Gradients**: the branches' losses are summed, and a branch's slice of the stacked
  variables appears in its own loss only, so each slice receives exactly the gradient it
  would receive alone, and an element-wise optimizer updates it as it would alone. Only
  those are accepted (SGD, Adam, AdamW, RMSprop, Adagrad, Nadam, Adamax, Lion); so are not
  ``clipnorm`` and ``global_clipnorm`` (a norm over all branches), and neither is what the
  stacked step would skip -- ``loss_scale_factor`` and mixed precision,
  variable constraints, ``loss_weights``, a custom ``train_step``/``compute_loss``: each is
  a clear ``ValueError`` before any training.
- **Weight averaging** (``use_ema=True``): the optimizer's moving average of the weights is
  element-wise too, so each slice averages its own branch's weights; at the end of training
  the averages replace the weights, as ``fit`` does (``finalize_variable_values``).
- **Learning rates**: branches at different rates share one optimizer, so a branch's rate
  is applied by scaling its gradient by ``rate / rate_max`` at learning rate
  ``rate_max``. For SGD, with or without (Nesterov) momentum, the update is linear in the
  gradient, so this is the same update as ``rate``; it holds for SGD only, so different
  rates need SGD without ``clipvalue`` or weight decay (a clear ``ValueError`` otherwise).

The unit tests check that a branch reproduces the model trained alone with the same seed and
batches, and that branches do not influence each other. Validation and test metrics are
computed from the branches' predictions in inference mode: the loss is the mean per-example
cross-entropy, the accuracy the share of argmax hits. The test images are evaluated once, at
the end; choices are made on the validation images (:func:`choose_rates`), and
:func:`sweep_rates` scores the test images only at the rates it chose.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import keras
import numpy as np
import pandas as pd

from bnbook._checks import check_int, require_columns
from bnbook.reproducibility import set_up, shifted

__all__ = ["at_rates", "choose_rates", "epoch_order", "sweep_rates", "train_parallel"]

_EPSILON = 1e-7  # Keras's clip of probabilities in cross-entropy (keras/src/backend/config.py: _EPSILON)
_LINEAR_IN_GRADIENT = ("SGD",)
# Optimizers whose update of a variable is element-wise in its gradient and slots (keras/src/optimizers/*.py
# update_step), so a branch's slice of a stacked variable is updated as the model alone would update it.
# Lamb (trust ratio over the whole variable), Adafactor (factored second moments), Muon and LossScaleOptimizer
# (one loss scale for all) are not.
_ELEMENT_WISE = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Nadam", "Adamax", "Lion")
_NONLINEAR_OPTIONS = ("clipvalue", "weight_decay")

Arrays = tuple[np.ndarray, np.ndarray]


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """Return the order in which a run with seed ``seed`` visits ``n`` training examples in ``epoch``.

    A permutation of ``range(n)`` drawn from ``shifted(seed)`` (so ``BNBOOK_SEED_OFFSET``
    moves it) and the 0-based ``epoch``: the same for every variant of a seed, different
    from epoch to epoch and from seed to seed.

    Raises:
        TypeError: An argument is not an int.
        ValueError: ``seed`` or ``epoch`` negative, ``n`` < 1.
    """
    seed = shifted(check_int(seed, "seed", minimum=0))
    epoch = check_int(epoch, "epoch", minimum=0)
    n = check_int(n, "n", minimum=1)
    return np.random.default_rng([seed, epoch]).permutation(n)


def _check_arrays(value: object, what: str) -> Arrays:
    if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(a, np.ndarray) for a in value)):
        raise TypeError(f"{what} must be a tuple (x, y) of NumPy arrays, got {type(value).__name__}")
    x, y = value
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{what} must hold the same number (> 0) of images and labels, got {len(x)} and {len(y)}")
    return x, y


def _rates_per_variant(
    variants: Mapping[str, Callable[[], keras.Model]],
    learning_rates: Sequence[float] | Mapping[str, Sequence[float]] | None,
) -> dict[str, list[float | None]]:
    if learning_rates is None:
        return {name: [None] for name in variants}
    if isinstance(learning_rates, Mapping):
        unknown = [name for name in learning_rates if name not in variants]
        missing = [name for name in variants if name not in learning_rates]
        if unknown or missing:
            raise ValueError(
                f"learning_rates must give rates for exactly the variants {list(variants)}; "
                f"unknown: {unknown}, missing: {missing}"
            )
        grid = {name: list(learning_rates[name]) for name in variants}
    else:
        grid = {name: list(learning_rates) for name in variants}
    for name, rates in grid.items():
        if not rates:
            raise ValueError(f"variant {name!r} has an empty list of learning rates")
        for rate in rates:
            if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)) or not rate > 0:
                raise ValueError(f"learning rates must be numbers > 0, got {rate!r} for variant {name!r}")
        if len(set(rates)) != len(rates):
            raise ValueError(f"variant {name!r} lists a learning rate twice: {rates}")
    return {name: [float(r) for r in rates] for name, rates in grid.items()}


def _compiled_rate(model: keras.Model) -> float:
    rate = model.optimizer.learning_rate
    try:
        value = np.float32(keras.ops.convert_to_numpy(rate))  # a float32 variable
        return float(str(value))  # the shortest decimal that rounds to it: 0.05, not 0.0500000007
    except Exception:  # noqa: BLE001
        raise ValueError(
            f"the optimizer's learning rate must be a number, not a schedule ({type(rate).__name__})"
        ) from None


def _optimizer_config(model: keras.Model) -> dict:
    config = dict(model.optimizer.get_config())
    config.pop("name", None)
    config.pop("learning_rate", None)
    return config


def _cross_entropy_and_accuracy(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean per-example cross-entropy and accuracy; a diverged run (non-finite outputs) scores loss inf."""
    probs = np.asarray(probs, dtype=np.float64)
    finite = np.all(np.isfinite(probs), axis=-1) if probs.ndim == 2 else np.zeros(len(probs), bool)
    rows = probs[finite]
    if probs.ndim != 2 or not np.allclose(rows.sum(axis=1), 1.0, atol=1e-3) or (rows.size and rows.min() < 0):
        raise ValueError(
            "every variant must output class probabilities (a softmax over the last axis), "
            f"got outputs of shape {probs.shape} whose rows do not sum to 1"
        )
    correct = finite & (np.where(finite[:, None], probs, 0.0).argmax(axis=1) == y)
    if not finite.all():
        return float("inf"), float(np.mean(correct))  # diverged: never the best rate, refused by compare_paired
    picked = np.clip(probs[np.arange(len(y)), y], _EPSILON, 1.0)
    return float(-np.mean(np.log(picked))), float(np.mean(correct))


def _check_labels(labels: np.ndarray, what: str) -> None:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{what} labels must be a 1-D array of integer class indices (sparse labels), got dtype "
            f"{labels.dtype} and shape {labels.shape}; for one-hot labels pass labels.argmax(axis=1)"
        )
    if labels.min() < 0:
        raise ValueError(f"{what} labels must be class indices >= 0, got {labels.min()}")


def _same_loss(a: object, b: object) -> bool:
    if isinstance(a, keras.losses.Loss) and isinstance(b, keras.losses.Loss):
        return type(a) is type(b) and a.get_config() == b.get_config()
    return a is b or (isinstance(a, str) and a == b)


def _check_trains_alone_as_in_parallel(model: keras.Model, name: str) -> None:
    """Refuse what the stacked step would silently skip or change (see train_parallel's Raises)."""
    for method in ("train_step", "compute_loss"):
        if getattr(type(model), method) is not getattr(keras.Model, method):
            raise ValueError(
                f"variant {name!r}: the model overrides {method}, which train_parallel does not call "
                f"(it calls the model and its compiled loss); train it alone with fit"
            )
    policies = {model.dtype_policy.name} | {layer.dtype_policy.name for layer in model._flatten_layers()}
    policy = ", ".join(sorted(policies - {"float32"}))
    if policy:
        raise ValueError(
            f"variant {name!r}: dtype policy {policy!r} is not supported (mixed precision scales the loss); use float32"
        )
    constrained = [v.path for v in model.trainable_variables if v.constraint is not None]
    if constrained:
        raise ValueError(
            f"variant {name!r}: variables with constraints ({', '.join(constrained)}) are not supported "
            f"(the stacked variables would be trained unconstrained); remove kernel_constraint/bias_constraint"
        )
    compile_loss = getattr(model, "_compile_loss", None)
    weights = getattr(compile_loss, "_user_loss_weights", None) if compile_loss is not None else None
    if weights is not None:
        raise ValueError(f"variant {name!r}: compile(loss_weights={weights!r}) is not supported; compile without it")


def _check_outputs_are_probabilities(models: list[keras.Model], x: np.ndarray) -> int:
    """Run the untrained models on a few images: outputs must be softmax rows, of one width; return it."""
    widths = set()
    for model in models:
        probs = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), dtype=np.float64)
        if probs.ndim != 2 or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3) or probs.min() < 0:
            raise ValueError(
                "every variant must output class probabilities (a softmax over the last axis, "
                f"e.g. Dense(10, activation='softmax')), got outputs of shape {probs.shape} whose rows do not sum to 1"
            )
        widths.add(probs.shape[1])
    if len(widths) != 1:
        raise ValueError(f"all variants must output the same number of classes, got {sorted(widths)}")
    return widths.pop()


class _StackedTrainer:
    """Train K models of one architecture as one: their variables stacked, the step vectorised.

    ``tf.vectorized_map`` runs the first model's ``stateless_call`` over the stacked
    variables and batches (one slice per branch), so the training graph is traced once, as
    for a single model, and every matrix product of the K branches is one batched product.
    Each slice is exactly what the model computes alone: its own weights, its own batch
    (so BN's batch statistics are the branch's), its own moving-statistics update; the
    gradient of the summed losses with respect to a slice is that slice's own gradient, and
    an element-wise optimizer updates the slice as it would alone.
    """

    def __init__(
        self, models: list[keras.Model], scales: list[float], optimizer: keras.optimizers.Optimizer, x: np.ndarray, y: np.ndarray
    ) -> None:
        import tensorflow as tf  # noqa: PLC0415

        self.models = models
        proto = models[0]
        self.trainable = [
            keras.Variable(np.stack([keras.ops.convert_to_numpy(m.trainable_variables[j]) for m in models]), name=f"stacked_{j}")
            for j in range(len(proto.trainable_variables))
        ]
        self.non_trainable = [
            tf.Variable(np.stack([keras.ops.convert_to_numpy(m.non_trainable_variables[j]) for m in models]))
            for j in range(len(proto.non_trainable_variables))
        ]
        optimizer.build(self.trainable)
        self.optimizer = optimizer
        loss = keras.losses.get(proto.loss) if isinstance(proto.loss, str) else proto.loss
        scale = tf.constant(scales, dtype="float32")

        def branch_loss(args: tuple) -> tuple:
            weights, states, x, y = args
            probs, new_states, extra = proto.stateless_call(weights, states, x, training=True, return_losses=True)
            value = loss(y, probs)
            if value.shape.rank:  # a loss function, not a Loss object: mean over the batch
                value = tf.reduce_mean(value)
            return value + sum(extra), new_states

        k = len(models)
        x_spec = tf.TensorSpec((k, None, *x.shape[1:]), tf.as_dtype(x.dtype))
        y_spec = tf.TensorSpec((k, None, *y.shape[1:]), tf.as_dtype(y.dtype))

        def one_step(x: tf.Tensor, y: tf.Tensor) -> None:
            weights = [v.value for v in self.trainable]
            with tf.GradientTape() as tape:
                tape.watch(weights)
                losses, new_states = tf.vectorized_map(branch_loss, (weights, list(self.non_trainable), x, y))
                total = tf.reduce_sum(losses)
            grads = tape.gradient(total, weights)
            grads = [g * tf.reshape(scale, [-1] + [1] * (len(g.shape) - 1)) for g in grads]
            self.optimizer.apply(grads, self.trainable)
            for variable, value in zip(self.non_trainable, new_states):
                variable.assign(value)

        step = tf.function(one_step, input_signature=[x_spec, y_spec])  # one trace, the last smaller batch included

        @tf.function(input_signature=[tf.TensorSpec((None, *x_spec.shape), x_spec.dtype), tf.TensorSpec((None, *y_spec.shape), y_spec.dtype)])
        def steps(xs: tf.Tensor, ys: tf.Tensor) -> None:
            # Several steps in one call (steps_per_execution): the same step, in order, without Python in between.
            for i in tf.range(tf.shape(xs)[0]):
                one_step(xs[i], ys[i])

        @tf.function(input_signature=[tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype))])
        def predict(x: tf.Tensor) -> tf.Tensor:
            def one(args: tuple) -> tf.Tensor:
                weights, states = args
                return proto.stateless_call(weights, states, x, training=False)[0]

            return tf.vectorized_map(one, ([v.value for v in self.trainable], list(self.non_trainable)))

        self._step, self._steps, self._predict = step, steps, predict

    def step(self, x: np.ndarray, y: np.ndarray) -> None:
        self._step(x, y)

    def steps(self, xs: np.ndarray, ys: np.ndarray) -> None:
        """Take ``len(xs)`` steps, on batches of equal size, in one call."""
        if len(xs) == 1:
            self._step(xs[0], ys[0])
        else:
            self._steps(xs, ys)

    def scores(self, x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
        probs = np.concatenate([np.asarray(self._predict(x[i : i + 1000])) for i in range(0, len(x), 1000)], axis=1)
        return [_cross_entropy_and_accuracy(p, y) for p in probs]

    def finalize(self) -> None:
        """End training as ``fit`` does: with ``use_ema``, the weights become their moving averages."""
        self.optimizer.finalize_variable_values(self.trainable)

    def write_back(self) -> None:
        for stacked, j in ((self.trainable, "trainable_variables"), (self.non_trainable, "non_trainable_variables")):
            for values, *targets in zip([keras.ops.convert_to_numpy(v) for v in stacked], *(getattr(m, j) for m in self.models)):
                for k, target in enumerate(targets):
                    target.assign(values[k])


def train_parallel(
    variants: Mapping[str, Callable[[], keras.Model]],
    seeds: Sequence[int],
    train: Arrays,
    *,
    validation: Arrays,
    test: Arrays | None = None,
    epochs: int,
    batch_size: int = 64,
    learning_rates: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    evaluate_every: int | None = None,
    steps_per_execution: int = 1,
    models: dict[tuple[str, float, int], keras.Model] | None = None,
) -> pd.DataFrame:
    """Train every variant, at every learning rate, with every seed, as branches of one model.

    Args:
        variants: ``{name: build_fn}``; each ``build_fn()`` returns a *compiled* model with
            one input and one softmax output (the chapter's own model: this function only
            trains it). All must use the same optimizer class and settings (their learning
            rates aside); a branch's loss is its model's compiled loss.
        seeds: The seeds; each is a run of every variant (and rate), paired by seed.
        train: ``(x, y)`` to train on (e.g. from :func:`bnbook.data.split_validation`).
        validation: ``(x, y)`` on which the branches are scored after every evaluation
            interval: the data to choose a learning rate or an epoch on.
        test: ``(x, y)`` scored once, after the last step; ``None``: no test columns.
        epochs: Passes over ``train``, >= 1.
        batch_size: Mini-batch size, >= 1 (the last batch of an epoch may be smaller).
        learning_rates: Rates to train every variant at (a sequence), or per variant
            (``{name: rates}``); ``None``: each variant at its compiled rate. Different
            rates need an SGD optimizer (see the module's docstring).
        evaluate_every: Score the validation data every this many steps (it must divide
            the steps of an epoch evenly or not: evaluation also happens at every epoch's
            end); ``None``: at the end of every epoch only.
        steps_per_execution: Training steps run in one call of the traced step (as Keras's
            ``compile(steps_per_execution=...)``), >= 1: the same steps in the same order, with
            fewer Python round trips, which is what small batches cost; the batches of one call
            are gathered at once (memory: this many batches of every branch).
        models: A dict to receive the trained models, keyed ``(variant, learning_rate, seed)``:
            each variant's own model, whose variables the branch trained.

    With an optimizer built with ``use_ema=True``, training ends as Keras's ``fit`` ends
    (``keras/src/backend/tensorflow/trainer.py``, ``finalize_variable_values`` after the
    last epoch): the weights are replaced by their moving averages and the moving
    statistics stay those of the last step. The validation rows score the weights as they
    are during training (the raw ones, as ``fit``'s ``val_*`` history does); the test
    scores and the models returned score what ``fit`` would return.

    Returns:
        A DataFrame, one row per branch and evaluation: ``variant``, ``learning_rate``,
        ``seed``, ``step`` (optimizer steps taken), ``epoch`` (passes over ``train``, a
        float when evaluated within an epoch), ``val_loss`` (mean per-example
        cross-entropy; ``inf`` for a run whose outputs are no longer finite, i.e. diverged),
        ``val_accuracy`` (non-finite outputs count as wrong) and, with ``test``, ``test_loss`` and
        ``test_accuracy`` (filled in the last row of each branch, NaN before).

    Raises:
        TypeError: A variant's function is not callable or does not return a Keras model,
            or the data are not ``(x, y)`` arrays, or an int argument is not an int.
        ValueError: Empty ``variants``/``seeds``, a seed twice, a model not compiled, not
            single-input/single-output or with a learning-rate schedule, optimizers that
            differ between variants or that cannot apply different rates exactly, bad
            rates, labels that are not integer class indices (1-D), or outputs that are
            not probabilities (checked on the untrained models, before any training).
            Also refused, because a branch would not train as the model alone does: an
            optimizer outside the element-wise ones (SGD, Adam, AdamW, RMSprop, Adagrad,
            Nadam, Adamax, Lion), ``loss_scale_factor``, ``clipnorm``/
            ``global_clipnorm``, a dtype policy other than float32 (mixed precision's loss
            scaling), variable constraints, ``loss_weights``, a custom ``train_step`` or
            ``compute_loss``, and models of one variant compiled with different losses.
    """
    if not isinstance(variants, Mapping) or not variants:
        raise ValueError("variants must be a non-empty mapping {'name': build_fn, ...}")
    for name, build in variants.items():
        if not callable(build):
            raise TypeError(f"variant {name!r} must map to a function returning a compiled model, got {build!r}")
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (Sequence, range, np.ndarray)):
        raise TypeError(f"seeds must be a sequence of ints such as range(10) or [0, 1, 2], got {seeds!r}")
    seeds = [check_int(s, "seed", minimum=0) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: pass at least one seed, e.g. range(10)")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    x_fit, y_fit = _check_arrays(train, "train")
    x_val, y_val = _check_arrays(validation, "validation")
    if test is not None:
        x_test, y_test = _check_arrays(test, "test")
    for what, labels in (("train", y_fit), ("validation", y_val), *((("test", y_test),) if test is not None else ())):
        _check_labels(labels, what)
    epochs = check_int(epochs, "epochs", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if models is not None and not isinstance(models, dict):
        raise TypeError(f"models must be a dict to fill, or None; got {type(models).__name__}")
    steps_per_epoch = -(-len(x_fit) // batch_size)
    chunk_steps = steps_per_epoch if evaluate_every is None else check_int(evaluate_every, "evaluate_every", minimum=1)
    per_call = check_int(steps_per_execution, "steps_per_execution", minimum=1)
    full_batches = len(x_fit) // batch_size  # batches of an epoch at full size (the last one may be smaller)
    grid = _rates_per_variant(variants, learning_rates)

    # Build every branch right after set_up(seed): the initialisation the run would have alone.
    branches: list[tuple[str, float, int, keras.Model]] = []
    reference: tuple[str, str, dict] | None = None
    for name, build in variants.items():
        for rate in grid[name]:
            for seed in seeds:
                set_up(seed)
                model = build()
                if not isinstance(model, keras.Model):
                    raise TypeError(f"variant {name!r} returned {type(model).__name__}, not a keras.Model")
                if not model.compiled or model.optimizer is None:
                    raise ValueError(f"variant {name!r} returned a model that is not compiled: call model.compile(...)")
                if len(model.inputs) != 1 or len(model.outputs) != 1:
                    raise ValueError(f"variant {name!r}: the model must have one input and one output")
                _check_trains_alone_as_in_parallel(model, name)
                if branches and branches[-1][0] == name and not _same_loss(model.loss, branches[-1][3].loss):
                    raise ValueError(
                        f"variant {name!r}: its function returned models compiled with different losses "
                        f"({model.loss!r} and {branches[-1][3].loss!r}); the models of one variant must use one loss"
                    )
                signature = (type(model.optimizer).__name__, _optimizer_config(model))
                if reference is None:
                    reference = (name, *signature)
                elif signature != reference[1:]:
                    raise ValueError(
                        f"variants {reference[0]!r} and {name!r} use different optimizers "
                        f"({reference[1]} {reference[2]} vs {signature[0]} {signature[1]}): one model has one optimizer"
                    )
                branches.append((name, _compiled_rate(model) if rate is None else rate, seed, model))
    assert reference is not None
    optimizer_class, config = reference[1], reference[2]
    coupling = [key for key in ("clipnorm", "global_clipnorm") if config.get(key) is not None]
    if coupling:
        raise ValueError(
            f"{' and '.join(coupling)} would couple the branches (one norm over the stacked variables of all "
            f"branches): use clipvalue, or train without it"
        )
    if optimizer_class not in _ELEMENT_WISE:
        raise ValueError(
            f"optimizer {optimizer_class} is not element-wise: its update of a stacked variable would couple the "
            f"branches. Accepted: {', '.join(_ELEMENT_WISE)}"
        )
    if config.get("loss_scale_factor") is not None:
        raise ValueError(
            f"the optimizer's loss_scale_factor={config['loss_scale_factor']!r} is not supported by train_parallel "
            f"(a branch would not train as the model alone); compile without it"
        )
    n_classes = _check_outputs_are_probabilities([model for *_, model in branches], x_val[:8])
    for what, labels in (("train", y_fit), ("validation", y_val), *((("test", y_test),) if test is not None else ())):
        if labels.max() >= n_classes:
            raise ValueError(f"{what} labels must be class indices below {n_classes} (the models' outputs), got {labels.max()}")
    rates = [rate for _, rate, _, _ in branches]
    top = max(rates)
    if len(set(rates)) > 1:
        nonlinear = [key for key in _NONLINEAR_OPTIONS if config.get(key) not in (None, 0, 0.0)]
        if optimizer_class not in _LINEAR_IN_GRADIENT or nonlinear:
            raise ValueError(
                f"branches at different learning rates need an optimizer whose update is linear in the gradient "
                f"(accepted: {', '.join(_LINEAR_IN_GRADIENT)}, without {', '.join(_NONLINEAR_OPTIONS)}); "
                f"got {optimizer_class} with {nonlinear or 'no such option'}. Train each rate with its own call."
            )

    rows: list[dict] = []
    test_scores: dict[int, tuple[float, float]] = {}
    for name in variants:
        group = [i for i, branch in enumerate(branches) if branch[0] == name]
        trainer = _StackedTrainer(
            [branches[i][3] for i in group],
            [branches[i][1] / top for i in group],
            type(branches[0][3].optimizer).from_config({**config, "learning_rate": top}),
            x_fit,
            y_fit,
        )
        seed_of = [seeds.index(branches[i][2]) for i in group]
        step = 0
        for epoch in range(epochs):
            orders = np.stack([epoch_order(seed, epoch, len(x_fit)) for seed in seeds])[seed_of]
            for start in range(0, steps_per_epoch, chunk_steps):
                stop = min(start + chunk_steps, steps_per_epoch)
                batch = start
                while batch < stop:
                    # Full-size batches go per_call at a time; a smaller last batch goes alone.
                    count = 1 if batch >= full_batches else min(per_call, stop - batch, full_batches - batch)
                    index = orders[:, batch * batch_size : (batch + count) * batch_size]
                    index = index.reshape(len(group), count, -1).transpose(1, 0, 2)  # (steps, branches, batch)
                    trainer.steps(x_fit[index], y_fit[index])
                    batch += count
                step = epoch * steps_per_epoch + stop
                for i, (loss, accuracy) in zip(group, trainer.scores(x_val, y_val)):
                    rows.append(
                        {
                            "variant": name,
                            "learning_rate": branches[i][1],
                            "seed": branches[i][2],
                            "step": step,
                            "epoch": step / steps_per_epoch,
                            "val_loss": loss,
                            "val_accuracy": accuracy,
                        }
                    )
        trainer.finalize()  # with use_ema: the averaged weights, as fit leaves them
        if test is not None:
            test_scores.update(zip(group, trainer.scores(x_test, y_test)))
        trainer.write_back()
    if models is not None:
        models.update({(name, rate, seed): model for name, rate, seed, model in branches})
    table = pd.DataFrame(rows)
    if test is not None:
        table["test_loss"] = np.nan
        table["test_accuracy"] = np.nan
        last = table.groupby(["variant", "learning_rate", "seed"], sort=False)["step"].idxmax()
        for i, (name, rate, seed, _) in enumerate(branches):
            table.loc[last[(name, rate, seed)], ["test_loss", "test_accuracy"]] = test_scores[i]
    return table.sort_values(["variant", "learning_rate", "seed", "step"], kind="stable").reset_index(drop=True)


def choose_rates(results: pd.DataFrame, metric: str = "val_loss", *, lower_is_better: bool = True) -> pd.DataFrame:
    """Choose each variant's learning rate on validation data: the best mean of ``metric`` over seeds.

    Uses each run's last row (the end of training). A rate at the edge of the variant's grid
    is flagged: the optimum may lie outside the grid, which must then be extended.

    Args:
        results: A table from :func:`train_parallel` (columns ``variant``, ``learning_rate``,
            ``seed``, ``step`` and ``metric``).
        metric: The validation column to choose on (default ``val_loss``, the mean
            per-example cross-entropy: finer than accuracy).
        lower_is_better: Whether a lower ``metric`` is better (``False`` for accuracy).

    Returns:
        One row per variant (index ``variant``): ``learning_rate`` (the chosen rate),
        ``metric`` (its mean over seeds), ``grid`` (the rates tried, ascending) and
        ``at_edge`` (whether the chosen rate is the smallest or largest tried, with more
        than one rate tried).

    Raises:
        TypeError: ``results`` is not a DataFrame.
        ValueError: A column is missing (the message lists those present), or ``metric``
            is a test column (choices are made on validation data).
    """
    require_columns(results, ("variant", "learning_rate", "seed", "step", metric))
    if metric.startswith("test"):
        raise ValueError(f"choose on validation data, not on {metric!r}: the test images are for the reported result")
    ends = results[results["step"] == results.groupby(["variant", "learning_rate", "seed"])["step"].transform("max")]
    means = ends.groupby(["variant", "learning_rate"], sort=False)[metric].mean()
    rows = {}
    for variant in dict.fromkeys(ends["variant"]):
        scores = means.loc[variant].sort_index()
        best = float(scores.idxmin() if lower_is_better else scores.idxmax())
        grid = [float(r) for r in scores.index]
        rows[variant] = {
            "learning_rate": best,
            metric: float(scores.loc[best]),
            "grid": grid,
            "at_edge": len(grid) > 1 and best in (grid[0], grid[-1]),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "variant"
    return table


def at_rates(results: pd.DataFrame, rates: Mapping[str, float] | pd.Series) -> pd.DataFrame:
    """Return the rows of each variant at its chosen learning rate (e.g. ``choose_rates(...)["learning_rate"]``).

    Raises:
        TypeError: ``results`` is not a DataFrame.
        ValueError: A column is missing, or a variant's rate was not trained.
    """
    require_columns(results, ("variant", "learning_rate"))
    parts = []
    for variant, rate in dict(rates).items():
        rows = results[(results["variant"] == variant) & np.isclose(results["learning_rate"], float(rate))]
        if rows.empty:
            trained = sorted(set(results.loc[results["variant"] == variant, "learning_rate"]))
            raise ValueError(f"variant {variant!r} was not trained at learning rate {rate}; trained: {trained}")
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)


def sweep_rates(
    variants: Mapping[str, Callable[[], keras.Model]],
    seeds: Sequence[int],
    train: Arrays,
    *,
    rates: Sequence[float] | Mapping[str, Sequence[float]],
    metric: str = "val_loss",
    lower_is_better: bool = True,
    max_extensions: int = 3,
    test: Arrays | None = None,
    **kwargs: object,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train a learning-rate grid with :func:`train_parallel` and extend it until each optimum is inside.

    After the grid, every variant whose best rate (on ``metric``, a validation column) is
    the smallest or largest it tried is trained at one more rate beyond that edge, a grid
    step further (the ratio of the two nearest rates), and so on, at most
    ``max_extensions`` times.

    Args:
        variants, seeds, train: As :func:`train_parallel`.
        rates: The starting grid, ascending (for every variant, or ``{name: rates}``), at
            least 2 rates per variant.
        metric, lower_is_better: What to choose on, as :func:`choose_rates`.
        max_extensions: Most extension rounds; a variant still at its edge after them keeps
            ``at_edge`` True in the returned choice, for the chapter to report.
        test: ``(x, y)`` scored once, after the choice, and only at each variant's
            *chosen* rate (every seed): the test images never see the other rates of the
            grid. ``None``: no test columns.
        **kwargs: Passed to :func:`train_parallel` (``validation`` is required;
            ``epochs``, ``batch_size``, ``models``, ...).

    Returns:
        ``(results, chosen)``: every run's table (as :func:`train_parallel`'s; with
        ``test``, ``test_loss`` and ``test_accuracy`` are filled in the last row of each
        run at its variant's chosen rate, NaN elsewhere) and :func:`choose_rates`' table on it.

    Raises:
        TypeError, ValueError: As :func:`train_parallel`; fewer than 2 rates for a variant,
            rates not ascending, or ``max_extensions`` < 0.
    """
    max_extensions = check_int(max_extensions, "max_extensions", minimum=0)
    grid = _rates_per_variant(variants, rates)
    for name, values in grid.items():
        if len(values) < 2 or values != sorted(values):
            raise ValueError(f"variant {name!r}: rates must be at least 2 values in ascending order, got {values}")
    if test is not None:  # refused before any training, as train_parallel would
        x_test, y_test = _check_arrays(test, "test")
        _check_labels(y_test, "test")
    wanted = kwargs.pop("models", None)
    if wanted is not None and not isinstance(wanted, dict):
        raise TypeError(f"models must be a dict to fill, or None; got {type(wanted).__name__}")
    trained: dict[tuple[str, float, int], keras.Model] = {}
    kwargs["models"] = trained
    results = [train_parallel(variants, seeds, train, learning_rates=grid, **kwargs)]  # type: ignore[arg-type]
    chosen = choose_rates(results[0], metric, lower_is_better=lower_is_better)
    for _ in range(max_extensions):
        extend: dict[str, list[float]] = {}
        for name in variants:
            tried = chosen.loc[name, "grid"]
            if chosen.loc[name, "at_edge"]:
                best = chosen.loc[name, "learning_rate"]
                step = tried[-1] / tried[-2] if best == tried[-1] else tried[0] / tried[1]
                extend[name] = [float(f"{best * step:.6g}")]
        if not extend:
            break
        results.append(
            train_parallel({n: variants[n] for n in extend}, seeds, train, learning_rates=extend, **kwargs)  # type: ignore[arg-type]
        )
        chosen = choose_rates(pd.concat(results, ignore_index=True), metric, lower_is_better=lower_is_better)
    table = pd.concat(results, ignore_index=True)
    if test is not None:
        table["test_loss"] = np.nan
        table["test_accuracy"] = np.nan
        last = table.groupby(["variant", "learning_rate", "seed"], sort=False)["step"].idxmax()
        for (name, rate, seed), model in trained.items():
            if np.isclose(rate, chosen.loc[name, "learning_rate"]):
                table.loc[last[(name, rate, seed)], ["test_loss", "test_accuracy"]] = _test_scores(model, x_test, y_test)
    if wanted is not None:
        wanted.update(trained)
    return table.sort_values(["variant", "learning_rate", "seed", "step"], kind="stable").reset_index(drop=True), chosen


def _test_scores(model: keras.Model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """One trained model's loss and accuracy on ``(x, y)``, in inference mode, scored as the branches are."""
    probs = np.concatenate(
        [keras.ops.convert_to_numpy(model(x[i : i + 1000], training=False)) for i in range(0, len(x), 1000)]
    )
    if probs.ndim != 2 or y.max() >= probs.shape[1]:
        raise ValueError(f"test labels must be class indices below {probs.shape[-1]} (the models' outputs), got {y.max()}")
    return _cross_entropy_and_accuracy(probs, y)
