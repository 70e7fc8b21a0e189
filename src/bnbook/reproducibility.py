"""One-call set-up for seeded, deterministic and quiet notebooks, and the book-wide seed offset.

Every seed the book picks goes through :func:`shifted`, which adds the offset read
from the environment variable ``BNBOOK_SEED_OFFSET`` (default 0). ``make robustness``
sets it to re-run every chapter on seeds the published run never used: the seed a
chapter *names* (``set_up(0)``, ``SEEDS = [0, 1, 2]``, ``rng(3)``) stays the label in
its tables, the seed *used* is the shifted one.
"""

from __future__ import annotations

import os

import numpy as np

from bnbook._checks import check_bool, check_int
from bnbook.quiet import quiet_tensorflow

__all__ = ["SEED_OFFSET_VAR", "rng", "seed_offset", "set_up", "shifted"]

#: The environment variable that shifts every seed the book picks.
SEED_OFFSET_VAR = "BNBOOK_SEED_OFFSET"

_MAX_SEED = 2**32


def seed_offset() -> int:
    """Return the seed offset from ``BNBOOK_SEED_OFFSET`` (0 when unset or empty).

    Raises:
        ValueError: The variable is set to something other than a non-negative integer
            below ``2**31``.
    """
    raw = os.environ.get(SEED_OFFSET_VAR, "").strip()
    if not raw:
        return 0
    try:
        offset = int(raw)
    except ValueError:
        raise ValueError(f"{SEED_OFFSET_VAR} must be a non-negative integer, got {raw!r}") from None
    if not 0 <= offset < 2**31:
        raise ValueError(f"{SEED_OFFSET_VAR} must be in [0, 2**31), got {offset}")
    return offset


def shifted(seed: int) -> int:
    """Return the seed actually used for the book's seed ``seed``: ``seed + seed_offset()``.

    Raises:
        TypeError: ``seed`` is not an int (``bool`` is rejected).
        ValueError: ``seed`` is negative, or the shifted seed is ``2**32`` or more.
    """
    seed = check_int(seed, "seed")
    if seed < 0:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    used = seed + seed_offset()
    if used >= _MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**32) after adding {SEED_OFFSET_VAR}, got {used}")
    return used


def rng(seed: int) -> np.random.Generator:
    """Return ``np.random.default_rng(shifted(seed))``: a NumPy generator that honours the offset.

    Raises:
        TypeError, ValueError: As :func:`shifted`.
    """
    return np.random.default_rng(shifted(seed))


def set_up(seed: int = 0, *, deterministic: bool = True, quiet: bool = True) -> int:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow deterministic and quiet.

    Calls :func:`keras.utils.set_random_seed` with ``shifted(seed)`` (which seeds
    ``random``, NumPy and the backend) and, when ``deterministic``, enables
    TensorFlow's op determinism so that the same seed gives bit-identical training on
    the same machine.

    Args:
        seed: A non-negative integer seed; ``BNBOOK_SEED_OFFSET`` is added to it.
        deterministic: Enable ``tf.config.experimental.enable_op_determinism()``.
        quiet: Lower TensorFlow's log level so that no C++ or Python log lines
            reach the notebook outputs.

    Returns:
        The seed as given (the label a chapter shows), not the shifted one.

    Raises:
        TypeError: If ``seed`` is not an ``int`` (``bool`` is rejected), or
            ``deterministic``/``quiet`` not ``True`` or ``False`` (``"no"`` is not).
        ValueError: If ``seed`` is negative, or at least ``2**32`` once shifted, or
            ``BNBOOK_SEED_OFFSET`` is not a non-negative integer.
    """
    used = shifted(seed)
    deterministic = check_bool(deterministic, "deterministic")
    quiet = check_bool(quiet, "quiet")
    if quiet:
        quiet_tensorflow()
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    keras.utils.set_random_seed(used)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return int(seed)
