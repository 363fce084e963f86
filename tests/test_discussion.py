"""labkit.discussion: the report's paragraphs, written from runs made up here."""

from __future__ import annotations

import re
from html import escape
from types import SimpleNamespace

import pandas as pd

from labkit import discussion as D
from labkit import paper
from labkit.config import MODERN
from labkit.lab import GRID, Lab, depth_runs, final_runs, restart_runs
from labkit.notebook import LabRuns
from labkit.tables import claims

STAND_IN = {"official": False, "description": "not the official CIFAR-10 files"}


def _runs(name, cfg, values, loss1=(170.0, 169.0, 171.0), code="abc1234", data=STAND_IN):
    """One finished run per value (seed i), with an epoch-by-epoch history rising to that value."""
    out = []
    for s, v in enumerate(values):
        n = cfg.epochs
        h = pd.DataFrame({"epoch": range(1, n + 1), "loss_sum": [loss1[s] - e for e in range(n)],
                          "val_acc": [v * (0.9 + 0.1 * (e + 1) / n) for e in range(n)]})  # fmt: skip
        summary = {"final_val_acc": v, "test_acc": v - 0.01, "best_val_acc": v, "code_version": code, "data": data}
        out.append(SimpleNamespace(id=f"{name}-{s}", name=name, config=cfg.replace(seed=s), history=h, summary=summary))
    return out


def _lab_runs(code="abc1234", restart=True, data=STAND_IN, loss1=(170.0, 169.0, 171.0)) -> LabRuns:
    vals = {"baseline": [0.78, 0.79, 0.80], "decay_1.0": [0.70, 0.72, 0.71], "decay_0.45": [0.50, 0.51, 0.53],
            "dropout_0.4": [0.78, 0.80, 0.79], "dropout_0.8": [0.75, 0.74, 0.77], "no_stem_bn": [0.70, 0.71, 0.73],
            "stem_7x7": [0.70, 0.72, 0.71]}  # fmt: skip
    abl = [r for k, v in vals.items() for r in _runs(f"ablation-{k}", paper.ablation_config(k), v, loss1, code, data)]
    final = _runs("final", dict(final_runs(1))["final"], [0.80, 0.81, 0.83], loss1, code, data)
    rest = _runs("final-restart", dict(restart_runs(1))["final-restart"], [0.82, 0.84, 0.85], loss1, code, data) if restart else []
    grid = [r for name, cfg in GRID.items() for r in _runs(name, cfg, [0.80, 0.82, 0.81], loss1, code, data)]
    depth = [r for name, cfg in depth_runs(1) for r in _runs(name, cfg, [0.75, 0.77, 0.78], loss1, code, data)]
    modern = _runs("modern", MODERN, [0.90, 0.91, 0.93], loss1, code, data)
    return LabRuns(abl, final, rest, grid, depth, modern, missing=[])


def _every_paragraph(runs: LabRuns, lab) -> list[str]:
    return [*D.conclusions(runs), D.final_gap(runs), D.depth_gap(runs), D.hidden_runs(runs), D.grid(runs),
            D.data_note(runs, lab), D.conclusion(runs)]  # fmt: skip


def test_each_conclusion_gets_a_paragraph_with_its_verdict_and_its_reason(tmp_path):
    runs = _lab_runs()
    found = claims(runs.abl, runs.final, runs.depth, runs.modern)
    paragraphs = D.conclusions(runs)
    assert len(paragraphs) == len(found)
    for text, k in zip(paragraphs, found, strict=True):
        assert text.startswith(f"<b>{escape(k.claim)}</b>") and escape(k.result.verdict) in text
    decay = paragraphs[0]
    assert "paired by seed (3 pairs; Welch" in decay and "anneals the rate to 4.2e-05 by epoch 30" in decay
    lab = Lab("full", root=tmp_path, allow_train=False, progress=False, log=None)
    for text in _every_paragraph(runs, lab):
        assert text and not re.search(r"\bthe seed\b|seed's|seed-faithful", text), text  # "seed": a random seed only
    assert D.conclusion(runs).startswith(f"Of the original report&#x27;s {len(found) - 1} conclusions")


def test_the_final_gap_reads_the_lr_restart_runs_when_there_are_any():
    text = D.final_gap(_lab_runs())
    assert "epochs 31-60 together take 0.41 of an epoch&#x27;s worth of steps" in text
    assert "started over at epoch 30 reaches 82.67% test accuracy (3 run(s))" in text
    assert "planned but not trained yet" in D.final_gap(_lab_runs(restart=False))


def test_the_shared_start_is_read_from_the_first_epoch_s_loss():
    assert "start from the same initial weights (their first epochs agree)" in D.hidden_runs(_lab_runs())
    # GPU kernels may differ in the last digits; a different start differs by far more
    assert "start from the same initial weights" in D.hidden_runs(_lab_runs(loss1=(170.0001, 169.0, 171.0)))
    apart = _lab_runs(code="3887dc1")
    for r in apart.final:
        r.history.loc[0, "loss_sum"] += 1.5
    text = D.hidden_runs(apart)
    assert "for seed 0, ablation-baseline 170.00, ablation-decay_1.0 170.00, ablation-decay_0.45 170.00, final 171.50" in text
    assert "They did not" in text and f"{len(apart.every)} shown run(s) come from before the fix" in text


def test_what_the_data_change_depends_on_the_runs_data(tmp_path, synth_root):
    lab = Lab("full", data_dir=tmp_path / "nothing", root=tmp_path, allow_train=False, progress=False, log=None)
    official = D.data_note(_lab_runs(data={"official": True}), lab)
    assert official == "Our runs used the official CIFAR-10 files (md5 verified), as the original did."
    synthetic = D.data_note(_lab_runs(data={"official": False, "synthetic": True}), lab)
    assert synthetic.startswith("These runs trained on synthetic data") and "batch 5" not in synthetic
    stand_in = D.data_note(_lab_runs(), lab)
    assert "a copy that is not the official CIFAR-10 files" in stand_in and "batch 5, our validation set" in stand_in
    assert "Measured here" not in stand_in  # no data on disk: no class counts claimed
    lab = Lab("full", data_dir=synth_root, root=tmp_path, allow_train=False, progress=False, log=None, data_label="a copy")
    measured = D.data_note(_lab_runs(), lab)
    assert "trained and were tested on a copy;" in measured
    assert measured.endswith("Measured here, it holds exactly 20 images of each class.")  # 200 per batch, balanced
    assert D.data_note(LabRuns([], [], [], [], [], [], []), lab) == ""
