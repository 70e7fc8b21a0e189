"""Quiet output: TensorFlow's loggers, and whether the helpers print progress.

``make execute``, ``make test`` and the robustness runs set ``BNBOOK_QUIET=1`` so that
the committed notebooks hold no progress lines; a reader running a chapter by hand
sees them.
"""

from __future__ import annotations

import logging
import os
import warnings

__all__ = ["QUIET_ENV_VAR", "TF_LOG_LEVEL", "quiet_cpp_logs", "quiet_tensorflow", "show_progress"]

#: When this environment variable is "1", helpers print no progress lines.
QUIET_ENV_VAR = "BNBOOK_QUIET"

#: The environment variable and value that keep TensorFlow's C++ log lines out of the outputs.
TF_LOG_LEVEL: tuple[str, str] = ("TF_CPP_MIN_LOG_LEVEL", "3")


def quiet_cpp_logs() -> None:
    """Set ``TF_CPP_MIN_LOG_LEVEL=3`` unless already set; it only works before TensorFlow is imported."""
    os.environ.setdefault(*TF_LOG_LEVEL)


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ (if not yet imported) and Python loggers and Keras's warnings."""
    quiet_cpp_logs()
    import absl.logging  # noqa: PLC0415  (import after the environment variable)

    absl.logging.set_verbosity(absl.logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="keras")


def show_progress(progress: bool | None) -> bool:
    """Whether to print progress: ``progress`` if given, else unless ``BNBOOK_QUIET`` is "1".

    Raises:
        TypeError: ``progress`` is neither None nor a bool.
    """
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")
    if progress is None:
        return os.environ.get(QUIET_ENV_VAR, "") != "1"
    return progress
