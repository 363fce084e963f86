"""Divergence and out-of-memory: a NaN or infinite loss stops the run with a clear message
and keeps the last good checkpoint (the run resumes from it once the cause is gone); a CUDA
out-of-memory error says which batch size failed. Faults are injected on the CPU."""

from __future__ import annotations

import importlib

import pytest
import torch

from labkit.checkpoint import load_checkpoint
from labkit.cli import main
from labkit.model import ResNet
from labkit.runs import RunStore
from labkit.train import DivergenceError

T = importlib.import_module("labkit.train")


def _poison_loss(monkeypatch, value: float, after_calls: int) -> None:
    """The training loss becomes `value` from call `after_calls` + 1 on."""
    real = torch.nn.CrossEntropyLoss.forward
    calls = {"n": 0}

    def poisoned(self, out, y):
        calls["n"] += 1
        loss = real(self, out, y)
        return loss * value if calls["n"] > after_calls else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)


@pytest.mark.parametrize("value, shown", [(float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "-inf")])
def test_bad_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, synth_data, tiny_config, monkeypatch, value, shown):
    cfg = tiny_config(epochs=3, train_subset=128, batch_size=64)  # 2 steps per epoch
    _poison_loss(monkeypatch, value, after_calls=3)  # epoch 1 fine, epoch 2 poisoned at its 2nd step
    store = RunStore(tmp_path)
    with pytest.raises(DivergenceError) as e:
        store.get(cfg, "r", synth_data, progress=False, log=None)
    d = store.path(store.run_id(cfg, "r"))
    msg = str(e.value)
    assert f"training loss became {shown} in epoch 2" in msg
    assert "last good checkpoint (after epoch 1)" in msg and str(d / "checkpoint.pt") in msg
    state = load_checkpoint(d / "checkpoint.pt")
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (d / "summary.json").exists()
    assert len(store.load(store.run_id(cfg, "r")).history) == 1

    # The cause removed, the same call resumes from that checkpoint and finishes.
    monkeypatch.undo()
    logs: list[str] = []
    run = store.get(cfg, "r", synth_data, progress=False, log=logs.append)
    assert run.finished and any("at epoch 1/3" in ln for ln in logs)


def test_divergence_in_the_first_epoch_says_there_is_no_checkpoint(tmp_path, synth_data, tiny_config, monkeypatch):
    _poison_loss(monkeypatch, float("nan"), after_calls=0)
    with pytest.raises(DivergenceError) as e:
        T.train(tiny_config(epochs=2, train_subset=128, batch_size=64), synth_data, run_dir=tmp_path, progress=False, log=None)
    assert "in epoch 1" in str(e.value) and "no checkpoint" in str(e.value)
    assert not (tmp_path / "checkpoint.pt").exists()


CLI = ["train", "--preset", "seed", "--epochs", "3", "--synthetic", "--synthetic-size", "20", "--set", "width=8",
       "--set", "lays=[1,1,1,1]", "--set", "batch_size=32", "--set", "device=cpu", "--set", "channels_last=False"]


def test_cli_divergence_exits_1_with_the_message(tmp_path, capsys, monkeypatch):
    _poison_loss(monkeypatch, float("nan"), after_calls=3)  # 80 images / 32: 3 steps per epoch
    argv = [*CLI, "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: training loss became nan in epoch 2") and "checkpoint (after epoch 1) is kept" in err
    (d,) = (tmp_path / "runs").iterdir()
    assert load_checkpoint(d / "checkpoint.pt")["epoch"] == 0 and not (d / "summary.json").exists()


def _oom(*a, **kw):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")


def test_out_of_memory_in_a_step_names_the_batch_size(tmp_path, synth_data, tiny_config, monkeypatch):
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", _oom)
    with pytest.raises(torch.cuda.OutOfMemoryError) as e:
        T.train(tiny_config(epochs=1, train_subset=128, batch_size=64), synth_data, run_dir=tmp_path, progress=False, log=None)
    assert "batch_size=64" in str(e.value) and "lower batch_size" in str(e.value)


def test_out_of_memory_in_evaluation_names_its_batch_size(synth_data, tiny_config, monkeypatch):
    real = ResNet.forward

    def forward(self, x):
        if not self.training:
            _oom()
        return real(self, x)

    monkeypatch.setattr(ResNet, "forward", forward)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="evaluation at batch size 1000"):
        T.train(tiny_config(epochs=1, train_subset=128, batch_size=64), synth_data, progress=False, log=None)


def test_cli_out_of_memory_exits_1_naming_the_batch_size(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", _oom)
    argv = [*CLI, "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: CUDA out of memory at batch_size=32") and len(err.strip().splitlines()) == 1
