"""Batch normalization written from TensorFlow's low-level ops, as a Keras layer.

:class:`BatchNorm` is what chapter 01 derives: ``tf.nn.moments`` for the batch
statistics, an exponential moving average for the inference statistics, and
``tf.nn.batch_normalization`` for the affine normalisation. It is a drop-in for
:class:`keras.layers.BatchNormalization` on the arguments it accepts (same variables,
same training/inference/``trainable=False`` behaviour, same moving-average rule, same
handling of masks and of float16/bfloat16 inputs), so later chapters can open it up,
change one line, and compare with the real layer.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from bnbook._checks import check_int

__all__ = ["BatchNorm"]


@keras.saving.register_keras_serializable(package="bnbook")
class BatchNorm(keras.layers.Layer):
    """Batch normalization from ``tf.nn.moments`` and ``tf.nn.batch_normalization``.

    In training mode (``training=True`` and ``self.trainable``) it normalises each
    feature with the mean and the biased variance of the batch, over every axis but
    ``axis``, and updates ``moving = moving * momentum + batch * (1 - momentum)``.
    Otherwise it normalises with the moving statistics. Then ``gamma * x_hat + beta``.

    As in Keras: float16 and bfloat16 inputs are normalised in float32 and the four
    variables stay float32 under a ``mixed_float16``/``mixed_bfloat16`` policy (the
    output has the layer's compute dtype); a Keras mask (the inputs' shape without
    the last axis, as ``Masking`` and ``Embedding`` make it) keeps the masked
    positions out of the batch moments and the moving averages, is otherwise
    ignored, and is passed on to the next layer; calling the layer on
    inputs of another rank than the one it was built for raises ``ValueError``.

    Unlike :class:`keras.layers.BatchNormalization` it takes no ``beta_regularizer``,
    ``gamma_regularizer``, ``beta_constraint``, ``gamma_constraint``, ``renorm``,
    ``renorm_clipping``, ``renorm_momentum`` or ``synchronized`` argument (passing
    one raises Keras's ``ValueError`` for unrecognized keyword arguments).

    Args:
        axis: The feature (channel) axis, an int (NumPy integers too): ``-1`` for Dense
            outputs and channels-last images, ``1`` for channels-first images.
        momentum: Weight of the old value in the moving averages, in [0, 1].
        epsilon: Added to the variance before the square root, > 0.
        center: Learn an offset ``beta``.
        scale: Learn a scale ``gamma``.
        beta_initializer, gamma_initializer, moving_mean_initializer,
        moving_variance_initializer: Keras initializers (names, dicts or objects).
        **kwargs: Passed to :class:`keras.layers.Layer` (``name``, ``trainable``,
            ``dtype``, ...).

    Raises:
        TypeError: ``axis`` is not an int or a flag is not a bool.
        ValueError: ``momentum`` outside [0, 1], ``epsilon`` not positive, or an
            argument that is not one of the above; at build,
            ``axis`` out of range; at call, inputs of another rank than at build, or
            in training a mask whose rank is not the inputs' rank - 1.
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
        axis = check_int(axis, "axis (e.g. -1 or 1)")
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
        self.supports_masking = True  # an incoming mask is passed on to the next layer

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Create gamma, beta, moving_mean and moving_variance (in Keras's order)."""
        rank = len(input_shape)
        if not -rank <= self.axis < rank:
            raise ValueError(f"axis={self.axis} is out of range for inputs of rank {rank} (shape {input_shape})")
        channel_axis = self.axis % rank
        shape = (input_shape[channel_axis],)
        # autocast=False: under mixed precision the variables are float32 and read as float32.
        if self.scale:
            self.gamma = self.add_weight(
                shape=shape, name="gamma", initializer=self.gamma_initializer, trainable=True, autocast=False
            )
        if self.center:
            self.beta = self.add_weight(
                shape=shape, name="beta", initializer=self.beta_initializer, trainable=True, autocast=False
            )
        self.moving_mean = self.add_weight(
            shape=shape, name="moving_mean", initializer=self.moving_mean_initializer, trainable=False, autocast=False
        )
        self.moving_variance = self.add_weight(
            shape=shape,
            name="moving_variance",
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
        )
        # Keras checks every later input against this: same rank, same number of channels.
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={channel_axis: shape[0]})
        self._reduction_axes = [i for i in range(rank) if i != channel_axis]
        # Statistics have shape (C,); this shape broadcasts them against the inputs.
        self._broadcast_shape = [1] * rank
        self._broadcast_shape[channel_axis] = shape[0]

    def call(self, inputs: tf.Tensor, training: bool | None = None, mask: tf.Tensor | None = None) -> tf.Tensor:
        """Normalise with the batch statistics (training) or the moving ones (inference)."""
        # float16/bfloat16 inputs are normalised in float32, as Keras does (in float16 a
        # variance of 70000 overflows and a mean of 1000.3 loses its decimals).
        x = tf.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        moving_mean = tf.cast(self.moving_mean, x.dtype)
        moving_variance = tf.cast(self.moving_variance, x.dtype)
        if training and self.trainable:
            mean, variance = self._batch_moments(x, mask)  # biased variance
            self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            mean, variance = moving_mean, moving_variance

        def shaped(v: Any) -> tf.Tensor | None:
            return None if v is None else tf.reshape(tf.cast(v, x.dtype), self._broadcast_shape)

        y = tf.nn.batch_normalization(
            x,
            mean=shaped(mean),
            variance=shaped(variance),
            offset=shaped(self.beta if self.center else None),
            scale=shaped(self.gamma if self.scale else None),
            variance_epsilon=self.epsilon,
        )
        return tf.cast(y, self.compute_dtype)

    def _batch_moments(self, x: tf.Tensor, mask: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor]:
        """Mean and biased variance per channel, over the positions the mask keeps (all without a mask)."""
        if mask is None:
            return tf.nn.moments(x, axes=self._reduction_axes)
        if len(mask.shape) != len(x.shape) - 1:
            raise ValueError(
                f"the mask must have the inputs' shape without the last axis (rank {len(x.shape) - 1}), "
                f"got a mask of shape {tuple(mask.shape)} for inputs of shape {tuple(x.shape)}"
            )
        # A Keras mask covers every axis but the last one: give it that axis back.
        keep = tf.broadcast_to(tf.cast(mask, "bool")[..., tf.newaxis], tf.shape(x))
        count = tf.reduce_sum(tf.cast(keep, x.dtype), axis=self._reduction_axes)
        # divide_no_nan: a fully masked batch gives mean 0 and variance 0 (Keras gives the same)
        mean = tf.math.divide_no_nan(tf.reduce_sum(tf.where(keep, x, 0.0), axis=self._reduction_axes), count)
        deviation = tf.where(keep, x - tf.reshape(mean, self._broadcast_shape), 0.0)
        variance = tf.math.divide_no_nan(tf.reduce_sum(tf.square(deviation), axis=self._reduction_axes), count)
        return mean, variance

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
