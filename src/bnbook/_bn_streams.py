"""Streamed per-channel moments of every BN input, for :mod:`bnbook.probes` and :mod:`bnbook.doctor`.

Each BN layer's ``call`` is wrapped for the duration of a pass (:func:`_recording`) so
that it adds the count, mean and sum of squared deviations of its input to a
:class:`_Stream` (Chan et al.'s merge, float64); nothing of size (examples x
activations) is kept. The wrapper works wherever the layer sits (nested models at any
depth, a layer shared between calls: its calls are pooled). Private: the public entry
points are :func:`bnbook.probes.reestimate_bn_statistics` and :func:`bnbook.doctor.diagnose`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np


def _channel_axis(layer: keras.layers.Layer, rank: int) -> int:
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        axis = axis[0]
    return int(axis) % rank


class _Stream:
    """Per-channel count, mean, sum of squared deviations and non-finite count, merged per batch."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.bad: np.ndarray | None = None
        self.calls = 0
        self.masked = False  # the layer received a Keras mask (its own moments exclude masked positions)

    def add(self, count: int, mean: np.ndarray, m2: np.ndarray, bad: np.ndarray) -> None:
        mean, m2, bad = (np.asarray(a, np.float64) for a in (mean, m2, bad))
        self.calls += 1
        if self.count == 0 or self.mean is None or self.m2 is None or self.bad is None:
            self.count, self.mean, self.m2, self.bad = count, mean, m2, bad
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * count / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * count / total
        self.bad = self.bad + bad
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        assert self.m2 is not None
        return self.m2 / max(self.count, 1)


def _batch_moments(inputs: Any, axis: int) -> tuple[Any, Any, Any, list[int], int]:
    ops = keras.ops
    values = ops.cast(inputs, "float32")
    shape = tuple(int(s) for s in ops.shape(values))
    axes = [i for i in range(len(shape)) if i != axis]
    mean = ops.mean(values, axis=axes, keepdims=True)
    centred = values - mean
    return values, mean, centred, axes, int(np.prod([shape[i] for i in axes]))


@contextlib.contextmanager
def _recording(
    bns: list[tuple[str, keras.layers.Layer]], mode: str, streams: dict[str, _Stream]
) -> Iterator[None]:
    """Wrap each BN layer's ``call`` so that it adds its input's moments to ``streams[path]``.

    ``mode="batch"``: the layer normalises with the statistics of its batch (dropout
    and every other layer as the outer call says), whatever its moving statistics.
    Otherwise the layer's own ``call`` runs unchanged.
    """
    ops = keras.ops
    originals = []
    try:
        for path, layer in bns:
            original = layer.__dict__.get("call")
            originals.append((layer, original))
            bound = layer.call
            stream = streams.setdefault(path, _Stream())

            def wrapped(inputs: Any, *args: Any, _bound: Any = bound, _layer: Any = layer, _stream: Any = stream, **kwargs: Any) -> Any:
                rank = len(inputs.shape)
                axis = _channel_axis(_layer, rank)
                if kwargs.get("mask") is not None:
                    _stream.masked = True
                values, mean, centred, axes, count = _batch_moments(inputs, axis)
                m2 = ops.sum(ops.square(centred), axis=axes)
                bad = ops.sum(ops.cast(ops.logical_not(ops.isfinite(values)), "float32"), axis=axes)
                _stream.add(
                    count,
                    ops.convert_to_numpy(ops.reshape(mean, (-1,))),
                    ops.convert_to_numpy(m2),
                    ops.convert_to_numpy(bad),
                )
                if mode != "batch":
                    return _bound(inputs, *args, **kwargs)
                variance = ops.mean(ops.square(centred), axis=axes, keepdims=True)
                out = centred / ops.sqrt(variance + float(_layer.epsilon))
                shape = [1] * rank
                shape[axis] = -1
                if getattr(_layer, "scale", False) and getattr(_layer, "gamma", None) is not None:
                    out = out * ops.reshape(ops.cast(_layer.gamma, "float32"), shape)
                if getattr(_layer, "center", False) and getattr(_layer, "beta", None) is not None:
                    out = out + ops.reshape(ops.cast(_layer.beta, "float32"), shape)
                return ops.cast(out, inputs.dtype)

            functools.update_wrapper(wrapped, bound)
            layer.__dict__["call"] = wrapped
        yield
    finally:
        for layer, original in originals:
            if original is None:
                layer.__dict__.pop("call", None)
            else:
                layer.__dict__["call"] = original


def _batches(n: int, size: int, drop_last: bool) -> list[slice]:
    if drop_last:
        size = min(size, n)
        return [slice(start, start + size) for start in range(0, n - size + 1, size)]
    parts = max(1, n // size)  # every part holds >= size (>= 2) examples: a batch variance exists
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
