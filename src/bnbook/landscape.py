"""How much the loss and its gradient change along the gradient direction.

Santurkar et al. (2018) measure the smoothness of the loss landscape during
training by moving the weights from the current point ``w`` along the negative
gradient ``g = dL/dw`` of one batch, ``w - eta * g``, for several step sizes
``eta``, and recording the loss there and how far the gradient has moved from ``g``.
A smooth landscape changes little along this path; the ratio
``|grad(w - eta g) - g| / |eta g|`` estimates the local Lipschitz constant of the
gradient ("effective beta-smoothness").

:func:`profile_along_gradient` does this on a Keras model without changing it: the
model is run with ``stateless_call``, so neither its weights nor its moving
statistics (nor random-generator states) move. :func:`summarize_profile` turns the
profile into three numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from bnbook._checks import check_bool, check_finite, check_model, check_model_inputs, check_sequence, require_columns

__all__ = ["profile_along_gradient", "summarize_profile"]


def _global_norm(tensors: Sequence[tf.Tensor]) -> float:
    return float(tf.linalg.global_norm([tf.cast(t, "float64") for t in tensors]).numpy())


def profile_along_gradient(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    step_sizes: Sequence[float],
    *,
    loss: Callable[[Any, Any], Any] | None = None,
    training: bool = True,
) -> pd.DataFrame:
    """Loss and gradient of one batch at ``w - eta * g`` for each step size ``eta``.

    Args:
        model: A built Keras model (compiled or not); it is not modified.
        x, y: One batch of inputs and targets.
        step_sizes: The values of ``eta``, each >= 0 (0 is the current point).
        loss: ``loss(y_true, y_pred)`` returning a scalar; default
            ``keras.losses.SparseCategoricalCrossentropy()`` (softmax outputs,
            integer labels).
        training: Run the model in training mode (BN uses the batch's statistics,
            as during training) or in inference mode.

    Returns:
        One row per step size, columns ``step_size``, ``distance`` (``|eta g|``, the
        distance moved in weight space), ``loss``, ``grad_change``
        (``|grad(w - eta g) - g|``) and ``grad_norm`` (``|g|`` at the start);
        norms are over all trainable variables together.

    Raises:
        TypeError: ``model`` is not a Keras model, ``training`` not a bool,
            ``step_sizes`` not a sequence of numbers, or ``x`` integer where the model
            takes floats (convert 0-255 images first).
        ValueError: ``step_sizes`` is empty or has a negative or non-finite value; the
            model has no trainable variables; ``x`` and ``y`` differ in length or hold
            NaN or inf.
    """
    check_model(model)
    check_bool(training, "training")
    steps = check_sequence(step_sizes, "step_sizes", "[0.0, 0.1, 0.2]")
    try:
        etas = [float(s) for s in steps]
    except (TypeError, ValueError):
        raise TypeError(f"step_sizes must be numbers, e.g. [0.0, 0.1, 0.2]; got {steps!r}") from None
    if not etas:
        raise ValueError("step_sizes is empty: pass e.g. [0.0, 0.1, 0.2]")
    if any(not (s >= 0 and np.isfinite(s)) for s in etas):
        raise ValueError(f"step sizes must be finite and >= 0, got {steps}")
    if not model.trainable_variables:
        raise ValueError("the model has no trainable variables (is it built?)")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    x, y = np.asarray(x), np.asarray(y)
    check_model_inputs(model, x)
    check_finite(y, "y")
    loss_fn = loss if loss is not None else keras.losses.SparseCategoricalCrossentropy()
    x = tf.convert_to_tensor(x)
    y = tf.convert_to_tensor(y)
    start = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    def loss_and_grad(weights: list[tf.Tensor]) -> tuple[float, list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            tape.watch(weights)
            outputs, _ = model.stateless_call(weights, frozen, x, training=training)
            value = loss_fn(y, outputs)
        return float(value.numpy()), tape.gradient(value, weights)

    _, g0 = loss_and_grad(start)
    g_norm = _global_norm(g0)
    rows = []
    for eta in etas:
        moved = [w - eta * g for w, g in zip(start, g0)]
        value, g = loss_and_grad(moved)
        rows.append(
            {
                "step_size": eta,
                "distance": eta * g_norm,
                "loss": value,
                "grad_change": _global_norm([a - b for a, b in zip(g, g0)]),
                "grad_norm": g_norm,
            }
        )
    return pd.DataFrame(rows)


def summarize_profile(profile: pd.DataFrame) -> pd.Series:
    """Three smoothness numbers from :func:`profile_along_gradient`.

    Returns:
        ``loss_range``: max minus min of the loss over the step sizes;
        ``max_grad_change``: the largest ``grad_change``;
        ``beta``: the largest ``grad_change / distance`` over the step sizes > 0
        (``nan`` if the gradient is zero or there is no step size > 0).

    Raises:
        TypeError: ``profile`` is not a DataFrame.
        ValueError: A needed column is missing.
    """
    require_columns(profile, ("loss", "grad_change", "distance"))
    moved = profile[profile["distance"] > 0]
    beta = float((moved["grad_change"] / moved["distance"]).max()) if len(moved) else float("nan")
    return pd.Series(
        {
            "loss_range": float(profile["loss"].max() - profile["loss"].min()),
            "max_grad_change": float(profile["grad_change"].max()),
            "beta": beta,
        }
    )
