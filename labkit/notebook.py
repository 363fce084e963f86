"""What a notebook's cells call: the set-up cell (parameters checked, the Lab opened), its runs, display."""

from __future__ import annotations

import ast
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape as html_escape
from pathlib import Path

import IPython
import pandas as pd
import torch
from bs4 import BeautifulSoup
from IPython import display as ipd

from . import paper
from .checkpoint import CheckpointError, DiskFullError, evaluated_weights, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, check_positive_int, did_you_mean
from .config import check_choice as check_choice  # notebook 04 checks its `ablation` with it
from .data import DataError, DataNotFound, Dataset, file_in_the_way, in_the_way, load_cifar10
from .lab import (
    DEPTHS,
    Lab,
    RunMissing,
    ablation_key,
    ablation_runs,
    depth_name,
    depth_runs,
    final_runs,
    get_profile,
    grid_runs,
    modern_runs,
    one_era,
    project_root,
    restart_runs,
)
from .methods import recipe_parts
from .runs import Run, RunError

NO_DATA = "the data are not on this machine (see above)"
# What a notebook says when it would train for long on a CPU: its own parameters, not CLI flags.
NOTEBOOK_CPU_HOW = (
    'Set allow_train = False in the parameters cell to show the recorded runs only, profile = "smoke" for a check '
    "in minutes, or allow_cpu = True to train anyway (papermill: -p allow_train False, -p profile smoke, "
    "-p allow_cpu True)."
)


def check_seeds(seeds, lab: Lab | None = None, depth: bool = False) -> int:
    """`seeds` checked; None means the profile's own number (with `lab`; its depth runs' with `depth`)."""
    if seeds is None and lab is not None:
        return lab.profile.depth_seeds if depth else lab.profile.seeds
    return check_positive_int("seeds", seeds, "runs per configuration")


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def _check_str(name: str, value, what: str = "a path string") -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name} must be {what} or None, got {type(value).__name__} {value!r}")


def open_lab(
    profile: str,
    data_dir: str | None = None,
    runs_dir: str | None = None,
    allow_train: bool = True,
    root: str | None = None,
    data_label: str | None = None,
    allow_cpu: bool = False,
) -> Lab:
    """The notebook's Lab, every common parameter checked first (a bad one raises ConfigError), and
    any papermill `-p` name the notebook does not declare. Relative paths start at the project's
    folder; `data_label` None: $LABKIT_DATA_LABEL."""
    _errors_in_one_line()
    check_notebook_parameters()
    check_bool("allow_train", allow_train)
    check_bool("allow_cpu", allow_cpu)
    _check_str("data_dir", data_dir)
    _check_str("runs_dir", runs_dir)
    _check_str("data_label", data_label, "a string")
    bad_root = f"root must be the project's root folder (a path string, or None to find it), got {root!r}"
    if root is not None and not isinstance(root, str):
        raise ConfigError(bad_root)
    data_dir, runs_dir, root = (from_project(v) for v in (data_dir, runs_dir, root))
    root = root or os.path.relpath(project_root())  # relative: no machine's folders in an executed notebook
    if not Path(root).is_dir():
        raise ConfigError(bad_root)
    prof = get_profile(profile)
    # The store is made when the first run trains, after its data are loaded: a file in its way is refused now.
    store = Path(runs_dir) if runs_dir else Path(root) / prof.runs_dir
    where = f"runs_dir {runs_dir!r}" if runs_dir else f"the {prof.name} profile's run store {store}"
    _check_folder(store, where, "the runs (made when a run is trained)", write=allow_train)
    data_label = data_label or os.environ.get("LABKIT_DATA_LABEL") or None
    dirs = {"data_dir": data_dir, "runs_dir": runs_dir, "root": root}
    lab = Lab(profile, **dirs, allow_train=allow_train, log=stderr_log, data_label=data_label, allow_cpu=allow_cpu)
    setup_notebook(lab)
    return lab


def from_project(path: str | None) -> str | None:
    """A notebook's path parameter, a relative one taken from the project's folder: the lab job
    runs notebooks there, JupyterLab in notebooks/, where it would name another folder."""
    if path is None or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.relpath(project_root()), path))


def depth_checkpoints_dir(lab: Lab, checkpoints_dir: str | Path | None) -> Path:
    """Notebook 03's `checkpoints_dir` (None: check_points/ beside the profile's report), checked
    in its set-up cell although its last cell writes it."""
    if isinstance(checkpoints_dir, Path):  # this cell run again: the folder it gave the first time
        return checkpoints_dir
    _check_str("checkpoints_dir", checkpoints_dir)
    if checkpoints_dir is None:
        path = lab.report_dir.parent / "check_points"
        where = f"the {lab.profile.name} profile's checkpoints folder {path} (checkpoints_dir None)"
    else:
        path, where = Path(from_project(checkpoints_dir)), f"checkpoints_dir {checkpoints_dir!r}"
    _check_folder(path, where, "the checkpoints")
    return path


def _check_folder(folder: Path, where: str, what: str, write: bool = True) -> None:
    """Refuse a folder that could never be made (a file at or above it) or, with `write`, written into."""
    if (blocker := file_in_the_way(folder)) is not None:
        raise ConfigError(f"{where}: {in_the_way(blocker)}, not a folder; give a folder for {what}")
    if write:  # a probe without a name, gone when closed: nothing is left behind
        there = next(p for p in (folder, *folder.parents) if p.is_dir())
        try:
            tempfile.TemporaryFile(dir=there).close()
        except OSError as e:
            why = f"cannot write in {there} ({e.strerror or e})"
            raise ConfigError(f"{where}: {why}; give a folder you can write to for {what}") from None


def _assigned_names(source: str) -> set[str] | None:
    """Names a cell of plain `name = value` lines assigns; None if it is not such a cell."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    if not all(isinstance(n, ast.Assign) and all(isinstance(t, ast.Name) for t in n.targets) for n in body):
        return None
    return {t.id for n in body for t in n.targets}


def check_notebook_parameters(history: list[str] | None = None) -> None:
    """Refuse the names papermill injected (its cell opens with `# Parameters`) that the
    `parameters` cell just before it does not declare: papermill itself only warns.
    `history`: the kernel's cell sources in order (default: IPython's `In`)."""
    if history is None:
        shell = IPython.get_ipython()
        history = list(shell.user_ns.get("In", [])) if shell is not None else []
    injected = [i for i, src in enumerate(history) if i > 0 and src.lstrip().startswith("# Parameters")]
    if not injected:
        return  # not run by papermill, or without parameters
    declared, given = _assigned_names(history[injected[-1] - 1]), _assigned_names(history[injected[-1]])
    if declared is None or given is None:
        return  # cells run by hand in another order: nothing to compare
    if unknown := sorted(given - declared):
        raise ConfigError(
            f"unknown notebook parameter(s) {unknown} (papermill -p){did_you_mean(unknown[0], declared)}; "
            f"this notebook takes {sorted(declared)}"
        )


def _errors_in_one_line() -> None:
    """In a kernel, labkit's own errors show as one line, in the notebook and in papermill's error."""

    def one_line(shell, etype, value, tb, tb_offset=None):
        shell._showtraceback(etype, value, [f"{etype.__name__}: {value}"])  # what ipykernel sends as the error

    if (shell := IPython.get_ipython()) is not None:
        shell.set_custom_exc((ConfigError, DataError, RunError, CheckpointError, DiskFullError), one_line)


def stderr_log(msg: str) -> None:
    """Run logs to stderr (the terminal, not the report), but per-epoch lines: the bar shows them."""
    if not msg.startswith("epoch "):
        print(msg, file=sys.stderr, flush=True)


def setup_notebook(lab: Lab | None = None) -> None:
    """Figures as SVG, seaborn's theme, wide tables; one thread for tiny nets on a CPU."""
    import matplotlib
    import seaborn as sns

    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("svg")
    except ImportError:  # matplotlib-inline comes with ipykernel; without it, PNG stays
        pass
    sns.set_theme(style="whitegrid", context="notebook")
    matplotlib.rcParams.update({"figure.dpi": 100, "svg.fonttype": "path"})
    pd.set_option("display.max_columns", 50)
    pd.set_option("display.width", 200)
    if lab is not None and lab.profile.synthetic and not torch.cuda.is_available():
        torch.set_num_threads(1)  # width-8 nets: a second thread on a busy small machine slows them down


def prefetch(lab: Lab, pairs: Sequence[tuple[str, TrainConfig]]) -> None:
    """With several GPUs, train the unfinished runs of `pairs` first, one worker process per GPU
    (labkit.scale.sweep); with one GPU or none, nothing: `get_runs` trains each when it asks."""
    from .scale.sweep import sweep

    todo = [(n, c) for n, c in ((name, lab.config(cfg)) for name, cfg in pairs) if not lab.finished(n, c)]
    if not lab.allow_train or torch.cuda.device_count() < 2 or not todo:
        return
    if lab.profile.synthetic:
        lab.data()  # makes the synthetic files here, not in several workers at once
    workers = min(torch.cuda.device_count(), len(todo))
    done = sweep(todo, lab.store, lab.data, workers=workers, log=None)
    if lab.log:  # a failed run is trained again by get_runs, which then raises its error
        counts = {st: sum(j.status == st for j in done) for st in ("done", "failed")}
        lab.log(f"prefetch: {len(todo)} runs on {workers} GPUs, {counts['done']} done, {counts['failed']} failed")


def get_runs(lab: Lab, pairs: Sequence[tuple[str, TrainConfig]]) -> tuple[list[Run], list[str]]:
    """The finished runs of `pairs` (trained if the lab allows; long CPU training refused first), one
    era per configuration (lab.one_era: never runs from before and after the fix together), and
    the ids of the missing ones."""
    missing_rows = [("", n, lab.config(c)) for n, c in pairs if not lab.finished(n, lab.config(c))]
    if (estimate := lab.refuse_long_cpu_training(missing_rows, NOTEBOOK_CPU_HOW)) and lab.log:
        lab.log(f"training: {estimate}")
    prefetch(lab, pairs)
    runs, missing = [], []
    for i, (name, cfg) in enumerate(pairs, 1):
        run_id, epochs = lab.store.run_id(lab.config(cfg), name), lab.config(cfg).epochs
        if lab.allow_train and not lab.finished(name, lab.config(cfg)):
            stderr_log(f"training run {i}/{len(pairs)}: {run_id} ({epochs} epochs)")
        try:
            runs.append(lab.run(name, cfg))
        except RunMissing:
            missing.append(run_id)
    return one_era(runs), missing


@dataclass
class LabRuns:
    """Every configuration's runs, as the notebooks show them, and the ids of the missing ones."""

    abl: list[Run]
    final: list[Run]
    restart: list[Run]
    grid: list[Run]
    depth: list[Run]
    modern: list[Run]
    missing: list[str]

    @property
    def every(self) -> list[Run]:
        return list({r.id: r for r in self.abl + self.final + self.restart + self.grid + self.depth + self.modern}.values())


def lab_runs(lab: Lab, seeds: int | None = None, depth_seeds: int | None = None) -> LabRuns:
    """All of the lab's runs (`seeds` None: the profile's), as notebooks 03-05 get them."""
    seeds, depth_seeds = seeds or lab.profile.seeds, depth_seeds or lab.profile.depth_seeds
    every_row = list({pair: None for g in paper.ABLATION_GROUPS for pair in ablation_runs(g, seeds)})
    pairs = (every_row, final_runs(seeds), restart_runs(seeds), grid_runs(seeds), depth_runs(depth_seeds), modern_runs(seeds))
    got = [get_runs(lab, p) for p in pairs]
    return LabRuns(*(runs for runs, _ in got), missing=[m for _, missing in got for m in missing])


def load_data(lab: Lab) -> tuple[Dataset | None, Dataset | None]:
    """Notebook 01's data: the seed split and all five training batches, never downloaded with
    training off; without them, a note that says why, and (None, None)."""
    try:
        if lab.profile.synthetic or lab.allow_train:
            return lab.data("seed"), lab.data("full")
        return tuple(load_cifar10(lab.data_dir, split, allow_download=False) for split in ("seed", "full"))
    except DataNotFound as e:
        show_note(
            f"No CIFAR-10 batches at <code>{html_escape(str(e.folder))}</code> ({html_escape(e.why)}), so this section "
            "shows what the runs recorded of their data, and no images or statistics. To show them, set <code>data_dir"
            "</code> in the parameters cell to a folder holding <code>cifar-10-batches-py</code> (papermill: <code>-p "
            "data_dir DIR</code>), or <code>LABKIT_DATA</code>.",
            "warning" if lab.allow_train else "note",
        )
    except DataError as e:
        why = f"so this section shows no images or statistics: {html_escape(str(e))}"
        show_note(f"<b>The data could not be loaded</b>, {why}", "warning")
    return None, None


def recorded_source(lab: Lab) -> dict | None:
    """The data record of the first finished run in the store that has one: what the runs trained on."""
    for r in lab.store.all():
        if r.finished and isinstance(r.summary.get("data"), dict):
            return r.summary["data"]
    return None


NOTE_STYLE = "font-size: 12px; padding: 4px 10px; margin: 0.5em 0; border-left: 4px solid "
NOTE_COLOURS = {
    "note": "#5b8bd1; background: #f4f7fb",
    "provenance": "#5b8bd1; background: #f4f7fb",
    "warning": "#e0a030; background: #fff6e5",
}


def show_note(markup: str, kind: str = "note") -> None:
    """A boxed note (note | provenance | warning), styled inline as the report shows it; `markup` is HTML."""
    ipd.display(ipd.HTML(f'<div class="lk-{kind}" style="{NOTE_STYLE}{NOTE_COLOURS[kind]}"><p>{markup}</p></div>'))


def show_missing(missing: Sequence[str], lab: Lab) -> None:
    """One line: how many of the section's planned runs are not trained (their ids, and how to
    train them, folded away)."""
    if missing:
        how = ("training is off (<code>allow_train = False</code>; papermill: <code>-p allow_train True</code> trains them)"
               if not lab.allow_train else "they could not be trained")
        ids = ", ".join(f"<code>{html_escape(m)}</code>" for m in missing)
        show_note(f"<details><summary>{len(missing)} of this section's planned run(s) are not trained yet: the tables "
                  f"show the others.</summary>{how}; in <code>{html_escape(str(lab.store.root))}</code>: {ids}</details>")


SHORT_TABLE_ROWS = 10


def show_table(
    df: pd.DataFrame | None,
    key: str,
    caption: str,
    formats: dict | None = None,
    index: bool = False,
    absent: str = "nothing to show",
) -> None:
    """`df` as an HTML table with the id `tbl-<key>`; with no table (None), one line that says why."""
    if df is None:
        return show_note(f"<i>{html_escape(caption)}</i>: not shown, {html_escape(absent)}.")
    # A short table prints on one page; a long one breaks between rows rather than leave a page half empty.
    cls = "lk-table lk-short" if len(df) <= SHORT_TABLE_ROWS else "lk-table"
    st = df.style.set_uuid(f"tbl-{key}").set_caption(caption).set_table_attributes(f'class="{cls}"')
    if formats:
        st = st.format({k: v for k, v in formats.items() if k in df.columns}, na_rep="—")
    else:
        st = st.format(na_rep="—", precision=4)
    if text_cols := [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]:
        st = st.set_properties(subset=text_cols, **{"text-align": "left"})
    ipd.display(st if index else st.hide(axis="index"))


def show_figure(fig, key: str, caption: str, absent: str = "nothing to show") -> None:
    """`fig` with its caption as alternative text, then the caption with the id `fig-<key>`;
    with no figure (None), one line that says why."""
    if fig is None:
        return show_note(f"<i>Figure</i> ({html_escape(caption)}): not shown, {html_escape(absent)}.")
    alt = " ".join(BeautifulSoup(caption, "html.parser").get_text().split())
    ipd.display(fig, metadata={"image/svg+xml": {"alt": alt}, "image/png": {"alt": alt}})
    ipd.display(ipd.HTML(f'<p class="lk-caption" id="fig-{key}"><b>Figure.</b> {caption}</p>'))


def show_paragraphs(paragraphs: Sequence[str], heading: str = "") -> None:
    """Prose written from the runs (labkit.discussion): HTML paragraphs under an optional heading."""
    head = f"<h3>{html_escape(heading)}</h3>" if heading else ""
    ipd.display(ipd.HTML(head + "".join(f'<p class="lk-prose">{p}</p>' for p in paragraphs)))


def show_recipes(runs: Sequence[Run]) -> None:
    """Each configuration's recipe in words: the first in full, the others by what differs from it."""
    seen: dict[str, dict[str, str]] = {}
    for r in runs:
        seen.setdefault(ablation_key(r.name), recipe_parts(r.config))
    if not seen:
        return
    (first, base), *others = seen.items()
    lines = [f"<b><code>{first}</code></b>: " + " ".join(f"<b>{k}:</b> {v}." for k, v in base.items())]
    for key, parts in others:
        diff = " ".join(f"<b>{k}:</b> {v}." for k, v in parts.items() if v != base[k])
        rest = f"{diff} Otherwise as <code>{first}</code>." if diff else f"the recipe of <code>{first}</code>."
        lines.append(f"<b><code>{key}</code></b>: {rest}")
    show_note("<br>".join(lines), "provenance")


def export_depth_checkpoints(runs: Sequence[Run], out_dir) -> pd.DataFrame:
    """Write checkpoint-block-{2,3}.pth: the selected weights of the corrected depth runs, the seed
    best on validation; a run rendered from records has no weights, and nothing is written."""
    rows = []
    for lays in DEPTHS:
        rs = [r for r in runs if r.name == depth_name(lays, "corrected")]
        target = Path(out_dir) / f"checkpoint-block-{lays}.pth"
        best = max(rs, key=lambda r: (r.summary or {}).get("best_val_acc") or -1) if rs else None
        rows.append((str(target), best.id if best else "—", _export_checkpoint(best, target)))
    return pd.DataFrame(rows, columns=["file", "run", "status"])


def _export_checkpoint(run: Run | None, target: Path) -> str:
    if run is None:
        return "not written: run missing"
    if not run.checkpoint.is_file():
        return (
            "not written here: this report was rendered from the runs' records, which keep no weights (checkpoints "
            "stay out of git); training the run writes this file"
        )
    try:
        state = load_checkpoint(run.checkpoint)
    except CheckpointError as e:
        return f"not written: {e}"
    s = run.summary or {}
    record = {
        "model": evaluated_weights(state, run.config),
        "config": run.config.to_dict(),
        "run": run.id,
        "selected_epoch": s.get("selected_epoch"),
        "val_acc": s.get("best_val_acc"),
        "test_acc": s.get("test_acc"),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(target, record)  # atomic: a temp file, fsync, rename; none left behind if it fails
    return f"written: weights of epoch {s.get('selected_epoch')} (best validation accuracy)"
