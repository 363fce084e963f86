"""The lab's results as tables: the paper's numbers beside ours, its claims and labkit's tested on
our runs, the ablation, depth and final tables, and estimates over seeds (the set-up's tables: methods.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape as html_escape

import pandas as pd

from . import paper
from .config import ConfigError
from .lab import DEPTH_RECIPES, DEPTHS, FINAL_NAME, MODERN_NAME, Lab, ablation_key, depth_name
from .methods import views_at_test
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


def _epochs(runs: Sequence[Run], protocol: int) -> str:
    """The runs' epochs ("30 epochs"); the paper's `protocol` when there are no runs."""
    return "/".join(map(str, sorted({r.config.epochs for r in runs}) or [protocol])) + " epochs"


def _images(runs: Sequence[Run]) -> str:
    n = sorted({int(s["train_images"]) for r in runs if (s := r.summary or {}).get("train_images")})
    return "all 50,000 training images" if n in ([], [50_000]) else "/".join(f"{k:,}" for k in n) + " training images"


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
        add(a.where, MEASURES["final_loss_sum"], a.paper_loss, rs, "final_loss_sum", recipe)
        add(a.where, MEASURES["final_val_acc"], a.paper_val_acc, rs, "final_val_acc", recipe)
    recipe = f"seed-faithful, {_epochs(final, 60)}"
    add("table 11 (final)", MEASURES["final_loss_sum"], paper.NUMBERS["final_loss"], final, "final_loss_sum", recipe)
    add("table 11 (final)", MEASURES["test_acc"], paper.NUMBERS["final_test_acc"], final, "test_acc", recipe)
    what = "test accuracy % (ours selected on validation; the seed's tuned on test)"
    for lays, paper_acc in paper.NUMBERS["depth_test_acc"].items():
        for name in DEPTH_RECIPES:
            rs = [r for r in depth if r.name == depth_name(lays, name)]
            recipe = "seed-faithful net and optimiser" if name == "seed" else "corrected net, modern recipe"
            add(f"§4.1 depth limit, lays {lays}", what, paper_acc, rs, "test_acc", recipe + views_at_test(rs))
    blocks = "/".join(str(n) for n in sorted({r.config.lays[0] + int(r.config.seed_extra_block) for r in modern}))
    recipe = f"modern preset, {_epochs(modern, 40)}, {blocks or '2'} blocks per stage, {_images(modern)}"
    where, what = "§4.1 best (lays 3: 4 blocks per stage in its code)", "test accuracy %: labkit's best"
    best = paper.NUMBERS["depth_test_acc"][3]
    add(
        where,
        f"{what} (modern preset; the seed's tuned on test)",
        best,
        modern,
        "test_acc",
        recipe + views_at_test(modern),
    )
    return pd.DataFrame(rows)


def data_caveat(runs: Sequence[Run], lab: Lab) -> str | None:
    """What a comparison with the paper must say when our data are not the official files
    (the paper's were), naming them by lab.data_label; None when they are."""
    sources = [(r.summary or {}).get("data") or {} for r in runs]
    if not sources or all(s.get("official") for s in sources):
        return None
    if any(s.get("synthetic") for s in sources):
        return (
            "These runs trained on synthetic data: a check of the pipeline, not a result to set beside the seed's "
            "numbers."
        )
    what = lab.data_label or "a copy that is not the official CIFAR-10 files"
    return (
        f"Our runs trained and were tested on {html_escape(what)}; the seed's numbers come from the official files. "
        "Each Δ ours − seed therefore holds the recipe's effect and the data's: a stand-in such as a JPEG re-encoding "
        "costs a few points of accuracy by itself. Differences between our own runs share the data and are not "
        "affected."
    )


def final_table(final: Sequence[Run], modern: Sequence[Run]) -> pd.DataFrame:
    what, best = f"table 11: seed-faithful, {_epochs(final, 60)}", paper.NUMBERS["depth_test_acc"][3]
    rows = [
        (what, final, "test_acc", paper.NUMBERS["final_test_acc"]),
        (what, final, "final_loss_sum", paper.NUMBERS["final_loss"]),
        (what, final, "final_val_acc", None),
        (f"labkit's best: modern preset{views_at_test(modern)}", modern, "test_acc", best),
    ]
    return pd.DataFrame([{"run": w, "measure": MEASURES[f], **_vs_paper(rs, f, v)} for w, rs, f, v in rows])


def depth_table(runs: Sequence[Run]) -> pd.DataFrame:
    rows = []
    for lays, paper_acc in paper.NUMBERS["depth_test_acc"].items():
        for recipe in DEPTH_RECIPES:
            rs = [r for r in runs if r.name == depth_name(lays, recipe)]
            cfg, e = rs[0].config if rs else None, _estimate(rs, "test_acc")
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


# Claims tested: _tested makes rows of neutral keys, and each table names and formats its columns.


def _tested(claim, better, worse, field, comparison, measure, section, paper_diff=None, sized=False, **extra) -> dict:
    """The claim "`better` beats `worse`" on `field`, by a Welch interval; `sized`: the verdict
    says whether the paper's own difference lies inside it."""
    d = welch(_values(better, field), _values(worse, field))
    row = dict(section=section, claim=claim, comparison=comparison, measure=measure, paper_diff=paper_diff)
    verdict = judge(d, paper_diff if sized else None)
    return row | {"ours": d.fmt(), "runs": f"{d.na} vs {d.nb}", "verdict": verdict, **extra}


def _claims_frame(rows: Sequence[dict], columns: dict[str, str | Callable[[dict], object]]) -> pd.DataFrame:
    """`rows` of _tested as a table: each column a row key, or a function of the row."""
    return pd.DataFrame([{k: r[how] if isinstance(how, str) else how(r) for k, how in columns.items()} for r in rows])


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
        a, b, comparison = by.get(better, []), by.get(worse, []), f"{better} − {worse}"
        rows.append(_tested(claim, a, b, "final_val_acc", comparison, "val acc", f"4 ({group})", paper_d, sized))
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
        where = "below" if m.lo > best else "above" if m.hi < best else "inside"
        verdict = f"the seed's {best * 100:.2f}% lies {where} our 95% CI"
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
    columns = {"comparison": "comparison", "Δ, pts [95% Welch CI]": "ours", "runs": "runs", "note": "verdict"}
    return _claims_frame(rows, columns)


def findings(abl: Sequence[Run], final: Sequence[Run], depth: Sequence[Run], modern: Sequence[Run]) -> pd.DataFrame:
    """Every conclusion of the paper, then labkit's two claims, each with our runs' verdict."""
    rows = [
        r for g in paper.CLAIMS for r in _ablation_tests(g, [r for r in abl if _key_of(r) in paper.ABLATION_GROUPS[g]])
    ]
    return _claims_frame(rows + _depth_tests(depth) + _labkit_tests(final, modern), FINDINGS_COLUMNS)
