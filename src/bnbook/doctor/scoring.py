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
        is_probability = np.all(safe >= -1e-6) and np.allclose(safe[ok].sum(axis=1), 1.0, atol=1e-3)
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
        prob = flat if np.all((flat[np.isfinite(flat)] >= 0) & (flat[np.isfinite(flat)] <= 1)) else 1 / (1 + np.exp(-flat))
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
