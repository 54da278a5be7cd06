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


# The longest files first, so that `make test`'s two workers (pytest-xdist, one file at a time) end together
# instead of one worker finishing a long study test alone at the end.
LONGEST_FIRST = ("test_study_seeds.py", "test_study_kill.py", "test_surface_mpi.py", "test_notebooks.py",
                 "test_reliability_kill.py", "test_study_checkpoints.py", "test_commands.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: the rest keep their order
