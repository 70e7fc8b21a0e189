"""Out-of-sample validation of bnbook.doctor (issue 23, item 10): broken models it was not tuned on.

Calibration vs test. The doctor's thresholds were set on the book's 784-64-64-10 MLPs
(chapter 10) and on ``tests/test_doctor.py``'s 12-feature MLPs, plus one choice made
before this suite existed: the per-channel band (4x the variance, one standard
deviation of the mean, more than 5 % of the channels), chosen so that 3 of 32 broken
channels are found in ``tests/test_doctor_real.py``'s CNN. The models below were
written after, each with the finding its break must produce, and run with the
defaults: out of sample for those rules. Not for three rules that came after models
of this suite had been seen -- the ``below_bands`` rule (added in this suite's own
commit, d1f0e7c, "found on the out-of-sample CNN"), the single broken-channel rule
and the gap's standard error over batches (added after a review that had run this
suite): for them this suite is calibration; the held-out set is
``tests/test_doctor_heldout.py``.

Families (small inputs, few images, to keep the suite fast): a CNN channels-last
(``cnn_last``), a CNN channels-first (``cnn_first``), a Conv1D model (``conv1d``), a
GRU model with BN on its sequence (``rnn``), a transfer-learning layout with the BN
two models down (``transfer``: ``Input -> base -> inner -> BN``), a two-headed model
(``heads``: softmax class + sigmoid flag), and ``keras.applications`` MobileNetV2
(alpha 0.35), ResNet50 and EfficientNetB0 at 32 x 32 with ``weights=None`` (the
slowest tests, named ``test_applications_slow_*``). The trained families use
``momentum=0.9`` so that a few dozen steps give converged statistics.

Hit/miss table (22 broken models, 6 healthy; 21 hits, 1 partial miss, 6 of 6 healthy clean):

==================  ============================================  =============================
model               break                                         expected finding (result)
==================  ============================================  =============================
cnn_last            NaN in one channel of a moving variance      non_finite (hit)
cnn_first           inf in gamma                                  non_finite (hit)
conv1d              moving mean +3 std in every channel           stale_statistics (hit)
rnn                 3 of 16 channels' moving variance x100        stale_statistics (hit)
transfer            BN two levels down reset to (0, 1)            never_updated (hit)
transfer            base(x, training=False), BN trainable         training_false_override (hit)
heads               moving variance /30 in the trunk (klass and   stale_statistics named, but
                    flag outputs)                                 only info: partial miss (2)
heads               trunk moving mean -2 std, output="flag"       stale_statistics (hit)
cnn_last            trained 3 steps at momentum 0.99 (lag)        stale_statistics (hit)
cnn_first           momentum=0.1 (PyTorch's convention)           pytorch_momentum (hit)
conv1d              epsilon larger than the variances             large_epsilon (hit, info alone)
cnn_last            Adam(use_ema=True)                            weight_ema (hit)
conv1d              Dropout(0.5) before BN, trained               dropout_variance_shift (hit)
transfer            BN frozen after fit, no compile()             frozen_but_training (hit)
rnn                 NaN in one channel of the moving mean         non_finite (hit)
cnn_first           moving statistics of both layers lagging      stale_statistics (hit)
MobileNetV2         untrained (statistics at 0, 1)                never_updated (hit)
MobileNetV2         NaN in one deep layer's moving variance       non_finite, that layer (hit)
MobileNetV2 nested  lagging statistics in the nested base         stale_statistics (hit)
ResNet50            one deep layer's variance x25 (others fine)   stale_statistics, that layer (hit)
EfficientNetB0      one layer's mean +2 std (others fine)         stale_statistics, that layer (hit)
EfficientNetB0      momentum=0.1 in every BN layer                pytorch_momentum (hit)
healthy x 6         cnn_last, cnn_first, conv1d, rnn, transfer,   no error, no warning
                    heads, trained; diagnosed on another draw     (6 of 6 clean)
==================  ============================================  =============================
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import keras
import numpy as np
import pytest

from bnbook import doctor
from bnbook.doctor import diagnose, static_checks
from bnbook.probes import BN_TYPES, reestimate_bn_statistics

L = keras.layers
N = 96


def _data(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs far from (0, 1) and a learnable two-class label."""
    gen = np.random.default_rng(seed)
    x = (1.5 + 2.0 * gen.standard_normal((N, *shape))).astype("float32")
    y = np.arange(N) % 2
    flat = x.reshape(N, -1)
    flat[y == 1, : flat.shape[1] // 2] += 1.5  # a clear margin: class 1 has a larger mean in the first half
    return flat.reshape(x.shape), y


def _compile(model: keras.Model, loss: object = "sparse_categorical_crossentropy", **opt: object) -> keras.Model:
    opt.setdefault("learning_rate", 0.005)
    model.compile(optimizer=keras.optimizers.Adam(**opt), loss=loss)
    return model


def cnn_last(momentum: float = 0.9) -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    h = L.ReLU()(L.BatchNormalization(momentum=momentum, name="bn1")(L.Conv2D(32, 3, padding="same", use_bias=False)(inputs)))
    h = L.ReLU()(L.BatchNormalization(momentum=momentum, name="bn2")(L.Conv2D(16, 3, use_bias=False)(h)))
    return keras.Model(inputs, L.Dense(2, activation="softmax")(L.GlobalAveragePooling2D()(h)), name="cnn_last")


def cnn_first(momentum: float = 0.9) -> keras.Model:
    inputs = keras.Input((3, 8, 8))
    conv = functools.partial(L.Conv2D, data_format="channels_first", use_bias=False)
    h = L.ReLU()(L.BatchNormalization(axis=1, momentum=momentum, name="bn1")(conv(16, 3, padding="same")(inputs)))
    h = L.ReLU()(L.BatchNormalization(axis=1, momentum=momentum, name="bn2")(conv(8, 3)(h)))
    h = L.GlobalAveragePooling2D(data_format="channels_first")(h)
    return keras.Model(inputs, L.Dense(2, activation="softmax")(h), name="cnn_first")


def conv1d(momentum: float = 0.9, dropout: float = 0.0) -> keras.Model:
    inputs = keras.Input((16, 4))
    h = L.Dropout(dropout, seed=3)(inputs) if dropout else inputs
    h = L.ReLU()(L.BatchNormalization(momentum=momentum, name="bn1")(L.Conv1D(16, 3, use_bias=False)(h)))
    h = L.Dropout(dropout, seed=4)(h) if dropout else h
    h = L.ReLU()(L.BatchNormalization(momentum=momentum, name="bn2")(L.Conv1D(8, 3, use_bias=False)(h)))
    return keras.Model(inputs, L.Dense(2, activation="softmax")(L.GlobalAveragePooling1D()(h)), name="conv1d")


def rnn(momentum: float = 0.9) -> keras.Model:
    inputs = keras.Input((10, 3))
    h = L.BatchNormalization(momentum=momentum, name="bn1")(L.GRU(16, return_sequences=True)(inputs))
    h = L.BatchNormalization(momentum=momentum, name="bn2")(L.GRU(8)(h))
    return keras.Model(inputs, L.Dense(2, activation="softmax")(h), name="rnn")


def transfer(momentum: float = 0.9, training_false: bool = False) -> keras.Model:
    inner = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(16, 3, use_bias=False), L.BatchNormalization(momentum=momentum, name="bn"), L.ReLU()],
        name="inner",
    )
    base_in = keras.Input((8, 8, 3))
    base = keras.Model(base_in, L.GlobalAveragePooling2D()(inner(base_in)), name="base")
    inputs = keras.Input((8, 8, 3))
    features = base(inputs, training=False) if training_false else base(inputs)
    return keras.Model(inputs, L.Dense(2, activation="softmax")(features), name="transfer")


def heads(momentum: float = 0.9) -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    h = L.ReLU()(L.BatchNormalization(momentum=momentum, name="trunk_bn")(L.Conv2D(16, 3, use_bias=False)(inputs)))
    h = L.GlobalAveragePooling2D()(h)
    klass = L.Dense(2, activation="softmax", name="klass")(h)
    flag = L.Dense(1, activation="sigmoid", name="flag")(h)
    return keras.Model(inputs, [klass, flag], name="heads")


SHAPES = {"cnn_last": (8, 8, 3), "cnn_first": (3, 8, 8), "conv1d": (16, 4), "rnn": (10, 3), "transfer": (8, 8, 3), "heads": (8, 8, 3)}
BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "cnn_last": cnn_last, "cnn_first": cnn_first, "conv1d": conv1d, "rnn": rnn, "transfer": transfer, "heads": heads
}


def _fit(model: keras.Model, x: np.ndarray, y: np.ndarray, epochs: int, **opt: object) -> keras.Model:
    if model.name == "heads":
        opt.setdefault("learning_rate", 0.005)
        model.compile(optimizer=keras.optimizers.Adam(**opt), loss=["sparse_categorical_crossentropy", "binary_crossentropy"])
        model.fit(x, [y, y], batch_size=16, epochs=epochs, verbose=0)
    else:
        _compile(model, **opt).fit(x, y, batch_size=16, epochs=epochs, verbose=0)
    return model


@functools.lru_cache(maxsize=None)
def trained(name: str) -> keras.Model:
    keras.utils.set_random_seed(7)
    x, y = _data(SHAPES[name])
    model = _fit(BUILDERS[name](), x, y, epochs=12)  # 72 steps at momentum 0.9
    return _fit(model, x, y, epochs=4, learning_rate=0.0005)  # then settle: the statistics catch up


def _fresh(name: str) -> keras.Model:
    """A copy of the trained model (so that breaking it leaves the cached one alone)."""
    source = trained(name)
    model = keras.models.clone_model(source)
    model.set_weights(source.get_weights())
    return _fit_compile_only(model)


def _fit_compile_only(model: keras.Model) -> keras.Model:
    if model.name == "heads":
        model.compile(optimizer="adam", loss=["sparse_categorical_crossentropy", "binary_crossentropy"])
    else:
        _compile(model)
    return model


def _bn(model: keras.Model, path: str) -> keras.layers.Layer:
    return dict(doctor._bn_paths(model))[path]


def _set(bn: keras.layers.Layer, name: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    variable = getattr(bn, name)
    variable.assign(change(variable.numpy().copy()).astype(variable.numpy().dtype))


def _nan_at(index: int) -> Callable[[np.ndarray], np.ndarray]:
    def change(values: np.ndarray) -> np.ndarray:
        values[index] = np.nan
        return values

    return change


def _channels_times(indices: list[int], factor: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(values: np.ndarray) -> np.ndarray:
        values[indices] *= factor
        return values

    return change


def _run(name: str, model: keras.Model, seed: int = 0, **kwargs: object) -> doctor.Report:
    x, y = _data(SHAPES[name], seed=seed)
    kwargs.setdefault("batch_size", 16)
    if name == "heads":
        kwargs.setdefault("output", "klass")
    return diagnose(model, x, y, **kwargs)


# ----------------------------------------------------------------------------- healthy models


@pytest.mark.parametrize("name", list(BUILDERS))
def test_healthy_trained_models_get_no_warning(name: str) -> None:
    # Held out (review W6): diagnosed on another draw (seed 1) than the 96 examples it was trained on
    # (seed 0), so the statistics were estimated on other inputs than the diagnosed ones.
    report = _run(name, trained(name), seed=1)
    assert report.problems == [], str(report)
    assert not report.not_checked, str(report)  # every data check ran (labels given)


# ----------------------------------------------------------------------------- broken models


def _shift_mean(values: np.ndarray) -> np.ndarray:
    return values + 3.0


BREAKS: list[tuple[str, str, str, Callable[[np.ndarray], np.ndarray], str, str]] = [
    # (model, BN path, variable, change, expected kind, expected layer)
    ("cnn_last", "bn1", "moving_variance", _nan_at(5), "non_finite", "bn1"),
    ("cnn_first", "bn2", "gamma", lambda v: np.where(np.arange(len(v)) == 2, np.inf, v), "non_finite", "bn2"),
    ("rnn", "bn1", "moving_mean", _nan_at(0), "non_finite", "bn1"),
    ("rnn", "bn1", "moving_variance", _channels_times([1, 7, 12], 100.0), "stale_statistics", "bn1"),
    ("transfer", "base/inner/bn", "moving_variance", lambda v: np.ones_like(v), "never_updated", "base/inner/bn"),
]


@pytest.mark.parametrize(("name", "path", "variable", "change", "kind", "layer"), BREAKS, ids=[f"{b[0]}-{b[4]}" for b in BREAKS])
def test_broken_variables_are_found(name, path, variable, change, kind, layer) -> None:  # noqa: ANN001
    model = _fresh(name)
    bn = _bn(model, path)
    _set(bn, variable, change)
    if kind == "never_updated":
        _set(bn, "moving_mean", np.zeros_like)
    report = _run(name, model)
    assert layer in report.layers(kind), str(report)


def test_conv1d_mean_shift_every_channel() -> None:
    model = _fresh("conv1d")
    bn = _bn(model, "bn2")
    _set(bn, "moving_mean", lambda v: v + 3.0 * np.sqrt(bn.moving_variance.numpy()))
    report = _run("conv1d", model)
    assert report.layers("stale_statistics") == ["bn2"], str(report)
    assert "train_inference_gap" in report.kinds("error")


def test_heads_variance_break_is_a_warning() -> None:
    # A partial miss until review 3 (N1'): the layer was named only as info, because re-estimating raised
    # the loss on x significantly (8-13 paired SEs) and the doctor read that as weights adapted to the
    # statistics. Every head still predicts right: the loss rise is the sharpening of a fitted sample, not
    # adaptation, so "adapted" now needs an accuracy drop and the finding stays a warning (changed after
    # this zoo case was seen: it is calibration, not a held-out result).
    model = _fresh("heads")
    _set(_bn(model, "trunk_bn"), "moving_variance", lambda v: v / 30.0)
    for output in ("klass", "flag"):
        report = _run("heads", model, output=output)
        (stale,) = [f for f in report.findings if f.kind == "stale_statistics"]
        assert stale.layer == "trunk_bn", str(report)
        assert stale.evidence["fraction_off"] == 1.0 and stale.evidence["var_ratio"] < 0.1
        assert stale.severity == "warning" and "adapted" not in stale.evidence
        assert stale.evidence["loss_rise_z"] > 3.0 and "equal accuracy" in stale.evidence["reestimation_loss"]
        assert report.layers("stale_statistics") == ["trunk_bn"]


def _weak_signal(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (1.5 + 2.0 * rng.standard_normal((n, 8, 8, 3))).astype("float32")
    y = rng.integers(0, 2, n)
    flat = x.reshape(n, -1)
    flat[y == 1, : flat.shape[1] // 2] += 0.25  # a weak signal: held-out accuracy well below 1
    return flat.reshape(x.shape), y


def test_shrunk_variance_on_an_overfit_sample_is_not_read_as_adapted() -> None:
    """Review 3, N1': a CNN that fits its 192 training images perfectly, bn2's moving variance / 10. On the
    training sample the sharper outputs lower the loss, so re-estimating "raises" it; held out the same
    statistics make the model over-confident. The doctor, given the training sample as documented, must not
    say "no BN problem found"."""
    x, y = _weak_signal(192, 0)
    held_x, held_y = _weak_signal(1000, 1)
    keras.utils.set_random_seed(7)
    model = _compile(cnn_last())
    model.fit(x, y, batch_size=16, epochs=30, verbose=0)
    _compile(model, learning_rate=5e-4).fit(x, y, batch_size=16, epochs=4, verbose=0)

    def loss(m: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
        p = m.predict(images, verbose=0).astype(np.float64)
        return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-7, 1)).mean())

    healthy_loss = loss(model, held_x, held_y)
    _set(_bn(model, "bn2"), "moving_variance", lambda v: v / 10.0)
    assert loss(model, held_x, held_y) > 1.5 * healthy_loss  # the break is harmful held out
    report = diagnose(model, x, y, batch_size=16)
    stale = [f for f in report.findings if f.kind == "stale_statistics" and f.layer == "bn2"]
    assert stale and stale[0].severity in ("warning", "error"), str(report)
    assert "adapted" not in stale[0].evidence
    assert report.problems, str(report)


def test_heads_mean_break() -> None:
    # the trunk's moving mean shifted by -2 std in every channel: a warning or an error
    broken = _fresh("heads")
    bn = _bn(broken, "trunk_bn")
    _set(bn, "moving_mean", lambda v: v - 2.0 * np.sqrt(bn.moving_variance.numpy()))
    assert _run("heads", broken, output="flag").layers("stale_statistics") == ["trunk_bn"]


def test_lagging_statistics_after_few_steps() -> None:
    keras.utils.set_random_seed(8)
    x, y = _data(SHAPES["cnn_last"])
    model = cnn_last(momentum=0.99)
    _compile(model).fit(x[:48], y[:48], batch_size=16, epochs=1, verbose=0)  # 3 steps
    assert "stale_statistics" in _run("cnn_last", model).kinds()
    keras.utils.set_random_seed(8)
    lagging = cnn_first(momentum=0.99)
    x, y = _data(SHAPES["cnn_first"])
    _compile(lagging).fit(x, y, batch_size=16, epochs=1, verbose=0)  # 6 steps
    assert {"bn1", "bn2"} & set(_run("cnn_first", lagging).layers("stale_statistics"))


def test_static_breaks() -> None:
    keras.utils.set_random_seed(9)
    assert set(static_checks(cnn_first(momentum=0.1)).layers("pytorch_momentum")) == {"bn1", "bn2"}
    model = _fresh("conv1d")
    bn = _bn(model, "bn1")
    bn.epsilon = float(np.max(bn.moving_variance.numpy())) * 2
    assert _run("conv1d", model).layers("large_epsilon", "info") == ["bn1"]
    ema = _fresh("cnn_last")
    _compile(ema, use_ema=True)
    assert "weight_ema" in _run("cnn_last", ema).kinds("warning")


def test_dropout_before_bn() -> None:
    keras.utils.set_random_seed(10)
    x, y = _data(SHAPES["conv1d"])
    model = _fit(conv1d(dropout=0.5), x, y, epochs=12)
    report = _run("conv1d", model)
    assert set(report.layers("dropout_variance_shift")) == {"bn1", "bn2"}, str(report)


def test_transfer_overrides_and_frozen() -> None:
    keras.utils.set_random_seed(11)
    x, y = _data(SHAPES["transfer"])
    model = _fit(transfer(training_false=True), x, y, epochs=2)
    assert _run("transfer", model).layers("training_false_override") == ["base"]
    frozen = _fresh("transfer")
    frozen.fit(x, y, batch_size=16, epochs=1, verbose=0)
    _bn(frozen, "base/inner/bn").trainable = False
    found = [f for f in _run("transfer", frozen).findings if f.kind == "frozen_but_training"]
    assert [f.evidence for f in found if f.severity == "warning"] == [{"trainable_changed_after_fit": "base/inner/bn"}]


# ----------------------------------------------------------------------------- keras.applications (slowest)


def _population(model: keras.Model) -> None:
    """Make the model consistent the way a user would: re-estimate on *other* images than the diagnosed ones.

    With ``probes.reestimate_bn_statistics`` (the fix the doctor prints), on 64 images drawn apart
    from the 16 that :func:`_app_report` diagnoses, so "no stale layer" afterwards is a finding
    about sampling noise and the doctor's bands, not an identity (the doctor's own recorder on
    the same images would give ratios of exactly 1).
    """
    reestimate_bn_statistics(model, _app_images(64, seed=1))  # one batch: exact after the first pass


def _app_images(n: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 32, 32, 3)).astype("float32")


@functools.lru_cache(maxsize=None)
def _app(name: str) -> keras.Model:
    keras.utils.set_random_seed(12)
    build = {
        "mobilenetv2": lambda: keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=3),
        "resnet50": lambda: keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=3),
        "efficientnetb0": lambda: keras.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=3),
    }[name]
    return build()


def _app_report(model: keras.Model, **kwargs: object) -> doctor.Report:
    return diagnose(model, _app_images(), pass_size=16, **kwargs)


def test_applications_slow_mobilenetv2() -> None:
    model = _app("mobilenetv2")
    untrained = _app_report(model)
    assert len(untrained.layers("never_updated")) > 20  # statistics at (0, 1), inputs far from them
    saved = [v.numpy() for v in model.non_trainable_variables]
    try:
        _population(model)
        deep = [bn for _, bn in doctor._bn_paths(model)][30]
        _set(deep, "moving_variance", _nan_at(3))
        report = _app_report(model)
        assert report.layers("non_finite")[0] == deep.name
        assert "channels" in [f for f in report.findings if f.kind == "non_finite"][0].evidence
    finally:
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)
    # nested: Input -> MobileNetV2 base -> head, lagging statistics in the base
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, include_top=False)
    inputs = keras.Input((32, 32, 3))
    nested = keras.Model(inputs, L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(base(inputs))))
    base.trainable = False  # keras.io's phase 1: the doctor's fix must work on a frozen nested base
    _population(nested)
    assert _app_report(nested).layers("stale_statistics") == []  # statistics from other images: consistent
    for bn in [layer for layer in base.layers if isinstance(layer, BN_TYPES)][:10]:
        kept = 0.99**30  # 30 steps at momentum 0.99: 74 % of the initial values left
        bn.moving_mean.assign(bn.moving_mean.numpy() * (1 - kept))
        bn.moving_variance.assign(bn.moving_variance.numpy() * (1 - kept) + kept)
    stale = _app_report(nested).layers("stale_statistics")
    assert stale and all(path.startswith(base.name + "/") for path in stale)
    _population(nested)  # the printed fix, on images other than the diagnosed ones
    assert _app_report(nested).layers("stale_statistics") == []


def test_applications_slow_resnet50() -> None:
    model = _app("resnet50")
    saved = [v.numpy() for v in model.non_trainable_variables]
    try:
        _population(model)
        assert _app_report(model).layers("stale_statistics") == []
        _set(model.get_layer("conv4_block3_2_bn"), "moving_variance", lambda v: v * 25.0)
        assert _app_report(model).layers("stale_statistics") == ["conv4_block3_2_bn"]
        _population(model)  # the printed fix
        assert _app_report(model).layers("stale_statistics") == []
    finally:
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)


def test_applications_slow_efficientnetb0() -> None:
    model = _app("efficientnetb0")
    saved = [v.numpy() for v in model.non_trainable_variables]
    try:
        _population(model)
        bn = model.get_layer("block4a_bn")
        _set(bn, "moving_mean", lambda v: v + 2.0 * np.sqrt(bn.moving_variance.numpy()))
        assert _app_report(model).layers("stale_statistics") == ["block4a_bn"]
    finally:
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)
    for layer in model._flatten_layers():
        if isinstance(layer, BN_TYPES):
            layer.momentum = 0.1
    try:
        assert len(static_checks(model).layers("pytorch_momentum")) > 40
    finally:
        for layer in model._flatten_layers():
            if isinstance(layer, BN_TYPES):
                layer.momentum = 0.99
