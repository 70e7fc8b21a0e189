"""Which device TensorFlow computes on, and splitting the CPU into several logical devices.

The book's committed outputs are CPU outputs (``tools.notebooks`` hides any GPU), but a
reader may run a chapter on Colab's GPU runtime, where some facts differ: kernels differ
(cuDNN's fused batch norm was reported to return NaN where the CPU kernel returns 0),
timings differ. A chapter asserts such a fact per device with :func:`gpu_visible`,
:func:`device_kind` or :func:`per_device`, all of which ask
``tf.config.list_physical_devices``, so a test can fake a GPU by patching that one
function.

Whether ``compile()``'s default ``jit_compile="auto"`` uses XLA is *not* a per-device
fact in this book: Keras 3.15 turns it on only where TensorFlow sees any non-CPU device
(a GPU or a TPU), no distribution strategy is in use, and the model supports XLA, which
it does not while TensorFlow's op determinism is on, as it is after
``bnbook.start_chapter`` (``_resolve_auto_jit_compile`` and ``model_supports_jit`` in
``keras/src/trainers/trainer.py``). Ask :func:`bnbook.timing.xla_by_default` for it.

Splitting the CPU, to run ``tf.distribute`` strategies on one machine:

TensorFlow fixes its device list when its runtime starts: the first tensor, the first
``tf.config.list_logical_devices()`` or the first model starts it, and from then on
the split can no longer change. So :func:`split_cpu` must run in a fresh process (a
fresh notebook kernel) before anything else touches TensorFlow. Importing
``tensorflow``/``keras``, ``keras.utils.set_random_seed`` and
``tf.config.experimental.enable_op_determinism`` do not start the runtime; they may
come first.
"""

from __future__ import annotations

from typing import TypeVar

import tensorflow as tf

from bnbook._checks import check_int

__all__ = ["device_kind", "gpu_visible", "per_device", "split_cpu"]

T = TypeVar("T")


def gpu_visible() -> bool:
    """Whether TensorFlow sees at least one GPU in this process.

    True on Colab's GPU runtime; False in the book's own runs (``CUDA_VISIBLE_DEVICES=-1``,
    ``tensorflow-cpu``). Listing the physical devices does not start TensorFlow's runtime,
    so this may come before :func:`split_cpu`.
    """
    return bool(tf.config.list_physical_devices("GPU"))


def device_kind() -> str:
    """``"GPU"`` where TensorFlow sees a GPU (it places ops there by default), else ``"CPU"``."""
    return "GPU" if gpu_visible() else "CPU"


def per_device(*, cpu: T, gpu: T) -> T:
    """Return what holds on this device: ``gpu`` where TensorFlow sees a GPU, else ``cpu``.

    For a fact that differs between devices, e.g. what the fused kernel returns for
    one value per channel: ``assert np.all(per_device(cpu=zero, gpu=zero | nan))``.
    (Not for ``model.jit_compile``: with op determinism on, as after
    ``bnbook.start_chapter``, it is False on a GPU too; see
    :func:`bnbook.timing.xla_by_default`.)

    Args:
        cpu: The value on a CPU-only machine.
        gpu: The value where a GPU is visible.
    """
    return gpu if gpu_visible() else cpu


def split_cpu(n_devices: int) -> list[str]:
    """Split the machine's CPU into ``n_devices`` logical CPU devices; return their names.

    The logical devices share the same cores and memory: they let
    ``tf.distribute.MirroredStrategy`` run several replicas on one CPU, which is
    enough to study what distribution does to the computation (not its speed).
    Calling it again with the same number after the runtime started is harmless.

    Args:
        n_devices: Number of logical CPU devices, >= 1.

    Returns:
        The logical device names, e.g. ``["/device:CPU:0", "/device:CPU:1"]``.

    Raises:
        TypeError: ``n_devices`` is not an int.
        ValueError: ``n_devices`` < 1.
        RuntimeError: TensorFlow's runtime already started with another split; the
            message says to restart the process and call this first.
    """
    n_devices = check_int(n_devices, "n_devices", minimum=1)
    cpu = tf.config.list_physical_devices("CPU")[0]
    config = [tf.config.LogicalDeviceConfiguration() for _ in range(n_devices)]
    try:
        tf.config.set_logical_device_configuration(cpu, config)
    except RuntimeError as err:
        current = len(tf.config.list_logical_devices("CPU"))
        raise RuntimeError(
            f"cannot split the CPU into {n_devices} logical devices: TensorFlow's runtime already "
            f"started with {current} CPU device(s) (a tensor, a model or a device listing was "
            f"created first). Restart the kernel/process and call split_cpu({n_devices}) before "
            f"anything else uses TensorFlow."
        ) from err
    return [device.name for device in tf.config.list_logical_devices("CPU")]
