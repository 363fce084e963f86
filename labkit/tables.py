"""The results as tables: the original report's numbers beside ours, its conclusions tested by
the planned comparisons, the ablation, depth, final and attribution tables, every run, and
the runs not yet trained (how they were made: methods.py)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape as html_escape

import pandas as pd

from . import paper
from .config import ConfigError
from .lab import (
    DEPTH_RECIPES,
    DEPTHS,
    FINAL_NAME,
    GRID,
    MODERN_NAME,
    RESTART_NAME,
    Lab,
    ablation_key,
    before_fix,
    depth_name,
)
from .methods import views_at_test
from .runs import Run
from .stats import Difference, Estimate, bounds_of, clean_values, estimate, judge, paired, welch

MEASURES = {"final_loss_sum": "final loss (summed)", "final_val_acc": "val acc %", "test_acc": "test acc %"}
RECIPE_WORDS = {"seed": "the original's recipe", "corrected": "corrected net, modern recipe"}


def _key_of(run: Run) -> str:
    return ablation_key(run.name)


def _values(runs: Sequence[Run], field: str) -> list[float]:
    return [(r.summary or {}).get(field) for r in runs]


def _estimate(runs: Sequence[Run], field: str) -> Estimate:
    return estimate(_values(runs, field), bounds=bounds_of(field))


def _by_key(runs: Sequence[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for r in runs:
        out.setdefault(_key_of(r), []).append(r)
    return out


def _named(runs: Sequence[Run], name: str) -> list[Run]:
    return [r for r in runs if r.name == name]


# ---------------------------------------------------------------------------------------
# The planned comparison of two configurations
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compared:
    """`better` − `worse`: paired by seed, Welch's beside it, and which of them judges."""

    paired: Difference
    welch: Difference
    basis: str  # "paired" | "Welch" | "" (not compared)
    verdict: str

    def fmt(self, unit: str = " pts") -> str:
        if not self.basis:
            return "—"
        return (self.paired if self.basis == "paired" else self.welch).fmt(unit=unit) + f" ({self.basis})"


PLANNED = (
    "The analysis was fixed before the runs it judges were trained: two configurations are compared "
    "by seed (runs of one seed share their initial weights and data order), with the paired 95% t-interval of the "
    "difference deciding and Welch's interval beside it. Runs trained before the initial-weights fix did not "
    "always share their start, so they are compared by Welch's interval alone, and never with runs trained after it."
)


def compare(better: Sequence[Run], worse: Sequence[Run], field: str, claimed: float | None = None) -> Compared:
    """The planned comparison of two configurations on `field` (`claimed`: the original's own
    difference, which the verdict places inside or outside our interval)."""
    w = welch(_values(better, field), _values(worse, field))
    by_seed = [{r.config.seed: (r.summary or {}).get(field) for r in side} for side in (better, worse)]
    p = paired(*by_seed)
    eras = {before_fix(r) for r in [*better, *worse]}
    if len(eras) > 1:
        return Compared(p, w, "", "not compared: one side was trained before the initial-weights fix, the other after")
    if eras == {False} and p.na >= 2:
        return Compared(p, w, "paired", judge(p, claimed))
    return Compared(p, w, "Welch", judge(w, claimed))


@dataclass(frozen=True)
class Claim:
    section: str
    claim: str
    comparison: str
    claimed: float | None  # the original's own difference (None: it gives none)
    result: Compared


def claims(abl: Sequence[Run], final: Sequence[Run], depth: Sequence[Run], modern: Sequence[Run]) -> list[Claim]:
    """Every conclusion of the original report, then labkit's, judged by the planned comparison."""
    out, by = [], _by_key(abl)
    for group, rows in paper.CLAIMS.items():
        for claim, better, worse, sized in rows:
            claimed = paper.ablation(better).paper_val_acc - paper.ablation(worse).paper_val_acc
            c = compare(by.get(better, []), by.get(worse, []), "final_val_acc", claimed if sized else None)
            out.append(Claim(f"4 {group}", claim, f"{better} − {worse}, val acc", claimed, c))
    shallow, deep = DEPTHS
    claimed = paper.NUMBERS["depth_test_acc"][deep] - paper.NUMBERS["depth_test_acc"][shallow]
    for recipe in DEPTH_RECIPES:
        c = compare(_named(depth, depth_name(deep, recipe)), _named(depth, depth_name(shallow, recipe)), "test_acc")
        out.append(Claim("3", f"deeper is better ({RECIPE_WORDS[recipe]})", f"lays {deep} − {shallow}, test acc", claimed, c))
    c = compare(modern, final, "test_acc")
    out.append(Claim("5", "labkit: the modern recipe beats the original's final run", "modern − final, test acc", None, c))
    return out


def findings(abl: Sequence[Run], final: Sequence[Run], depth: Sequence[Run], modern: Sequence[Run]) -> pd.DataFrame:
    """`claims` as a table: the paired interval where it judges (a column only if one does), Welch's beside it."""
    table = pd.DataFrame([{
        "§": k.section,
        "conclusion (original §4.6)": k.claim,
        "comparison": k.comparison,
        "original Δ": "—" if k.claimed is None else f"{k.claimed * 100:+.2f}",
        "ours Δ, paired [95% CI]": k.result.paired.fmt(unit="") if k.result.basis == "paired" else "—",
        "ours Δ, Welch [95% CI]": k.result.welch.fmt(unit=""),
        "runs": f"{k.result.welch.na}+{k.result.welch.nb}",
        "verdict": k.result.verdict,
    } for k in claims(abl, final, depth, modern)])
    paired_col = "ours Δ, paired [95% CI]"
    return table if (table[paired_col] != "—").any() else table.drop(columns=paired_col)


# ---------------------------------------------------------------------------------------
# The original's numbers beside ours
# ---------------------------------------------------------------------------------------


def _vs_paper(runs: Sequence[Run], field: str, paper_value: float | None) -> dict:
    """Our runs' `field` (n, mean ± SD, 95% CI) beside the original's number (None: it gives none)."""
    scale, digits = (1, 3) if "loss" in field else (100, 2)
    e = _estimate(runs, field)
    return {
        "original": "—" if paper_value is None else f"{paper_value * scale:.{digits}f}",
        "n": e.n,
        "ours: mean ± SD": e.fmt(scale=scale, digits=digits, show_n=False),
        "ours: 95% CI": e.fmt_ci(scale=scale, digits=digits),
        "Δ ours − original": "—" if paper_value is None or not e.n else f"{(e.mean - paper_value) * scale:+.{digits}f}",
    }


def paper_vs_ours(abl: Sequence[Run], final: Sequence[Run], depth: Sequence[Run], modern: Sequence[Run]) -> pd.DataFrame:
    """Every number the original report gives beside ours."""
    rows, by = [], _by_key(abl)

    def add(where: str, runs: Sequence[Run], field: str, value: float | None) -> None:
        rows.append({"original report": where, "measure": MEASURES[field], **_vs_paper(runs, field, value)})

    for a in paper.ABLATIONS:
        add(a.where, by.get(a.key, []), "final_loss_sum", a.paper_loss)
        add(a.where, by.get(a.key, []), "final_val_acc", a.paper_val_acc)
    add("table 11: final run, 60 epochs", final, "final_loss_sum", paper.NUMBERS["final_loss"])
    add("table 11: final run, 60 epochs", final, "test_acc", paper.NUMBERS["final_test_acc"])
    for lays, acc in paper.NUMBERS["depth_test_acc"].items():
        for recipe in DEPTH_RECIPES:
            rs = _named(depth, depth_name(lays, recipe))
            add(f"§4.1 lays {lays} (tuned on test); ours: {RECIPE_WORDS[recipe]}{views_at_test(rs)}", rs, "test_acc", acc)
    add(f"§4.1 best, lays 3 (tuned on test); ours: modern recipe{views_at_test(modern)}", modern, "test_acc",
        paper.NUMBERS["depth_test_acc"][3])
    return pd.DataFrame(rows)


def data_caveat(runs: Sequence[Run], lab: Lab) -> str | None:
    """What a comparison with the original must say when our data are not the official files
    (the original's were), naming them by lab.data_label; None when they are."""
    sources = [(r.summary or {}).get("data") or {} for r in runs]
    if not sources or all(s.get("official") for s in sources):
        return None
    if any(s.get("synthetic") for s in sources):
        return "These runs trained on synthetic data: a check of the pipeline, not a result to set beside the original's numbers."
    what = lab.data_label or "a copy that is not the official CIFAR-10 files"
    return (
        f"Our runs trained and were tested on {html_escape(what)}; the original's numbers come from the official files. "
        "Each Δ ours − original therefore holds the recipe's effect and the data's: a stand-in such as a JPEG re-encoding "
        "costs a few points of accuracy by itself. Differences between our own runs share the data and are not affected."
    )


# ---------------------------------------------------------------------------------------
# Sections 3-5
# ---------------------------------------------------------------------------------------


def _paper_group(group: str) -> None:
    if group not in paper.ABLATION_GROUPS:
        raise ConfigError(
            f"{group!r} is not one of the original report's ablation groups {list(paper.ABLATION_GROUPS)}: these tables set "
            "its numbers beside ours. For your own variants use estimates_frame(runs, field, label_of) with plot_estimates, "
            "and stats.welch or stats.paired with stats.judge"
        )


def ablation_table(group: str, runs: Sequence[Run]) -> pd.DataFrame:
    """The original's table of one ablation group, its numbers beside ours, each row against the
    baseline by the planned comparison; runs matched to rows by name."""
    _paper_group(group)
    by, base_paper = _by_key(runs), paper.ablation("baseline").paper_val_acc
    rows = []
    for key in paper.ABLATION_GROUPS[group]:
        a, rs = paper.ablation(key), by.get(key, [])
        cfg = rs[0].config if rs else paper.ablation_config(key)
        loss, acc = _estimate(rs, "final_loss_sum"), _estimate(rs, "final_val_acc")
        vs = None if key == "baseline" else compare(rs, by.get("baseline", []), "final_val_acc")
        rows.append({
            "row": key,
            "original's table": ", ".join(map(str, a.tables)),
            "decay": cfg.decay_rate,
            "dropout": cfg.dropout,
            "stem": f"{cfg.stem}{' +BN' if cfg.stem_bn else ' no BN'}",
            "n": acc.n,
            "final loss (sum): original": a.paper_loss,
            "final loss (sum): ours, mean ± SD": loss.fmt(digits=3, show_n=False),
            "val acc %: original": a.paper_val_acc * 100,
            "val acc %: ours, mean ± SD": acc.fmt(scale=100, show_n=False),
            "val acc %: ours, 95% CI": acc.fmt_ci(scale=100),
            "Δ vs baseline, pts: original": None if vs is None else (a.paper_val_acc - base_paper) * 100,
            "Δ vs baseline, pts: ours [95% CI]": "—" if vs is None else vs.fmt(unit=""),
        })
    return pd.DataFrame(rows)


ABLATION_FORMATS = {"decay": "{:g}", "dropout": "{:g}", "final loss (sum): original": "{:.3f}",
                    "val acc %: original": "{:.2f}", "Δ vs baseline, pts: original": "{:+.2f}"}


def ablation_view(table: pd.DataFrame) -> pd.DataFrame:
    """`ablation_table` on its side, every value as text: one column per row of the original's table."""

    def text(col: pd.Series) -> pd.Series:
        fmt = ABLATION_FORMATS.get(col.name, "{}")
        return col.map(lambda v: "—" if pd.isna(v) else v if isinstance(v, str) else fmt.format(v))

    return table.set_index("row").apply(text).T.rename_axis(index="", columns=None).reset_index()


def depth_table(runs: Sequence[Run]) -> pd.DataFrame:
    rows = []
    for lays, paper_acc in paper.NUMBERS["depth_test_acc"].items():
        for recipe in DEPTH_RECIPES:
            rs = _named(runs, depth_name(lays, recipe))
            cfg, e = rs[0].config if rs else None, _estimate(rs, "test_acc")
            rows.append({
                "lays": lays,
                "recipe": RECIPE_WORDS[recipe] + views_at_test(rs),
                "blocks/stage": cfg.lays[0] + int(cfg.seed_extra_block) if cfg else None,
                "epochs": cfg.epochs if cfg else None,
                "selected epoch (best val)": ", ".join(str(s) for s in _values(rs, "selected_epoch")) or "—",
                "best val acc %": _estimate(rs, "best_val_acc").fmt(scale=100),
                "test acc % (once)": e.fmt(scale=100),
                "95% CI": e.fmt_ci(scale=100),
                "original: test acc % (tuned on test)": paper_acc * 100,
                "Δ ours − original, pts": e.mean * 100 - paper_acc * 100 if e.n else None,
            })
    return pd.DataFrame(rows)


def final_table(final: Sequence[Run], restart: Sequence[Run], modern: Sequence[Run]) -> pd.DataFrame:
    """The final run (table 11), the same with its lr started over at epoch 30, and the modern recipe."""
    rows = [
        ("final run, 60 epochs", final, "test_acc", paper.NUMBERS["final_test_acc"]),
        ("final run, 60 epochs", final, "final_loss_sum", paper.NUMBERS["final_loss"]),
        ("final run, lr started over at epoch 30", restart, "test_acc", paper.NUMBERS["final_test_acc"]),
        (f"modern recipe{views_at_test(modern)}; original: its best, lays 3", modern, "test_acc", paper.NUMBERS["depth_test_acc"][3]),
    ]
    return pd.DataFrame([{"runs": w, "measure": MEASURES[f], **_vs_paper(rs, f, v)} for w, rs, f, v in rows])


GRID_CELLS = [  # (recipe, network, run name); each compared with the cell of both defects under its recipe
    ("original's", "both defects (the original's)", "ablation-baseline"),
    ("original's", "extra block only", "grid-block_only"),
    ("original's", "softmax head only", "grid-softmax_only"),
    ("original's", "corrected", "grid-corrected"),
    ("modern", "both defects (the original's)", "grid-defects_modern"),
    ("modern", "corrected", MODERN_NAME),
]


def grid_table(runs: Sequence[Run]) -> pd.DataFrame:
    """The attribution grid: test accuracy of each network under each recipe, and each cell
    against the original's network under the same recipe."""
    assert {n for *_, n in GRID_CELLS} >= set(GRID)
    rows = []
    for recipe, net, name in GRID_CELLS:
        rs, base = _named(runs, name), _named(runs, GRID_CELLS[0 if recipe == "original's" else 4][2])
        e = _estimate(rs, "test_acc")
        vs = None if not rs or not base or name in ("ablation-baseline", "grid-defects_modern") else compare(rs, base, "test_acc")
        rows.append({
            "recipe": recipe + views_at_test(rs),
            "network": net,
            "n": e.n,
            "test acc %: mean ± SD": e.fmt(scale=100, show_n=False),
            "95% CI": e.fmt_ci(scale=100),
            "Δ vs both defects, pts [95% CI]": "—" if vs is None else vs.fmt(unit=""),
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------
# Every run, the low ones, the ones not yet trained
# ---------------------------------------------------------------------------------------


def low_runs(runs: Sequence[Run], field: str = "final_val_acc", points: float = 4.0) -> list[tuple[Run, float]]:
    """Runs more than `points` below the median of the other runs of their configuration (and
    that gap), lowest first: the runs a mean hides."""
    out = []
    for r in runs:
        others = clean_values(_values([o for o in runs if o.name == r.name and o is not r], field))
        v = (r.summary or {}).get(field)
        if others and v is not None and (gap := (statistics.median(others) - v) * 100) > points:
            out.append((r, gap))
    return sorted(out, key=lambda rg: -rg[1])


def every_run(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per configuration, one column per seed: each run's final validation and test
    accuracy (%), with the code that trained the configuration's runs; "low" marks a run far
    below its configuration's others."""
    low = {r.id for r, _ in low_runs(runs)}
    by: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: (r.name, r.config.seed)):
        by.setdefault(r.name, []).append(r)
    rows = []
    for name, rs in by.items():
        row = {"configuration": name, "epochs": rs[0].config.epochs,
               "code": ", ".join(sorted({str(r.summary.get("code_version", "?")) for r in rs}))
               + (" (before the fix)" if any(before_fix(r) for r in rs) else "")}
        for r in rs:
            v, t = r.summary.get("final_val_acc"), r.summary.get("test_acc")
            cell = f"{'—' if v is None else f'{100 * v:.2f}'} / {100 * t:.2f}"
            row[f"seed {r.config.seed}"] = cell + (" low" if r.id in low else "")
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def not_trained(lab: Lab, seeds: int | None = None, depth_seeds: int | None = None) -> pd.DataFrame | None:
    """The planned runs not finished in the store, one row per set of missing seeds (the
    configurations that miss them, in plan order); None when none are missing."""
    missing: dict[str, list[int]] = {}
    for nb, name, cfg in lab.plan(seeds, depth_seeds):
        if not lab.finished(name, cfg):
            missing.setdefault(f"{name} ({nb[:2]}, {cfg.epochs} epochs)", []).append(cfg.seed)
    if not missing:
        return None
    by_seeds: dict[str, list[str]] = {}
    for config, ss in missing.items():
        by_seeds.setdefault(", ".join(map(str, ss)), []).append(config)
    return pd.DataFrame([{"seeds not yet trained": k, "configurations": "; ".join(v), "runs": len(v) * (k.count(",") + 1)}
                         for k, v in by_seeds.items()])


# ---------------------------------------------------------------------------------------
# What figures mark, estimates for a plot, runs of two stores side by side
# ---------------------------------------------------------------------------------------


def paper_ablation_values(field: str) -> dict[str, float]:
    """An Ablation field ("paper_loss" or "paper_val_acc") for each row key: what the figures mark."""
    return {a.key: getattr(a, field) for a in paper.ABLATIONS}


def paper_figures(group: str) -> str:
    """The original's figure numbers of one ablation group's rows, e.g. "2, 6, 7, 9, 1, 3"."""
    _paper_group(group)
    return ", ".join(str(t) for key in paper.ABLATION_GROUPS[group] for t in paper.ablation(key).tables)


def paper_test_accuracies() -> dict[str, float]:
    """The original's test accuracy beside notebook 05's runs: its final run's, its best beside modern."""
    best = paper.NUMBERS["depth_test_acc"][DEPTHS[-1]]
    return {FINAL_NAME: paper.NUMBERS["final_test_acc"], RESTART_NAME: paper.NUMBERS["final_test_acc"], MODERN_NAME: best}


def estimates_frame(runs: Sequence[Run], field: str, label_of: Callable[[Run], str] | None = None) -> pd.DataFrame:
    """Per label (`label_of(run)`, default the row key): n, mean, SD, CI of `field`, and each run's value."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault((label_of or _key_of)(r), []).append(r)
    rows = []
    for label, rs in groups.items():
        e = _estimate(rs, field)
        rows.append((label, e.n, e.mean, e.sd, e.lo, e.hi, clean_values(_values(rs, field))))
    return pd.DataFrame(rows, columns=["label", "n", "mean", "sd", "lo", "hi", "values"])


def compare_runs(new: Sequence[Run], old: Sequence[Run]) -> pd.DataFrame:
    """The finished runs of both sets (same id), their results and code versions side by side."""
    before = {r.id: r for r in old if r.finished}
    rows = []
    for r in sorted((r for r in new if r.finished and r.id in before), key=lambda r: r.id):
        a, b = r.summary or {}, before[r.id].summary or {}
        row = {"run": r.id, "code (new)": a.get("code_version", "?"), "code (old)": b.get("code_version", "?")}
        for field in ("final_val_acc", "test_acc"):
            x, y = a.get(field), b.get(field)
            row[f"{field} new"], row[f"{field} old"] = x, y
            row[f"{field} new − old, pts"] = None if x is None or y is None else round((x - y) * 100, 2)
        rows.append(row)
    return pd.DataFrame(rows)
