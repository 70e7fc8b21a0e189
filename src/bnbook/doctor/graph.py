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
