"""Shared fixtures: small synthetic CIFAR-10 folders made once per session, modest threads.

Nothing here reads ../shared or the network: every dataset is written by
labkit.synthetic.make_synthetic_cifar10 into pytest's temporary folders.
"""

from __future__ import annotations

import pytest
import torch

from labkit.config import TrainConfig
from labkit.data import load_cifar10
from labkit.synthetic import make_synthetic_cifar10

# Images per synthetic batch file: 4 train batches = 800 images on the seed split.
PER_BATCH = 200


@pytest.fixture(autouse=True, scope="session")
def _modest_threads():
    # One thread: the nets here are tiny, and on a small shared CI machine a second OpenMP
    # thread waiting on a busy core makes a width-8 forward pass ~100x slower, not faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A folder holding cifar-10-batches-py with PER_BATCH images per file (bytes keys)."""
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_cifar10(root, per_batch=PER_BATCH)
    return root


@pytest.fixture(scope="session")
def synth_data(synth_root):
    """The seed split of the session's synthetic data: 800 train / 200 val / 200 test."""
    return load_cifar10(synth_root, split="seed", allow_download=False)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """100 per batch and a 50-image test set, so val (100) and test (50) differ in size."""
    root = tmp_path_factory.mktemp("tiny")
    make_synthetic_cifar10(root, per_batch=100, test_size=50, seed=1)
    return load_cifar10(root, split="seed", allow_download=False)


def _tiny_config(**changes) -> TrainConfig:
    base = {
        "width": 8,
        "lays": (1, 1, 1, 1),
        "lr": 3e-3,
        "batch_size": 32,
        "epochs": 2,
        "device": "cpu",
        "channels_last": False,
    }
    return TrainConfig(**{**base, **changes})


@pytest.fixture
def tiny_config():
    """cfg(**changes): a corrected, narrow (width 8), shallow (lays 1) net; about a second
    per epoch on a CPU."""
    return _tiny_config
