"""Time and peak memory of :func:`bnbook.doctor.diagnose` on ImageNet-sized models (issue 23, item 6).

``python benchmarks/doctor_scale.py [--quick] [--report benchmarks/doctor_scale.txt]``

Runs the doctor (with labels, so every pass runs: population, inference, training
and re-estimated) on

- ``keras.applications.MobileNetV2(alpha=0.35, weights=None)`` at 224 x 224 with 256
  random images (target: under 2 minutes on 2 cores, under 2 GB of extra memory);
- ``keras.applications.ResNet50(weights=None)`` at 224 x 224 with 64 images (target: runs).

For each it prints the wall time of ``diagnose``, the time of one ``model.predict``
over the same images for scale, the growth of the process's peak resident memory
(``resource.getrusage``: includes TensorFlow's own buffers) and the peak of Python
allocations (``tracemalloc``: NumPy arrays the doctor keeps). ``--quick`` uses 32 x 32
inputs and 32 images (a smoke test). Timings depend on the machine's load; they are a
record, not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from bnbook.doctor import diagnose  # noqa: E402


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def run(name: str, build, size: int, images: int, batch_size: int, pass_size: int) -> str:
    keras.utils.set_random_seed(0)
    model = build((size, size, 3))
    x = np.random.default_rng(0).uniform(-1, 1, (images, size, size, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 1000, images)
    start = time.perf_counter()
    model.predict(x, batch_size=pass_size, verbose=0)
    predict_s = time.perf_counter() - start
    rss_before = _peak_rss_mb()
    tracemalloc.start()
    start = time.perf_counter()
    report = diagnose(model, x, y, batch_size=batch_size, pass_size=pass_size)
    seconds = time.perf_counter() - start
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = _peak_rss_mb() - rss_before
    bns = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model._flatten_layers())
    return (
        f"{name} at {size}x{size}, {images} images, {bns} BN layers, batch_size={batch_size}, pass_size={pass_size}:\n"
        f"  diagnose {seconds:.1f} s (one predict over the same images {predict_s:.1f} s); "
        f"peak RSS growth {rss_growth:.0f} MB; peak Python allocations {python_peak / 2**20:.0f} MB\n"
        f"  headline: {report._headline()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 x 32 inputs, 32 images")
    parser.add_argument("--report", type=Path, default=None, help="also write the output to this file")
    args = parser.parse_args(argv)
    size, n_mobile, n_resnet = (32, 32, 32) if args.quick else (224, 256, 64)
    cores = len(os.sched_getaffinity(0))
    lines = [
        f"bnbook doctor benchmark: Python {platform.python_version()}, Keras {keras.__version__}, "
        f"{cores} cores, load average {os.getloadavg()[0]:.1f} at start",
    ]
    print(lines[0], flush=True)
    for name, build, n, batch, passes in (
        (
            "MobileNetV2(alpha=0.35)",
            lambda shape: keras.applications.MobileNetV2(input_shape=shape, alpha=0.35, weights=None),
            n_mobile,
            32,
            64,
        ),
        ("ResNet50", lambda shape: keras.applications.ResNet50(input_shape=shape, weights=None), n_resnet, 16, 16),
    ):
        line = run(name, build, size, n, batch, passes)
        print(line, flush=True)
        lines.append(line)
    lines.append(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(lines[-1])
    if args.report:
        args.report.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
