"""Hostile and bad data: CIFAR batch files that would run code are refused without running
it (real payloads, several ways in); missing, truncated, mis-shaped or mislabelled batches,
an archive with the wrong md5 and folders that are not CIFAR-10 each give an error naming
the file and what was expected. (tests/test_data.py holds the reader's round trip, splits and guards.)"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from labkit import data
from labkit.cli import main
from labkit.data import DataError, load_cifar10, read_batch
from labkit.synthetic import make_synthetic_cifar10


class Call:
    """Unpickling this calls fn(*args): the classic pickle code-execution gadget."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _batch(changes: dict | None = None) -> dict:
    rng = np.random.default_rng(0)
    d = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": list(range(10)) * 2,
        b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
        b"filenames": [b"x.png"] * 20,
    }
    d.update(changes or {})
    return d


def _payloads(canary: Path) -> dict[str, bytes]:
    """Pickles that create `canary` when loaded with pickle.load: each a different way in."""
    touch = f"touch {canary}"
    out = {
        "os_system": pickle.dumps(_batch({b"data": Call(os.system, touch)}), protocol=2),
        "subprocess_call": pickle.dumps(_batch({b"labels": Call(subprocess.call, ["touch", str(canary)])}), protocol=2),
        "builtins_eval": pickle.dumps(Call(builtins.eval, f"__import__('os').system({touch!r})"), protocol=2),
        "builtins_exec": pickle.dumps(_batch({b"x": Call(builtins.exec, f"import os; os.system({touch!r})")}), protocol=4),
        "protocol_5": pickle.dumps(_batch({b"data": Call(os.system, touch)}), protocol=5),
        "object_array": pickle.dumps(_batch({b"data": np.array([Call(os.system, touch)], dtype=object)}), protocol=2),
        "nested_in_filenames": pickle.dumps(_batch({b"filenames": [b"a", [{"k": Call(os.system, touch)}]]}), protocol=2),
        # Hand-written protocol-0 opcodes, as an attacker would write them (no Python class needed).
        "raw_posix_system": f"cposix\nsystem\n(V{touch}\ntR.".encode(),
        "raw_builtins_getattr": (
            f"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V{touch}\ntR."
        ).encode(),
    }
    return out


def test_payloads_really_run_code_with_a_plain_unpickler(tmp_path):
    """The positive control: each payload does run with pickle.loads (it only touches a file)."""
    canary = tmp_path / "PWNED"
    for name, raw in _payloads(canary).items():
        try:
            pickle.loads(raw, encoding="bytes")
        except Exception:  # once the code has run, what it returns may not rebuild a batch
            pass
        assert canary.exists(), f"{name}: the payload did not run, so refusing it proves nothing"
        canary.unlink()


@pytest.mark.parametrize("name", sorted(_payloads(Path("x"))))
def test_batch_that_would_run_code_is_refused(tmp_path, name):
    canary = tmp_path / "PWNED"
    folder = make_synthetic_cifar10(tmp_path, per_batch=10)
    (folder / "data_batch_2").write_bytes(_payloads(canary)[name])
    with pytest.raises(DataError) as e:
        read_batch(folder / "data_batch_2")
    msg = str(e.value)
    assert "data_batch_2" in msg and "refused" in msg and "run code" in msg
    with pytest.raises(DataError, match="data_batch_2"):
        load_cifar10(tmp_path, allow_download=False)
    assert not canary.exists()


def test_cli_refuses_a_hostile_folder_and_runs_nothing(tmp_path, capsys):
    canary = tmp_path / "PWNED"
    folder = make_synthetic_cifar10(tmp_path / "data", per_batch=10)
    (folder / "test_batch").write_bytes(_payloads(canary)["os_system"])
    argv = ["train", "--set", "width=8", "--epochs", "1", "--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "test_batch" in err and "refused" in err
    assert not canary.exists()
    assert not list(tmp_path.rglob("checkpoint*.pt")) and not list(tmp_path.rglob("summary.json"))  # nothing trained


# ---------------------------------------------------------------------------------------
# Bad data: each error names the file and says what was expected
# ---------------------------------------------------------------------------------------

BAD_BATCHES = {
    # (what is written, text the error must hold besides the file's name)
    "data_int16": (_batch({b"data": np.zeros((20, 3072), np.int16)}), "uint8 [N, 3072]"),
    "data_3073_columns": (_batch({b"data": np.zeros((20, 3073), np.uint8)}), "uint8 [N, 3072]"),
    "data_1d": (_batch({b"data": np.zeros(3072 * 20, np.uint8)}), "uint8 [N, 3072]"),
    "data_a_list": (_batch({b"data": [[0] * 3072] * 20}), "uint8 [N, 3072]"),
    "labels_float": (_batch({b"labels": [0.5] * 20}), "20 integers"),
    "labels_2d": (_batch({b"labels": [[0, 1]] * 20}), "20 integers"),
    "labels_too_many": (_batch({b"labels": [0] * 21}), "20 integers"),
    "label_out_of_range_high": (_batch({b"labels": [0] * 19 + [255]}), "0..9"),
    "label_out_of_range_low": (_batch({b"labels": np.array([-3] + [0] * 19)}), "0..9"),
    "data_4d": (_batch({b"data": np.zeros((20, 3, 32, 32), np.uint8)}), "uint8 [N, 3072]"),
    "labels_bytes": (_batch({b"labels": [b"cat"] * 20}), "20 integers"),
    "no_data_key": ({b"labels": [0] * 20}, "'data' and 'labels'"),
    "no_labels_key": ({b"data": np.zeros((2, 3072), np.uint8)}, "'data' and 'labels'"),
    "unsortable_keys": ({1: "a", "b": 2}, "'data' and 'labels'"),
    # saved with protocol 2, an empty buffer is bytes(): before, refused as hostile
    "no_images": (_batch({b"data": np.zeros((0, 3072), np.uint8), b"labels": [], b"filenames": []}), "holds no images ('data' is 0 x 3072)"),
    "none": (None, "expected a dict"),
    "a_string": ("data_batch", "expected a dict"),
    "a_list": ([1, 2, 3], "expected a dict"),
}


@pytest.mark.parametrize("kind", sorted(BAD_BATCHES))
def test_mis_shaped_or_mislabelled_batch(tmp_path, kind):
    obj, expected = BAD_BATCHES[kind]
    folder = make_synthetic_cifar10(tmp_path, per_batch=20)
    with open(folder / "data_batch_4", "wb") as f:
        pickle.dump(obj, f, protocol=2)
    for call in (lambda: read_batch(folder / "data_batch_4"), lambda: load_cifar10(tmp_path, allow_download=False)):
        with pytest.raises(DataError) as e:
            call()
        assert "data_batch_4" in str(e.value) and expected in str(e.value), str(e.value)


def test_the_batch_the_bad_ones_are_made_from_reads(tmp_path):
    """The positive control of test_mis_shaped_or_mislabelled_batch."""
    p = tmp_path / "data_batch_4"
    p.write_bytes(pickle.dumps(_batch(), protocol=2))
    x, y = read_batch(p)
    assert x.shape == (20, 3, 32, 32) and y.tolist() == list(range(10)) * 2


def test_bytes_in_a_protocol_2_pickle_only_as_the_empty_buffer(tmp_path):
    """bytes() is what protocol 2 writes for b''; bytes(10**12), 30 bytes of pickle, would fill the memory."""
    p = tmp_path / "data_batch_1"
    p.write_bytes(b"\x80\x02c__builtin__\nbytes\n\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85R.")
    with pytest.raises(DataError, match=r"data_batch_1: refused bytes\(1000000000000,\)"):
        read_batch(p)


@pytest.mark.parametrize("synthetic", [False, True])
@pytest.mark.parametrize("link", ["loop", "dangling"])
def test_a_data_folder_that_is_a_broken_link_is_named_as_one(tmp_path, capsys, link, synthetic):
    """Before: "[Errno 17] File exists" (mkdir on the link)."""
    d = tmp_path / "data"
    d.symlink_to(d if link == "loop" else tmp_path / "gone")
    argv = ["train", "--set", "width=8", "--epochs", "1", "--data-dir", str(d), "--runs-dir", str(tmp_path / "runs")]
    assert main(argv + ["--synthetic"] * synthetic) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {d} is a symbolic link (to {os.readlink(d)}) that loops or leads nowhere, not a folder: give ")
    assert err.count("\n") == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing made


@pytest.mark.parametrize("cut", [0, 1, 100, 0.5, 0.999])
def test_truncated_batch(tmp_path, cut):
    folder = make_synthetic_cifar10(tmp_path, per_batch=20)
    p = folder / "test_batch"
    raw = p.read_bytes()
    p.write_bytes(raw[: int(len(raw) * cut) if isinstance(cut, float) else cut])
    for call in (lambda: read_batch(p), lambda: load_cifar10(tmp_path, allow_download=False)):
        with pytest.raises(DataError) as e:
            call()
        assert "test_batch" in str(e.value) and "truncated or corrupted" in str(e.value) and "expected a pickled dict" in str(e.value)


def test_missing_batches_are_all_named(tmp_path):
    folder = make_synthetic_cifar10(tmp_path, per_batch=10)
    (folder / "data_batch_3").unlink()
    (folder / "test_batch").unlink()
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path, allow_download=False)
    msg = str(e.value)
    assert "data_batch_3" in msg and "test_batch" in msg and "data_batch_1" not in msg.split("missing")[1].split("(")[0]
    assert "expected data_batch_1..5 and test_batch" in msg


def test_directory_that_is_not_cifar10(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff" + bytes(100))
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path / "photos", allow_download=False)
    assert str(tmp_path / "photos") in str(e.value) and "data_batch_1..5 and test_batch" in str(e.value)
    assert "--data-dir" in str(e.value)  # and how to point labkit at the data
    with pytest.raises(DataError, match="file not found"):  # a path that is not a file at all
        read_batch(tmp_path / "photos")


def _offline(monkeypatch):
    import torchvision.datasets.utils as tvu

    def offline(*a, **kw):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(tvu, "download_url", offline)


def test_archive_with_the_wrong_md5_is_never_unpacked(tmp_path, monkeypatch):
    # A real .tar.gz of the right layout, but not the official bytes.
    arc = tmp_path / data.ARCHIVE
    with tarfile.open(arc, "w:gz") as tar:
        payload = pickle.dumps(_batch(), protocol=2)
        info = tarfile.TarInfo(f"{data.FOLDER}/data_batch_1")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    have = data.md5(arc)
    _offline(monkeypatch)
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path)
    msg = str(e.value)
    assert str(arc) in msg and have in msg and data.ARCHIVE_MD5 in msg and "not used" in msg
    assert not (tmp_path / data.FOLDER).exists()

    # A "download" that yields a wrong file: named, with the md5 it should have had.
    import torchvision.datasets.utils as tvu

    monkeypatch.setattr(tvu, "download_url", lambda url, root, filename, md5=None: Path(root, filename).write_bytes(b"<html>captive portal</html>"))
    with pytest.raises(DataError) as e:
        data.download(tmp_path)
    assert str(arc) in str(e.value) and data.ARCHIVE_MD5 in str(e.value) and "CIFAR-10 python archive" in str(e.value)
    assert not (tmp_path / data.FOLDER).exists()


@pytest.mark.parametrize("content", [b"", b"not a gzip at all", "truncated"], ids=["empty", "not_gzip", "truncated_gzip"])
def test_unreadable_archive(tmp_path, content):
    arc = tmp_path / "a.tar.gz"
    if content == "truncated":
        with tarfile.open(arc, "w:gz") as tar:
            payload = os.urandom(50_000)
            info = tarfile.TarInfo(f"{data.FOLDER}/data_batch_1")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        arc.write_bytes(arc.read_bytes()[:1000])
    else:
        arc.write_bytes(content)
    with pytest.raises(DataError) as e:
        data.extract(arc, tmp_path / "out")
    assert str(arc) in str(e.value) and "CIFAR-10 python archive" in str(e.value)
    assert not (tmp_path / "out" / data.FOLDER / "data_batch_1").exists()
