"""What a notebook's cells call: its set-up (parameters checked, the Lab opened), its runs, and display."""

from __future__ import annotations

import ast
import numbers
import os
import sys
from collections.abc import Sequence
from html import escape as html_escape
from pathlib import Path

import pandas as pd
from bs4 import BeautifulSoup

from . import paper
from .config import ConfigError, TrainConfig, check_choice, check_positive_int, did_you_mean
from .data import DataError, DataNotFound, Dataset
from .lab import (
    DEPTHS,
    Lab,
    RunMissing,
    ablation_key,
    ablation_runs,
    depth_name,
    depth_runs,
    final_runs,
    modern_runs,
    project_root,
)
from .runs import Run
from .tables import describe_recipe, provenance

__all__ = ["check_choice"]  # notebook 04 checks its `ablation` with it


def check_seeds(seeds, lab: Lab | None = None) -> int:
    """`seeds` checked; None means the profile's own number (with `lab`)."""
    if seeds is None and lab is not None:
        return lab.profile.seeds
    return check_positive_int("seeds", seeds, "runs per configuration")


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_number(name: str, value, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= minimum:
        raise ConfigError(f"{name} must be a number >= {minimum:g}, got {type(value).__name__} {value!r}")
    return float(value)


def open_lab(
    profile: str,
    data_dir: str | None = None,
    runs_dir: str | None = None,
    allow_train: bool = True,
    root: str | None = None,
    data_label: str | None = None,
    allow_cpu: bool = False,
) -> Lab:
    """Validate a notebook's common parameters and open its Lab; a bad value raises ConfigError.

    Called in the cell after `parameters`: it also refuses a papermill `-p` name the
    notebook does not declare (papermill itself only warns). Relative paths are taken from
    the project's folder, wherever the kernel runs (from_project). `data_label` names data
    that are not the official files (None: $LABKIT_DATA_LABEL); it is read here once, into
    lab.data_label, which the provenance, source table and data caveat take it from.
    """
    from .lab import get_profile

    _errors_in_one_line()
    check_notebook_parameters()
    check_bool("allow_train", allow_train)
    check_bool("allow_cpu", allow_cpu)
    for name, v in (("data_dir", data_dir), ("runs_dir", runs_dir)):
        if v is not None and not isinstance(v, str):
            raise ConfigError(f"{name} must be a path string or None, got {type(v).__name__} {v!r}")
    if data_label is not None and not isinstance(data_label, str):
        raise ConfigError(f"data_label must be a string or None, got {type(data_label).__name__} {data_label!r}")
    if root is not None and not isinstance(root, str):
        raise ConfigError(f"root must be the project's root folder (a path string, or None to find it), got {root!r}")
    data_dir, runs_dir, root = (from_project(v) for v in (data_dir, runs_dir, root))
    if root is None:  # relative, as "." was: no machine's folders in an executed notebook
        root = os.path.relpath(project_root())
    if not Path(root).is_dir():
        raise ConfigError(f"root must be the project's root folder (a path string, or None to find it), got {root!r}")
    prof = get_profile(profile)
    store = Path(runs_dir) if runs_dir else Path(root) / prof.runs_dir
    # A file where the run store goes is refused here, before anything runs: the store is
    # made only when the first run trains, after its data are loaded.
    where = f"runs_dir {runs_dir!r}" if runs_dir else f"the {prof.name} profile's run store {store}"
    _check_folder(store, where, "the runs (made when a run is trained)", write=allow_train)
    data_label = data_label or os.environ.get("LABKIT_DATA_LABEL") or None
    lab = Lab(profile, data_dir=data_dir, runs_dir=runs_dir, allow_train=allow_train, root=root, log=stderr_log, data_label=data_label,
              allow_cpu=allow_cpu)
    setup_notebook(lab)
    return lab


def from_project(path: str | None) -> str | None:
    """A path given in a notebook's parameters, relative ones taken from the project's folder
    (the one holding notebooks/): the lab job runs the notebooks there and gives its paths
    relative to it, while JupyterLab runs them in notebooks/, where the same path would name
    another folder (a second run store, trained all over again)."""
    if path is None or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.relpath(project_root()), path))


def depth_checkpoints_dir(lab: Lab, checkpoints_dir: str | Path | None) -> Path:
    """Notebook 03's `checkpoints_dir`, checked in its set-up cell (the checkpoints are
    written in its last cell, after the runs have trained). None: check_points/ beside the
    profile's report folder (the project's own for the full profile)."""
    if isinstance(checkpoints_dir, Path):  # this cell run again: the folder it gave the first time
        return checkpoints_dir
    if checkpoints_dir is not None and not isinstance(checkpoints_dir, str):
        raise ConfigError(f"checkpoints_dir must be a path string or None, got {type(checkpoints_dir).__name__} {checkpoints_dir!r}")
    if checkpoints_dir is None:
        path = lab.report_dir.parent / "check_points"
        _check_folder(path, f"the {lab.profile.name} profile's checkpoints folder {path} (checkpoints_dir None)", "the checkpoints")
    else:
        path = Path(from_project(checkpoints_dir))
        _check_folder(path, f"checkpoints_dir {checkpoints_dir!r}", "the checkpoints")
    return path


def _check_folder(folder: Path, where: str, what: str, write: bool = True) -> None:
    """A folder parameter that could never be made (a file at or above it) or, with `write`,
    written into: refused by name in the set-up cell, before anything runs."""
    import tempfile

    from .data import file_in_the_way, in_the_way

    blocker = file_in_the_way(folder)
    if blocker is not None:
        raise ConfigError(f"{where}: {in_the_way(blocker)}, not a folder; give a folder for {what}")
    if write:  # a probe without a name, gone when closed: nothing is left behind
        there = next(p for p in (folder, *folder.parents) if p.is_dir())
        try:
            tempfile.TemporaryFile(dir=there).close()
        except OSError as e:
            raise ConfigError(f"{where}: cannot write in {there} ({e.strerror or e}); give a folder you can write to for {what}") from None


def _errors_in_one_line() -> None:
    """In a kernel, labkit's own errors show as their one line, not as a traceback through
    labkit's code: in the notebook, and in papermill's error (`%tb` still shows the traceback)."""
    from IPython import get_ipython

    from .checkpoint import CheckpointError, DiskFullError
    from .data import DataError
    from .runs import RunError

    def one_line(shell, etype, value, tb, tb_offset=None):
        shell._showtraceback(etype, value, [f"{etype.__name__}: {value}"])  # what ipykernel sends as the error

    if (shell := get_ipython()) is not None:
        shell.set_custom_exc((ConfigError, DataError, RunError, CheckpointError, DiskFullError), one_line)


def stderr_log(msg: str) -> None:
    """Run logs go to stderr: live in the terminal of `labkit lab`, left out of the report.

    Per-epoch lines are dropped: the epoch bar shows them, and metrics.csv keeps them.
    """
    if not msg.startswith("epoch "):
        print(msg, file=sys.stderr, flush=True)


def setup_notebook(lab: Lab | None = None) -> None:
    """Figures as SVG, seaborn's theme, wide tables; one thread for tiny nets."""
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
    if lab is not None and lab.profile.synthetic:
        import torch

        if not torch.cuda.is_available():
            # Width-8 nets: a second OpenMP thread on a busy small machine slows them down.
            torch.set_num_threads(1)


# What a notebook says when it would train for long on a CPU: its own parameters, not CLI flags.
NOTEBOOK_CPU_HOW = (
    "Set allow_train = False in the parameters cell to show the recorded runs only, profile = \"smoke\" for a check in "
    "minutes, or allow_cpu = True to train anyway (papermill: -p allow_train False, -p profile smoke, -p allow_cpu True)."
)


def get_runs(lab: Lab, pairs: Sequence[tuple[str, TrainConfig]]) -> tuple[list[Run], list[str]]:
    """The finished runs of `pairs` (trained if the lab allows), and the ids of missing ones.
    On a CPU, training that would take long is refused first (Lab.refuse_long_cpu_training)."""
    missing_rows = [("", n, lab.config(c)) for n, c in pairs if not lab.finished(n, lab.config(c))]
    if (estimate := lab.refuse_long_cpu_training(missing_rows, NOTEBOOK_CPU_HOW)) and lab.log:
        lab.log(f"training: {estimate}")
    lab.prefetch(pairs)  # with several GPUs: the missing runs trained side by side, one process per GPU
    runs, missing = [], []
    for i, (name, cfg) in enumerate(pairs, 1):
        if lab.allow_train and not lab.finished(name, lab.config(cfg)):
            stderr_log(f"training run {i}/{len(pairs)}: {lab.store.run_id(lab.config(cfg), name)} ({lab.config(cfg).epochs} epochs)")
        try:
            runs.append(lab.run(name, cfg))
        except RunMissing:
            missing.append(lab.store.run_id(lab.config(cfg), name))
    return runs, missing


def summary_runs(lab: Lab, seeds: int, depth_seeds: int) -> tuple[tuple[list[Run], list[Run], list[Run], list[Run]], list[str]]:
    """Notebook 00's runs: (ablation, final, depth, modern) runs, and the ids of missing ones.

    Every ablation row once (the baseline belongs to each group), `seeds` runs each, as
    notebooks 04 and 05 run them; the depths with `depth_seeds`, as notebook 03."""
    every_row = list({pair: None for g in paper.ABLATION_GROUPS for pair in ablation_runs(g, seeds)})
    got = [get_runs(lab, pairs) for pairs in (every_row, final_runs(seeds), depth_runs(depth_seeds), modern_runs(seeds))]
    return tuple(runs for runs, _ in got), [m for _, missing in got for m in missing]


NOTE_STYLE = "font-size: 12px; padding: 4px 10px; margin: 0.5em 0; border-left: 4px solid "


NOTE_COLOURS = {"note": "#5b8bd1; background: #f4f7fb", "provenance": "#5b8bd1; background: #f4f7fb", "warning": "#e0a030; background: #fff6e5"}


def show_note(markup: str, kind: str = "note") -> None:
    """A boxed note (kind: note | provenance | warning), styled inline so that JupyterLab shows
    it as the report does. `markup` is HTML: put any text into it through html.escape."""
    from IPython.display import HTML, display

    display(HTML(f'<div class="lk-{kind}" style="{NOTE_STYLE}{NOTE_COLOURS[kind]}"><p>{markup}</p></div>'))


def show_missing(missing: Sequence[str], lab: Lab) -> None:
    if missing:
        items = "".join(f"<li><code>{html_escape(m)}</code></li>" for m in missing)
        show_note(
            f"<b>{len(missing)} run(s) missing</b> from <code>{html_escape(str(lab.store.root))}</code>, and training is off "
            "(<code>allow_train = False</code>; papermill: <code>-p allow_train True</code> trains them); "
            f"the tables below leave them out:<ul>{items}</ul>",
            "warning",
        )


def show_table(df: pd.DataFrame | None, key: str, caption: str, formats: dict | None = None, index: bool = False,
               absent: str = "nothing to show") -> None:
    """A pandas-rendered HTML table with a stable id (`tbl-<key>`) the tests look for; with no
    table (None), one line that says why (`absent`)."""
    from IPython.display import display

    if df is None:
        return show_note(f"<i>{html_escape(caption)}</i>: not shown, {html_escape(absent)}.")
    st = df.style.set_uuid(f"tbl-{key}").set_caption(caption).set_table_attributes('class="lk-table"')
    if formats:
        st = st.format({k: v for k, v in formats.items() if k in df.columns}, na_rep="—")
    else:
        st = st.format(na_rep="—", precision=4)
    text_cols = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if text_cols:
        st = st.set_properties(subset=text_cols, **{"text-align": "left"})
    if not index:
        st = st.hide(axis="index")
    display(st)


def show_figure(fig, key: str, caption: str, absent: str = "nothing to show") -> None:
    """Display a figure, its caption as its alternative text, then the caption with a stable id
    (`fig-<key>`); with no figure (None), one line that says why (`absent`)."""
    from IPython.display import HTML, display

    if fig is None:
        return show_note(f"<i>Figure</i> ({html_escape(caption)}): not shown, {html_escape(absent)}.")
    alt = " ".join(BeautifulSoup(caption, "html.parser").get_text().split())
    display(fig, metadata={"image/svg+xml": {"alt": alt}, "image/png": {"alt": alt}})
    display(HTML(f'<p class="lk-caption" id="fig-{key}"><b>Figure.</b> {caption}</p>'))


def show_provenance(runs: Sequence[Run], lab: Lab) -> None:
    p = provenance(runs, lab)
    show_note("<br>".join(f"<b>{html_escape(k)}:</b> {html_escape(v)}" for k, v in p.items()), "provenance")


def show_recipes(runs: Sequence[Run]) -> None:
    """Each configuration's recipe in words, one line per run name (seeds left out)."""
    seen: dict[str, str] = {}
    for r in runs:
        seen.setdefault(ablation_key(r.name), describe_recipe(r.config))
    if seen:
        show_note("<br>".join(f"<b><code>{k}</code></b>: {v}" for k, v in seen.items()), "provenance")


def load_data(lab: Lab) -> tuple[Dataset | None, Dataset | None]:
    """Notebook 01's data: the seed split, and all five training batches for the channel
    statistics; never downloaded with training off (a render from records). Without data,
    a note that says why in the notebook's own terms, and (None, None)."""
    try:
        if lab.profile.synthetic or lab.allow_train:
            return lab.data("seed"), lab.data("full")
        from .data import load_cifar10

        return load_cifar10(lab.data_dir, "seed", allow_download=False), load_cifar10(lab.data_dir, "full", allow_download=False)
    except DataNotFound as e:
        show_note(
            f"No CIFAR-10 batches at <code>{html_escape(str(e.folder))}</code> ({html_escape(e.why)}), so this section shows "
            "what the runs recorded of their data, and no images or statistics. To show them, set <code>data_dir</code> in "
            "the parameters cell to a folder holding <code>cifar-10-batches-py</code> (papermill: <code>-p data_dir DIR</code>), "
            "or <code>LABKIT_DATA</code>.",
            "warning" if lab.allow_train else "note",
        )
    except DataError as e:
        show_note(f"<b>The data could not be loaded</b>, so this section shows no images or statistics: {html_escape(str(e))}", "warning")
    return None, None


NO_DATA = "the data are not on this machine (see above)"


def recorded_source(lab: Lab) -> dict | None:
    """The data record of the first finished run in the lab's store (None: no run has one):
    what the recorded runs were trained on, shown when the data themselves are not there."""
    for r in lab.store.all():
        if r.finished and isinstance((r.summary or {}).get("data"), dict):
            return r.summary["data"]
    return None


def export_depth_checkpoints(runs: Sequence[Run], out_dir) -> pd.DataFrame:
    """Write check_points/checkpoint-block-{2,3}.pth: the selected weights of the corrected runs.

    Of several seeds, the one with the best validation accuracy is taken (selection on
    validation only). A run rendered from records has no checkpoint.pt: then nothing is written.
    """
    from .checkpoint import CheckpointError, evaluated_weights, load_checkpoint, save_checkpoint

    out_dir = Path(out_dir)
    rows = []
    for lays in DEPTHS:
        rs = [r for r in runs if r.name == depth_name(lays, "corrected")]
        target = out_dir / f"checkpoint-block-{lays}.pth"
        if not rs:
            rows.append({"file": str(target), "run": "—", "status": "not written: run missing"})
            continue
        best = max(rs, key=lambda r: (r.summary or {}).get("best_val_acc") or -1)
        if not best.checkpoint.is_file():
            rows.append({"file": str(target), "run": best.id, "status": "not written here: this report was rendered from the runs' records, which "
                         "keep no weights (checkpoints stay out of git); the lab job that trains the run writes this file"})
            continue
        try:
            state = load_checkpoint(best.checkpoint)
        except CheckpointError as e:
            rows.append({"file": str(target), "run": best.id, "status": f"not written: {e}"})
            continue
        weights = evaluated_weights(state, best.config)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(  # atomic: a temp file, fsync, rename; none left behind if it fails
            target,
            {
                "model": weights,
                "config": best.config.to_dict(),
                "run": best.id,
                "selected_epoch": (best.summary or {}).get("selected_epoch"),
                "val_acc": (best.summary or {}).get("best_val_acc"),
                "test_acc": (best.summary or {}).get("test_acc"),
            },
        )
        rows.append({"file": str(target), "run": best.id, "status": f"written: weights of epoch {(best.summary or {}).get('selected_epoch')} (best validation accuracy)"})
    return pd.DataFrame(rows)


def _assigned_names(source: str) -> set[str] | None:
    """Names a cell of plain `name = value` lines assigns; None if it is not such a cell."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names = set()
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets)):
            return None
        names.update(t.id for t in node.targets)
    return names


def check_notebook_parameters(history: list[str] | None = None) -> None:
    """In a notebook run by papermill: refuse parameters the notebook does not declare.

    papermill only warns about an unknown `-p name value` and injects it anyway, so a typo
    (`-p seed 2` for `seeds`) would silently run with the defaults. Called in the cell after
    the `parameters` cell, this compares the names papermill injected (its cell opens with
    `# Parameters`) with those the `parameters` cell, run just before it, declares.
    `history`: the kernel's cell sources in order (default: IPython's `In`).
    """
    if history is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
        history = list(shell.user_ns.get("In", [])) if shell is not None else []
    injected = [i for i, src in enumerate(history) if i > 0 and src.lstrip().startswith("# Parameters")]
    if not injected:
        return  # not run by papermill, or run without parameters
    i = injected[-1]
    declared, given = _assigned_names(history[i - 1]), _assigned_names(history[i])
    if declared is None or given is None:
        return  # cells run by hand in another order: nothing to compare
    unknown = sorted(given - declared)
    if unknown:
        raise ConfigError(
            f"unknown notebook parameter(s) {unknown} (papermill -p){did_you_mean(unknown[0], declared)}; this notebook takes {sorted(declared)}"
        )
