"""The lab's experiment plan: which runs each notebook needs, for each profile.

Notebooks, the main job and the GPU batch script all ask this module for their runs, so a
run trained anywhere (a GPU machine, another process) is found again by its id.

Profiles:
  full   the real protocol on CIFAR-10 (GPU; days on a CPU, so never started there silently)
  quick  real CIFAR-10, 5,000 training images, a half-width net, few epochs, one seed
  smoke  synthetic CIFAR-format data and a tiny net: minutes on a CPU, for CI and a first look

The main job (`python -m labkit lab`: train the plan, execute the notebooks, export the
report) is labkit.job.run_lab; the sweep that trains a plan is labkit.scale.sweep.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import MODERN, PAPER, TrainConfig, check_choice, check_positive_int
from .data import (
    DataError,
    DataNotFound,
    Dataset,
    default_data_dir,
    find_batches,
    fingerprint,
    load_cifar10,
    source_of,
)
from .model import measure_gflops, run_gflop
from .paper import ABLATION_GROUPS, ABLATIONS, FINAL, ablation_config
from .progress import duration
from .runs import Run, RunStore, recorded
from .synthetic import make_synthetic_cifar10

__all__ = [
    "PROFILES", "PROTOCOLS", "Profile", "get_profile", "ablation_runs", "final_runs", "depth_runs", "modern_runs", "plan", "plan_gflop", "Lab", "LabError", "RunMissing", "project_root",
    "ABLATION_PREFIX", "DEPTHS", "DEPTH_RECIPES", "ablation_name", "ablation_key", "depth_name",
]


@dataclass(frozen=True)
class Profile:
    name: str
    seeds: int  # seeds of every configuration but the depth runs'
    depth_seeds: int
    synthetic: bool
    epoch_scale: float  # multiplies every run's epochs (at least 1 epoch)
    width: int  # network width (the original's is 64)
    train_subset: int  # 0 = all training images
    batch_size: int | None  # None = the protocol's own
    runs_dir: str  # relative to the project root
    report_dir: str

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """The profile's version of a full-protocol config."""
        if self.name == "full":
            return cfg
        changes: dict = {
            "epochs": max(1, round(cfg.epochs * self.epoch_scale)),
            "width": self.width,
            "train_subset": self.train_subset,
        }
        changes["warmup_epochs"] = min(cfg.warmup_epochs, changes["epochs"] / 4)
        if cfg.lr_restart:
            changes["lr_restart"] = max(1, round(cfg.lr_restart * self.epoch_scale))
        if self.batch_size:
            changes["batch_size"] = self.batch_size
        if cfg.val_size:
            changes["val_size"] = min(cfg.val_size, 100 if self.synthetic else 1000)
        return cfg.replace(**changes)


PROFILES: dict[str, Profile] = {
    "full": Profile("full", 5, 3, False, 1.0, 64, 0, None, "report/runs", "report"),
    "quick": Profile("quick", 1, 1, False, 0.2, 32, 5000, None, "build/quick/runs", "build/quick/report"),
    "smoke": Profile("smoke", 2, 2, True, 0.07, 8, 0, 64, "build/smoke/runs", "build/smoke/report"),
}

# Images per synthetic batch file in the smoke profile (5 train batches + test).
SMOKE_PER_BATCH = 200


def get_profile(name: str) -> Profile:
    return PROFILES[check_choice("profile", name, sorted(PROFILES))]


# ---------------------------------------------------------------------------------------
# The runs of each notebook, as (run name, config) pairs, full-protocol settings
# ---------------------------------------------------------------------------------------

# Run names: a run's id is its name and a hash of its configuration, so these names are how
# notebooks, the summary and the checkpoints find the runs (changing one orphans recorded runs).
ABLATION_PREFIX = "ablation-"
FINAL_NAME, RESTART_NAME, MODERN_NAME = "final", "final-restart", "modern"
DEPTHS = (2, 3)  # the paper's two depths (`lays`), shallow then deep
DEPTH_RECIPES = ("seed", "corrected")  # the paper's recipe ("the original's recipe"), or the corrected net with the modern one
DEPTH_EPOCHS = {"seed": 40, "corrected": 30}
# The attribution grid: which of the network's defects and which recipe make the gain. Under the
# paper's recipe (30 epochs, as its baseline, which has both defects): each defect alone and
# neither; under the modern recipe, the paper's network (the corrected one is the modern run).
GRID = {
    "grid-block_only": PAPER.replace(softmax_head=False),
    "grid-softmax_only": PAPER.replace(seed_extra_block=False),
    "grid-corrected": PAPER.replace(seed_extra_block=False, softmax_head=False),
    "grid-defects_modern": MODERN.replace(seed_extra_block=True, softmax_head=True),
}


def ablation_name(key: str) -> str:
    """The run name of one of the paper's ablation rows (paper.ABLATIONS key)."""
    return ABLATION_PREFIX + key


def ablation_key(name: str) -> str:
    """The ablation row key of a run name ("ablation-dropout_0.4" -> "dropout_0.4"); other names as they are."""
    return name.removeprefix(ABLATION_PREFIX)


def depth_name(lays: int, recipe: str) -> str:
    """The run name of a depth run: lays 2 or 3, recipe "seed" (the paper's) or "corrected"."""
    return f"depth-{lays}-{recipe}"


def ablation_run(key: str, seed: int) -> tuple[str, TrainConfig]:
    return ablation_name(key), ablation_config(key).replace(seed=seed)


def depth_run(lays: int, recipe: str, seed: int) -> tuple[str, TrainConfig]:
    """The paper's net and optimiser for 40 epochs (its lr has decayed to 1.5% by then: the paper's
    "limit" without test-set tuning), or the corrected net with the modern recipe on the paper's
    split for 30; both select the epoch with the best validation accuracy, then test once."""
    base = PAPER if recipe == "seed" else MODERN.replace(split="seed")
    return depth_name(lays, recipe), base.replace(lays=(lays,) * 4, epochs=DEPTH_EPOCHS[recipe], select="best_val", seed=seed)


def ablation_runs(group: str, seeds: int) -> list[tuple[str, TrainConfig]]:
    """Notebook 04: each row of one ablation group, `seeds` runs each (seed 0, 1, ...)."""
    check_choice("ablation", group, sorted(ABLATION_GROUPS))
    return [ablation_run(key, s) for key in ABLATION_GROUPS[group] for s in range(seeds)]


def final_runs(seeds: int) -> list[tuple[str, TrainConfig]]:
    """Notebook 05: the paper's table 11 (its best settings, 60 epochs, tested once)."""
    return [(FINAL_NAME, FINAL.replace(seed=s)) for s in range(seeds)]


def restart_runs(seeds: int) -> list[tuple[str, TrainConfig]]:
    """Notebook 05: the final run with its learning rate started over at epoch 30, as the paper's
    restarts from checkpoints did: does that explain its 60-epoch number?"""
    return [(RESTART_NAME, FINAL.replace(lr_restart=30, seed=s)) for s in range(seeds)]


def grid_runs(seeds: int) -> list[tuple[str, TrainConfig]]:
    """Notebook 05: the attribution grid (GRID); its other cells are the baseline and modern runs."""
    return [(name, cfg.replace(seed=s)) for name, cfg in GRID.items() for s in range(seeds)]


def depth_runs(seeds: int) -> list[tuple[str, TrainConfig]]:
    """Notebook 03: lays 2 and 3, the paper's recipe and the corrected one, selected on validation."""
    return [depth_run(lays, recipe, s) for s in range(seeds) for lays in DEPTHS for recipe in DEPTH_RECIPES]


def modern_runs(seeds: int) -> list[tuple[str, TrainConfig]]:
    """Notebook 05: the modern preset on all 50,000 training images (labkit's best)."""
    return [(MODERN_NAME, MODERN.replace(seed=s)) for s in range(seeds)]


PROTOCOLS = ("lab", "seed")


def plan(profile_name: str, seeds: int | None = None, protocol: str = "lab",
         depth_seeds: int | None = None) -> list[tuple[str, str, TrainConfig]]:
    """Every run of the lab as (notebook, run name, config), most needed first: the ablations,
    the final run and one lr-restart run, the attribution grid, the depth runs, the modern
    runs, then the lr-restart run's further seeds. protocol "seed" keeps the paper's own
    experiments (the ablations and the final run, `seeds` each; the depths, one each, as the
    paper ran them): what the whole-protocol wall time is measured on. depth_seeds: runs per
    depth configuration (None: the profile's, or `seeds` where that is given)."""
    check_choice("protocol", protocol, PROTOCOLS)
    p = get_profile(profile_name)
    n = p.seeds if seeds is None else check_positive_int("seeds", seeds, "runs per configuration")
    restart = restart_runs(n)
    ablations = [("04_ablations", *ablation_run(a.key, s)) for s in range(n) for a in ABLATIONS]
    if protocol == "seed":
        rows = ablations + [("05_final", *r) for r in final_runs(n)] + [("03_depth_limit", *r) for r in depth_runs(1)]
    else:
        rows = ablations + [("05_final", *r) for r in final_runs(n) + restart[:1] + grid_runs(n)]
        nd = p.depth_seeds if seeds is None else n
        if depth_seeds is not None:
            nd = check_positive_int("depth_seeds", depth_seeds, "runs per depth configuration")
        rows += [("03_depth_limit", *r) for r in depth_runs(nd)]
        rows += [("05_final", *r) for r in modern_runs(n) + restart[1:]]
    return [(nb, name, p.apply(cfg)) for nb, name, cfg in rows]


# Code that trained runs before the initial-weights fix (744d7dc, ae9f024): then each run
# reseeded torch's global generator at every epoch start, and the sweep built networks from it
# to count a job's cost, while a run beside them in a thread drew its initial weights from it.
# Runs of one seed and one network did not always start alike, and are not paired by seed.
PRE_FIX_CODE = ("3887dc1", "8721feb")


def before_fix(run: Run) -> bool:
    return str((run.summary or {}).get("code_version", "")).split("+")[0] in PRE_FIX_CODE


def one_era(runs: list[Run]) -> list[Run]:
    """Per configuration (run name), its runs trained after the fix if it has any, else those
    before it: no configuration mixes the two."""
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.name, []).append(r)
    return [r for rs in by.values() for r in ([r for r in rs if not before_fix(r)] or rs)]


# CIFAR-10's sizes: what a plan costs can be counted before any data is there.
CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000
# On a CPU, training whose estimate passes this is refused without allow_cpu (the full
# profile is refused whatever its estimate: days).
CPU_LIMIT_S = 3600.0


def plan_gflop(rows: list[tuple[str, str, TrainConfig]], sizes: tuple[int, int] = (CIFAR10_TRAIN, CIFAR10_TEST)) -> float:
    """GFLOP of training and evaluation the planned `rows` (notebook, name, config) cost on
    data of `sizes` (training-set images with batch 5, test images)."""
    total = 0.0
    for _, _, cfg in rows:
        val = sizes[0] // 5 if cfg.split == "seed" else cfg.val_size
        train = min(sizes[0] - val, cfg.train_subset or sizes[0])
        total += run_gflop(cfg, train, val + sizes[1] / cfg.epochs)
    return total


# ---------------------------------------------------------------------------------------
# The lab's places and policy, resolved once
# ---------------------------------------------------------------------------------------


class LabError(RuntimeError):
    """The lab cannot run as asked (a refused profile or place, training that would take days)."""


class RunMissing(LookupError):
    """A run the notebook needs was never trained and training is switched off."""


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The lab's folder, which the profiles' relative paths hang from: the nearest of `start`
    (default: the working directory) and its parents that holds notebooks/00_summary.ipynb,
    else `start` itself. JupyterLab runs a notebook in notebooks/, the lab job in the root:
    both find the same run store."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "notebooks" / "00_summary.ipynb").is_file():
            return d
    return here


class Lab:
    """A profile's places (project root, data, run store, report folder) and training policy,
    resolved once: the main job, `sweep` and the notebooks all take them from here.

    Args:
        profile_name: full | quick | smoke.
        data_dir: folder with cifar-10-batches-py (smoke makes its own); None: $LABKIT_DATA,
            else `root`/data.
        runs_dir, report_dir: override the profile's run store and report folder. Without
            runs_dir, data other than those the profile's store was trained on get a store of
            their own, build/<profile>-<fingerprint of the data>/ (`own_store` says why).
        allow_train: False = only use finished runs (a missing run raises RunMissing).
        allow_cpu: train on a CPU whatever the estimate (else a long one is refused).
        root: the project root that relative profile paths hang from (None: project_root()).
        data_label: what the data are when not the official files, for the report.
    """

    def __init__(
        self,
        profile_name: str,
        data_dir: str | os.PathLike | None = None,
        runs_dir: str | os.PathLike | None = None,
        allow_train: bool = True,
        root: str | os.PathLike | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = print,
        data_label: str | None = None,
        report_dir: str | os.PathLike | None = None,
        allow_cpu: bool = False,
    ) -> None:
        self.profile = get_profile(profile_name)
        self.root = Path(root) if root is not None else project_root()
        self.data_dir = Path(data_dir) if data_dir else default_data_dir(self.root)
        if data_dir and self.profile.synthetic and log:
            log(f"note: the smoke profile trains on its own synthetic data ({self.smoke_data_dir()}); data_dir {data_dir} is not used")
        self.allow_train, self.allow_cpu = allow_train, allow_cpu
        self.data_label = data_label
        self.progress, self.log = progress, log
        self._data: dict[tuple[str, int], Dataset] = {}
        # The data's record (md5s), or None where there are none yet: then nothing is checked.
        self.source = None if self.profile.synthetic else data_source(self.data_dir)
        store = Path(runs_dir) if runs_dir else self.root / self.profile.runs_dir
        report = Path(report_dir) if report_dir else self.root / self.profile.report_dir
        self.own_store = ""
        if not runs_dir and self.source and (other := RunStore(store).on_other_data(self.source)):
            fp = fingerprint(self.source)
            theirs = sorted({fingerprint(d) for r in other if (d := recorded(r)) and "md5" in d})
            own = self.root / "build" / f"{self.profile.name}-{fp}"
            store, report = own / "runs", report if report_dir else own / "report"
            self.own_store = (
                f"the data at {self.data_dir} (fingerprint {fp}) are not those the runs in {self.root / self.profile.runs_dir} "
                f"were trained on (fingerprint {', '.join(theirs) or 'not recorded'}): their runs go to a store of their own, "
                f"{store}, their report to {report}"
            )
        self.store = RunStore(store)
        self.report_dir = report

    def smoke_data_dir(self) -> Path:
        """Where the smoke profile keeps its synthetic data: beside its default run store."""
        return (self.root / self.profile.runs_dir).parent / "data"

    def config(self, cfg: TrainConfig) -> TrainConfig:
        return self.profile.apply(cfg)

    def plan(self, seeds: int | None = None, depth_seeds: int | None = None) -> list[tuple[str, str, TrainConfig]]:
        return plan(self.profile.name, seeds, depth_seeds=depth_seeds)

    def finished(self, name: str, cfg: TrainConfig) -> bool:
        """Whether the run of `cfg` (the profile already applied) is finished in the store."""
        r = self.store.find(cfg, name)
        return r is not None and r.finished

    def training_seconds(self, rows: list[tuple[str, str, TrainConfig]], device: str = "cpu") -> tuple[float, float]:
        """(seconds, GFLOP/s): what training `rows` would take at the rate measured on `device`."""
        if not rows:
            return 0.0, math.nan
        rate = measure_gflops(rows[0][2], device, batch=16 if device == "cpu" else 256)
        sizes = (5 * SMOKE_PER_BATCH, SMOKE_PER_BATCH) if self.profile.synthetic else (CIFAR10_TRAIN, CIFAR10_TEST)
        return plan_gflop(rows, sizes) / rate, rate

    def refuse_long_cpu_training(self, rows: list[tuple[str, str, TrainConfig]], how: str) -> str:
        """On a CPU, refuse (LabError) to train `rows` of a real-data profile when it would take
        long (full: at all; quick: past CPU_LIMIT_S), unless allow_cpu; `how` says how to
        override or avoid it, in the caller's words. Returns the estimate in words ('' for none)."""
        if not rows or not self.allow_train or self.profile.synthetic or torch.cuda.is_available():
            return ""
        est, rate = self.training_seconds(rows)
        where = f"about {duration(est)} of training on this CPU for {len(rows)} run(s) not yet finished in {self.store.root} ({rate:.1f} GFLOP/s measured)"
        if not self.allow_cpu and (self.profile.name == "full" or est > CPU_LIMIT_S):
            raise LabError(f"refusing the {self.profile.name} profile on a CPU: torch sees no CUDA GPU, and it would take {where}. {how}")
        return where

    def data(self, split: str = "seed", val_size: int = 0) -> Dataset:
        key = (split, val_size)
        if key not in self._data:
            if self.profile.synthetic:
                root = self.smoke_data_dir()
                if not (root / "cifar-10-batches-py" / "test_batch").is_file():
                    make_synthetic_cifar10(root, per_batch=SMOKE_PER_BATCH)
                self._data[key] = load_cifar10(root, split, val_size, allow_download=False)
            else:
                d = load_cifar10(self.data_dir, split, val_size)
                n_train, n_test = len(d.train_y) + len(d.val_y), len(d.test_y)
                if (n_train, n_test) != (CIFAR10_TRAIN, CIFAR10_TEST):
                    # Its runs would take the run ids of real-data runs (ids name no data).
                    raise DataError(
                        f"the {self.profile.name} profile trains on CIFAR-10 ({CIFAR10_TRAIN:,} training and "
                        f"{CIFAR10_TEST:,} test images); {d.source['folder']} under {self.data_dir} "
                        f"holds {n_train:,} and {n_test:,} (synthetic data? use the smoke profile)"
                    )
                # a run trained here now would sit beside them under the same kind of id
                self.store.refuse_other_data(d.source, self.data_dir, "give the data they were trained on, or another run store")
                self._data[key] = d
        return self._data[key]

    def run(self, name: str, cfg: TrainConfig) -> Run:
        """The finished run of a full-protocol `cfg`, the profile applied (trained if allowed).
        For a list of runs with the missing ones named, see analysis.get_runs."""
        cfg = self.config(cfg)
        if not self.allow_train:
            r = self.store.find(cfg, name)
            if r is None or not r.finished:
                raise RunMissing(f"run {self.store.run_id(cfg, name)} is not in {self.store.root} and training is off")
            return r
        return self.store.get(cfg, name, lambda: self.data(cfg.split, cfg.val_size), progress=self.progress, log=self.log)

    def __getstate__(self) -> dict:
        # Sent to sweep worker processes (for `data`): without the loaded data
        # (reloaded there) or the log (a lambda would not pickle; workers do not log).
        return {**self.__dict__, "_data": {}, "log": None}


def data_source(data_dir: Path) -> dict | None:
    """The record (md5s, description) of the CIFAR-10 batches at `data_dir`; None where there are none."""
    try:
        return source_of(find_batches(data_dir))
    except DataNotFound:
        return None
