"""The main job (labkit.job, `labkit lab`); its statistics and tables are in test_tables.py.

The end-to-end tests run the smoke profile as CI does: papermill executes every notebook,
nbconvert exports one HTML, headless Chromium prints the PDF (that assertion is skipped when
no chromium is on PATH). Everything is written under pytest's temporary folders. The lab is
conftest.py's session fixture smoke_lab, which test_reliability_lab.py shares: a first
attempt killed after two runs, then the whole lab run again in this process.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from labkit import job as R
from labkit import methods as M
from labkit import paper
from labkit.config import ConfigError
from labkit.paper import ABLATION_GROUPS

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------
# The job: profiles, notebooks, merge, export
# ---------------------------------------------------------------------------------------


def test_auto_profile_is_full_only_with_a_gpu_and_the_data(tmp_path, synth_root):
    name, why = R.choose_profile("auto", tmp_path, cuda=False)
    assert name == "smoke" and "no CUDA GPU" in why and "months" in why
    assert R.choose_profile("auto", synth_root, cuda=True)[0] == "full"
    name, why = R.choose_profile("auto", tmp_path / "none", cuda=True, download=False)
    assert name == "smoke" and "CIFAR-10 was not found" in why
    assert R.choose_profile("quick", tmp_path, cuda=False) == ("quick", "profile quick, as asked")
    with pytest.raises(ConfigError, match="did you mean 'full'"):
        R.choose_profile("ful", tmp_path, cuda=False)


def _cpu(monkeypatch, gflops: float) -> None:
    """No GPU, and a CPU measured at `gflops`."""
    import torch

    import labkit.lab

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(labkit.lab, "measure_gflops", lambda *a, **k: gflops)


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
    from labkit.config import PAPER
    from labkit.model import measure_gflops

    rate = measure_gflops(PAPER.replace(width=8), "cpu", batch=4, steps=1)
    assert 0 < rate < 1e5


def test_cli_refuses_full_on_cpu(monkeypatch, capsys, tmp_path, synth_root):
    import torch

    from labkit.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # An empty store: the committed report/runs is complete, and with nothing left to
    # train the full profile rightly goes ahead on a CPU.
    out = tmp_path / "never-written"
    # Data of its own: a clean clone has no data/, and the refusal must not hang on that.
    args = ["--data-dir", str(synth_root), "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    assert main(["lab", "--profile", "full", *args]) == 1
    assert "refusing the full profile" in capsys.readouterr().err
    assert not out.exists()


def test_jobs_run_04_once_per_ablation_summary_first_discussion_last():
    js = R.jobs({"profile": "smoke"}, seeds=2)
    assert [j.key for j in js] == [
        "00_summary",
        "01_data",
        "02_model",
        "03_depth_limit",
        *[f"04_ablations-{a}" for a in ABLATION_GROUPS],
        "05_final",
        "06_discussion",
    ]
    assert [j.parameters["ablation"] for j in js if j.notebook == "04_ablations"] == list(ABLATION_GROUPS)
    assert all(j.parameters["seeds"] == 2 for j in js if "seeds" in j.parameters)
    # given seeds hold for the depths too (as in lab.plan); none given: each notebook takes its profile's
    assert {j.key: j.parameters.get("depth_seeds", "-") for j in js if "depth_seeds" in j.parameters} == {"00_summary": 2, "06_discussion": 2}
    assert all(j.parameters.get(k) is None for j in R.jobs({"profile": "smoke"}, None) for k in ("seeds", "depth_seeds") if k in j.parameters)


# ---------------------------------------------------------------------------------------
# End to end: the smoke profile, as CI runs it
# ---------------------------------------------------------------------------------------

TABLES = [
    "summary", "findings", "facts",
    "data-source", "class-counts", "channel-stats",
    "architecture", "variants", "shape-check", "block-counts", "loss-floor-value", "loss-floor",
    "depth", "checkpoints",
    *[f"ablation-{a}" for a in ABLATION_GROUPS],
    "final", "grid", "runs",
]  # fmt: skip  (the not-trained table shows only when a planned run is missing)
FIGURES = [
    "samples", "augmentation", "loss-floor", "depth-val", "depth-loss",
    *[f"ablation-{a}" for a in ABLATION_GROUPS],
    "final-val", "final-errorbars",
]  # fmt: skip
NOTEBOOK_KEYS = ["00_summary", "01_data", "02_model", "03_depth_limit", *[f"04_ablations-{a}" for a in ABLATION_GROUPS], "05_final", "06_discussion"]


# smoke_lab (conftest.py): the smoke profile end to end under a temporary project root (never
# report/), finished by run_lab("smoke", root=root, out=root / "out") in this process after a
# first attempt was killed (test_reliability_lab.py checks that part).


@pytest.mark.slow
def test_smoke_lab_runs_every_notebook(smoke_lab):
    rep, root, seconds = smoke_lab.report, smoke_lab.root, smoke_lab.seconds
    assert rep.profile == "smoke"
    keys = sorted(p.stem for p in rep.notebooks)
    assert keys == sorted(NOTEBOOK_KEYS)
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
    for key in NOTEBOOK_KEYS:
        assert f'href="#sec-{key}"' in html and f'id="sec-{key}"' in html
    # Every number the original reports is in the summary, and the data's provenance is shown.
    for a in paper.ABLATIONS:
        assert f"{a.paper_loss:.3f}" in html and f"{a.paper_val_acc * 100:.2f}" in html
    for n in ("126.536", "83.36", "86.32", "89.27"):
        assert n in html
    assert "synthetic CIFAR-format data" in html and "not the official CIFAR-10 files" in html
    assert "smoke profile" in html
    days = sorted({json.loads(f.read_text())["finished_at"][:10] for f in (smoke_lab.root / "build/smoke/runs").glob("*/summary.json")})
    trained = " to ".join(dict.fromkeys([days[0], days[-1]]))  # from the runs' summaries, in the provenance table
    assert days and re.search(rf">trained</t[hd]>\s*<td[^>]*>{re.escape(trained)}</td>", html), trained
    # Every figure carries its caption as alternative text (nbconvert's own is a placeholder).
    from bs4 import BeautifulSoup

    imgs = BeautifulSoup(html, features="html.parser").select("div.jp-OutputArea-output img")
    assert len(imgs) >= len(FIGURES) and all(i.get("alt") and "No description" not in i["alt"] for i in imgs)
    # Code hidden, no progress bars or run logs, no external scripts.
    assert "N.open_lab(" not in html and "it/s]" not in html and "ep/s]" not in html
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
    configs = {d: json.loads((d / "config.json").read_text()) for d in runs.iterdir() if (d / "config.json").is_file()}
    (gone,) = [d for d, c in configs.items() if c["name"] == "depth-3-corrected" and c["config"]["seed"] == 0]
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
    # every notebook told not to train (the summary and the discussion only read the store: they take no allow_train)
    assert sorted(told) == sorted(executed)
    assert {k: p.get("allow_train", "none") for k, p in told.items()} == {k: "none" if k in ("00_summary", "06_discussion") else False for k in told}
    nb03 = nbformat.read(again.report_dir / "03_depth_limit.ipynb", as_version=4)
    assert nb03.metadata["papermill"]["parameters"]["allow_train"] is False  # what the kernel received
    # the missing run stayed missing, and said so; no run touched, none added
    after = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}
    assert not (gone / "summary.json").exists() and before == after
    assert sorted(d.name for d in runs.iterdir()) == sorted(d.name for d in smoke_lab.runs.iterdir())
    said = "".join(str(o.get("data", {}).get("text/html", "")) for c in nb03.cells if c.cell_type == "code" for o in c.outputs)
    missing = "1 of this section's planned run(s) are not trained yet"
    assert missing in said and f"<code>{gone.name}</code>" in said, said[:2000]
    html = again.html.read_text()
    assert missing in html and f"<code>{gone.name}</code>" in html
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
                 f"report folder: {tmp_path / 'out'}", "runs: 36 planned, ", "  train ablation-baseline-",
                 "time: about ", "at 100.0 GFLOP/s measured just now", "dry run: nothing was trained or written"):
        assert line in out, (line, out)
    assert list(tmp_path.iterdir()) == []
    assert main(["lab", "--profile", "full", "--dry-run", "--data-dir", str(tmp_path / "none"), "--runs-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert f"data: none at {tmp_path / 'none'}; the lab would download the official CIFAR-10 there" in out
    assert "runs: 82 planned, 0 finished, 82 to train" in out and "days of training on this CPU" in out
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
    assert len(seen) == 10 and all(j.parameters["allow_train"] is False for j in seen if "allow_train" in j.parameters)
    assert any("no data at" in m and "not checked against the files" in m for m in said), said
    lab = Lab("full", tmp_path / "none", root=tmp_path, allow_train=False)
    runs = lab.store.all()
    assert "not checked against the files (no CIFAR-10 batches at" in M.provenance(runs, lab)["data"]


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

    import labkit.scale.sweep

    class Reached(Exception):
        pass

    def fake_sweep(*a, **k):
        raise Reached

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(labkit.scale.sweep, "sweep", fake_sweep)
    seen: list[str] = []
    with pytest.raises(Reached):
        R.run_lab("smoke", root=tmp_path, out=tmp_path / "out", log=seen.append)
    said = seen + capsys.readouterr().out.splitlines()
    assert seen and not any("is not used" in m for m in said), said
