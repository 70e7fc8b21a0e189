"""Bad input as a new user would try it, across the package: one row per try.

Each row is a call, the exception it must raise and a fragment of the message (the
argument's name, the value, or the accepted values). The table is the documentation of
what each function refuses; tries that used to pass silently (NaN in ``x``, duplicate
seeds, ``deterministic="no"``, a DataFrame of two variants) or failed with a message that
did not name the argument (``seeds=5``, ``percentiles=50``, ``step_sizes=0.1``,
``batch_size="64"``, ``callbacks=[cb]``, an uncompiled variant) are in it. Models are
checked unchanged after every refusal (nothing half-written).
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from bnbook import data, experiments, landscape, plotting, probes, recorders, reproducibility, stats
from tests.model_state import assert_model_unchanged
from tests.models import mlp

X = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
Y = np.random.default_rng(1).integers(0, 3, size=32)
X_NAN = X.copy()
X_NAN[3, 0] = np.nan
X_INF = X.copy()
X_INF[5, 2] = np.inf
X_UINT8 = np.random.default_rng(2).integers(0, 256, size=(32, 6)).astype("uint8")
DATA = ((X, Y), (X[:16], Y[:16]))
TWO_VARIANTS = pd.DataFrame({"a": np.linspace(0.90, 0.95, 12), "b": np.linspace(0.91, 0.93, 12)})


def _compiled():
    model = mlp()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


COMPILED = _compiled()


def _uncompiled():
    return mlp()


def _model():
    model = mlp()
    model.build((None, 6))
    return model


def _callback():
    return keras.callbacks.Callback()


def _run(**kwargs):
    args = {"epochs": 1, "batch_size": 16, "progress": False, **kwargs}
    variants = args.pop("variants", {"m": _compiled})
    seeds = args.pop("seeds", [0])
    return lambda model: experiments.run_experiments(variants, seeds, DATA, **args)


def _percentiles(**kwargs):
    args = {"every": 1, **kwargs}
    return lambda model: recorders.InputPercentiles("bn2", args.pop("probe_x", X), **args)


def _started(recorder):
    def run(model):
        recorder.set_model(model)
        recorder.on_train_begin()

    return run


# (id, call on a fresh built model, exception, fragment of the message)
TRIES = [
    # probes: NaN/inf refused before anything is written; integer images refused for a float model
    ("reestimate NaN x", lambda m: probes.reestimate_bn_statistics(m, X_NAN), ValueError, "1 of its 192 values are NaN or infinite"),
    ("reestimate inf x", lambda m: probes.reestimate_bn_statistics(m, X_INF), ValueError, "x must be finite"),
    ("reestimate uint8 x", lambda m: probes.reestimate_bn_statistics(m, X_UINT8), TypeError, "x has dtype uint8 but the model takes float32"),
    ("reestimate batch_size='64'", lambda m: probes.reestimate_bn_statistics(m, X, batch_size="64"), TypeError, "batch_size must be an int, got '64'"),
    ("reestimate x list", lambda m: probes.reestimate_bn_statistics(m, X.tolist()), TypeError, "x must be a NumPy array"),
    ("variances NaN x", lambda m: probes.bn_input_variances(m, X_NAN, batch_size=8), ValueError, "x must be finite"),
    ("variances uint8 x", lambda m: probes.bn_input_variances(m, X_UINT8, batch_size=8), TypeError, "astype('float32') / 255"),
    ("variances batch_size=0", lambda m: probes.bn_input_variances(m, X, batch_size=0), ValueError, "batch_size must be >= 1, got 0"),
    ("spread batch_sizes=8", lambda m: probes.batch_statistics_spread(X, 8), TypeError, "batch_sizes must be a sequence, e.g. [2, 8, 32]"),
    ("spread NaN features", lambda m: probes.batch_statistics_spread(X_NAN, [2]), ValueError, "features must be finite"),
    ("spread batch size 2.5", lambda m: probes.batch_statistics_spread(X, [2.5]), TypeError, "batch size must be an int"),
    ("bn_variables of a layer", lambda m: probes.bn_variables(m.layers[1]), TypeError, "must be a keras.Model"),
    ("channel_moments axis=1.0", lambda m: probes.channel_moments(X, axis=1.0), TypeError, "axis must be an int"),
    # landscape
    ("profile step_sizes=0.1", lambda m: landscape.profile_along_gradient(m, X, Y, 0.1), TypeError, "step_sizes must be a sequence, e.g. [0.0, 0.1, 0.2]"),
    ("profile step_sizes=['a']", lambda m: landscape.profile_along_gradient(m, X, Y, ["a"]), TypeError, "step_sizes must be numbers"),
    ("profile NaN step size", lambda m: landscape.profile_along_gradient(m, X, Y, [np.nan]), ValueError, "finite and >= 0"),
    ("profile NaN x", lambda m: landscape.profile_along_gradient(m, X_NAN, Y, [0.1]), ValueError, "x must be finite"),
    ("profile uint8 x", lambda m: landscape.profile_along_gradient(m, X_UINT8, Y, [0.1]), TypeError, "x has dtype uint8"),
    ("profile training='no'", lambda m: landscape.profile_along_gradient(m, X, Y, [0.1], training="no"), TypeError, "training must be True or False, got 'no'"),
    # recorders
    ("percentiles=50", _percentiles(percentiles=50), TypeError, "percentiles must be a sequence, e.g. (15, 50, 85); got 50"),
    ("percentiles=('50',)", _percentiles(percentiles=("50",)), ValueError, "percentiles must be numbers in [0, 100]"),
    ("percentiles NaN probe_x", _percentiles(probe_x=X_NAN), ValueError, "probe_x must be finite"),
    ("percentiles uint8 probe_x", lambda m: _started(recorders.InputPercentiles("bn2", X_UINT8, every=1))(m), TypeError, "probe_x has dtype uint8"),
    ("percentiles training='no'", _percentiles(training="no"), TypeError, "training must be True or False"),
    ("BNRecorder one layer", lambda m: recorders.BNRecorder(m.get_layer("bn1")), TypeError, "wrap one layer in a list"),
    ("BNRecorder NaN inputs", lambda m: recorders.BNRecorder(inputs=X_NAN), ValueError, "inputs must be finite"),
    ("BNRecorder uint8 inputs", lambda m: _started(recorders.BNRecorder(inputs=X_UINT8))(m), TypeError, "inputs has dtype uint8"),
    ("BNRecorder every=1.5", lambda m: recorders.BNRecorder(every=1.5), TypeError, "every must be an int"),
    ("StepAccuracy NaN x", lambda m: recorders.StepAccuracy(X_NAN, Y, every=1), ValueError, "x must be finite"),
    ("StepAccuracy uint8 x", lambda m: _started(recorders.StepAccuracy(X_UINT8, Y, every=1))(m), TypeError, "x has dtype uint8"),
    # experiments
    ("seeds=5", _run(seeds=5), TypeError, "seeds must be a sequence, e.g. [0, 1, 2]; got 5"),
    ("seeds=[0, 0]", _run(seeds=[0, 0]), ValueError, "seeds [0] appear more than once"),
    ("seeds=[0, 1.5]", _run(seeds=[0, 1.5]), TypeError, "each seed must be an int"),
    ("seeds=[-1]", _run(seeds=[-1]), ValueError, "each seed must be >= 0"),
    ("batch_size='64'", _run(batch_size="64"), TypeError, "batch_size must be a sequence, e.g. 64 or [2, 8, 32]; got '64'"),
    ("callbacks=[cb]", _run(callbacks=[_callback()]), TypeError, "callbacks must be a function returning fresh callbacks"),
    ("uncompiled variant", _run(variants={"raw": _uncompiled}), ValueError, "variant 'raw' returned a model that is not compiled"),
    ("variants as a list", _run(variants=[_compiled]), TypeError, "variants must be a dict"),
    ("train callbacks=cb", lambda m: experiments.train(COMPILED, X, Y, epochs=1, callbacks=_callback()), TypeError, "callbacks must be a list of keras.callbacks.Callback"),
    ("train uncompiled", lambda m: experiments.train(m, X, Y, epochs=1), ValueError, "must be compiled first"),
    # reproducibility
    ("set_up deterministic='no'", lambda m: reproducibility.set_up(0, deterministic="no"), TypeError, "deterministic must be True or False, got 'no'"),
    ("set_up quiet=0", lambda m: reproducibility.set_up(0, quiet=0), TypeError, "quiet must be True or False"),
    ("set_up seed='0'", lambda m: reproducibility.set_up("0"), TypeError, "seed must be an int, got '0'"),
    # stats
    ("compare DataFrame of two variants", lambda m: stats.compare_paired(TWO_VARIANTS), TypeError, "columns ['a', 'b']"),
    ("compare 2-D array", lambda m: stats.compare_paired(TWO_VARIANTS.to_numpy()), TypeError, "shape (12, 2)"),
    ("compare dict", lambda m: stats.compare_paired({"a": [0.1, 0.2]}), TypeError, "one difference per seed"),
    ("compare NaN margin", lambda m: stats.compare_paired([0.1, 0.2], margin=np.nan), ValueError, "margin must be > 0"),
    ("plot DataFrame of two variants", lambda m: stats.plot_paired_differences({"a vs b": TWO_VARIANTS}), TypeError, "columns ['a', 'b']"),
    ("paired_differences a list", lambda m: stats.paired_differences([1, 2], "a", "b"), TypeError, "expected a pandas DataFrame"),
    ("sd_upper_bound one value", lambda m: stats.sd_upper_bound([0.1]), ValueError, "at least 2 values"),
    ("sd_upper_bound NaN", lambda m: stats.sd_upper_bound([0.1, np.nan, 0.2]), ValueError, "must be finite"),
    ("sd_upper_bound confidence=80", lambda m: stats.sd_upper_bound([0.1, 0.2], confidence=80), ValueError, "confidence must be in (0, 1), got 80"),
    ("sd_upper_bound DataFrame of two variants", lambda m: stats.sd_upper_bound(TWO_VARIANTS), TypeError, "columns ['a', 'b']"),
    ("ECE of logits", lambda m: stats.expected_calibration_error(X[:, :3], Y), ValueError, "summing to 1"),
    ("ECE one-hot labels", lambda m: stats.expected_calibration_error(np.full((4, 2), 0.5), np.eye(2)[[0, 1, 0, 1]]), ValueError, "1-D array of integer"),
    # data, plotting
    ("load n_test='100'", lambda m: data.load(n_test="100"), TypeError, "n_test must be an int, got '100'"),
    ("load flatten='no'", lambda m: data.load(flatten="no"), TypeError, "flatten must be a bool"),
    ("plot_curves missing column", lambda m: plotting.plot_curves(TWO_VARIANTS, "loss"), ValueError, "['epoch', 'loss', 'variant'] are not in the table; present: a, b"),
]


@pytest.mark.parametrize(("call", "error", "fragment"), [pytest.param(c, e, f, id=i) for i, c, e, f in TRIES])
def test_bad_input_raises_a_clear_error(call, error, fragment):
    model = _model()
    with assert_model_unchanged(model, global_random=False):  # some calls seed on purpose (set_up)
        with pytest.raises(error) as info:
            call(model)
    assert fragment in str(info.value)


def test_a_one_column_table_of_differences_is_accepted():
    diff = (TWO_VARIANTS["a"] - TWO_VARIANTS["b"]).to_frame("a - b")
    assert stats.compare_paired(diff) == stats.compare_paired(diff["a - b"].to_numpy())
