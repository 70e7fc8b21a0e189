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
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
from keras.src.backend.common import global_state  # the Keras name-scope stack (see _Passes.run)


def _channel_axis(layer: keras.layers.Layer, rank: int) -> int:
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        axis = axis[0]
    return int(axis) % rank


class _Stream:
    """Per-channel count, mean, sum of squared deviations and non-finite flags, merged per batch.

    ``bad``: per channel, the number of batches in which a value was NaN or inf (or the
    channel's float32 sum overflowed).
    """

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


def _batch_moments(inputs: Any, axis: int) -> tuple[Any, Any, Any, list[int], Any]:
    """The input as float32, its per-channel mean (kept dims), the centred input, the reduced
    axes and the count of values per channel (a tensor: the batch dimension may be unknown)."""
    ops = keras.ops
    values = ops.cast(inputs, "float32")
    rank = len(values.shape)
    axes = [i for i in range(rank) if i != axis]
    mean = ops.mean(values, axis=axes, keepdims=True)
    centred = values - mean
    count = ops.size(values) // int(values.shape[axis])
    return values, mean, centred, axes, count


#: ``record(path, masked, count, mean, m2, bad)``: what a wrapped BN call does with its input's moments.
_Record = Callable[[str, bool, Any, Any, Any, Any], None]


def _stream_into(streams: dict[str, _Stream]) -> _Record:
    """A ``record`` that converts the moments to NumPy and merges them into ``streams`` (eager calls)."""

    def record(path: str, masked: bool, count: Any, mean: Any, m2: Any, bad: Any) -> None:
        stream = streams.setdefault(path, _Stream())
        stream.masked = stream.masked or masked
        to_numpy = keras.ops.convert_to_numpy
        stream.add(int(to_numpy(count)), to_numpy(mean), to_numpy(m2), to_numpy(bad))

    return record


@contextlib.contextmanager
def _recording(
    bns: list[tuple[str, keras.layers.Layer]], mode: str, streams: dict[str, _Stream] | _Record
) -> Iterator[None]:
    """Wrap each BN layer's ``call`` so that it adds its input's moments to ``streams[path]``.

    ``mode="batch"``: the layer normalises with the statistics of its batch (dropout
    and every other layer as the outer call says), whatever its moving statistics.
    Otherwise the layer's own ``call`` runs unchanged. ``streams`` may instead be a
    ``record`` function, which receives the moments as tensors (see :class:`_Passes`).
    """
    ops = keras.ops
    record = _stream_into(streams) if isinstance(streams, dict) else streams
    originals = []
    try:
        for path, layer in bns:
            original = layer.__dict__.get("call")
            originals.append((layer, original))
            bound = layer.call

            def wrapped(inputs: Any, *args: Any, _bound: Any = bound, _layer: Any = layer, _path: str = path, **kwargs: Any) -> Any:
                rank = len(inputs.shape)
                axis = _channel_axis(_layer, rank)
                values, mean, centred, axes, count = _batch_moments(inputs, axis)
                m2 = ops.sum(ops.square(centred), axis=axes)
                flat_mean = ops.reshape(mean, (-1,))
                # a channel with a NaN or inf has a non-finite mean or m2 (so has one whose sum overflows
                # float32); read from the moments, so no full-size temporary is needed for it
                bad = ops.cast(ops.logical_not(ops.isfinite(flat_mean) & ops.isfinite(m2)), "float32")
                record(_path, kwargs.get("mask") is not None, count, flat_mean, m2, bad)
                if mode != "batch":
                    return _bound(inputs, *args, **kwargs)
                channels = int(values.shape[axis])
                factor = ops.rsqrt(m2 / ops.cast(count, "float32") + float(_layer.epsilon))
                if getattr(_layer, "scale", False) and getattr(_layer, "gamma", None) is not None:
                    factor = factor * ops.reshape(ops.cast(_layer.gamma, "float32"), (channels,))
                shape = [1] * rank
                shape[axis] = -1
                out = centred * ops.reshape(factor, shape)
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


class _Step:
    """The body of a compiled pass: the model's outputs and, per BN call, the moments its wrapper recorded."""

    def __init__(self, model: keras.Model, training: bool) -> None:
        self.model, self.training = model, training
        self.meta: list[tuple[str, bool]] = []  # (path, masked) of each recorded call, in order (set when traced)
        self._sink: list[tuple[str, bool, tuple[Any, ...]]] = []

    def record(self, path: str, masked: bool, *moments: Any) -> None:
        self._sink.append((path, masked, moments))

    def __call__(self, batch: Any) -> tuple[Any, list[tuple[Any, ...]]]:
        self._sink.clear()
        out = self.model(batch, training=self.training)
        self.meta[:] = [(path, masked) for path, masked, _ in self._sink]
        return out, [moments for _, _, moments in self._sink]


class _Passes:
    """Forward passes over ``x`` in slices that stream every BN input's moments, compiled once per mode.

    With the TensorFlow backend, each ``(mode, training)`` pair is traced once into a
    ``tf.function`` that returns the model's outputs and, for each BN call, the count,
    mean, sum of squared deviations and non-finite flags of its input; later passes in
    that mode reuse the graph (it reads the moving statistics as they are then).
    Memory is the reason: TensorFlow's graph executor frees each activation after its
    last use, whereas an eager call of a functional model keeps every intermediate
    tensor until it returns (MobileNetV2-0.35 at 224 x 224: about 8 MB against 37 MB
    per example of a pass). A model that cannot be traced (or another backend) runs
    eagerly, as before, and ``fallback`` says why (an out-of-memory error is raised
    instead: eager passes would need more).
    """

    def __init__(self, model: keras.Model, bns: list[tuple[str, keras.layers.Layer]], compiled: bool = True) -> None:
        self.model = model
        self.bns = bns
        self.eager = keras.backend.backend() != "tensorflow" or not compiled
        self.fallback: str | None = None  # why the passes run eagerly, when a compiled one failed
        self._delivered = 0  # slices the current compiled pass has run
        self._compiled: dict[tuple[str, bool], tuple[Any, _Step]] = {}  # (mode, training) -> (tf.function, its body)

    def run(
        self,
        x: np.ndarray,
        slices: list[slice],
        mode: str,
        training: bool,
        streams: dict[str, _Stream],
        each: Callable[[slice, Any], None] | None = None,
    ) -> None:
        """One pass: the moments go into ``streams``; ``each(slice, outputs)`` sees the model's outputs of
        every slice (none are kept: a segmentation model's outputs are of size examples x pixels)."""
        if not self.eager:
            scopes = global_state.get_global_attribute("name_scope_stack")
            depth = len(scopes) if scopes else 0
            self._delivered = 0
            try:
                self._run_compiled(x, slices, mode, training, streams, each)
                return
            except Exception as error:  # noqa: BLE001 - not traceable: run eagerly, which raises a real error again
                # A trace that fails inside a layer's call leaves that call's Keras name scope on the
                # stack (keras/src/backend/common/name_scope.py), and every variable created afterwards
                # in this thread would get its name as a path prefix: drop what the failed trace left.
                scopes = global_state.get_global_attribute("name_scope_stack")
                if scopes:
                    del scopes[depth:]
                if type(error).__name__ == "ResourceExhaustedError" or self._delivered:
                    raise  # out of memory (eager would need more), or a failure after the trace ran: not a trace problem
                self.eager = True
                message = str(error).strip()
                self.fallback = f"{type(error).__name__}: {message.splitlines()[0][:160] if message else ''}"
                streams.clear()
        with _recording(self.bns, mode, streams):
            for part in slices:
                out = self.model(x[part], training=training)
                if each is not None:
                    each(part, out)

    def _run_compiled(
        self,
        x: np.ndarray,
        slices: list[slice],
        mode: str,
        training: bool,
        streams: dict[str, _Stream],
        each: Callable[[slice, Any], None] | None,
    ) -> None:
        import tensorflow as tf

        key = (mode, training)
        if key not in self._compiled:
            step = _Step(self.model, training)
            spec = tf.TensorSpec((None, *x.shape[1:]), x.dtype)
            # a callable object, not a closure: TensorFlow's frequent-retracing warning counts traces per
            # code object, so closures of successive diagnoses would add up; each _Step traces once
            self._compiled[key] = (tf.function(step, input_signature=[spec], autograph=False), step)
        fn, step = self._compiled[key]
        with _recording(self.bns, mode, step.record):  # active while the first call traces
            for part in slices:
                out, moments = fn(x[part])
                self._delivered += 1
                if each is not None:
                    each(part, out)
                for (path, masked), (count, mean, m2, bad) in zip(step.meta, moments):
                    stream = streams.setdefault(path, _Stream())
                    stream.masked = stream.masked or masked
                    stream.add(int(count.numpy()), mean.numpy(), m2.numpy(), bad.numpy())


#: Bytes of a pass per float32 value of the widest BN input of one example: the model's own tensors
#: around it and the recording's temporaries (measured on MobileNetV2-0.35 at 224 x 224 with compiled
#: passes: about 12 MB per example against 2.4 MB for its widest BN input, i.e. 5 values' worth).
_PASS_BYTES_PER_VALUE = 4 * 5


def _widest_bn_input(model: keras.Model, bns: list[tuple[str, keras.layers.Layer]], x: np.ndarray) -> int:
    """Values per example of the largest input of any BN call, measured on a forward pass of ``x[:2]``.

    Measured rather than read from the layers' built shapes, which have unknown
    spatial dimensions in a base built without ``input_shape`` (the usual
    ``keras.applications`` transfer-learning call).
    """
    widest = [1]
    examples = min(2, len(x))

    def record(path: str, masked: bool, count: Any, mean: Any, *_: Any) -> None:
        channels = int(mean.shape[0])
        widest[0] = max(widest[0], int(keras.ops.convert_to_numpy(count)) * channels // examples)

    with _recording(bns, "inference", record):
        model(x[:examples], training=False)
    return widest[0]


#: Compile the passes when one would hold more than this (estimated), or when it has at least
#: :data:`_COMPILE_FROM_SLICES` slices. Compiled, memory is bounded (an eager pass holds every
#: activation of a slice, about 3-5 times the compiled peak) and each later call is cheap; but
#: tracing a deep network costs seconds, more than an eager pass over one or two small batches
#: (MobileNetV2-0.35 at 48 px: 7.7 s compiled against 3.0 s eager for a labelled diagnose, review
#: 3), while over many slices the eager calls' per-layer Python dispatch costs more (the book's
#: chapter 07 re-estimates over 40 slices: 52 s compiled, 64 s eager).
_COMPILE_ABOVE_BYTES = 128 * 2**20
_COMPILE_FROM_SLICES = 8


def _worth_compiling(widest: int, slices: list[slice]) -> bool:
    """Whether passes over ``slices`` are worth compiling: much memory (estimated) or many slices."""
    largest = max((part.stop - part.start for part in slices), default=0)
    return len(slices) >= _COMPILE_FROM_SLICES or _PASS_BYTES_PER_VALUE * max(1, int(widest)) * largest > _COMPILE_ABOVE_BYTES


def _memory_pass_size(widest: int, budget_bytes: int, largest: int) -> int:
    """The largest pass size up to ``largest`` (and at least 2) whose estimated memory fits ``budget_bytes``,
    for a model whose widest BN input holds ``widest`` values per example."""
    per_example = _PASS_BYTES_PER_VALUE * max(1, int(widest))
    return int(max(2, min(largest, budget_bytes // per_example)))


def _batches(n: int, size: int, drop_last: bool, at_most: bool = False) -> list[slice]:
    """Slices of ``range(n)``: of exactly ``size`` (``drop_last``), else ``n`` split evenly into parts of
    ``size`` to ``2 * size - 1`` examples, or (``at_most``, for a memory bound) of at most ``size`` and at
    least 2 (a batch variance exists)."""
    if drop_last:
        size = min(size, n)
        return [slice(start, start + size) for start in range(0, n - size + 1, size)]
    parts = max(1, n // size)  # every part holds >= size (>= 2) examples: a batch variance exists
    if at_most:
        parts = max(1, min(-(-n // size), n // 2))
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
