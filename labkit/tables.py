"""Every table the report shows, as a DataFrame: the paper's numbers beside ours, its claims
tested, provenance, and the data and model tables."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from html import escape as html_escape

import pandas as pd
import torch
import torch.nn.functional as nnf

from . import paper
from .config import ConfigError, TrainConfig
from .data import CLASSES, NORMS, channel_stats
from .lab import DEPTH_RECIPES, DEPTHS, FINAL_NAME, MODERN_NAME, Lab, ablation_key, depth_name
from .model import NETWORK_FIELDS, ResNet, build_model, count_params, flops_per_image, weight_layers
from .runs import Run
from .stats import Estimate, bounds_of, clean_values, estimate, judge, welch

MEASURES = {
    "final_loss_sum": "final loss (summed over the epoch)",
    "final_val_acc": "validation accuracy %",
    "test_acc": "test accuracy %",
}


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


# ---------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------


def data_label(source: dict | None, label: str | None = None) -> str:
    """Where the data came from, in words; `label` (lab.data_label) names data that are not official."""
    if not source:
        return "unknown (no data record)"
    official = source.get("official")
    desc = source.get("description") or (
        "official CIFAR-10 (md5 verified)" if official else "not the official CIFAR-10 files"
    )
    return f"{label}; {desc}" if label and not official and not source.get("synthetic") else desc


def provenance(runs: Sequence[Run], lab: Lab) -> dict[str, str]:
    """Profile, data, devices, training time and code of a set of runs, as display strings."""
    summaries = [r.summary or {} for r in runs]
    datas = sorted({data_label(s.get("data"), lab.data_label) for s in summaries})
    if datas and lab.source is None and not lab.profile.synthetic:
        datas.append(
            f"as the runs recorded them: not checked against the files (no CIFAR-10 batches at {lab.data_dir})"
        )
    devices = pd.Series([s.get("device", "?") for s in summaries]).value_counts()
    secs = sum(float(s.get("train_seconds") or 0.0) for s in summaries)
    dates = sorted({str(d)[:10] for s in summaries if (d := s.get("finished_at"))})
    store, root = lab.store.root.resolve(), lab.root.resolve()
    synthetic = " (synthetic data, tiny net: not comparable to the seed's numbers)" if lab.profile.synthetic else ""
    return {
        "profile": lab.profile.name + synthetic,
        "run store": str(store.relative_to(root) if store.is_relative_to(root) else store),
        "data": "; ".join(datas) or "no runs",
        "device": ", ".join(f"{d} ({c} runs)" for d, c in devices.items()) or "no runs",
        "training time": f"{secs:.1f} s summed over {len(runs)} runs",
        "trained": " to ".join(dict.fromkeys([dates[0], dates[-1]])) if dates else "—",
        "training wall time": describe_sittings(training_sittings(runs)),
        "code version": code_versions(runs),
    }


def code_versions(runs: Sequence[Run]) -> str:
    """'abc1234 (12 runs), abc1234+name (4 runs)': the commits that trained the runs."""
    counts = pd.Series([str((r.summary or {}).get("code_version", "?")) for r in runs]).value_counts().sort_index()
    text = ", ".join(f"{v} ({n} run{'s' if n > 1 else ''})" for v, n in counts.items())
    if any("+" in v for v in counts.index):
        text += "; a version with + is that commit with an uncommitted change of that name"
    return text or "—"


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


# ---------------------------------------------------------------------------------------
# Recipes in words
# ---------------------------------------------------------------------------------------


def _epochs(runs: Sequence[Run], protocol: int) -> str:
    """The runs' epochs ("30 epochs"); the paper's `protocol` when there are no runs."""
    return "/".join(map(str, sorted({r.config.epochs for r in runs}) or [protocol])) + " epochs"


def _images(runs: Sequence[Run]) -> str:
    n = sorted({int(s["train_images"]) for r in runs if (s := r.summary or {}).get("train_images")})
    return "all 50,000 training images" if n in ([], [50_000]) else "/".join(f"{k:,}" for k in n) + " training images"


def _views_words(c: TrainConfig) -> str:
    words = (["test-time flip"] if c.tta_flip else []) + (
        [f"{c.tta_translate}-pixel shifts"] if c.tta_translate else []
    )
    return " + ".join(words)


def views_at_test(runs: Sequence[Run]) -> str:
    """', test-time flip' (or shifts) when the runs' test numbers average several views of each
    image, as the paper's never do; '' when none do."""
    views = {_views_words(r.config) for r in runs if r.config is not None}
    if not views or views == {""}:
        return ""
    return f", {views.pop()}" if len(views) == 1 else ", test-time views differ between runs"


def describe_recipe(c: TrainConfig) -> str:
    """Everything a run's numbers depend on, in one line of words (HTML)."""
    defects = [
        d for d, on in (("n+1 blocks per stage", c.seed_extra_block), ("softmax before the loss", c.softmax_head)) if on
    ]
    net = (
        f"lays {list(c.lays)} ({c.lays[0] + int(c.seed_extra_block)} blocks per stage), width {c.width}, "
        f"{c.stem}{' stride 2' if c.stem == '7x7' else ''} stem {'with' if c.stem_bn else 'without'} BN, "
        f"dropout {c.dropout:g}" + (f"; the seed's defects: {', '.join(defects)}" if defects else "; corrected network")
    )
    opt = f"Adam lr {c.lr:g}"
    if c.optimizer == "sgd":
        opt = f"SGD{' Nesterov' if c.nesterov else ''} lr {c.lr:g}, momentum {c.momentum:g}"
    opt += f", weight decay {c.weight_decay:g}" if c.weight_decay else ""
    if c.schedule == "exp":
        opt += f", lr × {c.decay_rate:g} per epoch"
    else:
        opt += f", {c.warmup_epochs:g}-epoch warm-up then {c.schedule} decay"
    opt += f", label smoothing {c.label_smoothing:g}" if c.label_smoothing else ""
    opt += f", batch {c.batch_size}, {c.epochs} epochs"
    data = "train on batches 1-4, validate on batch 5" if c.split == "seed" else "all 50,000 training images"
    if c.split == "full" and c.val_size:
        data = f"batches 1-5 less {c.val_size:,} held out for validation"
    data += f" (the first {c.train_subset:,} training images only)" if c.train_subset else ""
    data += f", {c.norm} normalisation, " + ("random crop (pad 4) and flip" if c.augment else "no augmentation")
    data += f", cutout {c.cutout}" if c.cutout else ""
    ev = (
        "the last epoch's weights"
        if c.select == "last"
        else "the weights of the epoch with the best validation accuracy"
    )
    ev += f" (moving average, decay {c.ema:g} per step)" if c.ema else ""
    ev += ", tested once" + (f" with {_views_words(c)}" if _views_words(c) else ", one view per image")
    return f"<b>network:</b> {net}. <b>training:</b> {opt}. <b>data:</b> {data}. <b>test number:</b> {ev}."


# ---------------------------------------------------------------------------------------
# The paper's numbers beside ours
# ---------------------------------------------------------------------------------------


def _vs_paper(runs: Sequence[Run], field: str, paper_value: float | None) -> dict:
    """Our runs' `field` (n, mean ± SD, 95% CI) beside the paper's number (None: it gives none)."""
    scale, digits = (1, 3) if "loss" in field else (100, 2)
    e = _estimate(runs, field)
    return {
        "seed's number": "—" if paper_value is None else f"{paper_value * scale:.{digits}f}",
        "n": e.n,
        "ours: mean ± SD": e.fmt(scale=scale, digits=digits, show_n=False),
        "ours: 95% CI": e.fmt_ci(scale=scale, digits=digits),
        "Δ ours − seed": "—" if paper_value is None or not e.n else f"{(e.mean - paper_value) * scale:+.{digits}f}",
    }


def _tables_of(a: paper.Ablation) -> str:
    return f"table{'s' if len(a.tables) > 1 else ''} {', '.join(map(str, a.tables))}: {a.key}"


def paper_vs_ours(
    abl: Sequence[Run], final: Sequence[Run], depth: Sequence[Run], modern: Sequence[Run]
) -> pd.DataFrame:
    """Every number the paper reports beside ours: the summary's table."""
    rows = []

    def add(where, what, paper_value, runs, field, recipe):
        rows.append({"seed report": where, "measure": what, **_vs_paper(runs, field, paper_value), "recipe": recipe})

    by = _by_key(abl)
    for a in paper.ABLATIONS:
        rs = by.get(a.key, [])
        recipe = f"seed-faithful, {_epochs(rs, 30)}"
        add(_tables_of(a), MEASURES["final_loss_sum"], a.paper_loss, rs, "final_loss_sum", recipe)
        add(_tables_of(a), MEASURES["final_val_acc"], a.paper_val_acc, rs, "final_val_acc", recipe)
    recipe = f"seed-faithful, {_epochs(final, 60)}"
    add("table 11 (final)", MEASURES["final_loss_sum"], paper.NUMBERS["final_loss"], final, "final_loss_sum", recipe)
    add("table 11 (final)", MEASURES["test_acc"], paper.NUMBERS["final_test_acc"], final, "test_acc", recipe)
    what = "test accuracy % (ours selected on validation; the seed's tuned on test)"
    for lays, paper_acc in paper.NUMBERS["depth_test_acc"].items():
        for name in DEPTH_RECIPES:
            rs = [r for r in depth if r.name == depth_name(lays, name)]
            recipe = "seed-faithful net and optimiser" if name == "seed" else "corrected net, modern recipe"
            add(f"§4.1 depth limit, lays {lays}", what, paper_acc, rs, "test_acc", recipe + views_at_test(rs))
    blocks = (
        "/".join(str(n) for n in sorted({r.config.lays[0] + int(r.config.seed_extra_block) for r in modern})) or "2"
    )
    recipe = (
        f"modern preset, {_epochs(modern, 40)}, {blocks} blocks per stage, {_images(modern)}{views_at_test(modern)}"
    )
    what = "test accuracy %: labkit's best (modern preset; the seed's tuned on test)"
    add(
        "§4.1 best (lays 3: 4 blocks per stage in its code)",
        what,
        paper.NUMBERS["depth_test_acc"][3],
        modern,
        "test_acc",
        recipe,
    )
    return pd.DataFrame(rows)


def data_caveat(runs: Sequence[Run], lab: Lab) -> str | None:
    """What a comparison with the paper must say when our data are not the official files
    (the paper's were), naming them by lab.data_label; None when they are."""
    sources = [(r.summary or {}).get("data") or {} for r in runs]
    if not sources or all(s.get("official") for s in sources):
        return None
    if any(s.get("synthetic") for s in sources):
        return "These runs trained on synthetic data: a check of the pipeline, not a result to set beside the seed's numbers."
    what = lab.data_label or "a copy that is not the official CIFAR-10 files"
    return (
        f"Our runs trained and were tested on {html_escape(what)}; the seed's numbers come from the official files. "
        "Each Δ ours − seed therefore holds the recipe's effect and the data's: a stand-in such as a JPEG re-encoding "
        "costs a few points of accuracy by itself. Differences between our own runs share the data and are not affected."
    )


def final_table(final: Sequence[Run], modern: Sequence[Run]) -> pd.DataFrame:
    what = f"table 11: seed-faithful, {_epochs(final, 60)}"
    rows = [
        (what, final, "test_acc", paper.NUMBERS["final_test_acc"]),
        (what, final, "final_loss_sum", paper.NUMBERS["final_loss"]),
        (what, final, "final_val_acc", None),
        (
            f"labkit's best: modern preset{views_at_test(modern)}",
            modern,
            "test_acc",
            paper.NUMBERS["depth_test_acc"][3],
        ),
    ]
    return pd.DataFrame([{"run": w, "measure": MEASURES[f], **_vs_paper(rs, f, v)} for w, rs, f, v in rows])


def depth_table(runs: Sequence[Run]) -> pd.DataFrame:
    rows = []
    for lays, paper_acc in paper.NUMBERS["depth_test_acc"].items():
        for recipe in DEPTH_RECIPES:
            rs = [r for r in runs if r.name == depth_name(lays, recipe)]
            cfg = rs[0].config if rs else None
            e = _estimate(rs, "test_acc")
            words = (
                "seed-faithful (both defects, Adam, exp decay)" if recipe == "seed" else "corrected net, modern recipe"
            )
            rows.append(
                {
                    "lays": lays,
                    "recipe": words + views_at_test(rs),
                    "blocks/stage": cfg.lays[0] + int(cfg.seed_extra_block) if cfg else None,
                    "epochs": cfg.epochs if cfg else None,
                    "selected epoch (best val)": ", ".join(str(s) for s in _values(rs, "selected_epoch")) or "—",
                    "best val acc %": _estimate(rs, "best_val_acc").fmt(scale=100),
                    "test acc % (once)": e.fmt(scale=100),
                    "95% CI": e.fmt_ci(scale=100),
                    "seed: test acc % (tuned on test)": paper_acc * 100,
                    "Δ ours − seed, pts": e.mean * 100 - paper_acc * 100 if e.n else None,
                }
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------
# The paper's ablations
# ---------------------------------------------------------------------------------------


def _paper_group(group: str) -> None:
    if group not in paper.ABLATION_GROUPS:
        raise ConfigError(
            f"{group!r} is not one of the seed's ablation groups {list(paper.ABLATION_GROUPS)}: these tables set the "
            "seed's numbers beside ours. For your own variants use estimates_frame(runs, field, label_of) with "
            "plot_estimates, and welch(a, b) with judge"
        )


def ablation_table(group: str, runs: Sequence[Run]) -> pd.DataFrame:
    """The paper's table of one ablation group, its numbers beside ours; runs matched to rows by name."""
    _paper_group(group)
    by = _by_key(runs)
    base_acc, base_paper = _values(by.get("baseline", []), "final_val_acc"), paper.ablation("baseline").paper_val_acc
    rows = []
    for key in paper.ABLATION_GROUPS[group]:
        a, rs = paper.ablation(key), by.get(key, [])
        cfg = rs[0].config if rs else paper.ablation_config(key)
        loss, acc = _estimate(rs, "final_loss_sum"), _estimate(rs, "final_val_acc")
        vs_base = "—" if key == "baseline" else welch(_values(rs, "final_val_acc"), base_acc).fmt(unit="")
        rows.append(
            {
                "row": key,
                "seed table": ", ".join(map(str, a.tables)),
                "lr": cfg.lr,
                "batch": cfg.batch_size,
                "epochs": cfg.epochs,
                "blocks/ stage": f"{cfg.lays[0] + int(cfg.seed_extra_block)} (lays {cfg.lays[0]})",
                "decay": cfg.decay_rate,
                "dropout": cfg.dropout,
                "stem": f"{cfg.stem}{' +BN' if cfg.stem_bn else ' no BN'}",
                "n": acc.n,
                "final loss (sum): seed": a.paper_loss,
                "final loss (sum): ours, mean ± SD": loss.fmt(digits=3, show_n=False),
                "val acc %: seed": a.paper_val_acc * 100,
                "val acc %: ours, mean ± SD": acc.fmt(scale=100, show_n=False),
                "val acc %: ours, 95% CI": acc.fmt_ci(scale=100),
                "Δ vs baseline, pts: seed": None if key == "baseline" else (a.paper_val_acc - base_paper) * 100,
                "Δ vs baseline, pts: ours [95% CI]": vs_base,
            }
        )
    return pd.DataFrame(rows)


ABLATION_FORMATS = {
    "lr": "{:g}",
    "decay": "{:g}",
    "dropout": "{:g}",
    "final loss (sum): seed": "{:.3f}",
    "val acc %: seed": "{:.2f}",
    "Δ vs baseline, pts: seed": "{:+.2f}",
}


def ablation_view(table: pd.DataFrame) -> pd.DataFrame:
    """`ablation_table` on its side, every value as text: one column per row of the paper's table."""

    def text(col: pd.Series) -> pd.Series:
        fmt = ABLATION_FORMATS.get(col.name, "{}")
        return col.map(lambda v: "—" if pd.isna(v) else v if isinstance(v, str) else fmt.format(v))

    return table.set_index("row").apply(text).T.rename_axis(index="", columns=None).reset_index()


def paper_ablation_values(field: str) -> dict[str, float]:
    """An Ablation field ("paper_loss" or "paper_val_acc") for each row key: what the figures mark."""
    return {a.key: getattr(a, field) for a in paper.ABLATIONS}


def paper_figures(group: str) -> str:
    """The paper's figure numbers of one ablation group's rows, e.g. "2, 6, 7, 9, 1, 3"."""
    _paper_group(group)
    return ", ".join(str(t) for key in paper.ABLATION_GROUPS[group] for t in paper.ablation(key).tables)


def paper_test_accuracies() -> dict[str, float]:
    """The paper's test accuracy for notebook 05's runs: its final run's, and its best beside modern."""
    return {FINAL_NAME: paper.NUMBERS["final_test_acc"], MODERN_NAME: paper.NUMBERS["depth_test_acc"][DEPTHS[-1]]}


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


# ---------------------------------------------------------------------------------------
# Claims tested: rows with neutral keys; each table names and formats its columns
# ---------------------------------------------------------------------------------------


def _tested(claim, better, worse, field, comparison, measure, section, paper_diff=None, sized=False, **extra) -> dict:
    """The claim "`better` beats `worse`" on `field`, by a Welch interval; `sized`: the verdict
    says whether the paper's own difference lies inside it."""
    d = welch(_values(better, field), _values(worse, field))
    row = dict(section=section, claim=claim, comparison=comparison, measure=measure, paper_diff=paper_diff)
    return row | {
        "ours": d.fmt(),
        "runs": f"{d.na} vs {d.nb}",
        "verdict": judge(d, paper_diff if sized else None),
        **extra,
    }


def _claims_frame(rows: Sequence[dict], columns: dict[str, str | Callable[[dict], object]]) -> pd.DataFrame:
    """`rows` of _tested as a table: each column a row key, or a function of the row."""
    return pd.DataFrame(
        [{k: row[how] if isinstance(how, str) else how(row) for k, how in columns.items()} for row in rows]
    )


def _with_measure(row: dict) -> str:
    return f"{row['comparison']}, {row['measure']}"


ABLATION_CLAIM_COLUMNS = {
    "seed's conclusion (§4.6)": "claim",
    "comparison": "comparison",
    "seed: Δ val acc, pts": lambda r: r["paper_diff"] * 100,
    "ours: Δ val acc, pts [95% Welch CI]": "ours",
    "runs": "runs",
    "verdict": "verdict",
}
DEPTH_CLAIM_COLUMNS = {
    "seed's conclusion (§4.6)": "claim",
    "recipe": "recipe",
    "comparison": _with_measure,
    "seed: Δ, pts": lambda r: r["paper_diff"] * 100,
    "ours: Δ, pts [95% Welch CI]": "ours",
    "runs": "runs",
    "verdict": "verdict",
}
FINDINGS_COLUMNS = {
    "section": "section",
    "claim": lambda r: r["claim"] + (f" ({r['recipe']} recipe)" if "recipe" in r else ""),
    "comparison": _with_measure,
    "seed: Δ, pts": lambda r: "—" if r["paper_diff"] is None else f"{r['paper_diff'] * 100:+.2f}",
    "ours: Δ, pts [95% Welch CI]": "ours",
    "runs": "runs",
    "verdict": "verdict",
}


def _ablation_tests(group: str, runs: Sequence[Run]) -> list[dict]:
    _paper_group(group)
    by, rows = _by_key(runs), []
    for claim, better, worse, sized in paper.CLAIMS[group]:
        paper_d = paper.ablation(better).paper_val_acc - paper.ablation(worse).paper_val_acc
        a, b = by.get(better, []), by.get(worse, [])
        rows.append(
            _tested(claim, a, b, "final_val_acc", f"{better} − {worse}", "val acc", f"4 ({group})", paper_d, sized)
        )
    return rows


def _depth_tests(runs: Sequence[Run]) -> list[dict]:
    """The paper's "deeper is better" (test accuracy), per recipe."""
    shallow, deep = DEPTHS
    paper_d = paper.NUMBERS["depth_test_acc"][deep] - paper.NUMBERS["depth_test_acc"][shallow]
    rows = []
    for recipe in DEPTH_RECIPES:
        a, b = ([r for r in runs if r.name == depth_name(lays, recipe)] for lays in (deep, shallow))
        comparison = f"lays {deep} − lays {shallow}"
        rows.append(
            _tested("deeper is better", a, b, "test_acc", comparison, "test acc", "3 (depth)", paper_d, recipe=recipe)
        )
    return rows


def _labkit_tests(final: Sequence[Run], modern: Sequence[Run]) -> list[dict]:
    """labkit's claims: the modern preset beats the paper's final recipe (Welch), and its best number (our CI)."""
    claim = "labkit: the modern preset beats the seed's final recipe"
    vs_final = _tested(claim, modern, final, "test_acc", "modern − seed-faithful final", "test acc", "5")
    m, best = _estimate(modern, "test_acc"), paper.NUMBERS["depth_test_acc"][3]
    verdict = "one run: no interval"
    if m.n >= 2:
        verdict = f"the seed's {best * 100:.2f}% lies {'below' if m.lo > best else 'above' if m.hi < best else 'inside'} our 95% CI"
    vs_best = {
        "section": "5",
        "claim": f"labkit: the modern preset beats the seed's best, {best * 100:.2f}% (tuned on test)",
        "comparison": f"modern preset{views_at_test(modern)}",
        "measure": "test acc",
        "paper_diff": None,
        "ours": "—" if not m.n else f"{(m.mean - best) * 100:+.2f} pts",
        "runs": str(m.n),
        "verdict": verdict,
    }
    return [vs_final, vs_best]


def ablation_claims(group: str, runs: Sequence[Run]) -> pd.DataFrame:
    """The paper's conclusions about one ablation group, each tested on our runs with a verdict."""
    return _claims_frame(_ablation_tests(group, runs), ABLATION_CLAIM_COLUMNS)


def depth_claim(runs: Sequence[Run]) -> pd.DataFrame:
    return _claims_frame(_depth_tests(runs), DEPTH_CLAIM_COLUMNS)


def best_vs_paper(final: Sequence[Run], modern: Sequence[Run]) -> pd.DataFrame:
    # its own words for the second comparison; the findings name the modern runs' test-time views
    best = paper.NUMBERS["depth_test_acc"][3]
    words = [
        "modern − seed-faithful final, test acc",
        f"modern vs the seed's best ({best * 100:.2f}%, lays 3, tuned on test)",
    ]
    rows = [{**r, "comparison": w} for r, w in zip(_labkit_tests(final, modern), words, strict=True)]
    return _claims_frame(
        rows, {"comparison": "comparison", "Δ, pts [95% Welch CI]": "ours", "runs": "runs", "note": "verdict"}
    )


def findings(abl: Sequence[Run], final: Sequence[Run], depth: Sequence[Run], modern: Sequence[Run]) -> pd.DataFrame:
    """Every conclusion of the paper, then labkit's two claims, each with our runs' verdict."""
    rows = [
        r for g in paper.CLAIMS for r in _ablation_tests(g, [r for r in abl if _key_of(r) in paper.ABLATION_GROUPS[g]])
    ]
    rows += _depth_tests(depth) + _labkit_tests(final, modern)
    return _claims_frame(rows, FINDINGS_COLUMNS)


# ---------------------------------------------------------------------------------------
# The data and the model
# ---------------------------------------------------------------------------------------


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
        ("seed's constants: mean", NORMS["seed"][0]),
        ("seed's constants: std", NORMS["seed"][1]),
        ("labkit 'dataset' constants: std", NORMS["dataset"][1]),
    ]
    return pd.DataFrame([(k, *v) for k, v in rows], columns=["statistic", "R", "G", "B"])


def source_table(source: dict, lab: Lab) -> pd.DataFrame:
    """Where `source` (a Dataset's or a run's data record) came from."""
    rows = [
        ("data used", data_label(source, lab.data_label)),
        ("folder", source.get("folder", "?")),
        ("md5 of every batch file matches the official CIFAR-10", "yes" if source.get("official") else "no"),
        ("files whose md5 differs", ", ".join(source.get("md5_mismatch") or []) or "none"),
    ]
    return pd.DataFrame(rows, columns=["", "value"])


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
    columns = ["stage", "seed's blocks", "corrected blocks", "conv", "output (C, H, W)", "params (seed's net)"]
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
    out, shapes = _forward(
        build_model(cfg), x, ["conv1", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc", "head"]
    )
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
    columns = ["lays", "the seed calls it", "blocks per stage (seed's code)", "blocks per stage (corrected)"]
    return pd.DataFrame(rows, columns=[*columns, "weight layers (seed's code)", "weight layers (corrected)"])


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
    rows = [(_tables_of(a), a.paper_loss) for a in paper.ABLATIONS] + [
        ("table 11: final (60 epochs)", paper.NUMBERS["final_loss"])
    ]
    rows = [(k, v, n, v / n, floor, v / n - floor) for k, v in rows]
    columns = ["seed's run", "final summed loss", "batches per epoch", "loss per batch", "floor", "above the floor"]
    return pd.DataFrame(rows, columns=columns)
