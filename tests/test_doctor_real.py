"""bnbook.doctor on the models users bring: nested bases, broken variables, the training=False override,
partial failures, static checks, any output, bad input, the report's interfaces and the CLI (issue 23)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import keras
import numpy as np
import pytest

from bnbook import doctor
from bnbook.doctor import DoctorCallback, diagnose, main, static_checks
from bnbook.layers import BatchNorm
from bnbook.probes import reestimate_bn_statistics

L = keras.layers
ROOT = Path(__file__).resolve().parents[1]


def _images(n: int = 96, size: int = 8, channels: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    x = gen.standard_normal((n, size, size, channels)).astype("float32")
    y = (x[:, : size // 2].mean(axis=(1, 2, 3)) > x[:, size // 2 :].mean(axis=(1, 2, 3))).astype("int64")
    x[y == 1, : size // 2] += 0.5
    return x, y


def _cnn(name: str = "cnn", channels: int = 32, momentum: float = 0.9, **bn: object) -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2D(channels, 3, padding="same", use_bias=False)(inputs)
    h = L.BatchNormalization(momentum=momentum, name=f"{name}_bn1", **bn)(h)
    h = L.ReLU()(h)
    h = L.Conv2D(16, 3, padding="same", use_bias=False)(h)
    h = L.BatchNormalization(momentum=momentum, name=f"{name}_bn2", **bn)(h)
    h = L.GlobalAveragePooling2D()(L.ReLU()(h))
    model = keras.Model(inputs, L.Dense(2, activation="softmax")(h), name=name)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    return _images()


@pytest.fixture(scope="module")
def trained(images: tuple[np.ndarray, np.ndarray]) -> keras.Model:
    model = _cnn()
    model.fit(*images, batch_size=16, epochs=6, verbose=0)
    return model


def _copy(model: keras.Model) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return clone


def test_trained_cnn_is_clean(trained: keras.Model, images: tuple[np.ndarray, np.ndarray]) -> None:
    report = diagnose(trained, *images, batch_size=16)
    assert report.problems == [], str(report)
    assert "no BN problem found" in str(report) and report.to_dict()["complete"]


def test_nan_statistics_are_an_error_naming_layer_and_channel(
    trained: keras.Model, images: tuple[np.ndarray, np.ndarray]
) -> None:
    model = _copy(trained)
    bn = model.get_layer("cnn_bn1")
    variance = bn.moving_variance.numpy()
    variance[5] = np.nan
    bn.moving_variance.assign(variance)
    unlabelled = diagnose(model, images[0], batch_size=16)
    (finding,) = [f for f in unlabelled.findings if f.kind == "non_finite" and f.layer == "cnn_bn1"]
    assert finding.severity == "error" and finding.evidence["channels"] == "5"
    assert "moving_variance(1)" in finding.evidence["variables"]
    assert "no BN problem found" not in str(unlabelled)
    assert "cnn_bn2" in unlabelled.layers("non_finite")  # its input on x is NaN in inference mode
    labelled = diagnose(model, *images, batch_size=16)
    (gap,) = [f for f in labelled.findings if f.kind == "train_inference_gap"]
    assert gap.evidence["likely_cause"] == "non_finite"


def test_three_of_32_broken_channels_are_found(trained: keras.Model, images: tuple[np.ndarray, np.ndarray]) -> None:
    model = _copy(trained)
    bn = model.get_layer("cnn_bn1")
    variance = bn.moving_variance.numpy()
    variance[[3, 17, 30]] *= 100.0
    bn.moving_variance.assign(variance)
    report = diagnose(model, images[0], batch_size=16)
    (stale,) = [f for f in report.findings if f.kind == "stale_statistics"]
    assert stale.layer == "cnn_bn1" and stale.evidence["channels_off"] == "3 of 32"
    assert abs(stale.evidence["var_ratio"] - 1) < 0.5  # the median alone would hide it
    worst = {int(part.split(":")[0]) for part in stale.evidence["worst_channels"].split(", ") if ":" in part}
    assert worst == {3, 17, 30}
    # thresholds, not constants: the x100 channels pass a band of x200, and 3 of 32 do not reach 20 %
    assert diagnose(model, images[0], batch_size=16, channel_broken_variance=200, channel_fraction=0.2).problems == []


@pytest.mark.parametrize(
    ("layer", "channels", "factor", "found"),
    [
        pytest.param("cnn_bn1", [17], 20.0, True, id="1 of 32 x20: broken, found"),
        pytest.param("cnn_bn2", [5], 20.0, True, id="1 of 16 x20: broken, found"),
        pytest.param("cnn_bn2", [5], 1 / 20, True, id="1 of 16 /20: broken, found"),
        pytest.param("cnn_bn2", [5], 3.0, False, id="1 of 16 x3: one mild channel, not enough"),
        pytest.param("cnn_bn1", [5], 3.0, False, id="1 of 32 x3: one mild channel, not enough"),
        pytest.param("cnn_bn2", [2, 5, 9], 6.0, True, id="3 of 16 x6: several mild channels, found"),
    ],
)
def test_one_broken_channel_is_found_whatever_the_width(
    trained: keras.Model, images: tuple[np.ndarray, np.ndarray], layer: str, channels: list[int], factor: float, found: bool
) -> None:
    """Whether a channel is found depends on how far off it is, not on how many channels its layer has."""
    assert diagnose(trained, images[0], batch_size=16).problems == []  # the trained model is clean to start with
    model = _copy(trained)
    bn = model.get_layer(layer)
    variance = bn.moving_variance.numpy()
    variance[channels] *= factor
    bn.moving_variance.assign(variance)
    report = diagnose(model, images[0], batch_size=16)
    assert (layer in report.layers("stale_statistics")) is found, str(report)
    if found:
        (stale,) = [f for f in report.findings if f.kind == "stale_statistics"]
        assert int(stale.evidence["worst_channels"].split(":")[0]) in channels


def _nested(images: tuple[np.ndarray, np.ndarray], *, training_false: bool) -> tuple[keras.Model, keras.layers.Layer]:
    keras.utils.set_random_seed(2)
    inner = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(8, 3, use_bias=False), L.BatchNormalization(momentum=0.9, name="bn"), L.ReLU()],
        name="inner",
    )
    base_in = keras.Input((8, 8, 3))
    base = keras.Model(base_in, L.GlobalAveragePooling2D()(inner(base_in)), name="base")
    inputs = keras.Input((8, 8, 3))
    features = base(inputs, training=False) if training_false else base(inputs)
    model = keras.Model(inputs, L.Dense(2, activation="softmax")(features), name="transfer")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(*images, batch_size=16, epochs=6, verbose=0)
    model.compile(optimizer=keras.optimizers.Adam(0.0005), loss="sparse_categorical_crossentropy")
    model.fit(*images, batch_size=16, epochs=3, verbose=0)  # settle: the statistics catch up with the weights
    return model, inner.get_layer("bn")


def test_stale_bn_two_levels_down_is_found(images: tuple[np.ndarray, np.ndarray]) -> None:
    model, bn = _nested(images, training_false=False)
    assert diagnose(model, *images, batch_size=16).problems == []
    bn.moving_mean.assign(bn.moving_mean.numpy() + 3 * np.sqrt(bn.moving_variance.numpy()))
    report = diagnose(model, *images, batch_size=16)
    assert report.layers("stale_statistics") == ["base/inner/bn"]


def test_training_false_override(images: tuple[np.ndarray, np.ndarray]) -> None:
    model, bn = _nested(images, training_false=True)
    # Keras 3: fit passes training=True, which replaces the recorded training=False (functional.py operation_fn)
    before = bn.moving_mean.numpy().copy()
    model.fit(*images, batch_size=16, epochs=1, verbose=0)
    assert not np.allclose(bn.moving_mean.numpy(), before)
    report = static_checks(model)
    (found,) = [f for f in report.findings if f.kind == "training_false_override"]
    assert found.layer == "base" and found.evidence["trainable_bn_layers"] == "1 of 1"
    # the fix that works in Keras 3.15: the BN layers themselves frozen (inference mode), then compile()
    bn.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    before = bn.moving_mean.numpy().copy()
    model.fit(*images, batch_size=16, epochs=1, verbose=0)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)
    assert "training_false_override" not in static_checks(model).kinds()
    # a BN layer called with training=False directly
    inputs = keras.Input((4,))
    out = L.BatchNormalization(name="direct")(inputs, training=False)
    direct = keras.Model(inputs, L.Dense(1)(out))
    assert [f.layer for f in static_checks(direct).findings if f.kind == "training_false_override"] == ["direct"]


def test_static_checks(images: tuple[np.ndarray, np.ndarray]) -> None:
    report = static_checks(_cnn(momentum=0.1), batch_size=16)
    assert set(report.layers("pytorch_momentum")) == {"cnn_bn1", "cnn_bn2"}
    assert "report incomplete" in str(report)
    model = _cnn(name="eps")
    bn = model.get_layer("eps_bn1")
    bn.moving_variance.assign(np.full(32, 1e-4, "float32"))
    # Alone, a variance below epsilon is info (healthy models have such channels) ...
    assert static_checks(model).layers("large_epsilon", "info") == ["eps_bn1"]
    assert "large_epsilon" not in static_checks(model).kinds()
    # ... a warning with a PyTorch-like momentum, another sign of a converted model.
    converted = _cnn(name="conv", momentum=0.1)
    converted.get_layer("conv_bn1").moving_variance.assign(np.full(32, 1e-4, "float32"))
    assert static_checks(converted).layers("large_epsilon") == ["conv_bn1"]
    ema = _cnn(name="ema")
    ema.compile(optimizer=keras.optimizers.Adam(use_ema=True), loss="sparse_categorical_crossentropy")
    assert "weight_ema" in static_checks(ema).kinds("warning")
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("float16")
        half = _cnn(name="half")
    finally:
        keras.config.set_dtype_policy(previous)
    assert set(static_checks(half).layers("float16_statistics")) == {"half_bn1", "half_bn2"}


def test_shared_layer_and_bnbook_batchnorm(images: tuple[np.ndarray, np.ndarray]) -> None:
    keras.utils.set_random_seed(3)
    shared = BatchNorm(name="shared")
    inputs = keras.Input((8, 8, 3))
    a = shared(L.Conv2D(4, 1, use_bias=False, name="c1")(inputs))
    b = shared(L.Conv2D(4, 1, use_bias=False, name="c2")(inputs))
    model = keras.Model(inputs, L.Dense(2, activation="softmax")(L.Flatten()(L.Add()([a, b]))))
    report = diagnose(model, 3 * images[0] + 2)  # inputs far from the initial statistics (0, 1)
    (note,) = [f for f in report.findings if f.kind == "shared_layer"]
    assert note.layer == "shared" and note.evidence["calls_per_forward_pass"] == 2
    assert "shared" in report.layers("never_updated")


def test_keras_applications_nested_base_runs() -> None:
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, include_top=False)
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(base(inputs))))
    x = np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype("float32")
    report = diagnose(model, x, np.arange(16) % 3, batch_size=8, pass_size=8)
    bns = [layer for layer in base.layers if isinstance(layer, L.BatchNormalization)]
    measured = {f.layer for f in report.findings if f.kind in ("never_updated", "stale_statistics")}
    assert measured and all(name.startswith(base.name + "/") for name in measured)
    assert len(measured) > len(bns) // 2  # untrained: most statistics at their initial values, far from the inputs
    text = str(report)
    assert text.count("fix: update the moving statistics") == 1  # grouped: one fix per kind


def _multi_output() -> keras.Model:
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 3))
    h = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding="same", use_bias=False)(inputs))
    seg = L.Conv2D(3, 1, activation="softmax", name="seg")(h)
    flag = L.Dense(1, activation="sigmoid", name="flag")(L.GlobalAveragePooling2D()(h))
    return keras.Model(inputs, [seg, flag])


def test_any_output(images: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = images
    model = _multi_output()
    masks = (x[..., 0] > 0).astype("int64") + (x[..., 1] > 1).astype("int64")
    first = diagnose(model, x, masks)
    assert "output_choice" in first.kinds("info")
    seg_report = diagnose(model, x, masks, output="seg")
    assert not seg_report.not_checked, str(seg_report)  # per-pixel labels accepted: the gap check ran
    # a broken segmentation model is diagnosed, not only run (review W8; held-out cases in test_doctor_heldout)
    bn = model.get_layer("bn")
    saved = bn.moving_mean.numpy()
    bn.moving_mean.assign(saved + 3.0 * np.sqrt(bn.moving_variance.numpy()))
    try:
        assert diagnose(model, x, masks, output="seg").layers("stale_statistics") == ["bn"]
    finally:
        bn.moving_mean.assign(saved)
    binary = diagnose(model, x, y, output=1)
    assert "output_choice" not in binary.kinds("info")
    with pytest.raises(ValueError, match="output='nope'"):
        diagnose(model, x, y, output="nope")
    with pytest.raises(ValueError, match="one-hot labels of shape \\(2,\\)"):
        diagnose(model, x, np.eye(2)[y], output="flag")
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        diagnose(model, x, masks - 1, output="seg")
    with pytest.raises(ValueError, match="labels of shape"):
        diagnose(model, x, masks[:, :4], output="seg")
    # a sequence model: (N, T, C) outputs with (N, T) labels
    inputs = keras.Input((6, 4))
    h = L.BatchNormalization()(L.Conv1D(8, 3, padding="same", use_bias=False)(inputs))
    seq = keras.Model(inputs, L.Dense(5)(h))
    xs = np.random.default_rng(0).standard_normal((32, 6, 4)).astype("float32")
    tags = np.random.default_rng(1).integers(0, 5, (32, 6))
    assert not diagnose(seq, xs, tags, batch_size=8).not_checked  # (N, T) labels accepted: the gap check ran
    seq_bn = [layer for layer in seq.layers if isinstance(layer, L.BatchNormalization)][0]
    seq_bn.moving_mean.assign(np.full(8, 5.0, "float32"))  # far from its input's mean (about 0)
    assert diagnose(seq, xs, tags, batch_size=8).layers("stale_statistics") == [seq_bn.name]


def test_bad_input(trained: keras.Model, images: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = images
    bad = x.copy()
    bad[7, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite value.*example 7"):
        diagnose(trained, bad)
    with pytest.raises(ValueError, match=r"outside \[0, 2\) \(min -1"):
        diagnose(trained, x, y - 1)
    with pytest.raises(ValueError, match=r"outside \[0, 2\).*max 2"):
        diagnose(trained, x, y + 1)
    with pytest.raises(ValueError, match="non-integer"):
        diagnose(trained, x, y + 0.5)
    with pytest.raises(TypeError, match="unknown threshold 'stale'"):
        diagnose(trained, x, stale=2)
    with pytest.raises(ValueError, match="stale_variance must be a finite number > 0"):
        diagnose(trained, x, stale_variance=-1.0)
    with pytest.raises(ValueError, match=r"stale_variance is a ratio band \[1/t, t\], so it must be > 1, got 1.0"):
        diagnose(trained, x, stale_variance=1.0)  # was a ZeroDivisionError
    with pytest.raises(ValueError, match="channel_fraction is a fraction, so it must be <= 1, got 5"):
        diagnose(trained, x, channel_fraction=5)
    with pytest.raises(ValueError, match="pass_size"):
        diagnose(trained, x, pass_size=1)
    integers = np.clip(x * 40 + 128, 0, 255).astype("uint8")
    report = diagnose(trained, integers)
    assert "input_cast" in report.kinds("info")
    assert "input_scale" in report.kinds()  # 0-255 inputs are not what it trained on: said as such
    assert report.layers("input_scale") == ["cnn_bn1"]


def test_report_interfaces(trained: keras.Model, images: tuple[np.ndarray, np.ndarray]) -> None:
    model = _copy(trained)
    model.get_layer("cnn_bn2").moving_variance.assign(np.full(16, np.inf, "float32"))
    report = diagnose(model, images[0])
    data = report.to_dict()
    json.dumps(data)  # JSON-ready
    assert data["complete"] is False and any("train_inference_gap" in s for s in data["not_checked"])
    assert data["counts"]["error"] >= 1
    assert {f["kind"] for f in data["findings"]} == {f.kind for f in report.findings}
    headline = str(report).split("\n")[0]
    assert "BN problems found" in headline and "report incomplete" in headline  # an error, and no labels
    assert "no BN problem found" not in str(report)


def test_regression_gap_is_relative_to_its_standard_error(images: tuple[np.ndarray, np.ndarray]) -> None:
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 3))
    h = L.GlobalAveragePooling2D()(L.BatchNormalization(name="bn")(L.Conv2D(8, 3, use_bias=False)(inputs)))
    model = keras.Model(inputs, L.Dense(1)(h))
    model.compile(optimizer="adam", loss="mse")
    target = images[0].mean(axis=(1, 2, 3)).astype("float32")
    model.fit(images[0], target, batch_size=16, epochs=3, verbose=0)
    assert "train_inference_gap" not in diagnose(model, images[0], target, batch_size=16).kinds()
    # the positive side (review W9): a real regression gap is caught
    bn = model.get_layer("bn")
    bn.moving_mean.assign(bn.moving_mean.numpy() + 3.0 * np.sqrt(bn.moving_variance.numpy()))
    broken = diagnose(model, images[0], target, batch_size=16)
    assert "train_inference_gap" in broken.kinds("error"), str(broken)
    (gap,) = [f for f in broken.findings if f.kind == "train_inference_gap"]
    assert gap.evidence["likely_cause"] == "stale_statistics", str(broken)


def test_callback(images: tuple[np.ndarray, np.ndarray], capsys) -> None:
    model = _cnn(name="cb", momentum=0.1)
    callback = DoctorCallback(images[0][:32], images[1][:32], batch_size=16)
    model.fit(*images, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    out = capsys.readouterr().out
    assert out.count("BN doctor on 'cb'") == 2
    assert callback.start_report is not None and "pytorch_momentum" in callback.start_report.kinds()
    assert callback.report is not None and callback.report.examples == 32
    with pytest.raises(TypeError, match="NumPy"):
        DoctorCallback([1, 2])


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_command_line_json_fail_on_and_label_errors(tmp_path, trained: keras.Model, images, capsys) -> None:
    x, y = images
    model = _cnn(name="cli", momentum=0.1)
    model.set_weights(trained.get_weights())
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=x[:48], y=y[:48], bad=y[:48] + 5)
    args = [str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz"), "--labels", "y", "--batch-size", "16"]
    assert main(args) == 0  # warnings only
    assert "pytorch_momentum" in capsys.readouterr().out
    assert main([*args, "--fail-on", "warning", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert "pytorch_momentum" in {f["kind"] for f in data["findings"]}
    bad = [str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz"), "--labels", "bad"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: y holds labels outside [0, 2)") and "Traceback" not in err
    assert main([*args, "--threshold", "nonsense"]) == 2
    assert main([*args, "--threshold", "stale=1"]) == 2
    assert "unknown threshold" in capsys.readouterr().err
    # python -m bnbook.doctor (the package's __main__)
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run(
        [sys.executable, "-m", "bnbook.doctor", *bad], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 2 and "y holds labels outside [0, 2)" in run.stderr and "Traceback" not in run.stderr


def test_console_script_entry_resolves_and_runs(tmp_path, monkeypatch, capsys) -> None:
    """pyproject's ``bnbook-doctor`` entry resolves (as the installer's wrapper does) to ``bnbook.doctor.cli``, which runs."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = importlib.metadata.EntryPoint(name="bnbook-doctor", value=scripts["bnbook-doctor"], group="console_scripts")
    target = entry.load()  # imports the module named in the entry and reads the attribute
    assert target is doctor.cli
    missing = str(tmp_path / "missing.keras")
    monkeypatch.setattr(sys, "argv", ["bnbook-doctor", missing, "--data", str(tmp_path / "missing.npz")])
    with pytest.raises(SystemExit) as stop:
        target()
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: model file {missing!r} does not exist"
    # the same in a fresh interpreter, as the installed wrapper runs it (review W10: the venv is shared,
    # so the script is not installed; the wrapper's two lines are: load the entry point, exit with its result)
    wrapper = (
        "import importlib.metadata, sys, tomllib\n"
        f"value = tomllib.load(open({str(ROOT / 'pyproject.toml')!r}, 'rb'))['project']['scripts']['bnbook-doctor']\n"
        "entry = importlib.metadata.EntryPoint(name='bnbook-doctor', value=value, group='console_scripts')\n"
        f"sys.argv = ['bnbook-doctor', {missing!r}, '--data', 'missing.npz']\n"
        "sys.exit(entry.load()())\n"
    )
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2, run.stderr
    assert f"error: model file {missing!r} does not exist" in run.stderr and "Traceback" not in run.stderr


def test_slightly_negative_variance_is_a_warning_not_an_error(trained: keras.Model) -> None:
    """Review L3: var in (-eps, 0) keeps sqrt(var + eps) finite (a warning); at or below -eps it is an error."""
    model = _copy(trained)
    bn = model.get_layer("cnn_bn1")
    eps = float(bn.epsilon)
    for value, severity in ((-0.01 * eps, "warning"), (-2.0 * eps, "error")):
        variance = trained.get_layer("cnn_bn1").moving_variance.numpy().copy()
        variance[5] = value
        bn.moving_variance.assign(variance)
        (found,) = [f for f in static_checks(model).findings if f.kind == "non_finite"]
        assert (found.layer, found.severity, found.evidence["channels"]) == ("cnn_bn1", severity, "5"), found


def test_override_fix_says_what_freezing_costs_and_when_it_matters() -> None:
    """Review L7, L8: the fix names the frozen gamma/beta and that a model that only predicts is unaffected."""
    fix = doctor.evidence._FIX["training_false_override"]
    assert "gamma and beta then stop training" in fix and "only predicts is unaffected" in fix


def _smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """Images in [-1, 1] with spatial structure (upsampled noise through tanh), as preprocess_input gives."""
    gen = np.random.default_rng(seed)
    coarse = np.repeat(np.repeat(gen.standard_normal((n, size // 4, size // 4, 3)), 4, axis=1), 4, axis=2)
    return np.tanh(coarse + 0.3 * gen.standard_normal((n, size, size, 3))).astype("float32")


def test_preprocessing_mismatch_names_preprocessing_first_on_mobilenetv2() -> None:
    # Review 2 N3: MobileNetV2's statistics from [-1, 1] images (its preprocess_input), diagnosed on [0, 1]
    # images of the same kind. Only bn_Conv1 (fed by the input through no earlier BN) is off; every deeper
    # layer sees normalised values again. The fix names preprocessing first; the severity is unchanged.
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        input_shape=(48, 48, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    reestimate_bn_statistics(model, _smooth_images(128, 48, seed=1))
    x = _smooth_images(64, 48, seed=2)
    assert diagnose(model, x).problems == []  # the same preprocessing: clean
    report = diagnose(model, (x + 1.0) / 2.0)
    assert report.layers("stale_statistics") == ["bn_Conv1"], str(report)
    assert report.kinds("error", "warning") == {"stale_statistics"}
    (stale,) = [f for f in report.findings if f.kind == "stale_statistics"]
    assert stale.severity == "warning"  # no labels: no gain measured, a warning as before
    assert stale.fix.startswith("if x is not preprocessed as in training")
    assert stale.fix.index("preprocess_input") < stale.fix.index("probes.reestimate_bn_statistics")
