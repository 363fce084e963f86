"""The main job (labkit.report, `python -m labkit lab`) and the statistics behind the report.

The end-to-end tests run the smoke profile as CI does: papermill executes every notebook,
nbconvert exports one HTML, headless Chromium prints the PDF (that assertion is skipped when
no chromium is on PATH). Everything is written under pytest's temporary folders. The lab is
conftest.py's session fixture smoke_lab, which test_reliability_lab.py shares: a first
attempt killed after two runs, then the whole lab run again in this process.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import pytest
import scipy.stats

from labkit import analysis as A
from labkit import paper
from labkit import report as R
from labkit import stats as S
from labkit.config import ConfigError
from labkit.paper import ABLATION_GROUPS

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("df, q", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423), (1000, 1.9623)])
def test_t_intervals_take_the_quantiles_of_printed_tables(df, q):
    e = S.estimate([0.5 + 0.01 * (i % 3) for i in range(df + 1)])
    half = q * e.sd / math.sqrt(df + 1)
    assert e.hi - e.mean == pytest.approx(half, rel=1e-4) and e.mean - e.lo == pytest.approx(half, rel=1e-4)


def test_estimate_mean_sd_and_t_interval():
    e = S.estimate([0.80, 0.82, 0.84])
    assert (e.n, e.mean, e.sd) == (3, pytest.approx(0.82), pytest.approx(0.02))
    half = 4.3027 * 0.02 / math.sqrt(3)
    assert (e.lo, e.hi) == (pytest.approx(0.82 - half, abs=1e-4), pytest.approx(0.82 + half, abs=1e-4))
    assert "± 2.00 SD (n=3)" in e.fmt(scale=100)
    one = S.estimate([0.5])
    assert one.n == 1 and math.isnan(one.sd) and one.fmt_ci() == "—"
    assert S.estimate([]).fmt() == "no runs"


def test_accuracy_intervals_stay_inside_0_to_100_percent():
    # two seeds far apart: t(1) = 12.7 makes the plain interval run past 100%
    raw = S.estimate([0.90, 0.99])
    assert raw.hi > 1.0
    e = S.estimate([0.90, 0.99], bounds=S.bounds_of("test_acc"))
    assert (e.mean, e.sd, e.lo) == (raw.mean, raw.sd, raw.lo) and e.hi == 1.0
    assert S.estimate([0.01, 0.10], bounds=(0.0, 1.0)).lo == 0.0
    assert S.bounds_of("final_val_acc") == (0.0, 1.0) and S.bounds_of("final_loss_sum") == (0.0, math.inf)
    assert S.bounds_of("train_seconds") is None
    with pytest.raises(ValueError, match="outside their bounds"):
        S.estimate([0.5, 1.2], bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="low < high"):
        S.estimate([0.5], bounds=(1.0, 0.0))
    # the report's tables cut them too
    runs = [SimpleNamespace(name="depth-3-seed", config=None, summary={"test_acc": v, "best_val_acc": v, "selected_epoch": 1}) for v in (0.90, 0.99)]
    row = A.depth_table(runs).iloc[2]
    assert row["95% CI"].endswith(", 100.00]"), row["95% CI"]


def test_loss_figures_mark_the_seed_s_final_loss_in_each_configuration_s_colour():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    from matplotlib.colors import to_hex

    from labkit.config import TrainConfig

    def run(name, seed, losses):
        h = pd.DataFrame({"epoch": range(1, len(losses) + 1), "loss_sum": losses})
        return SimpleNamespace(id=f"{name}-{seed}", name=name, history=h, config=TrainConfig(seed=seed))

    runs = [run("ablation-baseline", s, [150.0 - e for e in range(30)]) for s in (0, 1)]
    runs.append(run("ablation-decay_1.0", 0, [155.0 - e for e in range(30)]))
    paper_final = {"baseline": 130.229, "decay_1.0": 132.086, "stem_7x7": 138.715}  # no stem_7x7 runs: no mark
    fig = A.plot_loss_curves(runs, paper_final=paper_final, paper_epoch=30)
    ax = fig.axes[0]
    marks = [ln for ln in ax.get_lines() if ln.get_marker() == "x" and len(ln.get_xdata())]
    assert sorted((ln.get_xdata()[0], ln.get_ydata()[0]) for ln in marks) == [(30, 130.229), (30, 132.086)]
    curve = {ln.get_label(): to_hex(ln.get_color()) for ln in ax.get_legend().get_lines()}
    by_y = {ln.get_ydata()[0]: to_hex(ln.get_color()) for ln in marks}
    assert by_y[130.229] == curve["baseline"] and by_y[132.086] == curve["decay_1.0"] != curve["baseline"]
    assert "the seed's final loss (x)" in [t.get_text() for t in ax.get_legend().get_texts()]
    # runs shorter than the seed's 30 epochs: no marks, and the title says why
    short = [run("ablation-baseline", 0, [150.0, 149.0])]
    ax = A.plot_loss_curves(short, title="t", paper_final=paper_final, paper_epoch=30).axes[0]
    assert not [ln for ln in ax.get_lines() if ln.get_marker() == "x" and len(ln.get_xdata())]
    assert "not marked: these runs are shorter" in ax.get_title()
    with pytest.raises(ValueError, match="loss_sum"):
        A.plot_loss_curves(short, y="loss_mean", paper_final=paper_final, paper_epoch=30)


def test_welch_with_unequal_run_counts_and_the_verdicts_word_for_word():
    a, b = [0.80, 0.82, 0.84, 0.86, 0.88], [0.70, 0.75]
    d = S.welch(a, b)
    va, vb = S.estimate(a).sd ** 2 / 5, S.estimate(b).sd ** 2 / 2  # each side's variance over its own n
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 1)
    assert (d.na, d.nb) == (5, 2) and d.df == pytest.approx(df)
    assert d.hi - d.diff == pytest.approx(scipy.stats.t.ppf(0.975, df) * math.sqrt(va + vb))
    assert S.judge(S.welch([0.8], [0.7])) == "not testable: 1 run on each side, no spread measured (needs seeds ≥ 2)"
    assert S.judge(S.welch([0.8, 0.9], [0.7])) == "not testable: 1 run on one side, no spread measured (needs seeds ≥ 2)"
    assert S.judge(S.welch([0.8, 0.8], [0.7, 0.7])) == "not testable: every run on each side gave the same value, no spread measured"
    d = S.welch([0.80, 0.82, 0.84], [0.70, 0.71, 0.72])
    assert S.judge(d, claimed=0.11) == "confirmed: the CI lies above 0; the seed's 11.0-point size is inside the CI"
    assert S.judge(d, claimed=0.30).endswith("; the seed's 30.0-point size is outside the CI")


def _stub_runs(key_values: dict[str, list[float]], field: str, prefix: str = "ablation-") -> list:
    """Finished-run stand-ins: one per value, named prefix + key, with the seed's config."""
    from labkit.config import TrainConfig

    out = []
    for key, values in key_values.items():
        cfg = paper.ablation_config(key) if prefix == "ablation-" else TrainConfig()
        for seed, v in enumerate(values):
            out.append(SimpleNamespace(id=f"{prefix}{key}-{seed}", name=f"{prefix}{key}", config=cfg.replace(seed=seed), summary={field: v, "final_loss_sum": 130.0}))
    return out


def test_the_seed_s_tables_take_differences_the_right_way_round():
    runs = _stub_runs({"baseline": [0.78, 0.79, 0.80], "decay_1.0": [0.70, 0.71, 0.72], "decay_0.45": [0.50, 0.51, 0.52]}, "final_val_acc")
    table = A.ablation_table("lr_decay", runs).set_index("row")
    assert table.loc["decay_1.0", "Δ vs baseline, pts: ours [95% CI]"].startswith("-8.00 [")  # ablation − baseline
    assert table.loc["decay_1.0", "Δ vs baseline, pts: seed"] == pytest.approx((0.7645 - 0.7871) * 100)
    runs = _stub_runs({"baseline": [0.78, 0.79, 0.80], "no_stem_bn": [0.70, 0.71, 0.72]}, "final_val_acc")
    (claim,) = A.ablation_claims("stem_bn", runs).to_dict("records")
    assert "confirmed" in claim["verdict"] and "the seed's 2.6-point size is outside the CI" in claim["verdict"]
    final = _stub_runs({"final": [0.85, 0.86, 0.87]}, "test_acc", prefix="")
    row = A.paper_vs_ours([], final, [], []).set_index("measure").loc["test accuracy %"]
    assert row["Δ ours − seed"] == f"{(0.86 - 0.8336) * 100:+.2f}"  # ours above the seed's 83.36%: positive


def test_findings_gather_every_claim_with_its_verdict(monkeypatch):
    from labkit.config import MODERN

    vals = {"baseline": [0.78, 0.79, 0.80], "decay_1.0": [0.70, 0.71, 0.72], "decay_0.45": [0.50, 0.51, 0.52],
            "dropout_0.4": [0.78, 0.80, 0.79], "dropout_0.8": [0.75, 0.74, 0.76], "no_stem_bn": [0.70, 0.71, 0.72], "stem_7x7": [0.70, 0.72, 0.71]}  # fmt: skip
    abl = _stub_runs(vals, "final_val_acc")
    final = _stub_runs({"final": [0.80, 0.81, 0.82]}, "test_acc", prefix="")
    modern = [SimpleNamespace(id=f"modern-{s}", name="modern", config=MODERN.replace(seed=s), summary={"test_acc": v}) for s, v in enumerate((0.91, 0.915, 0.92))]
    depth = [SimpleNamespace(id=n, name=n, config=None, summary={"test_acc": v}) for n, v in
             (("depth-2-seed", 0.8), ("depth-3-seed", 0.7), ("depth-2-corrected", 0.9), ("depth-3-corrected", 0.91))]  # fmt: skip
    f = A.findings(abl, final, depth, modern)
    assert len(f) == sum(len(c) for c in paper.CLAIMS.values()) + 2 + 2
    by = f.set_index("claim")["verdict"]
    assert by["decay 1.0 beats 0.45"].startswith("confirmed") and by["dropout 0.4 hurts at 30 epochs"].startswith("not shown")
    assert by["deeper is better (seed recipe)"].startswith("not testable: 1 run on each side")
    assert by["labkit: the modern preset beats the seed's final recipe"].startswith("confirmed")
    assert by["labkit: the modern preset beats the seed's best, 89.27% (tuned on test)"] == "the seed's 89.27% lies below our 95% CI"
    # the comparison says that the modern number averages two views; the seed's never do
    assert "modern preset, test-time flip, test acc" in set(f["comparison"])
    # the findings read the claims' own rows, not the section tables' column names
    monkeypatch.setattr(A, "ABLATION_CLAIM_COLUMNS", {"renamed": "claim"})
    monkeypatch.setattr(A, "DEPTH_CLAIM_COLUMNS", {"renamed": "claim"})
    assert A.findings(abl, final, depth, modern).equals(f)
    best = A.best_vs_paper(final, modern)
    assert list(best["comparison"]) == ["modern − seed-faithful final, test acc", "modern vs the seed's best (89.27%, lays 3, tuned on test)"]
    assert list(best["note"]) == [by["labkit: the modern preset beats the seed's final recipe"], "the seed's 89.27% lies below our 95% CI"]


def test_depth_checkpoints_are_written_atomically_with_the_selected_weights(tmp_path):
    import torch

    from labkit.lab import depth_runs
    from labkit.train import load_checkpoint, save_checkpoint

    cfgs = dict(depth_runs(1))

    def runs(name, vals_tests):  # one run per (best_val_acc, test_acc); its weights hold its seed
        out = []
        for seed, (val, test) in enumerate(vals_tests):
            ckpt = tmp_path / f"{name}-{seed}" / "checkpoint.pt"
            ckpt.parent.mkdir()
            save_checkpoint(ckpt, {"model": {"w": torch.zeros(1)}, "best_state": {"w": torch.full((1,), float(seed))}})
            summary = {"best_val_acc": val, "selected_epoch": 3 + seed, "test_acc": test}
            out.append(SimpleNamespace(id=f"{name}-{seed}", name=name, config=cfgs[name].replace(seed=seed), summary=summary, checkpoint=ckpt))
        return out

    # The best validation accuracy is neither the first seed, nor the last, nor the best on test
    # (selection on validation only); a run without the number never wins.
    lays2 = runs("depth-2-corrected", [(0.6, 0.9), (0.8, 0.5), (0.7, 0.95), (None, 0.99)])
    out = tmp_path / "out"
    rows = A.export_depth_checkpoints(lays2, out).set_index("run")
    assert rows.loc["depth-2-corrected-1", "status"] == "written: weights of epoch 4 (best validation accuracy)"
    assert rows.loc["—", "status"] == "not written: run missing"  # no lays-3 run
    state = load_checkpoint(out / "checkpoint-block-2.pth")
    assert state["run"] == "depth-2-corrected-1" and state["model"]["w"].item() == 1.0  # the best seed's selected weights
    assert (state["selected_epoch"], state["val_acc"], state["test_acc"]) == (4, 0.8, 0.5)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-block-2.pth"]  # no temp file left
    # lays 3: its best is the first seed; each file takes its own depth's best
    lays3 = runs("depth-3-corrected", [(0.75, 0.6), (0.74, 0.7)])
    seed_recipe = [SimpleNamespace(id="depth-3-seed-0", name="depth-3-seed", summary={"best_val_acc": 0.99}, checkpoint=tmp_path / "none")]
    rows = A.export_depth_checkpoints(seed_recipe + lays3 + lays2, out).set_index("file")["run"]
    assert rows.to_dict() == {str(out / "checkpoint-block-2.pth"): "depth-2-corrected-1", str(out / "checkpoint-block-3.pth"): "depth-3-corrected-0"}
    assert load_checkpoint(out / "checkpoint-block-3.pth")["run"] == "depth-3-corrected-0"


# Student-t 0.975 quantiles from printed tables: what the intervals below are computed with by hand.
T975 = {2: 4.302653, 4: 2.776445}


def _by_hand(values: list[float]) -> tuple[float, float, float]:
    """mean, sample SD and the half-width of the 95% t interval, without labkit.stats."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, sd, T975[n - 1] * sd / math.sqrt(n)


def _named_runs(name: str, cfg, **fields: list[float]) -> list:
    """Finished-run stand-ins of one configuration, seed i holding each field's i-th value."""
    n = len(next(iter(fields.values())))
    return [SimpleNamespace(id=f"{name}-{s}", name=name, config=cfg.replace(seed=s), summary={k: v[s] for k, v in fields.items()}) for s in range(n)]


def test_deeper_is_better_is_judged_the_right_way_round_with_three_seeds():
    from labkit.lab import depth_runs

    cfgs = dict(depth_runs(1))
    deep, shallow = [0.70, 0.72, 0.74], [0.60, 0.62, 0.64]
    # seed recipe: lays 3 beats lays 2 by 10 points; corrected: lays 3 loses by 10 points.
    runs = [
        *_named_runs("depth-2-seed", cfgs["depth-2-seed"], test_acc=shallow, best_val_acc=shallow, selected_epoch=[7, 8, 9]),
        *_named_runs("depth-3-seed", cfgs["depth-3-seed"], test_acc=deep, best_val_acc=[0.71, 0.73, 0.75], selected_epoch=[10, 11, 12]),
        *_named_runs("depth-2-corrected", cfgs["depth-2-corrected"], test_acc=[v + 0.2 for v in deep], best_val_acc=deep, selected_epoch=[1, 2, 3]),
        *_named_runs("depth-3-corrected", cfgs["depth-3-corrected"], test_acc=[v + 0.2 for v in shallow], best_val_acc=deep, selected_epoch=[4, 5, 6]),
    ]
    # Welch by hand: equal SDs (2 points) and n (3) on each side, so df = 2(n-1) = 4 exactly.
    half = T975[4] * math.sqrt(0.02**2 / 3 + 0.02**2 / 3)
    ci = f"[{(0.10 - half) * 100:+.2f}, {(0.10 + half) * 100:+.2f}]"
    assert ci == "[+5.47, +14.53]"
    claim = A.depth_claim(runs).set_index("recipe")
    assert list(claim.index) == ["seed", "corrected"]
    seed, corrected = claim.loc["seed"], claim.loc["corrected"]
    assert seed["comparison"] == corrected["comparison"] == "lays 3 − lays 2, test acc"
    assert seed["seed: Δ, pts"] == pytest.approx((0.8927 - 0.8632) * 100)  # the seed's deep minus shallow
    assert seed["ours: Δ, pts [95% Welch CI]"] == f"+10.00 pts {ci}"
    assert seed["runs"] == corrected["runs"] == "3 vs 3"
    assert seed["verdict"] == "confirmed: the CI lies above 0"
    assert corrected["ours: Δ, pts [95% Welch CI]"] == "-10.00 pts [-14.53, -5.47]"
    assert corrected["verdict"] == "refuted: the opposite holds (CI below 0)"
    by = A.findings([], [], runs, []).set_index("claim")
    assert by.loc["deeper is better (seed recipe)", "verdict"] == "confirmed: the CI lies above 0"
    assert by.loc["deeper is better (corrected recipe)", "verdict"] == "refuted: the opposite holds (CI below 0)"
    assert by.loc["deeper is better (seed recipe)", "seed: Δ, pts"] == "+2.95"
    # The depth table: each row its own runs' mean, SD and t interval of test accuracy.
    table = A.depth_table(runs)
    assert [(r["lays"], r["recipe"].split()[0]) for _, r in table.iterrows()] == [(2, "seed-faithful"), (2, "corrected"), (3, "seed-faithful"), (3, "corrected")]
    row = table.iloc[2]  # lays 3, seed recipe
    mean, sd, h = _by_hand(deep)
    assert row["test acc % (once)"] == f"{mean * 100:.2f} ± {sd * 100:.2f} SD (n=3)" == "72.00 ± 2.00 SD (n=3)"
    assert row["95% CI"] == f"[{(mean - h) * 100:.2f}, {(mean + h) * 100:.2f}]" == "[67.03, 76.97]"
    assert row["best val acc %"] == "73.00 ± 2.00 SD (n=3)" and row["selected epoch (best val)"] == "10, 11, 12"
    assert row["Δ ours − seed, pts"] == pytest.approx(72.0 - 89.27)
    assert table.iloc[0]["test acc % (once)"] == "62.00 ± 2.00 SD (n=3)" and table.iloc[1]["Δ ours − seed, pts"] == pytest.approx(92.0 - 86.32)


def test_final_table_and_best_vs_seed_numbers_by_hand():
    from labkit.config import MODERN
    from labkit.lab import final_runs

    final_cfg = dict(final_runs(1))["final"]
    final = _named_runs("final", final_cfg, test_acc=[0.80, 0.82, 0.84], final_loss_sum=[120.0, 125.0, 130.0], final_val_acc=[0.79, 0.80, 0.84])
    modern = _named_runs("modern", MODERN, test_acc=[0.90, 0.92, 0.94])
    t = A.final_table(final, modern).set_index("measure", append=True)
    cols = ["seed's number", "n", "ours: mean ± SD", "ours: 95% CI", "Δ ours − seed"]

    def expect(values, seed, scale=100, digits=2):
        m, sd, h = _by_hand(values)
        return ["—" if seed is None else f"{seed * scale:.{digits}f}", 3, f"{m * scale:.{digits}f} ± {sd * scale:.{digits}f}",
                f"[{(m - h) * scale:.{digits}f}, {(m + h) * scale:.{digits}f}]", "—" if seed is None else f"{(m - seed) * scale:+.{digits}f}"]

    rows = {measure: list(r[cols]) for (_, measure), r in t.iterrows()}
    assert [m for _, m in t.index] == ["test accuracy %", "final loss (summed over the epoch)", "validation accuracy %", "test accuracy %"]
    assert list(t.iloc[0][cols]) == expect([0.80, 0.82, 0.84], 0.8336) == ["83.36", 3, "82.00 ± 2.00", "[77.03, 86.97]", "-1.36"]
    assert rows["final loss (summed over the epoch)"] == expect([120.0, 125.0, 130.0], 126.53595, 1, 3) == ["126.536", 3, "125.000 ± 5.000", "[112.579, 137.421]", "-1.536"]
    assert rows["validation accuracy %"] == expect([0.79, 0.80, 0.84], None) == ["—", 3, "81.00 ± 2.65", "[74.43, 87.57]", "—"]
    assert list(t.iloc[3][cols]) == expect([0.90, 0.92, 0.94], 0.8927) == ["89.27", 3, "92.00 ± 2.00", "[87.03, 96.97]", "+2.73"]
    assert t.iloc[3]["run"] == "labkit's best: modern preset, test-time flip" and t.iloc[0]["run"] == f"table 11: seed-faithful, {final_cfg.epochs} epochs"
    # best_vs_seed: modern − final by Welch (equal SDs and n: df 4), then the seed's best against our CI
    best = A.best_vs_paper(final, modern)
    half = T975[4] * math.sqrt(0.02**2 / 3 + 0.02**2 / 3)
    assert list(best["Δ, pts [95% Welch CI]"]) == [f"+10.00 pts [{(0.10 - half) * 100:+.2f}, {(0.10 + half) * 100:+.2f}]", "+2.73 pts"]
    assert list(best["runs"]) == ["3 vs 3", "3"]
    _, _, h = _by_hand([0.90, 0.92, 0.94])
    assert 0.92 - h < 0.8927 < 0.92 + h
    assert list(best["note"]) == ["confirmed: the CI lies above 0", "the seed's 89.27% lies inside our 95% CI"]
    # the other way round: modern below final, and below the seed's best
    worse = _named_runs("modern", MODERN, test_acc=[0.70, 0.72, 0.74])
    _, _, h = _by_hand([0.70, 0.72, 0.74])
    assert 0.72 + h < 0.8927
    best = A.best_vs_paper(final, worse)
    assert list(best["Δ, pts [95% Welch CI]"]) == ["-10.00 pts [-14.53, -5.47]", "-17.27 pts"]
    assert list(best["note"]) == ["refuted: the opposite holds (CI below 0)", "the seed's 89.27% lies above our 95% CI"]
    assert list(A.best_vs_paper(final, worse[:1])["note"])[1] == "one run: no interval"


def test_recipes_in_words_name_what_a_comparison_with_the_seed_must_say():
    from labkit.config import MODERN, SEED

    seed, modern = A.describe_recipe(SEED), A.describe_recipe(MODERN)
    assert "(3 blocks per stage)" in seed and "the seed's defects: n+1 blocks per stage, softmax before the loss" in seed
    assert "Adam lr 0.001, lr × 0.9 per epoch, batch 512, 30 epochs" in seed and "one view per image" in seed
    assert "corrected network" in modern and "SGD Nesterov lr 0.2" in modern and "tested once with test-time flip" in modern
    assert "all 50,000 training images" in modern and f"{MODERN.epochs} epochs" in modern
    assert "7x7 stride 2 stem without BN" in A.describe_recipe(SEED.replace(stem="7x7", stem_bn=False))
    assert "cutout 12" in A.describe_recipe(MODERN.replace(cutout=12)) and "2-pixel shifts" in A.describe_recipe(MODERN.replace(tta_translate=2))
    run = lambda c: SimpleNamespace(config=c)  # noqa: E731
    assert A.views_at_test([run(SEED)]) == "" and A.views_at_test([]) == ""
    assert A.views_at_test([run(MODERN)] * 2) == ", test-time flip"
    assert A.views_at_test([run(MODERN), run(SEED)]) == ", test-time views differ between runs"


def test_code_versions_and_the_data_caveat():
    runs = [SimpleNamespace(summary={"code_version": v}) for v in ("8721feb", "3887dc1", "8721feb", "3887dc1+dropout-eager")]
    assert A.code_versions(runs) == (
        "3887dc1 (1 run), 3887dc1+dropout-eager (1 run), 8721feb (2 runs); a version with + is that commit with an uncommitted change of that name"
    )
    assert A.code_versions(runs[:1]) == "8721feb (1 run)" and A.code_versions([]) == "—"
    official = SimpleNamespace(summary={"data": {"official": True}})
    stand_in = SimpleNamespace(summary={"data": {"official": False}})
    unlabelled, labelled = SimpleNamespace(data_label=None), SimpleNamespace(data_label="JPEG <q75> copy")  # a Lab's
    assert A.data_caveat([official, official], unlabelled) is None and A.data_caveat([], unlabelled) is None
    synthetic = SimpleNamespace(summary={"data": {"official": False, "synthetic": True}})
    assert A.data_caveat([synthetic], unlabelled).startswith("These runs trained on synthetic data")
    note = A.data_caveat([official, stand_in], labelled)
    assert "Our runs trained and were tested on JPEG &lt;q75&gt; copy; the seed's numbers come from the official files" in note
    assert "a copy that is not the official CIFAR-10 files" in A.data_caveat([stand_in], unlabelled)


def test_compare_runs_sets_the_same_runs_of_two_stores_side_by_side():
    def run(rid, version, val, test, finished=True):
        return SimpleNamespace(id=rid, finished=finished, summary={"code_version": version, "final_val_acc": val, "test_acc": test})

    old = [run("final-1", "3887dc1", 0.719, 0.7108), run("baseline-2", "3887dc1", 0.772, None), run("x-3", "3887dc1", 0.5, 0.5)]
    new = [run("final-1", "abc1234", 0.781, 0.7790), run("baseline-2", "abc1234", 0.770, 0.76), run("y-4", "abc1234", 0.5, 0.5),
           run("x-3", "abc1234", 0.5, 0.5, finished=False)]  # fmt: skip
    t = A.compare_runs(new, old)
    assert list(t["run"]) == ["baseline-2", "final-1"]  # only finished runs present in both
    row = t.set_index("run").loc["final-1"]
    assert row["code (new)"] == "abc1234" and row["code (old)"] == "3887dc1"
    assert row["final_val_acc new − old, pts"] == pytest.approx(6.2) and row["test_acc new − old, pts"] == pytest.approx(6.82)
    assert math.isnan(t.set_index("run").loc["baseline-2", "test_acc new − old, pts"])  # no test number on one side
    assert A.compare_runs([], old).empty


def test_welch_difference_and_verdicts():
    a, b = [0.80, 0.82, 0.84], [0.70, 0.71, 0.72]
    d = S.welch(a, b)
    va, vb = 0.02**2 / 3, 0.01**2 / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    assert d.diff == pytest.approx(0.11)
    assert d.df == pytest.approx(df)
    assert d.hi - d.diff == pytest.approx(scipy.stats.t.ppf(0.975, df) * math.sqrt(va + vb))
    assert S.judge(d).startswith("confirmed")
    assert S.judge(S.welch(b, a)).startswith("refuted")
    assert S.judge(S.welch([0.8, 0.7], [0.75, 0.76])).startswith("not shown")
    assert S.judge(S.welch([0.8], [0.7])).startswith("not testable")
    assert S.judge(S.welch([], [0.7])).startswith("untested")
    # Equal values on every run (accuracies are discrete) give no spread, not certainty.
    assert S.estimate([0.7, 0.7, 0.7]).sd == 0.0
    tie = S.welch([0.7, 0.7, 0.7], [0.6, 0.6, 0.6])
    assert tie.diff == pytest.approx(0.1) and not tie.has_ci
    assert S.judge(tie) == "not testable: every run on each side gave the same value, no spread measured"
    assert S.judge(S.welch([0.7, 0.7], [0.6, 0.65])).startswith("not shown")  # one side varies: a CI
    assert S.estimate([0.5, None, float("nan"), np.float32("nan"), np.float64(0.7)]).n == 2
    with pytest.raises(TypeError, match="must be a number"):
        S.estimate([0.5, "0.7"])
    assert "outside" in S.judge(d, claimed=0.30) and "inside" in S.judge(d, claimed=0.11)


def test_loss_floor_of_a_softmax_head():
    f = A.loss_floor()
    assert f["analytic"] == pytest.approx(-math.log(math.e / (math.e + 9)))
    assert all(v == pytest.approx(1.4612, abs=1e-4) for v in f.values())
    t = A.loss_floor_table(f["analytic"])
    assert (t["batches per epoch"] == 79).all()
    assert (t["loss per batch"] > f["analytic"]).all()  # every loss the seed reports sits above the floor


def test_data_label(monkeypatch, tmp_path):
    official = {"official": True, "description": "official CIFAR-10 (md5 verified)"}
    other = {"official": False, "description": "not the official CIFAR-10 files (md5 differs for 6 of 6 batches)"}
    assert A.data_label(official) == "official CIFAR-10 (md5 verified)"
    monkeypatch.setenv("LABKIT_DATA_LABEL", "CIFAR-10 re-encoded as JPEG")
    assert A.data_label(other).startswith("not the official")  # the label comes from the lab, read once by open_lab
    assert A.data_label(other, label="stand-in").startswith("stand-in; not the official")
    assert A.data_label(official, label="stand-in") == "official CIFAR-10 (md5 verified)"  # never relabels official data
    assert "synthetic" in A.data_label(other, synthetic=True)
    # open_lab: the data_label parameter, else $LABKIT_DATA_LABEL, into lab.data_label
    assert A.open_lab("smoke", root=str(tmp_path), allow_train=False).data_label == "CIFAR-10 re-encoded as JPEG"
    assert A.open_lab("smoke", root=str(tmp_path), allow_train=False, data_label="mine").data_label == "mine"
    monkeypatch.delenv("LABKIT_DATA_LABEL")
    lab = A.open_lab("full", root=str(tmp_path), allow_train=False)
    assert lab.data_label is None
    table = A.source_table(other, lab).set_index("")["value"]
    assert table["data used"].startswith("not the official") and table["md5 of every batch file matches the official CIFAR-10"] == "no"
    lab = A.open_lab("full", root=str(tmp_path), allow_train=False, data_label="stand-in")
    assert A.source_table(other, lab).set_index("")["value"]["data used"].startswith("stand-in; not the official")


def test_summary_runs_and_the_recorded_data_source(tmp_path):
    from conftest import recorded_run

    from labkit.lab import Lab, plan

    lab = Lab("smoke", root=tmp_path, allow_train=False, progress=False, log=None)
    (abl, final, depth, modern), missing = A.summary_runs(lab, 2, 1)
    assert (abl, final, depth, modern) == ([], [], [], [])
    assert sorted(missing) == sorted(lab.store.run_id(c, n) for _, n, c in plan("smoke", 2))  # the baseline once
    assert A.recorded_source(lab) is None
    run = recorded_run(lab.store.root, {"official": False, "folder": "x"}, "ablation-baseline", plan("smoke", 1)[0][2])
    assert run.name == missing[0]
    assert A.recorded_source(lab) == {"official": False, "folder": "x"}
    (abl, *_), missing2 = A.summary_runs(lab, 2, 1)
    assert [r.id for r in abl] == [missing[0]] and len(missing2) == len(missing) - 1


def test_the_seed_s_numbers_the_figures_mark():
    assert A.paper_ablation_values("paper_loss")["stem_7x7"] == 138.71478 and len(A.paper_ablation_values("paper_val_acc")) == len(paper.ABLATIONS)
    assert A.paper_figures("lr_decay") == "2, 6, 7, 9, 1, 3" and A.paper_figures("stem_kernel") == "2, 6, 7, 9, 10"
    with pytest.raises(ConfigError, match="not one of the seed's ablation groups"):
        A.paper_figures("width")
    assert A.paper_test_accuracies() == {"final": 0.8336, "modern": 0.8927}


def test_training_sittings_merge_side_by_side_runs_and_split_sessions():
    from types import SimpleNamespace

    def run(end: str, secs: float | None, key: str = "wall_seconds"):
        return SimpleNamespace(summary={"finished_at": end, key: secs} if secs is not None else {"finished_at": end})

    runs = [
        run("2026-11-28T10:01:00+00:00", 60),  # 10:00-10:01
        run("2026-11-28T10:01:30+00:00", 80),  # side by side with the first: 10:00:10-10:01:30
        run("2026-11-28T10:02:20+00:00", 30, "train_seconds"),  # 20 s after: the same sitting
        run("2026-11-28T10:02:10+00:00", 5),  # inside the sitting: it does not end it earlier
        run("2026-11-28T10:09:30+00:00", 60),  # 7 min later: not training meanwhile, a second sitting
        run("2026-11-28T12:00:00+01:00", 120),  # 10:58-11:00 UTC: a third sitting
        run("2026-11-28T13:00:00+00:00", None),  # no duration: left out
        SimpleNamespace(summary=None),  # unfinished: left out
    ]
    sittings = A.training_sittings(runs)
    assert [(s.strftime("%H:%M:%S"), e.strftime("%H:%M:%S")) for s, e in sittings] == [
        ("10:00:00", "10:02:20"),
        ("10:08:30", "10:09:30"),
        ("10:58:00", "11:00:00"),
    ]
    assert A.describe_sittings(sittings) == (
        "2026-11-28 10:00-10:02 UTC (2.3 min), 2026-11-28 10:08-10:09 UTC (1.0 min), "
        "2026-11-28 10:58-11:00 UTC (2.0 min); 5.3 min in 3 sittings"
    )
    assert A.describe_sittings(sittings[:1]) == "2026-11-28 10:00-10:02 UTC (2.3 min)"
    assert A.describe_sittings([]) == "—"
    assert len(A.training_sittings(runs, gap_s=600)) == 2
    assert len(A.training_sittings(runs, gap_s=0)) == 4
    bad = SimpleNamespace(id="final-0123456789", summary={"finished_at": "yesterday", "wall_seconds": 5})
    with pytest.raises(ValueError, match="final-0123456789: finished_at 'yesterday'"):
        A.training_sittings([bad])


def test_parameter_checks(tmp_path):
    from labkit.lab import Lab

    assert A.check_seeds(2) == 2
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ConfigError):
            A.check_seeds(bad)
    # A notebook run on its own with seeds=None takes its profile's number, as the lab job does.
    smoke = Lab("smoke", root=tmp_path, allow_train=False, progress=False, log=None)
    assert A.check_seeds(None, smoke) == 2 and A.check_seeds(3, smoke) == 3
    with pytest.raises(ConfigError, match="ablation must be one of"):
        A.check_choice("ablation", "nope", paper.ABLATION_GROUPS)
    with pytest.raises(ConfigError, match="allow_train"):
        A.check_bool("allow_train", "False")


# ---------------------------------------------------------------------------------------
# The job: profiles, notebooks, merge, export
# ---------------------------------------------------------------------------------------


def test_auto_profile_is_full_only_with_a_gpu_and_the_data(tmp_path, synth_root):
    name, why = R.choose_profile("auto", tmp_path, cuda=False)
    assert name == "smoke" and "no CUDA GPU" in why and "days" in why
    assert R.choose_profile("auto", synth_root, cuda=True)[0] == "full"
    name, why = R.choose_profile("auto", tmp_path / "none", cuda=True, download=False)
    assert name == "smoke" and "CIFAR-10 was not found" in why
    assert R.choose_profile("quick", tmp_path, cuda=False) == ("quick", "profile quick, as asked")
    with pytest.raises(ConfigError, match="did you mean 'full'"):
        R.choose_profile("ful", tmp_path, cuda=False)


def _cpu(monkeypatch, gflops: float) -> None:
    """No GPU, and a CPU measured at `gflops`."""
    import torch

    import labkit.model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(labkit.model, "measure_gflops", lambda *a, **k: gflops)


def test_full_profile_never_trains_on_a_cpu_silently(tmp_path, monkeypatch):
    from labkit.lab import Lab, LabError

    rows = Lab("full", root=tmp_path).plan(1)
    _cpu(monkeypatch, 50.0)
    with pytest.raises(LabError, match="refusing the full profile on a CPU.*days of training.*HOW"):
        Lab("full", root=tmp_path).refuse_long_cpu_training(rows, "HOW")
    _cpu(monkeypatch, 1e6)  # even on a CPU as fast as a GPU the full profile waits for allow_cpu
    with pytest.raises(LabError, match="refusing the full profile on a CPU"):
        Lab("full", root=tmp_path).refuse_long_cpu_training(rows, "HOW")
    assert Lab("full", root=tmp_path, allow_train=False).refuse_long_cpu_training(rows, "HOW") == ""  # render from records
    assert "GFLOP/s measured" in Lab("full", root=tmp_path, allow_cpu=True).refuse_long_cpu_training(rows, "HOW")
    assert Lab("full", root=tmp_path).refuse_long_cpu_training([], "HOW") == ""  # nothing left to train


def test_quick_profile_on_a_cpu_states_its_estimate_and_refuses_hours(tmp_path, monkeypatch):
    from labkit.lab import Lab, LabError, plan_gflop

    lab = Lab("quick", root=tmp_path)
    rows = lab.plan()
    work = plan_gflop(rows)
    _cpu(monkeypatch, work / 7200)  # a CPU that would need two hours: refused, with the estimate and the way out
    with pytest.raises(LabError, match=r"refusing the quick profile on a CPU.*about 2 h of training.*HOW"):
        lab.refuse_long_cpu_training(rows, "HOW")
    _cpu(monkeypatch, work / 600)  # ten minutes: it runs, and says how long it will take
    assert "about 10 min of training on this CPU" in lab.refuse_long_cpu_training(rows, "HOW")


def test_plan_gflop_counts_every_run_on_the_data_s_sizes():
    from labkit.lab import plan, plan_gflop
    from labkit.model import run_gflop

    rows = plan("full", 1)
    by_hand = 0.0
    for _, _, cfg in rows:
        train = 40000 if cfg.split == "seed" else 50000 - cfg.val_size
        val = 10000 if cfg.split == "seed" else cfg.val_size
        by_hand += run_gflop(cfg, train, val + 10000 / cfg.epochs)
    assert plan_gflop(rows) == pytest.approx(by_hand)
    assert plan_gflop(plan("full", 3)) > 2 * plan_gflop(rows) > 10 * plan_gflop(plan("quick"))
    smoke = plan("smoke")
    assert plan_gflop(smoke, (1000, 200)) < plan_gflop(smoke) / 40  # the smoke profile's synthetic sizes


def test_measured_cpu_rate_is_positive_and_finite():
    from labkit.config import SEED
    from labkit.model import measure_gflops

    rate = measure_gflops(SEED.replace(width=8), "cpu", batch=4, steps=1)
    assert 0 < rate < 1e5


def test_cli_refuses_full_on_cpu(monkeypatch, capsys, tmp_path):
    import torch

    from labkit.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # An empty store: the committed report/runs is complete, and with nothing left to
    # train the full profile rightly goes ahead on a CPU.
    out = tmp_path / "never-written"
    assert main(["lab", "--profile", "full", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 1
    assert "refusing the full profile" in capsys.readouterr().err
    assert not out.exists()


def test_jobs_run_04_once_per_ablation_and_summary_last():
    js = R.jobs({"profile": "smoke"}, seeds=2)
    assert [j.key for j in js] == [
        "01_data",
        "02_model",
        "03_depth_limit",
        *[f"04_ablations-{a}" for a in ABLATION_GROUPS],
        "05_final",
        "00_summary",
    ]
    assert [j.parameters["ablation"] for j in js if j.notebook == "04_ablations"] == list(ABLATION_GROUPS)
    assert all(j.parameters["seeds"] == 2 for j in js if "seeds" in j.parameters)


# ---------------------------------------------------------------------------------------
# End to end: the smoke profile, as CI runs it
# ---------------------------------------------------------------------------------------

TABLES = [
    "summary", "findings", "facts",
    "data-source", "class-counts", "channel-stats",
    "architecture", "variants", "shape-check", "block-counts", "loss-floor-value", "loss-floor",
    "depth", "depth-claim", "checkpoints",
    *[f"ablation-{a}" for a in ABLATION_GROUPS], *[f"claims-{a}" for a in ABLATION_GROUPS],
    "final", "best-vs-seed",
]  # fmt: skip
FIGURES = [
    "samples", "augmentation", "loss-floor", "depth-val", "depth-loss",
    *[f"loss-{a}" for a in ABLATION_GROUPS], *[f"errorbars-{a}" for a in ABLATION_GROUPS],
    "final-loss", "modern-loss", "final-errorbars",
]  # fmt: skip


# smoke_lab (conftest.py): the smoke profile end to end under a temporary project root (never
# report/), finished by run_lab("smoke", root=root, out=root / "out") in this process after a
# first attempt was killed (test_reliability_lab.py checks that part).


@pytest.mark.slow
def test_smoke_lab_runs_every_notebook(smoke_lab):
    rep, root, seconds = smoke_lab.report, smoke_lab.root, smoke_lab.seconds
    assert rep.profile == "smoke"
    keys = sorted(p.stem for p in rep.notebooks)
    assert keys == sorted(["00_summary", "01_data", "02_model", "03_depth_limit", "05_final", *[f"04_ablations-{a}" for a in ABLATION_GROUPS]])
    for p in rep.notebooks:
        nb = nbformat.read(p, as_version=4)
        nbformat.validate(nb)  # opens in JupyterLab
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{p.name} has no outputs"
    # Only under the temporary root: smoke never writes into report/ or check_points/.
    assert (root / "build" / "smoke" / "runs").is_dir()
    assert (root / "build" / "smoke" / "check_points" / "checkpoint-block-2.pth").is_file()
    assert (root / "build" / "smoke" / "check_points" / "checkpoint-block-3.pth").is_file()
    assert seconds < 600, f"the smoke lab took {seconds:.0f} s"


@pytest.mark.slow
def test_smoke_report_has_every_table_and_figure(smoke_lab):
    rep = smoke_lab.report
    html = rep.html.read_text()
    missing_t = [t for t in TABLES if f'id="T_tbl-{t}"' not in html]
    missing_f = [f for f in FIGURES if f'id="fig-{f}"' not in html]
    assert not missing_t and not missing_f, f"missing tables {missing_t}, figures {missing_f}"
    assert html.count('data-mime-type="image/svg+xml"') >= len(FIGURES)  # figures inlined as SVG
    # The summary opens the report, and the contents list links every section.
    assert html.index('id="sec-00_summary"') < html.index('id="sec-01_data"')
    for key in ["00_summary", "01_data", "02_model", "03_depth_limit", "05_final", *[f"04_ablations-{a}" for a in ABLATION_GROUPS]]:
        assert f'href="#sec-{key}"' in html and f'id="sec-{key}"' in html
    # Every number the seed reports is in the summary, and the data's provenance is shown.
    for a in paper.ABLATIONS:
        assert f"{a.paper_loss:.3f}" in html and f"{a.paper_val_acc * 100:.2f}" in html
    for n in ("126.536", "83.36", "86.32", "89.27"):
        assert n in html
    assert "synthetic CIFAR-format data" in html and "not the official CIFAR-10 files" in html
    assert "smoke profile" in html
    days = sorted({json.loads(f.read_text())["finished_at"][:10] for f in (smoke_lab.root / "build/smoke/runs").glob("*/summary.json")})
    assert days and f"<b>trained:</b> {' to '.join(dict.fromkeys([days[0], days[-1]]))}" in html  # from the runs' summaries
    # Every figure carries its caption as alternative text (nbconvert's own is a placeholder).
    from bs4 import BeautifulSoup

    imgs = BeautifulSoup(html, features="html.parser").select("div.jp-OutputArea-output img")
    assert len(imgs) >= len(FIGURES) and all(i.get("alt") and "No description" not in i["alt"] for i in imgs)
    # Code hidden, no progress bars or run logs, no external scripts.
    assert "A.open_lab(" not in html and "it/s]" not in html and "ep/s]" not in html
    assert not re.search(r'<script[^>]+src="https?://', html)


@pytest.mark.slow
def test_smoke_report_pdf(smoke_lab):
    rep = smoke_lab.report
    if R.find_chromium() is None:
        pytest.skip("no chromium on PATH: PDF not printed")
    assert rep.pdf is not None and rep.pdf.is_file()
    data = rep.pdf.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 10


@pytest.mark.slow
def test_export_again_retrains_nothing(smoke_lab, tmp_path, monkeypatch, capsys):
    """--no-train renders from the store: a run missing from it is reported missing, never
    trained; no run touched, none added; every notebook is told allow_train=False; without
    Chromium, the HTML only.

    On a copy of the session's store (other tests read the session's own), with one of
    notebook 03's runs made unfinished (its summary.json moved aside). Notebook 03, which
    plans that run, is executed for real; the others are stood in for by the session's
    executed notebooks (what they render from the same store), so the merge and export still
    see every section while only one kernel starts.
    """
    import shutil

    root = tmp_path / "root"
    runs = root / "build" / "smoke" / "runs"
    shutil.copytree(smoke_lab.runs, runs)
    (gone,) = [d for d in runs.iterdir() if (d / "config.json").is_file() and json.loads((d / "config.json").read_text())["name"] == "depth-3-corrected"]
    (gone / "summary.json").rename(tmp_path / "summary.json.aside")
    before = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}
    executed = {p.stem: p for p in smoke_lab.report.notebooks}
    real_execute = R.execute
    told: dict[str, dict] = {}

    def execute(job, out_dir, notebook_dir=R.NOTEBOOK_DIR):
        told[job.key] = dict(job.parameters)
        if job.key == "03_depth_limit":
            return real_execute(job, out_dir, notebook_dir)
        return Path(shutil.copy(executed[job.key], out_dir / f"{job.key}.ipynb"))

    monkeypatch.setattr(R, "execute", execute)
    monkeypatch.setattr(R, "find_chromium", lambda: None)
    again = R.run_lab("smoke", root=root, out=root / "again", allow_train=False)
    # every notebook told not to train (the summary only reads the store: it takes no allow_train)
    assert sorted(told) == sorted(executed)
    assert {k: p.get("allow_train", "none") for k, p in told.items()} == {k: "none" if k == "00_summary" else False for k in told}
    nb03 = nbformat.read(again.report_dir / "03_depth_limit.ipynb", as_version=4)
    assert nb03.metadata["papermill"]["parameters"]["allow_train"] is False  # what the kernel received
    # the missing run stayed missing, and said so; no run touched, none added
    after = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}
    assert not (gone / "summary.json").exists() and before == after
    assert sorted(d.name for d in runs.iterdir()) == sorted(d.name for d in smoke_lab.runs.iterdir())
    said = "".join(str(o.get("data", {}).get("text/html", "")) for c in nb03.cells if c.cell_type == "code" for o in c.outputs)
    assert "1 run(s) missing" in said and f"<code>{gone.name}</code>" in said, said[:2000]
    html = again.html.read_text()
    assert "1 run(s) missing" in html and f"<code>{gone.name}</code>" in html
    assert again.pdf is None and again.html.is_file()
    assert "no Chromium on PATH" in capsys.readouterr().out
    assert all(f'id="T_tbl-{t}"' in html for t in TABLES)


def test_committed_report_names_no_machine_paths():
    """The committed report, its notebooks, runs and benchmark results carry no absolute
    folder of the machine that made them (papermill records paths; parameters hold folders;
    logs hold tracebacks and commands)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    report = root / "report"
    files = sorted(report.glob("*.ipynb")) + sorted(report.glob("*.html"))
    # and what came back from GPU machines: run records, benchmark results and logs
    files += [f for f in sorted((report / "runs").rglob("*")) if f.suffix in (".json", ".csv")]
    files += [f for f in sorted((root / "benchmarks" / "results").glob("*")) if f.is_file()]
    if not files:
        pytest.skip("no committed report")
    pattern = re.compile(r"(?<![\w.])/(?:work|tmp|root|home|Users)/")
    bad = [str(f.relative_to(root)) for f in files if pattern.search(f.read_text(errors="replace"))]
    assert not bad, bad


def _recorded_full_runs(store, source: dict) -> None:
    """The records of the full plan's first run in `store`, trained on `source`."""
    from conftest import recorded_run

    from labkit.lab import plan

    _, name, cfg = plan("full", 1)[0]
    recorded_run(store, source, name, cfg)


def test_other_data_get_a_store_and_report_of_their_own(tmp_path, synth_root, monkeypatch, capsys):
    """Run ids name no data: the full profile given other data than its store's trains into a
    store of their own, named by their fingerprint, and writes its report beside it."""
    from labkit.data import fingerprint, source_of
    from labkit.lab import Lab
    from labkit.synthetic import make_synthetic_cifar10

    monkeypatch.delenv("LABKIT_DATA", raising=False)
    _recorded_full_runs(tmp_path / "report" / "runs", source_of(synth_root / "cifar-10-batches-py"))
    same = Lab("full", synth_root, root=tmp_path)
    assert (same.store.root, same.report_dir, same.own_store) == (tmp_path / "report" / "runs", tmp_path / "report", "")
    other = make_synthetic_cifar10(tmp_path / "other", per_batch=200, seed=7).parent
    fp = fingerprint(source_of(other / "cifar-10-batches-py"))
    lab = Lab("full", other, root=tmp_path)
    own = tmp_path / "build" / f"full-{fp}"
    assert (lab.store.root, lab.report_dir) == (own / "runs", own / "report")
    assert f"fingerprint {fp}) are not those the runs in {tmp_path / 'report' / 'runs'}" in lab.own_store
    # the dry run says so in one line, with the rest of the plan, and writes nothing
    before = sorted(tmp_path.rglob("*"))
    assert R.run_lab("full", data_dir=other, root=tmp_path, dry_run=True) is None
    out = capsys.readouterr().out
    assert f"note: the data at {other} (fingerprint {fp})" in out and f"run store: {own / 'runs'}" in out
    assert sorted(tmp_path.rglob("*")) == before
    # rendering: the data's own store holds no run, so nothing is mixed and nothing is written
    with pytest.raises(R.LabError, match=r"none of the \d+ runs .* is finished in .*no such folder.*fingerprint"):
        R.run_lab("full", data_dir=other, root=tmp_path, allow_train=False)
    # a store given by hand is never switched: its runs of other data are refused
    with pytest.raises(R.LabError, match="trained on other data.*a report would mix them"):
        R.run_lab("full", data_dir=other, root=tmp_path, runs_dir=tmp_path / "report" / "runs", allow_train=False)
    assert sorted(tmp_path.rglob("*")) == before


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from labkit.cli import main

    _cpu(monkeypatch, 100.0)
    assert main(["lab", "--dry-run", "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "r")]) == 0  # auto: smoke without a GPU
    out = capsys.readouterr().out
    for line in ("dry run: profile auto chose SMOKE", "data: labkit's synthetic CIFAR-format data at", "run store:",
                 f"report folder: {tmp_path / 'out'}", "runs: 22 planned, ", "  train ablation-baseline-",
                 "time: about ", "at 100.0 GFLOP/s measured just now", "dry run: nothing was trained or written"):
        assert line in out, (line, out)
    assert list(tmp_path.iterdir()) == []
    assert main(["lab", "--profile", "full", "--dry-run", "--data-dir", str(tmp_path / "none"), "--runs-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert f"data: none at {tmp_path / 'none'}; the lab would download the official CIFAR-10 there" in out
    assert "runs: 31 planned, 0 finished, 31 to train" in out and "days of training on this CPU" in out
    assert list(tmp_path.iterdir()) == []


def test_no_data_renders_from_the_runs_records_and_says_they_were_not_checked(tmp_path, synth_root, monkeypatch):
    """--no-train with no data at all renders the store's runs; the notebooks are told to read
    only (the data details come from the records: notebook 01 and the provenance say so)."""
    from labkit.data import source_of
    from labkit.lab import Lab

    monkeypatch.delenv("LABKIT_DATA", raising=False)
    _recorded_full_runs(tmp_path / "report" / "runs", source_of(synth_root / "cifar-10-batches-py"))
    seen = []
    monkeypatch.setattr(R, "execute", lambda job, out: seen.append(job) or Path(out) / f"{job.key}.ipynb")
    monkeypatch.setattr(R, "_export", lambda *a: (tmp_path / "report" / "report.html", None))
    monkeypatch.setattr(R, "_check_kernel", lambda: None)
    said = []
    R.run_lab("full", data_dir=tmp_path / "none", root=tmp_path, allow_train=False, log=said.append)
    assert len(seen) == 9 and all(j.parameters["allow_train"] is False for j in seen if "allow_train" in j.parameters)
    assert any("no data at" in m and "not checked against the files" in m for m in said), said
    lab = Lab("full", tmp_path / "none", root=tmp_path, allow_train=False)
    runs = lab.store.all()
    assert "not checked against the files (no CIFAR-10 batches at" in A.provenance(runs, lab)["data"]


def test_lab_refuses_outputs_that_would_destroy_something(tmp_path):
    # A mistyped --runs-dir with --no-train would replace a report with an empty one.
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("precious")
    with pytest.raises(R.LabError, match=r"none of the \d+ runs the smoke profile plans is finished in .*no such folder"):
        R.run_lab("smoke", root=tmp_path, runs_dir=tmp_path / "typo", out=out, allow_train=False)
    assert (out / "report.html").read_text() == "precious" and len(list(out.iterdir())) == 1
    # The notebooks' own folder: executed copies would overwrite the sources.
    with pytest.raises(R.LabError, match="notebooks' own folder"):
        R.run_lab("smoke", root=tmp_path, out=R.NOTEBOOK_DIR, allow_train=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(R.LabError, match="is a file, not a folder"):
        R.run_lab("smoke", root=tmp_path, out=tmp_path / "afile")


def test_lab_on_a_gpu_says_nothing_of_a_data_dir_nobody_gave(tmp_path, monkeypatch, capsys):
    """Before the notebooks, the lab trains the plan on the GPU; the smoke profile's Lab there
    was given the default data folder and said it was not used, with no --data-dir asked."""
    import torch

    import labkit.sweep

    class Reached(Exception):
        pass

    def fake_sweep(*a, **k):
        raise Reached

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(labkit.sweep, "sweep", fake_sweep)
    seen: list[str] = []
    with pytest.raises(Reached):
        R.run_lab("smoke", root=tmp_path, out=tmp_path / "out", log=seen.append)
    said = seen + capsys.readouterr().out.splitlines()
    assert seen and not any("is not used" in m for m in said), said
