"""labkit.lab: the plan of runs per profile, and the Lab's store/training policy."""

from __future__ import annotations

import pytest

from labkit.config import ConfigError, TrainConfig, preset
from labkit.lab import PROFILES, Lab, RunMissing, depth_runs, get_profile, plan
from labkit.notebook import get_runs
from labkit.paper import ABLATIONS, ablation_config
from labkit.runs import RunStore


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_plan_is_valid_and_unique(name):
    rows = plan(name)
    ids = [RunStore.run_id(cfg, run) for _, run, cfg in rows]
    assert len(ids) == len(set(ids)), "two plan rows would share one run folder"
    assert all(isinstance(cfg, TrainConfig) for _, _, cfg in rows)
    notebooks = {nb for nb, _, _ in rows}
    assert notebooks == {"03_depth_limit", "04_ablations", "05_final"}
    abl = {run for nb, run, _ in rows if nb == "04_ablations"}
    assert abl == {f"ablation-{a.key}" for a in ABLATIONS}
    # most needed first: every ablation seed, then the final run, one lr-restart run and the grid,
    # the depths, the modern runs, the lr-restart run's further seeds
    order = [run.split("-")[0] if run.startswith(("ablation", "grid", "depth")) else run for _, run, _ in rows]
    first = list(dict.fromkeys(order))
    assert first == ["ablation", "final", "final-restart", "grid", "depth", "modern"], first
    p = PROFILES[name]
    assert sum(run == "final-restart" for _, run, _ in rows) == p.seeds
    assert [cfg.seed for _, run, cfg in rows if run.startswith("ablation")] == sorted(
        cfg.seed for _, run, cfg in rows if run.startswith("ablation"))  # seed by seed: a cut plan keeps pairs
    assert {cfg.seed for _, run, cfg in rows if run.startswith("depth")} == set(range(p.depth_seeds))
    assert max(cfg.seed for _, _, cfg in rows) == p.seeds - 1


def test_full_profile_is_the_protocol():
    rows = plan("full")
    baseline = next(cfg for _, run, cfg in rows if run == "ablation-baseline" and cfg.seed == 0)
    assert baseline == ablation_config("baseline") == preset("seed")
    for a in ABLATIONS:
        cfg = next(c for _, run, c in rows if run == f"ablation-{a.key}" and c.seed == 0)
        assert cfg == ablation_config(a.key)
        assert cfg.width == 64 and cfg.epochs == 30 and cfg.batch_size == 512


def test_smoke_profile_is_small():
    full = {(run, cfg.seed): cfg for _, run, cfg in plan("full")}
    for _, run, cfg in plan("smoke"):
        assert cfg.width == 8 and cfg.batch_size == 64
        ref = full[(run, cfg.seed)]
        assert 1 <= cfg.epochs < ref.epochs
        assert cfg.warmup_epochs <= cfg.epochs
        assert (cfg.lr_restart > 0) == (ref.lr_restart > 0) and cfg.lr_restart <= cfg.epochs
        # everything but the scale is the full run's
        same = {k for k in ref.to_dict() if k not in ("width", "batch_size", "epochs", "warmup_epochs", "lr_restart", "val_size")}
        assert {k: cfg.to_dict()[k] for k in same} == {k: ref.to_dict()[k] for k in same}


def test_depth_runs_select_on_validation():
    runs = depth_runs(1)
    assert {run for run, _ in runs} == {"depth-2-seed", "depth-2-corrected", "depth-3-seed", "depth-3-corrected"}
    for run, cfg in runs:
        assert cfg.select == "best_val" and cfg.split == "seed"  # validation on batch 5, test touched once
        assert cfg.lays == ((2,) * 4 if "-2-" in run else (3,) * 4)
        assert cfg.seed_extra_block == cfg.softmax_head == run.endswith("-seed")


def test_unknown_profile():
    with pytest.raises(ConfigError, match="profile"):
        get_profile("huge")
    with pytest.raises(ConfigError, match="profile"):
        Lab("huge")


def test_lab_smoke_trains_once_then_finds(tmp_path, tiny_config):
    lab = Lab("smoke", root=tmp_path, progress=False, log=None)
    cfg = tiny_config(epochs=1)  # the smoke profile applied: its width, batch and synthetic data
    run = lab.run("probe", cfg)
    assert run.finished and run.dir.parent == tmp_path / "build" / "smoke" / "runs"
    assert (tmp_path / "build" / "smoke" / "data" / "cifar-10-batches-py" / "test_batch").is_file()
    assert run.summary["data"]["official"] is False

    offline = Lab("smoke", root=tmp_path, allow_train=False, progress=False, log=None)
    assert offline.run("probe", cfg).id == run.id
    with pytest.raises(RunMissing, match="probe"):
        offline.run("probe", cfg.replace(seed=5))
    missing_id = RunStore.run_id(offline.config(cfg.replace(seed=5)), "probe")
    assert get_runs(offline, [("probe", cfg), ("probe", cfg.replace(seed=5))]) == ([run], [missing_id])
    assert not (tmp_path / "build" / "smoke" / "runs" / missing_id).exists()


def test_recorded_runs_keep_their_ids():
    """The committed report's runs (report/runs) must stay findable: a change to TrainConfig
    or to the plan that renames them would orphan every GPU result."""
    from pathlib import Path

    from labkit.lab import plan
    from labkit.runs import RunStore

    recorded = Path(__file__).resolve().parent.parent / "report" / "runs"
    if not recorded.is_dir():
        pytest.skip("no recorded runs in report/runs")
    have = {p.name for p in recorded.iterdir() if (p / "summary.json").is_file()}
    planned = {RunStore.run_id(cfg, name) for _, name, cfg in plan("full")}
    assert have and have <= planned, sorted(have - planned)


def test_full_and_quick_profiles_refuse_data_that_is_not_cifar10_sized(tmp_path, synth_root):
    # Run ids name no data: a full-profile run on synthetic data would pass for a real one.
    from labkit.data import DataError

    for name in ("full", "quick"):
        lab = Lab(name, data_dir=str(synth_root), runs_dir=str(tmp_path / name), progress=False, log=None)
        with pytest.raises(DataError, match=rf"the {name} profile trains on CIFAR-10 \(50,000 training .* holds 1,000 and 200"):
            lab.data()
    assert not any(tmp_path.iterdir())


def test_notebooks_find_the_project_root_from_their_own_folder(tmp_path, monkeypatch):
    # JupyterLab runs a notebook in notebooks/, the lab job in the root: one run store for both.
    from pathlib import Path

    from labkit.lab import project_root
    from labkit.notebook import open_lab

    repo = Path(__file__).resolve().parent.parent
    assert project_root(repo / "notebooks") == repo and project_root(repo) == repo
    assert project_root(tmp_path) == tmp_path.resolve()  # a folder of the user's own: itself
    monkeypatch.delenv("LABKIT_DATA", raising=False)
    monkeypatch.chdir(repo / "notebooks")
    lab = open_lab("smoke", allow_train=False)
    assert lab.store.root.resolve() == repo / "build" / "smoke" / "runs" and lab.data_dir.resolve() == repo / "data"
    assert not lab.root.is_absolute()  # as "." was: no machine's folders in an executed notebook
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    assert Lab("full", root=repo).data_dir == tmp_path  # $LABKIT_DATA first


def test_a_store_of_runs_on_other_data_gets_no_more_runs_from_these(tmp_path, synth_root, monkeypatch):
    # Lab.data (what notebooks and sweeps train from) refuses to add runs to such a store.
    from conftest import recorded_run

    from labkit.data import DataError, load_cifar10
    from labkit.runs import RunStore
    from labkit.synthetic import make_synthetic_cifar10

    store = RunStore(tmp_path / "runs")
    source = load_cifar10(synth_root, allow_download=False).source
    d = recorded_run(store.root, source)
    other = make_synthetic_cifar10(tmp_path / "other", per_batch=200, seed=7).parent
    assert [r.id for r in store.on_other_data(load_cifar10(other, allow_download=False).source)] == [d.name]
    assert store.on_other_data(source) == []
    import labkit.lab as L

    monkeypatch.setattr(L, "CIFAR10_TRAIN", 1000)  # the synthetic sets pass for CIFAR-10-sized here
    monkeypatch.setattr(L, "CIFAR10_TEST", 200)
    lab = Lab("full", data_dir=str(other), runs_dir=str(store.root), progress=False, log=None)
    with pytest.raises(DataError, match=r"1 run\(s\) in .* \(finished, or begun\) were trained on other data"):
        lab.data()
    assert Lab("full", data_dir=str(synth_root), runs_dir=str(store.root), progress=False, log=None).data().sizes()["train"] == 800


def test_smoke_keeps_its_data_beside_its_store_and_says_it_ignores_data_dir(tmp_path):
    """A given runs_dir left an empty build/smoke/runs behind (the data were made at
    runs/../data), and a data_dir given to smoke was ignored without a word."""
    notes: list[str] = []
    lab = Lab("smoke", data_dir=tmp_path / "mine", runs_dir=tmp_path / "store", root=tmp_path, progress=False, log=notes.append)
    assert notes == [f"note: the smoke profile trains on its own synthetic data ({tmp_path / 'build/smoke/data'}); data_dir {tmp_path / 'mine'} is not used"]
    assert len(lab.data().train_y) > 0
    assert sorted(p.name for p in (tmp_path / "build" / "smoke").iterdir()) == ["data"]
    assert not (tmp_path / "mine").exists()
    quiet: list[str] = []
    Lab("smoke", runs_dir=tmp_path / "store", root=tmp_path, log=quiet.append)
    assert quiet == []


def test_the_original_s_tables_name_their_groups_and_point_to_the_general_helpers():
    from labkit import tables as A

    with pytest.raises(ConfigError, match=r"'width' is not one of the original report's ablation groups .* estimates_frame"):
        A.ablation_table("width", [])


def test_relative_notebook_paths_start_at_the_project_root(tmp_path, monkeypatch):
    # The lab job runs the notebooks in the project's folder and gives paths relative to it
    # (its log says "runs in build/smoke/runs"); JupyterLab runs them in notebooks/, where the
    # same runs_dir named notebooks/build/smoke/runs: a second store, trained all over again.
    from labkit.notebook import depth_checkpoints_dir, open_lab

    proj = tmp_path / "proj"
    (proj / "notebooks").mkdir(parents=True)
    (proj / "notebooks" / "00_summary.ipynb").write_text("{}")
    (proj / "elsewhere").mkdir()
    monkeypatch.chdir(proj / "notebooks")
    lab = open_lab("smoke", data_dir="data", runs_dir="build/smoke/runs", allow_train=False)
    assert lab.store.root.resolve() == proj / "build" / "smoke" / "runs"
    assert lab.data_dir.resolve() == proj / "data"
    assert lab.store.root == open_lab("smoke", allow_train=False).store.root  # the default store
    assert depth_checkpoints_dir(lab, "ckpts").resolve() == proj / "ckpts"
    assert open_lab("smoke", root="elsewhere", allow_train=False).root.resolve() == proj / "elsewhere"
    # Absolute paths as given; run in the project's folder (the lab job), relative ones as given.
    assert open_lab("smoke", runs_dir=str(tmp_path / "r"), allow_train=False).store.root == tmp_path / "r"
    monkeypatch.chdir(proj)
    assert str(open_lab("smoke", runs_dir="build/x", allow_train=False).store.root) == "build/x"
    assert not (proj / "build").exists() and not (proj / "notebooks" / "build").exists()
