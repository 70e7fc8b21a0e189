"""Time and peak memory of :func:`bnbook.doctor.diagnose` and of its fix on ImageNet-sized models (issue 23, item 6).

``python benchmarks/doctor_scale.py [--quick] [--report benchmarks/doctor_scale_report.txt]``

The target of issue 23, with the arguments it is measured with (stated, not implied):

- ``diagnose(model, x, y, batch_size=32)`` (the default ``pass_size``: 128 examples or
  fewer, so that one pass stays under about 1 GiB; 89 here) on
  ``keras.applications.MobileNetV2(alpha=0.35, weights=None)`` at 224 x 224 with 256
  random images: under 2 minutes on 2 idle cores, under 2 GB of extra memory. The
  previous default, ``pass_size=128``, is recorded too;
- ``diagnose(model, x, y, batch_size=16)`` on ``keras.applications.ResNet50(weights=None)``
  at 224 x 224 with 64 images: runs; its peak memory is recorded too;
- the fix the doctor prints, ``probes.reestimate_bn_statistics(model, x)`` with its
  defaults (all 256 images in one batch: exact after its first pass), on each; and with
  ``batch_size=64`` on MobileNetV2, which holds less but needs a pass per BN layer in a
  chain on this untrained network.

Every measurement runs in a fresh Python process (``--one``), so that its peak resident
memory (``ru_maxrss``, a process-wide peak, read at the end) is its own: "extra memory"
is that peak minus the resident memory just before the call (after building the model
and the data). The time is the call's wall time and its CPU time (user + system, all
threads): on a loaded machine the wall time is inflated, the CPU time much less. Labels
are given, so every pass of the doctor runs. ``--quick`` uses 32 x 32 inputs and 32
images (a smoke test). The numbers are a record, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: (label, model, images, call, batch_size, pass_size) of each measurement. For ``diagnose``,
#: pass_size None is the call's default; for ``reestimate``, the last field is the
#: ``batch_size`` given to ``reestimate_bn_statistics`` (None: its default, 256).
CASES: tuple[tuple[str, str, int, str, int, int | None], ...] = (
    ("MobileNetV2(alpha=0.35) diagnose, default pass_size", "mobilenetv2", 256, "diagnose", 32, None),
    ("MobileNetV2(alpha=0.35) diagnose, pass_size=128 (the previous default)", "mobilenetv2", 256, "diagnose", 32, 128),
    ("MobileNetV2(alpha=0.35) diagnose, pass_size=32", "mobilenetv2", 256, "diagnose", 32, 32),
    ("MobileNetV2(alpha=0.35) reestimate_bn_statistics (defaults)", "mobilenetv2", 256, "reestimate", 32, None),
    ("MobileNetV2(alpha=0.35) reestimate_bn_statistics, batch_size=64", "mobilenetv2", 256, "reestimate", 32, 64),
    ("ResNet50 diagnose, default pass_size", "resnet50", 64, "diagnose", 16, None),
    ("ResNet50 reestimate_bn_statistics (defaults)", "resnet50", 64, "reestimate", 16, None),
)


def _rss_mb() -> float:
    """The current resident memory of this process (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _one(model_name: str, size: int, images: int, call: str, batch_size: int, pass_size: int | None) -> dict:
    """One measurement, in this (fresh) process."""
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from bnbook import probes  # noqa: PLC0415
    from bnbook.doctor import diagnose  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    shape = (size, size, 3)
    if model_name == "mobilenetv2":
        model = keras.applications.MobileNetV2(input_shape=shape, alpha=0.35, weights=None)
    else:
        model = keras.applications.ResNet50(input_shape=shape, weights=None)
    x = np.random.default_rng(0).uniform(-1, 1, (images, *shape)).astype("float32")
    y = np.random.default_rng(1).integers(0, 1000, images)
    model(x[:2], training=False)  # build and trace once, outside the measurement
    before = _rss_mb()
    cpu, wall = time.process_time(), time.perf_counter()
    if call == "diagnose":
        kwargs = {} if pass_size is None else {"pass_size": pass_size}
        report = diagnose(model, x, y, batch_size=batch_size, **kwargs)
        from bnbook._bn_streams import _memory_pass_size, _widest_bn_input  # noqa: PLC0415
        from bnbook.doctor import diagnosis  # noqa: PLC0415

        widest = _widest_bn_input(model, probes._bn_paths(model), x)
        resolved = pass_size or _memory_pass_size(widest, diagnosis.PASS_MEMORY_BYTES, diagnosis.PASS_SIZE_LARGEST)
        outcome = f"pass_size {resolved}; {report._headline()}"
    else:
        kwargs = {} if pass_size is None else {"batch_size": pass_size}
        new = probes.reestimate_bn_statistics(model, x, **kwargs)
        outcome = f"{len(new)} BN layers re-estimated"
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    bns = sum(isinstance(layer, probes.BN_TYPES) for layer in model._flatten_layers())
    return {"wall_s": wall, "cpu_s": cpu, "extra_mb": _peak_rss_mb() - before, "bn_layers": bns, "outcome": outcome}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 x 32 inputs, 32 images")
    parser.add_argument("--report", type=Path, default=None, help="also write the output to this file")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one case, JSON on stdout
    args = parser.parse_args(argv)
    size = 32 if args.quick else 224
    if args.one is not None:
        label, model_name, images, call, batch_size, pass_size = CASES[int(args.one)]
        print(json.dumps(_one(model_name, size, 32 if args.quick else images, call, batch_size, pass_size)))
        return 0
    cores = len(os.sched_getaffinity(0))
    lines = [
        f"bnbook doctor benchmark: Python {platform.python_version()}, {cores} cores, "
        f"load average {os.getloadavg()[0]:.1f} at start; each line a fresh process"
    ]
    print(lines[0], flush=True)
    for i, (label, _, images, call, batch_size, pass_size) in enumerate(CASES):
        command = [sys.executable, __file__, "--one", str(i)] + (["--quick"] if args.quick else [])
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            line = f"{label}: FAILED ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})"
        else:
            r = json.loads(done.stdout.strip().splitlines()[-1])
            n = 32 if args.quick else images
            if call == "diagnose":
                settings = f"batch_size={batch_size}, pass_size={pass_size or 'default'}"
            else:
                settings = "defaults (batch_size=256)" if pass_size is None else f"batch_size={pass_size}"
            line = (
                f"{label} at {size}x{size}, {n} images, {r['bn_layers']} BN layers, {settings}:\n"
                f"  {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU; extra peak memory {r['extra_mb']:.0f} MB\n"
                f"  {r['outcome']}"
            )
        print(line, flush=True)
        lines.append(line)
    lines.append(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(lines[-1])
    if args.report:
        args.report.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
