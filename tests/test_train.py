"""labkit.train on a CPU: it learns, resumes exactly, schedules, diverges loudly, loads safely."""

from __future__ import annotations

import importlib
import itertools
import math
import os
import shutil

import pytest
import torch

from labkit.checkpoint import CheckpointError, evaluated_weights, load_checkpoint, save_checkpoint
from labkit.config import ConfigError, TrainConfig
from labkit.step import Stepper, _capture_error
from labkit.train import DivergenceError, lr_at, train

# labkit/__init__.py exports the function `train`, which hides the submodule of that name.
T = importlib.import_module("labkit.train")
E = importlib.import_module("labkit.evaluate")
P = importlib.import_module("labkit.progress")

TIMING = ("seconds", "images_per_s")


class _Crash(Exception):
    pass


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


def _strip_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


def test_learns(synth_data, tiny_config):
    cfg = tiny_config(epochs=3)
    r = train(cfg, synth_data, progress=False, log=None)
    assert [row["epoch"] for row in r.history] == [1, 2, 3]
    assert r.history[-1]["val_acc"] > 0.5  # chance is 0.1
    assert r.summary["test_acc"] > 0.5
    assert r.history[-1]["loss_mean"] < r.history[0]["loss_mean"]
    assert r.summary["train_images"] == 800 and r.summary["selected_epoch"] == 3
    assert r.summary["device"] == "cpu" and r.summary["precision"] == "fp32"
    assert r.summary["data"]["official"] is False
    # the seed's figure is the sum of per-batch mean losses: 800 / 32 = 25 steps per epoch
    row = r.history[0]
    assert row["loss_sum"] == pytest.approx(row["loss_mean"] * 25)


def test_seed_network_with_softmax_head_trains(synth_data, tiny_config):
    # both defects on, channels_last on (the default execution path)
    cfg = tiny_config(
        seed_extra_block=True, softmax_head=True, epochs=1, channels_last=True, train_subset=256, batch_size=64
    )
    r = train(cfg, synth_data, progress=False, log=None)
    # softmax applied twice: the per-batch loss cannot go below about 1.46
    assert r.history[0]["loss_mean"] > 1.46
    assert math.isfinite(r.summary["test_acc"])


@pytest.mark.parametrize("schedule, ema", [("exp", 0.0), ("cosine", 0.9)])
def test_resume_is_exact(synth_data, tiny_config, tmp_path, schedule, ema):
    # dropout, augmentation and cutout on, so resuming must also replay the random streams;
    # with ema, the moving average must come back from the checkpoint too
    cfg = tiny_config(
        epochs=3, schedule=schedule, warmup_epochs=1.0, dropout=0.3, cutout=8, train_subset=256, batch_size=64, ema=ema
    )
    (tmp_path / "a").mkdir()  # train() does not create its run_dir
    a = train(cfg, synth_data, run_dir=tmp_path / "a", progress=False, log=None)

    def crash_after_two(history):
        if len(history) == 2:
            raise _Crash

    b_dir = tmp_path / "b"
    b_dir.mkdir()
    with pytest.raises(_Crash):
        train(cfg, synth_data, run_dir=b_dir, progress=False, log=None, on_epoch=crash_after_two)
    state = load_checkpoint(b_dir / "checkpoint.pt")
    assert state["epoch"] == 1  # 0-based: two epochs done
    assert "rng" not in state  # a resumed epoch reseeds its generators: no RNG state is kept
    # Older checkpoints hold one ("rng"), never read: they resume all the same.
    save_checkpoint(b_dir / "checkpoint.pt", {**state, "rng": {"cpu": torch.get_rng_state()}})

    logs, epochs_run = [], []
    b = train(
        cfg, synth_data, run_dir=b_dir, progress=False, log=logs.append, on_epoch=lambda h: epochs_run.append(len(h))
    )
    assert epochs_run == [3]  # only the third epoch was trained again
    assert any("resumed" in line and "epoch 2/3" in line for line in logs)
    _same_state(a.model.state_dict(), b.model.state_dict())
    assert _strip_timing(a.history) == _strip_timing(b.history)
    assert a.summary["test_acc"] == b.summary["test_acc"]
    assert a.summary["test_loss"] == b.summary["test_loss"]
    _same_state(
        load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"], load_checkpoint(b_dir / "checkpoint.pt")["model"]
    )


def test_deterministic_and_seeded(synth_data, tiny_config):
    cfg = tiny_config(epochs=1, train_subset=128, batch_size=64)
    a = train(cfg, synth_data, progress=False, log=None)
    b = train(cfg, synth_data, progress=False, log=None)
    c = train(cfg.replace(seed=1), synth_data, progress=False, log=None)
    _same_state(a.model.state_dict(), b.model.state_dict())
    assert not torch.equal(a.model.fc.weight, c.model.fc.weight)


def test_dropout_run_beside_another_draws_its_own_masks(synth_data, tiny_config):
    # Sweep lanes train runs in threads of one process (as the sweep runs them: the GPU gate
    # held shared, its hooks in the loop). Dropout must draw from the run's own generator: if
    # it drew from torch's global one, each lane's reseeding and draws would change the
    # other's masks, and a run trained beside another would not be the run alone.
    import threading

    from labkit.scale.gate import GPU_GATE, LANE_HOOKS

    cfg = tiny_config(epochs=2, dropout=0.5, train_subset=256, batch_size=32)
    alone = train(cfg, synth_data, progress=False, log=None)
    results: dict[int, object] = {}
    start = threading.Barrier(2)

    def lane(i: int) -> None:
        start.wait()
        with GPU_GATE.shared():
            results[i] = train(cfg.replace(seed=cfg.seed + i), synth_data, progress=False, log=None, hooks=LANE_HOOKS)

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _same_state(alone.model.state_dict(), results[0].model.state_dict())
    assert _strip_timing(alone.history) == _strip_timing(results[0].history)
    other = train(cfg.replace(seed=cfg.seed + 1), synth_data, progress=False, log=None)
    _same_state(other.model.state_dict(), results[1].model.state_dict())


def test_dropout_masks_are_those_of_torch_dropout_on_a_cpu():
    # The run's own generator draws exactly what nn.Dropout drew from a global generator
    # seeded alike, so CPU runs trained before this change are reproduced bit for bit.
    from labkit.model import Dropout

    x = torch.randn(64, 512)
    torch.manual_seed(7)
    want = torch.nn.Dropout(0.4).train()(x)
    g = torch.Generator().manual_seed(7)
    d = Dropout(0.4).train()
    d.generator = g
    assert torch.equal(d(x), want)
    assert torch.equal(d.eval()(x), x)
    assert Dropout(0.4).state_dict() == {}  # no state: checkpoints keep their keys
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\)"):
            Dropout(bad)


def test_dropout_redraw_draws_what_the_forward_pass_would():
    # A graphed step multiplies by a buffer that redraw() fills before each replay: it must
    # hold the mask the eager forward pass draws from the same generator state.
    from labkit.model import Dropout

    x = torch.randn(32, 64)
    d = Dropout(0.3).train()
    d.generator = torch.Generator().manual_seed(5)
    want = [d(x) for _ in range(2)]
    d.generator.manual_seed(5)
    d.static_keep = torch.empty_like(x)
    for w in want:
        d.redraw()
        assert torch.equal(x * d.static_keep, w)
    with pytest.raises(RuntimeError, match="needs a mask buffer"):
        Dropout(0.3).redraw()


def test_which_steps_are_graphed():
    # Decided before any CUDA work, so it can be checked on a CPU.
    def wants(**changes) -> bool:
        cfg = TrainConfig(**changes)
        return Stepper(torch.nn.Linear(2, 2), None, cfg, torch.device("cuda"), None).want_graph

    assert wants() and wants(dropout=0.4) and wants(compile="default")
    assert not wants(dropout=0.4, compile="default")  # compile traces dropout's eager branch
    assert not wants(cuda_graphs=False)
    assert not Stepper(torch.nn.Linear(2, 2), None, TrainConfig(), torch.device("cpu"), None).want_graph


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="torch.compile on a CPU needs a C++ compiler"
)
def test_compiled_step_computes_what_the_eager_step_does(synth_data, tiny_config):
    # torch.compile is an execution setting: it changes how the step runs, not what it
    # computes (nor the run's id). Inductor on the CPU: the compiled net draws the same dropout masks from the run's own
    # generator (a graph break keeps the draw eager) and computes the same loss. One step per
    # epoch: the first step's loss is the same function of the same weights (1e-5); after an
    # Adam update, elements whose gradient is near 0 may move by +-lr on either side, so the
    # second epoch only stays close.
    cfg = tiny_config(epochs=2, dropout=0.5, train_subset=32, batch_size=32)
    eager = train(cfg, synth_data, progress=False, log=None)
    counters = importlib.import_module("torch._dynamo.utils").counters
    counters.clear()
    compiled = train(cfg.replace(compile="default"), synth_data, progress=False, log=None)
    assert counters["stats"]["unique_graphs"] > 0  # dynamo did trace the net
    # a sweep's architectures and batch sizes must not run out of recompiles (dynamo's default: 8)
    assert importlib.import_module("torch._dynamo.config").recompile_limit >= T.COMPILE_RECOMPILE_LIMIT
    assert compiled.summary["compile"] == "default" and eager.summary["compile"] == "off"
    assert compiled.config.short_hash() == eager.config.short_hash()  # an execution setting
    (e1, e2), (c1, c2) = ([r["loss_sum"] for r in r.history] for r in (eager, compiled))
    assert c1 == pytest.approx(e1, rel=1e-5)
    assert c2 == pytest.approx(e2, rel=1e-3)


def test_cutout_is_seeded_and_changes_training(synth_data, tiny_config):
    cfg = tiny_config(epochs=1, train_subset=128, batch_size=64)
    plain = train(cfg, synth_data, progress=False, log=None)
    a = train(cfg.replace(cutout=12), synth_data, progress=False, log=None)
    b = train(cfg.replace(cutout=12), synth_data, progress=False, log=None)
    _same_state(a.model.state_dict(), b.model.state_dict())
    assert not torch.equal(a.model.fc.weight, plain.model.fc.weight)


def test_tta_views_average_as_documented():
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    x = torch.randn(6, 3, 32, 32)
    net(x)  # materialise the lazy layer
    tta = E._tta_logits
    plain, flip = TrainConfig(), TrainConfig(tta_flip=True)
    assert torch.equal(tta(net, x, plain), net(x))
    both = lambda v: (net(v) + net(v.flip(3))) / 2  # noqa: E731
    assert torch.allclose(tta(net, x, flip), both(x))
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    a, b = padded[:, :, :32, :32], padded[:, :, 4:36, 4:36]
    want = (both(x) + (both(a) + both(b)) / 2) / 2
    assert torch.allclose(tta(net, x, flip.replace(tta_translate=2)), want, atol=1e-6)
    # the shifted copies really are shifted: a is x moved 2 pixels down-right
    assert torch.equal(a[:, :, 2:, 2:], x[:, :, :30, :30])


def test_lr_exp():
    cfg = TrainConfig(lr=1e-3, decay_rate=0.9, schedule="exp")
    assert lr_at(cfg, 0, 0, 10) == pytest.approx(1e-3)
    assert lr_at(cfg, 0, 9, 10) == pytest.approx(1e-3)  # constant within an epoch
    assert lr_at(cfg, 1, 0, 10) == pytest.approx(9e-4)
    assert lr_at(cfg, 5, 3, 10) == pytest.approx(1e-3 * 0.9**5)
    assert lr_at(cfg.replace(decay_rate=1.0), 29, 0, 10) == pytest.approx(1e-3)
    # lr_restart: the decay starts over, as the original's restarts from checkpoints did
    again = cfg.replace(epochs=60, lr_restart=30)
    assert [lr_at(again, e, 0, 10) for e in (0, 29, 30, 31, 59)] == pytest.approx([1e-3, 1e-3 * 0.9**29, 1e-3, 9e-4, 1e-3 * 0.9**29])
    assert cfg.replace(epochs=60, lr_restart=30).short_hash() != cfg.replace(epochs=60).short_hash()
    assert TrainConfig(lr_restart=0).short_hash() == TrainConfig().short_hash()  # runs recorded before it keep their ids
    with pytest.raises(ConfigError, match="lr_restart is for schedule 'exp' only"):
        TrainConfig(optimizer="sgd", lr=0.1, schedule="linear", lr_restart=30)


def test_lr_linear_with_warmup():
    cfg = TrainConfig(optimizer="sgd", lr=0.1, schedule="linear", epochs=10, warmup_epochs=2.0)
    spe = 10
    lrs = [lr_at(cfg, e, s, spe) for e in range(10) for s in range(spe)]
    assert lrs[0] == pytest.approx(0.1 * 0.1 / 2)  # first step of warm-up: 1/20 of the peak
    assert lrs[19] == pytest.approx(0.1)  # the last warm-up step reaches the peak
    assert lrs[20] == pytest.approx(0.1)
    assert all(x < y for x, y in itertools.pairwise(lrs[:20]))  # rises during warm-up
    assert all(x > y for x, y in itertools.pairwise(lrs[20:]))  # then falls
    assert lr_at(cfg, 6, 0, spe) == pytest.approx(0.05)  # halfway through the decay
    assert 0 < lrs[-1] < 0.002
    # without warm-up it starts at the peak
    assert lr_at(cfg.replace(warmup_epochs=0.0), 0, 0, spe) == pytest.approx(0.1)


def test_lr_cosine():
    cfg = TrainConfig(optimizer="sgd", lr=0.2, schedule="cosine", epochs=10)
    assert lr_at(cfg, 0, 0, 4) == pytest.approx(0.2)
    assert lr_at(cfg, 5, 0, 4) == pytest.approx(0.1)
    assert lr_at(cfg, 7, 2, 4) == pytest.approx(0.1 * (1 + math.cos(math.pi * 7.5 / 10)))
    lrs = [lr_at(cfg, e, s, 4) for e in range(10) for s in range(4)]
    assert all(x > y for x, y in itertools.pairwise(lrs))
    w = cfg.replace(warmup_epochs=2.0)
    assert lr_at(w, 0, 0, 4) == pytest.approx(0.2 / 8)
    assert lr_at(w, 2, 0, 4) == pytest.approx(0.2)
    assert lr_at(w, 6, 0, 4) == pytest.approx(0.1)


def test_lr_reaches_the_optimizer(synth_data, tiny_config, monkeypatch):
    seen = []
    real_step = torch.optim.Adam.step

    def spy(self, *a, **kw):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    cfg = tiny_config(epochs=2, lr=1e-3, decay_rate=0.5, train_subset=128, batch_size=64)
    r = train(cfg, synth_data, progress=False, log=None)
    assert seen == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4])
    assert [row["lr"] for row in r.history] == pytest.approx([1e-3, 5e-4])


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_lr_reaches_the_optimizer_at_every_step(synth_data, tiny_config, monkeypatch, schedule):
    # Per-step schedules (cosine; linear, the modern preset's) with warm-up: the lr changes
    # at every step, so an lr set once per epoch (lr_at(cfg, epoch, 0, ...)) differs.
    seen = []
    real_step = torch.optim.SGD.step

    def spy(self, *a, **kw):
        seen.append([g["lr"] for g in self.param_groups])
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    cfg = tiny_config(
        optimizer="sgd", lr=0.05, schedule=schedule, warmup_epochs=1.0, epochs=2, train_subset=128, batch_size=32
    )
    r = train(cfg, synth_data, progress=False, log=None)
    want = [lr_at(cfg, e, s, 4) for e in range(2) for s in range(4)]  # 128 / 32 = 4 steps an epoch
    assert len(set(want[:4])) == len(set(want[4:])) == 4  # within an epoch, every step its own lr
    assert [lrs[0] for lrs in seen] == pytest.approx(want)
    assert all(len(set(lrs)) == 1 for lrs in seen)  # every parameter group alike
    assert [row["lr"] for row in r.history] == pytest.approx([want[0], want[4]])  # each epoch's first


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_weight_decay_reaches_the_optimizer_for_every_parameter(synth_data, tiny_config, monkeypatch, optimizer):
    # labkit applies weight decay as torch.optim does, to every parameter (BatchNorm's and the
    # biases too: make_optimizer makes no group without it).
    opt_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    seen = []
    real_step = opt_cls.step

    def spy(self, *a, **kw):
        seen.append([(g["weight_decay"], [id(p) for p in g["params"]]) for g in self.param_groups])
        return real_step(self, *a, **kw)

    monkeypatch.setattr(opt_cls, "step", spy)
    cfg = tiny_config(optimizer=optimizer, lr=1e-2, weight_decay=5e-3, epochs=1, train_subset=64, batch_size=32)
    r = train(cfg, synth_data, progress=False, log=None)
    assert len(seen) == 2
    every = sorted(id(p) for p in r.model.parameters())
    for groups in seen:
        assert all(wd == 5e-3 for wd, _ in groups)
        assert sorted(i for _, ids in groups for i in ids) == every
    # and it changes what is trained: without it, other weights
    plain = train(cfg.replace(weight_decay=0.0), synth_data, progress=False, log=None)
    assert not torch.equal(plain.model.fc.weight, r.model.fc.weight)


def test_label_smoothing_reaches_the_training_loss(synth_data, tiny_config, monkeypatch):
    import torch.nn.functional as F

    real = torch.nn.CrossEntropyLoss.forward
    losses = []

    def spy(self, out, y):
        loss = real(self, out, y)
        losses.append((loss.detach(), F.cross_entropy(out.detach(), y, label_smoothing=0.2)))
        return loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", spy)
    cfg = tiny_config(label_smoothing=0.2, epochs=1, train_subset=64, batch_size=32)
    r = train(cfg, synth_data, progress=False, log=None)
    assert len(losses) == 2  # the loss of every training step
    for got, want in losses:
        assert torch.allclose(got, want, rtol=1e-6, atol=0)
    assert r.history[0]["loss_sum"] == pytest.approx(sum(float(got) for got, _ in losses), rel=1e-6)


def test_divergence(synth_data, tiny_config, tmp_path):
    cfg = tiny_config(lr=1e30, epochs=2, train_subset=128, batch_size=64)
    with pytest.raises(DivergenceError, match="nan|inf"):
        train(cfg, synth_data, run_dir=tmp_path, progress=False, log=None)
    assert not (tmp_path / "checkpoint.pt").exists()  # nothing diverged was saved


def test_divergence_keeps_last_good_checkpoint(synth_data, tiny_config, tmp_path, monkeypatch):
    # A loss that turns NaN in the second epoch: the first epoch's checkpoint stays.
    real = torch.nn.CrossEntropyLoss.forward
    calls = {"n": 0}

    def poisoned(self, out, y):
        calls["n"] += 1
        loss = real(self, out, y)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    cfg = tiny_config(epochs=3, train_subset=128, batch_size=64)  # 2 steps per epoch
    with pytest.raises(DivergenceError) as e:
        train(cfg, synth_data, run_dir=tmp_path, progress=False, log=None)
    assert "checkpoint" in str(e.value)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 0


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_checkpoint_with_code_is_refused(tmp_path, synth_data, tiny_config):
    target = tmp_path / "PWNED"
    path = tmp_path / "run" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save({"model": _Evil(target), "epoch": 0}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not target.exists()
    # train() resuming from that folder refuses it too, without running it
    with pytest.raises(CheckpointError):
        train(tiny_config(epochs=1), synth_data, run_dir=path.parent, progress=False, log=None)
    assert not target.exists()


def test_checkpoint_truncated_missing_or_foreign(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.randn(100, 100)}, "epoch": 3})
    assert load_checkpoint(good)["epoch"] == 3
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file
    raw = good.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a labkit checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pt")


def _scripted_evaluate(monkeypatch, val_accs, val_len):
    """Replace evaluate: validation calls return `val_accs` in turn; record the weights seen."""
    real = T.evaluate
    seen = {"val": [], "test": []}
    it = iter(val_accs)

    def fake(model, x, y, cfg, **kw):
        acc, loss = real(model, x, y, cfg, **kw)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        if len(y) == val_len:
            seen["val"].append(state)
            return next(it), loss
        seen["test"].append(state)
        return acc, loss

    monkeypatch.setattr(T, "evaluate", fake)
    return seen


def test_best_val_selection(tiny_data, tiny_config, monkeypatch):
    seen = _scripted_evaluate(monkeypatch, [0.3, 0.9, 0.5], val_len=len(tiny_data.val_y))
    cfg = tiny_config(epochs=3, select="best_val", batch_size=64)
    r = train(cfg, tiny_data, progress=False, log=None)
    assert r.summary["selected_epoch"] == 2
    assert r.summary["best_val_acc"] == 0.9 and r.summary["final_val_acc"] == 0.5
    assert len(seen["val"]) == 3 and len(seen["test"]) == 1
    _same_state(seen["test"][0], seen["val"][1])  # tested with epoch 2's weights
    _same_state(r.model.state_dict(), seen["val"][2])  # and the model returned is the last one
    assert not torch.equal(seen["val"][1]["fc.weight"], seen["val"][2]["fc.weight"])


def test_last_selection(tiny_data, tiny_config, monkeypatch):
    seen = _scripted_evaluate(monkeypatch, [0.3, 0.9, 0.5], val_len=len(tiny_data.val_y))
    r = train(tiny_config(epochs=3, batch_size=64), tiny_data, progress=False, log=None)
    assert r.summary["selected_epoch"] == 3
    _same_state(seen["test"][0], seen["val"][2])


def test_best_val_survives_resume(tiny_data, tiny_config, monkeypatch, tmp_path):
    seen = _scripted_evaluate(monkeypatch, [0.3, 0.9, 0.5], val_len=len(tiny_data.val_y))
    cfg = tiny_config(epochs=3, select="best_val", batch_size=64)

    def crash(history):
        if len(history) == 2:
            raise _Crash

    with pytest.raises(_Crash):
        train(cfg, tiny_data, run_dir=tmp_path, progress=False, log=None, on_epoch=crash)
    r = train(cfg, tiny_data, run_dir=tmp_path, progress=False, log=None)
    assert r.summary["selected_epoch"] == 2 and r.summary["best_val_acc"] == 0.9
    _same_state(seen["test"][0], seen["val"][1])


def test_init_state(synth_data, tiny_config):
    cfg = tiny_config(epochs=1, train_subset=64, batch_size=64)
    parent = train(cfg, synth_data, progress=False, log=None)
    child = train(cfg.replace(lr=1e-12), synth_data, init_state=parent.model.state_dict(), progress=False, log=None)
    # with a vanishing lr the child's weights stay (almost) the parent's, not a fresh init
    assert torch.allclose(child.model.fc.weight, parent.model.fc.weight, atol=1e-6)
    fresh = train(cfg.replace(lr=1e-12), synth_data, progress=False, log=None)
    assert not torch.allclose(fresh.model.fc.weight, parent.model.fc.weight, atol=1e-6)


@pytest.mark.parametrize("select", ["last", "best_val"])
def test_reevaluate_reads_the_weights_the_run_selected(tiny_data, tiny_config, tmp_path, select):
    cfg = tiny_config(epochs=3, select=select, batch_size=64, lr=5e-2)
    r = train(cfg, tiny_data, run_dir=tmp_path, progress=False, log=None)
    again = E.reevaluate(cfg, tmp_path / "checkpoint.pt", tiny_data)
    assert again["test_loss"] == pytest.approx(r.summary["test_loss"], rel=1e-5)
    assert again["test_acc"] == r.summary["test_acc"]
    # validation: the selected epoch's number (best_val keeps that epoch's weights)
    assert again["val_acc"] == r.history[r.summary["selected_epoch"] - 1]["val_acc"]
    flip = E.reevaluate(cfg, tmp_path / "checkpoint.pt", tiny_data, tta_flip=True)
    assert flip["settings"] == {"tta_flip": True, "tta_translate": 0} and flip["test_loss"] != again["test_loss"]
    with pytest.raises(T.ConfigError, match="'lr'"):
        E.reevaluate(cfg, tmp_path / "checkpoint.pt", tiny_data, lr=0.1)
    with pytest.raises(CheckpointError, match="not finished"):
        E.reevaluate(cfg.replace(epochs=4), tmp_path / "checkpoint.pt", tiny_data)


def test_ema_averages_weights_and_copies_integer_buffers():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ema = T._Ema(net, 0.75)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net(torch.randn(2, 3, 8, 8))  # BatchNorm updates its running stats and its batch counter
    ema.update()
    live = net.state_dict()
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.75 * before[k] + 0.25 * live[k]), k
        else:
            assert torch.equal(v, live[k]), k  # num_batches_tracked
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_run_is_scored_on_the_average_and_reevaluates_alike(tiny_data, tiny_config, tmp_path):
    cfg = tiny_config(epochs=2, batch_size=64, lr=5e-2)
    plain = train(cfg, tiny_data, progress=False, log=None)
    r = train(cfg.replace(ema=0.9), tiny_data, run_dir=tmp_path, progress=False, log=None)
    # the same training (the average only watches), other weights scored
    assert [h["loss_sum"] for h in r.history] == [h["loss_sum"] for h in plain.history]
    assert r.summary["test_loss"] != plain.summary["test_loss"]
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["ema"] is not None and evaluated_weights(state, r.config) is state["ema"]
    _same_state(r.model.state_dict(), state["ema"])
    again = E.reevaluate(r.config, tmp_path / "checkpoint.pt", tiny_data)
    assert again["test_loss"] == pytest.approx(r.summary["test_loss"], rel=1e-5)
    # a checkpoint without the average cannot resume an ema run
    state["ema"], state["epoch"], state["history"] = None, 0, state["history"][:1]
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="no moving average"):
        train(r.config, tiny_data, run_dir=tmp_path, progress=False, log=None)


def test_config_must_fit_the_data(tmp_path, synth_data, tiny_config):
    from labkit.runs import RunStore

    n = len(synth_data.train_y)
    store = RunStore(tmp_path / "runs")
    for changes, message in [
        ({"train_subset": n + 1}, f"train_subset={n + 1} is more than the {n} training images"),
        ({"train_subset": 10 * n}, f"train_subset={10 * n} is more than the {n} training images"),
    ]:
        with pytest.raises(ConfigError, match=message):
            store.get(tiny_config(epochs=1, **changes), "r", synth_data, progress=False, log=None)
        with pytest.raises(ConfigError, match=message):  # train() itself, given a run folder
            train(tiny_config(epochs=1, **changes), synth_data, run_dir=store.root / "direct", progress=False, log=None)
    assert not store.root.exists()  # refused before any folder was made


def test_no_tensor_is_made_from_host_values_in_every_step(synth_data, tiny_config, monkeypatch):
    # torch.tensor(..., device="cuda") waits for the GPU; made per step, the host could never
    # run ahead of the GPU. Checked on the CPU by counting: twice the steps, not more calls.
    made = []
    real = torch.tensor

    def counting(*a, **kw):
        made.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(torch, "tensor", counting)
    counts = []
    for subset in (128, 128, 256):  # 4, 4 and 8 steps of 32, with augmentation and cutout
        made.clear()
        train(tiny_config(epochs=1, train_subset=subset, batch_size=32, cutout=8), synth_data, progress=False, log=None)
        counts.append(len(made))
    assert counts[1] == counts[2], counts  # (the first run also makes the constants it keeps)


def test_epoch_lines_or_a_bar_not_both(synth_data, tiny_config, capsys):
    cfg = tiny_config(epochs=2, train_subset=64, batch_size=32)
    for progress, want in ((True, 0), (False, 2)):
        lines: list[str] = []
        capsys.readouterr()
        train(cfg, synth_data, progress=progress, log=lines.append)
        assert sum(m.startswith("epoch ") for m in lines) == want
        err = capsys.readouterr().err  # tqdm draws on stderr
        if progress:  # the bar, at its last epoch
            assert f"train {cfg.short_hash()}" in err and "2/2" in err, repr(err)
        else:
            assert err == ""


def test_best_val_keeps_the_first_of_equally_good_epochs(synth_data, tiny_config, monkeypatch):
    """A later epoch replaces the selected weights only when its validation accuracy is higher."""
    monkeypatch.setattr(T, "evaluate", lambda *a, **kw: (0.5, 1.0))
    r = T.train(tiny_config(epochs=3, train_subset=64, select="best_val"), synth_data, progress=False, log=None)
    assert r.summary["selected_epoch"] == 1 and r.summary["best_val_acc"] == 0.5


def _clock(monkeypatch) -> None:
    """One clock for the loop and its CPU note."""
    clock = _Clock()
    monkeypatch.setattr(T, "time", clock)
    monkeypatch.setattr(P, "time", clock)


class _Clock:
    """A perf_counter that moves one second a call: the note's arithmetic, not the machine's speed."""

    def __init__(self) -> None:
        self.t = 0.0

    def perf_counter(self) -> float:
        self.t += 1.0
        return self.t


def test_cpu_run_says_how_long_it_will_take(synth_data, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(P, "CPU_NOTE_S", 0.0)
    _clock(monkeypatch)
    logs: list[str] = []
    train(tiny_config(epochs=2), synth_data, run_dir=tmp_path, progress=False, log=logs.append)
    notes = [m for m in logs if m.startswith("note: on the CPU")]
    # Steps 1-4 of 25 timed (step 0 warms up): 1 s / 4 = 0.25 s a step; 45 steps left;
    # evaluation (200 val x 2 epochs + 200 test) / (3 x 800 x 2) = 0.125 on top: 12.66 s.
    assert notes == [
        "note: on the CPU this run needs about 13 s more (2 epochs of 25 steps at 0.25 s a step, timed on its "
        "first steps, evaluation included); a CUDA GPU, fewer epochs or train_subset make it shorter; "
        "interrupted, it resumes from its last checkpoint (written every epoch) when asked for again"
    ]


def test_cpu_note_counts_the_test_time_views(synth_data, tiny_config, monkeypatch):
    monkeypatch.setattr(P, "CPU_NOTE_S", 0.0)
    _clock(monkeypatch)
    logs: list[str] = []
    train(tiny_config(epochs=2, tta_flip=True, tta_translate=2), synth_data, progress=False, log=logs.append)
    # 6 views (mirror x three positions) of every evaluated image: 45 x 0.25 x (1 + 6 x 0.125) = 19.7 s
    assert [m for m in logs if m.startswith("note:")][0].startswith("note: on the CPU this run needs about 20 s more")


def test_cpu_note_with_one_step_an_epoch_times_the_epoch(synth_data, tiny_config, monkeypatch):
    monkeypatch.setattr(P, "CPU_NOTE_S", 0.0)
    _clock(monkeypatch)
    logs: list[str] = []
    train(tiny_config(epochs=3, batch_size=1024), synth_data, progress=False, log=logs.append)
    notes = [m for m in logs if m.startswith("note:")]
    # the first epoch (one step) took 1 s; 2 left; evaluation (200 x 3 + 200) / (3 x 800 x 3)
    assert len(notes) == 1 and "about 2 s more (3 epochs of 1 steps at 1.00 s a step" in notes[0]
    assert notes[0].endswith("nothing is kept if it is interrupted (no run folder)")


def test_cpu_note_only_past_its_threshold_and_only_with_a_log(synth_data, tiny_config, tmp_path, monkeypatch):
    _clock(monkeypatch)
    monkeypatch.setattr(P, "CPU_NOTE_S", 13.0)  # the projection above is 12.66 s
    logs: list[str] = []
    train(tiny_config(epochs=2), synth_data, progress=False, log=logs.append)
    assert not [m for m in logs if m.startswith("note:")]
    monkeypatch.setattr(P, "CPU_NOTE_S", 12.0)
    logs.clear()
    train(tiny_config(epochs=2), synth_data, run_dir=tmp_path, checkpoint_every=0, progress=False, log=logs.append)
    notes = [m for m in logs if m.startswith("note:")]
    assert len(notes) == 1 and notes[0].endswith("before the end (checkpoint_every=0)")
    train(tiny_config(epochs=2, seed=1), synth_data, progress=False, log=None)  # nowhere to say it: no error


def test_cpu_note_counts_only_what_a_resumed_run_has_left(synth_data, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(P, "CPU_NOTE_S", 0.0)
    train(tiny_config(epochs=1), synth_data, run_dir=tmp_path, progress=False, log=None)
    # the same run with more epochs cannot resume that checkpoint (other settings); make one that stopped
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    state["config"] = tiny_config(epochs=3).to_dict()
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    _clock(monkeypatch)
    logs: list[str] = []
    train(tiny_config(epochs=3), synth_data, run_dir=tmp_path, progress=False, log=logs.append)
    notes = [m for m in logs if m.startswith("note:")]
    # 2 epochs left: 50 - 5 = 45 steps at 0.25 s, evaluation (200 x 2 + 200) / (3 x 800 x 2)
    assert len(notes) == 1 and "about 13 s more (2 epochs of 25 steps" in notes[0]


def test_an_interrupted_run_closes_its_bar(synth_data, tiny_config, capsys):
    """Interrupted in a notebook cell (KeyboardInterrupt), a run closes its progress bar: the
    kernel keeps the traceback, so an open bar stayed registered with tqdm and every later
    bar in that kernel was drawn a line lower (a newline and a cursor-up per update)."""
    cfg = tiny_config(epochs=2)

    def interrupt(history):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as kept:  # held, as IPython holds its last traceback
        train(cfg, synth_data, progress=True, log=None, on_epoch=interrupt)
    capsys.readouterr()
    train(cfg.replace(epochs=1), synth_data, progress=True, log=None)
    err = capsys.readouterr().err
    assert "train " in err  # the second run's bar
    assert "\x1b[A" not in err and "\n" not in err.rstrip("\n"), repr(err)
    assert kept.value is not None


def test_a_failed_capture_names_the_error_that_broke_it():
    with pytest.raises(RuntimeError) as e:
        try:
            raise RuntimeError("operation not permitted when stream is capturing")
        except RuntimeError:
            raise RuntimeError("operation failed due to a previous error during capture")  # noqa: B904 (as torch does)
    assert _capture_error(e.value) == (
        "RuntimeError: operation failed due to a previous error during capture "
        "(while handling RuntimeError: operation not permitted when stream is capturing)"
    )
    with pytest.raises(ValueError) as plain:
        raise ValueError("a plain failure")
    assert _capture_error(plain.value) == "ValueError: a plain failure"
