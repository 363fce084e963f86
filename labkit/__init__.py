"""labkit: a reproducible, fast lab for training and ablating ResNets on CIFAR-10."""

from .config import ConfigError, TrainConfig, preset
from .data import DataError, load_cifar10
from .model import ResNet, build_model
from .runs import Run, RunStore

__all__ = ["ConfigError", "DataError", "ResNet", "Run", "RunStore", "TrainConfig", "build_model", "load_cifar10", "preset"]
__version__ = "0.1.0"
