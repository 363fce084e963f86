"""Bad parameters, from the CLI, from Python and from papermill `-p`: unknown keys, wrong
types, zero or negative lr/batch/epochs, dropout outside [0, 1), `lays` of the wrong length,
unknown stem or optimiser. Each is rejected before anything trains, naming the parameter.
(tests/test_config.py and tests/test_cli.py hold the basic validation cases.)"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from labkit.cli import main
from labkit.config import ConfigError, TrainConfig, parse_overrides, preset
from labkit.lab import Lab
from labkit.notebook import check_notebook_parameters
from labkit.runs import RunStore

T = importlib.import_module("labkit.train")
ROOT = Path(__file__).resolve().parents[1]

# (--set values, the parameter the error must name)
BAD_SETS = [
    (["foo=1"], "foo"),
    (["lrate=0.1"], "lrate"),
    (["lr=fast"], "lr"),
    (["lr=[0.1]"], "lr"),
    (["lr=None"], "lr"),
    (["epochs=2.5"], "epochs"),
    (["epochs='3'"], "epochs"),
    (["batch_size=64.0"], "batch_size"),
    (["batch_size=True"], "batch_size"),
    (["dropout=high"], "dropout"),
    (["lr=0"], "lr"),
    (["lr=-0.001"], "lr"),
    (["lr=inf"], "lr"),
    (["batch_size=0"], "batch_size"),
    (["batch_size=-32"], "batch_size"),
    (["epochs=0"], "epochs"),
    (["epochs=-5"], "epochs"),
    (["dropout=1.0"], "dropout"),
    (["dropout=1.5"], "dropout"),
    (["dropout=-0.1"], "dropout"),
    (["lays=[1,1,1]"], "lays"),
    (["lays=[1,1,1,1,1]"], "lays"),
    (["lays=[]"], "lays"),
    (["lays=2"], "lays"),
    (["stem=5x5"], "stem"),
    (["stem=7X7"], "stem"),
    (["optimizer=rmsprop"], "optimizer"),
    (["optimizer=Adam"], "optimizer"),
]
# CLI flags of `labkit train` itself
BAD_FLAGS = [
    (["--epochs", "0"], "epochs"),
    (["--epochs", "-1"], "epochs"),
    (["--checkpoint-every", "-1"], "--checkpoint-every"),
    (["--synthetic-size", "0"], "--synthetic-size"),
    (["--preset", "fast"], "preset"),
    (["--name", "../escape"], "run name"),
    (["--name", ".hidden"], "run name"),
]


def _ids(cases):
    return [" ".join(a) for a, _ in cases]


def _as_flags(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


@pytest.mark.parametrize(
    "args, name", [(_as_flags(sets), n) for sets, n in BAD_SETS] + BAD_FLAGS, ids=_ids(BAD_SETS) + _ids(BAD_FLAGS)
)
def test_cli_rejects_before_anything_runs(tmp_path, capsys, args, name):
    argv = ["train", "--synthetic", "--set", "width=8", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")]
    assert main([*argv, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and name in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()  # nothing made, nothing trained


@pytest.mark.parametrize("sets, name", BAD_SETS, ids=_ids(BAD_SETS))
def test_python_rejects_naming_the_parameter(sets, name):
    changes = parse_overrides(sets)
    for make in (lambda: TrainConfig.from_dict(changes), lambda: preset("modern", **changes), lambda: preset("seed").replace(**changes)):
        with pytest.raises(ConfigError, match=name):
            make()
    # The constructor itself: unknown keys are Python's TypeError, still naming the key.
    with pytest.raises((ConfigError, TypeError), match=name):
        TrainConfig(**changes)


def test_python_entry_points_reject_before_training(tmp_path, synth_data, tiny_config, monkeypatch):
    def no_training(*a, **kw):
        raise AssertionError("training started")

    cfg = tiny_config(epochs=1)
    for bad in (-1, 1.5, "1", True):
        with pytest.raises(ConfigError, match="checkpoint_every"):
            T.train(cfg, synth_data, run_dir=tmp_path / "t", checkpoint_every=bad, progress=False, log=None)
    assert not (tmp_path / "t").exists()
    monkeypatch.setattr(T, "train", no_training)
    for name in ("a/b", "../x", "", "run name", "é"):
        with pytest.raises(ConfigError, match="run name"):
            RunStore(tmp_path / "runs").get(cfg, name, synth_data, progress=False, log=None)
    with pytest.raises(ConfigError, match="init_from"):
        RunStore(tmp_path / "runs").get(cfg.replace(init_from="../x"), "r", synth_data, progress=False, log=None)
    with pytest.raises(ConfigError, match="profile"):
        Lab("huge", root=tmp_path)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------
# papermill -p
# ---------------------------------------------------------------------------------------
# One notebook run in a real kernel per mechanism (a kernel start costs seconds): a bad value
# and an unknown name here, a path that cannot be written in tests/test_notebooks.py. Every
# other bad value, and an unknown name in each notebook, is checked there on the notebooks'
# own set-up cells run in-process.


def _papermill(src: Path, out: Path, params: dict, cwd: Path = ROOT):
    papermill = pytest.importorskip("papermill")
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(str(src), str(out), parameters=params, kernel_name="python3", cwd=str(cwd), progress_bar=False)
    return e.value


def test_papermill_bad_value_stops_the_validation_cell_in_one_line(tmp_path):
    import nbformat

    err = _papermill(ROOT / "notebooks" / "05_final.ipynb", tmp_path / "out.ipynb", {"profile": "smoke", "root": str(tmp_path), "seeds": -1})
    assert err.ename == "ConfigError" and "seeds" in err.evalue
    assert err.exec_count == 3  # parameters, papermill's injected cell, then validation: nothing else ran
    assert not (tmp_path / "build").exists()  # no run store, no data, nothing trained
    # labkit's line, not a traceback through labkit's code: in papermill's error and in the executed notebook
    line = "ConfigError: seeds must be a positive int (runs per configuration), got -1"
    assert err.traceback == [line] and str(err).rstrip().endswith(f'Exception encountered at "In [3]":\n{line}')
    cells = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    assert [o.traceback for c in cells for o in c.get("outputs", []) if o.output_type == "error"] == [[line]]


def test_check_notebook_parameters_compares_injected_with_declared():
    declared = 'profile = "full"\nseeds = 3\n'
    check_notebook_parameters(["", declared, "# Parameters\nprofile = \"smoke\"\nseeds = 1\n"])  # known: fine
    check_notebook_parameters(["", declared])  # run without papermill parameters: fine
    with pytest.raises(ConfigError) as e:
        check_notebook_parameters(["", declared, '# Parameters\nprofile = "smoke"\nseed = 1\nlr = 0.1\n'])
    assert "['lr', 'seed']" in str(e.value) and "['profile', 'seeds']" in str(e.value)


def test_lab_notebooks_refuse_unknown_parameters(tmp_path):
    """papermill itself only warns of an unknown `-p` name: a lab notebook's set-up cell
    (labkit.notebook.open_lab, through check_notebook_parameters and the kernel's `In`) refuses it."""
    err = _papermill(
        ROOT / "notebooks" / "04_ablations.ipynb",
        tmp_path / "out.ipynb",
        {"profile": "smoke", "root": str(tmp_path), "seeds": 1, "lrate": 0.1},
    )
    assert err.ename == "ConfigError" and "unknown notebook parameter(s) ['lrate']" in err.evalue
    assert err.exec_count == 3 and "N.open_lab(" in err.source  # the set-up cell: nothing else ran
    assert not (tmp_path / "build").exists()
