"""One frozen, validated config for a training run, and its presets: a bad value raises ConfigError naming it."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import json
import math
import numbers
import typing
from dataclasses import dataclass

import numpy as np


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


CHOICES = {
    "optimizer": ("adam", "sgd"),
    "schedule": ("exp", "linear", "cosine"),
    "precision": ("auto", "fp32", "bf16"),
    "device": ("auto", "cpu", "cuda"),
    "split": ("seed", "full"),
    "norm": ("seed", "dataset"),
    "stem": ("3x3", "7x7"),
    "select": ("last", "best_val"),
    "compile": ("", "default", "max-autotune-no-cudagraphs"),  # modes that leave CUDA graphs to labkit's capture
}
SPLITS, STEMS = CHOICES["split"], CHOICES["stem"]

# Fields that change how fast a run goes but not what it computes (up to float rounding): not
# part of its identity, so a run trained on a GPU is found again on a CPU. sync_bn computes over
# several processes what one process would (BatchNorm over the global batch).
EXECUTION_FIELDS = ("device", "precision", "channels_last", "cuda_graphs", "sync_bn", "compile")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one run computes, as plain data, frozen and validated when made: start from a
    preset and change fields with `preset(name, key=value)` or `cfg.replace(key=value)`."""

    # network (labkit.model.ResNet)
    lays: tuple[int, int, int, int] = (2, 2, 2, 2)  # blocks per stage
    stem: str = "3x3"  # "3x3" stride 1 | "7x7" stride 2
    stem_bn: bool = True
    dropout: float = 0.0  # before the classifier
    seed_extra_block: bool = False  # seed defect 1: n+1 blocks per stage
    softmax_head: bool = False  # seed defect 2: Softmax before cross-entropy
    width: int = 64  # channels of the first stage; stages are 1x, 2x, 4x, 8x
    # optimisation
    optimizer: str = "adam"  # "adam" | "sgd" (momentum, optional nesterov)
    lr: float = 1e-3  # peak learning rate
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0  # L2, coupled, as torch.optim applies it
    batch_size: int = 512
    epochs: int = 30
    schedule: str = "exp"  # "exp": lr * decay_rate**epoch | "linear" | "cosine" (per step)
    decay_rate: float = 0.9  # per epoch, schedule "exp" only
    lr_restart: int = 0  # schedule "exp": the decay starts over every this many epochs (0 = never)
    warmup_epochs: float = 0.0  # linear warm-up, schedules "linear"/"cosine"
    label_smoothing: float = 0.0
    # data
    split: str = "seed"  # "seed": train 1-4 / val 5 / test | "full": train 1-5 / test
    val_size: int = 0  # split "full" only: images of batch 5 held out for validation
    train_subset: int = 0  # first N training images only (0 = all); quick/smoke profiles
    norm: str = "seed"  # "seed" constants | "dataset" constants
    augment: bool = True  # random crop 32 pad 4 + horizontal flip
    cutout: int = 0  # side of a square set to the mean colour in every training image (0 = off)
    # evaluation
    select: str = "last"  # which epoch's weights give the test number: "last" | "best_val"
    tta_flip: bool = False  # average logits of image and its mirror at evaluation
    tta_translate: int = 0  # also average over two copies shifted by this many pixels (reflect-padded)
    ema: float = 0.0  # evaluate an exponential moving average of the weights, this decay per step (0 = off)
    # reproducibility
    seed: int = 0
    init_from: str = ""  # run id whose final weights start this run (multi-stage tuning)
    # execution (not part of the run's identity)
    device: str = "auto"
    precision: str = "auto"  # auto = bf16 on CUDA, fp32 on CPU
    channels_last: bool = True
    cuda_graphs: bool = True  # capture the training step on CUDA
    sync_bn: bool = True  # under torchrun: BatchNorm statistics over the global batch (False: per rank)
    compile: str = ""  # torch.compile mode of the training step: "" (off) | "default" | "max-autotune-no-cudagraphs"

    def __post_init__(self) -> None:
        _check_types(self)
        c = self
        for name, allowed in CHOICES.items():
            check_choice(name, getattr(c, name), allowed)
        lays_ok = len(c.lays) == 4 and all(n >= 1 for n in c.lays)
        shortened = (
            " (a preset shortened below its warm-up: set warmup_epochs too)" if c.warmup_epochs > c.epochs else ""
        )
        rules = [
            (lays_ok, f"lays must be four positive ints (blocks per stage), got {list(c.lays)}"),
            *(
                (getattr(c, k) > 0, f"{k} must be > 0, got {getattr(c, k)}")
                for k in ("width", "lr", "batch_size", "epochs")
            ),
            (0.0 <= c.dropout < 1.0, f"dropout must lie in [0, 1), got {c.dropout}"),
            (0.0 < c.decay_rate <= 1.0, f"decay_rate must lie in (0, 1], got {c.decay_rate}"),
            (0.0 <= c.momentum < 1.0, f"momentum must lie in [0, 1), got {c.momentum}"),
            (
                not c.nesterov or (c.optimizer == "sgd" and c.momentum != 0),
                "nesterov needs optimizer 'sgd' with momentum > 0",
            ),
            (c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}"),
            (0.0 <= c.label_smoothing < 1.0, f"label_smoothing must lie in [0, 1), got {c.label_smoothing}"),
            (
                0.0 <= c.warmup_epochs <= c.epochs,
                f"warmup_epochs must lie in [0, epochs={c.epochs}], got {c.warmup_epochs}{shortened}",
            ),
            (
                c.val_size == 0 or (c.val_size > 0 and c.split == "full"),
                f"val_size must be >= 0 and is for split 'full' only, got {c.val_size}",
            ),
            (0 <= c.cutout <= 32, f"cutout must lie in [0, 32] (side of the square, 0 = off), got {c.cutout}"),
            (0 <= c.tta_translate <= 8, f"tta_translate must lie in [0, 8] (pixels, 0 = off), got {c.tta_translate}"),
            (0.0 <= c.ema < 1.0, f"ema must lie in [0, 1) (decay per step, 0 = off), got {c.ema}"),
            (c.train_subset >= 0, f"train_subset must be >= 0 (0 = all), got {c.train_subset}"),
            (c.seed >= 0, f"seed must be >= 0, got {c.seed}"),
            (c.lr_restart >= 0, f"lr_restart must be >= 0 (epochs, 0 = never), got {c.lr_restart}"),
            (c.lr_restart == 0 or c.schedule == "exp", f"lr_restart is for schedule 'exp' only, got schedule {c.schedule!r}"),
            (
                c.select != "best_val" or c.split != "full" or c.val_size > 0,
                "select 'best_val' needs a validation set: split 'seed', or 'full' with val_size > 0",
            ),
        ]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lays"] = list(self.lays)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = sorted(f.name for f in dataclasses.fields(cls))
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}{did_you_mean(unknown[0], known)} (known: {known})")
        d = dict(d)
        if "lays" in d and isinstance(d["lays"], list):
            d["lays"] = tuple(d["lays"])
        return cls(**d)

    def replace(self, **changes) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def identity(self) -> dict:
        """The fields that define what a run computes."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}

    def short_hash(self) -> str:
        """10 hex digits naming what the run computes. A field added after the first recorded runs
        counts only when it differs from its default: adding a field never orphans a store's runs."""
        defaults = TrainConfig.__dataclass_fields__
        ident = {k: v for k, v in self.identity().items() if k in HASHED_V1 or v != _default(defaults[k])}
        blob = json.dumps(ident, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


# The fields of the first recorded runs (report/runs, 2026-11-28); see short_hash.
HASHED_V1 = frozenset(
    "lays stem stem_bn dropout seed_extra_block softmax_head width optimizer lr momentum nesterov "
    "weight_decay batch_size epochs schedule decay_rate warmup_epochs label_smoothing split val_size "
    "train_subset norm augment select tta_flip seed init_from".split()
)


def _default(f: dataclasses.Field):
    return list(f.default) if isinstance(f.default, tuple) else f.default


def did_you_mean(value, known) -> str:
    """ "; did you mean 'width'?" when `value` is a near miss of one of `known`, else ''."""
    close = difflib.get_close_matches(str(value), [str(k) for k in known], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_choice(name: str, value, allowed):
    """`value` if it is one of `allowed`, else a ConfigError naming the setting and the choices."""
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}{did_you_mean(value, allowed)}")
    return value


def check_positive_int(name: str, value, what: str = "") -> int:
    """`value` if it is an int >= 1 (not a bool), else a ConfigError naming the setting."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive int{f' ({what})' if what else ''}, got {value!r}")
    return value


def _check_types(cfg: TrainConfig) -> None:
    # numpy scalars (a seed from np.arange, an lr from np.linspace) count as the Python
    # numbers they hold and are stored as those, so the run's id and config.json are the same.
    hints = typing.get_type_hints(TrainConfig)
    is_bool = lambda v: isinstance(v, (bool, np.bool_))  # noqa: E731
    is_int = lambda v: isinstance(v, numbers.Integral) and not is_bool(v)  # noqa: E731
    for f in dataclasses.fields(cfg):
        v, t = getattr(cfg, f.name), hints[f.name]
        if t is bool:
            ok, cast = is_bool(v), bool
        elif t is int:
            ok, cast = is_int(v), int
        elif t is float:
            # NaN and inf slip through every range check below (`nan < 0` is False): refuse here.
            ok, cast = isinstance(v, numbers.Real) and not is_bool(v) and math.isfinite(v), float
        elif t is str:
            ok, cast = isinstance(v, str), str
        else:  # the lays tuple
            ok = isinstance(v, (tuple, list)) and all(is_int(n) for n in v)
            cast = lambda v: tuple(int(n) for n in v)  # noqa: E731
        if not ok and f.name == "lays":  # the same words as its range check, not "must be tuple"
            got = f"[{', '.join(map(repr, v))}]" if isinstance(v, (tuple, list)) else f"{type(v).__name__} {v!r}"
            raise ConfigError(f"lays must be four positive ints (blocks per stage), got {got}")
        if not ok:
            tname = getattr(t, "__name__", str(t))
            finite = "a finite " if t is float else ""
            raise ConfigError(f"{f.name} must be {finite}{tname}, got {type(v).__name__} {v!r}")
        object.__setattr__(cfg, f.name, cast(v))


def parse_overrides(items: list[str]) -> dict:
    """["lr=0.01", "lays=[3,3,3,3]", "stem=7x7"] -> dict; values read as Python literals."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        k, v = k.strip(), v.strip()
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v  # a bare word: a string
    return out


# The paper's protocol as its code runs it: both defects, Adam 1e-3 (it names no optimiser: see
# notebook 02), batch 512, per-epoch decay 0.9, 30 epochs, train on batches 1-4, validate on 5.
PAPER = TrainConfig(seed_extra_block=True, softmax_head=True)

# labkit's plain modern recipe on the corrected network and all 50,000 training images, set before
# any run trained and not tuned since: with no validation set (split "full"), a change must be
# chosen on a split "seed" or val_size > 0 run, never on these runs' test numbers.
MODERN = TrainConfig(
    optimizer="sgd",
    lr=0.2,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule="linear",
    warmup_epochs=2.0,
    label_smoothing=0.1,
    epochs=40,
    split="full",
    norm="dataset",
    tta_flip=True,
)

PRESETS: dict[str, TrainConfig] = {"seed": PAPER, "modern": MODERN}


def preset(name: str, **overrides: object) -> TrainConfig:
    """The preset `name` ("seed": the original's protocol exactly; "modern": labkit's recipe),
    with `overrides` applied, e.g. preset("seed", dropout=0.4, seed=1)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{did_you_mean(name, PRESETS)} (known: {sorted(PRESETS)})")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
