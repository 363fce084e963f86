"""The lab's notebooks as committed: no outputs, one flat `parameters` cell, validation right after."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["00_summary", "01_data", "02_model", "03_depth_limit", "04_ablations", "05_final", "06_discussion"]
COMMON = {"profile": "full", "data_dir": None, "allow_train": True, "root": None, "runs_dir": None, "data_label": None}
# None: the profile's own numbers (full: 5 runs per configuration, 3 per depth configuration).
SEEDS = {"00_summary": None, "03_depth_limit": None, "04_ablations": None, "05_final": None, "06_discussion": None}
READ_ONLY = ("00_summary", "06_discussion")  # they only read the store


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _parameters(nb) -> dict:
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "exactly one cell must be tagged `parameters`"
    tree = ast.parse(cells[0].source)
    out = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), (
            f"the parameters cell holds only `name = literal` lines, found: {ast.unparse(node)}"
        )
        out[node.targets[0].id] = ast.literal_eval(node.value)  # raises unless a flat literal
    return out


def test_every_notebook_is_there():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    nb = _read(name)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell has outputs; commit notebooks cleared"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"


@pytest.mark.parametrize("name", NAMES)
def test_metadata_valid_for_papermill(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["language_info"]["name"] == "python"
    ids = [c.id for c in nb.cells]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", NAMES)
def test_parameters_are_flat_literals_with_full_defaults(name):
    params = _parameters(_read(name))
    for key, default in COMMON.items():
        if name in READ_ONLY and key == "allow_train":
            assert key not in params, f"{name} only reads the store: an allow_train parameter would be ignored"
            continue
        assert params.get(key, "MISSING") == default, f"{name}: parameter {key} should default to {default!r}"
    if name in SEEDS:
        assert params["seeds"] == SEEDS[name]
    if name in READ_ONLY:
        assert params["depth_seeds"] is None
    if name == "04_ablations":
        assert params["ablation"] == "lr_decay"


@pytest.mark.parametrize("name", NAMES)
def test_validation_right_after_parameters(name):
    nb = _read(name)
    i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    assert nb.cells[i].cell_type == "code"
    nxt = nb.cells[i + 1]
    assert nxt.cell_type == "code" and "N.open_lab(profile" in nxt.source
    if name in SEEDS:
        assert "check_seeds(seeds" in nxt.source
    if name == "04_ablations":
        assert 'N.check_choice("ablation"' in nxt.source


def test_the_lab_job_passes_each_notebook_only_parameters_it_declares():
    # an undeclared -p name is refused by the notebook's set-up cell (check_notebook_parameters)
    from labkit.job import jobs

    common = {"profile": "smoke", "data_dir": None, "allow_train": False, "root": None, "runs_dir": None}
    for job in jobs(common, seeds=2) + jobs(common, seeds=None):
        unknown = set(job.parameters) - set(_parameters(_read(job.notebook)))
        assert not unknown, f"{job.key}: {sorted(unknown)}"


def test_papermill_sees_the_parameters():
    papermill = pytest.importorskip("papermill")
    params = papermill.inspect_notebook(str(NOTEBOOKS / "04_ablations.ipynb"))
    assert {"profile", "data_dir", "allow_train", "root", "seeds", "ablation"} <= set(params)


# ---------------------------------------------------------------------------------------
# Bad parameters: each notebook's set-up cell, run in this process
# ---------------------------------------------------------------------------------------
# A kernel start costs seconds, so every bad value is checked here on the notebook's own
# cells run in-process: its parameters cell, the cell papermill injects (papermill's own
# translator writes it), then its set-up cell, with IPython's `In` holding those sources as
# a kernel's does (check_notebook_parameters reads it). That each mechanism holds in a real
# kernel is checked once each with papermill: a bad value and an unknown name in
# tests/test_reliability_params.py, a path here (test_a_path_that_cannot_be_written_fails_under_papermill).


def _set_up_error(name: str, params: dict, monkeypatch) -> tuple[BaseException, str]:
    """Run notebook `name`'s parameters cell, papermill's injected cell with `params`, and its
    set-up cell in-process; return the exception raised and the source of the cell it came from.
    allow_train=False unless `params` say otherwise: a check that lets a bad value through
    fails the test at once, without training in this process (the notebooks that only read take no allow_train)."""
    import IPython
    from papermill.translators import translate_parameters

    import labkit.notebook as N

    if name not in READ_ONLY:
        params = {"allow_train": False, **params}
    nb = _read(name)
    i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    sources = [nb.cells[i].source, translate_parameters("python3", "python", params, "Parameters"), nb.cells[i + 1].source]
    # In[0] is empty in a kernel; labkit's errors are shown as one line there (tested under papermill)
    shell = type("Shell", (), {"user_ns": {"In": ["", *sources]}, "set_custom_exc": lambda self, *a: None})()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    # figures' format, seaborn's theme, pandas' options: a notebook's, not this process's
    monkeypatch.setattr(N, "setup_notebook", lambda lab=None: None)
    ns: dict = {}
    for src in sources:
        try:
            exec(compile(src, f"<{name}>", "exec"), ns)
        except Exception as e:  # the test asserts on it
            return e, src
    pytest.fail(f"{name}: no error with {params}")


BAD_VALUES = [
    ("04_ablations", {"ablation": "batchnorm"}, "ablation must be one of"),
    ("04_ablations", {"profile": "huge"}, "profile must be one of"),
    ("04_ablations", {"seeds": 0}, "seeds must be a positive int"),
    ("04_ablations", {"allow_train": "no"}, "allow_train must be True or False"),
    ("04_ablations", {"data_label": 5}, "data_label must be a string or None, got int 5"),
    ("05_final", {"seeds": -1}, "seeds must be a positive int"),
    ("01_data", {"data_dir": 5}, "data_dir must be a path string or None, got int 5"),
    ("06_discussion", {"seeds": "5"}, "seeds must be a positive int"),
    ("00_summary", {"seeds": 0}, "seeds must be a positive int"),
    ("00_summary", {"depth_seeds": 0}, "seeds must be a positive int"),
    ("03_depth_limit", {"seeds": 0}, "seeds must be a positive int"),
    ("02_model", {"allow_train": 1}, "allow_train must be True or False"),
    ("02_model", {"root": 5}, "root must be the project's root folder"),
    ("02_model", {"runs_dir": 5}, "runs_dir must be a path string or None, got int 5"),
]


@pytest.mark.parametrize("name, params, message", BAD_VALUES, ids=[f"{n}-{next(iter(p))}" for n, p, _ in BAD_VALUES])
def test_bad_parameters_fail_in_the_set_up_cell(tmp_path, monkeypatch, name, params, message):
    """A bad value stops the notebook in the cell right after the parameters, with a clear error."""
    from labkit.config import ConfigError

    err, cell = _set_up_error(name, {"profile": "smoke", "root": str(tmp_path), **params}, monkeypatch)
    assert isinstance(err, ConfigError) and message in str(err), repr(err)
    assert "N.open_lab(" in cell  # the set-up cell, not the parameters
    assert not (tmp_path / "build").exists()  # nothing trained: the run store was never created


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameters_fail_in_the_set_up_cell(tmp_path, monkeypatch, name):
    """papermill only warns of a `-p` name the notebook does not declare; each notebook refuses it."""
    from labkit.config import ConfigError

    extra = {"allow_train": False} if name in READ_ONLY else {"lrate": 0.1}  # those only reading take no allow_train
    err, cell = _set_up_error(name, {"profile": "smoke", "root": str(tmp_path), **extra}, monkeypatch)
    assert isinstance(err, ConfigError) and f"unknown notebook parameter(s) {sorted(extra)}" in str(err), repr(err)
    assert "N.open_lab(" in cell
    assert not (tmp_path / "build").exists()


PATHS = [
    # notebook 03 writes its checkpoints in its last cell, after every run has trained
    ("03_depth_limit", {"checkpoints_dir": "{tmp}/a_file"}, "checkpoints_dir '{tmp}/a_file': {tmp}/a_file is a file"),
    ("03_depth_limit", {"checkpoints_dir": "{tmp}/a_file/ckpts"}, "checkpoints_dir '{tmp}/a_file/ckpts': {tmp}/a_file is a file"),
    ("03_depth_limit", {"checkpoints_dir": 5}, "checkpoints_dir must be a path string or None, got int 5"),
    # a run store below a file: found only when the first run was trained, its data loaded
    ("04_ablations", {"runs_dir": "{tmp}/a_file/runs"}, "runs_dir '{tmp}/a_file/runs': {tmp}/a_file is a file"),
    ("05_final", {"runs_dir": "{tmp}/a_file"}, "runs_dir '{tmp}/a_file': {tmp}/a_file is a file"),
    # folders that cannot be written (/sys refuses new files, to root too): found only when written
    ("03_depth_limit", {"checkpoints_dir": "/sys/labkit-checkpoints"}, "checkpoints_dir '/sys/labkit-checkpoints': cannot write in /sys ("),
    ("04_ablations", {"runs_dir": "/sys/labkit-runs", "allow_train": True}, "runs_dir '/sys/labkit-runs': cannot write in /sys ("),
]


def _paths(tmp_path: Path, params: dict, message: str) -> tuple[dict, str]:
    (tmp_path / "a_file").write_text("x")
    params = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in params.items()}
    return {"profile": "smoke", "root": str(tmp_path), "seeds": 1, **params}, message.format(tmp=tmp_path)


@pytest.mark.parametrize("name, params, message", PATHS)
def test_paths_that_cannot_be_written_fail_in_the_set_up_cell(tmp_path, monkeypatch, name, params, message):
    """A folder the notebook writes into is checked before anything trains, its parameter named."""
    from labkit.config import ConfigError

    params, message = _paths(tmp_path, params, message)
    err, cell = _set_up_error(name, params, monkeypatch)
    assert isinstance(err, ConfigError) and message in str(err), repr(err)
    assert "N.open_lab(" in cell
    assert not (tmp_path / "build").exists()  # nothing made: no data, no run store


def test_the_default_checkpoints_folder_is_checked_in_the_set_up_cell_too(tmp_path, monkeypatch):
    """checkpoints_dir None: a file where its folder goes was found only by the last cell, after every run had trained."""
    from labkit.config import ConfigError

    blocked = tmp_path / "build" / "smoke" / "check_points"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("x")
    err, cell = _set_up_error("03_depth_limit", {"profile": "smoke", "root": str(tmp_path), "seeds": 1}, monkeypatch)
    assert isinstance(err, ConfigError) and f"checkpoints folder {blocked} (checkpoints_dir None): {blocked} is a file" in str(err), repr(err)
    assert "N.open_lab(" in cell
    assert sorted(p.name for p in blocked.parent.iterdir()) == ["check_points"]  # no run store, nothing trained


def test_a_path_that_cannot_be_written_fails_under_papermill(tmp_path):
    """The same check in a real kernel: papermill stops in the set-up cell."""
    papermill = pytest.importorskip("papermill")
    name, params, message = PATHS[1]
    params, message = _paths(tmp_path, params, message)
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(
            str(NOTEBOOKS / f"{name}.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters=params,
            kernel_name="python3",
            cwd=str(ROOT),
            progress_bar=False,
        )
    assert e.value.ename == "ConfigError" and "N.open_lab(" in e.value.source  # the set-up cell
    assert message in e.value.evalue and e.value.traceback == [f"ConfigError: {e.value.evalue}"]  # one line
    assert not (tmp_path / "build").exists()


# ---------------------------------------------------------------------------------------
# What a notebook shows: progress, figures, notes
# ---------------------------------------------------------------------------------------


def test_a_kernel_shows_one_line_per_run_and_each_figure_once(tmp_path, synth_root):
    """In a kernel, training progress is one output updated in place (papermill keeps its last
    state: one line, no refresh spam, no IProgress warning), and a figure a helper returns is
    drawn once, where it is displayed, never again by the inline backend."""
    papermill = pytest.importorskip("papermill")
    nb = nbformat.v4.new_notebook()
    nb.metadata = _read("02_model").metadata
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from labkit import TrainConfig, load_cifar10\nfrom labkit import figures as F\nfrom labkit import notebook as N\nfrom labkit import methods as M\nfrom labkit.train import train\n"
            f"cfg = TrainConfig(width=8, lays=(1, 1, 1, 1), batch_size=200, epochs=3, device='cpu', channels_last=False)\n"
            f"train(cfg, load_cifar10({str(synth_root)!r}, allow_download=False), log=None)\nNone"
        ),
        nbformat.v4.new_code_cell("N.setup_notebook()\nfloor = M.loss_floor()['analytic']\nfig = F.plot_loss_floor(M.loss_floor_table(floor), floor)"),
        nbformat.v4.new_code_cell("N.show_figure(fig, 'floor', 'The floor.')"),
        nbformat.v4.new_code_cell("fig"),  # a cell's value: drawn there, once
    ]
    nbformat.write(nb, tmp_path / "in.ipynb")
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False)
    cells = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    train_out, made, shown, value = (c.outputs for c in cells)
    assert [o.output_type for o in train_out] == ["display_data"], train_out
    line = train_out[0].data["text/plain"]
    assert line.startswith("train ") and "epoch 3/3, loss " in line and "val " in line, line
    assert made == []  # made, not drawn
    images = [o for o in shown if "image/svg+xml" in o.get("data", {})]
    assert len(images) == 1 and images[0].metadata["image/svg+xml"]["alt"] == "The floor."
    assert [o.output_type for o in value] == ["execute_result"] and "image/svg+xml" in value[0].data


def _shown(monkeypatch) -> list[str]:
    """What IPython.display.display shows, as HTML strings."""
    import IPython.display

    seen: list[str] = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **k: seen.append(getattr(obj, "data", str(obj))))
    return seen


def test_notes_are_styled_where_shown_and_escape_what_they_quote(tmp_path, monkeypatch):
    import labkit.figures as F
    import labkit.methods as M
    import labkit.notebook as N
    from labkit.data import DataNotFound
    from labkit.lab import Lab

    seen = _shown(monkeypatch)
    lab = Lab("full", tmp_path / "none", root=tmp_path, log=None)

    def offline(*a):
        raise DataNotFound(tmp_path / "none", "the download failed: URLError: <urlopen error [Errno -3] Temporary failure>.")

    monkeypatch.setattr(lab, "data", offline)
    assert N.load_data(lab) == (None, None)
    note = seen.pop()
    assert 'style="font-size: 12px' in note and "lk-warning" in note  # styled in JupyterLab too, not only in the report
    assert "URLError: &lt;urlopen error [Errno -3] Temporary failure&gt;" in note  # escaped, not swallowed as a tag
    assert "<code>data_dir</code>" in note and "-p data_dir DIR" in note and "--data-dir" not in note  # its own parameter
    N.show_table(M.class_counts(None), "class-counts", "Images per class", absent=N.NO_DATA)
    N.show_figure(F.plot_samples(None), "samples", "Six images of each class", absent=N.NO_DATA)
    assert [s.count("\n") for s in seen] == [0, 0] and all("not shown, the data are not on this machine" in s for s in seen)
    seen.clear()
    N.show_missing(["run-<1>"], Lab("full", tmp_path / "none", root=tmp_path, allow_train=False, log=None))
    assert "run-&lt;1&gt;" in seen[0] and "allow_train = False" in seen[0] and "1 of this section" in seen[0]


def test_a_notebook_on_a_cpu_refuses_hours_of_training_naming_its_parameters(tmp_path, monkeypatch):
    import torch

    import labkit.lab
    import labkit.notebook as N
    from labkit.lab import Lab, LabError, final_runs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(labkit.lab, "measure_gflops", lambda *a, **k: 150.0)
    lab = Lab("full", tmp_path / "none", root=tmp_path, log=None)
    with pytest.raises(LabError, match=r"about \d+ h of training on this CPU.*allow_train = False.*allow_cpu = True.*-p allow_cpu True"):
        N.get_runs(lab, final_runs(1))
    assert not (tmp_path / "report").exists()  # nothing trained, nothing made
