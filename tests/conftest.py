"""Shared test set-up: one torch thread (tests run beside other jobs), a per-session data cache, folders
that are deleted when they are no longer needed (a ResNet18 checkpoint is 45 MB), a check of free disk."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _synth_cache(tmp_path_factory):
    """SynthFAS caches under FASLAND_CACHE; tests reuse the user's cache when set, else a session folder."""
    os.environ.setdefault("FASLAND_CACHE", str(tmp_path_factory.mktemp("synth_cache")))
    yield


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """A folder for one module's shared files, deleted when the module ends (pyproject's retention policy
    deletes a passing test's own tmp_path when the test ends)."""
    d = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield d
    shutil.rmtree(d, ignore_errors=True)


# Measured peak of a full `make test` under the base temporary folder: 4.2 GB (two workers).
DISK_NEEDED_GB = 6


def pytest_sessionstart(session):
    """Stop at once, with the fix, when the disk cannot hold the run: a full disk fails tests at random."""
    if hasattr(session.config, "workerinput"):     # xdist workers: the controller has checked
        return
    base = session.config.option.basetemp or os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir()
    free = shutil.disk_usage(Path(base) if Path(base).exists() else Path(base).parent).free / 2**30
    if free < DISK_NEEDED_GB:
        pytest.exit(f"the tests need about {DISK_NEEDED_GB} GB free under {base} and {free:.1f} GB are free; "
                    "free some space or point TMPDIR at a larger disk", returncode=1)


# The longest files first, so that `make test`'s two workers (pytest-xdist, one file at a time) end together
# instead of one worker finishing a long study test alone at the end.
LONGEST_FIRST = ("test_study_seeds.py", "test_study_kill.py", "test_surface_mpi.py", "test_notebooks.py",
                 "test_reliability_kill.py", "test_study_checkpoints.py", "test_commands.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: the rest keep their order
