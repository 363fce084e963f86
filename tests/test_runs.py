"""labkit.runs: a run is trained once, found again, resumed, and guarded against bad state."""

from __future__ import annotations

import importlib
import json

import pandas as pd
import pytest
import torch

from labkit.config import ConfigError
from labkit.runs import RunError, RunStore

T = importlib.import_module("labkit.train")  # the attribute labkit.train is the function
REAL_TRAIN = T.train


class _Crash(Exception):
    pass


@pytest.fixture
def cfg(tiny_config):
    return tiny_config(epochs=3, train_subset=128, batch_size=64)


def _counting_train(monkeypatch, crash_after: int | None = None):
    """Wrap labkit.train.train: count calls and epochs; optionally crash after an epoch."""
    real = REAL_TRAIN
    stats = {"calls": 0, "epochs": 0, "init_state": []}

    def wrapped(cfg, data, **kw):
        stats["calls"] += 1
        stats["init_state"].append(kw.get("init_state"))
        inner = kw.get("on_epoch")

        def on_epoch(history):
            stats["epochs"] += 1
            if inner:
                inner(history)
            if crash_after is not None and len(history) == crash_after:
                raise _Crash

        return real(cfg, data, **{**kw, "on_epoch": on_epoch})

    monkeypatch.setattr(T, "train", wrapped)
    return stats


def test_trains_once_then_returns_finished(tmp_path, synth_data, cfg, monkeypatch):
    store = RunStore(tmp_path)
    stats = _counting_train(monkeypatch)
    loads = []

    def data():
        loads.append(1)
        return synth_data

    run = store.get(cfg, "probe", data, progress=False, log=None)
    assert stats["calls"] == 1 and stats["epochs"] == 3 and loads == [1]
    assert run.finished and run.id == f"probe-{cfg.short_hash()}" and run.dir == tmp_path / run.id
    assert {p.name for p in run.dir.iterdir()} >= {"config.json", "metrics.csv", "checkpoint.pt", "summary.json"}
    assert len(run.history) == 3 and run.summary["config_hash"] == cfg.short_hash()
    assert json.loads((run.dir / "config.json").read_text()) == {"name": "probe", "config": cfg.to_dict()}

    def boom(*a, **kw):
        raise AssertionError("a finished run must not be trained again")

    monkeypatch.setattr(T, "train", boom)
    again = store.get(cfg, "probe", data, progress=False, log=None)
    assert loads == [1]  # the data was not even loaded
    assert again.summary == run.summary
    pd.testing.assert_frame_equal(again.history, run.history)
    # the same config on another device is the same run
    assert store.get(cfg.replace(device="cuda", precision="bf16"), "probe", data, log=None).id == run.id
    assert store.find(cfg, "probe").finished
    assert store.find(cfg.replace(lr=0.5), "probe") is None


def test_retrain(tmp_path, synth_data, cfg, monkeypatch):
    store = RunStore(tmp_path)
    store.get(cfg, "r", synth_data, progress=False, log=None)
    stats = _counting_train(monkeypatch)
    run = store.get(cfg, "r", synth_data, retrain=True, progress=False, log=None)
    assert stats["calls"] == 1 and stats["epochs"] == 3 and run.finished


def test_failed_retrain_gives_the_finished_run_back(tmp_path, synth_data, cfg, monkeypatch):
    store = RunStore(tmp_path)
    old = store.get(cfg, "r", synth_data, progress=False, log=None)
    d = old.dir
    files = lambda: {f.name: f.read_bytes() for f in d.iterdir() if f.name != ".lock"}  # noqa: E731
    before = files()
    assert {"summary.json", "checkpoint.pt", "metrics.csv"} <= set(before)

    def no_data():
        raise FileNotFoundError("CIFAR-10 is not there")

    with pytest.raises(FileNotFoundError):  # data that cannot be read: nothing touched
        store.get(cfg, "r", no_data, retrain=True, progress=False, log=None)
    assert files() == before

    _counting_train(monkeypatch, crash_after=2)  # the new run fails part-way (or is interrupted)
    logs: list[str] = []
    with pytest.raises(_Crash):
        store.get(cfg, "r", synth_data, retrain=True, progress=False, log=logs.append)
    assert files() == before  # the partial new checkpoints are gone, nothing is left set aside
    assert any("is back" in m for m in logs)


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """Synthetic data of the same sizes as synth_data from another seed: other files."""
    from labkit.data import load_cifar10
    from labkit.synthetic import make_synthetic_cifar10

    root = tmp_path_factory.mktemp("other")
    make_synthetic_cifar10(root, per_batch=200, seed=7)
    return load_cifar10(root, split="seed", allow_download=False)


def test_a_run_is_never_handed_back_for_other_data(tmp_path, synth_data, other_data, cfg, monkeypatch):
    from labkit.data import DataError

    assert synth_data.sizes() == other_data.sizes() and synth_data.source["md5"] != other_data.source["md5"]
    store = RunStore(tmp_path)
    run = store.get(cfg, "r", synth_data, progress=False, log=None)
    stats = _counting_train(monkeypatch)
    with pytest.raises(DataError, match=f"run {run.id} in .* was trained on other data"):
        store.get(cfg, "r", other_data, progress=False, log=None)
    assert store.get(cfg, "r", synth_data, progress=False, log=None).summary == run.summary
    # A loader is not called for a finished run (recorded runs are read without their data).
    assert store.get(cfg, "r", lambda: pytest.fail("loaded"), progress=False, log=None).finished
    assert stats["calls"] == 0


def test_an_unfinished_run_does_not_resume_on_other_data(tmp_path, synth_data, other_data, cfg, monkeypatch):
    from labkit.data import DataError

    store = RunStore(tmp_path)
    _counting_train(monkeypatch, crash_after=1)
    with pytest.raises(_Crash):
        store.get(cfg, "r", synth_data, progress=False, log=None)
    monkeypatch.setattr(T, "train", REAL_TRAIN)
    # what a store's check (lab, sweeps, notebooks) sees of it before any resume
    assert [r.id for r in store.on_other_data(other_data.source)] == [store.run_id(cfg, "r")]
    assert store.on_other_data(synth_data.source) == []
    assert "synthetic" in store.data_of(store.on_other_data(other_data.source))
    with pytest.raises(DataError, match=r"checkpoint.pt \(an unfinished run\) was trained on other data"):
        store.get(cfg, "r", other_data, progress=False, log=None)
    assert store.get(cfg, "r", synth_data, progress=False, log=None).finished  # its own data: resumes


def test_retrain_killed_hard_is_undone_at_the_next_call(tmp_path, synth_data, cfg, monkeypatch):
    # A kill -9 mid-retrain leaves the old run set aside in .replaced and a partial new one.
    store = RunStore(tmp_path)
    old = store.get(cfg, "r", synth_data, progress=False, log=None)
    d, summary = old.dir, (old.dir / "summary.json").read_bytes()
    (d / ".replaced").mkdir()
    for f in ("checkpoint.pt", "metrics.csv", "summary.json"):
        (d / f).rename(d / ".replaced" / f)
    (d / "checkpoint.pt").write_bytes(b"partial")
    stats = _counting_train(monkeypatch)
    again = store.get(cfg, "r", synth_data, progress=False, log=None)
    assert stats["calls"] == 0 and again.finished
    assert (d / "summary.json").read_bytes() == summary and (d / "checkpoint.pt").read_bytes() != b"partial"


def test_stopped_run_resumes(tmp_path, synth_data, cfg, monkeypatch):
    store = RunStore(tmp_path)
    _counting_train(monkeypatch, crash_after=2)
    with pytest.raises(_Crash):
        store.get(cfg, "crash", synth_data, progress=False, log=None)
    rid = store.run_id(cfg, "crash")
    partial = store.load(rid)
    assert not partial.finished and len(partial.history) == 2
    assert not (store.path(rid) / "summary.json").exists()

    stats = _counting_train(monkeypatch)
    logs: list[str] = []
    run = store.get(cfg, "crash", synth_data, progress=False, log=logs.append)
    assert stats["epochs"] == 1  # only the third epoch
    assert any("resumed" in line for line in logs)
    assert run.finished and list(run.history["epoch"]) == [1, 2, 3]

    # and it ends where an uninterrupted run ends
    whole = RunStore(tmp_path / "other").get(cfg, "crash", synth_data, progress=False, log=None)
    assert whole.summary["test_acc"] == run.summary["test_acc"]
    assert whole.summary["final_loss_sum"] == run.summary["final_loss_sum"]


def test_corrupted_checkpoint_is_set_aside(tmp_path, synth_data, cfg, monkeypatch):
    store = RunStore(tmp_path)
    _counting_train(monkeypatch, crash_after=1)
    with pytest.raises(_Crash):
        store.get(cfg, "bad", synth_data, progress=False, log=None)
    d = store.path(store.run_id(cfg, "bad"))
    ckpt = d / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated, as by a crash mid-write

    stats = _counting_train(monkeypatch)
    logs: list[str] = []
    run = store.get(cfg, "bad", synth_data, progress=False, log=logs.append)
    assert stats["epochs"] == 3  # trained from the start
    assert any("moved aside" in line for line in logs)
    assert len(list(d.glob("checkpoint.corrupt-*.pt"))) == 1
    assert run.finished and len(run.history) == 3
    whole = RunStore(tmp_path / "other").get(cfg, "bad", synth_data, progress=False, log=None)
    assert whole.summary["test_acc"] == run.summary["test_acc"]


def test_table_and_history(tmp_path, synth_data, cfg):
    store = RunStore(tmp_path)
    assert store.table().empty and store.history().empty
    store.get(cfg, "a", synth_data, progress=False, log=None)
    store.get(cfg.replace(seed=1, epochs=2), "b", synth_data, progress=False, log=None)
    t = store.table()
    assert len(t) == 2 and set(t["name"]) == {"a", "b"}
    for col in (
        "run",
        "name",
        "finished",
        "lr",
        "lays",
        "seed",
        "epochs",
        "final_loss_sum",
        "final_val_acc",
        "test_acc",
        "train_seconds",
        "selected_epoch",
        "data",
    ):
        assert col in t.columns, col
    assert t["finished"].all()
    assert t.set_index("name").loc["b", "seed"] == 1
    h = store.history()
    for col in (
        "run",
        "name",
        "seed",
        "epoch",
        "lr",
        "loss_sum",
        "loss_mean",
        "train_acc",
        "val_acc",
        "val_loss",
        "seconds",
    ):
        assert col in h.columns, col
    assert len(h) == 5
    assert h.groupby("name")["epoch"].max().to_dict() == {"a": 3, "b": 2}
    assert len(store.all()) == 2


@pytest.mark.parametrize("name", ["", "a/b", "../up", "x y", "naïve?", "semi;colon", "tab\t"])
def test_bad_run_names(tmp_path, cfg, name):
    with pytest.raises(ConfigError, match="run name"):
        RunStore(tmp_path).run_id(cfg, name)
    with pytest.raises(ConfigError):
        RunStore(tmp_path).get(cfg, name, lambda: None, log=None)
    assert not any(tmp_path.iterdir())


def test_good_run_names(tmp_path, cfg):
    for name in ("ablation-decay_0.45", "depth-2-seed", "A.b_c-1"):
        assert RunStore(tmp_path).run_id(cfg, name).startswith(name + "-")


def test_init_from_loads_parent_weights(tmp_path, synth_data, cfg, monkeypatch):
    store = RunStore(tmp_path)
    parent = store.get(cfg, "parent", synth_data, progress=False, log=None)
    parent_state = torch.load(parent.checkpoint, weights_only=True)["model"]
    stats = _counting_train(monkeypatch)
    child_cfg = cfg.replace(init_from=parent.id, lr=1e-4, epochs=1)
    child = store.get(child_cfg, "child", synth_data, progress=False, log=None)
    (got,) = stats["init_state"]
    assert got is not None and got.keys() == parent_state.keys()
    for k in got:
        assert torch.equal(got[k], parent_state[k]), k
    assert child.finished and child.id != parent.id


def test_init_from_needs_a_finished_parent(tmp_path, synth_data, cfg, monkeypatch):
    store = RunStore(tmp_path)
    with pytest.raises(RunError, match="nothere"):
        store.get(cfg.replace(init_from="nothere-0123456789"), "child", synth_data, progress=False, log=None)
    _counting_train(monkeypatch, crash_after=1)
    with pytest.raises(_Crash):
        store.get(cfg, "half", synth_data, progress=False, log=None)
    half = store.run_id(cfg, "half")
    with pytest.raises(RunError, match="not finished"):
        store.get(cfg.replace(init_from=half), "child", synth_data, progress=False, log=None)


def test_init_from_a_run_of_another_network_is_refused_in_one_line_leaving_nothing(tmp_path, synth_data, cfg):
    store = RunStore(tmp_path)
    parent = store.get(cfg, "parent", synth_data, progress=False, log=None)
    for change, why in (({"width": 16}, "width=8) is not this run's (lays=[1,1,1,1] stem=3x3 stem_bn=True seed_extra_block=False width=16)"),
                        ({"stem": "7x7"}, "stem=3x3 stem_bn=True"), ({"stem_bn": False}, "stem_bn=False")):
        child = cfg.replace(init_from=parent.id, **change)
        with pytest.raises(ConfigError, match="its weights do not fit this run's network") as e:
            store.get(child, "child", synth_data, progress=False, log=None)
        assert why in str(e.value) and f"run {parent.id}" in str(e.value) and "\n" not in str(e.value)
        assert [p.name for p in tmp_path.iterdir()] == [parent.id]  # no folder of the child
    # train() itself, given weights directly: refused before its run folder is made
    from labkit.train import train

    weights = torch.load(parent.checkpoint, weights_only=True)["model"]
    with pytest.raises(ConfigError, match=r"init_state: .* conv1.weight is \[8, 3, 3, 3\] there, \[16, 3, 3, 3\] here"):
        train(cfg.replace(width=16), synth_data, run_dir=tmp_path / "direct", init_state=weights, progress=False, log=None)
    assert not (tmp_path / "direct").exists()


def test_folder_with_another_config_is_refused(tmp_path, synth_data, cfg):
    store = RunStore(tmp_path)
    rid = store.run_id(cfg, "x")
    d = store.path(rid)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"name": "x", "config": cfg.replace(lr=0.5).to_dict()}))
    with pytest.raises(RunError, match="different config"):
        store.get(cfg, "x", synth_data, progress=False, log=None)


def test_load_errors(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(RunError, match="no run nothing-here in .*labkit runs"):
        store.load("nothing-here")
    (tmp_path / "empty-0000000000").mkdir()
    with pytest.raises(RunError, match="no config.json; not a run folder"):
        store.load("empty-0000000000")
    d = tmp_path / "junk-0000000000"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="config.json"):
        store.load(d.name)


def test_data_of_another_split_is_refused_before_anything_is_written(tmp_path, synth_root, synth_data, cfg, monkeypatch):
    """The run id names the config's split: data loaded with another would be filed under it
    (a seed-split id over a run with no validation set, its best_val selecting nothing)."""
    from labkit.data import load_cifar10

    store = RunStore(tmp_path / "runs")
    full = load_cifar10(synth_root, "full", allow_download=False)
    held = load_cifar10(synth_root, "full", 100, allow_download=False)
    stats = _counting_train(monkeypatch)
    with pytest.raises(ConfigError, match=r"loaded with split='full', val_size=0, but the config asks for split='seed'"):
        store.get(cfg, "r", full, progress=False, log=None)
    with pytest.raises(ConfigError, match=r"split='full', val_size=100, but the config asks for split='full', val_size=0"):
        store.get(cfg.replace(split="full"), "r", held, progress=False, log=None)
    assert stats["calls"] == 0 and not (tmp_path / "runs").exists()
    # a finished run asked for with data of another split: refused too, not handed back
    run = store.get(cfg, "r", synth_data, progress=False, log=None)
    with pytest.raises(ConfigError, match="loaded with split='full'"):
        store.get(cfg, "r", full, progress=False, log=None)
    assert store.get(cfg, "r", synth_data, progress=False, log=None) == run
    with pytest.raises(ValueError, match="val_size is only for split 'full'"):
        load_cifar10(synth_root, "seed", 10, allow_download=False)


def test_runs_compare_as_records_and_summaries_are_strict_json(tmp_path, synth_root, cfg):
    """Run == Run raised (a DataFrame has no truth value); a summary held NaN, not JSON."""
    from labkit.data import load_cifar10

    store = RunStore(tmp_path)
    full = load_cifar10(synth_root, "full", allow_download=False)
    c = cfg.replace(split="full", epochs=1)
    run = store.get(c, "r", full, progress=False, log=None)
    again = store.load(run.id)
    assert run == again and hash(run) == hash(again) and [run].index(again) == 0 and again in {run}
    assert run != store.get(c.replace(seed=1), "r", full, progress=False, log=None)
    text = (run.dir / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert summary["final_val_acc"] is None and summary["best_val_acc"] is None  # no validation set


def test_api_misuse_gets_errors_that_name_it(tmp_path, synth_data, cfg):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(RunError, match="a_file is a file, not a run store folder"):
        RunStore(a_file)
    with pytest.raises(RunError, match=r"cannot make the run folder .*a_file/runs/r-.* give a run store you can write to"):
        RunStore(a_file / "runs").get(cfg, "r", synth_data, progress=False, log=None)
    store = RunStore(tmp_path / "runs")
    with pytest.raises(TypeError, match="data must be a labkit Dataset .* got str 'data'"):
        store.get(cfg, "r", "data", progress=False, log=None)
    with pytest.raises(TypeError, match="cfg must be a TrainConfig .* got str 'r'"):
        store.get("r", cfg, synth_data, progress=False, log=None)
    assert not (tmp_path / "runs").exists()


def test_a_run_finished_while_the_lock_was_awaited_is_compared_with_the_data(tmp_path, synth_data, other_data, cfg, monkeypatch):
    """The run was not finished when `get` first looked; another process finished it on other
    data while this one waited for the lock: the recheck inside the lock compares too."""
    import contextlib
    import shutil

    from labkit.data import DataError

    store = RunStore(tmp_path)
    run = store.get(cfg, "r", synth_data, progress=False, log=None)
    aside = tmp_path / "summary.json"
    shutil.move(run.dir / "summary.json", aside)  # as it was before the other process finished
    real_lock = RunStore._lock

    @contextlib.contextmanager
    def lock_after_the_other_finished(self, d, wait, log):
        shutil.move(aside, d / "summary.json")
        with real_lock(self, d, wait, log):
            yield

    monkeypatch.setattr(RunStore, "_lock", lock_after_the_other_finished)
    stats = _counting_train(monkeypatch)
    with pytest.raises(DataError, match="was trained on other data"):
        store.get(cfg, "r", other_data, progress=False, log=None)
    assert stats["calls"] == 0


def test_run_equality_is_the_record_and_its_state(tmp_path, synth_data, cfg):
    import shutil

    a, b = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    done = a.get(cfg, "r", synth_data, progress=False, log=None)
    other_store = b.get(cfg, "r", synth_data, progress=False, log=None)
    assert other_store.id == done.id and other_store != done  # the same id in another store
    shutil.move(done.dir / "summary.json", tmp_path / "s.json")
    unfinished = a.load(done.id)
    assert not unfinished.finished and unfinished != done


def test_a_waiter_says_the_other_process_finished_the_run(tmp_path, cfg, synth_data):
    import fcntl
    import shutil
    import threading
    import time

    done = RunStore(tmp_path / "elsewhere").get(cfg, "seed", synth_data, progress=False, log=None)
    store = RunStore(tmp_path / "runs")
    d = store.path(done.id)
    d.mkdir(parents=True)
    held = open(d / ".lock", "w")  # noqa: SIM115 (closed below): as the other process holds it
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    logs: list[str] = []
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(store.get(cfg, "seed", synth_data, progress=False, log=logs.append)))
    waiter.start()
    try:
        for _ in range(500):
            if any(m.startswith("waiting: another process is training") for m in logs):
                break
            time.sleep(0.01)
        for f in ("config.json", "metrics.csv", "checkpoint.pt", "summary.json"):  # "the other process" finishes
            shutil.copy2(done.dir / f, d / f)
    finally:
        fcntl.flock(held, fcntl.LOCK_UN)
        held.close()
    waiter.join(60)
    assert logs == [
        f"waiting: another process is training {done.id}",
        f"{done.id}: the other process finished it; its result is used, nothing trained here",
    ]
    assert got[0].finished and got[0].summary == done.summary


# ---------------------------------------------------------------------------------------
# Damaged records: named with the file and the mismatch, never finished, never hidden
# ---------------------------------------------------------------------------------------


def _edit(path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _edit_config(d, **changes) -> None:
    meta = json.loads((d / "config.json").read_text())
    _edit(d / "config.json", config={**meta["config"], **changes})


def _drop_last_row(path) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))


# case: (the file named, the mismatch named, the damage done)
DAMAGE = {
    "config_edited": ("config.json", "a different config (or name) than its folder", lambda d: _edit_config(d, lr=0.5)),
    "config_edited_unfinished": ("config.json", "a different config (or name) than its folder",
                                 lambda d: ((d / "summary.json").unlink(), _edit_config(d, lr=0.5))),
    "name_edited": ("config.json", "a different config (or name) than its folder", lambda d: _edit(d / "config.json", name="other")),
    "metrics_shortened": ("metrics.csv", "it holds 2 epochs, the finished run 3", lambda d: _drop_last_row(d / "metrics.csv")),
    "summary_null": ("summary.json", "test_acc is None, not a number", lambda d: _edit(d / "summary.json", test_acc=None)),
    "summary_string": ("summary.json", "train_seconds is '12.5', not a number", lambda d: _edit(d / "summary.json", train_seconds="12.5")),
    "summary_epochs": ("summary.json", "it is of 4 epochs", lambda d: _edit(d / "summary.json", epochs=4)),
    "summary_hash": ("summary.json", "config hash 0123456789", lambda d: _edit(d / "summary.json", config_hash="0123456789")),
    "config_gone": ("", "no config.json; a damaged run folder (it holds checkpoint.pt, checkpoint.prev.pt, metrics.csv, summary.json)",
                    lambda d: (d / "config.json").unlink()),
}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, synth_data):
    """A store of two finished runs of one config, 'r' (to damage) and 'ok'."""
    from conftest import _tiny_config

    store = RunStore(tmp_path_factory.mktemp("two"))
    cfg = _tiny_config(epochs=3, train_subset=128, batch_size=64)
    for name in ("r", "ok"):
        store.get(cfg, name, synth_data, progress=False, log=None)
    return store.root, cfg


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_run_is_named_never_handed_back_never_hidden(case, two_runs, tmp_path, synth_data, monkeypatch, capsys):
    import re
    import shutil

    from labkit.cli import main

    file, problem, damage = DAMAGE[case]
    src, cfg = two_runs
    store = RunStore(shutil.copytree(src, tmp_path / "runs"))
    rid, ok = store.run_id(cfg, "r"), store.run_id(cfg, "ok")
    d = store.path(rid)
    damage(d)
    before = {p.name: p.read_bytes() for p in d.iterdir() if not p.name.startswith(".")}
    monkeypatch.setattr(T, "train", lambda *a, **k: pytest.fail("a damaged run was trained over"))
    named = rf"^{re.escape(str(d / file))}: .*{re.escape(problem)}.*(put back|restore)"
    for read in (lambda: store.load(rid), lambda: store.find(cfg, "r"), store.all,
                 lambda: store.get(cfg, "r", synth_data, progress=False, log=None)):
        with pytest.raises(RunError, match=named):
            read()
    assert [r.id for r in store.on_other_data({})] == [ok]  # the damaged one is left to whoever reads it
    # `labkit runs`: the good run listed, the damaged one named on one line, exit 1
    assert main(["runs", "--runs-dir", str(store.root)]) == 1
    out, err = capsys.readouterr()
    assert ok in out and rid not in out
    assert err.startswith(f"error: damaged run {rid}: {d / file}: ") and problem in err and err.count("\n") == 1, err
    # nothing lost: every file as it was
    assert {p.name: p.read_bytes() for p in d.iterdir() if not p.name.startswith(".")} == before


def test_the_committed_runs_load_as_finished():
    """report/runs (31 runs, some from before fields existed, null val accuracies where no
    validation set) pass every check of their records."""
    from pathlib import Path

    recorded = Path(__file__).resolve().parent.parent / "report" / "runs"
    if not recorded.is_dir():
        pytest.skip("no recorded runs in report/runs")
    runs = RunStore(recorded).all()
    assert len(runs) == len(list(recorded.iterdir())) and all(r.finished for r in runs)
    assert any(r.summary["final_val_acc"] is None for r in runs)  # the null a split without validation records
