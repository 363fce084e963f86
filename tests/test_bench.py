"""benchmarks/bench.py on the CPU: the speed record's fields, the seed recipe's reproducibility,
the accuracy check (both sides, store reuse, verdicts) and the CLI's checks of its options."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.bench import (
    accuracy_check,
    add_compiled,
    compare_accuracies,
    format_bench,
    main,
    run_bench,
    seed_recipe,
    step_breakdown,
)
from benchmarks.breakdown import op_kind
from benchmarks.choose import execution_from_bench
from labkit.config import PAPER, ConfigError
from labkit.runs import RunStore

CPU = torch.device("cpu")


def _cfg(**changes):
    return PAPER.replace(width=8, lays=(1, 1, 1, 1), batch_size=64, device="cpu", channels_last=False, **changes)


def _compile_fails(monkeypatch, message: str) -> None:
    """labkit's path under compile raises `message`; uncompiled, it is timed as usual."""
    from benchmarks import bench

    real = bench.labkit_epoch_times

    def times(cfg, data, epochs):
        if cfg.compile:
            raise RuntimeError(message)
        return real(cfg, data, epochs)

    monkeypatch.setattr(bench, "labkit_epoch_times", times)


def test_speed_record_has_both_sides_their_ratio_and_a_failed_compile(tiny_data, monkeypatch, capsys):
    res = run_bench(tiny_data, epochs=2, device_name="cpu", workers=0, cfg=_cfg(), command="python -m benchmarks.bench")
    a, b = res["seed_recipe"], res["labkit"]
    assert len(a["epoch_seconds"]) == len(b["epoch_seconds"]) == 2
    assert a["steady_epoch_seconds"] == a["epoch_seconds"][1]  # the first epoch is the warm-up
    assert res["speedup"] == pytest.approx(a["steady_epoch_seconds"] / b["steady_epoch_seconds"])
    assert b["images_per_s"] == pytest.approx(400 / b["steady_epoch_seconds"])
    assert res["bf16_peak_tflops_measured"] is None and b["share_of_bf16_peak"] is None  # no GPU, no peak
    assert res["train_images_per_epoch"] == 400 and res["network"]["width"] == 8
    assert "speedup labkit / seed recipe" in format_bench(res)
    # a compile that fails is reported beside both sides, which stand
    _compile_fails(monkeypatch, "inductor: no C++ compiler")
    add_compiled(res, _cfg(), tiny_data, 2, "default")
    assert res["labkit_compiled"] == {"compile": "default", "error": "RuntimeError: inductor: no C++ compiler"}
    assert "speedup_compiled" not in res and res["speedup"] > 0
    assert "labkit+compile(default) failed: RuntimeError: inductor: no C++ compiler" in format_bench(res)
    assert "inductor: no C++ compiler" in capsys.readouterr().err  # its traceback, for whoever reads the log


def test_bench_cli_times_compile_last_and_keeps_its_numbers_when_a_part_fails(tmp_path, monkeypatch, capsys):
    # The step breakdown and compile both fail: each is recorded as its error, the rest is kept,
    # and compile is timed last, with everything else saved before it.
    from benchmarks import bench

    def broken(*a, **k):
        raise RuntimeError("profiler unavailable")

    out = tmp_path / "b.json"
    seen = {}
    real = bench.add_compiled

    def spy(res, *a, **k):
        seen["saved before"] = sorted(json.loads(out.read_text()))
        real(res, *a, **k)

    monkeypatch.setattr(bench, "step_breakdown", broken)
    monkeypatch.setattr(bench, "add_compiled", spy)
    _compile_fails(monkeypatch, "inductor crashed")
    assert main(["--cpu-check", "--breakdown-steps", "2", "--compile", "default", "--out", str(out)]) == 0
    assert {"seed_recipe", "labkit", "speedup", "breakdown"} <= set(seen["saved before"])
    assert "labkit_compiled" not in seen["saved before"]
    res = json.loads(out.read_text())
    assert res["breakdown"] == {"error": "RuntimeError: profiler unavailable"} and res["speedup"] > 0
    assert res["labkit_compiled"] == {"compile": "default", "error": "RuntimeError: inductor crashed"}
    assert "step breakdown failed: RuntimeError: profiler unavailable" in capsys.readouterr().out


def test_seed_recipe_is_reproducible_and_follows_the_decay(tiny_data):
    from labkit.train import evaluate

    def val_acc(cfg):
        _, model = seed_recipe(cfg, tiny_data, 2, CPU, workers=0)
        return evaluate(model, tiny_data.val_x, tiny_data.val_y, cfg)[0], model

    acc1, m1 = val_acc(_cfg(seed=3))
    acc2, m2 = val_acc(_cfg(seed=3))
    assert acc1 == acc2
    assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    # decay_rate changes the second epoch's step size, so the weights differ
    _, m3 = val_acc(_cfg(seed=3, decay_rate=0.1))
    assert not all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m3.state_dict().values(), strict=True))


def test_accuracy_check_compares_both_sides_and_reuses_the_store(tmp_path, tiny_data):
    store = RunStore(tmp_path / "runs")
    res = accuracy_check(_cfg(), tiny_data, epochs=1, seeds=2, device=CPU, workers=0, store=store, name="base")
    assert len(res["labkit_val_acc"]) == len(res["seed_recipe_val_acc"]) == 2
    assert all(0.0 <= v <= 1.0 for v in res["labkit_val_acc"] + res["seed_recipe_val_acc"])
    # labkit's side is the store's runs, trained there now
    runs = [store.find(_cfg(seed=s, epochs=1), "base") for s in (0, 1)]
    assert [r.summary["final_val_acc"] for r in runs] == res["labkit_val_acc"]
    assert not any("from the store" in s for s in res["labkit_runs"])
    d = res["difference"]
    assert d["labkit_minus_seed"] == pytest.approx(
        sum(res["labkit_val_acc"]) / 2 - sum(res["seed_recipe_val_acc"]) / 2
    )
    lo, hi = d["ci95"]
    assert lo <= d["labkit_minus_seed"] <= hi
    assert res["verdict"] == ("no difference shown (95% CI holds 0)" if lo <= 0 <= hi else "labkit differs from the seed recipe")
    again = accuracy_check(_cfg(), tiny_data, epochs=1, seeds=2, device=CPU, workers=0, store=store, name="base")
    assert again["labkit_val_acc"] == res["labkit_val_acc"] and all("from the store" in s for s in again["labkit_runs"])
    assert again["seed_recipe_val_acc"] == res["seed_recipe_val_acc"]  # the seed recipe is seeded too


def test_accuracy_check_with_one_seed_gives_no_interval(tiny_data):
    res = accuracy_check(_cfg(), tiny_data, epochs=1, seeds=1, device=CPU, workers=0)
    assert math.isnan(res["difference"]["ci95"][0]) and res["verdict"] == "too few seeds for an interval"
    with pytest.raises(ValueError, match="seeds >= 1"):
        accuracy_check(_cfg(), tiny_data, epochs=1, seeds=0, device=CPU)


def test_compare_accuracies_puts_the_difference_beside_run_to_run_noise():
    # The H200 lease of 2026-11-28 (benchmarks/results/h200-2026-11-28T2158-accuracy-bench.json).
    res = compare_accuracies([0.7720, 0.7750], [0.7684, 0.7827])
    assert res["difference"]["labkit_minus_seed"] == pytest.approx(-0.00205)
    assert res["difference"]["ci95"] == pytest.approx([-0.0789079, 0.0748079])  # as that lease recorded
    assert res["verdict"] == "no difference shown (95% CI holds 0)"
    # pooled SD of one run: sqrt((0.0015^2*2 + 0.00715^2*2) / 2), about 0.73 points
    assert res["noise"]["pooled_sd"] == pytest.approx(0.00731, abs=1e-5)
    assert res["noise"]["difference_within_it"] is True
    far = compare_accuracies([0.80, 0.801, 0.802], [0.77, 0.771, 0.772])
    assert far["verdict"] == "labkit differs from the seed recipe" and far["noise"]["difference_within_it"] is False
    one = compare_accuracies([0.8], [0.79])
    assert one["verdict"] == "too few seeds for an interval" and one["noise"]["difference_within_it"] is None
    lease = json.loads((Path(__file__).parents[1] / "benchmarks/results/h200-2026-11-28T2158-accuracy-bench.json").read_text())
    text = format_bench({**lease, "accuracy": {"epochs": 30, "seeds": 2, **res}})
    assert "|difference| 0.20 points <= the run-to-run SD of one run (pooled, 0.73 points): within run-to-run noise" in text


def test_bench_cli_cpu_check_with_the_accuracy_check(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["--cpu-check", "--accuracy-epochs", "1", "--accuracy-seeds", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["accuracy"]["seeds"] == 2 and res["accuracy"]["epochs"] == 1
    assert res["command"].startswith("python -m benchmarks.bench --cpu-check")
    assert "not a speed figure" in res["note"]
    out = capsys.readouterr().out
    assert "val acc after 1 epochs, 2 seed(s)" in out
    # data it generated itself, not a suspect copy of CIFAR-10 ("md5 differs for 6 of 6 batches")
    assert res["data"].startswith("labkit's synthetic CIFAR-format data (seed 0, 128 images") and "md5" not in res["data"]
    assert f"data: {res['data']}" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--accuracy-epochs", "-1"], "--accuracy-epochs must be >= 0"),
        (["--accuracy-epochs", "2", "--accuracy-seeds", "1"], "--accuracy-seeds >= 2"),
        (["--epochs", "1"], "--epochs must be >= 2"),
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--probe-lanes", "2", "0"], "--probe-lanes takes lane counts >= 1"),
        (["--accuracy-runs", "runs"], "--accuracy-runs needs --accuracy-epochs"),
        (["--breakdown-steps", "-1"], "--breakdown-steps must be >= 0"),
        (["--compile", "turbo"], "compile must be one of"),
    ],
)
def test_bench_cli_rejects_bad_accuracy_options_at_once(tmp_path, capsys, extra, message):
    assert main(["--cpu-check", "--out", str(tmp_path / "b.json"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()  # refused before any work


class _Started(Exception):
    pass


def test_bench_without_a_gpu_refuses_the_full_benchmark_unless_allowed(tmp_path, capsys, monkeypatch):
    # Without --cpu-check it would time the width-64 net on all 40,000 images: hours on a CPU.
    from benchmarks import bench

    def started(*a, **kw):
        raise _Started

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "load_cifar10", started)
    monkeypatch.setattr(bench, "run_bench", started)
    argv = ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "b.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "--cpu-check" in err and "--allow-cpu" in err
    assert not any(tmp_path.iterdir())  # refused before any work
    with pytest.raises(_Started):  # asked for: it goes ahead
        main([*argv, "--allow-cpu"])


def test_step_breakdown_sums_op_time_by_kind(tiny_data):
    k = step_breakdown(_cfg(), tiny_data, steps=2, warmup=1)
    kinds = k["kinds"]
    assert sum(v["ms_per_step"] for v in kinds.values()) == pytest.approx(k["op_ms_per_step"])
    assert sum(v["share"] for v in kinds.values()) == pytest.approx(1.0)
    # a ResNet step spends most of its op time in convolutions and BatchNorm
    assert kinds["convolution"]["share"] + kinds["batch norm"]["share"] > 0.5
    assert k["top_ops"][0]["op"].startswith("aten::") and k["top_ops"][0]["calls_per_step"] >= 1
    assert k["time"] == "self CPU time of aten ops" and k["batch_size"] == 64
    with pytest.raises(ValueError, match="steps >= 1"):
        step_breakdown(_cfg(), tiny_data, steps=0)


@pytest.mark.parametrize(
    "op, kind",
    [
        ("aten::cudnn_convolution", "convolution"),
        ("aten::convolution_backward", "convolution"),
        ("aten::native_batch_norm_backward", "batch norm"),
        ("aten::cudnn_batch_norm", "batch norm"),
        ("aten::_fused_adam_", "optimizer"),
        ("aten::threshold_backward", "relu, add, other elementwise"),
        ("aten::add_", "relu, add, other elementwise"),
        ("aten::_log_softmax", "loss and softmax"),
        ("aten::index", "data (crop, flip)"),
        ("aten::_to_copy", "casts and copies (autocast, layout)"),
        ("aten::empty", "other"),
    ],
)
def test_op_kinds(op, kind):
    assert op_kind(op) == kind


def test_accuracy_check_reads_the_labs_own_baseline_runs(tmp_path, monkeypatch, tiny_data):
    """`python -m benchmarks.bench --accuracy-epochs 30 --accuracy-seeds 3 --accuracy-runs report/runs` asks its store
    for the full plan's ablation-baseline runs, by their ids, and trains none of its own.

    Through the CLI (the config and run name it passes are what must match the plan), with the
    seed recipe, labkit's train and the timing stubbed, and a store that records what is asked."""
    import types

    from benchmarks import bench
    from labkit.lab import plan

    planned = [RunStore.run_id(c, n) for _, n, c in plan("full", 3) if n == "ablation-baseline"]
    asked, seed_side = [], []

    class SpyStore(RunStore):
        def find(self, cfg, name):
            return types.SimpleNamespace(finished=True)

        def get(self, cfg, name, data, **kw):
            asked.append(self.run_id(cfg, name))
            return types.SimpleNamespace(id=self.run_id(cfg, name), summary={"final_val_acc": 0.78})

    def seed_recipe(cfg, data, epochs, device, workers=8):
        seed_side.append((cfg, epochs))
        return [1.0] * epochs, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10))

    def trained(*a, **k):
        raise AssertionError("labkit's side was trained, not read from the store")

    lease = json.loads((Path(__file__).parents[1] / "benchmarks/results/h200-2026-11-28T2158-accuracy-bench.json").read_text())
    monkeypatch.setattr(bench, "RunStore", SpyStore)
    monkeypatch.setattr(bench, "seed_recipe", seed_recipe)
    monkeypatch.setattr(bench, "train", trained)
    monkeypatch.setattr(bench, "load_cifar10", lambda *a, **k: tiny_data)
    monkeypatch.setattr(bench, "run_bench", lambda *a, **kw: {key: v for key, v in lease.items() if key != "accuracy"})
    out = tmp_path / "b.json"
    argv = ["--allow-cpu", "--data-dir", str(tmp_path), "--accuracy-epochs", "30", "--accuracy-seeds", "3"]
    assert main([*argv, "--accuracy-runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert len(planned) == 3 and asked == planned
    assert json.loads(out.read_text())["accuracy"]["labkit_runs"] == [f"{rid} (from the store)" for rid in planned]
    # the seed recipe's side is the same configuration: the seed's, 30 epochs, seeds 0..2
    assert [(c.identity(), e) for c, e in seed_side] == [(PAPER.replace(seed=s, epochs=30).identity(), 30) for s in range(3)]


def test_lanes_probe_reports_a_failed_lane_and_leaves_none_running(monkeypatch, tiny_data):
    # The probe's CUDA streams stubbed out: what is checked is its thread handling.
    import contextlib
    import time

    from benchmarks import bench

    class _Stream:
        def synchronize(self):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _Stream())
    finished = []

    def fake_train(cfg, data, on_epoch=None, **kw):  # the probe holds the GPU gate shared around it, as a sweep does
        try:
            if cfg.seed == 1:
                raise MemoryError("out of memory in lane 1")
            time.sleep(0.2)  # lane 0 is still in its warm-up epoch when lane 1 fails
            on_epoch([{"epoch": 1}])
        finally:
            time.sleep(0.2)
            finished.append(cfg.seed)

    monkeypatch.setattr(bench, "train", fake_train)
    with pytest.raises(RuntimeError, match="lane 1: MemoryError: out of memory in lane 1"):
        bench.lanes_probe(PAPER.replace(seed=0), tiny_data, lanes=2)
    assert sorted(finished) == [0, 1]  # both lanes ended before the probe returned


def test_accuracy_runs_trained_on_other_data_are_refused_before_any_timing(tmp_path, synth_root, monkeypatch, capsys):
    """The accuracy check would set the seed recipe on these data beside baseline runs of another copy."""
    from conftest import recorded_run

    from benchmarks import bench
    from labkit.data import load_cifar10
    from labkit.synthetic import make_synthetic_cifar10

    store = tmp_path / "runs"
    recorded_run(store, load_cifar10(synth_root, allow_download=False).source)
    other = make_synthetic_cifar10(tmp_path / "other", per_batch=20, seed=7).parent

    class Timed(BaseException):  # not an Exception: main() would report one as an error
        pass

    def timed(*a, **k):
        raise Timed

    monkeypatch.setattr(bench, "run_bench", timed)
    argv = ["--allow-cpu", "--data-dir", str(other), "--accuracy-epochs", "1", "--accuracy-runs", str(store)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"1 run(s) in {store} (finished, or begun) were trained on other data" in err
    assert err.rstrip().endswith("give --data-dir the data they were trained on, or another --accuracy-runs store")
    with pytest.raises(Timed):  # the same data: it goes on to time
        main([*argv[:2], str(synth_root), *argv[3:]])


# -- choosing lanes / compile from a benchmark ----------------------------------------------



def _bench(plain=(2.0, 1.0), compiled=None, probes=(), step_mode="cuda_graph"):
    b = {
        "train_images_per_epoch": 40000,
        "train_gflop_per_image": 5.0,
        "labkit": {"epoch_seconds": [plain[0], plain[1], plain[1]], "steady_epoch_seconds": plain[1], "step_mode": "cuda_graph"},
    }
    if compiled:
        first, steady = compiled
        b["labkit_compiled"] = {"compile": "default", "epoch_seconds": [first, steady, steady],
                                "steady_epoch_seconds": steady, "step_mode": step_mode}
    if probes:
        b["lanes"] = [{"lanes": k, "total_images_per_s": v} for k, v in probes]
    return b


def test_bench_without_options_gives_one_plain_lane():
    e = execution_from_bench(_bench())
    assert (e["lanes"], e["compile"]) == (1, "")
    assert e["rate_gflops"] == pytest.approx(40000 / 1.0 * 5.0)


def test_lanes_win_when_the_probe_shows_a_gain():
    e = execution_from_bench(_bench(probes=[(1, 1000.0), (2, 1300.0), (3, 1250.0)]))
    assert (e["lanes"], e["compile"]) == (2, "")
    assert e["rate_gflops"] == pytest.approx(40000 * 1.3 / 2 * 5.0)  # one lane's share
    assert "2 lanes" in e["why"]


def test_compile_wins_when_its_warm_up_is_repaid():
    # 0.6 s steady against 1.0, 20 s extra warm-up over 30 epochs: 1/(0.6+0.67) = 0.79x -> loses
    assert execution_from_bench(_bench(compiled=(21.6, 0.6)), epochs=30)["compile"] == ""
    # 5 s extra warm-up: 1/(0.6+0.17) = 1.3x -> wins, and beats 2 lanes at 1.2x
    e = execution_from_bench(_bench(compiled=(6.6, 0.6), probes=[(1, 1000.0), (2, 1200.0)]), epochs=30)
    assert (e["lanes"], e["compile"]) == (1, "default")
    assert e["rate_gflops"] == pytest.approx(40000 / 0.6 * 5.0)


def test_small_gains_and_other_step_modes_are_not_taken():
    assert execution_from_bench(_bench(probes=[(1, 1000.0), (2, 1050.0)]))["lanes"] == 1
    # a compiled step that fell back to eager is another thing than the graphed step: ignored
    assert execution_from_bench(_bench(compiled=(1.1, 0.5), step_mode="eager"))["compile"] == ""
    # probe lanes that failed are ignored
    e = execution_from_bench({**_bench(probes=[(1, 1000.0)]), "lanes": [{"lanes": 1, "total_images_per_s": 1.0},
                                                                         {"lanes": 2, "error": "boom"}]})
    assert e["lanes"] == 1
    # a compile that failed in the bench (its record holds the error, no times) is not chosen
    e = execution_from_bench({**_bench(), "labkit_compiled": {"compile": "default", "error": "BackendCompilerFailed: x"}})
    assert (e["lanes"], e["compile"]) == (1, "")


def test_a_file_that_is_not_a_bench_result_is_named():
    with pytest.raises(ConfigError, match="not a `python -m benchmarks.bench` result"):
        execution_from_bench({"train_images_per_epoch": 1, "train_gflop_per_image": 1})


def test_sweep_options_print_what_the_bench_chose(tmp_path, capsys):
    (tmp_path / "b.json").write_text(json.dumps(_bench(probes=[(1, 1000.0), (2, 1300.0)])))
    assert main(["--sweep-options", str(tmp_path / "b.json")]) == 0
    out, err = capsys.readouterr()
    assert out.split() == ["--lanes", "2", "--rate-guess", f"{40000 * 1.3 / 2 * 5.0:.1f}"]
    assert "2 lanes: 1.30x one lane" in err
    assert main(["--sweep-options", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: cannot read it" in capsys.readouterr().err
