"""The passes over data: per-channel moments of every BN input, streamed per batch.

Each BN layer's ``call`` is wrapped for the duration of a pass (:func:`_recording`,
shared with :func:`bnbook.probes.reestimate_bn_statistics` in :mod:`bnbook._bn_streams`)
so that it adds the count, mean and sum of squared deviations of its input to a
:class:`_Stream` (Chan et al.'s merge, float64); nothing of size (examples x
activations) is kept, and each mode's pass is compiled once (:class:`_Passes`).
:func:`_run` makes one forward pass over ``x`` in batches.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from bnbook._bn_streams import _batch_moments, _batches, _Passes, _recording, _Stream  # noqa: F401 - re-exported
from bnbook.doctor.scoring import _decide_reading, _per_example, _select, _Target


def _run(
    passes: _Passes,
    x: np.ndarray,
    slices: list[slice],
    mode: str,
    training: bool,
    streams: dict[str, _Stream],
    index: Any,
    y: np.ndarray | None,
    target: _Target | None,
) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """One pass (moments into ``streams``); per-example losses and accuracies when ``y`` is given."""
    losses, accuracies, seen = [], [], 0
    outputs = passes.run(x, slices, mode, training, streams)
    if y is not None and target is not None:
        _decide_reading([_select(out, index) for out in outputs], target)  # once: the first pass scored
    for part, out in zip(slices, outputs):
        seen += part.stop - part.start
        if y is not None and target is not None:
            loss, acc = _per_example(_select(out, index), y[part], target)
            losses.append(loss)
            if acc is not None:
                accuracies.append(acc)
    if not losses:
        return None, None, seen
    return np.concatenate(losses), (np.concatenate(accuracies) if accuracies else None), seen
