"""labkit.sweep, the GPU gate that lets runs share a GPU from threads, and the sweep's timing
record (logic, on the CPU)."""

from __future__ import annotations

import json
import re
import threading
import time
import types

import pytest

from labkit.cli import main
from labkit.config import ConfigError, preset
from labkit.lab import plan
from labkit.runs import RunStore
from labkit.scale.gate import GpuGate
from labkit.scale.sweep import sweep
from labkit.synthetic import make_synthetic_cifar10


def test_gate_capture_runs_alone():
    gate = GpuGate()
    inside = []  # threads currently "issuing GPU work"
    overlaps = []
    stop = threading.Event()

    def runner(i):
        with gate.shared():
            for _ in range(200):
                if stop.is_set():
                    break
                gate.pause_point()
                inside.append(i)
                time.sleep(0.0005)
                inside.remove(i)

    def capturer():
        with gate.shared():
            time.sleep(0.01)
            with gate.exclusive():
                overlaps.append(list(inside))
                time.sleep(0.01)
                overlaps.append(list(inside))

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(3)] + [threading.Thread(target=capturer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "gate deadlocked"
    assert overlaps == [[], []]


def test_gate_two_capturers_do_not_deadlock():
    gate = GpuGate()
    order = []

    def cap(i):
        with gate.shared():
            with gate.exclusive():
                order.append(i)
                time.sleep(0.01)

    threads = [threading.Thread(target=cap, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(order) == [0, 1, 2, 3]


def test_sweep_trains_in_order_then_caches(tmp_path, tiny_data):
    store = RunStore(tmp_path / "runs")
    base = preset("seed", width=8, lays=(1, 1, 1, 1), batch_size=64, epochs=1, seed_extra_block=False)
    jobs = [("a", base), ("b", base.replace(lr=2e-3))]
    done = sweep(jobs, store, lambda split, val: tiny_data, log=None)
    assert [j.status for j in done] == ["done", "done"]
    again = sweep(jobs, store, lambda split, val: tiny_data, log=None)
    assert [j.status for j in again] == ["cached", "cached"]


def test_lanes_train_side_by_side_and_raise_a_lanes_error_once_all_have_ended(tmp_path, tiny_data, monkeypatch):
    # Lanes share a GPU, so on a CPU sweep runs one; here two lanes run as threads on the CPU
    # (no CUDA streams), the path the GPU takes around them.
    from labkit.data import DataError
    from labkit.scale import sweep as sweep_module

    monkeypatch.setattr(sweep_module, "lanes_used", lambda jobs, lanes: (lanes, ""))
    store = RunStore(tmp_path / "runs")
    base = preset("seed", width=8, lays=(1, 1, 1, 1), batch_size=64, epochs=1, seed_extra_block=False)
    jobs = [(n, base.replace(seed=i)) for i, n in enumerate("abc")]
    done = sweep(jobs, store, lambda split, val: tiny_data, lanes=2, log=None)
    assert [j.status for j in done] == ["done"] * 3 and {j.lane for j in done} <= {0, 1}

    def unreadable(split, val):
        raise DataError("no data here")

    with pytest.raises(DataError, match="no data here"):
        sweep([("d", base.replace(seed=3))], store, unreadable, lanes=2, log=None)


def test_sweep_skips_what_cannot_finish_by_the_deadline(tmp_path, tiny_data):
    store = RunStore(tmp_path / "runs")
    cfg = preset("seed", width=8, lays=(1, 1, 1, 1), batch_size=64, epochs=50, seed_extra_block=False)
    done = sweep([("slow", cfg)], store, lambda split, val: tiny_data, deadline=time.time() + 5, rate_guess=0.01, log=None)
    assert done[0].status == "skipped"
    assert store.find(cfg, "slow") is None or not store.find(cfg, "slow").finished


def test_no_run_starts_once_the_deadline_has_passed(tmp_path, tiny_data):
    # No rate known (no rate_guess, no run measured): the passed deadline alone says no run
    # can finish; starting one would only train an epoch to throw away.
    store = RunStore(tmp_path / "runs")
    base = preset("seed", width=8, lays=(1, 1, 1, 1), batch_size=64, seed_extra_block=False)
    jobs = [("two", base.replace(epochs=2)), ("one", base.replace(epochs=1))]
    asked = []

    def data(split, val):
        asked.append(split)
        return tiny_data

    logged = []
    done = sweep(jobs, store, data, deadline=time.time() - 1, log=logged.append)
    assert [j.status for j in done] == ["skipped", "skipped"]
    assert all(store.find(c, n) is None for n, c in jobs)  # nothing trained, not even begun
    assert asked == []  # nor the data read for them
    assert logged == ["skip two seed 0: the time budget has run out", "skip one seed 0: the time budget has run out"]


def test_a_run_past_the_deadline_stops_between_epochs_but_keeps_its_last(tmp_path, tiny_data, monkeypatch):
    # The deadline passes once a run has started (a fake clock, moved on as training begins):
    # the two-epoch run stops after its first epoch, unfinished, and the job after it does
    # not start; a one-epoch run's only epoch is its last, and throwing that away (no test,
    # no summary) would only lose a trained run.
    clock = {"now": 1000.0}
    monkeypatch.setattr("labkit.scale.sweep.time", types.SimpleNamespace(time=lambda: clock["now"]))
    deadline = 1010.0

    class DeadlinePassesInTraining(RunStore):
        def get(self, *args, **kwargs):
            clock["now"] = deadline + 1
            return super().get(*args, **kwargs)

    store = DeadlinePassesInTraining(tmp_path / "runs")
    base = preset("seed", width=8, lays=(1, 1, 1, 1), batch_size=64, seed_extra_block=False)
    two, one = base.replace(epochs=2), base.replace(epochs=1)
    done = sweep([("two", two), ("one", one)], store, lambda split, val: tiny_data, deadline=deadline, log=None)
    assert [j.status for j in done] == ["stopped", "skipped"]
    assert done[0].error == "time budget ran out after epoch 1"
    assert not store.find(two, "two").finished and store.find(one, "one") is None
    clock["now"] = 1000.0
    done = sweep([("one", one)], store, lambda split, val: tiny_data, deadline=deadline, log=None)
    assert [j.status for j in done] == ["done"]
    assert store.find(one, "one").finished


def test_a_run_that_fails_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_data):
    # The first run asks for more training images than the data hold: store.get raises.
    store = RunStore(tmp_path / "runs")
    base = preset("seed", width=8, lays=(1, 1, 1, 1), batch_size=64, epochs=1, seed_extra_block=False)
    bad = base.replace(train_subset=10 * len(tiny_data.train_y))
    logged = []
    done = sweep([("bad", bad), ("good", base)], store, lambda split, val: tiny_data, log=logged.append)
    assert [j.status for j in done] == ["failed", "done"]
    assert done[0].error.startswith("ConfigError: train_subset=4000 is more than the 400 training images")
    assert store.find(base, "good").finished and store.find(bad, "bad") is None
    assert any("Traceback" in m and "ConfigError" in m for m in logged)  # its traceback, for whoever reads the log
    assert any(m.startswith("[lane 0] failed  bad-") for m in logged)


def test_runs_are_skipped_by_the_rate_measured_on_finished_runs(tmp_path, tiny_data, monkeypatch):
    # No rate_guess: the first run starts unestimated. A fake clock makes it take 100 s, so
    # the rate measured on it says its twin (the same work) needs 100 s, with 50 s left.
    clock = {"now": 1000.0}
    monkeypatch.setattr("labkit.scale.sweep.time", types.SimpleNamespace(time=lambda: clock["now"]))

    class HundredSecondRuns(RunStore):
        def get(self, *args, **kwargs):
            clock["now"] += 100.0
            return super().get(*args, **kwargs)

    store = HundredSecondRuns(tmp_path / "runs")
    base = preset("seed", width=8, lays=(1, 1, 1, 1), batch_size=64, epochs=1, seed_extra_block=False)
    logged = []
    done = sweep([("a", base), ("b", base.replace(lr=2e-3))], store, lambda split, val: tiny_data,
                 deadline=1150.0, log=logged.append)
    assert [j.status for j in done] == ["done", "skipped"]
    assert done[0].seconds == 100.0
    assert "skip b seed 0: needs ~100s, 50s left" in logged


def test_seed_protocol_keeps_the_original_s_own_experiments():
    lab, seed = plan("full", 3), plan("full", 3, protocol="seed")
    assert set(seed) <= set(lab)
    assert {r[1] for r in seed} == {r[1] for r in lab if r[1].startswith(("ablation", "final", "depth"))} - {"final-restart"}
    assert [r for r in seed if not r[1].startswith("depth")] == [r for r in lab if r[1].startswith("ablation") or r[1] == "final"]
    assert {r[2].seed for r in seed if r[1].startswith("depth")} == {0}  # one run a depth, as the original ran them
    with pytest.raises(ConfigError, match="protocol"):
        plan("full", 1, protocol="everything")
    with pytest.raises(ConfigError, match="seeds must be a positive int"):
        plan("full", 0)


# -- the sweep's timing record (CLI) --------------------------------------------------------


def test_timing_record_says_whether_it_timed_the_whole_plan(tmp_path):
    from labkit.runs import RunStore
    from labkit.scale.sweep import sweep_record

    store = RunStore(tmp_path / "runs")
    assert sweep_record([], store, 1.0, only=None)["whole_plan"] is True
    assert sweep_record([], store, 1.0)["whole_plan"] is True
    assert sweep_record([], store, 1.0, only=["05_final"])["whole_plan"] is False


def test_sweep_writes_its_timing_record(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["sweep", "--profile", "smoke", "--seeds", "1", "--only", "05_final", "--protocol", "seed",
            "--data-dir", "nowhere", "--checkpoint-every", "0", "--timing-json", "t1.json"]
    assert main(args) == 0
    rec = json.loads((tmp_path / "t1.json").read_text())
    assert rec["from_nothing"] is True and rec["counts"]["done"] == 1
    assert rec["only"] == ["05_final"] and rec["whole_plan"] is False  # the runs' time, not the protocol's
    assert rec["protocol"] == "seed" and rec["profile"] == "smoke" and rec["compile"] == "off"
    assert [j["name"] for j in rec["jobs"]] == ["final"]  # only that notebook's runs
    for j in rec["jobs"]:
        assert j["status"] == "done" and 0 < j["train_seconds"] <= j["seconds"] <= rec["wall_seconds"]
        assert 0.0 <= j["test_acc"] <= 1.0 and j["run"].startswith(j["name"] + "-")
    assert rec["date"] and rec["device"].startswith("cpu") and "torch" in rec["versions"]
    # again: every run comes from the store, so the record says it is no whole-plan time
    assert main(args[:-1] + ["t2.json"]) == 0
    rec2 = json.loads((tmp_path / "t2.json").read_text())
    assert rec2["from_nothing"] is False and rec2["counts"]["cached"] == 1
    out = capsys.readouterr().out
    assert "wrote t2.json" in out
    assert "synthetic data; --data-dir nowhere is not used" in out  # said, not silently ignored


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lanes", "0"], "--lanes must be a positive int"),
        (["--only", "04_ablation"], "no planned runs in \\['04_ablation'\\]"),
        (["--compile", "fastest"], "compile must be one of"),
        (["--seeds", "0"], "seeds must be a positive int"),
        (["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0"),
        (["--lanes", "2", "--compile", "default"], "torch.compile is not thread-safe"),
        (["--budget-s", "-100"], "--budget-s must be > 0"),
        (["--budget-s", "0"], "--budget-s must be > 0"),
        (["--rate-guess", "-5"], "--rate-guess must be > 0"),
        (["--deadline", "1000"], "has passed already"),
    ],
)
def test_sweep_rejects_bad_options_before_training(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--profile", "smoke", *extra]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "build").exists()  # nothing trained, nothing written


@pytest.fixture
def fake_sweep(monkeypatch):
    """labkit.sweep.sweep, as the CLI calls it, replaced by one that trains nothing: it
    records what it was given and reports every job cached. Returns the record."""
    from labkit.scale import sweep as sweep_module

    seen = {}

    def fake(jobs, store, data, **kwargs):
        seen.update(jobs=jobs, store=store, data=data, **kwargs)
        return [sweep_module.Job(n, c, status="cached") for n, c in jobs]

    monkeypatch.setattr(sweep_module, "sweep", fake)
    return seen


def test_sweep_says_once_that_a_data_dir_is_not_used(tmp_path, capsys, monkeypatch, fake_sweep):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--profile", "smoke", "--only", "05_final", "--data-dir", "nowhere"]) == 0
    out = capsys.readouterr().out
    assert out.count("is not used") == 1
    assert "note: the smoke profile trains on synthetic data; --data-dir nowhere is not used" in out


def test_sweep_says_and_records_the_lanes_it_runs_not_those_asked(tmp_path, capsys, monkeypatch, fake_sweep):
    # On a CPU lanes run one at a time: the record and the output say 1, and why, in one line.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    args = ["sweep", "--profile", "smoke", "--only", "05_final"]
    assert main([*args, "--lanes", "3", "--timing-json", "t.json"]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["lanes"] == 1
    assert fake_sweep["lanes"] == 3  # sweep is told what was asked (it checks compile against it)
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if "lane" in line]) == 1  # one line says it
    assert "sweep: 1 lane, not the 3 --lanes asks for: no CUDA GPU here, and lanes share a GPU: runs train one at a time" in out
    # one lane asked, one run: nothing to explain
    assert main([*args, "--lanes", "1", "--timing-json", "t3.json"]) == 0
    assert json.loads((tmp_path / "t3.json").read_text())["lanes"] == 1
    assert "not the" not in capsys.readouterr().out


def test_lanes_used_on_a_gpu_only_when_every_run_may_use_it(monkeypatch):
    import torch

    from labkit.scale.sweep import lanes_used

    base = preset("seed", width=8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert lanes_used([("a", base), ("b", base.replace(device="cuda"))], 3) == (3, "")
    n, why = lanes_used([("a", base), ("c", base.replace(device="cpu"))], 3)
    assert n == 1 and why.startswith("a run is set to device cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert lanes_used([("a", base)], 1) == (1, "")
    assert lanes_used([("a", base)], 2)[0] == 1


def test_sweep_finds_the_profile_folders_from_the_project_root(tmp_path, capsys, monkeypatch, fake_sweep):
    # Run from notebooks/ (where JupyterLab's terminal opens), the same command as from the
    # project root: the profile's run store and data/ are the root's, as for `lab` and the
    # notebooks; paths typed on the command line are taken from here, as for `lab`.
    import labkit.data

    def no_download(root):
        raise labkit.data.DataError(f"{root}: not found, and tests do not download")

    monkeypatch.setattr(labkit.data, "download", no_download)
    monkeypatch.delenv("LABKIT_DATA", raising=False)
    proj = tmp_path / "proj"
    (proj / "notebooks").mkdir(parents=True)
    (proj / "notebooks" / "00_summary.ipynb").write_text("{}")
    monkeypatch.chdir(proj / "notebooks")
    args = ["sweep", "--only", "05_final", "--protocol", "seed", "--seeds", "1"]
    assert main([*args, "--profile", "smoke"]) == 0
    assert fake_sweep["store"].root.resolve() == proj / "build" / "smoke" / "runs"
    fake_sweep["data"]("seed", 0)  # the smoke profile's synthetic data: made beside its store
    assert (proj / "build" / "smoke" / "data" / "cifar-10-batches-py" / "test_batch").is_file()
    assert "run store ../build/smoke/runs" in capsys.readouterr().out  # no machine's folder names
    assert main([*args, "--profile", "smoke", "--runs-dir", "mine"]) == 0
    assert fake_sweep["store"].root.resolve() == proj / "notebooks" / "mine"
    assert not (proj / "notebooks" / "build").exists()
    # a real-data profile looks in the root's data/ (here a synthetic copy, which it refuses by size)
    make_synthetic_cifar10(proj / "data", per_batch=10)
    capsys.readouterr()
    assert main([*args, "--profile", "quick"]) == 1
    assert "under ../data holds 50 and 10" in capsys.readouterr().err
    # --data-dir typed here: from here
    make_synthetic_cifar10(proj / "notebooks" / "here", per_batch=20)
    assert main([*args, "--profile", "quick", "--data-dir", "here"]) == 1
    assert "under here holds 100 and 20" in capsys.readouterr().err


def test_sweep_workers_reach_the_sweep_and_its_record(tmp_path, monkeypatch, capsys, fake_sweep):
    monkeypatch.chdir(tmp_path)
    args = ["sweep", "--profile", "smoke", "--only", "05_final", "--timing-json", "t.json"]
    assert main(args) == 0
    assert fake_sweep["workers"] == 0  # default: this process
    assert main([*args, "--workers", "3"]) == 0
    assert fake_sweep["workers"] == 3 and json.loads((tmp_path / "t.json").read_text())["workers"] == 3
    capsys.readouterr()
    assert main([*args, "--workers", "-1"]) == 2
    assert capsys.readouterr().err == "error: --workers must be >= 0 (0 = this process), got -1\n"


def _record_initial_weights(monkeypatch) -> dict:
    """Patch train.build_model to keep each built network's state dict by (seed, decay, dropout)."""
    import copy

    from labkit import train as train_module

    built, real = {}, train_module.build_model

    def build(cfg):
        model = real(cfg)
        built[(cfg.seed, cfg.decay_rate, cfg.dropout, cfg.epochs)] = copy.deepcopy(model.state_dict())
        return model

    monkeypatch.setattr(train_module, "build_model", build)
    return built


def test_training_draws_nothing_from_torch_s_global_generator(monkeypatch, tiny_data):
    # What lets runs train side by side in threads: after a run seeds the global generator and
    # builds its network (under the lanes' lock), nothing else in it draws from that generator.
    import torch

    from labkit import train as train_module
    from labkit.train import train

    after_build, real = [], train_module.build_model

    def build(cfg):
        model = real(cfg)
        after_build.append(torch.get_rng_state())
        return model

    monkeypatch.setattr(train_module, "build_model", build)
    cfg = preset("seed", width=8, lays=(1, 1, 1, 1), batch_size=64, epochs=2, dropout=0.4, device="cpu", channels_last=False)
    train(cfg, tiny_data, log=None)
    assert len(after_build) == 1 and torch.equal(torch.get_rng_state(), after_build[0])


def test_runs_of_one_seed_start_alike_side_by_side_in_lanes(tmp_path, tiny_data, monkeypatch):
    # The paired comparison rests on this: runs of one seed and one network share their initial
    # weights and data order whichever configuration they train, alone or in lanes.
    import torch

    from labkit.scale import sweep as sweep_module

    monkeypatch.setattr(sweep_module, "lanes_used", lambda jobs, lanes: (lanes, ""))
    built = _record_initial_weights(monkeypatch)
    base = preset("seed", width=8, lays=(1, 1, 1, 1), batch_size=64, epochs=1, device="cpu", channels_last=False)
    configs = {"base": base, "decay": base.replace(decay_rate=1.0), "dropout": base.replace(dropout=0.4),
               "longer": base.replace(epochs=2), "seed1": base.replace(seed=1)}  # fmt: skip
    alone = RunStore(tmp_path / "alone")
    sweep([("base", base), ("seed1", configs["seed1"])], alone, lambda split, val: tiny_data, log=None)
    alone_weights = dict(built)
    lanes = RunStore(tmp_path / "lanes")
    done = sweep(list(configs.items()), lanes, lambda split, val: tiny_data, lanes=3, log=None)
    assert [j.status for j in done] == ["done"] * 5 and len({j.lane for j in done}) > 1

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    first = built[(0, base.decay_rate, 0.0, 1)]
    assert same(first, alone_weights[(0, base.decay_rate, 0.0, 1)])
    for c in (configs["decay"], configs["dropout"], configs["longer"]):
        assert same(built[(0, c.decay_rate, c.dropout, c.epochs)], first)
    assert not same(built[(1, base.decay_rate, 0.0, 1)], first)
    # the same first epoch where the learning rate of epoch 1 is the same: base, decay 1.0, longer
    loss1 = {n: float(lanes.find(c, n).history["loss_sum"].iloc[0]) for n, c in configs.items()}
    assert loss1["base"] == loss1["decay"] == loss1["longer"] == float(alone.find(base, "base").history["loss_sum"].iloc[0])
    assert loss1["seed1"] != loss1["base"] and loss1["dropout"] != loss1["base"]
