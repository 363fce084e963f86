"""Atomic writes and safe loading: checkpoints, metrics and run-store entries are never read
half-written; a corrupted checkpoint is refused by name and the run falls back to the
previous good one; a checkpoint that carries code is refused without running it."""

from __future__ import annotations

import ast
import errno
import importlib
import io
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from labkit.checkpoint import RESUME_KEYS, CheckpointError, load_checkpoint, previous_checkpoint, save_checkpoint
from labkit.runs import RunError, RunStore, atomic_write_text

T = importlib.import_module("labkit.train")
REAL_TRAIN = T.train
REPO = Path(__file__).resolve().parents[1]


class _Crash(Exception):
    pass


def _cfg():
    from conftest import _tiny_config

    return _tiny_config(epochs=3, train_subset=128, batch_size=64)


@pytest.fixture
def cfg():
    return _cfg()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, synth_data):
    """An uninterrupted run of `cfg` (3 epochs) to compare recovered runs against."""
    store = RunStore(tmp_path_factory.mktemp("ref"))
    return store.get(_cfg(), "r", synth_data, progress=False, log=None)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, synth_data) -> Path:
    """The folder of a run of `cfg` stopped after epoch 2: checkpoint.pt holds epoch 2, checkpoint.prev.pt epoch 1."""
    with pytest.MonkeyPatch.context() as mp:
        return _stopped_after(mp, RunStore(tmp_path_factory.mktemp("stopped")), _cfg(), synth_data, 2)


def _copied(run_dir: Path, root: Path) -> tuple[RunStore, Path]:
    """A store at `root` holding a copy of the run folder `run_dir`, and the copy."""
    shutil.copytree(run_dir, root / run_dir.name)
    return RunStore(root), root / run_dir.name


def _stopped_after(monkeypatch, store, cfg, data, epochs: int, checkpoint_every: int = 1) -> Path:
    """A run stopped (as by a crash) after `epochs` epochs; returns its folder."""

    def crashing(cfg, data, **kw):
        inner = kw["on_epoch"]

        def on_epoch(history):
            inner(history)
            if len(history) == epochs:
                raise _Crash

        return REAL_TRAIN(cfg, data, **{**kw, "on_epoch": on_epoch})

    monkeypatch.setattr(T, "train", crashing)
    with pytest.raises(_Crash):
        store.get(cfg, "r", data, checkpoint_every=checkpoint_every, progress=False, log=None)
    monkeypatch.setattr(T, "train", REAL_TRAIN)
    return store.path(store.run_id(cfg, "r"))


def _counting(monkeypatch) -> dict:
    stats = {"epochs": 0}

    def counted(cfg, data, **kw):
        inner = kw["on_epoch"]

        def on_epoch(history):
            stats["epochs"] += 1
            inner(history)

        return REAL_TRAIN(cfg, data, **{**kw, "on_epoch": on_epoch})

    monkeypatch.setattr(T, "train", counted)
    return stats


def _same_result(run, ref) -> None:
    assert run.finished and list(run.history["epoch"]) == [1, 2, 3]
    for k in ("final_loss_sum", "final_val_acc", "test_acc", "test_loss"):
        assert run.summary[k] == ref.summary[k], k
    a, b = load_checkpoint(run.checkpoint)["model"], load_checkpoint(ref.checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------
# Atomic writes: a fault in the middle of a write leaves the previous file whole
# ---------------------------------------------------------------------------------------


def _boom(*a, **kw):
    raise OSError("injected fault: disk full")


@pytest.mark.parametrize("where", ["torch.save", "os.fsync", "os.replace"])
def test_checkpoint_write_fault_keeps_the_old_checkpoint(tmp_path, monkeypatch, where):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "epoch": 0})
    if where == "torch.save":
        real = torch.save

        def half(obj, f, *a, **kw):  # writes half the bytes, then fails
            buf = io.BytesIO()
            real(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise OSError("injected fault: disk full")

        monkeypatch.setattr(torch, "save", half)
    else:
        monkeypatch.setattr(os, where.split(".")[1], _boom)
    with pytest.raises(OSError, match="injected"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "epoch": 1}, keep_previous=True)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 0 and torch.equal(state["model"]["w"], torch.ones(3))
    assert not list(tmp_path.glob(".*.tmp")), "the temp file of a failed write is removed"


@pytest.mark.parametrize("where", ["write", "os.fsync", "os.replace"])
def test_text_write_fault_keeps_the_old_file(tmp_path, monkeypatch, where):
    """metrics.csv, summary.json and config.json all go through atomic_write_text."""
    path = tmp_path / "summary.json"
    atomic_write_text(path, json.dumps({"test_acc": 0.5}))
    if where == "write":
        real_open = open

        class HalfFile:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, text):
                self.f.write(text[: len(text) // 2])
                raise OSError("injected fault: disk full")

        import builtins

        monkeypatch.setattr(builtins, "open", lambda p, *a, **kw: HalfFile(real_open(p, *a, **kw)))
    else:
        monkeypatch.setattr(os, where.split(".")[1], _boom)
    with pytest.raises(OSError, match="injected"):
        atomic_write_text(path, json.dumps({"test_acc": 0.9, "padding": "x" * 1000}))
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"test_acc": 0.5}
    assert not list(tmp_path.glob(".*.tmp"))


class _FullDisk:
    """A file on a disk that fills after `room` bytes: a write past it raises ENOSPC, as the kernel does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _disk_fills(monkeypatch, room: int, when=lambda path: True) -> None:
    """atomic_write's temp files (those `when` picks) land on a disk with `room` bytes free."""
    import labkit.checkpoint as C

    monkeypatch.setattr(C, "open", lambda p, *a, **k: _FullDisk(open(p, *a, **k), room) if when(Path(p)) else open(p, *a, **k),
                        raising=False)


# room 0: torch.save raises the OSError; 100 and 5000: torch's zip writer turns it into a RuntimeError without the path
@pytest.mark.parametrize("room", [0, 100, 5000])
@pytest.mark.parametrize("what", ["checkpoint", "text"])
def test_a_full_disk_is_one_line_naming_the_folder_and_the_space(tmp_path, monkeypatch, room, what):
    from labkit.checkpoint import DiskFullError

    path = tmp_path / ("checkpoint.pt" if what == "checkpoint" else "summary.json")
    new = {"model": {"w": torch.zeros(10_000)}, "epoch": 1}
    if what == "checkpoint":
        save_checkpoint(path, {"model": {"w": torch.ones(3)}, "epoch": 0})
    else:
        atomic_write_text(path, "{}")
    old = path.read_bytes()
    _disk_fills(monkeypatch, room)
    with pytest.raises(DiskFullError) as e:
        if what == "checkpoint":
            save_checkpoint(path, new, keep_previous=True)
        else:
            atomic_write_text(path, json.dumps({"padding": "x" * 10_000}))
    msg = str(e.value)
    assert "\n" not in msg and e.value.errno == errno.ENOSPC and e.value.__suppress_context__
    assert re.match(rf"no space left on the device of {tmp_path}: writing {path.name} needs about [\d,]+ bytes .*, [\d,.]+ (MB|bytes) are free; ", msg)
    assert "free some space and run the same command again" in msg
    assert path.read_bytes() == old  # the last good file intact
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"


def test_train_on_a_full_disk_says_so_in_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    from labkit.cli import main
    from labkit.synthetic import make_synthetic_cifar10

    make_synthetic_cifar10(tmp_path / "data", per_batch=50)
    argv = ["train", "--epochs", "2", "--synthetic", "--synthetic-size", "50", "--data-dir", str(tmp_path / "data"),
            "--runs-dir", str(tmp_path / "runs"), "--set", "width=8", "--set", "device=cpu"]
    # the disk fills after the first epoch's checkpoint: the second one does not fit
    _disk_fills(monkeypatch, 1000, when=lambda p: p.name.startswith(".checkpoint.pt") and p.with_name("checkpoint.pt").exists())
    assert main(argv) == 1
    err = capsys.readouterr().err
    (d,) = (tmp_path / "runs").iterdir()
    assert err.startswith(f"error: no space left on the device of {d}: writing checkpoint.pt needs about ") and err.count("\n") == 1, err
    assert load_checkpoint(d / "checkpoint.pt")["epoch"] == 0 and not list(d.glob(".*.tmp"))
    monkeypatch.undo()  # space freed: the same command resumes from that checkpoint
    assert main(argv) == 0
    assert f"resumed from {d / 'checkpoint.pt'} at epoch 1/2" in capsys.readouterr().out


def test_every_checkpoint_keeps_the_one_before(tmp_path, synth_data, cfg):
    store = RunStore(tmp_path)
    run = store.get(cfg, "r", synth_data, progress=False, log=None)
    prev = previous_checkpoint(run.checkpoint)
    assert prev.name == "checkpoint.prev.pt"
    assert load_checkpoint(run.checkpoint)["epoch"] == 2 and load_checkpoint(prev)["epoch"] == 1
    assert not list(run.dir.glob(".*.tmp"))


def test_checkpoint_every_n_writes_every_nth_epoch_and_the_last(tmp_path, synth_data, tiny_config, monkeypatch):
    saved = []
    real = T.save_checkpoint

    def spy(path, state, **kw):
        saved.append(state["epoch"] + 1)
        return real(path, state, **kw)

    monkeypatch.setattr(T, "save_checkpoint", spy)
    T.train(tiny_config(epochs=5, train_subset=64, batch_size=64), synth_data, run_dir=tmp_path, checkpoint_every=2,
            progress=False, log=None)
    assert saved == [2, 4, 5]


@pytest.mark.parametrize("stopped_after, resumed_at", [(1, 0), (2, 2)])
def test_a_run_checkpointed_every_2_epochs_resumes_from_its_last_checkpoint(
    tmp_path, synth_data, cfg, monkeypatch, reference, stopped_after, resumed_at
):
    # 3 epochs, checkpoint_every=2: a checkpoint after epoch 2 and after the last, none after epoch 1
    store = RunStore(tmp_path)
    d = _stopped_after(monkeypatch, store, cfg, synth_data, stopped_after, checkpoint_every=2)
    if resumed_at:
        assert load_checkpoint(d / "checkpoint.pt")["epoch"] + 1 == resumed_at
    else:
        assert not (d / "checkpoint.pt").exists()
    assert not (d / "checkpoint.prev.pt").exists()  # one checkpoint at most was written
    stats = _counting(monkeypatch)
    logs: list[str] = []
    run = store.get(cfg, "r", synth_data, checkpoint_every=2, progress=False, log=logs.append)
    assert stats["epochs"] == 3 - resumed_at
    assert [m for m in logs if m.startswith("resumed from")] == ([f"resumed from {d / 'checkpoint.pt'} at epoch 2/3"] if resumed_at else [])
    _same_result(run, reference)


def test_stale_temp_files_of_a_killed_process_are_removed(tmp_path, synth_data, cfg, monkeypatch):
    store = RunStore(tmp_path)
    d = _stopped_after(monkeypatch, store, cfg, synth_data, 1)
    junk = [d / ".checkpoint.pt.99999.tmp", d / ".metrics.csv.99999.tmp", d / ".summary.json.99999.tmp"]
    for j in junk:
        j.write_bytes(b"half a file")
    run = store.get(cfg, "r", synth_data, progress=False, log=None)
    assert run.finished and not any(j.exists() for j in junk)


# ---------------------------------------------------------------------------------------
# Corrupted checkpoints: refused by name, and the run falls back to the previous good one
# ---------------------------------------------------------------------------------------


class _Evil:
    """Unpickling this runs a shell command (creates `target`)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _truncate(frac):
    def f(p: Path, canary: Path):
        raw = p.read_bytes()
        p.write_bytes(raw[: int(len(raw) * frac)])

    return f


def _flip_weight_byte(p: Path, canary: Path):
    """One flipped byte inside a stored tensor: torch.load alone would not notice."""
    with zipfile.ZipFile(p) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(p.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # local header
    raw[start + info.file_size // 2] ^= 0x40
    p.write_bytes(bytes(raw))


def _garbage(p: Path, canary: Path):
    p.write_bytes(os.urandom(4096))


def _empty(p: Path, canary: Path):
    p.write_bytes(b"")


def _code(p: Path, canary: Path):
    state = load_checkpoint(p)
    state["model"] = _Evil(canary)
    torch.save(state, p)


def _code_in_history(p: Path, canary: Path):
    state = load_checkpoint(p)
    state["history"].append({"epoch": _Evil(canary)})
    torch.save(state, p)


def _no_optimizer(p: Path, canary: Path):
    state = load_checkpoint(p)
    del state["optimizer"]
    torch.save(state, p)


def _foreign(p: Path, canary: Path):
    torch.save({"weights": torch.zeros(3)}, p)


CORRUPTIONS = {
    "truncated_half": (_truncate(0.5), "unreadable"),
    "truncated_100_bytes": (_truncate(100 / 1e6), "unreadable"),
    "truncated_last_byte": (_truncate(0.99999), "checkpoint"),
    "empty": (_empty, "unreadable"),
    "flipped_byte": (_flip_weight_byte, "CRC"),
    "random_bytes": (_garbage, "unreadable"),
    "carries_code": (_code, "refused"),
    "code_in_history": (_code_in_history, "refused"),
    "no_optimizer": (_no_optimizer, "missing"),
    "foreign": (_foreign, "not a labkit checkpoint"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_checkpoint_falls_back_to_the_previous_good_one(kind, tmp_path, synth_data, cfg, monkeypatch, reference,
                                                                 stopped):
    corrupt, what = CORRUPTIONS[kind]
    canary = tmp_path / "PWNED"
    store, d = _copied(stopped, tmp_path / "runs")  # checkpoint.pt: epoch 2; .prev: epoch 1
    ckpt = d / "checkpoint.pt"
    corrupt(ckpt, canary)
    # The clear error, naming the file (with require= as a resume asks for it):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt, require=RESUME_KEYS)
    assert str(ckpt) in str(e.value) and what in str(e.value)

    stats = _counting(monkeypatch)
    logs: list[str] = []
    run = store.get(cfg, "r", synth_data, progress=False, log=logs.append)
    text = "\n".join(logs)
    assert str(ckpt) in text and "moved aside" in text
    assert "previous good checkpoint checkpoint.prev.pt (after epoch 1)" in text
    assert "resumed from" in text and stats["epochs"] == 2  # epochs 2 and 3 again, not 1
    assert len(list(d.glob("checkpoint.corrupt-*.pt"))) == 1  # kept for inspection
    assert not canary.exists()
    _same_result(run, reference)


def test_both_checkpoints_corrupted_trains_from_the_start(tmp_path, synth_data, cfg, monkeypatch, reference, stopped):
    store, d = _copied(stopped, tmp_path)
    _truncate(0.5)(d / "checkpoint.pt", None)
    _garbage(d / "checkpoint.prev.pt", None)
    stats = _counting(monkeypatch)
    logs: list[str] = []
    run = store.get(cfg, "r", synth_data, progress=False, log=logs.append)
    text = "\n".join(logs)
    assert "checkpoint.pt" in text and "checkpoint.prev.pt" in text and "from the start" in text
    assert stats["epochs"] == 3
    assert len(list(d.glob("checkpoint.corrupt-*.pt"))) == 1 and len(list(d.glob("checkpoint.prev.corrupt-*.pt"))) == 1
    _same_result(run, reference)


def test_train_itself_refuses_a_corrupted_checkpoint_by_name(tmp_path, synth_data, cfg):
    """Without the run store's fallback, train() stops with the clear error, training nothing."""
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": {}, "epoch": 0})
    _truncate(0.5)(tmp_path / "checkpoint.pt", None)
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        REAL_TRAIN(cfg, synth_data, run_dir=tmp_path, progress=False, log=None)


# ---------------------------------------------------------------------------------------
# Corrupted run-store entries: a clear error naming the file
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content",
    [
        ("summary.json", '{"test_acc": 0.'),
        ("summary.json", "{}"),
        ("summary.json", '["done"]'),
        ("summary.json", "\xff\xfe garbage"),
        ("config.json", '{"name": "r", "conf'),
        ("config.json", '{"name": "r", "config": {"lr": "fast"}}'),
        ("metrics.csv", "epoch,lr\n1,0.1,7,8,9\n2\n\x00\x01"),
        ("metrics.csv", "\xff\xfe garbage"),
    ],
    ids=["summary_truncated", "summary_empty_object", "summary_a_list", "summary_binary", "config_truncated", "config_bad_value", "metrics_garbled", "metrics_binary"],
)
def test_corrupted_store_entry_is_named(tmp_path, synth_data, cfg, reference, name, content):
    store, d = _copied(reference.dir, tmp_path)
    (d / name).write_text(content, encoding="latin1")
    with pytest.raises(RunError, match=name):
        store.load(reference.id)
    with pytest.raises(RunError, match=name):
        store.get(cfg, "r", synth_data, progress=False, log=None)


# ---------------------------------------------------------------------------------------
# Safe loading: weights_only everywhere; code-carrying checkpoints refused, not run
# ---------------------------------------------------------------------------------------


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return base and f"{base}.{node.attr}"
    return None


def _torch_load_calls(source: str):
    """Every call of torch.load however it was imported: torch.load, through an alias of torch
    or torch.serialization (`import torch as th`), or the function itself (`from torch import
    load as tl`). A reference that is not called there (`loader = torch.load`) is yielded as a
    call without keywords: where it is called cannot be checked."""
    tree = ast.parse(source)
    modules, functions = {"torch", "torch.serialization"}, set()  # names bound to those modules; to torch.load
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in ("torch", "torch.serialization") and a.asname:
                    modules.add(a.asname)
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            for a in node.names:
                if a.name == "load":
                    functions.add(a.asname or a.name)
                elif a.name == "serialization":
                    modules.add(a.asname or a.name)

    def is_load(ref: ast.AST) -> bool:
        if isinstance(ref, ast.Name):
            return ref.id in functions
        return isinstance(ref, ast.Attribute) and ref.attr == "load" and _dotted(ref.value) in modules

    called = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and is_load(node.func):
            called.add(id(node.func))
            yield node
    for node in ast.walk(tree):
        if is_load(node) and id(node) not in called and not isinstance(getattr(node, "ctx", None), ast.Store):
            yield ast.Call(func=node, args=[], keywords=[], lineno=node.lineno)


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load(p)",
        "import torch as th\nth.load(p)",
        "from torch import load\nload(p)",
        "from torch import load as tl\ntl(p)",
        "import torch.serialization\ntorch.serialization.load(p)",
        "from torch import serialization as ser\nser.load(p)",
        "from torch.serialization import load\nload(p)",
        "import torch\nloader = torch.load",
    ],
)
def test_the_torch_load_scan_sees_every_way_of_calling_it(source):
    (call,) = _torch_load_calls(source)
    assert not call.keywords
    (call,) = _torch_load_calls(source.replace("(p)", "(p, weights_only=True)"))
    assert [k.arg for k in call.keywords] == (["weights_only"] if "(p)" in source else [])
    assert not list(_torch_load_calls("import json\njson.load(f)\nfrom pickle import load"))


def test_every_torch_load_uses_weights_only():
    sources = {str(p.relative_to(REPO)): p.read_text() for p in sorted((REPO / "labkit").glob("*.py"))}
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        sources[str(nb.relative_to(REPO))] = "\n".join(c for c in cells if not c.startswith("%"))
    calls = 0
    for where, src in sources.items():
        assert "pickle.load(" not in src and "pickle.loads(" not in src, f"{where}: a plain unpickler"
        for call in _torch_load_calls(src):
            calls += 1
            kw = {k.arg: k.value for k in call.keywords}
            ok = "weights_only" in kw and isinstance(kw["weights_only"], ast.Constant) and kw["weights_only"].value is True
            assert ok, f"{where}:{call.lineno}: torch.load without weights_only=True"
    assert calls >= 1  # the scan found labkit.checkpoint.load_checkpoint's call


def _payloads(canary: Path) -> dict:
    """Checkpoints whose unpickling would run code, each a different way in."""
    import builtins
    import subprocess

    class Call:
        def __init__(self, fn, *args):
            self.fn, self.args = fn, args

        def __reduce__(self):
            return (self.fn, self.args)

    touch = f"touch {canary}"
    return {
        "os_system": {"model": Call(os.system, touch), "epoch": 0},
        "subprocess_call": {"model": Call(subprocess.call, ["touch", str(canary)]), "epoch": 0},
        "builtins_eval": {"model": Call(builtins.eval, f"__import__('os').system({touch!r})"), "epoch": 0},
        "builtins_exec": {"model": Call(builtins.exec, f"import os; os.system({touch!r})"), "epoch": 0},
        "nested_in_optimizer": {"model": {}, "optimizer": {"state": {0: {"x": Call(os.system, touch)}}}, "epoch": 0},
        "in_a_tensor_dict": {"model": {"w": torch.zeros(1), "b": Call(os.system, touch)}, "epoch": 0},
    }


def test_checkpoints_that_carry_code_are_refused(tmp_path):
    canary = tmp_path / "PWNED"
    payloads = _payloads(canary)
    for name, state in payloads.items():
        p = tmp_path / f"{name}.pt"
        torch.save(state, p)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(p)
        assert p.name in str(e.value) and "refused" in str(e.value) and "code" in str(e.value), name
        assert not canary.exists(), name
    assert len(payloads) == 6


def test_a_payload_really_runs_code_without_weights_only(tmp_path):
    """The positive control: torch.load(weights_only=False) runs it (it only touches a file)."""
    canary = tmp_path / "PWNED"
    p = tmp_path / "evil.pt"
    torch.save(_payloads(canary)["os_system"], p)
    torch.load(p, weights_only=False)
    assert canary.exists()
    canary.unlink()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(p)
    assert not canary.exists()
