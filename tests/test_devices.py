"""bnbook.devices: splitting the CPU, in a fresh process (TensorFlow is configured once per process)."""

import os
import subprocess
import sys
import textwrap

import pytest

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
