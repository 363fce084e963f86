"""Every table the report shows, as a DataFrame: the paper's numbers beside ours, claims tested,
provenance, and the data and model tables."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from html import escape as html_escape

import pandas as pd

from . import paper
from .config import ConfigError, TrainConfig
from .lab import DEPTH_RECIPES, DEPTHS, FINAL_NAME, MODERN_NAME, Lab, ablation_key, depth_name
from .model import NETWORK_FIELDS
from .runs import Run
from .stats import Estimate, bounds_of, clean_values, estimate, judge, welch


def data_label(source: dict | None, synthetic: bool = False, label: str | None = None) -> str:
    """Where the data came from, in words: official (md5 verified) or not, and which stand-in.

    `label` (a notebook's lab.data_label) names data that is not official.
    """
    if not source:
        return "unknown (no data record)"
    desc = source.get("description") or ("official CIFAR-10 (md5 verified)" if source.get("official") else "not the official CIFAR-10 files")
    if source.get("official") or source.get("synthetic"):
        return desc
    if synthetic:  # made before the synthetic data said so themselves
        return f"synthetic CIFAR-format data made by labkit.synthetic (smoke profile): {desc}"
    return f"{label}; {desc}" if label else desc


def provenance(runs: Sequence[Run], lab: Lab) -> dict[str, str]:
    """Profile, data, devices and training time of a set of runs, as display strings."""
    datas = sorted({data_label((r.summary or {}).get("data"), lab.profile.synthetic, lab.data_label) for r in runs})
    if datas and lab.source is None and not lab.profile.synthetic:
        datas.append(f"as the runs recorded them: not checked against the files (no CIFAR-10 batches at {lab.data_dir})")
    devices = pd.Series([(r.summary or {}).get("device", "?") for r in runs]).value_counts()
    secs = sum(float((r.summary or {}).get("train_seconds") or 0.0) for r in runs)
    store, root = lab.store.root.resolve(), lab.root.resolve()
    return {
        "profile": lab.profile.name + (" (synthetic data, tiny net: not comparable to the seed's numbers)" if lab.profile.synthetic else ""),
        "run store": str(store.relative_to(root)) if store.is_relative_to(root) else str(store),
        "data": "; ".join(datas) or "no runs",
        "device": ", ".join(f"{d} ({c} runs)" for d, c in devices.items()) or "no runs",
        "training time": f"{secs:.1f} s summed over {len(runs)} runs",
        "trained": " to ".join(dict.fromkeys([dates[0], dates[-1]])) if (dates := _dates(runs)) else "—",
        "training wall time": describe_sittings(training_sittings(runs)),
        "code version": code_versions(runs),
    }


def code_versions(runs: Sequence[Run]) -> str:
    """'abc1234 (12 runs), abc1234+name (4 runs)': the commits the runs were trained with;
    "+name" marks a commit with an uncommitted change (LABKIT_CODE_VERSION named it)."""
    counts = pd.Series([str((r.summary or {}).get("code_version", "?")) for r in runs]).value_counts().sort_index()
    text = ", ".join(f"{v} ({n} run{'s' if n > 1 else ''})" for v, n in counts.items())
    if any("+" in v for v in counts.index):
        text += "; a version with + is that commit with an uncommitted change of that name"
    return text or "—"


def compare_runs(new: Sequence[Run], old: Sequence[Run]) -> pd.DataFrame:
    """The finished runs present in both sets (same id: same configuration and seed), their
    results side by side with the code that trained each: does another code version, or
    another sitting, reproduce a run within the GPU's run-to-run noise?"""
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
    """The spans of clock time in which the runs trained, in UTC, sorted.

    Each run trained from `finished_at` minus its `wall_seconds` (or `train_seconds`) until
    `finished_at`; spans that overlap or lie within `gap_s` of each other are one sitting.
    Runs trained side by side therefore count once, and a lab finished in a later session
    shows as two sittings rather than as one long wall time. `gap_s` only bridges the
    seconds a sweep spends between two runs: a longer pause (a benchmark, another
    notebook's runs, another day) is not training time of these runs.
    """
    spans = []
    for r in runs:
        s = r.summary or {}
        end, secs = s.get("finished_at"), s.get("wall_seconds", s.get("train_seconds"))
        if not end or secs is None:
            continue
        try:
            end = datetime.fromisoformat(str(end)).astimezone(UTC)
        except ValueError:
            run_id = getattr(r, "id", "?")
            raise ValueError(f"run {run_id}: finished_at {end!r} in its summary.json is not an ISO 8601 time") from None
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


def _dates(runs: Sequence[Run]) -> list[str]:
    """The UTC days the runs finished on, sorted."""
    return sorted({str(d)[:10] for r in runs if (d := (r.summary or {}).get("finished_at"))})


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


def _paper_group(group: str) -> None:
    if group not in paper.ABLATION_GROUPS:
        raise ConfigError(
            f"{group!r} is not one of the seed's ablation groups {list(paper.ABLATION_GROUPS)}: these tables set the "
            "seed's numbers beside ours. For your own variants use estimates_frame(runs, field, label_of) with "
            "plot_estimates, and welch(a, b) with judge"
        )


def ablation_table(group: str, runs: Sequence[Run]) -> pd.DataFrame:
    """The seed's table for one of its ablation groups (paper.ABLATION_GROUPS), its numbers beside
    ours (mean ± SD over seeds). Runs are matched to rows by name ("ablation-<row key>")."""
    _paper_group(group)
    by = _by_key(runs)
    base_acc = _values(by.get("baseline", []), "final_val_acc")
    base_paper = paper.ablation("baseline").paper_val_acc
    rows = []
    for key in paper.ABLATION_GROUPS[group]:
        a = paper.ablation(key)
        rs = by.get(key, [])
        cfg = rs[0].config if rs else paper.ablation_config(key)
        loss, acc = _estimate(rs, "final_loss_sum"), _estimate(rs, "final_val_acc")
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
                "Δ vs baseline, pts: ours [95% CI]": "—" if key == "baseline" else welch(_values(rs, "final_val_acc"), base_acc).fmt(unit=""),
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


def ablation_view(table: pd.DataFrame, formats: dict | None = None) -> pd.DataFrame:
    """`ablation_table` turned on its side for reading and printing: one column per configuration,
    one row per field (the seed's number above ours), every value formatted as text."""
    formats = ABLATION_FORMATS if formats is None else formats

    def fmt(col: str, v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        return formats[col].format(v) if col in formats and not isinstance(v, str) else str(v)

    body = {row["row"]: [fmt(c, row[c]) for c in table.columns if c != "row"] for _, row in table.iterrows()}
    return pd.DataFrame({"": [c for c in table.columns if c != "row"], **body})


def paper_ablation_values(field: str) -> dict[str, float]:
    """One of the seed's numbers (an Ablation field: "paper_loss", its final summed loss at
    epoch 30, or "paper_val_acc") for each ablation row key: what the figures mark."""
    return {a.key: getattr(a, field) for a in paper.ABLATIONS}


def paper_figures(group: str) -> str:
    """The seed's figure numbers of one ablation group's rows, e.g. "2, 6, 7, 9, 1, 3"."""
    _paper_group(group)
    return ", ".join(str(t) for key in paper.ABLATION_GROUPS[group] for t in paper.ablation(key).tables)


def paper_test_accuracies() -> dict[str, float]:
    """The seed's test accuracy beside each of notebook 05's run names: its final run's,
    and beside the modern preset its best (the deeper net, tuned on test)."""
    return {FINAL_NAME: paper.NUMBERS["final_test_acc"], MODERN_NAME: paper.NUMBERS["depth_test_acc"][DEPTHS[-1]]}


def estimates_frame(runs: Sequence[Run], field: str, label_of: Callable[[Run], str] | None = None) -> pd.DataFrame:
    """One row per label: mean, SD, CI and n of the summary `field`, and each run's value:
    what plot_estimates draws. `label_of(run)` groups the runs (default: the run's name
    without "ablation-"), e.g. `lambda r: f"dropout {r.config.dropout}"`."""
    label_of = label_of or _key_of
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(label_of(r), []).append(r)
    rows = []
    for label, rs in groups.items():
        e = _estimate(rs, field)
        rows.append({"label": label, "n": e.n, "mean": e.mean, "sd": e.sd, "lo": e.lo, "hi": e.hi, "values": clean_values(_values(rs, field))})
    return pd.DataFrame(rows, columns=["label", "n", "mean", "sd", "lo", "hi", "values"])


def _tested(claim: str, better: Sequence[Run], worse: Sequence[Run], field: str, comparison: str, measure: str,
            section: str, paper_diff: float | None = None, sized: bool = False, **extra) -> dict:
    """The claim "`better` beats `worse`" on the summary `field`, tested with a Welch interval.

    A row with neutral keys: section, claim, comparison ("a − b"), measure ("val acc"),
    paper_diff (the seed's own difference, a fraction; None: it gives none), ours (our
    difference, "+d pts [lo, hi]"), runs ("na vs nb"), verdict; `sized`: the verdict says
    whether paper_diff lies inside our interval. `extra` keys are kept (e.g. recipe)."""
    d = welch(_values(better, field), _values(worse, field))
    return {
        "section": section,
        "claim": claim,
        "comparison": comparison,
        "measure": measure,
        "paper_diff": paper_diff,
        "ours": d.fmt(),
        "runs": f"{d.na} vs {d.nb}",
        "verdict": judge(d, paper_diff if sized else None),
        **extra,
    }


def _claims_frame(rows: Sequence[dict], columns: dict[str, str | Callable[[dict], object]]) -> pd.DataFrame:
    """`rows` of _tested as a table: `columns` maps each shown column to a row key, or to a
    function of the row that formats it."""
    return pd.DataFrame([{name: row[how] if isinstance(how, str) else how(row) for name, how in columns.items()} for row in rows])


def _points(row: dict) -> float:
    return row["paper_diff"] * 100


def _signed_points(row: dict) -> str:
    return "—" if row["paper_diff"] is None else f"{row['paper_diff'] * 100:+.2f}"


def _with_measure(row: dict) -> str:
    return f"{row['comparison']}, {row['measure']}"


ABLATION_CLAIM_COLUMNS = {
    "seed's conclusion (§4.6)": "claim",
    "comparison": "comparison",
    "seed: Δ val acc, pts": _points,
    "ours: Δ val acc, pts [95% Welch CI]": "ours",
    "runs": "runs",
    "verdict": "verdict",
}


DEPTH_CLAIM_COLUMNS = {
    "seed's conclusion (§4.6)": "claim",
    "recipe": "recipe",
    "comparison": _with_measure,
    "seed: Δ, pts": _points,
    "ours: Δ, pts [95% Welch CI]": "ours",
    "runs": "runs",
    "verdict": "verdict",
}


FINDINGS_COLUMNS = {
    "section": "section",
    "claim": lambda r: r["claim"] + (f" ({r['recipe']} recipe)" if "recipe" in r else ""),
    "comparison": _with_measure,
    "seed: Δ, pts": _signed_points,
    "ours: Δ, pts [95% Welch CI]": "ours",
    "runs": "runs",
    "verdict": "verdict",
}


def _ablation_tests(group: str, runs: Sequence[Run]) -> list[dict]:
    """The seed's conclusions (paper.CLAIMS) about one ablation group, tested on `runs`."""
    _paper_group(group)
    by = _by_key(runs)
    rows = []
    for claim, better, worse, sized in paper.CLAIMS[group]:
        paper_d = paper.ablation(better).paper_val_acc - paper.ablation(worse).paper_val_acc
        rows.append(
            _tested(claim, by.get(better, []), by.get(worse, []), "final_val_acc", f"{better} − {worse}", "val acc",
                    f"4 ({group})", paper_d, sized)
        )
    return rows


def ablation_claims(group: str, runs: Sequence[Run]) -> pd.DataFrame:
    """Each of the seed's conclusions (paper.CLAIMS) about one of its ablation groups, tested on our
    runs (final validation accuracy) with a Welch interval and a verdict."""
    return _claims_frame(_ablation_tests(group, runs), ABLATION_CLAIM_COLUMNS)


def _epochs(runs: Sequence[Run], protocol: int) -> str:
    """The runs' epochs, as a recipe says them: quick and smoke runs train fewer than the
    seed's protocol (`protocol`, said when there are no runs)."""
    return "/".join(map(str, sorted({r.config.epochs for r in runs}) or [protocol])) + " epochs"


def _images(runs: Sequence[Run]) -> str:
    n = sorted({int(s["train_images"]) for r in runs if (s := r.summary or {}).get("train_images")})
    return "all 50,000 training images" if n in ([], [50_000]) else "/".join(f"{k:,}" for k in n) + " training images"


def views_at_test(runs: Sequence[Run]) -> str:
    """', test-time flip' (and shifts) when the runs' test numbers average several views of
    each image: the seed's numbers never do, so a comparison must say so. '' when none do."""
    views = {_views_words(r.config) for r in runs if r.config is not None}
    if not views or views == {""}:
        return ""
    return f", {views.pop()}" if len(views) == 1 else ", test-time views differ between runs"


def _views_words(c: TrainConfig) -> str:
    words = (["test-time flip"] if c.tta_flip else []) + ([f"{c.tta_translate}-pixel shifts"] if c.tta_translate else [])
    return " + ".join(words)


def describe_recipe(c: TrainConfig) -> str:
    """Everything a run's numbers depend on, in one line of words (identity fields only)."""
    defects = [d for d, on in (("n+1 blocks per stage", c.seed_extra_block), ("softmax before the loss", c.softmax_head)) if on]
    net = (
        f"lays {list(c.lays)} ({c.lays[0] + int(c.seed_extra_block)} blocks per stage), width {c.width}, "
        f"{c.stem}{' stride 2' if c.stem == '7x7' else ''} stem "
        f"{'with' if c.stem_bn else 'without'} BN, dropout {c.dropout:g}"
        + (f"; the seed's defects: {', '.join(defects)}" if defects else "; corrected network")
    )
    opt = f"Adam lr {c.lr:g}" if c.optimizer == "adam" else f"SGD{' Nesterov' if c.nesterov else ''} lr {c.lr:g}, momentum {c.momentum:g}"
    if c.weight_decay:
        opt += f", weight decay {c.weight_decay:g}"
    opt += f", lr × {c.decay_rate:g} per epoch" if c.schedule == "exp" else f", {c.warmup_epochs:g}-epoch warm-up then {c.schedule} decay"
    if c.label_smoothing:
        opt += f", label smoothing {c.label_smoothing:g}"
    opt += f", batch {c.batch_size}, {c.epochs} epochs"
    data = "train on batches 1-4, validate on batch 5" if c.split == "seed" else "all 50,000 training images"
    if c.split == "full" and c.val_size:
        data = f"batches 1-5 less {c.val_size:,} held out for validation"
    if c.train_subset:
        data += f" (the first {c.train_subset:,} training images only)"
    data += f", {c.norm} normalisation, " + ("random crop (pad 4) and flip" if c.augment else "no augmentation")
    if c.cutout:
        data += f", cutout {c.cutout}"
    ev = "the last epoch's weights" if c.select == "last" else "the weights of the epoch with the best validation accuracy"
    if c.ema:
        ev += f" (moving average, decay {c.ema:g} per step)"
    ev += ", tested once" + (f" with {_views_words(c)}" if _views_words(c) else ", one view per image")
    return f"<b>network:</b> {net}. <b>training:</b> {opt}. <b>data:</b> {data}. <b>test number:</b> {ev}."


def _vs_paper(runs: Sequence[Run], field: str, paper_value: float | None) -> dict:
    """Our runs' `field` (n, mean ± SD, 95% CI) beside the seed's number (None: it gives
    none): accuracies in percent with 2 decimals, summed losses with 3."""
    scale, digits = (1, 3) if "loss" in field else (100, 2)
    e = _estimate(runs, field)
    return {
        "seed's number": "—" if paper_value is None else f"{paper_value * scale:.{digits}f}",
        "n": e.n,
        "ours: mean ± SD": e.fmt(scale=scale, digits=digits, show_n=False),
        "ours: 95% CI": e.fmt_ci(scale=scale, digits=digits),
        "Δ ours − seed": "—" if paper_value is None or not e.n else f"{(e.mean - paper_value) * scale:+.{digits}f}",
    }


MEASURES = {
    "final_loss_sum": "final loss (summed over the epoch)",
    "final_val_acc": "validation accuracy %",
    "test_acc": "test accuracy %",
}


def paper_vs_ours(
    ablation_runs: Sequence[Run], final_runs: Sequence[Run], depth_runs: Sequence[Run], modern_runs: Sequence[Run]
) -> pd.DataFrame:
    rows = []

    def add(where, what, paper_value, runs, field, recipe):
        rows.append({"seed report": where, "measure": what, **_vs_paper(runs, field, paper_value), "recipe": recipe})

    by = _by_key(ablation_runs)
    for a in paper.ABLATIONS:
        where = f"table{'s' if len(a.tables) > 1 else ''} {', '.join(map(str, a.tables))}: {a.key}"
        rs = by.get(a.key, [])
        add(where, MEASURES["final_loss_sum"], a.paper_loss, rs, "final_loss_sum", f"seed-faithful, {_epochs(rs, 30)}")
        add(where, MEASURES["final_val_acc"], a.paper_val_acc, rs, "final_val_acc", f"seed-faithful, {_epochs(rs, 30)}")
    final = f"seed-faithful, {_epochs(final_runs, 60)}"
    add("table 11 (final)", MEASURES["final_loss_sum"], paper.NUMBERS["final_loss"], final_runs, "final_loss_sum", final)
    add("table 11 (final)", MEASURES["test_acc"], paper.NUMBERS["final_test_acc"], final_runs, "test_acc", final)
    for lays, paper_acc in paper.NUMBERS["depth_test_acc"].items():
        for recipe in DEPTH_RECIPES:
            rs = [r for r in depth_runs if r.name == depth_name(lays, recipe)]
            desc = "seed-faithful net and optimiser" if recipe == "seed" else "corrected net, modern recipe"
            desc += views_at_test(rs)
            add(f"§4.1 depth limit, lays {lays}", "test accuracy % (ours selected on validation; the seed's tuned on test)", paper_acc, rs, "test_acc", desc)
    blocks = "/".join(str(n) for n in sorted({r.config.lays[0] + int(r.config.seed_extra_block) for r in modern_runs})) or "2"
    add(
        "§4.1 best (lays 3: 4 blocks per stage in its code)",
        "test accuracy %: labkit's best (modern preset; the seed's tuned on test)",
        paper.NUMBERS["depth_test_acc"][3],
        modern_runs,
        "test_acc",
        f"modern preset, {_epochs(modern_runs, 40)}, {blocks} blocks per stage, {_images(modern_runs)}{views_at_test(modern_runs)}",
    )
    return pd.DataFrame(rows)


def findings(ablation_runs: Sequence[Run], final_runs: Sequence[Run], depth_runs: Sequence[Run], modern_runs: Sequence[Run]) -> pd.DataFrame:
    """Every conclusion of the seed (§4.6), then labkit's two claims (its modern preset
    beats the seed's final recipe, and the seed's best number), each with the verdict of
    our runs: the report's findings in one table (the sections show each one)."""
    rows = [r for group in paper.CLAIMS for r in _ablation_tests(group, [r for r in ablation_runs if _key_of(r) in paper.ABLATION_GROUPS[group]])]
    rows += _depth_tests(depth_runs) + _labkit_tests(final_runs, modern_runs)
    return _claims_frame(rows, FINDINGS_COLUMNS)


def data_caveat(runs: Sequence[Run], lab: Lab) -> str | None:
    """What a comparison with the seed's numbers must say when our data are not the
    official files (the seed's were): None when every run was on the official files.
    The data are named by lab.data_label, if given."""
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


def class_counts(ds) -> pd.DataFrame | None:
    from .data import CLASSES

    if ds is None:
        return None
    cols = {}
    for split in ("train", "val", "test"):
        y = getattr(ds, f"{split}_y")
        counts = [int((y == c).sum()) for c in range(len(CLASSES))]
        cols[f"{split} ({len(y):,})"] = counts
    df = pd.DataFrame(cols, index=list(CLASSES))
    df.index.name = "class"
    return df.reset_index()


def channel_table(ds) -> pd.DataFrame | None:
    """Measured per-channel statistics of `ds`'s training images beside the seed's and labkit's constants."""
    from .data import NORMS, channel_stats

    if ds is None:
        return None
    train_x = ds.train_x
    s = channel_stats(train_x)
    rows = [
        ("measured: mean", s["mean"]),
        ("measured: dataset-wide std", s["std_dataset"]),
        ("measured: mean of per-image stds", s["std_per_image_mean"]),
        ("seed's constants: mean", NORMS["seed"][0]),
        ("seed's constants: std", NORMS["seed"][1]),
        ("labkit 'dataset' constants: std", NORMS["dataset"][1]),
    ]
    return pd.DataFrame([{"statistic": k, "R": v[0], "G": v[1], "B": v[2]} for k, v in rows])


def source_table(source: dict, lab: Lab) -> pd.DataFrame:
    """Where `source` (a Dataset's or a run's data record) came from, named with lab.data_label."""
    rows = [
        ("data used", data_label(source, lab.profile.synthetic, lab.data_label)),
        ("folder", source.get("folder", "?")),
        ("md5 of every batch file matches the official CIFAR-10", "yes" if source.get("official") else "no"),
        ("files whose md5 differs", ", ".join(source.get("md5_mismatch") or []) or "none"),
    ]
    return pd.DataFrame(rows, columns=["", "value"])


def architecture_table(cfg: TrainConfig, corrected: TrainConfig) -> pd.DataFrame:
    """Stages of the seed's net beside the corrected one: blocks, width, stride, output shape."""
    import torch

    from .model import build_model, count_params

    rows = []
    nets = {"paper": build_model(cfg).eval(), "corrected": build_model(corrected).eval()}
    shapes: dict[str, dict[str, tuple]] = {k: {} for k in nets}
    for key, net in nets.items():
        hooks = [
            getattr(net, n).register_forward_hook(lambda m, i, o, n=n, key=key: shapes[key].__setitem__(n, tuple(o.shape[1:])))
            for n in ("relu", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")
        ]
        with torch.no_grad():
            net(torch.zeros(1, 3, 32, 32))
        for h in hooks:
            h.remove()
    s, c = nets["paper"], nets["corrected"]
    rows.append({"stage": "stem", "seed's blocks": "—", "corrected blocks": "—", "conv": f"{cfg.stem}", "output (C, H, W)": str(shapes["paper"]["relu"]), "params (seed's net)": count_params(s.conv1) + count_params(s.bn1)})
    for i in range(1, 5):
        ls, lc = getattr(s, f"layer{i}"), getattr(c, f"layer{i}")
        rows.append(
            {
                "stage": f"layer{i}",
                "seed's blocks": len(ls),
                "corrected blocks": len(lc),
                "conv": f"3x3, stride {ls[0].conv1.stride[0]}, {ls[0].conv2.out_channels} ch",
                "output (C, H, W)": str(shapes["paper"][f"layer{i}"]),
                "params (seed's net)": count_params(ls),
            }
        )
    rows.append({"stage": "head", "seed's blocks": "—", "corrected blocks": "—", "conv": f"avgpool, dropout, linear{', softmax' if cfg.softmax_head else ''}", "output (C, H, W)": str(shapes["paper"]["fc"]), "params (seed's net)": count_params(s.fc)})
    rows.append({"stage": "total", "seed's blocks": sum(s.blocks_per_stage), "corrected blocks": sum(c.blocks_per_stage), "conv": "", "output (C, H, W)": "", "params (seed's net)": count_params(s)})
    return pd.DataFrame(rows)


def variants_table(pairs: Sequence[tuple[str, str, TrainConfig]], full_width: int | None = None) -> pd.DataFrame:
    """Parameters and FLOPs per image of every distinct network in `pairs` (notebook, name, cfg)."""
    from .model import build_model, count_params, flops_per_image, weight_layers

    groups: dict[tuple, list[str]] = {}
    cfgs: dict[tuple, TrainConfig] = {}
    for _, name, cfg in pairs:
        k = tuple(getattr(cfg, f) for f in NETWORK_FIELDS)
        groups.setdefault(k, [])
        base = name.rsplit("-seed", 1)[0] if name.endswith("-seed") else name
        if base not in groups[k]:
            groups[k].append(name)
        cfgs.setdefault(k, cfg)
    rows = []
    for k, names in groups.items():
        cfg = cfgs[k]
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
    """Run a forward pass and record the output shape of each stage; raise if the head is wrong."""
    import torch

    from .model import build_model

    net = build_model(cfg).eval()
    rows = []
    hooks = [
        getattr(net, n).register_forward_hook(lambda m, i, o, n=n: rows.append({"module": n, "output shape": str(list(o.shape))}))
        for n in ("conv1", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc", "head")
    ]
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
    for h in hooks:
        h.remove()
    rows.insert(0, {"module": "input", "output shape": str(list(x.shape))})
    if tuple(out.shape) != (batch, 10):
        raise AssertionError(f"the network's output is {list(out.shape)}, expected [{batch}, 10]")
    sums = out.sum(1)
    rows.append({"module": "check", "output shape": f"[{batch}, 10] ok; rows sum to {sums.mean():.4f}" + (" (softmax head: probabilities)" if cfg.softmax_head else " (logits)")})
    return pd.DataFrame(rows)


def block_counts(named_depths: Sequence[int] = DEPTHS) -> pd.DataFrame:
    """Defect 1: what `lays` asks for, what the seed's code builds, and the real depth."""
    from .model import ResNet, weight_layers

    rows = []
    for lays in named_depths:
        paper_net = ResNet(lays=(lays,) * 4, seed_extra_block=True, width=8)
        fixed = ResNet(lays=(lays,) * 4, width=8)
        rows.append(
            {
                "lays": str([lays] * 4),
                "the seed calls it": f"ResNet-{2 * 4 * lays + 2}",
                "blocks per stage (seed's code)": paper_net.blocks_per_stage[0],
                "blocks per stage (corrected)": fixed.blocks_per_stage[0],
                "weight layers (seed's code)": weight_layers(paper_net),
                "weight layers (corrected)": weight_layers(fixed),
            }
        )
    return pd.DataFrame(rows)


def loss_floor(classes: int = 10) -> dict[str, float]:
    """Defect 2: the least cross-entropy a softmax output can reach when softmax is applied again.

    The head's output p is a probability vector; cross-entropy takes softmax(p) again. Its
    minimum is at p = one-hot: -log(e / (e + classes - 1)).
    """
    import torch
    import torch.nn.functional as F

    analytic = -math.log(math.e / (math.e + classes - 1))
    onehot = torch.eye(classes, dtype=torch.float64)
    numeric = F.cross_entropy(onehot, torch.arange(classes)).item()  # the best a softmax head can output
    # The same from the logit side: softmax of ever larger logits approaches one-hot.
    z = torch.zeros(classes, dtype=torch.float64)
    z[0] = 50.0
    via_logits = F.cross_entropy(torch.softmax(z, 0)[None], torch.tensor([0])).item()
    return {"analytic": analytic, "numeric (one-hot output)": numeric, "numeric (softmax of logits 50 vs 0)": via_logits}


def loss_floor_table(floor: float, train_images: int = 40000, batch: int = 512) -> pd.DataFrame:
    """The seed's reported final summed losses per batch, against the floor."""
    batches = math.ceil(train_images / batch)
    rows = [(f"table{'s' if len(a.tables) > 1 else ''} {', '.join(map(str, a.tables))}: {a.key}", a.paper_loss) for a in paper.ABLATIONS]
    rows.append(("table 11: final (60 epochs)", paper.NUMBERS["final_loss"]))
    return pd.DataFrame(
        [
            {"seed's run": k, "final summed loss": v, "batches per epoch": batches, "loss per batch": v / batches, "floor": floor, "above the floor": v / batches - floor}
            for k, v in rows
        ]
    )


def depth_table(runs: Sequence[Run]) -> pd.DataFrame:
    rows = []
    for lays, paper_acc in paper.NUMBERS["depth_test_acc"].items():
        for recipe in DEPTH_RECIPES:
            rs = [r for r in runs if r.name == depth_name(lays, recipe)]
            cfg = rs[0].config if rs else None
            e = _estimate(rs, "test_acc")
            rows.append(
                {
                    "lays": lays,
                    "recipe": ("seed-faithful (both defects, Adam, exp decay)" if recipe == "seed" else "corrected net, modern recipe") + views_at_test(rs),
                    "blocks/stage": cfg.lays[0] + int(cfg.seed_extra_block) if cfg else None,
                    "epochs": cfg.epochs if cfg else None,
                    "selected epoch (best val)": ", ".join(str((r.summary or {}).get("selected_epoch")) for r in rs) or "—",
                    "best val acc %": _estimate(rs, "best_val_acc").fmt(scale=100),
                    "test acc % (once)": e.fmt(scale=100),
                    "95% CI": e.fmt_ci(scale=100),
                    "seed: test acc % (tuned on test)": paper_acc * 100,
                    "Δ ours − seed, pts": e.mean * 100 - paper_acc * 100 if e.n else None,
                }
            )
    return pd.DataFrame(rows)


def _depth_tests(runs: Sequence[Run]) -> list[dict]:
    """The seed's "deeper is better" (its deeper net beats its shallower on test accuracy), per recipe."""
    shallow, deep = DEPTHS
    paper_d = paper.NUMBERS["depth_test_acc"][deep] - paper.NUMBERS["depth_test_acc"][shallow]
    return [
        _tested("deeper is better", [r for r in runs if r.name == depth_name(deep, recipe)], [r for r in runs if r.name == depth_name(shallow, recipe)],
                "test_acc", f"lays {deep} − lays {shallow}", "test acc", "3 (depth)", paper_d, recipe=recipe)
        for recipe in DEPTH_RECIPES
    ]


def depth_claim(runs: Sequence[Run]) -> pd.DataFrame:
    return _claims_frame(_depth_tests(runs), DEPTH_CLAIM_COLUMNS)


def final_table(final: Sequence[Run], modern: Sequence[Run]) -> pd.DataFrame:
    what = f"table 11: seed-faithful, {_epochs(final, 60)}"
    rows = [
        (what, final, "test_acc", paper.NUMBERS["final_test_acc"]),
        (what, final, "final_loss_sum", paper.NUMBERS["final_loss"]),
        (what, final, "final_val_acc", None),
        (f"labkit's best: modern preset{views_at_test(modern)}", modern, "test_acc", paper.NUMBERS["depth_test_acc"][3]),
    ]
    return pd.DataFrame([{"run": w, "measure": MEASURES[f], **_vs_paper(rs, f, v)} for w, rs, f, v in rows])


def _labkit_tests(final: Sequence[Run], modern: Sequence[Run]) -> list[dict]:
    """labkit's two claims, rows as _tested makes them: the modern preset beats the seed's
    final recipe (Welch), and the seed's best number (one number: our CI against it)."""
    vs_final = _tested("labkit: the modern preset beats the seed's final recipe", modern, final, "test_acc",
                       "modern − seed-faithful final", "test acc", "5")
    m = _estimate(modern, "test_acc")
    paper_best = paper.NUMBERS["depth_test_acc"][3]
    if m.n >= 2:
        where = "below" if m.lo > paper_best else "above" if m.hi < paper_best else "inside"
        verdict = f"the seed's {paper_best * 100:.2f}% lies {where} our 95% CI"
    else:
        verdict = "one run: no interval"
    vs_best = {
        "section": "5",
        "claim": f"labkit: the modern preset beats the seed's best, {paper_best * 100:.2f}% (tuned on test)",
        "comparison": f"modern preset{views_at_test(modern)}",
        "measure": "test acc",
        "paper_diff": None,
        "ours": "—" if not m.n else f"{(m.mean - paper_best) * 100:+.2f} pts",
        "runs": str(m.n),
        "verdict": verdict,
    }
    return [vs_final, vs_best]


def best_vs_paper(final: Sequence[Run], modern: Sequence[Run]) -> pd.DataFrame:
    paper_best = paper.NUMBERS["depth_test_acc"][3]
    # This table's own words for the second comparison; the findings name the modern runs' test-time views.
    words = ["modern − seed-faithful final, test acc", f"modern vs the seed's best ({paper_best * 100:.2f}%, lays 3, tuned on test)"]
    rows = [{**r, "comparison": w} for r, w in zip(_labkit_tests(final, modern), words, strict=True)]
    return _claims_frame(rows, {"comparison": "comparison", "Δ, pts [95% Welch CI]": "ours", "runs": "runs", "note": "verdict"})
