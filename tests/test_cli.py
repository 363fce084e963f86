"""`python -m labkit`: train, list runs, reject bad overrides."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.cli import main
from labkit.synthetic import make_synthetic_cifar10

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--preset", "seed", "--epochs", "2", "--synthetic", "--synthetic-size", "50", "--set", "width=8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run through a real `python -m labkit train` subprocess."""
    tmp = tmp_path_factory.mktemp("cli")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("LABKIT_DATA", None)
    env.pop("LABKIT_RUNS", None)
    args = [sys.executable, "-m", "labkit", *TRAIN, "--set", "device=cpu", "--runs-dir", "runs", "--data-dir", "data"]
    out = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    return tmp, out


def test_train_prints_epochs_and_writes_the_run(trained):
    tmp, out = trained
    lines = out.stdout.splitlines()
    epoch_lines = [ln for ln in lines if ln.lstrip().startswith("epoch")]
    assert len(epoch_lines) == 2, out.stdout
    assert "1/2" in epoch_lines[0] and "2/2" in epoch_lines[1]
    assert lines[0].startswith("run seed-") and lines[-1].startswith("done: seed-")
    assert not [ln for ln in lines if "nothing trained here" in ln or ln.startswith("note:")]  # synthetic data say what they are
    (run_dir,) = (tmp / "runs").iterdir()
    assert {"config.json", "metrics.csv", "checkpoint.pt", "summary.json"} <= {p.name for p in run_dir.iterdir()}
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    cfg = json.loads((run_dir / "config.json").read_text())["config"]
    assert cfg["width"] == 8 and cfg["epochs"] == 2 and cfg["seed_extra_block"] and cfg["softmax_head"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train_images"] == 200 and summary["selected_epoch"] == 2
    assert summary["data"]["official"] is False
    assert (tmp / "data" / "cifar-10-batches-py" / "test_batch").is_file()


def test_second_train_returns_the_finished_run(trained, capsys, monkeypatch):
    tmp, _ = trained
    monkeypatch.chdir(tmp)
    assert main([*TRAIN, "--set", "device=cpu", "--runs-dir", "runs", "--data-dir", "data"]) == 0
    out = capsys.readouterr().out
    assert "done: seed-" in out
    assert not [ln for ln in out.splitlines() if ln.lstrip().startswith("epoch")]
    assert ": finished already; its result is used, nothing trained here (--retrain trains it again)" in out


def test_train_without_a_validation_set_prints_no_nan(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--synthetic", "--synthetic-size", "64", "--runs-dir", "runs", "--epochs", "1"]
    args += ["--set", "device=cpu", "--set", "width=8", "--set", "batch_size=64", "--set", "split=full"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    (epoch,) = [ln for ln in lines if ln.lstrip().startswith("epoch")]
    assert "val_acc" not in epoch and "nan" not in epoch, epoch
    assert "no validation set" in lines[-1] and "None" not in lines[-1], lines[-1]
    # with one, its accuracy shows, to four places
    assert main([*args[:-2], "--set", "split=seed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.search(r"val_acc \d\.\d{4}  ", [ln for ln in lines if ln.lstrip().startswith("epoch")][0])
    assert re.search(r"val_acc \d\.\d{4}  test_acc", lines[-1]), lines[-1]


def _copy_as(run_dir: Path, store: Path, name: str) -> Path:
    """A copy of a run under another name: its folder and its config.json say so (as a run
    trained under that name would; RunStore.load checks that they agree)."""
    d = store / f"{name}-{run_dir.name.rsplit('-', 1)[1]}"
    shutil.copytree(run_dir, d)
    meta = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**meta, "name": name}))
    return d


def test_runs_prints_a_table(trained, capsys):
    tmp, _ = trained
    assert main(["runs", "--runs-dir", str(tmp / "runs")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["run", "finished", "epochs"]
    (run_dir,) = (tmp / "runs").iterdir()
    assert len(out) == 2 and out[1].split()[0] == run_dir.name and "True" in out[1]


def test_runs_says_how_far_an_unfinished_run_got(trained, tmp_path, capsys):
    import shutil

    tmp, _ = trained
    (run_dir,) = (tmp / "runs").iterdir()
    shutil.copytree(run_dir, tmp_path / run_dir.name)
    (tmp_path / run_dir.name / "summary.json").unlink()  # as if stopped after its 2 epochs of 2
    meta = json.loads((run_dir / "config.json").read_text())
    meta["config"]["device"] = "auto"  # an execution setting: the same run
    (tmp_path / run_dir.name / "config.json").write_text(json.dumps(meta))
    begun = tmp_path / f"begun-{run_dir.name.rsplit('-', 1)[1]}"
    begun.mkdir()  # no checkpoint yet
    (begun / "config.json").write_text(json.dumps({**meta, "name": "begun"}))
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # where it ran, as a finished run shows it, from its checkpoint (not the config's "auto")
    assert lines[2].split()[1:3] == ["False", "2/2"] and lines[2].split()[-1] == "cpu"
    assert lines[1].split()[:3] == [begun.name, "False", "0/2"] and lines[1].split()[-1] == "—"


def test_runs_set_aside_moves_only_the_named_code_and_never_overwrites(trained, tmp_path, capsys):
    import fcntl
    import shutil

    tmp, _ = trained
    (run_dir,) = (tmp / "runs").iterdir()
    store = tmp_path / "store"
    ids = {}
    for name, version in (("a", "3887dc1"), ("b", "3887dc1+dropout-eager"), ("c", "8721feb"), ("d", "3887dc12")):
        ids[name] = _copy_as(run_dir, store, name).name
        summary = json.loads((store / ids[name] / "summary.json").read_text())
        (store / ids[name] / "summary.json").write_text(json.dumps({**summary, "code_version": version}))
    ids["e"] = _copy_as(run_dir, store, "e").name
    (store / ids["e"] / "summary.json").unlink()  # unfinished: stays, its own checkpoint resumes it
    aside = tmp_path / "aside"

    def refused(args: list[str], why: str) -> None:
        assert main(["runs", "--runs-dir", str(store), *args]) == 1
        assert why in capsys.readouterr().err
    assert main(["runs", "--runs-dir", str(store), "--set-aside", "3887dc1", "--to", str(aside)]) == 0
    assert "moved 2 finished run(s) of code 3887dc1" in capsys.readouterr().out
    assert sorted(p.name for p in aside.iterdir()) == [ids["a"], ids["b"]]
    assert sorted(p.name for p in store.iterdir()) == [ids["c"], ids["d"], ids["e"]]
    # again: a name already in the destination stops the move, before anything moved
    shutil.copytree(aside / ids["a"], store / ids["a"])
    f6 = _copy_as(aside / ids["a"], store, "f")
    refused(["--set-aside", "3887dc1", "--to", str(aside)], f"already holds {ids['a']}; nothing moved")
    assert (store / ids["a"] / "summary.json").is_file() and f6.is_dir()
    # a run in training (its lock held) stops it too
    shutil.rmtree(store / ids["a"])
    with open(f6 / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        refused(["--set-aside", "3887dc1", "--to", str(tmp_path / "other")], "another process is training this run")
    assert (f6 / "summary.json").is_file() and not (tmp_path / "other").exists()
    refused(["--set-aside", "8721feb", "--to", str(store / "old")], "lies in the run store")
    refused(["--set-aside", "8721feb"], "needs --to")
    refused(["--to", str(aside)], "--to goes with --set-aside")


def test_runs_on_an_empty_store(tmp_path, capsys):
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    assert "no runs" in capsys.readouterr().out


def test_runs_names_a_wrong_store_and_a_bad_run(trained, tmp_path, capsys):
    tmp, _ = trained
    (tmp_path / "afile").write_text("x")
    (run_dir,) = (tmp / "runs").iterdir()
    for where, why in [(tmp_path / "nope", "no such folder"), (tmp_path / "afile", "a file, not a run store"),
                       (run_dir, "a run folder, not a run store")]:
        assert main(["runs", "--runs-dir", str(where)]) == 1
        assert why in capsys.readouterr().err
    # One broken run folder: the others are still listed, the broken one named.
    store = tmp_path / "store"
    shutil.copytree(tmp / "runs", store)
    (store / "broken-0123456789").mkdir()
    (store / "broken-0123456789" / "config.json").write_text('{"name": "broken", "conf')
    assert main(["runs", "--runs-dir", str(store)]) == 1
    out, err = capsys.readouterr()
    assert run_dir.name in out and "broken-0123456789" in err and "unreadable run config" in err


def test_a_run_folder_as_run_store_is_refused_by_every_command(trained, tmp_path, capsys):
    tmp, _ = trained
    store = tmp_path / "runs"
    shutil.copytree(tmp / "runs", store)
    (run_dir,) = store.iterdir()
    before = sorted(p.name for p in run_dir.iterdir())
    data = ["--synthetic", "--synthetic-size", "50", "--data-dir", str(tmp / "data"), "--runs-dir", str(run_dir)]
    for argv in (["runs", "--runs-dir", str(run_dir)], [*TRAIN, *data], ["eval", run_dir.name, *data, "--set", "tta_flip=True"]):
        assert main(argv) == 1
        assert capsys.readouterr().err == f"error: {run_dir}: a run folder, not a run store; its store is {store}\n"
    assert sorted(p.name for p in run_dir.iterdir()) == before  # no run made inside the run


@pytest.mark.parametrize(
    "sets, field",
    [
        (["lr=x"], "lr"),
        (["foo=1"], "foo"),
        (["lays=[2,2,2]"], "lays"),
        (["epochs=1.5"], "epochs"),
        (["nesterov=yes"], "nesterov"),
        (["dropout=1.0"], "dropout"),
        (["stem=5x5"], "stem"),
        (["lr"], "key=value"),
    ],
)
def test_bad_set_exits_2_naming_the_field(tmp_path, capsys, sets, field):
    argv = ["train", "--synthetic", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and field in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()  # nothing started


def test_bad_epochs_and_name_exit_2(tmp_path, capsys):
    base = ["train", "--synthetic", "--runs-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path / "d")]
    assert main([*base, "--epochs", "0"]) == 2
    assert "epochs" in capsys.readouterr().err
    assert main([*base, "--name", "a/b"]) == 2
    assert "run name" in capsys.readouterr().err
    assert main([*base, "--preset", "best"]) == 2
    assert "preset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse's own errors exit 2 as well
        main([*base, "--epochs", "two"])
    assert e.value.code == 2


@pytest.mark.parametrize("name", [".hidden", "a/b", "..", "é"])
def test_train_refuses_the_names_eval_refuses_by_one_rule(tmp_path, capsys, name):
    from labkit.runs import NAME_RULE

    base = ["--synthetic", "--runs-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path / "d")]
    assert main(["train", *base, "--name", name]) == 2
    assert capsys.readouterr().err == f"error: run name must be {NAME_RULE}, got {name!r}\n"
    assert main(["eval", f"{name}-0123456789", *base, "--set", "tta_flip=True"]) == 2
    assert f"must be a run id (a folder name in the run store, e.g. modern-777d574203: {NAME_RULE})" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_epochs_given_by_flag_and_set_must_agree(tmp_path, capsys):
    base = ["train", "--synthetic", "--synthetic-size", "10", "--set", "width=8", "--runs-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path / "d")]
    assert main([*base, "--set", "epochs=2", "--epochs", "3"]) == 2
    assert capsys.readouterr().err == "error: epochs given twice, --epochs 3 and --set epochs=2: give it once\n"
    assert not any(tmp_path.iterdir())


def test_synthetic_of_another_size_is_not_reused(tmp_path, capsys):
    make_synthetic_cifar10(tmp_path / "data", per_batch=20)
    argv = [*TRAIN, "--set", "device=cpu", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "20 images per batch" in err and "50" in err


def test_missing_data_exits_1(tmp_path, capsys, monkeypatch):
    import torchvision.datasets.utils as tvu

    def offline(*a, **kw):
        raise OSError("no network")

    monkeypatch.setattr(tvu, "download_url", offline)
    argv = ["train", "--set", "width=8", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "nodata")]
    assert main(argv) == 1
    assert "--data-dir" in capsys.readouterr().err


def test_make_synthetic(tmp_path, capsys):
    assert main(["make-synthetic", str(tmp_path), "--per-batch", "20"]) == 0
    assert "100 train images" in capsys.readouterr().out
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_make_synthetic_replaces_files_only_with_force(tmp_path, capsys):
    from labkit.data import load_cifar10

    assert main(["make-synthetic", str(tmp_path), "--per-batch", "10"]) == 0
    folder = tmp_path / "cifar-10-batches-py"
    before = (folder / "data_batch_1").read_bytes()
    assert main(["make-synthetic", str(tmp_path), "--per-batch", "20", "--seed", "3"]) == 1
    err = capsys.readouterr().err
    assert "already holds CIFAR-10 files" in err and "(--force" in err
    assert (folder / "data_batch_1").read_bytes() == before  # refused: nothing replaced
    assert main(["make-synthetic", str(tmp_path), "--per-batch", "20", "--seed", "3", "--force"]) == 0
    assert load_cifar10(tmp_path, allow_download=False).source["made"] == {"seed": 3, "per_batch": 20, "test_size": 20}


class _LabStarted(BaseException):  # not an Exception: main() would report one as an error
    pass


def test_lab_passes_every_option_to_run_lab(monkeypatch):
    import labkit.job

    seen = []
    monkeypatch.setattr(labkit.job, "run_lab", lambda profile, **kw: seen.append({"profile": profile, **kw}))
    assert main(["lab"]) == 0
    assert seen.pop() == {
        "profile": "auto", "data_dir": None, "allow_train": True, "seeds": None, "out": None, "runs_dir": None,
        "allow_cpu": False, "pdf": True, "lanes": None, "dry_run": False,
    }
    argv = ["lab", "--profile", "quick", "--data-dir", "d", "--no-train", "--seeds", "3", "--out", "o", "--runs-dir", "r",
            "--allow-cpu", "--no-pdf", "--lanes", "4", "--dry-run"]
    assert main(argv) == 0
    assert seen.pop() == {
        "profile": "quick", "data_dir": "d", "allow_train": False, "seeds": 3, "out": "o", "runs_dir": "r",
        "allow_cpu": True, "pdf": False, "lanes": 4, "dry_run": True,
    }


@pytest.mark.parametrize("flag, message", [("--seeds", "seeds must be a positive int (runs per configuration), got 0"),
                                           ("--lanes", "lanes must be a positive int (runs side by side per GPU), got 0")])
def test_lab_refuses_zero_seeds_or_lanes_in_one_line_before_any_work(tmp_path, capsys, monkeypatch, flag, message):
    import labkit.job

    def started():
        raise _LabStarted

    monkeypatch.setattr(labkit.job, "_check_kernel", started)  # the first step after the checks
    assert main(["lab", "--profile", "smoke", "--out", str(tmp_path / "out"), flag, "0"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_a_file_as_data_folder_is_refused_by_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    batch = make_synthetic_cifar10(tmp_path / "data", per_batch=10) / "data_batch_1"
    for argv in (["train", "--set", "width=8", "--data-dir", str(batch)], ["make-synthetic", str(batch)],
                 [*TRAIN, "--data-dir", str(batch)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"{batch} is a file, not a folder" in err and "Errno" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no run store made


def test_recorded_commands_name_no_machine_folder(monkeypatch):
    from labkit.runs import command_line

    assert command_line(["runs", "--runs-dir", "results/a b"]) == "python -m labkit runs --runs-dir 'results/a b'"
    # By default this process's arguments, whose first is the absolute path of labkit's __main__.py
    main_py = str(REPO / "labkit" / "__main__.py")
    monkeypatch.setattr(sys, "argv", [main_py, "runs", "--runs-dir", "results/a b"])
    assert command_line() == "python -m labkit runs --runs-dir 'results/a b'"


def test_eval_scores_a_finished_run_again_with_other_tta(trained, capsys, monkeypatch):
    tmp, _ = trained
    monkeypatch.chdir(tmp)
    (run_dir,) = (tmp / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    data = ["--synthetic", "--synthetic-size", "50", "--data-dir", "data", "--runs-dir", "runs", "--device", "cpu"]
    args = ["eval", run_dir.name, *data, "--set", "tta_flip=True", "--set", "tta_translate=2", "--out", "e.json"]
    # by default no test number is shown or written: they would invite choosing a setting by them
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "as trained, evaluated now" in out and "tta_flip=True tta_translate=2" in out
    assert "test_acc" not in out and "test numbers are left out (--test shows them)" in out
    rows = [ln for ln in out.splitlines() if ln.startswith(("as trained", "with "))]
    assert len(rows) == 3 and all(len(re.findall(r" (\d\.\d{4}|-)(?=\s|$)", ln)) == 1 for ln in rows), rows  # val_acc only
    rec = json.loads((tmp / "e.json").read_text())
    assert not [k for part in ("as_trained", "with") for k in rec[part] if k.startswith("test")]
    assert rec["as_trained"]["val_acc"] == summary["final_val_acc"]
    assert main([*args, "--test"]) == 0
    out = capsys.readouterr().out
    assert "test_acc" in out and "choosing by test_acc selects on the test set" in out
    rec = json.loads((tmp / "e.json").read_text())
    # the run's own settings give back its recorded numbers: the weights it kept are the ones read
    assert rec["as_trained"]["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-4)
    assert rec["as_trained"]["test_acc"] == summary["test_acc"]
    assert rec["as_trained"]["settings"] == {"tta_flip": False, "tta_translate": 0}
    assert rec["with"]["settings"] == {"tta_flip": True, "tta_translate": 2}
    assert rec["with"]["test_loss"] != rec["as_trained"]["test_loss"]  # other views, other logits
    assert rec["command"].startswith("python -m labkit eval ")


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--set KEY=VALUE"),
        (["--set", "lr=0.1"], "['lr'] change(s) what was trained"),
        (["--set", "tta_translate=20"], "tta_translate must lie in [0, 8]"),
        (["--set", "compile=default"], "['compile'] change(s) only how a run trains"),
        (["--set", "device=cpu"], "--set KEY=VALUE"),  # where it runs is no setting to compare
        (["--device", "cpu", "--set", "device=cuda", "--set", "tta_flip=True"], "device given twice, --device cpu and --set device=cuda"),
    ],
)
def test_eval_refuses_settings_that_are_not_evaluation(trained, capsys, monkeypatch, extra, message):
    tmp, _ = trained
    monkeypatch.chdir(tmp)
    (run_dir,) = (tmp / "runs").iterdir()
    argv = ["eval", run_dir.name, "--synthetic", "--synthetic-size", "50", "--data-dir", "data", "--runs-dir", "runs"]
    assert main(argv + extra) == 2
    assert message in capsys.readouterr().err


def test_eval_runs_where_set_device_says_and_names_each_rows_precision(trained, capsys, monkeypatch):
    tmp, _ = trained
    monkeypatch.chdir(tmp)
    (run_dir,) = (tmp / "runs").iterdir()
    argv = ["eval", run_dir.name, "--synthetic", "--synthetic-size", "50", "--data-dir", "data", "--runs-dir", "runs"]
    assert main([*argv, "--set", "device=cpu", "--set", "precision=bf16"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"run {run_dir.name}, evaluated now on cpu"
    rows = {ln[:34].strip(): ln[34:].split() for ln in out if ln.startswith(("as trained", "with "))}
    # the summary's numbers were computed in fp32 on the CPU, the changed setting's in bf16
    assert rows["as trained (its summary)"][2:5] == ["fp32", "on", "cpu"]
    assert rows["as trained, evaluated now"][2] == "fp32" and rows["with precision=bf16"][2] == "bf16"


def test_eval_refuses_unknown_runs_and_other_data(trained, tmp_path, capsys, monkeypatch):
    tmp, _ = trained
    (run_dir,) = (tmp / "runs").iterdir()
    monkeypatch.chdir(tmp)
    base = ["--runs-dir", "runs", "--set", "tta_flip=True"]
    assert main(["eval", "seed-0000000000", "--synthetic", "--synthetic-size", "50", "--data-dir", "data", *base]) == 1
    assert "no run seed-0000000000 in runs" in capsys.readouterr().err
    assert main(["eval", "../runs", *base]) == 2
    assert "must be a run id" in capsys.readouterr().err
    # synthetic data of the same size from another seed: same description, other files
    make_synthetic_cifar10(tmp_path / "other", per_batch=50, seed=7)
    other = ["--synthetic", "--synthetic-size", "50", "--data-dir", str(tmp_path / "other")]
    assert main(["eval", run_dir.name, *other, *base]) == 1
    assert "trained on other data" in capsys.readouterr().err
    # --synthetic forgotten: CIFAR-10 is looked for instead (here an incomplete copy: no download)
    (tmp_path / "partial" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "partial" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    assert main(["eval", run_dir.name, "--data-dir", str(tmp_path / "partial"), *base]) == 1
    assert f"{run_dir.name} was trained on labkit's synthetic CIFAR-format data" in capsys.readouterr().err


def test_eval_refuses_flags_for_other_data_before_making_or_downloading_any(trained, tmp_path, capsys, monkeypatch):
    import torchvision.datasets.utils as tvu

    import labkit.synthetic

    def never(*a, **kw):
        raise AssertionError("data were made or downloaded")

    monkeypatch.setattr(tvu, "download_url", never)
    monkeypatch.setattr(labkit.synthetic, "make_synthetic_cifar10", never)
    tmp, _ = trained
    store = tmp_path / "runs"
    shutil.copytree(tmp / "runs", store)
    (run_dir,) = store.iterdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    base = ["eval", run_dir.name, "--runs-dir", str(store), "--set", "tta_flip=True"]
    # trained with --synthetic --synthetic-size 50: the default size (500), or no --synthetic and no data here
    for extra in (["--synthetic"], ["--synthetic", "--synthetic-size", "64"], []):
        assert main([*base, *extra]) == 1
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.rstrip().endswith("evaluate it with --synthetic --synthetic-size 50"), err
    # a run trained on other synthetic data than --synthetic makes (make-synthetic --seed 7)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"]["made"] == {"seed": 0, "per_batch": 50, "test_size": 50}  # read, not parsed from words
    summary["data"]["made"]["seed"] = 7
    (run_dir / "summary.json").write_text(json.dumps(summary))
    seven = "evaluate it with --data-dir at the folder of those data, without --synthetic (make-synthetic DIR --per-batch 50 --seed 7"
    assert main([*base, "--synthetic", "--synthetic-size", "50"]) == 1
    assert seven in capsys.readouterr().err
    # a run trained on the official files, given --synthetic
    summary["data"] = {"official": True, "description": "official CIFAR-10 (md5 verified)"}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert main([*base, "--synthetic", "--synthetic-size", "50"]) == 1
    assert "not labkit's synthetic data: leave out --synthetic" in capsys.readouterr().err
    assert not any(work.iterdir())  # nothing made


def test_train_hands_back_a_finished_run_only_for_its_own_data(trained, tmp_path, capsys, monkeypatch):
    tmp, _ = trained
    monkeypatch.chdir(tmp)
    argv = [*TRAIN, "--set", "device=cpu", "--runs-dir", "runs"]
    assert main([*argv, "--data-dir", "data"]) == 0  # the finished run, on its data
    assert "done:" in capsys.readouterr().out
    make_synthetic_cifar10(tmp_path / "other", per_batch=50, seed=7)  # same sizes, other files
    assert main([*argv, "--data-dir", str(tmp_path / "other")]) == 1
    assert "trained on other data" in capsys.readouterr().err
    # No data here at all: the finished run is handed back, said to be unchecked, nothing downloaded
    real = [a for a in argv if a != "--synthetic"]
    assert main([*real, "--data-dir", str(tmp_path / "none")]) == 0
    assert "note: the data were not found here, so the finished run was not compared" in capsys.readouterr().out
    # Data that are there but cannot be read, or a file given as the folder: an error, as for eval
    shutil.copytree(tmp / "data", tmp_path / "truncated")
    batch = tmp_path / "truncated" / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:1000])
    for flags, why in ((argv, f"{batch}: not a readable CIFAR-10 batch"), (real, f"{batch}: not a readable CIFAR-10 batch"),
                       (real, f"{batch} is a file, not a folder")):
        where = batch if "is a file" in why else tmp_path / "truncated"
        assert main([*flags, "--data-dir", str(where)]) == 1
        out, err = capsys.readouterr()
        assert why in err and "done:" not in out and "note:" not in out, (out, err)


def test_train_compares_a_run_that_another_process_finished_meanwhile(trained, tmp_path, capsys, monkeypatch):
    """The store's first look saw no finished run; by the time `get` reads it, another process
    has finished it on other data: it is still compared, not handed back unchecked."""
    from labkit.runs import RunStore

    tmp, _ = trained
    monkeypatch.chdir(tmp)
    monkeypatch.setattr(RunStore, "find", lambda self, cfg, name: None)
    make_synthetic_cifar10(tmp_path / "other", per_batch=50, seed=7)
    argv = [*TRAIN, "--set", "device=cpu", "--runs-dir", "runs", "--data-dir", str(tmp_path / "other")]
    assert main(argv) == 1
    assert "trained on other data" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["sweep", "--profile", "smoke", "--timing-json", "{f}/t.json"], "--timing-json"),
        (["bench", "--cpu-check", "--out", "{f}/b.json"], "--out"),
        (["bench", "--cpu-check", "--out", "{d}"], "is a folder"),
        (["eval", "seed-0123456789", "--set", "tta_flip=True", "--out", "{f}/e.json"], "--out"),
        (["eval", "seed-0123456789", "--set", "tta_flip=True", "--out", "{f}/sub/e.json"], "a_file is a file"),
        # a folder that does not exist is refused, not made (`--out /nonexist/x.json` made /nonexist)
        (["sweep", "--profile", "smoke", "--timing-json", "{m}/t.json"], "missing/deeper does not exist"),
        (["bench", "--cpu-check", "--out", "{m}/b.json"], "missing/deeper does not exist"),
        (["eval", "seed-0123456789", "--set", "tta_flip=True", "--out", "{m}/e.json"], "missing/deeper does not exist"),
    ],
)
def test_result_files_that_cannot_be_written_fail_before_any_work(tmp_path, capsys, monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    from benchmarks import bench

    argv = [a.format(f="a_file", d="a_dir", m="missing/deeper") for a in argv]
    assert (bench.main(argv[1:]) if argv[0] == "bench" else main(argv)) == 2
    err = capsys.readouterr().err
    assert flag in err and ("cannot write there" in err or "is a folder" in err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "a_file"]  # nothing trained or made


def test_ctrl_c_in_any_command_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import labkit.synthetic

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(labkit.synthetic, "make_synthetic_cifar10", interrupted)
    assert main(["make-synthetic", str(tmp_path / "d")]) == 130
    assert capsys.readouterr().err == "interrupted (SIGINT)\n"


def test_ctrl_c_in_train_says_where_the_same_command_goes_on_from(tmp_path, capsys, monkeypatch):
    from labkit.config import preset
    from labkit.runs import RunStore

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunStore, "get", interrupted)  # as if Ctrl-C came while it trained
    make_synthetic_cifar10(tmp_path / "data", per_batch=50)
    store = tmp_path / "runs"
    argv = [*TRAIN, "--checkpoint-every", "2", "--runs-dir", str(store), "--data-dir", str(tmp_path / "data")]
    assert main(argv) == 130
    rid = RunStore.run_id(preset("seed", epochs=2, width=8), "seed")
    assert capsys.readouterr().err == (
        f"interrupted (SIGINT): run {rid} in {store} stopped before it finished; it resumes from its last checkpoint "
        "(written every 2 epochs) when asked for again (the same command)\n"
    )


def test_init_from_a_run_of_another_width_is_one_line_and_leaves_no_folder(trained, tmp_path, capsys, monkeypatch):
    tmp, _ = trained
    store = tmp_path / "runs"
    shutil.copytree(tmp / "runs", store)
    (parent,) = store.iterdir()
    argv = ["train", "--synthetic", "--synthetic-size", "50", "--data-dir", str(tmp / "data"), "--runs-dir", str(store)]
    assert main([*argv, "--epochs", "1", "--set", "width=16", "--set", f"init_from={parent.name}"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "width=8) is not this run's (" in err and "width=16)" in err, err
    assert [p.name for p in store.iterdir()] == [parent.name]  # `runs` lists no unfinished 0/1 run


def test_every_option_says_what_it_is_and_its_default(monkeypatch):
    """--help of every command but sweep (its options are sweep's own business)."""
    import argparse

    def parsed(self, argv=None, namespace=None):
        raise _Parser(self)

    class _Parser(Exception):
        pass

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parsed)
    with pytest.raises(_Parser) as e:
        main(["runs"])
    (sub,) = [a for a in e.value.args[0]._actions if isinstance(a, argparse._SubParsersAction)]
    missing = []
    for cmd, p in sub.choices.items():
        for a in p._actions:
            if cmd == "sweep" or isinstance(a, argparse._HelpAction):
                continue
            flag = a.option_strings[0] if a.option_strings else a.dest
            if not a.help:
                missing.append(f"{cmd} {flag}: no help")
            elif a.default not in (None, False, [], "") and "default" not in a.help and str(a.default) not in a.help:
                missing.append(f"{cmd} {flag}: default {a.default} not stated")
    assert not missing, missing
    allow_cpu = next(a for a in sub.choices["lab"]._actions if a.dest == "allow_cpu").help
    assert "full" in allow_cpu and "quick" in allow_cpu  # both profiles' refusals point at it


def test_a_corrupted_summary_says_what_to_do_and_that_works_training_nothing(trained, tmp_path, capsys):
    tmp, _ = trained
    store = tmp_path / "runs"
    shutil.copytree(tmp / "runs", store)
    (run_dir,) = store.iterdir()
    before = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text('{"test_acc": 0.')
    argv = [*TRAIN, "--set", "device=cpu", "--runs-dir", str(store), "--data-dir", str(tmp / "data")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "summary.json: corrupted" in err and "move summary.json aside (e.g. to summary.corrupt.json) and ask for the run again" in err
    (run_dir / "summary.json").rename(run_dir / "summary.corrupt.json")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "at epoch 2/2" in out and not [ln for ln in out.splitlines() if ln.startswith("epoch")]
    after = json.loads((run_dir / "summary.json").read_text())
    for k in ("final_loss_sum", "final_val_acc", "test_acc", "test_loss", "train_seconds", "selected_epoch", "data"):
        assert after[k] == before[k], k


@pytest.mark.parametrize("damage, named", [
    ({"final_loss_sum": None}, "final_loss_sum is None, not a number"),  # before: a TypeError traceback
    ({"test_acc": "0.9"}, "test_acc is '0.9', not a number"),
    ("shortened metrics", "metrics.csv: damaged (it holds 1 epochs, the finished run 2)"),  # before: accepted
])
def test_train_names_a_damaged_record_in_one_line_and_its_fix_works(trained, tmp_path, capsys, damage, named):
    tmp, _ = trained
    store = tmp_path / "runs"
    shutil.copytree(tmp / "runs", store)
    (run_dir,) = store.iterdir()
    before = json.loads((run_dir / "summary.json").read_text())
    if isinstance(damage, dict):
        (run_dir / "summary.json").write_text(json.dumps({**before, **damage}))
    else:
        rows = (run_dir / "metrics.csv").read_text().splitlines(keepends=True)
        (run_dir / "metrics.csv").write_text("".join(rows[:-1]))
    argv = [*TRAIN, "--set", "device=cpu", "--runs-dir", str(store), "--data-dir", str(tmp / "data")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run_dir}/") and named in err and err.count("\n") == 1, err
    # the fix it gives: the summary moved aside, the run resumes from its last checkpoint
    assert "move summary.json aside (e.g. to summary.corrupt.json) and ask for the run again" in err
    (run_dir / "summary.json").rename(run_dir / "summary.corrupt.json")
    assert main(argv) == 0
    assert not [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch")]  # nothing trained
    after = json.loads((run_dir / "summary.json").read_text())
    assert [after[k] for k in ("final_loss_sum", "test_acc", "epochs")] == [before[k] for k in ("final_loss_sum", "test_acc", "epochs")]
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 3  # the header and both epochs


def test_train_notes_data_that_are_not_the_official_files_once_unless_labelled(trained, tmp_path, capsys, monkeypatch):
    tmp, _ = trained
    shutil.copytree(tmp / "data", tmp_path / "copy")
    (tmp_path / "copy" / "cifar-10-batches-py" / "batches.meta").unlink()  # no longer says it is labkit's synthetic data
    argv = [a for a in TRAIN if a != "--synthetic"] + ["--set", "device=cpu", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "copy")]
    monkeypatch.delenv("LABKIT_DATA_LABEL", raising=False)
    assert main([*argv, "--epochs", "1"]) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note:")]
    assert notes == [
        f"note: {tmp_path / 'copy'} does not hold the official CIFAR-10 files; runs record them, and reports show them, only as "
        '"not the official CIFAR-10 files (md5 differs for 6 of 6 batches)". Set LABKIT_DATA_LABEL to say what they are (see report/README.md).'
    ]
    monkeypatch.setenv("LABKIT_DATA_LABEL", "a copy for a test")
    assert main([*argv, "--epochs", "1"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_the_labkit_command_and_its_version():
    labkit = Path(sys.executable).parent / "labkit"  # the console script pip installs beside python
    out = subprocess.run([str(labkit), "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "labkit 0.1.0", out


def test_make_lab_passes_its_args_to_the_lab_job():
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(["make", "-n", "lab", 'ARGS=--dry-run --data-dir D --seeds 5'], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0 and "labkit lab --dry-run --data-dir D --seeds 5" in out.stdout, out
