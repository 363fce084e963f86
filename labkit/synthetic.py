"""A synthetic CIFAR-10 in the official file layout, for tests and the smoke profile.

Each class is a coloured pattern (its own hue and stripe orientation/frequency) under
noise, a random shift and random brightness, so a small ResNet learns it in a few epochs
but not in one step. The files are pickled like the official ones (protocol 2, byte-string
keys), so every reader of the real data reads these unchanged.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import uuid
from pathlib import Path

import numpy as np

from .data import (
    BATCH_MD5,
    CLASSES,
    FOLDER,
    SYNTHETIC_KEY,
    SYNTHETIC_MADE_KEY,
    DataError,
    file_in_the_way,
    in_the_way,
    md5,
)

__all__ = ["make_synthetic_cifar10"]


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


def _dump(obj: dict, path: Path, str_keys: bool) -> None:
    if str_keys:
        obj = {k.decode(): v for k, v in obj.items()}
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    os.replace(tmp, path)


def make_synthetic_cifar10(
    root: str | os.PathLike,
    per_batch: int = 200,
    test_size: int | None = None,
    noise: float = 0.15,
    seed: int = 0,
    str_keys: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write `root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`.

    Args:
        per_batch: images in each of the five training batches (balanced classes), >= 10.
        test_size: images in test_batch (default per_batch).
        str_keys: write str keys instead of the official byte-string keys.
        overwrite: replace CIFAR-10 files already there (never the official ones); without
            it a folder that holds any is refused, so no dataset is replaced by accident.
    The files are written into a temporary folder first, so a new folder appears whole or
    not at all. Returns the `cifar-10-batches-py` folder.
    """
    _check_int("per_batch", per_batch, 10, "one image per class")
    if test_size is not None:
        _check_int("test_size", test_size, 1, "None for per_batch")
    _check_int("seed", seed, 0, "a numpy seed")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0 (the pixel noise's SD), got {noise!r}")
    blocker = file_in_the_way(Path(root) / FOLDER)
    if blocker is not None:  # before any folder is made
        raise DataError(
            f"{in_the_way(blocker)}, not a folder: give the folder to write {FOLDER} into (made if missing)"
        )
    if any((Path(root) / n).exists() for n in BATCH_MD5):  # a data folder accepts either; this writes below root
        raise DataError(f"{root} itself holds CIFAR-10 batch files: give the folder above it, where {FOLDER} would go")
    folder = Path(root) / FOLDER
    present = [n for n in BATCH_MD5 if (folder / n).exists()]
    official = [n for n in present if md5(folder / n) == BATCH_MD5[n]]
    if official:
        raise DataError(f"{folder} holds the official CIFAR-10 ({', '.join(official)}); never overwritten with synthetic data")
    if present and not overwrite:
        raise DataError(
            f"{folder} already holds CIFAR-10 files ({', '.join(present)}); pick another folder, "
            "or replace them (--force; in Python, overwrite=True)"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its folder is 0700 whatever the umask, and renamed into place it
    # would keep that mode, so the data would be unreadable to anyone else a plain mkdir admits.
    tmp = folder.parent / f".synthetic-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _write(tmp, per_batch, test_size or per_batch, noise, seed, str_keys)
        if folder.is_dir():
            for n in BATCH_MD5:
                os.replace(tmp / n, folder / n)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _check_int(name: str, v, lowest: int, hint: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lowest:
        raise ValueError(f"{name} must be an int >= {lowest} ({hint}), got {v!r}")


def _write(folder: Path, per_batch: int, test_size: int, noise: float, seed: int, str_keys: bool) -> None:
    rng = np.random.default_rng(seed)
    sizes = {f"data_batch_{i}": per_batch for i in range(1, 6)}
    sizes["test_batch"] = test_size
    for name, n in sizes.items():
        labels = rng.permutation(np.arange(n) % 10)
        data = _images(rng, labels, noise).reshape(n, 3072)
        _dump(
            {
                b"batch_label": name.encode(),
                b"labels": [int(v) for v in labels],
                b"data": data,
                b"filenames": [f"synthetic_{name}_{i:05d}.png".encode() for i in range(n)],
            },
            folder / name,
            str_keys,
        )
    made = f"seed {seed}, {per_batch} images per training batch, {test_size} test images"
    _dump(
        {
            b"num_cases_per_batch": per_batch,
            b"label_names": [c.encode() for c in CLASSES],
            b"num_vis": 3072,
            SYNTHETIC_KEY.encode(): made.encode(),  # read by labkit.data.source_of: runs say what their data were
            SYNTHETIC_MADE_KEY.encode(): {"seed": int(seed), "per_batch": int(per_batch), "test_size": int(test_size)},
        },
        folder / "batches.meta",
        str_keys,
    )
