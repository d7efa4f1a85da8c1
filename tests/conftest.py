"""Shared test set-up: deterministic, single-threaded torch; the reference-data folder."""
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get('RANKEKIT_TEST_THREADS', '1')))

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
    """Official-format reference data: $RANKEKIT_REFERENCE_DIR, else tests/data/reference (in
    the repository: see tests/data/README.md)."""
    env = os.environ.get('RANKEKIT_REFERENCE_DIR')
    return Path(env) if env else REPO_ROOT / 'tests' / 'data' / 'reference'


@pytest.fixture(scope='session')
def reference_path() -> Path:
    path = reference_dir()
    if not path.is_dir():  # the data ship with the repository: missing is an error, not a skip
        pytest.fail(f'reference data not found at {path}: tests/data/reference is part of the '
                    f'repository (or set RANKEKIT_REFERENCE_DIR to a copy)')
    return path
