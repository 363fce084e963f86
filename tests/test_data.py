"""labkit.data: the safe batch reader, splits, download/extract guards, augmentation."""

from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from labkit import data
from labkit.data import NORMS, DataError, augment, cutout, load_cifar10, md5, normalize, read_batch
from labkit.synthetic import make_synthetic_cifar10

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _write_pickle(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return path


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def test_round_trip_official_layout_with_either_key_encoding(tmp_path):
    read = {}
    for str_keys in (False, True):
        folder = make_synthetic_cifar10(tmp_path / str(str_keys), per_batch=30, test_size=20, seed=3, str_keys=str_keys)
        assert folder == tmp_path / str(str_keys) / "cifar-10-batches-py"
        assert sorted(p.name for p in folder.iterdir()) == sorted(BATCHES + ["batches.meta"])
        for name in BATCHES:
            with open(folder / name, "rb") as f:
                raw = pickle.load(f, encoding="bytes")  # how the official files are read elsewhere
            key = "data" if str_keys else b"data"
            assert key in raw and type(next(iter(raw))) is (str if str_keys else bytes)
            x, y = read[str_keys, name] = read_batch(folder / name)
            n = 20 if name == "test_batch" else 30
            assert x.shape == (n, 3, 32, 32) and x.dtype == np.uint8
            assert y.shape == (n,) and y.dtype == np.int64
            # [N, 3072] is CHW row-major per image
            np.testing.assert_array_equal(x, raw[key].reshape(n, 3, 32, 32))
            np.testing.assert_array_equal(y, np.asarray(raw["labels" if str_keys else b"labels"]))
        assert sorted(np.bincount(read[str_keys, "data_batch_1"][1]).tolist()) == [3] * 10  # balanced
    for name in BATCHES:  # the same seed gives the same images whatever the keys
        for a, b in zip(read[False, name], read[True, name], strict=True):
            np.testing.assert_array_equal(a, b)


def test_folder_that_is_not_cifar10(tmp_path):
    # Files with the right names and the wrong contents: text, an image, an empty file.
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_text("hello, I am a README\n")
    for name in BATCHES[1:]:
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DataError, match="data_batch_1"):
        load_cifar10(tmp_path, allow_download=False)
    (folder / "data_batch_1").write_bytes(b"")
    with pytest.raises(DataError, match="data_batch_1"):
        read_batch(folder / "data_batch_1")
    with pytest.raises(DataError, match="data_batch_2"):
        read_batch(folder / "data_batch_2")


def test_a_file_given_as_the_data_folder_is_named(tmp_path, monkeypatch):
    # e.g. --data-dir .../cifar-10-batches-py/data_batch_1: once a bare "[Errno 17] File exists"
    folder = make_synthetic_cifar10(tmp_path, per_batch=10)
    a_file = folder / "data_batch_1"

    def no_download(root):
        raise AssertionError(f"tried to download into {root}")

    monkeypatch.setattr(data, "download", no_download)
    for root in (a_file, a_file / "sub"):
        for call in (lambda r: data.locate(r), data.find_batches, lambda r: load_cifar10(r)):
            with pytest.raises(DataError, match=re.escape(f"{a_file} is a file, not a folder") + ".*--data-dir") as e:
                call(root)
            assert str(root) in str(e.value)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "cifar-10-batches-py").write_text("")  # where the data folder would go
    for root in (a_file, a_file / "sub", tmp_path / "x"):
        with pytest.raises(DataError, match="is a file, not a folder: give the folder to write cifar-10-batches-py"):
            make_synthetic_cifar10(root, per_batch=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py", "x"]  # nothing made
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["cifar-10-batches-py"]


# ---------------------------------------------------------------------------------------
# Splits and provenance
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    make_synthetic_cifar10(root, per_batch=40, test_size=30, seed=7)
    return root


def test_seed_split(split_root):
    folder = split_root / "cifar-10-batches-py"
    ds = load_cifar10(split_root, split="seed", allow_download=False)
    assert ds.sizes() == {"train": 160, "val": 40, "test": 30}
    parts = {n: read_batch(folder / n) for n in BATCHES}
    np.testing.assert_array_equal(
        ds.train_x.numpy(), np.concatenate([parts[f"data_batch_{i}"][0] for i in (1, 2, 3, 4)])
    )
    np.testing.assert_array_equal(
        ds.train_y.numpy(), np.concatenate([parts[f"data_batch_{i}"][1] for i in (1, 2, 3, 4)])
    )
    np.testing.assert_array_equal(ds.val_x.numpy(), parts["data_batch_5"][0])
    np.testing.assert_array_equal(ds.val_y.numpy(), parts["data_batch_5"][1])
    np.testing.assert_array_equal(ds.test_x.numpy(), parts["test_batch"][0])
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    # the folder itself works as data_dir too
    assert load_cifar10(folder, allow_download=False).sizes() == ds.sizes()


def test_full_split(split_root):
    folder = split_root / "cifar-10-batches-py"
    full = load_cifar10(split_root, split="full", allow_download=False)
    assert full.sizes() == {"train": 200, "val": 0, "test": 30}
    held = load_cifar10(split_root, split="full", val_size=15, allow_download=False)
    assert held.sizes() == {"train": 185, "val": 15, "test": 30}
    x5, y5 = read_batch(folder / "data_batch_5")
    # the held-out images are the last ones of batch 5
    np.testing.assert_array_equal(held.val_x.numpy(), x5[-15:])
    np.testing.assert_array_equal(held.val_y.numpy(), y5[-15:])
    assert torch.equal(torch.cat([held.train_x, held.val_x]), full.train_x)
    with pytest.raises(ValueError, match="val_size"):
        load_cifar10(split_root, split="full", val_size=200, allow_download=False)
    with pytest.raises(ValueError, match="split"):
        load_cifar10(split_root, split="batches", allow_download=False)


def test_synthetic_is_not_official(split_root, monkeypatch):
    ds = load_cifar10(split_root, allow_download=False)
    assert ds.source["official"] is False
    assert sorted(ds.source["md5_mismatch"]) == sorted(BATCHES)
    assert "not the official" in ds.source["description"]
    # The flag does follow the checksums: with these files' md5s as the reference it flips.
    folder = split_root / "cifar-10-batches-py"
    monkeypatch.setattr(data, "BATCH_MD5", {n: data.md5(folder / n) for n in BATCHES})
    ok = load_cifar10(split_root, allow_download=False)
    assert ok.source["official"] is True and ok.source["md5_mismatch"] == []


# ---------------------------------------------------------------------------------------
# Download and extraction
# ---------------------------------------------------------------------------------------


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    return path


def _file(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), b"payload"


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def test_extract_good_archive(tmp_path):
    d = tarfile.TarInfo("cifar-10-batches-py")
    d.type = tarfile.DIRTYPE
    arc = _tar(tmp_path / "good.tar.gz", [(d, None), _file("cifar-10-batches-py/data_batch_1")])
    out = tmp_path / "out"
    data.extract(arc, out)
    assert (out / "cifar-10-batches-py" / "data_batch_1").read_bytes() == b"payload"


@pytest.mark.parametrize(
    "member",
    [
        _file("cifar-10-batches-py/../escaped"),
        _file("../escaped"),
        _file("cifar-10-batches-py/../../escaped"),
        _file("/tmp/labkit-escaped-absolute"),
        _link("cifar-10-batches-py/data_batch_1", "/etc/passwd", tarfile.SYMTYPE),
        _link("cifar-10-batches-py/data_batch_1", "../escaped", tarfile.SYMTYPE),
        _link("cifar-10-batches-py/data_batch_1", "/etc/passwd", tarfile.LNKTYPE),
        _file("somewhere-else/data_batch_1"),
    ],
    ids=["dotdot_inside", "dotdot", "dotdot2", "absolute", "symlink_abs", "symlink_rel", "hardlink", "other_folder"],
)
def test_extract_refuses_hostile_members(tmp_path, member):
    arc = _tar(tmp_path / "evil.tar.gz", [_file("cifar-10-batches-py/test_batch"), member])
    out = tmp_path / "a" / "b"
    out.mkdir(parents=True)
    with pytest.raises(DataError, match="unexpected member"):
        data.extract(arc, out)
    # nothing at all was written: the whole archive is checked before anything is unpacked
    assert not (out / "cifar-10-batches-py").exists()
    assert not (tmp_path / "a" / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert not Path("/tmp/labkit-escaped-absolute").exists()


def test_download_without_network(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    calls = []

    def offline(url, root, filename=None, md5=None, **kw):
        calls.append(url)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(tvu, "download_url", offline)
    root = tmp_path / "nodata"
    with pytest.raises(data.DataNotFound) as e:
        load_cifar10(root)
    msg = str(e.value)
    assert calls == [data.URL]
    assert f"no CIFAR-10 batches at {root} (the download from {data.URL} failed: OSError: Network is unreachable." in msg
    assert "Network is unreachable" in msg and "--data-dir" in msg
    assert not root.exists()  # the folder made for the download is not left behind
    # allow_download=False never tries
    with pytest.raises(DataError, match=str(root)):
        load_cifar10(root, allow_download=False)
    assert len(calls) == 1


@pytest.fixture
def served(tmp_path, monkeypatch):
    """An archive in the official layout (labkit's synthetic data, tarred as the official one
    is) and a download_url that copies it: what the test's "server" serves. Returns the
    archive and the calls made."""
    import torchvision.datasets.utils as tvu

    folder = make_synthetic_cifar10(tmp_path / "made", per_batch=20)
    archive = tmp_path / "server" / data.ARCHIVE
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=data.FOLDER)
    calls = []

    def download_url(url, root, filename=None, md5=None, **kw):  # no md5 check of its own: labkit's is tested
        calls.append({"url": url, "root": root, "filename": filename, "md5": md5})
        shutil.copyfile(archive, Path(root, filename))

    monkeypatch.setattr(tvu, "download_url", download_url)
    return archive, calls


def test_download_checks_unpacks_and_loads_the_archive(tmp_path, monkeypatch, served):
    archive, calls = served
    monkeypatch.setattr(data, "ARCHIVE_MD5", md5(archive))  # this archive is the "official" one here
    root = tmp_path / "data"
    ds = load_cifar10(root)
    assert calls == [{"url": data.URL, "root": str(root), "filename": data.ARCHIVE, "md5": md5(archive)}]
    assert (root / data.ARCHIVE).is_file()
    for name in [*BATCHES, "batches.meta"]:  # every file unpacked as it was packed
        assert (root / data.FOLDER / name).read_bytes() == (tmp_path / "made" / data.FOLDER / name).read_bytes(), name
    assert not list(root.rglob("*.part"))
    assert ds.sizes() == load_cifar10(tmp_path / "made", allow_download=False).sizes()
    assert ds.source["synthetic"] and ds.source["md5"] == {n: md5(tmp_path / "made" / data.FOLDER / n) for n in BATCHES}
    # found there now: no second download; and an archive already there is unpacked, not fetched again
    load_cifar10(root)
    shutil.rmtree(root / data.FOLDER)
    assert len(load_cifar10(root).train_y) == len(ds.train_y)
    assert len(calls) == 1


def test_a_downloaded_archive_with_another_md5_is_refused_and_never_unpacked(tmp_path, served):
    archive, calls = served  # a well-formed archive, but not the official bytes (ARCHIVE_MD5 as shipped)
    root = tmp_path / "data"
    with pytest.raises(DataError) as e:
        load_cifar10(root)
    assert len(calls) == 1 and calls[0]["md5"] == data.ARCHIVE_MD5
    msg = str(e.value)
    assert f"{root / data.ARCHIVE}: md5 {md5(archive)} is not the official {data.ARCHIVE_MD5}" in msg and "delete it and retry" in msg
    assert sorted(p.name for p in root.iterdir()) == [data.ARCHIVE]  # nothing unpacked, not even in part


# ---------------------------------------------------------------------------------------
# Augmentation and normalisation
# ---------------------------------------------------------------------------------------


def test_augment_matches_torchvision(synth_data):
    x = synth_data.train_x[:64]
    out = augment(x, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # the same draws, in augment's order: rows, columns, coins
    top, left = torch.randint(0, 9, (64,), generator=g), torch.randint(0, 9, (64,), generator=g)
    flips = torch.rand(64, generator=g) < 0.5
    # the extremes and both flip states are exercised
    assert {0, 8} <= set(top.tolist()) & set(left.tolist()) and 0 < int(flips.sum()) < 64
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for i in range(64):
        ref = TF.pad(x[i], [4], fill=0)
        ref = TF.crop(ref, int(top[i]), int(left[i]), 32, 32)
        if flips[i]:
            ref = TF.horizontal_flip(ref)
        assert torch.equal(out[i], ref), f"image {i} (top {int(top[i])}, left {int(left[i])}, flip {bool(flips[i])})"
    # the float path gives the same pixels
    assert torch.equal(augment(x.float(), generator=torch.Generator().manual_seed(0)), out.float())


def test_augment_generator(synth_data):
    x = synth_data.train_x[:1].expand(128, -1, -1, -1).contiguous()  # one image, 128 times
    a = augment(x, generator=torch.Generator().manual_seed(1))
    b = augment(x, generator=torch.Generator().manual_seed(1))
    c = augment(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    distinct = {bytes(img.numpy().tobytes()) for img in a}
    assert len(distinct) > 50  # 81 offsets x 2 flips: the same image comes out many ways
    # every output is one of the 81 crops of the zero-padded image or of its mirror: some
    # flipped, some not, and zero padding shows up somewhere
    padded = torch.nn.functional.pad(x[0], (4, 4, 4, 4))

    def crops(img: torch.Tensor) -> set[bytes]:
        return {img[:, top : top + 32, left : left + 32].numpy().tobytes() for top in range(9) for left in range(9)}

    plain, mirrored = crops(padded), crops(padded.flip(2))
    assert not plain & mirrored  # the image is not symmetric: each output says whether it was flipped
    flipped = [img.numpy().tobytes() in mirrored for img in a]
    assert all(img.numpy().tobytes() in plain | mirrored for img in a)
    assert 0 < sum(flipped) < len(a), sum(flipped)
    assert (a == 0).any()


def test_normalize_uses_the_paper_s_constants():
    mean = (0.49139968, 0.48215841, 0.44653091)
    std = (0.20220212, 0.19931542, 0.20086346)
    assert NORMS["seed"] == (mean, std)
    from labkit import config

    assert tuple(NORMS) == config.CHOICES["norm"]  # a constant pair for every norm a run config accepts
    assert NORMS["dataset"][0] == mean
    assert NORMS["dataset"][1] == pytest.approx((0.2470, 0.2435, 0.2616), abs=1e-4)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    for norm in ("seed", "dataset"):
        m, s = NORMS[norm]
        ref = (x.double() / 255 - torch.tensor(m, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
            s, dtype=torch.float64
        ).view(1, 3, 1, 1)
        out = normalize(x, norm)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(normalize(x, "seed"), normalize(x, "dataset"))


def test_cutout_sets_a_clipped_square_to_the_mean_colour():
    x = torch.full((64, 3, 32, 32), 7, dtype=torch.uint8)
    out = cutout(x, 8, (0.5, 0.25, 1.0), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # the same draws, in cutout's order: rows, then columns
    cy, cx = torch.randint(0, 32, (64,), generator=g).tolist(), torch.randint(0, 32, (64,), generator=g).tolist()
    colour = torch.tensor([128, 64, 255], dtype=torch.uint8).view(3, 1, 1)
    areas = []
    for i in range(64):  # an 8 x 8 square from 4 above and left of its centre, clipped at the border
        rows, cols = slice(max(cy[i] - 4, 0), min(cy[i] + 4, 32)), slice(max(cx[i] - 4, 0), min(cx[i] + 4, 32))
        expected = x[i].clone()
        expected[:, rows, cols] = colour
        assert torch.equal(out[i], expected), (i, cy[i], cx[i])
        areas.append((rows.stop - rows.start) * (cols.stop - cols.start))
    assert max(areas) == 64 and min(areas) < 64  # whole squares and clipped ones
    assert torch.equal(x, torch.full((64, 3, 32, 32), 7, dtype=torch.uint8))  # the input is left alone


def test_cutout_draws_a_centre_per_image_from_the_generator(synth_data):
    x = synth_data.train_x[:64]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = cutout(x, 12, NORMS["seed"][0], generator=g1), cutout(x, 12, NORMS["seed"][0], generator=g2)
    assert torch.equal(a, b)
    masks = (a != x).any(1)  # [B, H, W]
    cut = masks.flatten(1).sum(1)
    assert (cut > 0).all() and (cut <= 144).all()
    assert len({tuple(m.nonzero()[0].tolist()) for m in masks}) > 10  # not one square for all
    # the fill normalises to about zero: the mean colour
    z = normalize(torch.tensor([round(255 * v) for v in NORMS["seed"][0]], dtype=torch.uint8).view(1, 3, 1, 1))
    assert z.abs().max() < 0.01


def test_channel_stats_are_population_stds():
    from labkit.data import channel_stats

    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[:, 0, :, ::2] = 255  # channel 0: half the pixels white, so mean 0.5 and std exactly 0.5
    s = channel_stats(x)
    assert s["mean"] == pytest.approx([0.5, 0.0, 0.0])
    assert s["std_per_image_mean"] == pytest.approx([0.5, 0.0, 0.0], abs=1e-12)
    assert s["std_dataset"] == pytest.approx([0.5, 0.0, 0.0], abs=1e-12)


def test_synthetic_data_never_replaces_a_dataset_by_accident(tmp_path, monkeypatch):
    folder = make_synthetic_cifar10(tmp_path, per_batch=10, seed=1)
    before = (folder / "data_batch_1").read_bytes()
    with pytest.raises(DataError, match="already holds CIFAR-10 files"):
        make_synthetic_cifar10(tmp_path, per_batch=20)
    assert (folder / "data_batch_1").read_bytes() == before
    make_synthetic_cifar10(tmp_path, per_batch=20, overwrite=True)
    assert (folder / "data_batch_1").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py"]  # no temporary folder left
    with pytest.raises(DataError, match="itself holds CIFAR-10 batch files"):  # not a nested copy inside it
        make_synthetic_cifar10(folder, per_batch=10, overwrite=True)
    # Files with the official md5 are refused even with overwrite.
    monkeypatch.setattr(data, "BATCH_MD5", {**data.BATCH_MD5, "test_batch": md5(folder / "test_batch")})
    with pytest.raises(DataError, match="holds the official CIFAR-10 \\(test_batch\\)"):
        make_synthetic_cifar10(tmp_path, per_batch=20, overwrite=True)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_synthetic_folder_has_the_mode_a_plain_mkdir_gives(tmp_path, umask):
    # It is written through a temporary folder renamed into place: a tempfile.mkdtemp one
    # (0700) made the data unreadable to everyone else whatever the umask.
    old = os.umask(umask)
    try:
        folder = make_synthetic_cifar10(tmp_path / "data", per_batch=10)
    finally:
        os.umask(old)
    assert oct(folder.stat().st_mode & 0o777) == oct(0o777 & ~umask)
    assert oct(folder.parent.stat().st_mode & 0o777) == oct(0o777 & ~umask)
    assert {oct(f.stat().st_mode & 0o777) for f in folder.iterdir()} == {oct(0o666 & ~umask)}


@pytest.mark.parametrize(
    "kwargs, message",
    [({"per_batch": 9}, "per_batch must be an int >= 10"), ({"per_batch": "20"}, "per_batch must be an int"),
     ({"test_size": 0}, "test_size must be an int >= 1"), ({"seed": -1}, "seed must be an int >= 0"),
     ({"noise": float("nan")}, "noise must be a finite number")],
)
def test_synthetic_data_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic_cifar10(tmp_path, **{"per_batch": 10, **kwargs})
    assert not any(tmp_path.iterdir())


def test_labkit_synthetic_data_say_what_they_are(tmp_path):
    # Their md5s differ from the official ones, which alone reads as a suspect copy of CIFAR-10.
    from labkit.data import source_of

    folder = make_synthetic_cifar10(tmp_path / "a", per_batch=20, test_size=10, seed=3)
    src = source_of(folder)
    assert src["synthetic"] and not src["official"]
    assert src["description"] == (
        "labkit's synthetic CIFAR-format data (seed 3, 20 images per training batch, 10 test images); "
        "not the official CIFAR-10 files"
    )
    assert src["made"] == {"seed": 3, "per_batch": 20, "test_size": 10}
    assert load_cifar10(tmp_path / "a", allow_download=False).source == src
    (folder / "batches.meta").unlink()  # another copy, without labkit's note: only what the md5s say
    assert source_of(folder)["description"] == "not the official CIFAR-10 files (md5 differs for 6 of 6 batches)"
    assert "synthetic" not in source_of(folder)


def test_runs_recorded_before_md5s_compare_by_description(tmp_path):
    from labkit.data import same_data, source_of

    src = source_of(make_synthetic_cifar10(tmp_path, per_batch=20, seed=3))
    plain = {"description": "not the official CIFAR-10 files (md5 differs for 6 of 6 batches)"}
    assert same_data(plain, src)  # labkit's synthetic data, described before they said so
    assert not same_data({"description": "official CIFAR-10 (md5 verified)"}, src)
    assert same_data(None, src) and same_data({**src}, src)
    assert not same_data({**src, "md5": {**src["md5"], "test_batch": "0" * 32}}, src)
