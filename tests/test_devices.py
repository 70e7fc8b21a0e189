"""bnbook.devices: splitting the CPU (in a fresh process: TensorFlow is configured once per process), and which device."""

import os
import subprocess
import sys
import textwrap

import keras
import pytest
import tensorflow as tf

from bnbook import devices
from bnbook.devices import split_cpu


def _run(code: str) -> str:
    """Run ``code`` in a fresh Python process; return its stdout (fail on a non-zero exit)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}  # quiet logs: conftest imported bnbook
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_split_first_gives_n_devices_and_a_different_split_later_raises_a_clear_error():
    # One fresh process for both checks (importing TensorFlow is the slow part).
    out = _run(
        """
        import keras, tensorflow as tf
        from bnbook.devices import split_cpu
        keras.utils.set_random_seed(0)  # does not start the runtime
        tf.config.experimental.enable_op_determinism()  # neither does this
        names = split_cpu(3)
        print(names)
        print(split_cpu(3) == names)  # the same split again is harmless
        print(tf.distribute.MirroredStrategy(names).num_replicas_in_sync)
        try:
            split_cpu(2)  # the runtime has started: too late
        except RuntimeError as err:
            print(err)
        """
    )
    lines = out.splitlines()
    assert lines[:3] == ["['/device:CPU:0', '/device:CPU:1', '/device:CPU:2']", "True", "3"]
    assert "cannot split the CPU into 2 logical devices" in lines[3]
    assert "already started with 3 CPU device(s)" in lines[3]
    assert "Restart the kernel/process and call split_cpu(2)" in lines[3]


@pytest.mark.parametrize(("bad", "error"), [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_bad_counts_are_refused_before_touching_tensorflow(bad, error):
    with pytest.raises(error, match="n_devices"):
        split_cpu(bad)


# --- which device: a GPU faked by patching the one call the helpers (and Keras) make -------------

def _fake_devices(monkeypatch, *, gpu: bool):
    real = [tf.config.PhysicalDevice("/physical_device:CPU:0", "CPU")]
    fake_gpu = [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")] if gpu else []

    def list_physical_devices(device_type=None):
        every = real + fake_gpu
        return every if device_type is None else [d for d in every if d.device_type == device_type]

    monkeypatch.setattr(tf.config, "list_physical_devices", list_physical_devices)


@pytest.mark.parametrize("gpu", [False, True])
def test_the_device_helpers_follow_what_tensorflow_lists(monkeypatch, gpu):
    _fake_devices(monkeypatch, gpu=gpu)
    assert devices.gpu_visible() is gpu
    assert devices.device_kind() == ("GPU" if gpu else "CPU")
    assert devices.per_device(cpu="zero", gpu="nan") == ("nan" if gpu else "zero")


def test_the_real_machine_here_is_cpu_only():
    # conftest hides any GPU (CUDA_VISIBLE_DEVICES=-1), as the book's runs do.
    assert devices.gpu_visible() is False and devices.device_kind() == "CPU"
    assert devices.per_device(cpu=1, gpu=2) == 1


@pytest.mark.parametrize("gpu", [False, True])
def test_keras_auto_xla_follows_the_same_device_list(monkeypatch, gpu):
    # Keras decides jit_compile="auto" from tf.config.list_physical_devices too
    # (trainers/trainer.py, _resolve_auto_jit_compile): XLA on a GPU only once determinism is
    # off (model_supports_jit); with it on, as after start_chapter, False on a GPU too, which is
    # why devices' docstring points to timing.xla_by_default rather than to per_device.
    _fake_devices(monkeypatch, gpu=gpu)
    import tensorflow.python.framework.config as tf_framework_config

    for determinism in (False, True):
        monkeypatch.setattr(tf_framework_config, "is_op_determinism_enabled", lambda d=determinism: d)
        model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse", jit_compile="auto")
        assert model.jit_compile is (gpu and not determinism)
