"""The doctor's thresholds: :class:`Thresholds`, its defaults and the former module constants.

Where each default comes from is documented in :mod:`bnbook.doctor`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

@dataclass(frozen=True)
class Thresholds:
    """The doctor's thresholds; see the module docstring for where each default comes from."""

    stale_variance: float = 2.0
    stale_mean: float = 0.5
    channel_variance: float = 4.0
    channel_mean: float = 1.0
    channel_fraction: float = 0.05
    channel_count: int = 3
    channel_broken_variance: float = 10.0
    channel_broken_mean: float = 3.0
    never_updated_variance: float = 1.5
    dropout_ratio: float = 0.8
    gap_z: float = 3.0
    gap_min: float = 0.01
    gap_loss_ratio: float = 2.0
    gain_loss_ratio: float = 1.25
    small_batch: int = 16
    pytorch_momentum: float = 0.5
    epsilon_fraction: float = 0.5
    input_scale_variance: float = 100.0
    input_scale_fraction: float = 0.9

    @classmethod
    def with_overrides(cls, overrides: dict[str, Any]) -> Thresholds:
        """The defaults with ``overrides`` applied; TypeError/ValueError naming a bad one."""
        names = [f.name for f in fields(cls)]
        for name, value in overrides.items():
            if name not in names:
                raise TypeError(f"unknown threshold {name!r}; the thresholds are: {', '.join(names)}")
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"threshold {name} must be a number, got {value!r}")
            if not math.isfinite(float(value)) or float(value) <= 0:
                raise ValueError(f"threshold {name} must be a finite number > 0, got {value!r}")
            if name in _RATIO_BANDS and float(value) <= 1:  # a band [1/t, t]: t = 1 would divide by log(1) = 0
                raise ValueError(f"threshold {name} is a ratio band [1/t, t], so it must be > 1, got {value!r}")
            if name in _FRACTIONS and float(value) > 1:
                raise ValueError(f"threshold {name} is a fraction, so it must be <= 1, got {value!r}")
        return cls(**overrides)


#: Thresholds read as a band of ratios [1/t, t] (> 1) and as fractions (<= 1).
_RATIO_BANDS = frozenset(
    {"stale_variance", "channel_variance", "channel_broken_variance", "never_updated_variance", "input_scale_variance"}
)
_FRACTIONS = frozenset({"channel_fraction", "input_scale_fraction", "dropout_ratio"})


#: The default thresholds.
THRESHOLDS = Thresholds()
# The former module constants (the defaults), kept for readers of chapter 10.
STALE_VARIANCE = THRESHOLDS.stale_variance
NEVER_UPDATED_VARIANCE = THRESHOLDS.never_updated_variance
STALE_MEAN = THRESHOLDS.stale_mean
GAP_ACCURACY = THRESHOLDS.gap_min
DROPOUT_RATIO = THRESHOLDS.dropout_ratio
SMALL_BATCH = THRESHOLDS.small_batch
