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

from bnbook._bn_streams import (  # noqa: F401 - re-exported
    _batch_moments,
    _batches,
    _memory_pass_size,
    _Passes,
    _recording,
    _Stream,
    _widest_bn_input,
    _worth_compiling,
)
from bnbook.doctor.scoring import _per_example, _read_as_probabilities, _select, _Target


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
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One pass (moments into ``streams``); per-example losses and accuracies when ``y`` is given.

    No output is kept. When the reading of the output (probabilities or logits) is not
    decided yet (the model's last layer did not say), each slice is scored both ways and
    the pass decides afterwards from all its slices
    (:func:`~bnbook.doctor.scoring._read_as_probabilities`), so that every later pass is
    read on the same scale.
    """
    losses: list[np.ndarray] = []
    accuracies: list[np.ndarray] = []
    scored = y is not None and target is not None
    undecided = scored and target is not None and target.probabilities is None and target.kind in ("binary", "categorical")
    both: dict[bool, list[tuple[np.ndarray, np.ndarray | None]]] = {True: [], False: []}
    flags: list[bool] = []

    def score(part: slice, out: Any) -> None:
        if not scored:
            return
        assert y is not None and target is not None
        chosen = _select(out, index)
        if undecided:
            flags.append(_read_as_probabilities(chosen, target))
            for reading in (True, False):
                target.probabilities = reading
                both[reading].append(_per_example(chosen, y[part], target))
            target.probabilities = None
            return
        loss, acc = _per_example(chosen, y[part], target)
        losses.append(loss)
        if acc is not None:
            accuracies.append(acc)

    passes.run(x, slices, mode, training, streams, score)
    if undecided and target is not None:
        target.probabilities = all(flags)
        for loss, acc in both[target.probabilities]:
            losses.append(loss)
            if acc is not None:
                accuracies.append(acc)
    if not losses:
        return None, None
    return np.concatenate(losses), (np.concatenate(accuracies) if accuracies else None)
