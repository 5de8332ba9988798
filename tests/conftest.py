"""Fixtures for every test file; plain helpers live in tests/support/ (imported as `support.*`)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.common import SHARED_DATA, single_thread


@pytest.fixture
def one_thread() -> Iterator[None]:
    """`single_thread` for one test; a test file opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    with single_thread():
        yield


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data sets not found at {SHARED_DATA} (set GHOSTNET_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def private_tuning_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Measured choices (`ghostnet.tuning`: export form, training layout) go to a folder of this test run, never to
    the user's cache, and subprocesses started by tests inherit it."""
    import os

    from ghostnet.tuning import CACHE_ENV

    folder = tmp_path_factory.mktemp("tuning-cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous
