"""Checking :func:`~bnbook.doctor.diagnose`'s arguments before any pass runs (raising as it documents)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from bnbook._checks import check_int, check_model
from bnbook.doctor.scoring import _Target
from bnbook.doctor.thresholds import Thresholds

def _model_inputs(model: keras.Model) -> list[Any] | None:
    """The model's symbolic inputs; None for a model built by calling it on data (a subclassed model)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return list(inputs) if inputs else None


def _check_model(model: Any) -> None:
    check_model(model)
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built: give it an Input or call it on data first")
    inputs = _model_inputs(model)
    # A built model without symbolic inputs (subclassed, built by calling it on data) is diagnosed on x as
    # it is: its input is whatever x holds (x.shape[1:]); the passes only call the model.
    if inputs is not None and len(inputs) != 1:
        raise ValueError(f"only single-input models are supported; {model.name!r} has {len(inputs)} inputs")


def _check_x(model: keras.Model, x: Any) -> tuple[np.ndarray, str | None]:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy array of model inputs, got {type(x).__name__}")
    if len(x) == 0:
        raise ValueError("x is empty: pass a sample of the training inputs (at least 2 examples)")
    if len(x) < 2:
        raise ValueError(f"x must hold at least 2 examples, got {len(x)}")
    inputs = _model_inputs(model)
    got = tuple(x.shape[1:])
    if inputs is not None:
        expected = tuple(inputs[0].shape[1:])
        if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got)):
            raise ValueError(f"x has examples of shape {got}, the model expects {expected} (batch axis first)")
    note = None
    # No symbolic input: its dtype is unknown (an integer x may be token ids), so x is passed as it is.
    input_dtype = keras.backend.standardize_dtype(inputs[0].dtype) if inputs is not None else ""
    if x.dtype.kind in "biu" and "float" in input_dtype:
        note = f"x is {x.dtype} (values {x.min()}..{x.max()}); cast to {input_dtype} as fit() does"
        x = x.astype(input_dtype)
    elif x.dtype.kind not in "fiub":
        raise TypeError(f"x must hold numbers, got dtype {x.dtype}")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(x), -1).any(axis=1))[0, 0])
            raise ValueError(
                f"x holds {int(bad.sum())} non-finite value(s) (NaN or inf), first in example {first}: "
                "clean the data first (the doctor measures BN statistics on x)"
            )
    return x, note


def _choose_output(model: keras.Model, sample: Any, output: Any) -> tuple[Any, Any, str | None]:
    """``(index, chosen output on sample, note)``; ValueError naming ``output`` when it is not one."""
    if isinstance(sample, dict):
        keys = list(sample)
        if output is None:
            return keys[0], sample[keys[0]], f"{len(keys)} outputs; evaluated the first, {keys[0]!r}"
        if output not in sample:
            raise ValueError(f"output={output!r} is not an output of the model; its outputs are {keys}")
        return output, sample[output], None
    if isinstance(sample, (list, tuple)):
        names = list(getattr(model, "output_names", []) or [])
        if output is None:
            name = names[0] if names else "0"
            return 0, sample[0], f"{len(sample)} outputs; evaluated the first ({name!r}): pass output= to choose"
        if isinstance(output, str):
            if output not in names:
                raise ValueError(f"output={output!r} is not an output of the model; its outputs are {names}")
            return names.index(output), sample[names.index(output)], None
        if isinstance(output, (int, np.integer)) and not isinstance(output, bool) and -len(sample) <= output < len(sample):
            return int(output), sample[int(output)], None
        raise ValueError(f"output={output!r} must be an output index in [0, {len(sample)}) or a name in {names}")
    if output not in (None, 0) and output not in (getattr(model, "output_names", None) or []):
        raise ValueError(f"output={output!r} given, but the model has a single output")
    return None, sample, None


def _check_y(y: Any, n: int, out_shape: tuple[int, ...]) -> _Target:
    """What ``y`` means for an output of shape ``(N, *out_shape)``; ValueError naming ``y`` otherwise."""
    if not isinstance(y, np.ndarray):
        raise TypeError(f"y must be a NumPy array of labels or None, got {type(y).__name__}")
    if len(y) != n:
        raise ValueError(f"y has {len(y)} labels for {n} examples of x; they must be equally many")
    if y.dtype.kind not in "biuf":
        raise TypeError(f"y must hold numbers, got dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"y holds {int((~np.isfinite(y)).sum())} non-finite value(s) (NaN or inf)")
    label = tuple(y.shape[1:])
    classes = out_shape[-1] if out_shape else 1
    spatial = out_shape[:-1] if out_shape else ()
    integral = bool(np.all(y == np.round(y)))
    if out_shape and classes > 1:
        if label == out_shape:
            rows = y.astype(np.float64)
            if np.all(rows >= 0) and np.allclose(rows.sum(axis=-1), 1.0, atol=1e-3):
                return _Target("categorical", classes=classes, one_hot=True)
            return _Target("regression")
        if label in (spatial, spatial + (1,)):
            if not integral:
                raise ValueError(
                    f"y holds non-integer values but has the shape of class labels {label} for an output with "
                    f"{classes} classes: pass integer labels in [0, {classes}) or one-hot rows of shape {out_shape}"
                )
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= classes:
                raise ValueError(
                    f"y holds labels outside [0, {classes}) (min {low}, max {high}); the model's output has "
                    f"{classes} classes"
                )
            return _Target("categorical", classes=classes)
        raise ValueError(
            f"y has labels of shape {label}; for an output of shape (N, {', '.join(map(str, out_shape))}) the "
            f"doctor accepts integer labels of shape (N, {', '.join(map(str, spatial))}) or one-hot labels of "
            f"shape (N, {', '.join(map(str, out_shape))})"
        )
    # one unit (or no channel axis): binary classifier or regression
    squeezed = out_shape[:-1] if out_shape and out_shape[-1] == 1 else out_shape
    if label not in (squeezed, squeezed + (1,)):
        if len(label) == len(out_shape) and label[:-1] == squeezed and label[-1:] == (2,):
            raise ValueError(
                f"y has one-hot labels of shape {label}, but the output has one unit (a sigmoid or a score): pass "
                f"y as 0/1 of shape (N,) or (N, 1) (for example y.argmax(axis=-1))"
            )
        raise ValueError(f"y has labels of shape {label}, the output has shape {out_shape} per example")
    if integral and set(np.unique(y).tolist()) <= {0, 1}:
        return _Target("binary")
    return _Target("regression")


def _check_arguments(
    model: Any,
    x: Any,
    y: Any,
    batch_size: Any,
    output: Any,
    pass_size: Any,
    seed: Any,
    thresholds: dict[str, Any],
) -> tuple[Thresholds, int | None, int | None, int, np.ndarray, str | None, Any, str | None, _Target | None]:
    """Every argument of :func:`diagnose` checked (raising as it documents), before any pass runs."""
    _check_model(model)
    t = Thresholds.with_overrides(thresholds)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", minimum=1)
    if pass_size is not None:
        pass_size = check_int(pass_size, "pass_size", minimum=2)
    seed = check_int(seed, "seed", minimum=0)
    x, cast_note = _check_x(model, x)
    try:
        sample = model(x[: min(2, len(x))], training=False)
    except Exception as error:
        if _model_inputs(model) is not None:
            raise
        # No declared input shape to check x against first: say what was tried.
        raise ValueError(
            f"model {model.name!r} (built by calling it, no keras.Input) fails on examples of x's shape "
            f"{tuple(x.shape[1:])}: {error}"
        ) from error
    index, chosen, output_note = _choose_output(model, sample, output)
    out_shape = tuple(int(s) for s in keras.ops.shape(chosen)[1:])
    target = _check_y(y, len(x), out_shape) if y is not None else None
    return t, batch_size, pass_size, seed, x, cast_note, index, output_note, target
