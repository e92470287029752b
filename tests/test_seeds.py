"""The shared SplitMix64 mixer behind per-source random streams."""
from __future__ import annotations

import numpy as np

from cvae_pms.seeds import GAMMA, keyed_state, mix64


def test_mix64_reproduces_the_reference_splitmix64_sequence():
    # splitmix64 seeded with 0 (Vigna's reference C code): first outputs
    state = np.arange(1, 4, dtype=np.uint64) * GAMMA
    np.testing.assert_array_equal(mix64(state), np.array(
        [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F], dtype=np.uint64))


def test_keyed_states_depend_on_seed_key_and_salt_only():
    keys = np.array([5853498713190525696, 42, 42], dtype=np.int64)
    a = keyed_state(1, keys)
    assert a[1] == a[2] and a[0] != a[1]
    assert not np.array_equal(a, keyed_state(2, keys))
    assert not np.array_equal(a, keyed_state(1, keys, salt=7))
    np.testing.assert_array_equal(a[1:], keyed_state(1, keys[1:]))   # no dependence on batch
