"""Batch normalization written from TensorFlow's low-level ops, as a Keras layer.

:class:`BatchNorm` is what chapter 01 derives: ``tf.nn.moments`` for the batch
statistics, an exponential moving average for the inference statistics, and
``tf.nn.batch_normalization`` for the affine normalisation. It is a drop-in for
:class:`keras.layers.BatchNormalization` on the arguments it accepts (same variables,
same training/inference/``trainable=False`` behaviour, same moving-average rule), so
later chapters can open it up, change one line, and compare with the real layer.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

__all__ = ["BatchNorm"]


@keras.saving.register_keras_serializable(package="bnbook")
class BatchNorm(keras.layers.Layer):
    """Batch normalization from ``tf.nn.moments`` and ``tf.nn.batch_normalization``.

    In training mode (``training=True`` and ``self.trainable``) it normalises each
    feature with the mean and the biased variance of the batch, over every axis but
    ``axis``, and updates ``moving = moving * momentum + batch * (1 - momentum)``.
    Otherwise it normalises with the moving statistics. Then ``gamma * x_hat + beta``.

    Args:
        axis: The feature (channel) axis, an int: ``-1`` for Dense outputs and
            channels-last images, ``1`` for channels-first images.
        momentum: Weight of the old value in the moving averages, in [0, 1].
        epsilon: Added to the variance before the square root, > 0.
        center: Learn an offset ``beta``.
        scale: Learn a scale ``gamma``.
        beta_initializer, gamma_initializer, moving_mean_initializer,
        moving_variance_initializer: Keras initializers (names, dicts or objects).
        **kwargs: Passed to :class:`keras.layers.Layer` (``name``, ``trainable``, ...).

    Raises:
        TypeError: ``axis`` is not an int, or a flag is not a bool.
        ValueError: ``momentum`` outside [0, 1] or ``epsilon`` not positive.
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise TypeError(f"axis must be an int (e.g. -1 or 1), got {axis!r}")
        for flag, value in (("center", center), ("scale", scale)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False, got {value!r}")
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if not float(epsilon) > 0.0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
        self.axis = axis
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Create gamma, beta, moving_mean and moving_variance (in Keras's order)."""
        rank = len(input_shape)
        if not -rank <= self.axis < rank:
            raise ValueError(f"axis={self.axis} is out of range for inputs of rank {rank} (shape {input_shape})")
        channel_axis = self.axis % rank
        shape = (input_shape[channel_axis],)
        if self.scale:
            self.gamma = self.add_weight(shape=shape, name="gamma", initializer=self.gamma_initializer, trainable=True)
        if self.center:
            self.beta = self.add_weight(shape=shape, name="beta", initializer=self.beta_initializer, trainable=True)
        self.moving_mean = self.add_weight(
            shape=shape, name="moving_mean", initializer=self.moving_mean_initializer, trainable=False
        )
        self.moving_variance = self.add_weight(
            shape=shape, name="moving_variance", initializer=self.moving_variance_initializer, trainable=False
        )
        self._reduction_axes = [i for i in range(rank) if i != channel_axis]
        # Statistics have shape (C,); this shape broadcasts them against the inputs.
        self._broadcast_shape = [1] * rank
        self._broadcast_shape[channel_axis] = shape[0]

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Normalise with the batch statistics (training) or the moving ones (inference)."""
        x = tf.cast(inputs, "float32")
        if training and self.trainable:
            mean, variance = tf.nn.moments(x, axes=self._reduction_axes)  # biased variance
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            mean, variance = self.moving_mean, self.moving_variance

        def shaped(v: Any) -> tf.Tensor | None:
            return None if v is None else tf.reshape(tf.cast(v, "float32"), self._broadcast_shape)

        y = tf.nn.batch_normalization(
            x,
            mean=shaped(mean),
            variance=shaped(variance),
            offset=shaped(self.beta if self.center else None),
            scale=shaped(self.gamma if self.scale else None),
            variance_epsilon=self.epsilon,
        )
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """BN keeps the shape of its input."""
        return input_shape

    def get_config(self) -> dict[str, Any]:
        """Everything needed to rebuild the layer (used by ``.keras`` saving)."""
        return {
            **super().get_config(),
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": keras.initializers.serialize(self.beta_initializer),
            "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
            "moving_mean_initializer": keras.initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": keras.initializers.serialize(self.moving_variance_initializer),
        }
