"""Look inside a model's BN layers: which they are, what they store, what they receive.

One home for every measurement the chapters and :mod:`bnbook.doctor` make on BN layers
(``keras.layers.BatchNormalization`` and :class:`bnbook.layers.BatchNorm`):

- :func:`bn_layers` finds them (nested models included), :func:`probed_bn_layers`
  those whose inputs can be measured, and :func:`layer_input_model` builds a model
  that outputs their inputs;
- :func:`channel_moments` is the per-channel mean and biased variance, over every axis
  but the layer's ``axis`` (so channels-first layers are measured right);
- :func:`unchanged_state` restores the moving statistics (and dropout's random
  state) after a pass in training mode;
- :func:`bn_variables` lists the variables, :func:`bn_input_variances` compares the
  variance of each BN input in training and inference mode with the moving variance,
  :func:`reestimate_bn_statistics` replaces the moving statistics by those of the
  inference network, and
  :func:`batch_statistics_spread` measures how noisy batch statistics are per batch size.

:func:`reestimate_bn_statistics` computes the statistics of the *inference network*:
what each BN layer receives in inference mode, dropout off and the earlier BN layers
normalising with their own re-estimated statistics. That is Li et al.'s (2019) remedy for
dropout's variance shift and AdaBN's re-estimation (Li et al. 2016) on a new domain. It
works on BN layers anywhere (nested models, shared layers) in a few forward passes for all
layers at once. It is not "precise BN" (Ioffe & Szegedy 2015, Algorithm 2; Wu & Johnson
2021, computed by hand in chapter 4), which averages the statistics of mini-batches passed
with the BN layers in training mode (earlier BN layers on batch statistics). Which mode the
*dropout* layers are in is then the user's choice (fvcore's ``update_bn_stats`` leaves every
layer's mode as the user set it): with dropout in inference mode it too measures the inputs
BN receives at inference; run with the whole network in training mode, dropout stays on and
it stores the inflated variance again. Without dropout or other noise layers the two differ
only in how the earlier BN layers normalise meanwhile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import keras
import numpy as np
import pandas as pd

from bnbook._bn_streams import _batches, _Passes, _Stream, _widest_bn_input, _worth_compiling
from bnbook._checks import check_finite, check_int, check_model, check_model_inputs, check_sequence
from bnbook.layers import BatchNorm
from bnbook.reproducibility import shifted

__all__ = [
    "BN_TYPES",
    "BN_VARIABLES",
    "batch_statistics_spread",
    "bn_input_variances",
    "bn_layers",
    "bn_variables",
    "channel_moments",
    "layer_input_model",
    "probed_bn_layers",
    "reestimate_bn_statistics",
    "unchanged_state",
]

#: The layer classes the book treats as batch normalization.
BN_TYPES: tuple[type, ...] = (keras.layers.BatchNormalization, BatchNorm)

#: The variables a BN layer can have, in ``layer.weights`` order.
BN_VARIABLES: tuple[str, ...] = ("gamma", "beta", "moving_mean", "moving_variance")


def bn_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every BN layer of ``model`` (both classes), nested models included, depth first.

    Raises:
        TypeError: ``model`` is not a Keras model.
    """
    check_model(model)
    found: list[keras.layers.Layer] = []

    def walk(layers: Sequence[keras.layers.Layer]) -> None:
        for layer in layers:
            if isinstance(layer, BN_TYPES):
                found.append(layer)
            elif hasattr(layer, "layers"):
                walk(layer.layers)

    walk(model.layers)
    return found


def probed_bn_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The BN layers whose inputs :func:`layer_input_model` can output, or why not.

    Those are the BN layers of a single-input model, top-level (not inside a nested
    model) and called once, in the order of ``model.layers``.

    Raises:
        TypeError: ``model`` is not a Keras model.
        ValueError: No BN layer, BN inside a nested model or called more than once,
            or several model inputs (the message says which).
    """
    layers = bn_layers(model)
    if not layers:
        raise ValueError("the model has no BN layer (keras.layers.BatchNormalization or bnbook.layers.BatchNorm)")
    top = [layer for layer in model.layers if isinstance(layer, BN_TYPES)]
    nested = [layer.name for layer in model.layers if not isinstance(layer, BN_TYPES) and _contains_bn(layer)]
    if nested:
        raise ValueError(
            f"BN layers inside nested models ({', '.join(nested)}) are not supported: "
            "build the model with its BN layers at the top level"
        )
    if len(model.inputs) != 1:
        raise ValueError(f"only single-input models are supported; this one has {len(model.inputs)} inputs")
    for layer in top:
        calls = len(_graph_nodes(model, layer))
        if calls != 1:
            raise ValueError(f"BN layer {layer.name!r} must be called exactly once in the model, not {calls} times")
    return top


def _graph_nodes(model: keras.Model, layer: keras.layers.Layer) -> list:
    """The calls of ``layer`` in ``model``'s own graph (Keras nodes), in graph order.

    Not ``layer._inbound_nodes``, which also holds calls outside this graph: a Sequential
    model rebuilt on loading from a ``.keras`` file keeps one per rebuild (Keras 3.15,
    ``Sequential._maybe_rebuild``), and so does a layer reused in another model.
    """
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    by_depth = getattr(graph, "_nodes_by_depth", None)
    if by_depth is None:  # not a graph model: every recorded call
        return list(getattr(layer, "_inbound_nodes", []))
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth] if node.operation is layer]


def _contains_bn(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` is a BN layer or a model that contains one."""
    if isinstance(layer, BN_TYPES):
        return True
    return isinstance(layer, keras.Model) and bool(bn_layers(layer))


def layer_input_model(model: keras.Model, layers: Sequence[keras.layers.Layer]) -> keras.Model:
    """A model from ``model``'s input to the inputs of ``layers`` (it shares their weights).

    Called, it returns one tensor per layer in a list (Keras returns a single tensor,
    not a list, when there is one layer).

    Raises:
        TypeError: ``model`` is not a Keras model.
        ValueError: ``layers`` is empty, the model has several inputs, or a layer is not
            a top-level layer of ``model`` called once.
    """
    check_model(model)
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty: pass the layers whose inputs to output")
    if len(model.inputs) != 1:
        raise ValueError(f"only single-input models are supported; this one has {len(model.inputs)} inputs")
    inputs = []
    for layer in layers:
        if layer not in model.layers:
            raise ValueError(f"layer {layer.name!r} is not a top-level layer of model {model.name!r} (nested?)")
        nodes = _graph_nodes(model, layer)
        if len(nodes) != 1:
            raise ValueError(f"layer {layer.name!r} must be called exactly once in the model, not {len(nodes)} times")
        tensors = nodes[0].input_tensors
        inputs.append(tensors[0] if len(tensors) == 1 else list(tensors))
    return keras.Model(model.inputs[0], inputs)


def _outputs(probe: keras.Model, x: np.ndarray, training: bool) -> list[np.ndarray]:
    outputs = probe(x, training=training)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [keras.ops.convert_to_numpy(values) for values in outputs]


def _channel_rows(values: np.ndarray, axis: int) -> np.ndarray:
    """Reshape to (samples, channels), the channels being ``axis``, in float64."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim < 2:
        raise ValueError(f"values must have a batch axis and a channel axis, got shape {values.shape}")
    axis = check_int(axis, "axis")
    if not -values.ndim <= axis < values.ndim:
        raise ValueError(f"axis {axis} is out of range for values of shape {values.shape}")
    return np.moveaxis(values, axis % values.ndim, -1).reshape(-1, values.shape[axis])


def channel_moments(values: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance (divide by N) over every axis but ``axis``.

    This is what BN computes for a layer with that ``axis``: for a Dense output
    ``(N, C)`` over the batch, for a channels-last image ``(N, H, W, C)`` over the
    batch and the positions. Computed in float64.

    Raises:
        TypeError: ``axis`` is not an int.
        ValueError: ``values`` has fewer than 2 axes, or ``axis`` is out of range.
    """
    rows = _channel_rows(values, axis)
    return rows.mean(axis=0), rows.var(axis=0)


class _Moments:
    """Per-channel mean and biased variance, merged batch by batch (Chan et al.'s rule)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = np.zeros(0)
        self.m2 = np.zeros(0)

    def add(self, rows: np.ndarray) -> None:
        n, mean = len(rows), rows.mean(axis=0)
        m2 = ((rows - mean) ** 2).sum(axis=0)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / self.count


@contextlib.contextmanager
def unchanged_state(model: keras.Model) -> Iterator[keras.Model]:
    """Restore every non-trainable variable of ``model`` when the block ends.

    Inside the block, passes in training mode may update the BN layers' moving
    statistics and advance dropout's random-generator state; afterwards both are as
    they were (also when the block raises). Trainable weights are not restored.

    Raises:
        TypeError: ``model`` is not a Keras model.
    """
    check_model(model)
    saved = [variable.numpy() for variable in model.non_trainable_variables]
    try:
        yield model
    finally:
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)


def _check_data(model: keras.Model, x: object, batch_size: int) -> tuple[np.ndarray, int]:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy array of model inputs, got {type(x).__name__}")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if len(x) < 2:
        raise ValueError(f"x must hold at least 2 examples to give a variance, got {len(x)}")
    check_model_inputs(model, x)
    return x, batch_size


def bn_variables(model: keras.Model) -> pd.DataFrame:
    """List the variables of every BN layer of a built model, one row per variable.

    Args:
        model: A built Keras model (nested models are searched too).

    Returns:
        A DataFrame with columns ``layer`` (the layer's name), ``variable`` (the
        variable's name, e.g. ``"gamma"``), ``path`` (its unique path, e.g.
        ``"net/bn/gamma"``), ``shape`` (a tuple), ``size`` (number of values) and
        ``trainable`` (bool, as Keras reports it).

    Raises:
        TypeError: ``model`` is not a Keras model.
        ValueError: The model has no BN layer, or is not built yet.
    """
    layers = bn_layers(model)
    if not layers:
        raise ValueError(f"model {model.name!r} has no BN layer (keras.layers.BatchNormalization or bnbook.layers.BatchNorm)")
    rows = []
    for layer in layers:
        if not layer.built:
            raise ValueError(f"BN layer {layer.name!r} is not built: call the model on data or build it first")
        for variable in layer.weights:
            rows.append(
                {
                    "layer": layer.name,
                    "variable": variable.name,
                    "path": variable.path,
                    "shape": tuple(int(d) for d in variable.shape),
                    "size": int(np.prod(variable.shape)),
                    "trainable": bool(variable.trainable),
                }
            )
    return pd.DataFrame(rows)


def _walk(model: keras.layers.Layer, prefix: str = "") -> list[tuple[str, keras.layers.Layer]]:
    """Every sublayer of ``model`` with its path name, nested models and layers included (depth first)."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=False):
        found.append((prefix + layer.name, layer))
        if not isinstance(layer, BN_TYPES):
            found.extend(_walk(layer, prefix + layer.name + "/"))
    return found


def _bn_paths(model: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    """Every BN layer once with its path (``base/block/bn``; a shared one under its first path), depth first."""
    seen: set[int] = set()
    found = []
    for path, layer in _walk(model):
        if isinstance(layer, BN_TYPES) and id(layer) not in seen:
            seen.add(id(layer))
            found.append((path, layer))
    return found


def _pass_statistics(
    runner: _Passes, bns: list[tuple[str, keras.layers.Layer]], x: np.ndarray, slices: list[slice], mode: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One pass over ``x`` with dropout off: each BN input's mean and biased variance (float64).

    ``mode="batch"``: every BN layer normalises with its batch's statistics (whatever its
    moving ones); ``"inference"``: with its moving statistics. Raises ValueError (nothing
    assigned here) for a layer that was not called, receives a mask, or whose input is
    not finite.
    """
    streams: dict[str, _Stream] = {}
    runner.run(x, slices, mode, False, streams)
    found = {}
    for path, _ in bns:
        stream = streams.get(path)
        if stream is None or stream.count == 0 or stream.mean is None:
            raise ValueError(f"BN layer {path!r} was not called on x: its statistics cannot be re-estimated")
        if stream.masked:
            raise ValueError(
                f"BN layer {path!r} receives a mask (Masking, Embedding(mask_zero=True)): its masked statistics "
                "are not re-estimated here; the model was left as it was"
            )
        mean, variance = stream.mean, stream.variance
        bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(variance))).tolist()
        if bad:  # e.g. an overflow, or NaN weights upstream: nothing is written
            listed = f"{bad}" if len(bad) <= 8 else f"{bad[:8]} ... ({len(bad)} of {len(mean)})"
            hint = (
                " (in inference mode with the previous pass's statistics: an untrained or diverging deep network "
                "can overflow when its first pass used several batches; pass all of x in one batch, "
                "batch_size >= len(x), to make the first pass exact)"
                if mode == "inference"
                else ""
            )
            raise ValueError(
                f"the input of BN layer {path!r} is not finite on x in channels {listed}{hint}: "
                "check the weights before it; the model was left as it was"
            )
        found[path] = (mean, variance)
    return found


def _assign_statistics(bns: list[tuple[str, keras.layers.Layer]], stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for path, layer in bns:
        mean, variance = stats[path]
        for variable, values in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
            values = np.asarray(values).astype(keras.backend.standardize_dtype(variable.dtype))
            if not np.isfinite(values).all():  # e.g. a variance above float16's 65504
                raise ValueError(
                    f"the statistics of BN layer {path!r} do not fit its {variable.dtype} variables "
                    "(use the mixed_float16 policy, whose BN variables are float32); the model was left as it was"
                )
            variable.assign(values)


def _statistics_change(
    old: dict[str, tuple[np.ndarray, np.ndarray]], new: dict[str, tuple[np.ndarray, np.ndarray]], epsilons: dict[str, float]
) -> float:
    """The largest change of any channel: mean in standard deviations, variance as |log ratio|."""
    change = 0.0
    for path, (mean, variance) in new.items():
        old_mean, old_variance = old[path]
        eps = epsilons[path]
        change = max(
            change,
            float(np.max(np.abs(mean - old_mean) / np.sqrt(variance + eps), initial=0.0)),
            float(np.max(np.abs(np.log((variance + eps) / (old_variance + eps))), initial=0.0)),
        )
    return change


def _reestimate(
    model: keras.Model,
    bns: list[tuple[str, keras.layers.Layer]],
    x: np.ndarray,
    slices: list[slice],
    tolerance: float,
    max_passes: int,
    first: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    runner: _Passes | None = None,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int, float]:
    """The passes of :func:`reestimate_bn_statistics` (shared with :func:`bnbook.doctor.diagnose`).

    Assigns the statistics of every pass (the caller restores the model if it must).
    ``first``: the batch-mode pass's statistics, when the caller has them already;
    ``runner``: the caller's compiled passes (they record every BN layer of ``model``).
    Returns the final statistics (assigned), the number of passes and the last change.
    """
    if runner is None:
        runner = _Passes(model, bns, compiled=_worth_compiling(_widest_bn_input(model, bns, x), slices))
    stats = first if first is not None else _pass_statistics(runner, bns, x, slices, "batch")
    epsilons = {path: float(layer.epsilon) for path, layer in bns}
    passes, change = 1, float("inf")
    while passes < max_passes:
        _assign_statistics(bns, stats)
        new = _pass_statistics(runner, bns, x, slices, "inference")
        passes += 1
        change = _statistics_change(stats, new, epsilons)
        stats = new
        if change <= tolerance:
            break
    _assign_statistics(bns, stats)
    return stats, passes, change


def reestimate_bn_statistics(
    model: keras.Model,
    x: np.ndarray,
    *,
    batch_size: int = 256,
    tolerance: float = 1e-3,
    max_passes: int | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Set every BN layer's moving statistics to those of its input in the inference network on ``x``.

    The target (Li et al.'s 2019 remedy for the variance shift, and AdaBN's
    re-estimation): each BN layer's ``moving_mean`` and ``moving_variance`` become the
    per-channel mean and biased variance (divide by N, as Keras stores it) of what the
    layer receives over all of ``x`` in *inference mode* -- dropout off and the earlier
    BN layers normalising with their own re-estimated statistics. The weights stay as
    they are. It is not "precise BN" (training-mode batches: see the module docstring).

    How, in a few forward passes over ``x`` for all layers at once (no model per layer):
    the first pass (dropout off) normalises every BN layer with the statistics of its
    batch of ``batch_size`` and records each BN input's moments; each further pass runs
    in inference mode with the statistics of the previous pass and records them again.
    A layer's statistics are exact once those of every BN layer before it are, so after
    as many passes as the longest chain of BN layers they are exact; the passes stop
    earlier when one changes no channel by more than ``tolerance`` (the mean in
    standard deviations, the variance as ``|log ratio|``, epsilon included). When all of
    ``x`` fits one batch (fewer than ``2 * batch_size`` examples), the first pass
    normalises with the statistics of all of ``x``, which are exactly the inference
    network's, and a second pass confirms it: 2 passes. In smaller batches a deep
    network may need up to one pass per BN layer (an untrained MobileNetV2 in batches
    of 16: 49 passes), so give it a few hundred examples and the default batch size.

    Memory and time: when a batch would hold more than about 128 MB (estimated) or ``x``
    spans 8 batches or more, each pass is traced once into a ``tf.function`` (TensorFlow
    frees every activation after its last use), so a pass holds about 5 float32 values
    per value of the widest BN input, per example of a batch; otherwise the passes run
    eagerly (no tracing cost). MobileNetV2-0.35 at
    224 x 224 with 256 images (``benchmarks/doctor_scale_report.txt``, run 4): about 3 GB
    and 7 s in one batch of 256 (2 passes); with ``batch_size=64`` under 1 GB, but that
    untrained network then needs about a pass per BN layer in its chain (84 s).

    Works on BN layers anywhere in the model (nested models at any depth, e.g. a
    ``keras.applications`` base inside a functional model, whether ``trainable`` or
    not; ``keras.layers.BatchNormalization``, :class:`bnbook.layers.BatchNorm` and
    subclasses). A BN layer called several times per forward pass (shared) gets the
    statistics of all its calls pooled, the only values one set of moving statistics
    can hold.

    Args:
        model: A built single-input Keras model with at least one BN layer (a
            subclassed model built by calling it on data, without ``keras.Input``,
            included: its input is ``x``).
        x: Model inputs, e.g. the training images; at least 2 examples.
        batch_size: Examples per forward pass, >= 2 (memory and speed: with all of
            ``x`` in one batch the first pass is already exact; see above).
        tolerance: Stop when a pass changes no statistic by more than this (> 0 ... or
            0: run ``max_passes`` passes unless one changes nothing).
        max_passes: At most this many passes (>= 1; 1 keeps the batch-normalised
            first pass); None: the number of BN layers plus one, enough for exact
            statistics.

    Returns:
        ``{layer path: (moving_mean, moving_variance)}``, the new values as float32
        arrays (the variables' dtype), depth-first; the path is the layer's name for a
        top-level layer, ``"base/bn"`` for one inside the nested model ``base``.

    Raises:
        TypeError: ``model`` is not a Keras model, ``x`` not a NumPy array (or integer
            where the model takes floats: convert 0-255 images first), ``batch_size``
            or ``max_passes`` not an int, ``tolerance`` not a number.
        ValueError: No BN layer, several model inputs, fewer than 2 examples, NaN or inf
            in ``x`` or in a BN layer's input, a BN layer that receives a mask or is not
            called, statistics that do not fit float16 variables, ``batch_size`` < 2,
            ``tolerance`` < 0 or ``max_passes`` < 1. Nothing is written then: the
            model is left as it was.
    """
    check_model(model)
    bns = _bn_paths(model)
    if not bns:
        raise ValueError("the model has no BN layer (keras.layers.BatchNormalization or bnbook.layers.BatchNorm)")
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):  # a subclassed model built by calling it: its input is x's
        inputs = None
    if inputs and len(inputs) != 1:
        raise ValueError(f"only single-input models are supported; this one has {len(inputs)} inputs")
    x, batch_size = _check_data(model, x, batch_size)
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (the first pass normalises with batch statistics), got {batch_size}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)):
        raise TypeError(f"tolerance must be a number, got {tolerance!r}")
    if not 0 <= float(tolerance) < float("inf"):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    max_passes = len(bns) + 1 if max_passes is None else check_int(max_passes, "max_passes", minimum=1)
    slices = _batches(len(x), batch_size, drop_last=False)
    saved = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for _, layer in bns]
    try:
        _reestimate(model, bns, x, slices, float(tolerance), max_passes)
    except BaseException:  # never leave the model half re-estimated
        for (_, layer), (mean, variance) in zip(bns, saved):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
        raise
    return {path: (layer.moving_mean.numpy(), layer.moving_variance.numpy()) for path, layer in bns}


def bn_input_variances(model: keras.Model, x: np.ndarray, *, batch_size: int = 64) -> pd.DataFrame:
    """The variance each BN layer's input has in training and in inference mode.

    For every BN layer and channel:

    - ``train_variance``: ``x`` is cut into consecutive batches of ``batch_size`` (a
      last, smaller batch is left out) and passed in training mode: dropout and other
      noise layers active, earlier BN layers normalising with the batch statistics.
      It is the mean over batches of the biased batch variance of the layer's input,
      the quantity whose moving average training stores in ``moving_variance``.
    - ``inference_variance``: the biased variance of the layer's input over all of
      ``x`` in inference mode (dropout off, moving statistics): what the layer
      actually receives at test time.
    - ``moving_variance``: the layer's current moving variance.

    The model is left exactly as it was (:func:`unchanged_state`).

    Args:
        model: A single-input Keras model with top-level BN layers.
        x: Model inputs; at least ``batch_size`` examples (and at least 2).
        batch_size: The training batch size whose statistics BN saw.

    Returns:
        One row per (layer, channel), columns ``layer``, ``channel``,
        ``train_variance``, ``inference_variance``, ``moving_variance``; layers in the
        order of ``model.layers``.

    Raises:
        TypeError: ``model`` is not a Keras model, ``x`` not a NumPy array, or
            ``batch_size`` not an int.
        ValueError: As :func:`reestimate_bn_statistics` (NaN or inf in ``x``), or fewer
            than ``batch_size`` examples.
    """
    layers = probed_bn_layers(model)
    x, batch_size = _check_data(model, x, batch_size)
    if len(x) < batch_size:
        raise ValueError(f"x has {len(x)} examples, fewer than one batch of batch_size={batch_size}")
    probe = layer_input_model(model, layers)
    per_batch: list[list[np.ndarray]] = [[] for _ in layers]
    with unchanged_state(model):
        for start in range(0, len(x) - batch_size + 1, batch_size):
            outputs = _outputs(probe, x[start : start + batch_size], training=True)
            for i, (layer, values) in enumerate(zip(layers, outputs)):
                per_batch[i].append(_channel_rows(values, layer.axis).var(axis=0))
    moments = [_Moments() for _ in layers]
    step = max(batch_size, 500)
    for start in range(0, len(x), step):
        outputs = _outputs(probe, x[start : start + step], training=False)
        for i, (layer, values) in enumerate(zip(layers, outputs)):
            moments[i].add(_channel_rows(values, layer.axis))
    tables = []
    for layer, batches, inference in zip(layers, per_batch, moments):
        train = np.mean(batches, axis=0)
        tables.append(
            pd.DataFrame(
                {
                    "layer": layer.name,
                    "channel": np.arange(len(train)),
                    "train_variance": train,
                    "inference_variance": inference.variance,
                    "moving_variance": keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64),
                }
            )
        )
    return pd.concat(tables, ignore_index=True)


def batch_statistics_spread(
    features: np.ndarray,
    batch_sizes: Sequence[int],
    *,
    n_batches: int = 200,
    seed: int = 0,
    axis: int = -1,
) -> pd.DataFrame:
    """Spread of BN's batch mean and variance around the whole data's, per batch size.

    ``features`` has the examples on the first axis and the channels (what BN
    normalises separately) on ``axis``; any other axes (image height, width) are
    pooled with the examples, as BN does for convolution outputs. For each batch
    size, ``n_batches`` batches are drawn at random (examples without replacement
    within a batch), and for every batch and channel the errors

    - of the mean, in units of the channel's standard deviation: ``(batch mean - mean) / std``;
    - of the (biased) variance, relative: ``batch variance / variance - 1``

    are computed against the statistics of all of ``features``. Their root mean square
    over batches and channels is reported. For independent values the first is
    ``1 / sqrt(n)`` with ``n`` values per channel in a batch.

    Args:
        features: Array of shape ``(N, C)`` or ``(N, ..., C)``; every channel must vary.
        batch_sizes: Batch sizes to measure, each in ``[1, N]``.
        n_batches: Random batches per batch size, >= 1.
        seed: Seed of the batch draws (``BNBOOK_SEED_OFFSET`` is added).
        axis: The channel axis (not 0, the examples' axis).

    Returns:
        One row per batch size (index ``batch_size``), columns ``mean_error`` and
        ``variance_error`` (root mean squares, as above).

    Raises:
        TypeError: ``batch_sizes`` is not a sequence, or a batch size, ``n_batches``,
            ``seed`` or ``axis`` is not an int.
        ValueError: ``features`` has NaN or inf, fewer than 2 axes, ``axis`` is the examples' axis
            or out of range, a channel has zero variance, ``batch_sizes`` is empty, or a
            batch size is outside ``[1, N]``.
    """
    x = np.asarray(features, dtype=np.float64)
    check_finite(x, "features")
    if x.ndim < 2:
        raise ValueError(f"features must have shape (N, C) or (N, ..., C), got shape {x.shape}")
    axis = check_int(axis, "axis")
    if not -x.ndim <= axis < x.ndim or axis % x.ndim == 0:
        raise ValueError(f"axis must be a channel axis of features of shape {x.shape}: 1 to {x.ndim - 1} or -1; got {axis}")
    n_examples = x.shape[0]
    batch_sizes = check_sequence(batch_sizes, "batch_sizes", "[2, 8, 32]")
    if len(batch_sizes) == 0:
        raise ValueError("batch_sizes is empty: pass e.g. [2, 8, 32]")
    sizes = [check_int(b, "batch size", minimum=1) for b in batch_sizes]
    too_big = [b for b in sizes if b > n_examples]
    if too_big:
        raise ValueError(f"batch sizes {too_big} exceed the {n_examples} examples; accepted: 1 to {n_examples}")
    n_batches = check_int(n_batches, "n_batches", minimum=1)
    seed = check_int(seed, "seed", minimum=0)

    per_example = np.moveaxis(x, axis % x.ndim, -1).reshape(n_examples, -1, x.shape[axis])  # (N, values, C)
    values_per_example = per_example.shape[1]
    sums = per_example.sum(axis=1)  # (N, C)
    squares = (per_example**2).sum(axis=1)
    mean, variance = channel_moments(per_example.reshape(-1, x.shape[axis]))
    if np.any(variance <= 0):
        raise ValueError(f"channels {np.flatnonzero(variance <= 0).tolist()} have zero variance: nothing to normalise")

    rng = np.random.default_rng(shifted(seed))  # honours BNBOOK_SEED_OFFSET
    rows = []
    for size in sizes:
        # Each row of `picks`: one batch, `size` distinct examples.
        picks = np.stack([rng.choice(n_examples, size, replace=False) for _ in range(n_batches)])
        count = size * values_per_example
        batch_mean = sums[picks].sum(axis=1) / count  # (n_batches, C)
        batch_variance = squares[picks].sum(axis=1) / count - batch_mean**2
        mean_error = (batch_mean - mean) / np.sqrt(variance)
        variance_error = batch_variance / variance - 1.0
        rows.append(
            {
                "batch_size": size,
                "mean_error": float(np.sqrt(np.mean(mean_error**2))),
                "variance_error": float(np.sqrt(np.mean(variance_error**2))),
            }
        )
    return pd.DataFrame(rows).set_index("batch_size")
