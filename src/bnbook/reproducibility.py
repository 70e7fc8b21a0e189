"""One-call set-up for seeded, deterministic and quiet notebooks."""

from __future__ import annotations

import logging
import os
import warnings

from bnbook._checks import check_int

__all__ = ["set_up"]


def _quiet_tensorflow() -> None:
    """Silence TensorFlow's Python and C++ loggers (best effort, before import)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import absl.logging  # noqa: PLC0415  (import after the environment variable)

    absl.logging.set_verbosity(absl.logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="keras")


def set_up(seed: int = 0, *, deterministic: bool = True, quiet: bool = True) -> int:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow deterministic and quiet.

    Calls :func:`keras.utils.set_random_seed` (which seeds ``random``, NumPy and the
    backend) and, when ``deterministic``, enables TensorFlow's op determinism so that
    the same seed gives bit-identical training on the same machine.

    Args:
        seed: A non-negative integer seed.
        deterministic: Enable ``tf.config.experimental.enable_op_determinism()``.
        quiet: Lower TensorFlow's log level so that no C++ or Python log lines
            reach the notebook outputs.

    Returns:
        The seed, so a notebook can glue or print it.

    Raises:
        TypeError: If ``seed`` is not an ``int`` (``bool`` is rejected).
        ValueError: If ``seed`` is negative or at least ``2**32``.
    """
    seed = check_int(seed, "seed")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if quiet:
        _quiet_tensorflow()
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return seed
