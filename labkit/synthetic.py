"""A synthetic CIFAR-10 in the official file layout and pickling (protocol 2, byte-string keys), for tests
and the smoke profile: each class a coloured stripe pattern of its own under noise, shift and brightness,
which a small ResNet learns in a few epochs but not in one step."""

from __future__ import annotations

import math
import os
import pickle
import shutil
import uuid
from pathlib import Path

import numpy as np

from . import data
from .data import FOLDER, DataError, file_in_the_way, in_the_way, md5


def _images(rng: np.random.Generator, labels: np.ndarray, noise: float) -> np.ndarray:
    n = len(labels)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    angle = labels * (np.pi / 10)  # orientation per class
    freq = 0.25 + 0.05 * (labels % 5)
    hue = np.stack([np.cos(labels * 0.63), np.cos(labels * 0.63 + 2.1), np.cos(labels * 0.63 + 4.2)], 1)
    shift = rng.uniform(0, 2 * np.pi, n)
    proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
    wave = np.sin(freq[:, None, None] * proj + shift[:, None, None])  # [N, 32, 32]
    img = 0.5 + 0.25 * wave[:, None] * hue[:, :, None, None]  # [N, 3, 32, 32]
    img *= rng.uniform(0.7, 1.3, (n, 1, 1, 1))
    img += rng.normal(0, noise, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _check_int(name: str, v, lowest: int, hint: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lowest:
        raise ValueError(f"{name} must be an int >= {lowest} ({hint}), got {v!r}")


def make_synthetic_cifar10(root: str | os.PathLike, per_batch: int = 200, test_size: int | None = None,
                           noise: float = 0.15, seed: int = 0, str_keys: bool = False, overwrite: bool = False) -> Path:
    """Write `root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}` through a temporary folder
    (a new folder appears whole or not at all) and return that folder.

    per_batch: images in each training batch (balanced classes); test_size: in test_batch (default per_batch);
    str_keys: str keys, not the official byte strings; overwrite: replace CIFAR-10 files there (never the
    official ones; without it a folder holding any is refused, so no dataset is replaced by accident).
    """
    _check_int("per_batch", per_batch, 10, "one image per class")
    if test_size is not None:
        _check_int("test_size", test_size, 1, "None for per_batch")
    _check_int("seed", seed, 0, "a numpy seed")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0 (the pixel noise's SD), got {noise!r}")
    folder = Path(root) / FOLDER
    if (blocker := file_in_the_way(folder)) is not None:  # before any folder is made
        raise DataError(f"{in_the_way(blocker)}, not a folder: give the folder to write {FOLDER} into "
                        "(made if missing)")
    if any((Path(root) / n).exists() for n in data.BATCH_MD5):  # a data folder accepts either; this writes below root
        raise DataError(f"{root} itself holds CIFAR-10 batch files: give the folder above it, where {FOLDER} would go")
    present = [n for n in data.BATCH_MD5 if (folder / n).exists()]
    if official := [n for n in present if md5(folder / n) == data.BATCH_MD5[n]]:
        raise DataError(f"{folder} holds the official CIFAR-10 ({', '.join(official)}); "
                        "never overwritten with synthetic data")
    if present and not overwrite:
        raise DataError(f"{folder} already holds CIFAR-10 files ({', '.join(present)}); pick another folder, "
                        "or replace them (--force; in Python, overwrite=True)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its folder is 0700 whatever the umask, and would keep that mode once renamed into place.
    tmp = folder.parent / f".synthetic-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _write(tmp, per_batch, test_size or per_batch, noise, seed, str_keys)
        if folder.is_dir():
            for n in data.BATCH_MD5:
                os.replace(tmp / n, folder / n)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _write(folder: Path, per_batch: int, test_size: int, noise: float, seed: int, str_keys: bool) -> None:
    def dump(name: str, obj: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump({k.decode(): v for k, v in obj.items()} if str_keys else obj, f, protocol=2)

    rng = np.random.default_rng(seed)
    for name in data.BATCHES:
        n = test_size if name == "test_batch" else per_batch
        labels = rng.permutation(np.arange(n) % 10)
        dump(name, {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in labels],
            b"data": _images(rng, labels, noise).reshape(n, 3072),
            b"filenames": [f"synthetic_{name}_{i:05d}.png".encode() for i in range(n)],
        })
    made = f"seed {seed}, {per_batch} images per training batch, {test_size} test images"
    dump("batches.meta", {
        b"num_cases_per_batch": per_batch,
        b"label_names": [c.encode() for c in data.CLASSES],
        b"num_vis": 3072,
        data.SYNTHETIC_KEY.encode(): made.encode(),  # read by data.source_of: runs say what their data were
        data.SYNTHETIC_MADE_KEY.encode(): {"seed": int(seed), "per_batch": int(per_batch), "test_size": int(test_size)},
    })
