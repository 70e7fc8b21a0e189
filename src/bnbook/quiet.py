"""Quiet output: TensorFlow's log noise, and whether the helpers print progress.

What is lowered: TensorFlow's C++ logging (``TF_CPP_MIN_LOG_LEVEL=3``, set before
TensorFlow is imported: its INFO, WARNING and ERROR lines are dropped, FATAL ones kept),
its Python logger ``"tensorflow"`` below ERROR, and the book's own progress lines
(``make execute``, ``make test`` and the robustness runs set ``BNBOOK_QUIET=1`` so that
the committed notebooks hold none; a reader running a chapter by hand sees them).

Not everything goes: in TensorFlow 2.21 a process that imports TensorFlow with
``TF_CPP_MIN_LOG_LEVEL=3`` still writes a few start-up lines to stderr ("All log
messages before absl::InitializeLog() is called are written to STDERR" and the oneDNN
custom-operations notice, on CPUs where oneDNN is on), which the variable does not reach. A reader running a
chapter in Jupyter or Colab sees them under the first cell; ``tools.notebooks`` strips
exactly those lines from the stored outputs. Level 3 also hides C++ ERROR lines: where
TensorFlow itself fails, re-run with ``TF_CPP_MIN_LOG_LEVEL=0`` set before importing.

The ``"tensorflow"`` logger at ERROR also hides ``tf.function``'s retracing warnings.
The chapters build many small models and call layers on tensors of new shapes on
purpose, which can trigger them about the book's demonstrations rather than about a
reader's model. When you look for retracing in your own code, set it back:
``logging.getLogger("tensorflow").setLevel(logging.WARNING)``.

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

#: The environment variable and value that drop TensorFlow's C++ INFO, WARNING and ERROR log lines.
TF_LOG_LEVEL: tuple[str, str] = ("TF_CPP_MIN_LOG_LEVEL", "3")


def quiet_cpp_logs() -> None:
    """Set ``TF_CPP_MIN_LOG_LEVEL=3`` unless already set; it only works before TensorFlow is imported."""
    os.environ.setdefault(*TF_LOG_LEVEL)


def quiet_tensorflow() -> None:
    """Lower TensorFlow's log level: its C++ logging (if not yet imported) and its Python logger.

    Sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless already set (:func:`quiet_cpp_logs`) and the
    ``"tensorflow"`` logger (TensorFlow's deprecation and retracing notices) to ERROR;
    the start-up lines TensorFlow writes before its logging is set up still appear
    (see the module docstring).
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
