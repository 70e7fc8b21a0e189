"""The preamble and the closing line every chapter shares.

:func:`start_chapter` does what every chapter needs before its first idea: quiet
TensorFlow, seed everything (deterministic ops), set the plot style, start the run-time
clock, and load the data set. :func:`finish_chapter` glues the seconds since then as
``runtime_s``, the number each chapter's header quotes.
"""

from __future__ import annotations

import time

from bnbook.data import Split, dataset_name, load
from bnbook.reproducibility import set_up

__all__ = ["finish_chapter", "start_chapter"]

_started: float | None = None


def start_chapter(seed: int = 0, *, flatten: bool = False, deterministic: bool = True) -> Split:
    """Set a chapter up in one call and return its data.

    Quiets TensorFlow, seeds Python, NumPy and TensorFlow with ``seed`` (plus
    ``BNBOOK_SEED_OFFSET``) and enables op determinism (:func:`bnbook.reproducibility.set_up`),
    sets the book's plot style, starts the clock :func:`finish_chapter` reads, loads the
    data set named by ``BNBOOK_DATASET`` (default ``"mnist5k"``) and prints one line
    saying what was loaded with which versions.

    Args:
        seed: The chapter's seed, >= 0.
        flatten: Return the images as ``(N, 784)`` rows instead of ``(N, 28, 28, 1)``.
        deterministic: Enable TensorFlow's op determinism.

    Returns:
        ``(x_train, y_train), (x_test, y_test)`` as :func:`bnbook.data.load` returns them.

    Raises:
        TypeError, ValueError: A bad ``seed`` or ``flatten`` (see ``set_up`` and ``load``).
    """
    global _started
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be True or False, got {deterministic!r}")
    label = set_up(seed, deterministic=deterministic)
    _started = time.perf_counter()
    from bnbook.plotting import use_style  # noqa: PLC0415  (keeps `import bnbook` light: no TensorFlow)

    use_style()
    name = dataset_name()
    data = load(name, flatten=flatten)
    (x_train, _), (x_test, _) = data
    import keras  # noqa: PLC0415  (after set_up has quieted TensorFlow)
    import tensorflow as tf  # noqa: PLC0415

    print(
        f"data set {name!r}: train {x_train.shape}, test {x_test.shape}; seed {label}; "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )
    return data


def finish_chapter(name: str = "runtime_s") -> None:
    """Glue the seconds since :func:`start_chapter` as ``name`` (for ``{glue:text}``); show nothing.

    Raises:
        TypeError: ``name`` is not a str.
        RuntimeError: :func:`start_chapter` was not called in this process.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r}")
    if _started is None:
        raise RuntimeError("finish_chapter() needs start_chapter() first, in the same kernel")
    from myst_nb import glue  # noqa: PLC0415  (a book dependency, not the package's)

    glue(name, time.perf_counter() - _started, display=False)
