"""labkit.config: validation that names the field, overrides, identity hashes, presets."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.config import (
    EXECUTION_FIELDS,
    PRESETS,
    ConfigError,
    TrainConfig,
    parse_overrides,
    preset,
)
from labkit.paper import ABLATIONS, ablation_config

REPO = Path(__file__).resolve().parents[1]

INVALID = [
    # wrong types
    ({"lr": "x"}, "lr"),
    ({"lr": None}, "lr"),
    ({"lr": True}, "lr"),
    ({"epochs": 1.5}, "epochs"),
    ({"epochs": "3"}, "epochs"),
    ({"batch_size": 64.0}, "batch_size"),
    ({"lays": [2, 2, 2]}, "lays"),
    ({"lays": (2, 2, 2, 2, 2)}, "lays"),
    ({"lays": [2, 2.0, 2, 2]}, "lays"),
    ({"lays": "2222"}, "lays"),
    ({"lays": [2, 0, 2, 2]}, "lays"),
    ({"nesterov": "yes"}, "nesterov"),
    ({"nesterov": 1}, "nesterov"),
    ({"stem_bn": "False"}, "stem_bn"),
    ({"width": 0}, "width"),
    # ranges
    ({"lr": 0.0}, "lr"),
    ({"lr": -1e-3}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"lr": float("inf")}, "lr"),
    ({"weight_decay": float("nan")}, "weight_decay"),
    ({"weight_decay": float("inf")}, "weight_decay"),
    ({"weight_decay": -1e-4}, "weight_decay"),
    ({"batch_size": 0}, "batch_size"),
    ({"epochs": 0}, "epochs"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
    ({"decay_rate": 0.0}, "decay_rate"),
    ({"decay_rate": 1.5}, "decay_rate"),
    ({"momentum": 1.0}, "momentum"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"warmup_epochs": 31.0}, "warmup_epochs"),
    ({"val_size": 100}, "val_size"),  # split seed has its own validation batch
    ({"split": "full", "val_size": -1}, "val_size"),
    ({"train_subset": -1}, "train_subset"),
    ({"cutout": -1}, "cutout"),
    ({"cutout": 33}, "cutout"),
    ({"tta_translate": 9}, "tta_translate"),
    ({"tta_translate": -1}, "tta_translate"),
    ({"ema": 1.0}, "ema"),
    ({"ema": -0.1}, "ema"),
    ({"seed": -1}, "seed"),
    # choices
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"stem": "5x5"}, "stem"),
    ({"schedule": "step"}, "schedule"),
    ({"precision": "fp16"}, "precision"),
    ({"split": "batches"}, "split"),
    ({"norm": "imagenet"}, "norm"),
    ({"device": "tpu"}, "device"),
    ({"select": "best_test"}, "select"),
    # combinations
    ({"nesterov": True}, "nesterov"),  # with the default optimizer, adam
    ({"optimizer": "sgd", "momentum": 0.0, "nesterov": True}, "nesterov"),
    ({"select": "best_val", "split": "full"}, "select"),
]


@pytest.mark.parametrize("changes, field", INVALID, ids=[f"{f}={v!r}" for v, f in INVALID])
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig.from_dict(changes)
    with pytest.raises(ConfigError, match=field):
        preset("seed").replace(**changes)


@pytest.mark.parametrize("lays, got", [([2, 2, 2, 2.0], "[2, 2, 2, 2.0]"), ("abc", "str 'abc'"), ((2, 2, True, 2), "[2, 2, True, 2]"),
                                       ([2, 2, 2], "[2, 2, 2]"), (None, "NoneType None")])
def test_bad_lays_say_what_lays_must_be(lays, got):
    with pytest.raises(ConfigError) as e:
        preset("seed", lays=lays)
    assert str(e.value) == f"lays must be four positive ints (blocks per stage), got {got}"


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_valid_combinations_pass():
    TrainConfig(optimizer="sgd", nesterov=True)
    TrainConfig(select="best_val", split="full", val_size=1000)
    TrainConfig(select="best_val")  # split seed validates on batch 5
    TrainConfig(lays=[3, 3, 3, 3])
    TrainConfig(decay_rate=1.0, dropout=0.0, lr=1)  # ints are accepted for floats
    assert isinstance(TrainConfig(lr=1).lr, float)
    assert TrainConfig(lays=[3, 3, 3, 3]).lays == (3, 3, 3, 3)


def test_unknown_key():
    with pytest.raises(ConfigError, match="lrate"):
        TrainConfig.from_dict({"lrate": 0.1})
    with pytest.raises(ConfigError, match="lrate"):
        preset("seed", lrate=0.1)
    with pytest.raises(ConfigError, match="nope"):
        preset("nope")


def test_round_trip_through_json():
    cfg = preset("modern", lays=(3, 3, 3, 3), seed=4)
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.lays == (3, 3, 3, 3)
    assert back.short_hash() == cfg.short_hash()


def test_parse_overrides():
    got = parse_overrides(
        [
            "lr=0.01",
            "lays=[3,3,3,3]",
            "stem=7x7",
            "nesterov=True",
            "epochs=5",
            "device=cpu",
            "optimizer=sgd",
            "norm = dataset",
        ]
    )
    assert got == {
        "lr": 0.01,
        "lays": [3, 3, 3, 3],
        "stem": "7x7",
        "nesterov": True,
        "epochs": 5,
        "device": "cpu",
        "optimizer": "sgd",
        "norm": "dataset",
    }
    cfg = preset("seed", **got)
    assert cfg.lays == (3, 3, 3, 3) and cfg.stem == "7x7" and cfg.nesterov is True and cfg.norm == "dataset"
    assert parse_overrides([]) == {}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])
    # a value that is not a literal stays a string, and then fails validation by name
    with pytest.raises(ConfigError, match="lr"):
        preset("seed", **parse_overrides(["lr=fast"]))


def test_short_hash():
    a, b = TrainConfig(), TrainConfig()
    assert a.short_hash() == b.short_hash()
    assert len(a.short_hash()) == 10
    assert TrainConfig(lr=1).short_hash() == TrainConfig(lr=1.0).short_hash()
    execution = {"device": "cpu", "precision": "fp32", "channels_last": False, "cuda_graphs": False, "sync_bn": False, "compile": "default"}
    assert set(execution) == set(EXECUTION_FIELDS)
    assert a.replace(**execution).short_hash() == a.short_hash()
    for k, v in execution.items():
        assert a.replace(**{k: v}).short_hash() == a.short_hash(), k
    for changes in (
        {"lr": 0.002},
        {"seed": 1},
        {"lays": (3, 3, 3, 3)},
        {"width": 8},
        {"init_from": "x-123"},
        {"select": "best_val"},
        {"cutout": 8},
        {"tta_translate": 1},
        {"ema": 0.999},
    ):
        assert a.replace(**changes).short_hash() != a.short_hash(), changes


def test_short_hash_stable_across_processes():
    cfg = preset("seed", lr=0.002, lays=(3, 3, 3, 3))
    code = "from labkit.config import preset; print(preset('seed', lr=0.002, lays=(3, 3, 3, 3)).short_hash())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    )
    assert out.stdout.strip() == cfg.short_hash()


def test_seed_preset():
    s = preset("seed")
    assert s.seed_extra_block is True and s.softmax_head is True
    assert s.optimizer == "adam" and s.lr == 1e-3 and s.batch_size == 512
    assert s.schedule == "exp" and s.decay_rate == 0.9 and s.epochs == 30
    assert s.split == "seed" and s.norm == "seed" and s.augment is True
    assert s.lays == (2, 2, 2, 2) and s.stem == "3x3" and s.stem_bn is True and s.dropout == 0.0
    assert s.weight_decay == 0.0 and s.label_smoothing == 0.0 and s.select == "last" and s.width == 64


def test_defaults_are_corrected_network():
    d = TrainConfig()
    assert d.seed_extra_block is False and d.softmax_head is False


def test_modern_preset_is_valid_and_uses_all_training_images():
    m = preset("modern")
    assert m.split == "full" and m.optimizer == "sgd" and m.nesterov
    assert not m.seed_extra_block and not m.softmax_head
    assert set(PRESETS) >= {"seed", "modern"}


def test_paper_ablations():
    assert len(ABLATIONS) == 7
    assert len({a.key for a in ABLATIONS}) == 7
    configs = [ablation_config(a.key) for a in ABLATIONS]
    assert len({c.short_hash() for c in configs}) == 7
    base = preset("seed")
    for a, c in zip(ABLATIONS, configs, strict=True):
        differs = {k for k, v in c.to_dict().items() if base.to_dict()[k] != v}
        assert differs == set(a.changes), a.key
    tables = sorted(t for a in ABLATIONS for t in a.tables)
    assert tables == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    baseline = next(a for a in ABLATIONS if a.key == "baseline")
    assert baseline.paper_val_acc == 0.7871 and baseline.paper_loss == 130.22897


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 0.1  # type: ignore[misc]


def test_numpy_scalars_count_as_the_numbers_they_hold():
    import numpy as np

    c = preset("seed", epochs=np.int64(3), lr=np.float32(0.5), seed=np.arange(3)[2], stem_bn=np.bool_(False), lays=[np.int32(1)] * 4)
    assert (type(c.epochs), type(c.lr), type(c.seed), type(c.stem_bn), type(c.lays[0])) == (int, float, int, bool, int)
    plain = preset("seed", epochs=3, lr=0.5, seed=2, stem_bn=False, lays=(1, 1, 1, 1))
    assert c.short_hash() == plain.short_hash() and c.to_dict() == plain.to_dict()
    with pytest.raises(ConfigError, match="epochs must be int, got float64"):
        preset("seed", epochs=np.float64(3))
    with pytest.raises(ConfigError, match="stem_bn must be bool, got int64"):
        preset("seed", stem_bn=np.int64(1))
    with pytest.raises(ConfigError, match="lr must be a finite float"):
        preset("seed", lr=np.float64("nan"))
    # a bool is an int to Python, not to a config: True epochs is a mistake, not 1
    for key in ("batch_size", "epochs", "seed"):
        with pytest.raises(ConfigError, match=f"{key} must be int, got bool True"):
            preset("seed", **{key: True})
        with pytest.raises(ConfigError, match=f"{key} must be int, got bool"):
            preset("seed", **{key: np.bool_(True)})
    with pytest.raises(ConfigError, match="lr must be a finite float, got bool"):
        preset("seed", lr=False)


def test_a_preset_shortened_below_its_warm_up_says_what_to_set():
    with pytest.raises(ConfigError, match=r"warmup_epochs must lie in \[0, epochs=1\], got 2.0 \(a preset shortened .* set warmup_epochs too\)"):
        preset("modern", epochs=1)
    assert preset("modern", epochs=1, warmup_epochs=0.5).warmup_epochs == 0.5
    with pytest.raises(ConfigError, match=r"got -1.0$"):
        preset("modern", warmup_epochs=-1)


def test_near_misses_are_named_with_the_close_match():
    from labkit.config import TrainConfig, preset
    from labkit.notebook import check_notebook_parameters

    with pytest.raises(ConfigError, match=r"unknown preset 'sed'; did you mean 'seed'\?"):
        preset("sed")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['widht'\]; did you mean 'width'\?"):
        preset("seed", widht=8)
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['widht'\]; did you mean 'width'\?"):
        TrainConfig.from_dict({"widht": 8})
    with pytest.raises(ConfigError, match=r"optimizer must be one of \['adam', 'sgd'\], got 'adma'; did you mean 'adam'\?"):
        preset("seed", optimizer="adma")
    with pytest.raises(ConfigError, match=r"unknown notebook parameter\(s\) \['seed'\] \(papermill -p\); did you mean 'seeds'\?"):
        check_notebook_parameters(["", "seeds = None\nprofile = 'full'", "# Parameters\nseed = 2\n"])
    with pytest.raises(ConfigError, match=r"unknown preset 'xyz' \(known"):  # no near miss: no guess
        preset("xyz")
