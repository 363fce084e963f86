"""The main job, `labkit lab`: train the plan, run the notebooks with papermill, export the report.

    labkit lab [--profile auto|full|quick|smoke] [--data-dir DIR] [--no-train] [--dry-run] [...]

1. The profile (auto: full with a CUDA GPU and CIFAR-10, else smoke) and its places, from
   labkit.lab.Lab: data, run store, report folder. Data other than those the profile's store
   was trained on get a store and a report of their own, build/<profile>-<fingerprint>/.
2. The plan's missing runs are trained first (on a GPU, `lanes` side by side), after an
   estimate of their time: on a CPU, one that would take long is refused unless asked for.
3. Each notebook runs with papermill into the report folder, reading the run store:
   01_data, 02_model, 03_depth_limit, 04_ablations once per ablation, 05_final, 00_summary.
4. They are merged into one report.html, printed to report.pdf by a headless Chromium when
   there is one (labkit.export).

Runs come from the run store, so a second run of the job retrains nothing.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import check_choice, check_positive_int
from .data import default_data_dir, fingerprint, locate, unlabelled_note
from .export import NO_CHROMIUM, export_html, find_chromium, merge, print_pdf
from .lab import PROFILES, Lab, LabError, get_profile
from .methods import SCALES
from .paper import ABLATION_GROUPS
from .progress import duration

__all__ = ["NotebookJob", "LabError", "LabReport", "choose_profile", "jobs", "run_lab"]

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "python3"

TITLE = "ResNet on CIFAR-10, the student lab reproduced"
TITLES = {
    "00_summary": "Summary",
    "01_data": "1. The data",
    "02_model": "2. The model and its two defects",
    "03_depth_limit": "3. The depth limit",
    "04_ablations": "4. Ablations",
    "05_final": "5. The final run, and what makes the gain",
    "06_discussion": "6. Discussion, conclusion and appendices",
}
ABLATION_TITLES = {"lr_decay": "learning-rate decay", "dropout": "dropout", "stem_bn": "BatchNorm after the stem", "stem_kernel": "stem kernel"}


@dataclass(frozen=True)
class NotebookJob:
    key: str  # the executed notebook's name in the report folder, e.g. 04_ablations-dropout
    notebook: str  # the source notebook, e.g. 04_ablations
    title: str
    parameters: dict = field(default_factory=dict)


@dataclass
class LabReport:
    profile: str
    report_dir: Path
    notebooks: list[Path]
    html: Path
    pdf: Path | None
    seconds: float
    timings: dict[str, float]
    reason: str = ""


def jobs(common: dict, seeds: int | None) -> list[NotebookJob]:
    """The notebooks in the report's order: the summary and the discussion, which only read the
    store, take no allow_train. `seeds` None: the profile's numbers; given, every configuration
    (depths too) has that many runs, as in lab.plan."""
    reads = {k: v for k, v in common.items() if k != "allow_train"} | {"seeds": seeds, "depth_seeds": seeds}
    out = [NotebookJob("00_summary", "00_summary", TITLES["00_summary"], reads)]
    out += [NotebookJob(k, k, TITLES[k], dict(common)) for k in ("01_data", "02_model")]
    out.append(NotebookJob("03_depth_limit", "03_depth_limit", TITLES["03_depth_limit"], {**common, "seeds": seeds}))
    for i, ab in enumerate(ABLATION_GROUPS):
        title = f"4{'abcdefgh'[i]}. Ablation: {ABLATION_TITLES.get(ab, ab)}"
        out.append(NotebookJob(f"04_ablations-{ab}", "04_ablations", title, {**common, "ablation": ab, "seeds": seeds}))
    out.append(NotebookJob("05_final", "05_final", TITLES["05_final"], {**common, "seeds": seeds}))
    out.append(NotebookJob("06_discussion", "06_discussion", TITLES["06_discussion"], reads))
    return out


# ---------------------------------------------------------------------------------------
# Which profile
# ---------------------------------------------------------------------------------------


def choose_profile(requested: str, data_at: Path, cuda: bool, download: bool = True) -> tuple[str, str]:
    """The profile to run and why. `auto`: full with a CUDA GPU and CIFAR-10 (found, or
    downloaded when `download`), else smoke."""
    check_choice("profile", requested, ("auto", *sorted(PROFILES)))
    if requested != "auto":
        return requested, f"profile {requested}, as asked"
    if not cuda:
        return "smoke", (
            "profile auto chose SMOKE: torch sees no CUDA GPU, and the full profile would take months on a CPU "
            "(the original's network trains at roughly 20 images/s on 2 CPU cores). Smoke runs synthetic data and a tiny net: it checks the "
            "pipeline, its numbers say nothing about CIFAR-10. Run `--profile full` on a GPU machine."
        )
    try:
        locate(data_at, allow_download=download)
    except (RuntimeError, OSError) as e:  # DataError (a RuntimeError) and network failures
        return "smoke", f"profile auto chose SMOKE: CIFAR-10 was not found and could not be downloaded ({e})"
    return "full", "profile auto chose FULL: a CUDA GPU and CIFAR-10 are there"


# ---------------------------------------------------------------------------------------
# Running notebooks
# ---------------------------------------------------------------------------------------


def _check_kernel() -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL not in KernelSpecManager().find_kernel_specs():
        raise LabError(
            f"no Jupyter kernel named {KERNEL!r}; register this environment's Python with "
            f"`{sys.executable} -m ipykernel install --sys-prefix --name {KERNEL}`"
        )


def _rel(path: str | os.PathLike, start: Path = NOTEBOOK_DIR.parent) -> str:
    """`path` as the notebooks (run in the project holding them) should see it: relative where
    it lies inside the project, so no machine's folder names end up in a committed report."""
    p = Path(path).resolve()
    try:
        return p.relative_to(start.resolve()).as_posix() or "."
    except ValueError:
        return str(p)


def execute(job: NotebookJob, out_dir: Path, notebook_dir: Path = NOTEBOOK_DIR) -> Path:
    """Run one notebook with papermill; its progress bar and the kernel's stderr (training bars,
    run logs) go to this process's stderr as they come."""
    import papermill as pm

    src = notebook_dir / f"{job.notebook}.ipynb"
    dst = out_dir / f"{job.key}.ipynb"
    try:
        pm.execute_notebook(
            str(src),
            str(dst),
            parameters=job.parameters,
            kernel_name=KERNEL,
            cwd=str(notebook_dir.parent),
            progress_bar=True,
            log_output=False,
            stderr_file=sys.stderr,
            # The kernel's own start-up warnings (over TCP on localhost, once per notebook) say
            # nothing about the lab; errors still show.
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except pm.PapermillExecutionError as e:
        raise LabError(f"notebook {job.key} failed in cell {e.exec_count}: {e.ename}: {e.evalue}; see {dst}") from None
    import nbformat

    nb = nbformat.read(dst, as_version=4)  # papermill records absolute paths: keep them relative
    meta = nb.metadata.get("papermill", {})
    for k in ("input_path", "output_path"):
        if meta.get(k):
            meta[k] = _rel(meta[k])
    nbformat.write(nb, dst)
    return dst


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------


def run_lab(
    profile: str = "auto",
    data_dir: str | os.PathLike | None = None,
    allow_train: bool = True,
    seeds: int | None = None,
    out: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    runs_dir: str | os.PathLike | None = None,
    allow_cpu: bool = False,
    pdf: bool = True,
    lanes: int | None = None,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> LabReport | None:
    """Train the plan, run every notebook of the lab, export the report (module docstring).
    With `dry_run`, print what it would do and return None, writing nothing."""
    t0 = time.time()
    if seeds is not None:
        check_positive_int("seeds", seeds, "runs per configuration")
    if lanes is not None:
        check_positive_int("lanes", lanes, "runs side by side per GPU")
    root = Path(root).resolve() if root is not None else NOTEBOOK_DIR.parent  # where the notebooks it runs are
    data_at = Path(data_dir).resolve() if data_dir else default_data_dir(root).resolve()
    cuda = torch.cuda.is_available()
    name, reason = choose_profile(profile, data_at, cuda, download=allow_train and not dry_run)
    if allow_train and not dry_run and not get_profile(name).synthetic:
        locate(data_at, allow_download=True)  # before the Lab: downloaded data choose their store by their fingerprint
    lab = Lab(name, data_at, runs_dir, allow_train=allow_train, allow_cpu=allow_cpu, root=root, report_dir=out, log=None)
    rows = lab.plan(seeds)
    todo = [r for r in rows if not lab.finished(r[1], r[2])] if allow_train else []
    if dry_run:
        return _print_plan(lab, rows, todo, reason, cuda, log)
    _prepare(lab, rows, todo, reason, lanes, log)
    if todo:
        train_plan(lab, todo, lanes or 2, log)
    common = {
        "profile": name,
        # None where a notebook finds the same by itself: an executed copy opened in the report
        # folder then still finds the project's root, store and data.
        "data_dir": None if lab.profile.synthetic or data_at == root / "data" else _rel(data_at),
        "allow_train": False,  # the plan is trained: the notebooks only read the store
        "root": None if root == NOTEBOOK_DIR.parent else _rel(root),
        "runs_dir": _rel(runs_dir) if runs_dir else None,
    }
    done, timings = _run_notebooks(lab, jobs(common, seeds), log)
    html_path, pdf_path = _export(lab, done, pdf, timings, log)
    seconds = time.time() - t0
    log(f"lab done in {seconds:.1f} s")
    return LabReport(name, lab.report_dir, [p for _, p in done], html_path, pdf_path, seconds, timings, reason)


def _prepare(lab: Lab, rows: list, todo: list, reason: str, lanes: int | None, log: Callable[[str], None]) -> None:
    """Everything refused before anything is written, then what the job is about to do."""
    _check_places(lab, rows)
    log(reason)
    if lab.own_store:
        log(f"note: {lab.own_store}")
    how = ("Use --no-train to render a report from recorded runs (report/runs for full), --profile smoke for a check in "
           "minutes, or --allow-cpu if you really mean it.")
    estimate = lab.refuse_long_cpu_training(todo, how)
    _check_kernel()
    for note in (_data_note(lab), estimate and f"training: {estimate}"):
        if note:
            log(note)
    if lanes is not None and lanes > 1 and todo and not torch.cuda.is_available():
        log(f"note: lanes ({lanes}) share a GPU; without one, runs train one at a time")
    log(f"lab: profile {lab.profile.name}, {len(rows)} planned runs ({len(todo)} to train), runs in "
        f"{_rel(lab.store.root, lab.root)}, report in {lab.report_dir}")


def _run_notebooks(lab: Lab, notebooks: list[NotebookJob], log: Callable[[str], None]) -> tuple[list, dict]:
    done, timings = [], {}
    lab.report_dir.mkdir(parents=True, exist_ok=True)
    for i, job in enumerate(notebooks, 1):
        extra = f" ({job.parameters['ablation']})" if "ablation" in job.parameters else ""
        log(f"[{i}/{len(notebooks)}] running {job.notebook}{extra} -> {lab.report_dir / (job.key + '.ipynb')}")
        t = time.time()
        done.append((job, execute(job, lab.report_dir)))
        timings[job.key] = time.time() - t
    return done, timings


def _print_plan(lab: Lab, rows: list, todo: list, reason: str, cuda: bool, log: Callable[[str], None]) -> None:
    """What the job would do (dry run): its data, places, runs and time, in plain lines."""
    log(f"dry run: {reason}")
    if lab.profile.synthetic:
        log(f"data: labkit's synthetic CIFAR-format data at {lab.smoke_data_dir()} (made there if missing)")
    elif lab.source is None:
        log(f"data: none at {lab.data_dir}; the lab would download the official CIFAR-10 there (network needed)" if lab.allow_train
            else f"data: none at {lab.data_dir}; the report would show what the runs recorded of their data, unchecked")
    else:
        log(f"data: {lab.data_dir}, fingerprint {fingerprint(lab.source)}: {lab.source['description']}")
    if lab.own_store:
        log(f"note: {lab.own_store}")
    log(f"run store: {lab.store.root}")
    log(f"report folder: {lab.report_dir}")
    finished = [r for r in rows if lab.finished(r[1], r[2])]
    log(f"runs: {len(rows)} planned, {len(finished)} finished, {len(todo)} to train" + ("" if lab.allow_train else " (training off: missing runs are listed as missing)"))
    for _, n, c in todo:
        log(f"  train {lab.store.run_id(c, n)}  ({c.epochs} epochs, seed {c.seed})")
    if todo:
        secs, rate = lab.training_seconds(todo, "cuda" if cuda else "cpu")
        where = "on this GPU (eager fp32 steps; the lab's graphed bf16 step is faster)" if cuda else "on this CPU"
        log(f"time: about {duration(secs)} of training {where}, at {rate:.1f} GFLOP/s measured just now")
        if not cuda and not lab.allow_cpu and lab.allow_train and not lab.profile.synthetic:
            log("note: without a GPU the lab refuses to train these runs" + (" (about an hour or less passes)" if lab.profile.name == "quick" else "")
                + ": --no-train renders what is recorded, --allow-cpu trains anyway")
    log("dry run: nothing was trained or written")


def _check_places(lab: Lab, rows: list) -> None:
    """Refuse, before anything is written, a report folder that would destroy something, a
    render with no recorded run, and a store holding runs of other data than these."""
    out = lab.report_dir.resolve()
    if out == NOTEBOOK_DIR.resolve():
        raise LabError(f"--out {out} is the notebooks' own folder: the executed copies would overwrite them")
    if out.exists() and not out.is_dir():
        raise LabError(f"--out {out} is a file, not a folder")
    if not lab.allow_train and not any(lab.finished(n, c) for _, n, c in rows):
        where = lab.store.root if lab.store.root.is_dir() else f"{lab.store.root} (no such folder)"
        why = f" ({lab.own_store})" if lab.own_store else ""
        raise LabError(
            f"--no-train renders recorded runs, but none of the {len(rows)} runs the {lab.profile.name} profile plans "
            f"is finished in {where}{why}; check --runs-dir, or --data-dir (a folder without data renders the runs' records "
            "unchecked). Nothing was written."
        )
    if lab.source is not None:
        ids = {lab.store.run_id(c, n) for _, n, c in rows}
        other = [r for r in lab.store.on_other_data(lab.source) if r.id in ids]
        if other:
            raise LabError(
                f"{len(other)} of the {lab.profile.name} plan's runs in {lab.store.root} (finished, or begun) were trained on other "
                f"data ({lab.store.data_of(other)}) than {lab.data_dir} ({lab.source['description']}): a report would mix them. "
                "Point --data-dir at the data they were trained on, or leave out --runs-dir: these data then get a store of "
                "their own. Nothing was written."
            )


def _data_note(lab: Lab) -> str:
    if lab.profile.synthetic:
        return ""
    if lab.source is None:
        return (f"note: no data at {lab.data_dir}: the report shows what the runs recorded of their data, not checked "
                "against the files")
    return unlabelled_note(lab.source, lab.data_dir)


def train_plan(lab: Lab, todo: list, lanes: int, log: Callable[[str], None]) -> None:
    """Train the plan's missing runs before the notebooks run, `lanes` side by side on each GPU
    (about 1.3x the throughput of one at a time on an H200), a worker process per GPU where
    there are several; runs that failed side by side are tried again one at a time."""
    from .scale.sweep import sweep

    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    threads = torch.get_num_threads()
    if lab.profile.synthetic and not cuda:
        torch.set_num_threads(1)  # width-8 nets: a second OpenMP thread on a small machine slows them down
    try:
        log(f"training {len(todo)} run(s) of the plan" + (f", {lanes} side by side per GPU" if cuda and lanes > 1 else ", one at a time"))
        jobs_ = [(n, c) for _, n, c in todo]
        done = sweep(jobs_, lab.store, lab.data, lanes=lanes if cuda else 1, workers=gpus if gpus > 1 else 0, log=log)
        failed = [(j.name, j.cfg) for j in done if j.status == "failed"]
        if failed and cuda and lanes > 1:
            log(f"{len(failed)} run(s) failed side by side; trying them one at a time")
            done = sweep(failed, lab.store, lab.data, lanes=1, log=log)
        failed = [j for j in done if j.status == "failed"]
    finally:
        torch.set_num_threads(threads)
    if failed:
        raise LabError(
            f"{len(failed)} run(s) failed: " + "; ".join(f"{lab.store.run_id(j.cfg, j.name)}: {j.error}" for j in failed)
            + ". The finished runs are kept; the same command goes on from them. No report was written."
        )


def _export(lab: Lab, done: list, pdf: bool, timings: dict, log) -> tuple[Path, Path | None]:
    runs = [r for r in lab.store.all() if r.finished]
    name = lab.profile.name
    title = TITLE if name == "full" else f"{TITLE} ({name} profile: {SCALES[name]})"
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")
    official = runs and all((r.summary.get("data") or {}).get("official") for r in runs)
    data = ", on the official CIFAR-10 files" if official else \
        f", on {html.escape(lab.data_label or 'a copy of CIFAR-10 that is not the official files')}"
    data = "" if lab.profile.synthetic else data
    intro = (f'<div class="lk-note"><p>Rendered {when} from {len(runs)} recorded runs{data}. Every number comes from a run '
             "record or a computation on it; the original report's numbers from its tables.</p></div>")
    t = time.time()
    merged = merge([(j.key, j.title, p) for j, p in done], title, intro)
    html_path = export_html(merged, lab.report_dir / "report.html", title)
    timings["export html"] = time.time() - t
    log(f"wrote {html_path}")
    if not pdf:
        return html_path, None
    chromium = find_chromium()
    if chromium is None:
        log(f"{NO_CHROMIUM}: wrote the HTML only, no PDF; run again with --no-train to add the PDF")
        return html_path, None
    t = time.time()
    pdf_path = print_pdf(html_path, lab.report_dir / "report.pdf", chromium)
    timings["export pdf"] = time.time() - t
    log(f"wrote {pdf_path}")
    return html_path, pdf_path
