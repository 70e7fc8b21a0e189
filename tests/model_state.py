"""``assert_model_unchanged``: a check that a function leaves the user's model exactly as it was.

What it compares before and after the block (on the model and, recursively, every layer and
nested model in it):

- every variable's value (weights, moving statistics, random-generator states such as
  Dropout's ``seed_generator_state``), by path;
- the optimizer's variables (its ``iterations`` and slots, the learning rate), and whether
  it is built;
- each layer's ``trainable`` flag, and how many times it has been called in a graph
  (``len(layer._inbound_nodes)``: what ``probes.probed_bn_layers`` and the doctor read);
- NumPy's, Python's and Keras's global random states.

It is a context manager, so that it also checks the model after the block raised (a function
that refuses bad input must not have half-written the model first).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np


def _all_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    found, stack = [], [model]
    while stack:
        layer = stack.pop()
        if any(layer is seen for seen in found):
            continue
        found.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
    return found


def _global_seed_state() -> Any:
    # Keras 3.15 keeps its global SeedGenerator (of unseeded keras.random calls) here; reading it
    # through global_seed_generator() would create one, drawing from Python's generator.
    from keras.src.backend.common import global_state  # noqa: PLC0415
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR  # noqa: PLC0415

    generator = global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)
    return None if generator is None else keras.ops.convert_to_numpy(generator.state.value).copy()


def model_snapshot(model: keras.Model) -> dict[str, Any]:
    """Everything :func:`assert_model_unchanged` compares, as plain Python/NumPy values."""
    layers = _all_layers(model)
    optimizer = getattr(model, "optimizer", None)
    return {
        "variables": [(v.path, keras.ops.convert_to_numpy(v.value).copy()) for v in model.variables],
        "trainable": [(f"{i}:{layer.name}", bool(layer.trainable)) for i, layer in enumerate(layers)],
        "calls": [(f"{i}:{layer.name}", len(getattr(layer, "_inbound_nodes", []))) for i, layer in enumerate(layers)],
        "optimizer_built": None if optimizer is None else bool(optimizer.built),
        "optimizer": []
        if optimizer is None
        else [(v.path, keras.ops.convert_to_numpy(v.value).copy()) for v in optimizer.variables],
        "numpy_random": np.random.get_state()[1].copy(),  # noqa: NPY002
        "python_random": random.getstate(),
        "keras_random": _global_seed_state(),
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed between two snapshots, one line per item (empty: nothing)."""
    changed = []
    for key in before:
        if key in ("variables", "optimizer", "trainable", "calls"):
            old, new = dict(before[key]), dict(after[key])
            if [k for k, _ in before[key]] != [k for k, _ in after[key]]:
                changed.append(f"{key}: the list changed ({sorted(set(old) ^ set(new)) or 'order'})")
            changed += [f"{key}: {name}: {old[name]!r} -> {new[name]!r}" for name in old if name in new and not _same(old[name], new[name])]
        elif not _same(before[key], after[key]):
            changed.append(f"{key} changed")
    return changed


GLOBAL_RANDOM = ("numpy_random", "python_random", "keras_random")


@contextlib.contextmanager
def assert_model_unchanged(model: keras.Model, *, global_random: bool = True) -> Iterator[None]:
    """Fail if anything listed in the module docstring differs after the block (also when it raised).

    ``global_random=False``: leave the global random states out (for a block that seeds or
    builds models on purpose, such as ``run_experiments``).
    """
    before = model_snapshot(model)
    try:
        yield
    finally:
        changed = differences(before, model_snapshot(model))
        if not global_random:
            changed = [line for line in changed if not line.startswith(GLOBAL_RANDOM)]
        assert not changed, "the model was changed:\n" + "\n".join(changed)
