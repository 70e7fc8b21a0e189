"""Benchmark: ten seeds of the book's 300-200-100 BN MLP as parallel branches vs ten separate fits.

Not a test (timings depend on the machine and its load). Run:

    PYTHONPATH=src BNBOOK_QUIET=1 .venv/bin/python benchmarks/parallel_seeds.py

It prints the wall and process CPU seconds of (a) ``bnbook.ensembles.train_parallel`` with
10 seeds as branches of one model and (b) ``bnbook.experiments.run_experiments`` with the
same 10 seeds one after another (traced graph reused), both 2 epochs on the 3,000 training
images left by the validation split, batch 64, SGD with Nesterov momentum. CPU seconds are
the better guide on a shared machine: on an idle 2-core machine the wall time is at most them.
"""

from __future__ import annotations

import time

import bnbook  # noqa: F401  (quiets TensorFlow first)
import keras

from bnbook.data import load, split_validation
from bnbook.ensembles import train_parallel
from bnbook.experiments import run_experiments

L = keras.layers


def build() -> keras.Model:
    layers = [keras.Input((784,))]
    for units in (300, 200, 100):
        layers += [L.Dense(units, use_bias=False), L.BatchNormalization(momentum=0.9), L.Activation("relu")]
    model = keras.Sequential([*layers, L.Dense(10, activation="softmax")])
    model.compile(
        optimizer=keras.optimizers.SGD(0.03, momentum=0.9, nesterov=True),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=16,
    )
    return model


def timed(label: str, fn) -> None:  # noqa: ANN001
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    print(f"{label}: wall {time.perf_counter() - wall:.1f} s, CPU {time.process_time() - cpu:.1f} s", flush=True)


def main() -> None:
    (x_train, y_train), _ = load(flatten=True)
    fit, val = split_validation(x_train, y_train)
    seeds = list(range(10))
    timed("parallel branches, 10 seeds", lambda: train_parallel({"bn": build}, seeds, fit, validation=val, epochs=2))
    timed("separate fits, 10 seeds", lambda: run_experiments({"bn": build}, seeds, (fit, val), epochs=2, progress=False))
    timed("parallel branches, 10 seeds (again)", lambda: train_parallel({"bn": build}, seeds, fit, validation=val, epochs=2))


if __name__ == "__main__":
    main()
