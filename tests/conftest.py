"""Shared test set-up: one torch thread (tests run beside other jobs), a per-session data cache."""
import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _synth_cache(tmp_path_factory):
    """SynthFAS caches under FASLAND_CACHE; tests reuse the user's cache when set, else a session folder."""
    os.environ.setdefault("FASLAND_CACHE", str(tmp_path_factory.mktemp("synth_cache")))
    yield
