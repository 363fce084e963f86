"""Every figure the report shows, made with pyplot and closed at once (see _figure)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .runs import Run
from .tables import _key_of


def _figure(*grid: int, **kw):
    """A figure and its axes, closed at once: shown where it is displayed (or returned as a
    cell's value), never drawn a second time by the inline backend, which draws every figure
    pyplot holds open when a cell ends."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*grid, **kw)
    plt.close(fig)
    return fig, axes


def plot_loss_curves(
    runs: Sequence[Run],
    y: str = "loss_sum",
    title: str = "",
    label_of=None,
    ax=None,
    paper_final: dict[str, float] | None = None,
    paper_epoch: int | None = None,
):
    """One line per run (colour: configuration, one line per seed), `y` against epoch.

    `paper_final` (label -> the seed's final summed loss, reached at `paper_epoch`) marks the
    seed's own number as an x in its configuration's colour, so each of the seed's loss
    figures can be read against ours. Runs that stop before `paper_epoch` (quick and smoke
    profiles) get no marks, and the title says so, rather than a stretched axis."""
    import seaborn as sns
    from matplotlib.ticker import MaxNLocator

    if paper_final and (y != "loss_sum" or paper_epoch is None):
        raise ValueError("paper_final marks the seed's summed loss: it needs y='loss_sum' and paper_epoch")
    label_of = label_of or _key_of
    frames = []
    for r in runs:
        if len(r.history):
            h = r.history[["epoch", y]].copy()
            h["run"], h["config"], h["seed"] = r.id, label_of(r), r.config.seed
            frames.append(h)
    fig = None
    if ax is None:
        fig, ax = _figure(figsize=(7.5, 3.8))
    if frames:
        df = pd.concat(frames, ignore_index=True)
        sns.lineplot(data=df, x="epoch", y=y, hue="config", units="run", estimator=None, marker="o", ax=ax, lw=1.4, ms=4)
        marks = {k: v for k, v in (paper_final or {}).items() if k in set(df["config"])}
        if marks and df["epoch"].max() >= paper_epoch:
            colours = {label: h.get_color() for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
            for label, v in marks.items():
                ax.plot(paper_epoch, v, "x", color=colours[label], ms=10, mew=2.5, zorder=5)
            # in grey in the legend: each mark takes its configuration's colour
            ax.plot([], [], "x", color="0.3", ms=8, mew=2, label="the seed's final loss (x)")
        elif marks:
            title += f"\n(the seed's final losses, at epoch {paper_epoch}, are not marked: these runs are shorter)"
        ax.legend(title=None, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_ylabel({"loss_sum": "training loss, summed over the epoch's batches", "loss_mean": "training loss per batch"}.get(y, y), fontsize=9)
    return fig if fig is not None else ax.figure


def plot_estimates(est: pd.DataFrame, paper_values: dict[str, float] | None = None, xlabel: str = "", title: str = "", scale: float = 100.0):
    """Mean with 95% CI error bars per label, each run as a dot, the seed's number as a red x.

    `est` is an estimates_frame(...); `paper_values` maps some of its labels to a number to
    mark (the seed's); `scale` 100 shows fractions as percent (1 for anything else)."""
    fig, ax = _figure(figsize=(7.5, 0.55 * max(len(est), 2) + 1.4))
    paper_values = {k: v for k, v in (paper_values or {}).items() if k in set(est["label"])} if len(est) else {}
    seen: set[str] = set()

    def once(label: str) -> str | None:
        if label in seen:
            return None
        seen.add(label)
        return label

    for i, row in enumerate(est.itertuples()):
        ax.scatter([v * scale for v in row.values], [i] * len(row.values), s=14, color="0.55", zorder=2, label=once("one run"))
        if row.n >= 2:
            err = [[(row.mean - row.lo) * scale], [(row.hi - row.mean) * scale]]
            ax.errorbar(row.mean * scale, i, xerr=err, fmt="o", color="C0", capsize=4, zorder=3, label=once("mean, 95% CI"))
        elif row.n == 1:
            ax.plot(row.mean * scale, i, "o", color="C0", zorder=3, label=once("one run only: no CI"))
        if row.label in paper_values:
            ax.plot(paper_values[row.label] * scale, i, "x", color="C3", ms=9, mew=2, zorder=4, label=once("the seed's number"))
    pts = [v * scale for vs in est["values"] for v in vs] + [v * scale for v in paper_values.values()] if len(est) else []
    if pts:
        # Intervals from 2-3 runs can be wider than the data; keep the axis on the data.
        lo, hi = min(pts), max(pts)
        pad = max(2.0, 0.25 * (hi - lo))
        ax.set_xlim(max(0.0, lo - pad) if scale == 100 else lo - pad, min(100.0, hi + pad) if scale == 100 else hi + pad)
        x0, x1 = ax.get_xlim()
        if any(r.n >= 2 and (r.lo * scale < x0 or r.hi * scale > x1) for r in est.itertuples()):
            title += "\n(some error bars are cut at the axis: their CI runs beyond it)"
    ax.set_yticks(range(len(est)), list(est["label"]))
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    if seen:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def _chw_to_img(x):
    return x.permute(1, 2, 0).cpu().numpy()  # [3, 32, 32] -> [32, 32, 3]


def plot_samples(ds, per_class: int = 6, seed: int = 0):
    """A grid of random training images: one column per class."""
    import torch

    if ds is None:
        return None
    from .data import CLASSES

    g = torch.Generator().manual_seed(seed)
    fig, axes = _figure(per_class, len(CLASSES), figsize=(len(CLASSES) * 0.78, per_class * 0.78 + 0.3))
    for c, name in enumerate(CLASSES):
        idx = torch.nonzero(ds.train_y == c).flatten()
        pick = idx[torch.randperm(len(idx), generator=g)[:per_class]]
        for j in range(per_class):
            ax = axes[j, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
            if j < len(pick):
                ax.imshow(_chw_to_img(ds.train_x[pick[j]]), interpolation="nearest")
        axes[0, c].set_title(name, fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.01, wspace=0.06, hspace=0.06)
    return fig


def plot_augmentation(ds, images: int = 4, copies: int = 6, seed: int = 0):
    """Each row: an original training image, then `copies` draws of the training augmentation."""
    import torch

    if ds is None:
        return None
    from .data import CLASSES, augment

    g = torch.Generator().manual_seed(seed)
    x = ds.train_x[:images]
    fig, axes = _figure(images, copies + 1, figsize=((copies + 1) * 1.1, images * 1.1 + 0.3))
    for i in range(images):
        axes[i, 0].imshow(_chw_to_img(x[i]), interpolation="nearest")
        axes[i, 0].set_ylabel(CLASSES[int(ds.train_y[i])], rotation=0, ha="right", va="center", fontsize=9)
        aug = augment(x[i : i + 1].repeat(copies, 1, 1, 1), generator=g)  # [copies, 3, 32, 32]
        for j in range(copies):
            axes[i, j + 1].imshow(_chw_to_img(aug[j]), interpolation="nearest")
    axes[0, 0].set_title("original", fontsize=9)
    for j in range(copies):
        axes[0, j + 1].set_title(f"augmented {j + 1}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
    fig.subplots_adjust(left=0.13, right=0.99, top=0.9, bottom=0.01, wspace=0.08, hspace=0.08)
    return fig


def plot_loss_floor(table: pd.DataFrame, floor: float):
    fig, ax = _figure(figsize=(7.5, 3.2))
    ys = range(len(table))
    ax.hlines(ys, floor, table["loss per batch"], color="0.7", lw=2)
    ax.plot(table["loss per batch"], ys, "o", color="C0", label="the seed's final loss per batch")
    ax.axvline(floor, color="C3", lw=2, label=f"floor of a softmax head: {floor:.4f}")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlim(-0.05, max(table["loss per batch"]) * 1.08)
    ax.set_yticks(list(ys), list(table["seed's run"]))
    ax.invert_yaxis()
    ax.set_xlabel("final training loss per batch (the seed's summed loss / batches per epoch)")
    ax.legend(fontsize=8, loc="center left")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def plot_val_curves(runs: Sequence[Run], title: str = ""):
    """Validation accuracy per epoch, the selected (best-validation) epoch marked."""
    fig, ax = _figure(figsize=(7.5, 3.8))
    for i, r in enumerate(runs):
        if not len(r.history):
            continue
        h = r.history
        ax.plot(h["epoch"], h["val_acc"] * 100, marker="o", ms=3, lw=1.3, color=f"C{i % 10}", label=f"{r.name} (seed {r.config.seed})")
        sel = (r.summary or {}).get("selected_epoch")
        if sel is not None and sel in set(h["epoch"]):
            v = float(h.loc[h["epoch"] == sel, "val_acc"].iloc[0]) * 100
            ax.plot([sel], [v], marker="*", ms=13, color=f"C{i % 10}", mec="k")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy %")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
