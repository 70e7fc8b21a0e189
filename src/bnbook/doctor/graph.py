"""Walking a model: every BN layer at any depth of nested models, and the dropout upstream of one.

Path names such as ``base/block/bn`` name a layer inside nested models; a layer
shared between calls is listed once, under its first path.
"""

from __future__ import annotations

import keras

from bnbook._bn_streams import _channel_axis  # noqa: F401 - re-exported
from bnbook.probes import _bn_paths, _walk  # noqa: F401 - re-exported

_DROPOUT_TYPES = tuple(
    getattr(keras.layers, name)
    for name in (
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianDropout",
        "AlphaDropout",
        "GaussianNoise",
    )
    if hasattr(keras.layers, name)
)
_LINEAR_TYPES = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.EinsumDense,
)
# Layers through which a dropout's variance shift reaches a later BN layer.
_PASS_TYPES = _LINEAR_TYPES + (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.ZeroPadding2D,
    keras.layers.Add,  # a residual sum: the dropout's branch still changes the sum's variance
    keras.layers.Concatenate,  # the dropout's channels are among the BN layer's
)


def _producers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    producers = []
    for node in getattr(layer, "_inbound_nodes", []):
        for parent in node.parent_nodes:
            if parent.operation is not None and not isinstance(parent.operation, keras.layers.InputLayer):
                producers.append(parent.operation)
    return producers


def _dropout_upstream(bn: keras.layers.Layer) -> str | None:
    """The name of a dropout/noise layer whose output reaches ``bn`` through variance-keeping layers."""
    seen: set[int] = set()
    stack = _producers(bn)
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, _DROPOUT_TYPES):
            return layer.name
        if isinstance(layer, _PASS_TYPES):
            stack.extend(_producers(layer))
    return None


def _bn_fed_by_input(model: keras.Model, bns: list[tuple[str, keras.layers.Layer]]) -> set[str] | None:
    """The paths of the BN layers that the model's input reaches through no earlier BN layer.

    Walks each BN layer's graph upstream (through nested models: a nested model's input
    continues at that model's own producers); a path that meets a BN layer, or a nested
    model holding one, stops there. None when the model has no graph to walk (a
    subclassed model built by calling it on data).
    """
    bn_ids = {id(bn) for _, bn in bns}
    owners: dict[int, keras.layers.Layer] = {}  # a nested model's InputLayer -> that model
    holds_bn: dict[int, bool] = {}
    for _, layer in _walk(model):
        if isinstance(layer, keras.Model):
            functional = getattr(layer, "_functional", None) or layer
            try:
                inputs = list(functional.inputs or [])
            except (AttributeError, ValueError):
                inputs = []
            for tensor in inputs:
                owners[id(tensor._keras_history.operation)] = layer
            holds_bn[id(layer)] = any(id(inner) in bn_ids for _, inner in _walk(layer))

    def reaches_input(bn: keras.layers.Layer) -> bool:
        seen: set[int] = set()
        stack: list[keras.layers.Layer] = [bn]
        while stack:
            operation = stack.pop()
            if id(operation) in seen:
                continue
            seen.add(id(operation))
            if isinstance(operation, keras.layers.InputLayer):
                owner = owners.get(id(operation))
                if owner is None:
                    return True  # the model's own input
                stack.append(owner)  # continue outside the nested model
                continue
            for node in getattr(operation, "_inbound_nodes", []):
                for parent in node.parent_nodes:
                    layer = parent.operation
                    if layer is None or id(layer) in bn_ids or holds_bn.get(id(layer), False):
                        continue  # an earlier BN layer normalises what comes through here
                    stack.append(layer)
        return False

    if not any(getattr(bn, "_inbound_nodes", []) for _, bn in bns):
        return None
    return {path for path, bn in bns if reaches_input(bn)}
