"""labkit: a reproducible, fast lab for training and ablating ResNets on CIFAR-10."""

from .checkpoint import CheckpointError
from .config import ConfigError, TrainConfig, preset
from .data import DataError, Dataset, load_cifar10
from .model import ResNet, build_model
from .runs import Run, RunError, RunStore
from .synthetic import make_synthetic_cifar10
from .train import DivergenceError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Dataset",
    "DivergenceError",
    "ResNet",
    "Run",
    "RunError",
    "RunStore",
    "TrainConfig",
    "build_model",
    "load_cifar10",
    "make_synthetic_cifar10",
    "preset",
]
__version__ = "0.1.0"
