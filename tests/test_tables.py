"""The statistics, tables, figures and claims the report shows (labkit.stats, tables, methods, figures, notebook)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats

from labkit import figures as F
from labkit import methods as M
from labkit import notebook as N
from labkit import paper
from labkit import stats as S
from labkit import tables as T
from labkit.config import ConfigError


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
    row = T.depth_table(runs).iloc[2]
    assert row["95% CI"].endswith(", 100.00]"), row["95% CI"]


def test_loss_figures_mark_the_paper_s_final_loss_in_each_configuration_s_colour():
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
    fig = F.plot_loss_curves(runs, paper_final=paper_final, paper_epoch=30)
    ax = fig.axes[0]
    marks = [ln for ln in ax.get_lines() if ln.get_marker() == "x" and len(ln.get_xdata())]
    assert sorted((ln.get_xdata()[0], ln.get_ydata()[0]) for ln in marks) == [(30, 130.229), (30, 132.086)]
    curve = {ln.get_label(): to_hex(ln.get_color()) for ln in ax.get_legend().get_lines()}
    by_y = {ln.get_ydata()[0]: to_hex(ln.get_color()) for ln in marks}
    assert by_y[130.229] == curve["baseline"] and by_y[132.086] == curve["decay_1.0"] != curve["baseline"]
    assert "the original's final loss" in [t.get_text() for t in ax.get_legend().get_texts()]
    # runs shorter than the original's 30 epochs: no marks, and the title says why
    short = [run("ablation-baseline", 0, [150.0, 149.0])]
    ax = F.plot_loss_curves(short, title="t", paper_final=paper_final, paper_epoch=30).axes[0]
    assert not [ln for ln in ax.get_lines() if ln.get_marker() == "x" and len(ln.get_xdata())]
    assert "not marked: these runs are shorter" in ax.get_title()
    with pytest.raises(ValueError, match="loss_sum"):
        F.plot_loss_curves(short, y="loss_mean", paper_final=paper_final, paper_epoch=30)


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
    assert S.judge(d, claimed=0.11) == "confirmed: the CI lies above 0; the original's 11.0-point size is inside the CI"
    assert S.judge(d, claimed=0.30).endswith("; the original's 30.0-point size is outside the CI")


def _stub_runs(key_values: dict[str, list[float]], field: str, prefix: str = "ablation-", code: str = "abc1234") -> list:
    """Finished-run stand-ins: one per value (seed i the i-th), named prefix + key, with the
    original's config, trained by `code` (3887dc1: before the initial-weights fix)."""
    from labkit.config import TrainConfig

    out = []
    for key, values in key_values.items():
        cfg = paper.ablation_config(key) if prefix == "ablation-" else TrainConfig()
        for seed, v in enumerate(values):
            summary = {field: v, "final_loss_sum": 130.0, "code_version": code}
            out.append(SimpleNamespace(id=f"{prefix}{key}-{seed}", name=f"{prefix}{key}", config=cfg.replace(seed=seed), summary=summary))
    return out


def test_the_paper_s_tables_take_differences_the_right_way_round():
    # decay_1.0 − baseline by seed: -8, -7, -9 points; mean -8, SD 1, so the paired interval is ±t(2)·1/√3
    runs = _stub_runs({"baseline": [0.78, 0.79, 0.80], "decay_1.0": [0.70, 0.72, 0.71], "decay_0.45": [0.50, 0.51, 0.52]}, "final_val_acc")
    table = T.ablation_table("lr_decay", runs).set_index("row")
    h = T975[2] * 1.0 / math.sqrt(3)
    assert table.loc["decay_1.0", "Δ vs baseline, pts: ours [95% CI]"] == f"-8.00 [{-8 - h:+.2f}, {-8 + h:+.2f}] (paired)" == "-8.00 [-10.48, -5.52] (paired)"
    assert table.loc["decay_1.0", "Δ vs baseline, pts: original"] == pytest.approx((0.7645 - 0.7871) * 100)
    assert table.loc["baseline", "Δ vs baseline, pts: ours [95% CI]"] == "—"
    view = T.ablation_view(T.ablation_table("lr_decay", runs))
    assert list(view.columns) == ["", "baseline", "decay_1.0", "decay_0.45"]
    col = dict(zip(view[""], view["decay_1.0"], strict=True))
    assert col["Δ vs baseline, pts: original"] == "-2.26" and col["decay"] == "1" and col["n"] == "3"
    runs = _stub_runs({"baseline": [0.78, 0.79, 0.80], "no_stem_bn": [0.70, 0.72, 0.71]}, "final_val_acc")
    (claim,) = [k for k in T.claims(runs, [], [], []) if k.claim == "stem BN helps"]
    assert claim.result.basis == "paired" and claim.result.verdict.startswith("confirmed")
    assert claim.result.verdict.endswith("the original's 2.6-point size is outside the CI")
    final = _stub_runs({"final": [0.85, 0.86, 0.87]}, "test_acc", prefix="")
    row = T.paper_vs_ours([], final, [], []).set_index(["original report", "measure"]).loc[("table 11: final run, 60 epochs", "test acc %")]
    assert row["Δ ours − original"] == f"{(0.86 - 0.8336) * 100:+.2f}"  # ours above the original's 83.36%: positive


def test_findings_gather_every_claim_with_its_verdict():
    from labkit.config import MODERN
    from labkit.lab import depth_runs, final_runs

    vals = {"baseline": [0.78, 0.79, 0.80], "decay_1.0": [0.70, 0.72, 0.71], "decay_0.45": [0.50, 0.51, 0.53],
            "dropout_0.4": [0.78, 0.80, 0.79], "dropout_0.8": [0.75, 0.74, 0.76], "no_stem_bn": [0.70, 0.71, 0.73], "stem_7x7": [0.70, 0.72, 0.71]}  # fmt: skip
    abl = _stub_runs(vals, "final_val_acc")
    final = _named_runs("final", dict(final_runs(1))["final"], test_acc=[0.80, 0.81, 0.83])
    modern = _named_runs("modern", MODERN, test_acc=[0.91, 0.915, 0.92])
    cfgs = dict(depth_runs(1))
    depth = [*_named_runs("depth-2-seed", cfgs["depth-2-seed"], test_acc=[0.8]), *_named_runs("depth-3-seed", cfgs["depth-3-seed"], test_acc=[0.7])]
    f = T.findings(abl, final, depth, modern)
    assert len(f) == sum(len(c) for c in paper.CLAIMS.values()) + 2 + 1
    by = f.set_index("conclusion (original §4.6)")
    assert by.loc["decay 1.0 beats 0.45", "verdict"].startswith("confirmed")
    assert by.loc["dropout 0.4 hurts at 30 epochs", "verdict"].startswith("not shown")
    assert by.loc["deeper is better (the original's recipe)", "verdict"] == "not testable: 1 run on each side, no spread measured (needs seeds ≥ 2)"
    assert by.loc["deeper is better (corrected net, modern recipe)", "verdict"] == "untested: runs missing"
    assert by.loc["labkit: the modern recipe beats the original's final run", "verdict"].startswith("confirmed")
    assert by.loc["deeper is better (the original's recipe)", "original Δ"] == "+2.95"
    # the paired column where the paired interval judges, Welch's beside it always
    row = by.loc["decay 0.9 beats 1.0"]
    assert row["ours Δ, paired [95% CI]"].startswith("+8.00 [") and row["ours Δ, Welch [95% CI]"].startswith("+8.00 [")
    assert row["runs"] == "3+3" and row["comparison"] == "baseline − decay_1.0, val acc"
    # runs trained before the initial-weights fix: Welch's interval judges; the paired column is empty
    old = T.findings(_stub_runs(vals, "final_val_acc", code="3887dc1"), final, depth, modern).set_index("conclusion (original §4.6)")
    assert old.loc["decay 0.9 beats 1.0", "ours Δ, paired [95% CI]"] == "—"
    assert old.loc["decay 0.9 beats 1.0", "verdict"] == by.loc["decay 0.9 beats 1.0", "verdict"] == "confirmed: the CI lies above 0"


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
    rows = N.export_depth_checkpoints(lays2, out).set_index("run")
    assert rows.loc["depth-2-corrected-1", "status"] == "written: weights of epoch 4 (best validation accuracy)"
    assert rows.loc["—", "status"] == "not written: run missing"  # no lays-3 run
    state = load_checkpoint(out / "checkpoint-block-2.pth")
    assert state["run"] == "depth-2-corrected-1" and state["model"]["w"].item() == 1.0  # the best seed's selected weights
    assert (state["selected_epoch"], state["val_acc"], state["test_acc"]) == (4, 0.8, 0.5)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-block-2.pth"]  # no temp file left
    # lays 3: its best is the first seed; each file takes its own depth's best
    lays3 = runs("depth-3-corrected", [(0.75, 0.6), (0.74, 0.7)])
    seed_recipe = [SimpleNamespace(id="depth-3-seed-0", name="depth-3-seed", summary={"best_val_acc": 0.99}, checkpoint=tmp_path / "none")]
    rows = N.export_depth_checkpoints(seed_recipe + lays3 + lays2, out).set_index("file")["run"]
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
    # the original's recipe: lays 3 beats lays 2 by 10 points; corrected: lays 3 loses by 10 points.
    # Trained before the initial-weights fix (3887dc1), so Welch's interval judges.
    runs = [
        *_named_runs("depth-2-seed", cfgs["depth-2-seed"], test_acc=shallow, best_val_acc=shallow, selected_epoch=[7, 8, 9]),
        *_named_runs("depth-3-seed", cfgs["depth-3-seed"], test_acc=deep, best_val_acc=[0.71, 0.73, 0.75], selected_epoch=[10, 11, 12]),
        *_named_runs("depth-2-corrected", cfgs["depth-2-corrected"], test_acc=[v + 0.2 for v in deep], best_val_acc=deep, selected_epoch=[1, 2, 3]),
        *_named_runs("depth-3-corrected", cfgs["depth-3-corrected"], test_acc=[v + 0.2 for v in shallow], best_val_acc=deep, selected_epoch=[4, 5, 6]),
    ]
    for r in runs:
        r.summary["code_version"] = "3887dc1"
    # Welch by hand: equal SDs (2 points) and n (3) on each side, so df = 2(n-1) = 4 exactly.
    half = T975[4] * math.sqrt(0.02**2 / 3 + 0.02**2 / 3)
    ci = f"[{(0.10 - half) * 100:+.2f}, {(0.10 + half) * 100:+.2f}]"
    assert ci == "[+5.47, +14.53]"
    by = T.findings([], [], runs, []).set_index("conclusion (original §4.6)")
    seed, corrected = by.loc["deeper is better (the original's recipe)"], by.loc["deeper is better (corrected net, modern recipe)"]
    assert seed["comparison"] == corrected["comparison"] == "lays 3 − 2, test acc"
    assert seed["original Δ"] == corrected["original Δ"] == "+2.95"  # the original's deep minus shallow
    assert seed["ours Δ, Welch [95% CI]"] == f"+10.00 {ci}" and "ours Δ, paired [95% CI]" not in by.columns  # none paired: no empty column
    assert seed["runs"] == corrected["runs"] == "3+3"
    assert seed["verdict"] == "confirmed: the CI lies above 0"  # not sized: the original tuned those numbers on test
    assert corrected["ours Δ, Welch [95% CI]"] == "-10.00 [-14.53, -5.47]"
    assert corrected["verdict"].startswith("refuted: the opposite holds (CI below 0)")
    # The depth table: each row its own runs' mean, SD and t interval of test accuracy.
    table = T.depth_table(runs)
    assert [(r["lays"], r["recipe"]) for _, r in table.iterrows()] == [
        (2, "the original's recipe"), (2, "corrected net, modern recipe, test-time flip"),
        (3, "the original's recipe"), (3, "corrected net, modern recipe, test-time flip")]  # fmt: skip
    row = table.iloc[2]  # lays 3, the original's recipe
    mean, sd, h = _by_hand(deep)
    assert row["test acc % (once)"] == f"{mean * 100:.2f} ± {sd * 100:.2f} SD (n=3)" == "72.00 ± 2.00 SD (n=3)"
    assert row["95% CI"] == f"[{(mean - h) * 100:.2f}, {(mean + h) * 100:.2f}]" == "[67.03, 76.97]"
    assert row["best val acc %"] == "73.00 ± 2.00 SD (n=3)" and row["selected epoch (best val)"] == "10, 11, 12"
    assert row["Δ ours − original, pts"] == pytest.approx(72.0 - 89.27)
    assert table.iloc[0]["test acc % (once)"] == "62.00 ± 2.00 SD (n=3)" and table.iloc[1]["Δ ours − original, pts"] == pytest.approx(92.0 - 86.32)


def test_final_table_numbers_by_hand():
    from labkit.config import MODERN
    from labkit.lab import final_runs, restart_runs

    final_cfg, restart_cfg = dict(final_runs(1))["final"], dict(restart_runs(1))["final-restart"]
    final = _named_runs("final", final_cfg, test_acc=[0.80, 0.82, 0.84], final_loss_sum=[120.0, 125.0, 130.0])
    restart = _named_runs("final-restart", restart_cfg, test_acc=[0.84, 0.85, 0.89])
    modern = _named_runs("modern", MODERN, test_acc=[0.90, 0.92, 0.94])
    t = T.final_table(final, restart, modern)
    cols = ["original", "n", "ours: mean ± SD", "ours: 95% CI", "Δ ours − original"]

    def expect(values, orig, scale=100, digits=2):
        m, sd, h = _by_hand(values)
        return [f"{orig * scale:.{digits}f}", 3, f"{m * scale:.{digits}f} ± {sd * scale:.{digits}f}",
                f"[{(m - h) * scale:.{digits}f}, {(m + h) * scale:.{digits}f}]", f"{(m - orig) * scale:+.{digits}f}"]

    assert list(t["measure"]) == ["test acc %", "final loss (summed)", "test acc %", "test acc %"]
    assert list(t.iloc[0][cols]) == expect([0.80, 0.82, 0.84], 0.8336) == ["83.36", 3, "82.00 ± 2.00", "[77.03, 86.97]", "-1.36"]
    assert list(t.iloc[1][cols]) == expect([120.0, 125.0, 130.0], 126.53595, 1, 3) == ["126.536", 3, "125.000 ± 5.000", "[112.579, 137.421]", "-1.536"]
    assert list(t.iloc[2][cols]) == expect([0.84, 0.85, 0.89], 0.8336)
    assert list(t.iloc[3][cols]) == expect([0.90, 0.92, 0.94], 0.8927) == ["89.27", 3, "92.00 ± 2.00", "[87.03, 96.97]", "+2.73"]
    assert t.iloc[2]["runs"] == "final run, lr started over at epoch 30"
    assert t.iloc[3]["runs"] == "modern recipe, test-time flip; original: its best, lays 3"
    assert list(T.final_table([], [], [])["n"]) == [0, 0, 0, 0]


def test_recipes_in_words_name_what_a_comparison_with_the_seed_must_say():
    from labkit.config import MODERN, PAPER

    def describe_recipe(c):
        return " ".join(f"{v}." for v in M.recipe_parts(c).values())

    seed, modern = describe_recipe(PAPER), describe_recipe(MODERN)
    assert "(3 blocks per stage)" in seed and "the original's defects: n+1 blocks per stage, softmax before the loss" in seed
    assert "Adam lr 0.001, lr × 0.9 per epoch, batch 512, 30 epochs" in seed and "one view per image" in seed
    assert "corrected network" in modern and "SGD Nesterov lr 0.2" in modern and "tested once with test-time flip" in modern
    assert "all 50,000 training images" in modern and f"{MODERN.epochs} epochs" in modern
    assert "7x7 stride 2 stem without BN" in describe_recipe(PAPER.replace(stem="7x7", stem_bn=False))
    assert "cutout 12" in describe_recipe(MODERN.replace(cutout=12)) and "2-pixel shifts" in describe_recipe(MODERN.replace(tta_translate=2))
    assert "the original's normalisation constants" in seed and "seed normalisation" not in seed
    assert "lr × 0.9 per epoch, started over every 30 epochs, batch 512, 60 epochs" in describe_recipe(PAPER.replace(epochs=60, lr_restart=30))
    run = lambda c: SimpleNamespace(config=c)  # noqa: E731
    assert M.views_at_test([run(PAPER)]) == "" and M.views_at_test([]) == ""
    assert M.views_at_test([run(MODERN)] * 2) == ", test-time flip"
    assert M.views_at_test([run(MODERN), run(PAPER)]) == ", test-time views differ between runs"


def test_code_versions_and_the_data_caveat():
    runs = [SimpleNamespace(summary={"code_version": v}) for v in ("8721feb", "3887dc1", "8721feb", "3887dc1+dropout-eager")]
    assert M.code_versions(runs) == (
        "3887dc1 (1 run), 3887dc1+dropout-eager (1 run), 8721feb (2 runs); a version with + is that commit with an uncommitted change of that name"
    )
    assert M.code_versions(runs[:1]) == "8721feb (1 run)" and M.code_versions([]) == "—"
    official = SimpleNamespace(summary={"data": {"official": True}})
    stand_in = SimpleNamespace(summary={"data": {"official": False}})
    unlabelled, labelled = SimpleNamespace(data_label=None), SimpleNamespace(data_label="JPEG <q75> copy")  # a Lab's
    assert T.data_caveat([official, official], unlabelled) is None and T.data_caveat([], unlabelled) is None
    synthetic = SimpleNamespace(summary={"data": {"official": False, "synthetic": True}})
    assert T.data_caveat([synthetic], unlabelled).startswith("These runs trained on synthetic data")
    note = T.data_caveat([official, stand_in], labelled)
    assert "Our runs trained and were tested on JPEG &lt;q75&gt; copy; the original's numbers come from the official files" in note
    assert "a copy that is not the official CIFAR-10 files" in T.data_caveat([stand_in], unlabelled)


def test_compare_runs_sets_the_same_runs_of_two_stores_side_by_side():
    def run(rid, version, val, test, finished=True):
        return SimpleNamespace(id=rid, finished=finished, summary={"code_version": version, "final_val_acc": val, "test_acc": test})

    old = [run("final-1", "3887dc1", 0.719, 0.7108), run("baseline-2", "3887dc1", 0.772, None), run("x-3", "3887dc1", 0.5, 0.5)]
    new = [run("final-1", "abc1234", 0.781, 0.7790), run("baseline-2", "abc1234", 0.770, 0.76), run("y-4", "abc1234", 0.5, 0.5),
           run("x-3", "abc1234", 0.5, 0.5, finished=False)]  # fmt: skip
    t = T.compare_runs(new, old)
    assert list(t["run"]) == ["baseline-2", "final-1"]  # only finished runs present in both
    row = t.set_index("run").loc["final-1"]
    assert row["code (new)"] == "abc1234" and row["code (old)"] == "3887dc1"
    assert row["final_val_acc new − old, pts"] == pytest.approx(6.2) and row["test_acc new − old, pts"] == pytest.approx(6.82)
    assert math.isnan(t.set_index("run").loc["baseline-2", "test_acc new − old, pts"])  # no test number on one side
    assert T.compare_runs([], old).empty


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
    f = M.loss_floor()
    assert f["analytic"] == pytest.approx(-math.log(math.e / (math.e + 9)))
    assert all(v == pytest.approx(1.4612, abs=1e-4) for v in f.values())
    t = M.loss_floor_table(f["analytic"])
    assert (t["batches per epoch"] == 79).all()
    assert (t["loss per batch"] > f["analytic"]).all()  # every loss the seed reports sits above the floor


def test_data_label(monkeypatch, tmp_path):
    official = {"official": True, "description": "official CIFAR-10 (md5 verified)"}
    other = {"official": False, "description": "not the official CIFAR-10 files (md5 differs for 6 of 6 batches)"}
    assert M.data_label(official) == "official CIFAR-10 (md5 verified)"
    monkeypatch.setenv("LABKIT_DATA_LABEL", "CIFAR-10 re-encoded as JPEG")
    assert M.data_label(other).startswith("not the official")  # the label comes from the lab, read once by open_lab
    assert M.data_label(other, label="stand-in").startswith("stand-in; not the official")
    assert M.data_label(official, label="stand-in") == "official CIFAR-10 (md5 verified)"  # never relabels official data
    synthetic = {"official": False, "synthetic": True, "description": "labkit's synthetic CIFAR-format data (x)"}
    assert M.data_label(synthetic, label="stand-in") == "labkit's synthetic CIFAR-format data (x)"  # says what it is
    # open_lab: the data_label parameter, else $LABKIT_DATA_LABEL, into lab.data_label
    assert N.open_lab("smoke", root=str(tmp_path), allow_train=False).data_label == "CIFAR-10 re-encoded as JPEG"
    assert N.open_lab("smoke", root=str(tmp_path), allow_train=False, data_label="mine").data_label == "mine"
    monkeypatch.delenv("LABKIT_DATA_LABEL")
    lab = N.open_lab("full", root=str(tmp_path), allow_train=False)
    assert lab.data_label is None
    table = M.source_table(other, lab).set_index("")["value"]
    assert table["data used"].startswith("not the official") and table["md5 of every batch file matches the official CIFAR-10"] == "no"
    lab = N.open_lab("full", root=str(tmp_path), allow_train=False, data_label="stand-in")
    assert M.source_table(other, lab).set_index("")["value"]["data used"].startswith("stand-in; not the official")


def test_lab_runs_and_the_recorded_data_source(tmp_path):
    from conftest import recorded_run

    from labkit.lab import Lab, plan

    lab = Lab("smoke", root=tmp_path, allow_train=False, progress=False, log=None)
    got = N.lab_runs(lab, 2, 2)
    assert (got.abl, got.final, got.restart, got.grid, got.depth, got.modern, got.every) == ([], [], [], [], [], [], [])
    planned = plan("smoke", 2)
    assert sorted(got.missing) == sorted(lab.store.run_id(c, n) for _, n, c in planned)  # the baseline once
    assert N.recorded_source(lab) is None
    run = recorded_run(lab.store.root, {"official": False, "folder": "x"}, "ablation-baseline", planned[0][2])
    assert run.name == got.missing[0]
    assert N.recorded_source(lab) == {"official": False, "folder": "x"}
    again = N.lab_runs(lab, 2, 2)
    assert [r.id for r in again.abl] == [got.missing[0]] and len(again.missing) == len(got.missing) - 1


def test_the_paper_s_numbers_the_figures_mark():
    assert T.paper_ablation_values("paper_loss")["stem_7x7"] == 138.71478 and len(T.paper_ablation_values("paper_val_acc")) == len(paper.ABLATIONS)
    assert T.paper_figures("lr_decay") == "2, 6, 7, 9, 1, 3" and T.paper_figures("stem_kernel") == "2, 6, 7, 9, 10"
    with pytest.raises(ConfigError, match="not one of the original report's ablation groups"):
        T.paper_figures("width")
    assert T.paper_test_accuracies() == {"final": 0.8336, "final-restart": 0.8336, "modern": 0.8927}


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
    sittings = M.training_sittings(runs)
    assert [(s.strftime("%H:%M:%S"), e.strftime("%H:%M:%S")) for s, e in sittings] == [
        ("10:00:00", "10:02:20"),
        ("10:08:30", "10:09:30"),
        ("10:58:00", "11:00:00"),
    ]
    assert M.describe_sittings(sittings) == (
        "2026-11-28 10:00-10:02 UTC (2.3 min), 2026-11-28 10:08-10:09 UTC (1.0 min), "
        "2026-11-28 10:58-11:00 UTC (2.0 min); 5.3 min in 3 sittings"
    )
    assert M.describe_sittings(sittings[:1]) == "2026-11-28 10:00-10:02 UTC (2.3 min)"
    assert M.describe_sittings([]) == "—"
    assert len(M.training_sittings(runs, gap_s=600)) == 2
    assert len(M.training_sittings(runs, gap_s=0)) == 4
    bad = SimpleNamespace(id="final-0123456789", summary={"finished_at": "yesterday", "wall_seconds": 5})
    with pytest.raises(ValueError, match="final-0123456789: finished_at 'yesterday'"):
        M.training_sittings([bad])


def test_parameter_checks(tmp_path):
    from labkit.lab import Lab

    assert N.check_seeds(2) == 2
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ConfigError):
            N.check_seeds(bad)
    # A notebook run on its own with seeds=None takes its profile's number, as the lab job does.
    smoke = Lab("smoke", root=tmp_path, allow_train=False, progress=False, log=None)
    assert N.check_seeds(None, smoke) == 2 and N.check_seeds(3, smoke) == 3
    with pytest.raises(ConfigError, match="ablation must be one of"):
        N.check_choice("ablation", "nope", paper.ABLATION_GROUPS)
    with pytest.raises(ConfigError, match="allow_train"):
        N.check_bool("allow_train", "False")




def test_paired_interval_by_hand_over_the_seeds_both_sides_share():
    # seeds 0-2 on both sides (seed 3 and 4 on one side only): differences 10, 11, 12 points
    a, b = {0: 0.80, 1: 0.82, 2: 0.85, 3: 0.90}, {0: 0.70, 1: 0.71, 2: 0.73, 4: 0.50}
    d = S.paired(a, b)
    mean, sd, h = _by_hand([0.10, 0.11, 0.12])
    assert (d.na, d.nb, d.df) == (3, 3, 2) and d.diff == pytest.approx(mean)
    assert (d.lo, d.hi) == (pytest.approx(mean - h), pytest.approx(mean + h))
    assert S.welch(list(a.values()), list(b.values())).na == 4  # Welch takes every run
    assert S.paired({**a, 2: None}, b).na == 2  # a missing value drops its pair
    flat = S.paired({0: 0.8, 1: 0.9}, {0: 0.7, 1: 0.8})  # the same difference for every seed: no spread
    assert flat.diff == pytest.approx(0.1) and not flat.has_ci
    assert S.judge(flat) == "not testable: every seed gave the same difference, no spread measured"
    assert math.isnan(S.paired({0: 0.8}, {1: 0.7}).diff)


def test_the_planned_comparison_never_pairs_across_the_initial_weights_fix():
    def runs(name, values, code):
        return [SimpleNamespace(name=name, config=SimpleNamespace(seed=s), summary={"test_acc": v, "code_version": code}) for s, v in enumerate(values)]

    new_a, new_b = runs("a", [0.80, 0.82, 0.85], "abc1234"), runs("b", [0.70, 0.71, 0.73], "abc1234")
    old_a, old_b = runs("a", [0.80, 0.82, 0.85], "3887dc1"), runs("b", [0.70, 0.71, 0.73], "8721feb+x")
    c = T.compare(new_a, new_b, "test_acc")
    assert c.basis == "paired" and c.fmt() == c.paired.fmt() + " (paired)" and c.verdict.startswith("confirmed")
    c = T.compare(old_a, old_b, "test_acc")
    assert c.basis == "Welch" and c.fmt() == c.welch.fmt() + " (Welch)"
    c = T.compare(new_a, old_b, "test_acc")
    assert c.basis == "" and c.fmt() == "—" and c.verdict.startswith("not compared: one side was trained before")
    flat = T.compare(runs("a", [0.8, 0.9], "abc1234"), runs("b", [0.7, 0.8], "abc1234"), "test_acc")
    assert flat.verdict == "not testable: every seed gave the same difference, no spread measured"
    assert T.compare(new_a[:1], new_b[:1], "test_acc").basis == "Welch"  # one pair: no paired interval to judge by
    from labkit.lab import one_era

    assert one_era([*old_a, *new_a[:2], *old_b]) == [*new_a[:2], *old_b]  # a: its runs after the fix; b: before


def test_grid_table_sets_each_cell_against_the_original_s_network_under_its_recipe():
    from labkit.config import MODERN
    from labkit.lab import GRID

    base = _named_runs("ablation-baseline", paper.ablation_config("baseline"), test_acc=[0.70, 0.71, 0.73])
    cells = {name: _named_runs(name, cfg, test_acc=[0.75, 0.77, 0.78]) for name, cfg in GRID.items()}
    modern = _named_runs("modern", MODERN, test_acc=[0.90, 0.91, 0.93])
    for r in [*base, *modern, *[r for rs in cells.values() for r in rs]]:
        r.summary["code_version"] = "abc1234"
    t = T.grid_table([*base, *modern, *[r for rs in cells.values() for r in rs]])
    assert list(t["network"]) == [n for _, n, _ in T.GRID_CELLS] and list(t["n"]) == [3] * 6
    col = "Δ vs both defects, pts [95% CI]"
    assert t[col].iloc[0] == t[col].iloc[4] == "—"  # the reference cells
    mean, _, h = _by_hand([0.05, 0.06, 0.05])
    assert t[col].iloc[3] == f"{mean * 100:+.2f} [{(mean - h) * 100:+.2f}, {(mean + h) * 100:+.2f}] (paired)"  # corrected − baseline
    mean, _, h = _by_hand([0.15, 0.14, 0.15])
    assert t[col].iloc[5] == f"{mean * 100:+.2f} [{(mean - h) * 100:+.2f}, {(mean + h) * 100:+.2f}] (paired)"  # modern − defects, modern
    assert t["recipe"].iloc[5] == "modern, test-time flip"
    assert list(T.grid_table([])["n"]) == [0] * 6


def test_low_runs_and_the_table_of_every_run():
    from labkit.config import TrainConfig

    cfg = TrainConfig(epochs=30)
    runs = [SimpleNamespace(id=f"a-{s}", name="a", config=cfg.replace(seed=s), summary={"final_val_acc": v, "test_acc": v - 0.01, "code_version": code})
            for s, (v, code) in enumerate([(0.80, "3887dc1"), (0.81, "abc1234"), (0.70, "abc1234")])]  # fmt: skip
    runs.append(SimpleNamespace(id="b-0", name="b", config=cfg.replace(seed=0), summary={"final_val_acc": 0.5, "test_acc": 0.5, "code_version": "abc1234"}))
    ((low, gap),) = T.low_runs(runs)
    assert low.id == "a-2" and gap == pytest.approx((0.805 - 0.70) * 100)  # below the median of its configuration's others
    assert T.low_runs(runs, points=11) == []
    t = T.every_run(runs).set_index("configuration")
    assert t.loc["a", "seed 2"] == "70.00 / 69.00 low" and t.loc["a", "seed 0"] == "80.00 / 79.00"
    assert t.loc["a", "code"] == "3887dc1, abc1234 (before the fix)" and t.loc["b", "code"] == "abc1234"
    assert t.loc["b", "seed 1"] == ""  # b has one seed


def test_not_trained_lists_the_missing_runs_by_configuration(tmp_path, monkeypatch):
    from labkit.lab import Lab, plan

    lab = Lab("smoke", root=tmp_path, allow_train=False, progress=False, log=None)
    t = T.not_trained(lab, 2)
    assert t["runs"].sum() == len(plan("smoke", 2)) and list(t["seeds not yet trained"]) == ["0, 1"]  # every run missing
    assert t.iloc[0]["configurations"].startswith("ablation-baseline (04, ") and t.iloc[0]["configurations"].count(";") == 17
    # the full profile: 5 seeds a configuration, 3 a depth run, whether the seeds are given or not
    full = Lab("full", root=tmp_path, allow_train=False, progress=False, log=None)
    for t in (T.not_trained(full), T.not_trained(full, 5, 3)):
        rows = t.set_index("seeds not yet trained")["configurations"]
        assert list(rows.index) == ["0, 1, 2, 3, 4", "0, 1, 2"]
        assert "final (05, 60 epochs)" in rows["0, 1, 2, 3, 4"] and rows["0, 1, 2"].startswith("depth-2-seed (03, 40 epochs); ")
        assert t["runs"].sum() == len(plan("full")) == 82
    for bad in (0, -1, "3"):
        with pytest.raises(ConfigError, match="depth_seeds"):
            T.not_trained(full, 5, bad)
    monkeypatch.setattr(Lab, "finished", lambda self, name, cfg: True)
    assert T.not_trained(lab, 2) is None


def test_recipes_are_shown_once_the_others_by_what_differs(monkeypatch):
    from labkit.config import PAPER

    shown = []
    monkeypatch.setattr(N, "show_note", lambda html, kind="note": shown.append(html))
    runs = [SimpleNamespace(name=n, config=c) for n, c in (
        ("ablation-baseline", PAPER), ("ablation-baseline", PAPER.replace(seed=1)), ("ablation-decay_1.0", PAPER.replace(decay_rate=1.0)),
        ("final-restart", PAPER.replace(epochs=60, lr_restart=30)), ("other", PAPER.replace(seed=2)))]  # fmt: skip
    N.show_recipes(runs)
    (html,) = shown
    base, decay, restart, same = html.split("<br>")
    assert base.startswith("<b><code>baseline</code></b>: <b>network:</b>") and "<b>test number:</b>" in base
    assert decay == ("<b><code>decay_1.0</code></b>: <b>training:</b> Adam lr 0.001, lr × 1 per epoch, batch 512, 30 epochs. "
                     "Otherwise as <code>baseline</code>.")
    assert "started over every 30 epochs, batch 512, 60 epochs" in restart and "<b>network:</b>" not in restart
    assert same == "<b><code>other</code></b>: the recipe of <code>baseline</code>."
    N.show_recipes([])
    assert len(shown) == 1
