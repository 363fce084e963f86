"""CIFAR-10: the official python batches read safely (pickles, which can run code when loaded: an unpickler
admits only what they hold), download, splits, and augmentation on any device."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import SPLITS

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
BATCHES = [*TRAIN_FILES, "test_batch"]
SYNTHETIC_KEY = "labkit_synthetic"  # in batches.meta of labkit's synthetic data: how they were made, in words
SYNTHETIC_MADE_KEY = "labkit_synthetic_made"  # ... and as numbers: {"seed", "per_batch", "test_size"}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# (mean, std) per channel for each of config.NORMS. "seed": the original report's (its std is the mean of
# per-image stds); "dataset": over all 50,000 official training pixels.
NORMS = {
    "seed": ((0.49139968, 0.48215841, 0.44653091), (0.20220212, 0.19931542, 0.20086346)),
    "dataset": ((0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784)),
}


class DataError(RuntimeError):
    """A data file is missing, hostile or not what CIFAR-10 holds."""


class DataNotFound(DataError):
    """No CIFAR-10 batches where they were looked for, nor downloaded there; `folder` and `why`
    let a notebook say it in its own terms."""

    def __init__(self, folder: Path, why: str) -> None:
        self.folder, self.why = folder, why
        super().__init__(
            f"no CIFAR-10 batches at {folder} ({why}). Point labkit at a local copy with --data-dir DIR "
            f"(in Python, data_dir=DIR) or LABKIT_DATA=DIR, or let it download (needs network access to {URL})."
        )

    def __reduce__(self):  # sweep workers send it to their parent
        return type(self), (self.folder, self.why)


def unlabelled_note(source: dict, folder) -> str:
    """The console note for data that are not the official files, unless LABKIT_DATA_LABEL names them; else ''."""
    if source.get("official") or os.environ.get("LABKIT_DATA_LABEL"):
        return ""
    return (
        f"note: {folder} does not hold the official CIFAR-10 files; runs record them, and reports show them, only as "
        f"\"{source.get('description')}\". Set LABKIT_DATA_LABEL to say what they are (see report/README.md)."
    )


# Everything a CIFAR batch pickle needs to rebuild its numpy arrays, and nothing else.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 3's protocol-2 pickler writes bytes
}


class _Refused(pickle.UnpicklingError):
    pass


def _empty_bytes(*args) -> bytes:
    # Protocol 2 writes b'' (an empty array's buffer) as bytes(); with an argument it could ask for bytes(10**12).
    if args:
        raise _Refused(f"refused bytes{args!r:.40}: protocol 2 calls bytes() only for an empty buffer")
    return b""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if (module, name) == ("__builtin__", "bytes"):
            return _empty_bytes
        raise _Refused(
            f"refused global {module}.{name}: a CIFAR-10 batch holds only arrays, lists, "
            "strings and ints, so this file is not one (it may try to run code)"
        )


def _safe_load(path: Path) -> dict:
    """The pickled dict in `path`, its byte-string keys (as in the official files) decoded."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except _Refused as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # truncated or garbled
        raise DataError(
            f"{path}: not a readable CIFAR-10 batch, truncated or corrupted ({type(e).__name__}: {e}); "
            "expected a pickled dict with 'data' (uint8 [N, 3072]) and 'labels'"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N] of one batch file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    d = _safe_load(path)
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path}: expected keys 'data' and 'labels', found {sorted(map(repr, d))}")
    data, labels = d["data"], np.asarray(d["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: 'data' must be uint8 [N, 3072], found {dtype} {getattr(data, 'shape', None)}")
    if not len(data):
        raise DataError(f"{path}: holds no images ('data' is 0 x 3072); a CIFAR-10 batch holds 10,000: "
                        "put a good copy in its place")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be {len(data)} integers, found {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)  # each row is an image's CHW, row-major


def md5(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def default_data_dir(root: str | os.PathLike = ".") -> Path:
    """`$LABKIT_DATA` (from the working directory), else `root`/data."""
    env = os.environ.get("LABKIT_DATA")
    return Path(env) if env else Path(root) / "data"


def file_in_the_way(root: str | os.PathLike) -> Path | None:
    """The first of `root` and its parents that exists, if it is not a folder, or a symbolic link there that
    loops or leads nowhere: no folder can be read or made there, so callers refuse it by name (`in_the_way`)."""
    p = Path(root)
    for cand in (p, *p.parents):
        if cand.exists():
            return None if cand.is_dir() else cand
        if cand.is_symlink():
            return cand
    return None


def in_the_way(path: Path) -> str:
    """What file_in_the_way found, in words."""
    if path.is_symlink() and not path.exists():
        return f"{path} is a symbolic link (to {os.readlink(path)}) that loops or leads nowhere"
    return f"{path} is a file"


def find_batches(root: str | os.PathLike) -> Path:
    """The `cifar-10-batches-py` folder under or at `root`."""
    root = Path(root)
    if (f := file_in_the_way(root)) is not None:
        where = in_the_way(root) if f == root else f"{root}: {in_the_way(f)}"
        raise DataError(f"{where}, not a folder: give --data-dir (or LABKIT_DATA) the folder holding {FOLDER}, "
                        "or that folder itself")
    for cand in (root, root / FOLDER):
        if (cand / "test_batch").is_file() or (cand / "data_batch_1").is_file():
            return cand
    raise DataNotFound(root, f"looked for {root / FOLDER}/data_batch_1..5 and test_batch")


def download(root: str | os.PathLike) -> Path:
    """Download the official archive into `root` and unpack it, once its md5 is checked; returns the batch folder."""
    root = Path(root)
    made = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    archive = root / ARCHIVE
    have = md5(archive) if archive.is_file() else None
    if have != ARCHIVE_MD5:  # a partial download or another file is never unpacked: the download replaces it
        from torchvision.datasets.utils import download_url

        try:
            download_url(URL, str(root), ARCHIVE, md5=ARCHIVE_MD5)
        except Exception as e:
            if made and not any(root.iterdir()):  # leave no empty folder behind
                root.rmdir()
            why = f"the download from {URL} failed: {type(e).__name__}: {e}."
            if have:
                why += f" {archive} is there, but its md5 is {have}, not the official {ARCHIVE_MD5}: not used."
            raise DataNotFound(root, why) from None
    if (have := md5(archive)) != ARCHIVE_MD5:
        raise DataError(
            f"{archive}: md5 {have} is not the official {ARCHIVE_MD5} (expected the CIFAR-10 python "
            f"archive from {URL}); delete it and retry"
        )
    extract(archive, root)
    return root / FOLDER


def extract(archive: Path, root: Path) -> None:
    """Unpack only regular files inside `cifar-10-batches-py/` (no links, no escapes), all checked first."""
    with contextlib.ExitStack() as stack:
        try:
            tar = stack.enter_context(tarfile.open(archive, "r:gz"))
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{archive}: not a readable .tar.gz, truncated or corrupted ({type(e).__name__}: {e}); "
                            "expected the CIFAR-10 python archive") from None
        members = [m for m in members if not (m.isdir() and Path(m.name).parts == (FOLDER,))]
        for m in members:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) != 2 or parts[0] != FOLDER or parts[1] in ("..", "."):
                raise DataError(f"{archive}: unexpected member {m.name!r}; not the CIFAR-10 archive")
        (root / FOLDER).mkdir(parents=True, exist_ok=True)
        for m in members:
            tmp = root / f"{m.name}.part"
            tmp.write_bytes(tar.extractfile(m).read())
            os.replace(tmp, root / m.name)


def locate(data_dir: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """The batch folder in `data_dir` (default: default_data_dir()), downloaded there if missing and allowed."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    try:
        return find_batches(root)
    except DataNotFound:
        if not allow_download:
            raise
    return download(root)


def source_of(folder: Path) -> dict:
    """What a run records about its data (Dataset.source): which copy of CIFAR-10 the batches in `folder` are,
    from their md5s (and, for labkit's synthetic data, the note in batches.meta that says so)."""
    sums = {n: md5(folder / n) for n in BATCHES}
    mismatched = [n for n in BATCHES if sums[n] != BATCH_MD5[n]]
    source = {
        "folder": folder.name,
        "official": not mismatched,
        "md5_mismatch": mismatched,
        "md5": sums,  # which copy: two stand-ins differ here even where their description is the same
        "description": "official CIFAR-10 (md5 verified)",
    }
    if mismatched:
        source["description"] = f"not the official CIFAR-10 files (md5 differs for {len(mismatched)} of 6 batches)"
    try:
        meta = _safe_load(folder / "batches.meta") if mismatched else {}
    except (OSError, DataError):  # no or unreadable meta file: the batches are what counts
        meta = {}
    note, made = meta.get(SYNTHETIC_KEY), meta.get(SYNTHETIC_MADE_KEY)  # labkit.synthetic writes them
    if isinstance(note, bytes) and note:
        how = note.decode("utf-8", "replace")
        source["description"] = f"labkit's synthetic CIFAR-format data ({how}); not the official CIFAR-10 files"
        source["synthetic"] = True
        keys = ("seed", "per_batch", "test_size")  # absent in data made before they were written
        if isinstance(made, dict) and all(type(made.get(k)) is int and made[k] >= 0 for k in keys):
            source["made"] = {k: made[k] for k in keys}  # what eval needs to make the same data again
    return source


def fingerprint(source: dict) -> str:
    """8 hex digits naming a copy of the data (a hash of its batch files' md5s)."""
    return hashlib.sha256(json.dumps(source["md5"], sort_keys=True).encode()).hexdigest()[:8]


def same_data(recorded: dict | None, source: dict) -> bool:
    """Whether a run that recorded `recorded` (its summary's "data"; nothing: taken as the same) was trained on
    the files `source` describes. Runs recorded before the md5s compare by description: official or not."""
    if not recorded:
        return True
    if "md5" in recorded and "md5" in source:
        return recorded["md5"] == source["md5"]
    # labkit's synthetic data were described like any other copy before they said what they are
    plain = f"not the official CIFAR-10 files (md5 differs for {len(source.get('md5_mismatch') or [])} of 6 batches)"
    return recorded.get("description") in (source.get("description"), plain if source.get("synthetic") else None)


def check_same_data(recorded: dict | None, source: dict, what: str, fix: str) -> None:
    """Raise DataError when `what` (a run, a checkpoint) was trained on other files than `source`."""
    if not same_data(recorded, source):
        how = "the md5s of their batch files differ" if "md5" in recorded else "their descriptions differ"
        raise DataError(
            f"{what} was trained on other data ({recorded.get('description')}) than the data given here "
            f"({source.get('description')}; {how}): {fix}"
        )


@dataclass
class Dataset:
    """Images uint8 [N, 3, 32, 32], labels int64 [N]; `val` may be empty."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: dict  # source_of's record
    # The split that made it, which training checks against the config; None for a Dataset built by hand.
    split: str | None = None
    val_size: int = 0

    def to(self, device: torch.device | str) -> Dataset:
        f = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return Dataset(**f, source=self.source, split=self.split, val_size=self.val_size)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


def load_cifar10(data_dir: str | os.PathLike | None = None, split: str = "seed", val_size: int = 0,
                 allow_download: bool = True) -> Dataset:
    """CIFAR-10 from `data_dir` (see locate), split "seed" (train on batches 1-4, validate on batch 5, as the
    original's code) or "full" (train on all five, the last `val_size` images of batch 5 held out for validation)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "seed" and val_size:
        raise ValueError(f"val_size is only for split 'full' (split 'seed' validates on data_batch_5), got {val_size}")
    folder = locate(data_dir, allow_download)
    missing = [n for n in BATCHES if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"{folder}: incomplete CIFAR-10, missing {', '.join(missing)} "
            "(expected data_batch_1..5 and test_batch, as in the official cifar-10-batches-py)"
        )
    parts = {n: read_batch(folder / n) for n in BATCHES}
    x = np.concatenate([parts[n][0] for n in TRAIN_FILES])
    y = np.concatenate([parts[n][1] for n in TRAIN_FILES])
    held = len(parts["data_batch_5"][1]) if split == "seed" else val_size
    if not 0 <= held < len(y):
        raise ValueError(f"val_size must lie in [0, {len(y)}), got {val_size}")
    n = len(y) - held
    t = torch.from_numpy
    return Dataset(
        t(x[:n]), t(y[:n]), t(x[n:]), t(y[n:]), *map(t, parts["test_batch"]),
        source=source_of(folder), split=split, val_size=val_size,
    )


def augment(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    """RandomCrop(32, padding, zero fill) then RandomHorizontalFlip(0.5), as torchvision applies them image by
    image: each its own offset (top, left) in [0, 2*padding] and its own coin, drawn in that order."""
    b, c, h, w = x.shape
    dev = x.device
    top = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    flips = torch.rand(b, device=dev, generator=generator) < 0.5
    padded = torch.nn.functional.pad(x, (padding,) * 4)  # [B, C, H+2p, W+2p]
    rows = (top[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # [B, 1, H, 1]
    cols = left[:, None] + torch.arange(w, device=dev)  # [B, W]
    # A flipped crop reads its columns right to left.
    cols = torch.where(flips[:, None], cols.flip(1), cols)[:, None, None, :]  # [B, 1, 1, W]
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def cutout(x: torch.Tensor, size: int, fill: tuple[float, float, float], generator: torch.Generator | None = None):
    """Cutout (DeVries & Taylor, 2017) of uint8 images, into a new tensor: per image a size x size square around
    a uniformly drawn pixel (its row, then its column; clipped at the border) set to `fill`, the mean colour in
    [0, 1], so about zero once normalised, as the paper cuts after normalising."""
    b, _, h, w = x.shape
    dev = x.device
    cy = torch.randint(0, h, (b,), device=dev, generator=generator)
    cx = torch.randint(0, w, (b,), device=dev, generator=generator)
    lo_y, lo_x = (cy - size // 2)[:, None], (cx - size // 2)[:, None]
    r, c = torch.arange(h, device=dev)[None, :], torch.arange(w, device=dev)[None, :]
    in_rows = (r >= lo_y) & (r < lo_y + size)  # [B, H]
    in_cols = (c >= lo_x) & (c < lo_x + size)  # [B, W]
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [B, 1, H, W]
    return torch.where(mask, _per_channel(tuple(round(255 * v) for v in fill), dev, x.dtype), x)


@functools.lru_cache(maxsize=64)
def _per_channel(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A constant [1, C, 1, 1] tensor, made once per device and dtype, then only read: made in every step,
    torch.tensor(..., device="cuda") would make the host wait for the GPU at every step."""
    return torch.tensor(values, device=device, dtype=dtype).view(1, len(values), 1, 1)


def normalize(x: torch.Tensor, norm: str = "seed", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> (x/255 - mean) / std with NORMS[norm], as `dtype`."""
    mean, std = NORMS[norm]
    return (x.to(dtype) / 255.0 - _per_channel(mean, x.device, dtype)) / _per_channel(std, x.device, dtype)


def channel_stats(x: torch.Tensor) -> dict[str, list[float]]:
    """Per-channel mean, dataset-wide std and mean of per-image stds of uint8 images: population stds (an
    image's pixels are all of it, not a sample; with n - 1 the per-image figure would be 0.05% larger)."""
    f = x.double() / 255.0
    return {
        "mean": f.mean(dim=(0, 2, 3)).tolist(),
        "std_dataset": f.std(dim=(0, 2, 3), correction=0).tolist(),
        "std_per_image_mean": f.std(dim=(2, 3), correction=0).mean(dim=0).tolist(),
    }
