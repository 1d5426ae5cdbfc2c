"""--resume: every script continues a run from its checkpoint (networks, targets, optimizer, step)."""
import csv
import importlib
from pathlib import Path

import pytest
import torch

import runfiles
from conftest import run_dir_of, tiny_args

SCRIPTS = ("fql", "driftql", "dfp", "qam", "deflow")
CPU = torch.device("cpu")


@pytest.mark.parametrize("name", SCRIPTS)
def test_resume_continues_from_the_checkpoint_step_with_its_state(name, tmp_path):
    mod = importlib.import_module(name)
    mod.main(tiny_args(mod, offline_steps=4, runs_dir=str(tmp_path / "a")))
    ckpt = f"{run_dir_of(tmp_path / 'a')}/{name}.pt"
    assert runfiles.load_checkpoint(ckpt, name, torch.device("cpu"))["step"] == 4
    # main picks up at step 5 in the checkpoint's own folder (not in --runs-dir): no step-1 evaluation, the final one
    # at 6 appended to the run's eval.csv, and the checkpoint now says 6
    mod.main(tiny_args(mod, offline_steps=6, runs_dir=str(tmp_path / "b"), resume=ckpt))
    assert not (tmp_path / "b").exists()
    d = run_dir_of(tmp_path / "a")
    assert [r["step"] for r in csv.DictReader(open(f"{d}/eval.csv"))] == ["1", "2", "4", "6"]
    assert runfiles.load_checkpoint(f"{d}/{name}.pt", name, torch.device("cpu"))["step"] == 6


def test_a_resumed_runs_progress_lines_show_the_score_from_before_the_interruption(tmp_path, capsys):
    fql = importlib.import_module("fql")
    fql.main(tiny_args(fql, offline_steps=4, runs_dir=str(tmp_path)))
    d = run_dir_of(tmp_path)
    last = float(list(csv.DictReader(open(f"{d}/eval.csv")))[-1]["episodic_return"])
    capsys.readouterr()
    fql.main(tiny_args(fql, offline_steps=60, eval_interval=100, log_interval=100, runs_dir=str(tmp_path),
                       resume=f"{d}/fql.pt"))
    first = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step 5/60"))
    assert f"last eval episodic_return={last:.3f}" in first


def test_resume_refuses_other_flags_and_other_scripts(tmp_path):
    fql, driftql = importlib.import_module("fql"), importlib.import_module("driftql")
    fql.main(tiny_args(fql, offline_steps=2, runs_dir=str(tmp_path / "a")))
    ckpt = f"{run_dir_of(tmp_path / 'a')}/fql.pt"
    before = {f: open(f"{run_dir_of(tmp_path / 'a')}/{f}", "rb").read() for f in ("fql.pt", "args.json", "eval.csv")}
    with pytest.raises(ValueError, match="--actor-hidden-dims is 16 here but 8 in the run"):
        fql.main(tiny_args(fql, offline_steps=4, actor_hidden_dims=(16,), runs_dir=str(tmp_path / "b"), resume=ckpt))
    with pytest.raises(ValueError, match="written by fql.py, not driftql.py"):
        driftql.main(tiny_args(driftql, offline_steps=4, runs_dir=str(tmp_path / "c"), resume=ckpt))
    # a refused resume leaves the run it was pointed at as it was
    assert {f: open(f"{run_dir_of(tmp_path / 'a')}/{f}", "rb").read() for f in before} == before


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(name, tmp_path):
    """The checkpoint carries torch's random streams, so 4 steps + --resume to 6 draw the batches and noise of 6."""
    mod = importlib.import_module(name)
    mod.main(tiny_args(mod, offline_steps=6, runs_dir=str(tmp_path / "whole")))
    mod.main(tiny_args(mod, offline_steps=4, runs_dir=str(tmp_path / "a")))
    ckpt = f"{run_dir_of(tmp_path / 'a')}/{name}.pt"
    mod.main(tiny_args(mod, offline_steps=6, runs_dir=str(tmp_path / "a"), resume=ckpt))
    whole, resumed = (runfiles.load_checkpoint(f"{run_dir_of(tmp_path / d)}/{name}.pt", name, CPU)["nets"]
                      for d in ("whole", "a"))
    for k, v in whole.items():
        assert torch.equal(v, resumed[k]), k
    # one history: the resumed run's eval.csv is the uninterrupted run's, row for row
    whole_csv, resumed_csv = (open(f"{run_dir_of(tmp_path / d)}/eval.csv").read() for d in ("whole", "a"))
    assert resumed_csv == whole_csv


def test_resume_drops_what_the_interrupted_attempt_wrote_after_its_checkpoint(tmp_path):
    """An attempt killed between an evaluation row and its checkpoint leaves a row the resumed run will write again."""
    fql = importlib.import_module("fql")
    fql.main(tiny_args(fql, offline_steps=4, runs_dir=str(tmp_path)))
    d = run_dir_of(tmp_path)
    last = list(csv.DictReader(open(f"{d}/eval.csv")))[-1]  # a row written after the step-4 checkpoint
    row = {**{k: v for k, v in last.items() if k != "step"}, "episodic_return": 1}
    runfiles.append_csv(Path(d) / "eval.csv", 6, row)
    fql.main(tiny_args(fql, offline_steps=6, runs_dir=str(tmp_path), resume=f"{d}/fql.pt"))
    rows = list(csv.DictReader(open(f"{d}/eval.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "4", "6"] and float(rows[-1]["episodic_return"]) != 1


@pytest.mark.parametrize("name", ["fql", "qam"])
def test_save_interval_checkpoints_between_evaluations_and_resumes_bit_exactly(name, tmp_path, monkeypatch):
    """--save-interval 3 with evaluations every 4: a checkpoint at step 6 (no evaluation there), resumed to 8, ends
    as the uninterrupted run does; runs without the flag save at evaluations only."""
    mod = importlib.import_module(name)
    mod.main(tiny_args(mod, offline_steps=8, eval_interval=4, runs_dir=str(tmp_path / "whole")))
    saved_at, real_save = [], torch.save

    def save_and_keep(obj, path, *a, **kw):  # keep each checkpoint the run writes, by step
        real_save(obj, path, *a, **kw)
        saved_at.append(obj["step"])
        real_save(obj, tmp_path / f"step{obj['step']}.pt")

    monkeypatch.setattr(torch, "save", save_and_keep)
    mod.main(tiny_args(mod, offline_steps=8, eval_interval=4, save_interval=3, runs_dir=str(tmp_path / "a")))
    monkeypatch.undo()
    assert saved_at == [1, 3, 4, 6, 8]  # evaluations at 1, 4 and 8, and every 3 steps between them
    # the run as a kill after step 7 leaves it: its step-6 checkpoint, and eval.csv rows to step 4 (and none past 6)
    d = Path(run_dir_of(tmp_path / "a"))
    (d / f"{name}.pt").write_bytes((tmp_path / "step6.pt").read_bytes())
    mod.main(tiny_args(mod, offline_steps=8, eval_interval=4, save_interval=3, runs_dir=str(tmp_path / "a"),
                       resume=str(d / f"{name}.pt")))
    whole, resumed = (runfiles.load_checkpoint(f"{run_dir_of(tmp_path / r)}/{name}.pt", name, CPU)
                      for r in ("whole", "a"))
    assert whole["step"] == resumed["step"] == 8
    for k, v in whole["nets"].items():
        assert torch.equal(v, resumed["nets"][k]), k
    assert open(d / "eval.csv").read() == open(f"{run_dir_of(tmp_path / 'whole')}/eval.csv").read()
