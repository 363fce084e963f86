"""Every figure the report shows: made with pyplot and closed at once (_figure), shown where displayed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from matplotlib.ticker import MaxNLocator

from .data import CLASSES, augment
from .runs import Run
from .tables import _key_of, estimates_frame

LOSS_LABELS = {"loss_sum": "training loss, summed over the epoch's batches", "loss_mean": "training loss per batch"}


def _figure(*grid: int, **kw):
    """A figure and its axes, closed at once: the inline backend, which draws every figure pyplot
    holds open when a cell ends, never draws it a second time."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*grid, **kw)
    plt.close(fig)
    return fig, axes


def _loss_axes(ax, runs: Sequence[Run], y: str, title: str, label_of, paper_final: dict | None, paper_epoch: int | None) -> None:
    import seaborn as sns

    frames = []
    for r in runs:
        if len(r.history):
            h = r.history[["epoch", y]].copy()
            h["run"], h["config"] = r.id, (label_of or _key_of)(r)
            frames.append(h)
    if not frames:
        ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)
    else:
        df = pd.concat(frames, ignore_index=True)
        sns.lineplot(data=df, x="epoch", y=y, hue="config", units="run", estimator=None, marker="o", ax=ax, lw=1.2, ms=3)
        marks = {k: v for k, v in (paper_final or {}).items() if k in set(df["config"])}
        if marks and df["epoch"].max() >= paper_epoch:
            colours = {label: h.get_color() for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
            for label, v in marks.items():
                ax.plot(paper_epoch, v, "x", color=colours[label], ms=10, mew=2.5, zorder=5)
            ax.plot([], [], "x", color="0.3", ms=8, mew=2, label="the original's final loss")  # each x in its colour
        elif marks:
            title += f"\n(the original's final losses, at epoch {paper_epoch}, are not marked: these runs are shorter)"
        ax.legend(title=None, fontsize=7, loc="upper right", frameon=True, framealpha=0.85)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(LOSS_LABELS.get(y, y), fontsize=9)


def plot_loss_curves(runs: Sequence[Run], y: str = "loss_sum", title: str = "", label_of: Callable[[Run], str] | None = None,
                     paper_final: dict[str, float] | None = None, paper_epoch: int | None = None):
    """`y` against epoch, one line per run, coloured by configuration (`label_of`, default the row
    key). `paper_final` (label -> the original's final summed loss at `paper_epoch`) marks its
    number as an x in the configuration's colour; runs shorter than that get none, and say so."""
    if paper_final and (y != "loss_sum" or paper_epoch is None):
        raise ValueError("paper_final marks the original's summed loss: it needs y='loss_sum' and paper_epoch")
    fig, ax = _figure(figsize=(7.5, 3.6))
    _loss_axes(ax, runs, y, title, label_of, paper_final, paper_epoch)
    fig.tight_layout()
    return fig


def _estimates_axes(ax, est: pd.DataFrame, paper_values: dict | None, xlabel: str, title: str, scale: float) -> None:
    paper_values = {k: v for k, v in (paper_values or {}).items() if k in set(est["label"])} if len(est) else {}
    seen: list[str] = []

    def once(label: str) -> str | None:  # each label once in the legend
        seen.append(label)
        return label if seen.count(label) == 1 else None

    for i, row in enumerate(est.itertuples()):
        dots = [v * scale for v in row.values]
        ax.scatter(dots, [i] * len(dots), s=16, color="0.45", zorder=3, label=once("one run"))
        if row.n >= 2:
            err = [[(row.mean - row.lo) * scale], [(row.hi - row.mean) * scale]]
            ax.errorbar(row.mean * scale, i + 0.18, xerr=err, fmt="o", color="C0", capsize=4, zorder=2, label=once("mean, 95% CI"))
        if row.label in paper_values:
            ax.plot(paper_values[row.label] * scale, i, "x", color="C3", ms=9, mew=2, zorder=4, label=once("the original's number"))
    pts = [v * scale for vs in est["values"] for v in vs] + [v * scale for v in paper_values.values()]
    pts += [b * scale for r in est.itertuples() if r.n >= 2 for b in (r.lo, r.hi)]  # whole intervals: none cut at the axis
    if pts:
        pad = max(1.0, 0.05 * (max(pts) - min(pts)))
        lo, hi = min(pts) - pad, max(pts) + pad
        ax.set_xlim(max(0.0, lo) if scale == 100 else lo, min(100.0, hi) if scale == 100 else hi)
    ax.set_yticks(range(len(est)), list(est["label"]), fontsize=8)
    ax.set_ylim(len(est) - 0.5, -0.6)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    if seen:
        ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0 if not title else 1.08), ncol=3, frameon=False)


def plot_estimates(est: pd.DataFrame, paper_values: dict | None = None, xlabel: str = "", title: str = "", scale=100.0):
    """Per label of `est` (an estimates_frame): every run as a dot, the mean with its 95% CI, and the
    original's number (`paper_values`) as a red x; `scale` 100 shows fractions as percent."""
    fig, ax = _figure(figsize=(7.5, 0.5 * max(len(est), 2) + 1.5))
    _estimates_axes(ax, est, paper_values, xlabel, title, scale)
    fig.tight_layout()
    return fig


def plot_ablation(runs: Sequence[Run], group: str, loss_marks: dict, acc_marks: dict):
    """One ablation group side by side: the summed loss per epoch of every run, and every run's
    final validation accuracy with each configuration's mean and 95% CI."""
    fig, (left, right) = _figure(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.25, 1]})
    _loss_axes(left, runs, "loss_sum", f"{group}: training loss per epoch", None, loss_marks, 30)
    _estimates_axes(right, estimates_frame(runs, "final_val_acc"), acc_marks, "final validation accuracy %", "", 100.0)
    fig.tight_layout()
    return fig


def plot_val_curves(runs: Sequence[Run], title: str = ""):
    """Validation accuracy per epoch, coloured by configuration, the selected (best-validation) epoch starred."""
    fig, ax = _figure(figsize=(7.5, 3.6))
    colours = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(r.name for r in runs))}
    for r in runs:
        if not len(r.history):
            continue
        h, colour = r.history, colours[r.name]
        first = r is next(o for o in runs if o.name == r.name)
        ax.plot(h["epoch"], h["val_acc"] * 100, marker="o", ms=2, lw=1.0, color=colour, label=r.name if first else None)
        sel = (r.summary or {}).get("selected_epoch")
        if sel is not None and sel in set(h["epoch"]):
            v = float(h.loc[h["epoch"] == sel, "val_acc"].iloc[0]) * 100
            ax.plot([sel], [v], marker="*", ms=11, color=colour, mec="k")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy %")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def _show_image(ax, x: torch.Tensor | None = None) -> None:
    """Image `x` ([3, H, W]) in `ax`, without ticks or frame; none: an empty cell."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[:].set_visible(False)
    if x is not None:
        ax.imshow(x.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")


def plot_samples(ds, per_class: int = 6, seed: int = 0):
    """Random training images, one column per class; None without data."""
    if ds is None:
        return None
    g = torch.Generator().manual_seed(seed)
    fig, axes = _figure(per_class, len(CLASSES), figsize=(len(CLASSES) * 0.78, per_class * 0.78 + 0.3))
    for c, name in enumerate(CLASSES):
        idx = torch.nonzero(ds.train_y == c).flatten()
        pick = idx[torch.randperm(len(idx), generator=g)[:per_class]]
        for j in range(per_class):
            _show_image(axes[j, c], ds.train_x[pick[j]] if j < len(pick) else None)
        axes[0, c].set_title(name, fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.01, wspace=0.06, hspace=0.06)
    return fig


def plot_augmentation(ds, images: int = 4, copies: int = 6, seed: int = 0):
    """Each row an original training image, then `copies` draws of the training augmentation; None without data."""
    if ds is None:
        return None
    g = torch.Generator().manual_seed(seed)
    x = ds.train_x[:images]
    fig, axes = _figure(images, copies + 1, figsize=((copies + 1) * 1.1, images * 1.1 + 0.3))
    for i in range(images):
        _show_image(axes[i, 0], x[i])
        axes[i, 0].set_ylabel(CLASSES[int(ds.train_y[i])], rotation=0, ha="right", va="center", fontsize=9)
        aug = augment(x[i : i + 1].repeat(copies, 1, 1, 1), generator=g)  # [copies, 3, 32, 32]
        for j in range(copies):
            _show_image(axes[i, j + 1], aug[j])
    for j, name in enumerate(["original"] + [f"augmented {j + 1}" for j in range(copies)]):
        axes[0, j].set_title(name, fontsize=9)
    fig.subplots_adjust(left=0.13, right=0.99, top=0.9, bottom=0.01, wspace=0.08, hspace=0.08)
    return fig


def plot_loss_floor(table: pd.DataFrame, floor: float):
    """The paper's final losses per batch (a loss_floor_table) against the floor of its softmax head."""
    fig, ax = _figure(figsize=(7.5, 3.2))
    ys = range(len(table))
    ax.hlines(ys, floor, table["loss per batch"], color="0.7", lw=2)
    ax.plot(table["loss per batch"], ys, "o", color="C0", label="the original's final loss per batch")
    ax.axvline(floor, color="C3", lw=2, label=f"floor of a softmax head: {floor:.4f}")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlim(-0.05, max(table["loss per batch"]) * 1.08)
    ax.set_yticks(list(ys), list(table["original's run"]))
    ax.invert_yaxis()
    ax.set_xlabel("final training loss per batch (the original's summed loss / batches per epoch)")
    ax.legend(fontsize=8, loc="center left")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig
