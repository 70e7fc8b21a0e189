"""bnbook.reproducibility.set_up: same seed, same numbers; bad seeds rejected."""

import keras
import numpy as np
import pytest

from bnbook.reproducibility import set_up


def test_same_seed_same_numbers_different_seed_different_numbers():
    assert set_up(7) == 7
    a = (np.random.random(3), keras.random.uniform((3,)).numpy())
    set_up(7)
    b = (np.random.random(3), keras.random.uniform((3,)).numpy())
    set_up(8)
    c = (np.random.random(3), keras.random.uniform((3,)).numpy())
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


def test_same_seed_same_initial_weights():
    set_up(3)
    first = keras.layers.Dense(4)
    first.build((None, 5))
    set_up(3)
    second = keras.layers.Dense(4)
    second.build((None, 5))
    assert np.array_equal(first.kernel.numpy(), second.kernel.numpy())


@pytest.mark.parametrize(("seed", "error"), [(-1, ValueError), (2**32, ValueError), (1.5, TypeError), (True, TypeError), ("0", TypeError)])
def test_bad_seeds(seed, error):
    with pytest.raises(error, match="seed"):
        set_up(seed)


def test_seed_offset_shifts_every_seed(monkeypatch):
    from bnbook.reproducibility import rng, seed_offset, shifted

    monkeypatch.delenv("BNBOOK_SEED_OFFSET", raising=False)
    assert seed_offset() == 0 and shifted(3) == 3
    set_up(103)
    reference = (np.random.random(3), keras.random.uniform((3,)).numpy(), rng(103).random(3))
    monkeypatch.setenv("BNBOOK_SEED_OFFSET", "100")
    assert seed_offset() == 100 and shifted(3) == 103
    assert set_up(3) == 3  # the label, not the seed used
    shifted_run = (np.random.random(3), keras.random.uniform((3,)).numpy(), rng(3).random(3))
    assert all(np.array_equal(a, b) for a, b in zip(reference, shifted_run))


def test_seed_offset_shifts_the_data_split(monkeypatch):
    from bnbook.data import load

    monkeypatch.delenv("BNBOOK_SEED_OFFSET", raising=False)
    (_, y0), _ = load("mnist5k", seed=0)
    (_, y5), _ = load("mnist5k", seed=5)
    monkeypatch.setenv("BNBOOK_SEED_OFFSET", "5")
    (_, y_shifted), _ = load("mnist5k", seed=0)
    assert np.array_equal(y_shifted, y5) and not np.array_equal(y_shifted, y0)


@pytest.mark.parametrize("raw", ["-1", "abc", "1.5", str(2**31)])
def test_bad_seed_offsets(monkeypatch, raw):
    monkeypatch.setenv("BNBOOK_SEED_OFFSET", raw)
    with pytest.raises(ValueError, match="BNBOOK_SEED_OFFSET"):
        set_up(0)


def test_shifted_seed_must_stay_below_2_32(monkeypatch):
    monkeypatch.setenv("BNBOOK_SEED_OFFSET", str(2**31 - 1))
    with pytest.raises(ValueError, match="2\\*\\*32"):
        set_up(2**32 - 2**30)
