"""Per-example loss and accuracy of the chosen output against ``y``, and paired differences."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

@dataclass
class _Target:
    """How to read the chosen output against ``y``: 'categorical', 'binary' or 'regression'."""

    kind: str
    index: Any = None  # which output (None: a single output)
    classes: int = 0
    one_hot: bool = False
    # Whether the output holds probabilities (True) or logits (False), decided once per diagnose call
    # (review 2, L6) so that every pass is read on the same scale; None: not decided yet.
    probabilities: bool | None = None


#: Final activations that make an output probabilities, per reading; "linear" (no activation) means logits.
_PROBABILITY_ACTIVATIONS = {"categorical": ("softmax",), "binary": ("sigmoid", "hard_sigmoid")}


def _output_tensor(model: Any, index: Any) -> Any:
    """The symbolic tensor of the chosen output, or None (a subclassed model has none)."""
    functional = getattr(model, "_functional", None) or model  # a Sequential model wraps a functional one
    structure = getattr(functional, "_outputs_struct", None)
    if structure is None:
        return None
    if index is not None:
        return structure[index]
    if isinstance(structure, (list, tuple)):
        return structure[0] if len(structure) == 1 else None
    return structure


def _final_reading(model: Any, index: Any, kind: str, depth: int = 0) -> bool | None:
    """Probabilities (True) or logits (False) from the layer that makes the chosen output; None: unknown.

    The output's last layer: a softmax (categorical) or sigmoid (binary) activation, or a
    ``Softmax`` layer, means probabilities; a layer with no activation (``linear``) means
    logits; a nested model is followed to its own output; anything else is unknown (the
    data decide, see :func:`bnbook.doctor.streaming._run`).
    """
    if kind not in _PROBABILITY_ACTIVATIONS or depth > 8:
        return None
    try:
        operation = _output_tensor(model, index)._keras_history.operation
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    if isinstance(operation, keras.Model):
        return _final_reading(operation, None, kind, depth + 1)
    if isinstance(operation, keras.layers.Softmax):
        return kind == "categorical" or None
    name = getattr(getattr(operation, "activation", None), "__name__", None)
    if name in _PROBABILITY_ACTIVATIONS[kind]:
        return True
    if name == "linear":
        return False
    return None


def _read_as_probabilities(outputs: Any, target: _Target) -> bool:
    """Whether one slice's outputs can be probabilities: binary, every finite output in [0, 1];
    categorical, every finite row non-negative and summing to 1. The first pass scored
    decides from all its slices (:func:`bnbook.doctor.streaming._run`)."""
    values = np.asarray(keras.ops.convert_to_numpy(outputs), np.float64).reshape(len(outputs), -1)
    if target.kind == "binary":
        finite = values[np.isfinite(values)]
        return bool(np.all((finite >= 0) & (finite <= 1)))
    rows = values.reshape(-1, target.classes)
    ok = np.isfinite(rows).all(axis=1)
    return bool(np.all(rows[ok] >= -1e-6) and np.allclose(rows[ok].sum(axis=1), 1.0, atol=1e-3))


def _select(outputs: Any, index: Any) -> Any:
    if index is None:
        return outputs
    return outputs[index]


def _per_example(outputs: Any, y: np.ndarray, target: _Target) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-example loss and accuracy (mean over positions for segmentation/sequence outputs)."""
    out = np.asarray(keras.ops.convert_to_numpy(outputs), np.float64)
    n = len(out)
    finite = np.isfinite(out.reshape(n, -1)).all(axis=1)
    if target.kind == "categorical":
        rows = out.reshape(-1, target.classes)
        ok = np.isfinite(rows).all(axis=1)
        safe = np.where(np.isfinite(rows), rows, 0.0)
        if target.probabilities is None:
            is_probability = np.all(safe >= -1e-6) and np.allclose(safe[ok].sum(axis=1), 1.0, atol=1e-3)
        else:
            is_probability = target.probabilities
        if not is_probability:
            safe = np.exp(safe - safe.max(axis=1, keepdims=True))
            safe /= safe.sum(axis=1, keepdims=True)
        if target.one_hot:
            labels = np.argmax(y.reshape(-1, target.classes), axis=1)
        else:
            labels = y.reshape(-1).astype(np.int64)
        p = np.clip(safe[np.arange(len(safe)), labels], 1e-7, 1.0)
        loss = np.where(ok, -np.log(p), -np.log(1e-7)).reshape(n, -1).mean(axis=1)
        correct = ((np.argmax(safe, axis=1) == labels) & ok).reshape(n, -1).mean(axis=1)
        return loss, correct
    flat = out.reshape(n, -1)
    truth = y.reshape(n, -1).astype(np.float64)
    if target.kind == "binary":
        if target.probabilities is None:
            is_probability = bool(np.all((flat[np.isfinite(flat)] >= 0) & (flat[np.isfinite(flat)] <= 1)))
        else:
            is_probability = target.probabilities
        with np.errstate(over="ignore"):
            prob = flat if is_probability else 1 / (1 + np.exp(-flat))
        prob = np.clip(np.nan_to_num(prob, nan=0.5), 1e-7, 1 - 1e-7)
        loss = -(truth * np.log(prob) + (1 - truth) * np.log(1 - prob)).mean(axis=1)
        correct = (((prob > 0.5) == (truth > 0.5)) & finite[:, None]).mean(axis=1)
        return np.where(finite, loss, -np.log(1e-7)), correct
    err = np.where(np.isfinite(flat), flat - truth, np.inf)
    return np.minimum((err**2).mean(axis=1), 1e30), None


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of ``a - b`` and its standard error (paired: the same examples)."""
    m = min(len(a), len(b))
    d = np.asarray(a[:m], np.float64) - np.asarray(b[:m], np.float64)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(m)) if m > 1 else float("inf")
