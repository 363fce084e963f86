"""The main job: run the lab's notebooks with papermill, merge them, export one HTML and a PDF.

    python -m labkit lab --profile auto|full|quick|smoke [--no-train] [--seeds N] [--out DIR]

1. Each notebook runs with papermill into the profile's report folder (`report/` for full,
   `build/<profile>/report/` otherwise): 01_data, 02_model, 03_depth_limit, 04_ablations once
   per ablation (04_ablations-<ablation>.ipynb), 05_final, then 00_summary, which reads the
   run store the others filled. The executed notebooks open in JupyterLab.
2. They are merged with nbformat (00_summary first; cell ids made unique; stderr, which holds
   progress bars and run logs, left out) into one notebook, exported once by nbconvert as
   `report.html`: code hidden, a contents list linking the sections, no external scripts.
3. `report.pdf` is printed from that HTML by a headless Chromium found on PATH (never
   downloaded); without one, the HTML stands alone and a message says so.

Runs come from the run store, so a second export after a full run retrains nothing.
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import ABLATION_GROUPS, check_choice, check_positive_int
from .lab import PROFILES, Profile, get_profile
from .train import duration as _duration

__all__ = ["NotebookJob", "LabError", "LabReport", "export_html", "find_chromium", "jobs", "merge", "print_pdf", "resolve_profile", "run_lab"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
KERNEL = "python3"
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

TITLES = {
    "00_summary": "Summary: the seed's numbers beside ours",
    "01_data": "1. The data",
    "02_model": "2. The model",
    "03_depth_limit": "3. The depth limit",
    "04_ablations": "4. Ablations",
    "05_final": "5. The final run, and labkit's best",
}
ABLATION_TITLES = {"lr_decay": "learning-rate decay", "dropout": "dropout", "stem_bn": "BatchNorm after the stem", "stem_kernel": "stem kernel"}

CSS = """
<style>
  /* labkit report: readable tables, captions and page breaks when printed */
  body { max-width: 1250px; margin: 0 auto; }
  .lk-table { font-size: 11.5px; border-collapse: collapse; margin: 0.4em 0 1em 0; }
  .lk-table caption { caption-side: top; text-align: left; font-weight: 600; font-size: 12.5px; padding-bottom: 4px; color: #222; }
  .lk-table th, .lk-table td { padding: 2px 6px !important; border-bottom: 1px solid #ddd; vertical-align: top; }
  .lk-table th { background: #f3f3f3; white-space: normal; text-align: left !important; }
  .lk-caption { font-size: 12px; color: #333; margin: 0 0 1.2em 0; }
  .lk-note, .lk-provenance { font-size: 12px; background: #f4f7fb; border-left: 4px solid #5b8bd1; padding: 4px 10px; margin: 0.5em 0; }
  .lk-warning { font-size: 12px; background: #fff6e5; border-left: 4px solid #e0a030; padding: 4px 10px; margin: 0.5em 0; }
  .lk-toc ul { line-height: 1.6; list-style: none; padding-left: 1em; }
  .jp-OutputArea-output { overflow-x: visible !important; }
  .jp-OutputArea-output img, .jp-OutputArea-output svg { max-width: 100%; height: auto; }
  @page { size: A4 landscape; margin: 11mm 10mm; }
  @media print {
    body { max-width: none; }
    /* JupyterLab lays cells out with flex boxes and scroll areas, which Chromium prints as
       unbreakable blocks (whole outputs jump to the next page); plain blocks break normally. */
    .jp-Cell-inputWrapper, .jp-Cell-outputWrapper, .jp-InputArea, .jp-OutputArea-child, .jp-OutputArea-output { display: block !important; }
    .jp-OutputArea-child { break-inside: auto !important; }  /* JupyterLab's print CSS keeps each output whole */
    .jp-Cell, .jp-Cell * { overflow: visible !important; }
    .jp-Cell:has(.lk-section) { break-before: page; }
    .jp-MarkdownCell { break-after: avoid-page; }
    .jp-OutputArea-child:has(+ .jp-OutputArea-child .lk-caption) { break-after: avoid-page; }
    .lk-table { font-size: 9px; }
    .lk-table caption { break-after: avoid-page; }
    .lk-table, .lk-table tr { break-inside: avoid; }
    /* a figure is one unbreakable box: never taller than a page */
    .jp-OutputArea-output svg, .jp-OutputArea-output img { break-inside: avoid; max-height: 170mm; width: auto; }
    .jp-InputPrompt, .jp-OutputPrompt, .jp-Collapser { display: none !important; }
    a.anchor-link { display: none; }
  }
</style>
"""


class LabError(RuntimeError):
    """The lab cannot run as asked (a refused profile, a failed notebook, no kernel)."""


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


def jobs(common: dict, seeds: int, lab_started: float = 0.0) -> list[NotebookJob]:
    """The notebooks in the order they run (the summary last, once the store is full)."""
    out = [
        NotebookJob("01_data", "01_data", TITLES["01_data"], dict(common)),
        NotebookJob("02_model", "02_model", TITLES["02_model"], dict(common)),
        NotebookJob("03_depth_limit", "03_depth_limit", TITLES["03_depth_limit"], dict(common)),
    ]
    for i, ab in enumerate(ABLATION_GROUPS):
        title = f"4{'abcdefgh'[i]}. Ablation: {ABLATION_TITLES.get(ab, ab)}"
        out.append(NotebookJob(f"04_ablations-{ab}", "04_ablations", title, {**common, "ablation": ab, "seeds": seeds}))
    out.append(NotebookJob("05_final", "05_final", TITLES["05_final"], {**common, "seeds": seeds}))
    # The summary only reads the store: it takes no allow_train.
    reads = {k: v for k, v in common.items() if k != "allow_train"}
    out.append(NotebookJob("00_summary", "00_summary", TITLES["00_summary"], {**reads, "seeds": seeds, "lab_started": lab_started}))
    return out


def report_order(js: list[NotebookJob]) -> list[NotebookJob]:
    """The summary opens the report; the rest in the order they ran."""
    return sorted(js, key=lambda j: j.notebook != "00_summary")


# ---------------------------------------------------------------------------------------
# Which profile
# ---------------------------------------------------------------------------------------


# On a CPU, a real-data profile whose estimated training time passes this needs --allow-cpu.
CPU_LIMIT_S = 3600.0


def _cpu_gflops(profile_name: str) -> float:
    from .bench import measure_gflops
    from .lab import plan

    return measure_gflops(plan(profile_name, 1)[0][2], "cpu")


def resolve_profile(
    requested: str,
    data_dir: str | None = None,
    allow_train: bool = True,
    allow_cpu: bool = False,
    cuda: bool | None = None,
    data_check: Callable[[str | None], None] | None = None,
    seeds: int | None = None,
    cpu_gflops: Callable[[str], float] | None = None,
    store=None,
) -> tuple[str, str]:
    """The profile to run and why. `auto`: full with a GPU and CIFAR-10, else smoke.

    On a CPU, full and quick first estimate their training time (the plan's GFLOP over a
    rate measured on this CPU, `cpu_gflops(profile)`; runs finished in `store`, a RunStore,
    left out): full never starts training there unless `allow_cpu` (days), quick only when
    the estimate is under CPU_LIMIT_S; with nothing left to train, both go ahead.
    """
    check_choice("profile", requested, ("auto", *sorted(PROFILES)))
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if requested == "auto":
        if not cuda:
            return "smoke", (
                "profile auto chose SMOKE: torch sees no CUDA GPU, and the full profile would take days on a CPU "
                "(the seed's network trains at roughly 20 images/s on 2 CPU cores). Smoke runs synthetic data and a tiny net: it checks the "
                "pipeline, its numbers say nothing about CIFAR-10. Run `--profile full` on a GPU machine."
            )
        try:
            (data_check or _check_data)(data_dir)
        except (RuntimeError, OSError) as e:  # DataError (a RuntimeError) and network failures
            return "smoke", f"profile auto chose SMOKE: CIFAR-10 was not found and could not be downloaded ({e})"
        return "full", "profile auto chose FULL: a CUDA GPU and CIFAR-10 are there"
    if requested in ("full", "quick") and not cuda and allow_train and not allow_cpu:
        from .lab import plan_gflop

        def done(name, cfg) -> bool:
            r = store.find(cfg, name) if store is not None else None
            return r is not None and r.finished

        rate = (cpu_gflops or _cpu_gflops)(requested)
        est = plan_gflop(requested, seeds, skip=done) / rate
        where = (
            f"about {_duration(est)} of training for the runs of its plan not yet finished"
            f"{f' in {_rel(store.root)}' if store is not None else ''} ({rate:.1f} GFLOP/s measured on this CPU)"
        )
        if est > 0 and (requested == "full" or est > CPU_LIMIT_S):
            raise LabError(
                f"refusing the {requested} profile on a CPU: torch sees no CUDA GPU, and it would take {where}. "
                "Use --no-train to render a report from recorded runs (report/runs for full), "
                "--profile smoke for a check in minutes, or --allow-cpu if you really mean it."
            )
        return requested, f"profile {requested} on a CPU: {where}"
    return requested, f"profile {requested}, as asked" + (" (rendered from recorded runs; training off)" if not allow_train else "")


def _check_data(data_dir: str | None) -> None:
    from .data import locate

    locate(data_dir, allow_download=True)


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


def _rel(path: str | os.PathLike) -> str:
    """`path` as the notebooks (run in PROJECT_ROOT) should see it: relative where it lies
    inside the project, so no machine's folder names end up in a committed report."""
    p = Path(path).resolve()
    try:
        return p.relative_to(PROJECT_ROOT).as_posix() or "."
    except ValueError:
        return str(p)


def execute(job: NotebookJob, out_dir: Path, cwd: Path, notebook_dir: Path = NOTEBOOK_DIR) -> Path:
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
            cwd=str(cwd),
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
# Merging and exporting
# ---------------------------------------------------------------------------------------


def _cell_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:64]


def _section_id(key: str) -> str:
    return "sec-" + _cell_id(key)


def merge(parts: list[tuple[NotebookJob, Path]], title: str, intro: str = ""):
    """One notebook of all executed parts, with a contents list; stderr outputs dropped."""
    import nbformat

    books = [(job, nbformat.read(path, as_version=4)) for job, path in parts]
    merged = nbformat.v4.new_notebook()
    merged.nbformat_minor = max(5, merged.nbformat_minor)
    meta = books[0][1].metadata if books else {}
    merged.metadata = {k: meta[k] for k in ("kernelspec", "language_info") if k in meta}
    toc = "".join(f'<li><a href="#{_section_id(j.key)}">{html.escape(j.title)}</a></li>' for j, _ in books)
    head = nbformat.v4.new_markdown_cell(
        f'<h1 id="report-top">{html.escape(title)}</h1>\n\n{intro}\n\n<div class="lk-toc"><h2>Contents</h2><ul>{toc}</ul></div>\n'
    )
    head.id = "report-head"
    cells = [head]
    for job, book in books:
        for i, cell in enumerate(book.cells):
            cell = nbformat.from_dict(dict(cell))
            cell.id = _cell_id(f"{job.key}-{i}")
            if i == 0 and cell.cell_type == "markdown":
                lines = cell.source.split("\n")
                rest = "\n".join(lines[1:]) if lines and lines[0].startswith("# ") else cell.source
                cell.source = f'<h1 class="lk-section" id="{_section_id(job.key)}">{html.escape(job.title)}</h1>\n\n{rest.strip()}\n'
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
                if not cell.outputs:  # code is hidden in the report: a cell without output shows nothing
                    continue
            cells.append(cell)
    merged.cells = cells
    nbformat.validate(merged)
    return merged


def export_html(nb, path: Path, title: str) -> Path:
    """HTML with code hidden and no external scripts (requirejs and MathJax are not needed)."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.log.setLevel(logging.ERROR)  # its "alternative text is missing" warning: _figure_alt_text adds it
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    body = _tidy_html(body)
    body = body.replace(f'<script src="{exporter.require_js_url}"></script>', "")
    body = re.sub(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", "", body, flags=re.DOTALL)
    body = body.replace("</head>", CSS + "</head>", 1)
    path.write_text(body, encoding="utf-8")
    return path


def _tidy_html(body: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(body, features="html.parser")
    _figure_alt_text(soup)
    _unique_heading_ids(soup)
    return str(soup)


def _figure_alt_text(soup) -> None:
    """Give every figure image its caption as alternative text (screen readers, and what a
    reader sees where an image does not load); nbconvert's own is a placeholder."""
    for img in soup.select("div.jp-OutputArea-output img"):
        cell = img.find_parent("div", class_="jp-Cell")
        caption = img.find_next("p", class_="lk-caption")
        if caption is not None and caption.find_parent("div", class_="jp-Cell") is cell:
            img["alt"] = re.sub(r"^Figure\.\s*", "", " ".join(caption.get_text().split()))


def _unique_heading_ids(soup) -> None:
    """nbconvert makes a heading's id from its text, and the four ablation sections share
    their headings: a repeated id gets its section's id in front, so each link (the
    heading's own anchor too) leads to its own section."""
    seen: set[str] = set()
    section = "report"
    for h in soup.find_all(re.compile(r"^h[1-6]$")):
        if "lk-section" in (h.get("class") or []):
            section = h.get("id", section)
        hid = h.get("id")
        if not hid:
            continue
        if hid in seen:
            new, k = f"{section}-{hid}", 2
            while new in seen:
                new, k = f"{section}-{hid}-{k}", k + 1
            h["id"] = new
            anchor = h.find("a", class_="anchor-link")
            if anchor is not None:
                anchor["href"] = f"#{new}"
        seen.add(h["id"])


def find_chromium() -> str | None:
    """A Chromium or Chrome on PATH ($LABKIT_CHROMIUM first); never downloads one."""
    env = os.environ.get("LABKIT_CHROMIUM")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    for name in CHROMIUMS:
        found = shutil.which(name)
        if found:
            return found
    return None


def print_pdf(html_path: Path, pdf_path: Path, chromium: str, timeout: float = 300) -> Path:
    """Print the HTML to PDF with headless Chromium (a fresh profile, no network services)."""
    tmp_pdf = pdf_path.with_name(pdf_path.name + ".part")
    with tempfile.TemporaryDirectory(prefix="labkit-chromium-") as profile_dir:
        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-pdf-header-footer",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile_dir}",
            f"--print-to-pdf={tmp_pdf.resolve()}",
            html_path.resolve().as_uri(),  # a bare path does not load; a file:// URI does
        ]
        try:
            p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"{chromium} did not print {html_path} within {timeout:.0f} s") from None
        if p.returncode != 0 or not tmp_pdf.is_file() or tmp_pdf.stat().st_size == 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
            raise LabError(f"{chromium} could not print {html_path} (exit {p.returncode}): " + " | ".join(tail))
        os.replace(tmp_pdf, pdf_path)
    return pdf_path


# ---------------------------------------------------------------------------------------
# The lab
# ---------------------------------------------------------------------------------------


def _store(root, runs_dir, prof: Profile):
    from .runs import RunStore

    return RunStore(Path(runs_dir) if runs_dir else Path(root) / prof.runs_dir)


def _check_recorded_runs(profile_name: str, seeds: int, store) -> None:
    """Rendering without training needs recorded runs: refuse a store with none of the plan's,
    which is a mistyped --runs-dir far more often than a wish for an empty report."""
    from .lab import plan

    planned = plan(profile_name, seeds)
    if not any((r := store.find(cfg, name)) is not None and r.finished for _, name, cfg in planned):
        where = store.root if store.root.is_dir() else f"{store.root} (no such folder)"
        raise LabError(
            f"--no-train renders recorded runs, but none of the {len(planned)} runs the {profile_name} profile plans "
            f"is finished in {where}; check --runs-dir. Nothing was written."
        )


def _check_lab_data(profile_name: str, seeds: int, data_dir, allow_train: bool, store) -> str:
    """Full and quick: the data must be there (the runs train on them, the report's data
    section shows them), and every finished run of the plan must have been trained on them;
    the run ids name no data, so a report would otherwise mix copies without a word.
    Returns a note to show when the data are not the official files and have no label."""
    from .data import DataError, locate, refuse_runs_on_other_data, source_of, unlabelled_note
    from .lab import plan

    try:
        folder = locate(data_dir, allow_download=allow_train)  # rendering alone never downloads
    except DataError as e:
        if allow_train:
            raise
        raise LabError(
            f"--no-train renders recorded runs beside the data they were trained on (shown, and checked against "
            f"them), and none were found: {str(e).split(' Point labkit', 1)[0].rstrip('.')}. Give --data-dir "
            "(for the committed report: report/README.md). Nothing was written."
        ) from None
    src = source_of(folder)
    refuse_runs_on_other_data(
        store, src, folder,
        "a report would mix them. Point --data-dir at the data they were trained on; or, to train on "
        f"these, move {_rel(store.root)} aside or give another store and report folder (--runs-dir DIR --out DIR). "
        "Nothing was written.",
        runs=f"of the {profile_name} plan's runs", root=_rel(store.root),
        only={store.run_id(cfg, name) for _, name, cfg in plan(profile_name, seeds)}, error=LabError,
    )
    return unlabelled_note(src, folder)


def run_lab(
    profile: str = "auto",
    data_dir: str | None = None,
    allow_train: bool = True,
    seeds: int | None = None,
    out: str | os.PathLike | None = None,
    root: str | os.PathLike = PROJECT_ROOT,
    runs_dir: str | os.PathLike | None = None,
    allow_cpu: bool = False,
    pdf: bool = True,
    lanes: int | None = None,
    log: Callable[[str], None] = print,
) -> LabReport:
    """Run every notebook of the lab, then export the report. See the module's docstring."""
    t0 = time.time()
    if seeds is not None:
        check_positive_int("seeds", seeds, "runs per configuration")
    root = Path(root).resolve()
    # Where the notebooks' Lab is to look for the data: checked there, not in the working
    # directory; a relative --data-dir or $LABKIT_DATA means from here.
    env = os.environ.get("LABKIT_DATA")
    data_at = Path(data_dir).resolve() if data_dir else Path(env).resolve() if env else root / "data"
    store = None
    if profile in ("full", "quick"):  # the CPU estimate counts only the runs not yet in its store
        store = _store(root, runs_dir, get_profile(profile))
    name, reason = resolve_profile(profile, data_at, allow_train, allow_cpu, seeds=seeds, store=store)
    prof: Profile = get_profile(name)
    n_seeds = prof.seeds if seeds is None else seeds
    if lanes is not None:
        check_positive_int("lanes", lanes, "runs side by side per GPU")
    report_dir = Path(out).resolve() if out else root / prof.report_dir
    if report_dir == NOTEBOOK_DIR.resolve():
        raise LabError(f"--out {report_dir} is the notebooks' own folder: the executed copies would overwrite them")
    if report_dir.exists() and not report_dir.is_dir():
        raise LabError(f"--out {report_dir} is a file, not a folder")
    store = store or _store(root, runs_dir, prof)
    if not allow_train:
        _check_recorded_runs(name, n_seeds, store)
    data_note = "" if prof.synthetic else _check_lab_data(name, n_seeds, data_at, allow_train, store)
    report_dir.mkdir(parents=True, exist_ok=True)
    _check_kernel()
    log(reason)
    if data_note:
        log(data_note)
    if prof.synthetic and data_dir:
        log(f"note: the {name} profile trains on synthetic data; --data-dir {data_dir} is not used")
    if lanes is not None and lanes > 1 and allow_train and not torch.cuda.is_available():
        log(f"note: lanes ({lanes}) share a GPU; without one, runs train one at a time")
    lanes = lanes or 2  # on a GPU, two runs side by side: about 1.3x the throughput of one
    common = {
        "profile": name,
        # None where a notebook finds the same by itself: an executed copy opened in report/
        # then still finds the project's root, store and data.
        "data_dir": None if prof.synthetic or data_at == root / "data" else _rel(data_at),
        "allow_train": allow_train,
        "root": None if root == PROJECT_ROOT.resolve() else _rel(root),
        "runs_dir": _rel(runs_dir) if runs_dir else None,
    }
    todo = jobs(common, n_seeds, lab_started=t0)
    runs_where = common["runs_dir"] or _rel(root / prof.runs_dir)
    log(f"lab: {len(todo)} notebooks, profile {name}, {n_seeds} seed(s), runs in {runs_where}, report in {report_dir}")
    if allow_train and torch.cuda.is_available():
        # Train the whole plan first, `lanes` runs side by side on each GPU (about 1.3x the
        # throughput of one at a time on an H200); the notebooks then find every run done.
        from .lab import Lab, plan
        from .sweep import sweep

        lab = Lab(name, data_dir=None if prof.synthetic else data_at, runs_dir=runs_dir, root=root, progress=False)
        log(f"training the plan's runs first, {lanes} side by side per GPU")
        gpus = torch.cuda.device_count()
        done_jobs = sweep(
            [(n, c) for _, n, c in plan(name, n_seeds)],
            lab.store,
            lab.data,
            lanes=lanes,
            workers=gpus if gpus > 1 else 0,  # a process per GPU, each with its lanes
            log=log,
        )
        failed = [j for j in done_jobs if j.status == "failed"]
        if failed:
            log(f"{len(failed)} run(s) failed side by side; the notebooks train them one at a time")
    done: list[tuple[NotebookJob, Path]] = []
    timings: dict[str, float] = {}
    for i, job in enumerate(todo, 1):
        extra = f" ({job.parameters['ablation']})" if "ablation" in job.parameters else ""
        log(f"[{i}/{len(todo)}] running {job.notebook}{extra} -> {report_dir / (job.key + '.ipynb')}")
        t = time.time()
        done.append((job, execute(job, report_dir, cwd=PROJECT_ROOT)))
        timings[job.key] = time.time() - t
        log(f"[{i}/{len(todo)}] {job.key} done in {timings[job.key]:.1f} s")

    title = f"labkit report: {name} profile" + (" (synthetic data: a pipeline check, not results)" if prof.synthetic else "")
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    intro = (
        f'<div class="lk-note"><p>{html.escape(reason.rstrip("."))}.<br>Generated {when} by <code>python -m labkit lab</code>; '
        f"{n_seeds} seed{'s' if n_seeds > 1 else ''} per ablation, final and modern configuration, one per depth configuration "
        f"(as the seed ran each); runs from <code>{html.escape(str(runs_where))}</code>. Every number comes "
        "from a run record or a computation; the seed's numbers from <code>labkit.config</code>.</p></div>"
    )
    t = time.time()
    order = {j.key: i for i, j in enumerate(report_order([j for j, _ in done]))}
    merged = merge(sorted(done, key=lambda jp: order[jp[0].key]), title, intro)
    html_path = export_html(merged, report_dir / "report.html", title)
    timings["export html"] = time.time() - t
    log(f"wrote {html_path}")
    pdf_path = None
    if pdf:
        chromium = find_chromium()
        if chromium is None:
            log("no Chromium on PATH (chromium, chromium-browser, google-chrome): wrote the HTML only, no PDF. "
                "Install one (e.g. `apt-get install -y chromium`) and run again with --no-train to add the PDF.")
        else:
            t = time.time()
            pdf_path = print_pdf(html_path, report_dir / "report.pdf", chromium)
            timings["export pdf"] = time.time() - t
            log(f"wrote {pdf_path}")
    seconds = time.time() - t0
    log(f"lab done in {seconds:.1f} s")
    return LabReport(name, report_dir, [p for _, p in done], html_path, pdf_path, seconds, timings, reason)
