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
