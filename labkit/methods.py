"""The lab's materials and methods, as tables and words: the data and the networks (notebooks 01
and 02), each recipe in words, and where the runs and their data came from (provenance)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pandas as pd
import torch
import torch.nn.functional as nnf

from . import paper
from .config import TrainConfig
from .data import CLASSES, NORMS, channel_stats
from .lab import DEPTHS, Lab, ablation_key
from .model import NETWORK_FIELDS, ResNet, build_model, count_params, flops_per_image, weight_layers
from .runs import Run


def data_label(source: dict | None, label: str | None = None) -> str:
    """Where the data came from, in words; `label` (lab.data_label) names data that are not official."""
    if not source:
        return "unknown (no data record)"
    official = source.get("official")
    desc = "official CIFAR-10 (md5 verified)" if official else "not the official CIFAR-10 files"
    desc = source.get("description") or desc
    return f"{label}; {desc}" if label and not official and not source.get("synthetic") else desc


SCALES = {
    "full": "at the original report's scale",
    "quick": "a quick look: 5,000 training images, networks of half width, a fifth of the epochs",
    "smoke": "a pipeline check: synthetic data and networks of width 8, not comparable to the original's numbers",
}


def provenance(runs: Sequence[Run], lab: Lab) -> dict[str, str]:
    """Profile, data, devices, training time and code of a set of runs, as display strings."""
    summaries = [r.summary or {} for r in runs]
    datas = sorted({data_label(s.get("data"), lab.data_label) for s in summaries})
    if datas and lab.source is None and not lab.profile.synthetic:
        unchecked = f"not checked against the files (no CIFAR-10 batches at {lab.data_dir})"
        datas.append(f"as the runs recorded them: {unchecked}")
    devices = pd.Series([s.get("device", "?") for s in summaries]).value_counts()
    secs = sum(float(s.get("train_seconds") or 0.0) for s in summaries)
    dates = sorted({str(d)[:10] for s in summaries if (d := s.get("finished_at"))})
    store, root = lab.store.root.resolve(), lab.root.resolve()
    return {
        "experiments": SCALES[lab.profile.name],
        "runs recorded in": str(store.relative_to(root) if store.is_relative_to(root) else store),
        "data": "; ".join(datas) or "no runs",
        "device": ", ".join(f"{d} ({c} runs)" for d, c in devices.items()) or "no runs",
        "training time": f"{secs:.1f} s summed over {len(runs)} runs",
        "trained": " to ".join(dict.fromkeys([dates[0], dates[-1]])) if dates else "—",
        "training wall time": describe_sittings(training_sittings(runs)),
        "code version": code_versions(runs),
    }


def provenance_table(runs: Sequence[Run], lab: Lab) -> pd.DataFrame:
    return pd.DataFrame(list(provenance(runs, lab).items()), columns=["", "value"])


def code_versions(runs: Sequence[Run]) -> str:
    """'abc1234 (12 runs), abc1234+name (4 runs)': the commits that trained the runs."""
    counts = pd.Series([str((r.summary or {}).get("code_version", "?")) for r in runs]).value_counts().sort_index()
    text = ", ".join(f"{v} ({n} run{'s' if n > 1 else ''})" for v, n in counts.items())
    if any("+" in v for v in counts.index):
        text += "; a version with + is that commit with an uncommitted change of that name"
    return text or "—"


def training_sittings(runs: Sequence[Run], gap_s: float = 60.0) -> list[tuple[datetime, datetime]]:
    """The spans of UTC time in which the runs trained, sorted: runs side by side, or within
    `gap_s` of each other (a sweep between two runs), are one sitting; a longer pause is not."""
    spans = []
    for r in runs:
        s = r.summary or {}
        end, secs = s.get("finished_at"), s.get("wall_seconds", s.get("train_seconds"))
        if not end or secs is None:
            continue
        try:
            end = datetime.fromisoformat(str(end)).astimezone(UTC)
        except ValueError:
            raise ValueError(f"run {r.id}: finished_at {end!r} in its summary.json is not an ISO 8601 time") from None
        spans.append((end - timedelta(seconds=float(secs)), end))
    out: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if out and (start - out[-1][1]).total_seconds() <= gap_s:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def describe_sittings(sittings: Sequence[tuple[datetime, datetime]]) -> str:
    """'2026-11-28 17:44-17:57 UTC (13.2 min)', one per sitting, and the total if several."""
    if not sittings:
        return "—"
    mins = [(e - s).total_seconds() / 60 for s, e in sittings]
    parts = [f"{s:%Y-%m-%d %H:%M}-{e:%H:%M} UTC ({m:.1f} min)" for (s, e), m in zip(sittings, mins, strict=True)]
    total = f"; {sum(mins):.1f} min in {len(sittings)} sittings" if len(sittings) > 1 else ""
    return ", ".join(parts) + total


def _views_words(c: TrainConfig) -> str:
    flip = ["test-time flip"] if c.tta_flip else []
    return " + ".join(flip + ([f"{c.tta_translate}-pixel shifts"] if c.tta_translate else []))


def views_at_test(runs: Sequence[Run]) -> str:
    """', test-time flip' (or shifts) when the runs' test numbers average several views of each
    image, as the paper's never do; '' when none do."""
    views = {_views_words(r.config) for r in runs if r.config is not None}
    if not views or views == {""}:
        return ""
    return f", {views.pop()}" if len(views) == 1 else ", test-time views differ between runs"


NORM_WORDS = {"seed": "the original's normalisation constants", "dataset": "the dataset's mean and std"}


def recipe_parts(c: TrainConfig) -> dict[str, str]:
    """A run's recipe in words: its network, training, data and test number."""
    flags = {"n+1 blocks per stage": c.seed_extra_block, "softmax before the loss": c.softmax_head}
    defects = [d for d, on in flags.items() if on]
    net = (
        f"lays {list(c.lays)} ({c.lays[0] + int(c.seed_extra_block)} blocks per stage), width {c.width}, "
        f"{c.stem}{' stride 2' if c.stem == '7x7' else ''} stem {'with' if c.stem_bn else 'without'} BN, "
        f"dropout {c.dropout:g}" + (f"; the original's defects: {', '.join(defects)}" if defects else "; corrected network")
    )
    opt = f"Adam lr {c.lr:g}"
    if c.optimizer == "sgd":
        opt = f"SGD{' Nesterov' if c.nesterov else ''} lr {c.lr:g}, momentum {c.momentum:g}"
    opt += f", weight decay {c.weight_decay:g}" if c.weight_decay else ""
    if c.schedule == "exp":
        opt += f", lr × {c.decay_rate:g} per epoch" + (f", started over every {c.lr_restart} epochs" if c.lr_restart else "")
    else:
        opt += f", {c.warmup_epochs:g}-epoch warm-up then {c.schedule} decay"
    opt += f", label smoothing {c.label_smoothing:g}" if c.label_smoothing else ""
    opt += f", batch {c.batch_size}, {c.epochs} epochs"
    data = "train on batches 1-4, validate on batch 5" if c.split == "seed" else "all 50,000 training images"
    if c.split == "full" and c.val_size:
        data = f"batches 1-5 less {c.val_size:,} held out for validation"
    data += f" (the first {c.train_subset:,} training images only)" if c.train_subset else ""
    data += f", {NORM_WORDS[c.norm]}, " + ("random crop (pad 4) and flip" if c.augment else "no augmentation")
    data += f", cutout {c.cutout}" if c.cutout else ""
    ev = "the weights of the epoch with the best validation accuracy"
    ev = "the last epoch's weights" if c.select == "last" else ev
    ev += f" (moving average, decay {c.ema:g} per step)" if c.ema else ""
    ev += ", tested once" + (f" with {_views_words(c)}" if _views_words(c) else ", one view per image")
    return {"network": net, "training": opt, "data": data, "test number": ev}


def source_table(source: dict, lab: Lab) -> pd.DataFrame:
    """Where `source` (a Dataset's or a run's data record) came from."""
    rows = [
        ("data used", data_label(source, lab.data_label)),
        ("folder", source.get("folder", "?")),
        ("md5 of every batch file matches the official CIFAR-10", "yes" if source.get("official") else "no"),
        ("files whose md5 differs", ", ".join(source.get("md5_mismatch") or []) or "none"),
    ]
    return pd.DataFrame(rows, columns=["", "value"])


def class_counts(ds) -> pd.DataFrame | None:
    if ds is None:
        return None
    cols = {}
    for split in ("train", "val", "test"):
        y = getattr(ds, f"{split}_y")
        cols[f"{split} ({len(y):,})"] = [int((y == c).sum()) for c in range(len(CLASSES))]
    return pd.DataFrame(cols, index=pd.Index(CLASSES, name="class")).reset_index()


def channel_table(ds) -> pd.DataFrame | None:
    """Per-channel statistics of `ds`'s training images beside the paper's and labkit's constants."""
    if ds is None:
        return None
    s = channel_stats(ds.train_x)
    rows = [
        ("measured: mean", s["mean"]),
        ("measured: dataset-wide std", s["std_dataset"]),
        ("measured: mean of per-image stds", s["std_per_image_mean"]),
        ("original's constants: mean", NORMS["seed"][0]),
        ("original's constants: std", NORMS["seed"][1]),
        ("labkit 'dataset' constants: std", NORMS["dataset"][1]),
    ]
    return pd.DataFrame([(k, *v) for k, v in rows], columns=["statistic", "R", "G", "B"])


def _forward(net, x, names: Sequence[str]) -> tuple[torch.Tensor, dict[str, tuple]]:
    """`net(x)`, and the output shape of each named module, in the order they ran."""
    shapes: dict[str, tuple] = {}
    hooks = [
        getattr(net, n).register_forward_hook(lambda m, i, o, n=n: shapes.update({n: tuple(o.shape)})) for n in names
    ]
    with torch.no_grad():
        out = net.eval()(x)
    for h in hooks:
        h.remove()
    return out, shapes


def architecture_table(cfg: TrainConfig, corrected: TrainConfig) -> pd.DataFrame:
    """The paper's network stage by stage beside the corrected one: blocks, conv, output shape, params."""
    s, c = build_model(cfg), build_model(corrected)
    _, shapes = _forward(s, torch.zeros(1, 3, 32, 32), ["relu", "layer1", "layer2", "layer3", "layer4", "fc"])
    rows = [("stem", "—", "—", cfg.stem, str(shapes["relu"][1:]), count_params(s.conv1) + count_params(s.bn1))]
    for i in range(1, 5):
        ls, lc = getattr(s, f"layer{i}"), getattr(c, f"layer{i}")
        conv = f"3x3, stride {ls[0].conv1.stride[0]}, {ls[0].conv2.out_channels} ch"
        rows.append((f"layer{i}", len(ls), len(lc), conv, str(shapes[f"layer{i}"][1:]), count_params(ls)))
    head = f"avgpool, dropout, linear{', softmax' if cfg.softmax_head else ''}"
    rows.append(("head", "—", "—", head, str(shapes["fc"][1:]), count_params(s.fc)))
    rows.append(("total", sum(s.blocks_per_stage), sum(c.blocks_per_stage), "", "", count_params(s)))
    columns = ["stage", "original's blocks", "corrected blocks", "conv", "output (C, H, W)", "params (original's net)"]
    return pd.DataFrame(rows, columns=columns)


def variants_table(pairs: Sequence[tuple[str, str, TrainConfig]], full_width: int | None = None) -> pd.DataFrame:
    """Parameters and FLOPs per image of every distinct network in `pairs` (notebook, name, cfg)."""
    nets: dict[tuple, tuple[list[str], TrainConfig]] = {}
    for _, name, cfg in pairs:
        names, _ = nets.setdefault(tuple(getattr(cfg, f) for f in NETWORK_FIELDS), ([], cfg))
        if name not in names:
            names.append(name)
    rows = []
    for names, cfg in nets.values():
        net = build_model(cfg)
        row = {
            "runs": ", ".join(ablation_key(n) for n in names),
            "lays": cfg.lays[0] if len(set(cfg.lays)) == 1 else str(list(cfg.lays)),
            "blocks/stage built": net.blocks_per_stage[0],
            "stem": cfg.stem + (" +BN" if cfg.stem_bn else " no BN"),
            "dropout": cfg.dropout,
            "head": "softmax (defect)" if cfg.softmax_head else "logits",
            "width": cfg.width,
            "weight layers": weight_layers(net),
            "params (M)": count_params(net) / 1e6,
            "GFLOP/image fwd": flops_per_image(net, train=False) / 1e9,
            "GFLOP/image train": flops_per_image(net, train=True) / 1e9,
        }
        if full_width and cfg.width != full_width:
            big = build_model(cfg.replace(width=full_width))
            row[f"params (M) at width {full_width}"] = count_params(big) / 1e6
            row[f"GFLOP/image train at width {full_width}"] = flops_per_image(big, train=True) / 1e9
        rows.append(row)
    return pd.DataFrame(rows)


def shape_check(cfg: TrainConfig, batch: int = 2) -> pd.DataFrame:
    """The output shape of each stage in a forward pass; raises if the head's is wrong."""
    x = torch.randn(batch, 3, 32, 32)
    stages = ["conv1", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc", "head"]
    out, shapes = _forward(build_model(cfg), x, stages)
    if tuple(out.shape) != (batch, 10):
        raise AssertionError(f"the network's output is {list(out.shape)}, expected [{batch}, 10]")
    rows = [("input", str(list(x.shape)))] + [(n, str(list(s))) for n, s in shapes.items()]
    what = " (softmax head: probabilities)" if cfg.softmax_head else " (logits)"
    rows.append(("check", f"[{batch}, 10] ok; rows sum to {out.sum(1).mean():.4f}{what}"))
    return pd.DataFrame(rows, columns=["module", "output shape"])


def block_counts(named_depths: Sequence[int] = DEPTHS) -> pd.DataFrame:
    """Defect 1: what `lays` asks for, what the paper's code builds, and the real depth."""
    rows = []
    for lays in named_depths:
        built, fixed = ResNet(lays=(lays,) * 4, seed_extra_block=True, width=8), ResNet(lays=(lays,) * 4, width=8)
        blocks = (built.blocks_per_stage[0], fixed.blocks_per_stage[0])
        rows.append(
            (str([lays] * 4), f"ResNet-{2 * 4 * lays + 2}", *blocks, weight_layers(built), weight_layers(fixed))
        )
    columns = ["lays", "the original calls it", "blocks per stage (original's code)", "blocks per stage (corrected)"]
    return pd.DataFrame(rows, columns=[*columns, "weight layers (original's code)", "weight layers (corrected)"])


def loss_floor(classes: int = 10) -> dict[str, float]:
    """Defect 2: the least cross-entropy of a softmax output (p one-hot) fed to softmax again,
    -log(e / (e + classes - 1)), computed three ways."""
    onehot = torch.eye(classes, dtype=torch.float64)  # the best a softmax head can output
    logits = torch.zeros(classes, dtype=torch.float64)
    logits[0] = 50.0  # from the logit side: softmax of ever larger logits approaches one-hot
    return {
        "analytic": -math.log(math.e / (math.e + classes - 1)),
        "numeric (one-hot output)": nnf.cross_entropy(onehot, torch.arange(classes)).item(),
        "numeric (softmax of logits 50 vs 0)": nnf.cross_entropy(
            torch.softmax(logits, 0)[None], torch.tensor([0])
        ).item(),
    }


def loss_floor_table(floor: float, train_images: int = 40000, batch: int = 512) -> pd.DataFrame:
    """The paper's final summed losses per batch, against the floor."""
    n = math.ceil(train_images / batch)
    losses = [(a.where, a.paper_loss) for a in paper.ABLATIONS] + [
        ("table 11: final (60 epochs)", paper.NUMBERS["final_loss"])
    ]
    columns = ["original's run", "final summed loss", "batches per epoch", "loss per batch", "floor", "above the floor"]
    return pd.DataFrame([(k, v, n, v / n, floor, v / n - floor) for k, v in losses], columns=columns)
