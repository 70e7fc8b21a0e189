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
