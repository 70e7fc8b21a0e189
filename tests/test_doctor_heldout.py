"""A held-out set for bnbook.doctor (review M1, issue 23 item 10): model kinds none of its rules was set on.

The zoo (``tests/test_doctor_zoo.py``) was seen before three rules were added (``below_bands``,
the single broken-channel rule and the gap's standard error over batches), so it is
calibration data for them. This file is the held-out set: every model, break and expected
finding below was written down *before* the doctor was run on any of them, and nothing in
``bnbook.doctor`` was changed after running them. A model the doctor gets wrong stays here as
a documented miss (``xfail(strict=True)``), never as a reason to tune.

Kinds not in the zoo or in ``tests/test_doctor_real.py``: a sequence *tagger* (Conv1D -> BN
-> GRU -> BN, one label per time step), a small encoder-decoder segmentation net (per-pixel
softmax, labels (N, H, W)), a residual channels-first CNN with separable convolutions and a
sigmoid (N, 1) output, a two-deep nested transfer layout whose innermost BN is *shared* by
two branches, a two-output model diagnosed on its *regression* head, and
``keras.applications.MobileNetV3Small`` (``weights=None``, 32 x 32).

Healthy means held out: each healthy model's statistics were estimated on other images than
the diagnosed ones (trained with ``fit`` on a training draw and diagnosed on an independent
draw of the same distribution; MobileNetV3Small re-estimated on 64 other images).

Hit/miss table (held-out set; results of the first run, nothing tuned after it; one rule change
made later, after the set had been seen, is marked "fixed by N1"):

=====================  ==============================================  ==========================
model                  break                                           expected finding (result)
=====================  ==============================================  ==========================
tagger                 one of 16 channels' moving variance x20         stale_statistics (hit)
tagger                 trained 4 steps at momentum 0.99 (lagging)      stale_statistics (partial
                                                                       miss: named, info only;
                                                                       fixed by N1: warning)
segmenter              decoder BN's moving mean +2 std, every channel  stale_statistics (hit)
segmenter              images 0-255 instead of 0-1                     input_scale (hit)
residual_first         moving variance / 8 in every channel            stale_statistics >= warning
                       (sigmoid output)                                (partial miss: named, info
                                                                       only; fixed by N1: warning)
residual_first         Dropout(0.4) before the residual branch's BN    dropout_variance_shift
                                                                       (partial miss: named, info
                                                                       only, ratio 0.87 > 0.8)
shared_transfer        shared BN two levels down reset to (0, 1)       never_updated (hit)
shared_transfer        base(x, training=False), BN trainable           training_false_override
                                                                       (hit)
two_outputs            trunk moving mean +3 std, regression head       stale_statistics and
                                                                       train_inference_gap (hit)
MobileNetV3Small       untrained (statistics at 0, 1)                  never_updated (hit)
MobileNetV3Small       one deep layer's moving variance / 20           stale_statistics, that
                                                                       layer (hit)
healthy x 6            tagger, segmenter, residual_first,              no warning, no error
                       shared_transfer, two_outputs, MobileNetV3Small  (6 of 6 clean)
=====================  ==============================================  ==========================

First run: 11 broken, 8 hits, 3 partial misses (the layer named, but as info, so a report
that says "no BN problem found"); 6 healthy: 6 clean. Two of the misses came from the "weights
adapted to these statistics" rule, which then demoted a finding to info on *any* loss rise
when re-estimating on the diagnosed images (accuracy 0.958 -> 0.948 and 0.489 -> 0.476, loss
up by 1.4 and 0.5 paired standard errors). Review 2 (N1) made that rule a test: demote only
when the loss rise exceeds ``gap_z`` paired standard errors, the threshold the doctor already
uses for the gain. The change was decided from that reasoning, not tuned on these models, but
it was made *after* this set had been seen, so the two "fixed by N1" rows are no longer a
held-out result: after it, 10 of 11 named at warning or above, 6 healthy still clean. The
dropout miss (0.87, inside the 0.8 band) stays an ``xfail(strict=True)``.

Review 2 N4 (a significant loss-only gain of re-estimating counts as significant for a
classifier, ``gain_loss_ratio``), also after this set had been seen: its first version let a
loss-only gain name a layer inside every band (``below_bands``), and that flipped one outcome
here, the healthy ``shared_transfer`` model (loss on x 0.065 -> 0.049, 3.9 paired SEs,
accuracy 1.0 both: a below_bands error), as well as the zoo's healthy cnn_last and cnn_first
and 8 of chapter 10's calibration reports. The final rule (a loss-only gain raises the
severity of a layer a band already flags, and names no layer by itself) was decided on
chapter 10's reports (re-estimating lowers its healthy MLPs' loss 22-46 % at equal accuracy:
statistics lagging within the bands), but this flip was seen at the same time, so the
healthy rows' "6 of 6 clean" is, for the N4 rule, no longer a held-out result. Changed after
the set was seen: no other outcome of this table moved.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import keras
import numpy as np
import pytest

from bnbook import doctor
from bnbook.doctor import diagnose
from bnbook.probes import reestimate_bn_statistics

L = keras.layers
TRAIN, HELD_OUT = 0, 1  # seeds of the training draw and of the diagnosed draw


# ----------------------------------------------------------------------------- data (one generator per family)


def _tagger_data(seed: int, n: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Sequences (n, 12, 4) far from (0, 1); the label of a step: is its first feature above the running mean?"""
    gen = np.random.default_rng(seed)
    x = (2.0 + 1.5 * gen.standard_normal((n, 12, 4))).astype("float32")
    y = (x[..., 0] > 2.0).astype("int64") + (x[..., 1] > 3.5).astype("int64")  # 3 classes per step
    return x, y


def _segmenter_data(seed: int, n: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1] (n, 8, 8, 3); the label of a pixel: which channel is brightest there."""
    gen = np.random.default_rng(seed)
    x = gen.uniform(0, 1, (n, 8, 8, 3)).astype("float32")
    return x, np.argmax(x, axis=-1).astype("int64")


def _first_data(seed: int, n: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Channels-first images (n, 3, 8, 8); binary label: is the top half brighter than the bottom?"""
    gen = np.random.default_rng(seed)
    x = (0.5 + gen.standard_normal((n, 3, 8, 8))).astype("float32")
    y = (x[:, :, :4].mean(axis=(1, 2, 3)) > x[:, :, 4:].mean(axis=(1, 2, 3))).astype("int64")
    x[y == 1, :, :4] += 0.4
    return x, y


def _transfer_data(seed: int, n: int = 128) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    x = (1.0 + 2.0 * gen.standard_normal((n, 8, 8, 3))).astype("float32")
    y = (x[..., 0].mean(axis=(1, 2)) > 1.0).astype("int64")
    x[y == 1, ..., 0] += 0.5
    return x, y


def _two_outputs_data(seed: int, n: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, a class label and a regression target (the mean brightness of channel 1)."""
    x, y = _transfer_data(seed, n)
    return x, y, x[..., 1].mean(axis=(1, 2)).astype("float32")[:, None]


# ----------------------------------------------------------------------------- models


def tagger(momentum: float = 0.9) -> keras.Model:
    inputs = keras.Input((12, 4))
    h = L.ReLU()(L.BatchNormalization(momentum=momentum, name="conv_bn")(L.Conv1D(16, 3, padding="same", use_bias=False)(inputs)))
    h = L.BatchNormalization(momentum=momentum, name="gru_bn")(L.GRU(12, return_sequences=True)(h))
    return keras.Model(inputs, L.Dense(3, activation="softmax")(h), name="tagger")


def segmenter(momentum: float = 0.9) -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    h = L.ReLU()(L.BatchNormalization(momentum=momentum, name="enc_bn")(L.Conv2D(16, 3, padding="same", use_bias=False)(inputs)))
    h = L.MaxPooling2D()(h)
    h = L.ReLU()(L.BatchNormalization(momentum=momentum, name="mid_bn")(L.Conv2D(24, 3, padding="same", use_bias=False)(h)))
    h = L.UpSampling2D()(h)
    h = L.Concatenate()([h, inputs])
    h = L.ReLU()(L.BatchNormalization(momentum=momentum, name="dec_bn")(L.Conv2D(16, 3, padding="same", use_bias=False)(h)))
    return keras.Model(inputs, L.Conv2D(3, 1, activation="softmax")(h), name="segmenter")


def residual_first(momentum: float = 0.9, dropout: float = 0.0) -> keras.Model:
    inputs = keras.Input((3, 8, 8))
    stem = L.Conv2D(16, 3, padding="same", use_bias=False, data_format="channels_first")(inputs)
    h = L.ReLU()(L.BatchNormalization(axis=1, momentum=momentum, name="stem_bn")(stem))
    branch = L.Dropout(dropout, seed=5)(h) if dropout else h
    branch = L.SeparableConv2D(16, 3, padding="same", use_bias=False, data_format="channels_first")(branch)
    branch = L.BatchNormalization(axis=1, momentum=momentum, name="branch_bn")(branch)
    h = L.ReLU()(L.Add()([h, branch]))
    h = L.GlobalAveragePooling2D(data_format="channels_first")(h)
    return keras.Model(inputs, L.Dense(1, activation="sigmoid")(h), name="residual_first")


def shared_transfer(momentum: float = 0.9, training_false: bool = False) -> keras.Model:
    """Input -> base -> inner, where inner applies one BN layer to two convolution branches."""
    inner_in = keras.Input((8, 8, 3))
    shared = L.BatchNormalization(momentum=momentum, name="shared_bn")
    a = shared(L.Conv2D(12, 3, padding="same", use_bias=False, name="conv_a")(inner_in))
    b = shared(L.Conv2D(12, 3, padding="same", use_bias=False, name="conv_b")(inner_in))
    inner = keras.Model(inner_in, L.ReLU()(L.Add()([a, b])), name="inner")
    base_in = keras.Input((8, 8, 3))
    base = keras.Model(base_in, L.GlobalAveragePooling2D()(inner(base_in)), name="base")
    inputs = keras.Input((8, 8, 3))
    features = base(inputs, training=False) if training_false else base(inputs)
    return keras.Model(inputs, L.Dense(2, activation="softmax")(features), name="shared_transfer")


def two_outputs(momentum: float = 0.9) -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    h = L.ReLU()(L.BatchNormalization(momentum=momentum, name="trunk_bn")(L.Conv2D(16, 3, padding="same", use_bias=False)(inputs)))
    h = L.GlobalAveragePooling2D()(h)
    klass = L.Dense(2, activation="softmax", name="klass")(h)
    value = L.Dense(1, name="value")(h)
    return keras.Model(inputs, [klass, value], name="two_outputs")


def _compile(model: keras.Model, learning_rate: float = 0.005) -> keras.Model:
    if model.name == "two_outputs":
        loss: object = ["sparse_categorical_crossentropy", "mse"]
    elif model.name == "residual_first":
        loss = "binary_crossentropy"
    else:
        loss = "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    return model


DATA: dict[str, Callable[..., tuple[np.ndarray, ...]]] = {
    "tagger": _tagger_data,
    "segmenter": _segmenter_data,
    "residual_first": _first_data,
    "shared_transfer": _transfer_data,
    "two_outputs": _two_outputs_data,
}
BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "tagger": tagger,
    "segmenter": segmenter,
    "residual_first": residual_first,
    "shared_transfer": shared_transfer,
    "two_outputs": two_outputs,
}


def _targets(name: str, data: tuple[np.ndarray, ...]) -> object:
    return [data[1], data[2]] if name == "two_outputs" else data[1]


def _fit(model: keras.Model, name: str, seed: int = TRAIN, epochs: int = 12) -> keras.Model:
    data = DATA[name](seed)
    _compile(model).fit(data[0], _targets(name, data), batch_size=16, epochs=epochs, verbose=0)
    _compile(model, 0.0005).fit(data[0], _targets(name, data), batch_size=16, epochs=3, verbose=0)  # settle
    return model


@functools.lru_cache(maxsize=None)
def trained(name: str) -> keras.Model:
    keras.utils.set_random_seed(21)
    return _fit(BUILDERS[name](), name)


def _fresh(name: str) -> keras.Model:
    source = trained(name)
    model = keras.models.clone_model(source)
    model.set_weights(source.get_weights())
    return _compile(model)


def _run(name: str, model: keras.Model, **kwargs: object) -> doctor.Report:
    """Diagnose on the held-out draw (96 examples), never on the training one."""
    data = DATA[name](HELD_OUT, 96)
    kwargs.setdefault("batch_size", 16)
    y = data[1]
    if name == "two_outputs":
        kwargs.setdefault("output", "value")
        y = data[2]
    return diagnose(model, data[0], y, **kwargs)


def _bn(model: keras.Model, path: str) -> keras.layers.Layer:
    return dict(doctor._bn_paths(model))[path]


def _assign(bn: keras.layers.Layer, name: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    variable = getattr(bn, name)
    variable.assign(change(variable.numpy().copy()).astype(variable.numpy().dtype))


# ----------------------------------------------------------------------------- healthy, held out


@pytest.mark.parametrize("name", list(BUILDERS))
def test_heldout_healthy_models_get_no_warning(name: str) -> None:
    report = _run(name, trained(name))
    assert report.problems == [], str(report)
    assert report.findings, "a report with nothing in it ran no check"


# ----------------------------------------------------------------------------- broken, held out


def test_heldout_tagger_one_broken_channel() -> None:
    model = _fresh("tagger")
    _assign(_bn(model, "conv_bn"), "moving_variance", lambda v: np.where(np.arange(v.size) == 6, v * 20.0, v))
    report = _run("tagger", model)
    assert report.layers("stale_statistics") == ["conv_bn"], str(report)
    assert "6" in str([f for f in report.findings if f.kind == "stale_statistics"][0].evidence)


def test_heldout_tagger_lagging() -> None:
    # A partial miss in the first run (info: "adapted statistics" on a loss rise of 1.19 -> 1.20, no test);
    # fixed by the rule change of review 2 N1 (made after this set had been seen): the loss rise must be
    # significant (gap_z paired standard errors) before a finding is demoted. Here it is 0.5 SE.
    keras.utils.set_random_seed(22)
    model = tagger(momentum=0.99)
    x, y = _tagger_data(TRAIN)
    _compile(model).fit(x[:64], y[:64], batch_size=16, epochs=1, verbose=0)  # 4 steps at 0.99
    report = _run("tagger", model)
    assert {"conv_bn", "gru_bn"} & set(report.layers("stale_statistics", "warning", "error")), str(report)


def test_heldout_segmenter_mean_shift() -> None:
    model = _fresh("segmenter")
    bn = _bn(model, "dec_bn")
    _assign(bn, "moving_mean", lambda v: v + 2.0 * np.sqrt(bn.moving_variance.numpy()))
    report = _run("segmenter", model)
    assert report.layers("stale_statistics") == ["dec_bn"], str(report)


def test_heldout_segmenter_pixels_0_255() -> None:
    x, _ = _segmenter_data(HELD_OUT, 96)
    report = diagnose(trained("segmenter"), x * 255.0)
    assert report.layers("input_scale") == ["enc_bn"], str(report)


def test_heldout_residual_first_variance_shrunk() -> None:
    # A partial miss in the first run (info: re-estimating raised the loss 0.098 -> 0.124, no test); fixed by
    # the rule change of review 2 N1, made after this set had been seen: the rise is 1.4 paired SEs, not
    # significant, so the finding keeps its severity.
    model = _fresh("residual_first")
    _assign(_bn(model, "stem_bn"), "moving_variance", lambda v: v / 8.0)
    report = _run("residual_first", model)
    assert "stem_bn" in report.layers("stale_statistics", "warning", "error"), str(report)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="held-out partial miss: dropout_variance_shift only info (inference/training variance ratio 0.87, "
    "inside the 0.8 threshold: Dropout(0.4) before a separable convolution shifts the variance less than before Dense)",
)
def test_heldout_residual_first_dropout() -> None:
    keras.utils.set_random_seed(23)
    model = _fit(residual_first(dropout=0.4), "residual_first")
    report = _run("residual_first", model)
    # What the doctor does report (review 2, W-c): the dropout-fed layer named, as info, with its measured
    # inference/training variance ratio below 1 (0.87 in the first run). pytest.fail raises Failed, not the
    # AssertionError this xfail expects (raises=), so a regression that dropped the layer fails the test
    # instead of passing as "still xfail".
    shifts = [f for f in report.findings if f.kind == "dropout_variance_shift" and f.layer == "branch_bn"]
    if len(shifts) != 1 or shifts[0].severity != "info":
        pytest.fail(f"the doctor no longer names branch_bn as an info dropout_variance_shift:\n{report}")
    if not 0.5 < shifts[0].evidence["inference_training_variance_ratio"] < 1.0:
        pytest.fail(f"the measured variance ratio moved: {shifts[0].evidence}")
    assert report.layers("dropout_variance_shift") == ["branch_bn"], str(report)


def test_heldout_shared_bn_two_levels_down_reset() -> None:
    model = _fresh("shared_transfer")
    bn = _bn(model, "base/inner/shared_bn")
    _assign(bn, "moving_mean", np.zeros_like)
    _assign(bn, "moving_variance", np.ones_like)
    report = _run("shared_transfer", model)
    assert report.layers("never_updated") == ["base/inner/shared_bn"], str(report)


def test_heldout_shared_transfer_override() -> None:
    keras.utils.set_random_seed(24)
    model = _fit(shared_transfer(training_false=True), "shared_transfer", epochs=2)
    assert _run("shared_transfer", model).layers("training_false_override") == ["base"]


def test_heldout_two_outputs_regression_gap() -> None:
    model = _fresh("two_outputs")
    bn = _bn(model, "trunk_bn")
    _assign(bn, "moving_mean", lambda v: v + 3.0 * np.sqrt(bn.moving_variance.numpy()))
    report = _run("two_outputs", model)
    assert report.layers("stale_statistics") == ["trunk_bn"], str(report)
    assert "train_inference_gap" in report.kinds("error"), str(report)


# ----------------------------------------------------------------------------- MobileNetV3Small (slowest)


def _v3_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 32, 32, 3)).astype("float32")


@functools.lru_cache(maxsize=None)
def _v3() -> keras.Model:
    keras.utils.set_random_seed(25)
    return keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classes=3, include_preprocessing=False, minimalistic=True
    )


def test_heldout_applications_slow_mobilenetv3small() -> None:
    model = _v3()
    diagnosed = _v3_images(16, HELD_OUT)
    untrained = diagnose(model, diagnosed, pass_size=16)
    assert len(untrained.layers("never_updated")) > 10, str(untrained)
    saved = [v.numpy() for v in model.non_trainable_variables]
    try:
        reestimate_bn_statistics(model, _v3_images(64, TRAIN))  # other images than the diagnosed ones
        healthy = diagnose(model, diagnosed, pass_size=16)
        assert healthy.problems == [], str(healthy)
        deep = [bn for _, bn in doctor._bn_paths(model)][20]
        _assign(deep, "moving_variance", lambda v: v / 20.0)
        broken = diagnose(model, diagnosed, pass_size=16)
        assert broken.layers("stale_statistics") == [deep.name], str(broken)
    finally:
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)
