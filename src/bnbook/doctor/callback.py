""":class:`DoctorCallback`: the doctor around ``fit`` (static checks at its start, every check at its end)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from bnbook.doctor.arguments import _check_arguments
from bnbook.doctor.diagnosis import diagnose, static_checks
from bnbook.doctor.findings import Report

class DoctorCallback(keras.callbacks.Callback):
    """Run the doctor around ``fit``: static checks when it starts, every check when it ends.

    ``model.fit(..., callbacks=[DoctorCallback(x_sample, y_sample, batch_size=64)])``
    prints :func:`static_checks` at the start of training and :func:`diagnose` on
    ``(x, y)`` at its end; the reports are kept in ``self.start_report`` and
    ``self.report``. Keyword arguments are passed to :func:`diagnose`.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray | None = None, *, verbose: bool = True, **kwargs: Any) -> None:
        super().__init__()
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a NumPy array of model inputs, got {type(x).__name__}")
        self.x, self.y, self.verbose, self.kwargs = x, y, verbose, kwargs
        self.start_report: Report | None = None
        self.report: Report | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Check ``x``, ``y`` and the keyword arguments against the model, then run :func:`static_checks`.

        Raises:
            TypeError: As :func:`diagnose`, before the first training step.
            ValueError: As :func:`diagnose` (``x`` of the wrong shape, ``y`` that fits no
                reading of the output, an unknown ``output``), before the first training step.
        """
        kwargs = dict(self.kwargs)
        _check_arguments(
            self.model,
            self.x,
            self.y,
            kwargs.pop("batch_size", None),
            kwargs.pop("output", None),
            kwargs.pop("pass_size", None),
            kwargs.pop("seed", 0),
            kwargs,
        )
        static = {k: v for k, v in self.kwargs.items() if k not in ("output", "pass_size", "seed")}
        self.start_report = static_checks(self.model, **static)
        if self.verbose:
            print(self.start_report)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.report = diagnose(self.model, self.x, self.y, **self.kwargs)
        if self.verbose:
            print(self.report)
