"""The `Cache` contract (tests/cache_contract.py) against MemoryCache on a fake clock."""

import pytest

from cache_contract import *  # noqa: F401,F403 - the contract's tests, collected here
from cache_contract import MemoryBackend


@pytest.fixture
def backend():
    return MemoryBackend()
