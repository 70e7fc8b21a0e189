"""Argument checks shared by the package's public functions (private)."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_int(value: object, what: str, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int; ``TypeError`` if it is not one (bools rejected), ``ValueError`` below ``minimum``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {value!r} of type {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def check_model(model: Any, what: str = "model") -> None:
    """``TypeError`` unless ``model`` is a ``keras.Model`` (Sequential, Functional or subclassed)."""
    import keras  # noqa: PLC0415

    if not isinstance(model, keras.Model):
        raise TypeError(f"{what} must be a keras.Model (Sequential, Functional or subclassed), got {type(model).__name__}")


def require_columns(table: object, columns: tuple[str, ...]) -> None:
    """``TypeError`` unless ``table`` is a DataFrame; ``ValueError`` naming the missing and present columns."""
    import pandas as pd  # noqa: PLC0415

    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the table; present: {', '.join(map(str, table.columns))}")


def check_bool(value: object, what: str) -> bool:
    """Return ``value``; ``TypeError`` unless it is ``True`` or ``False`` (a string such as ``"no"`` is not)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be True or False, got {value!r} of type {type(value).__name__}")
    return bool(value)


def check_sequence(value: object, what: str, example: str) -> list[Any]:
    """Return ``value`` as a list; ``TypeError`` for a single number or a string, naming ``example``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
        raise TypeError(f"{what} must be a sequence, e.g. {example}; got {value!r} of type {type(value).__name__}")
    return list(value)


def check_finite(x: np.ndarray, what: str) -> None:
    """``ValueError`` naming how many values are NaN or infinite (integer arrays always pass)."""
    if np.issubdtype(x.dtype, np.inexact):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise ValueError(f"{what} must be finite: {bad} of its {np.size(x)} values are NaN or infinite")


def check_model_inputs(model: Any, x: np.ndarray, what: str = "x") -> None:
    """``ValueError`` for NaN/inf in ``x``; ``TypeError`` for integer ``x`` where the model takes floats.

    Keras would cast integer images (uint8, 0 to 255) silently, and a model trained on
    [0, 1] would then see values 255 times too large. Integer ``x`` is accepted for a
    model whose input is an integer (token ids, for example).
    """
    check_finite(x, what)
    if not np.issubdtype(x.dtype, np.integer) and x.dtype != np.bool_:
        return
    try:
        inputs = model.inputs  # a subclassed model has none: nothing to compare with
    except (AttributeError, ValueError):
        inputs = None
    dtype = str(getattr(inputs[0], "dtype", "")) if inputs else ""
    if dtype.startswith(("float", "bfloat")):
        raise TypeError(
            f"{what} has dtype {x.dtype} but the model takes {dtype} inputs; convert it first, "
            f"e.g. {what}.astype('float32') / 255 for images in 0-255 if the model was trained on [0, 1] "
            f"(or {what}.astype('float32') if the model rescales its inputs itself)"
        )
