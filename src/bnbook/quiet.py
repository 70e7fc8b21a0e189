"""Quiet output: TensorFlow's log noise, and whether the helpers print progress.

What is silenced is noise only: TensorFlow's C++ log lines (``TF_CPP_MIN_LOG_LEVEL``)
and its Python logger ``"tensorflow"`` below ERROR, and the book's own progress lines
(``make execute``, ``make test`` and the robustness runs set ``BNBOOK_QUIET=1`` so that
the committed notebooks hold none; a reader running a chapter by hand sees them).

Keras's own warnings are *not* silenced: neither its Python warnings
(``warnings.warn``, e.g. "The model does not have any trainable weights") nor what it
logs through ``absl.logging`` (e.g. the legacy HDF5 saving notice). They tell a reader
something about their model. A chapter that wants one gone handles it by its message,
in a visible cell that says why (``warnings.filterwarnings("ignore", message=...)``);
``tools.notebooks`` refuses to store a warning nobody handled.
"""

from __future__ import annotations

import logging
import os

__all__ = ["QUIET_ENV_VAR", "TF_LOG_LEVEL", "quiet_cpp_logs", "quiet_tensorflow", "show_progress"]

#: When this environment variable is "1", helpers print no progress lines.
QUIET_ENV_VAR = "BNBOOK_QUIET"

#: The environment variable and value that keep TensorFlow's C++ log lines out of the outputs.
TF_LOG_LEVEL: tuple[str, str] = ("TF_CPP_MIN_LOG_LEVEL", "3")


def quiet_cpp_logs() -> None:
    """Set ``TF_CPP_MIN_LOG_LEVEL=3`` unless already set; it only works before TensorFlow is imported."""
    os.environ.setdefault(*TF_LOG_LEVEL)


def quiet_tensorflow() -> None:
    """Silence TensorFlow's log noise: its C++ log lines (if not yet imported) and its Python logger.

    Sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless already set (:func:`quiet_cpp_logs`) and the
    ``"tensorflow"`` logger (TensorFlow's deprecation and retracing notices) to ERROR.
    Leaves Python's warning filters and ``absl.logging`` alone, so Keras's own warnings
    still reach the reader.
    """
    quiet_cpp_logs()
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


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
