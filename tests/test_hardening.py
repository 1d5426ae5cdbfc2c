"""Faults that could put a wrong number in a paper or leave something behind: a resume with other flags, two
processes in one run folder, damaged checkpoints and data, a full disk, a stop before the first checkpoint, paths
from flags, and the tools' own errors. Each case runs the real entry point and checks the exit code, the one line,
that nothing was left behind and that the last good checkpoint is intact."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

import common
import plot
import plumbing
import runfiles
from conftest import MAZE_ID, ROOT, assert_one_line, cli, run_dir_of

TINY = ["--device", "cpu", "--actor-hidden-dims", "8", "--value-hidden-dims", "8", "--batch-size", "16",
        "--env-id", "bandit-4gaussian"]


def snapshot(folder):
    return {p: open(p, "rb").read() for p in sorted(glob.glob(f"{folder}/*")) if os.path.isfile(p)}


@pytest.fixture
def run(tmp_path, capsys, monkeypatch):
    """A finished 2-step fql run on the bandit: (its folder, its checkpoint)."""
    code, _ = cli("fql", [*TINY, "--offline-steps", "2", "--eval-interval", "2", "--runs-dir", str(tmp_path / "r")],
                  capsys, monkeypatch)
    assert code == 0
    d = run_dir_of(tmp_path / "r")
    return d, f"{d}/fql.pt"


# ---------------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("flag, value, says", [
    ("--alpha", "100", "--alpha is 100.0 here but 10.0 in the run"),
    ("--discount", "0.5", "--discount is 0.5 here but 0.99 in the run"),
    ("--seed", "7", "--seed is 7 here but 0 in the run"),
    ("--batch-size", "64", "--batch-size is 64 here but 16 in the run"),
])
def test_resume_refuses_a_flag_that_changes_the_experiment(flag, value, says, run, capsys, monkeypatch):
    folder, ckpt = run
    before = snapshot(folder)
    code, err = cli("fql", [*TINY, "--offline-steps", "4", "--resume", ckpt, flag, value], capsys, monkeypatch)
    assert_one_line(code, err, ckpt, says)
    assert snapshot(folder) == before  # nothing written, nothing lost


def test_a_continuation_may_change_the_budget_and_args_json_records_it(run, capsys, monkeypatch):
    folder, ckpt = run
    code, _ = cli("fql", [*TINY, "--offline-steps", "4", "--eval-interval", "1", "--resume", ckpt], capsys, monkeypatch)
    assert code == 0
    record = json.load(open(f"{folder}/args.json"))
    assert record["offline_steps"] == 4 and record["eval_interval"] == 1  # the flags the folder now ran with
    (cont,) = record["run"]["continuations"]
    assert cont["step"] == 2 and cont["changed"] == {"offline_steps": [2, 4], "eval_interval": [2, 1]}
    assert cont["command"].startswith("python fql.py") and "commit" in cont and "torch" in cont
    assert not os.path.exists(f"{folder}/.lock")  # released at the end


# ------------------------------------------------------------------------------------------------ one process per folder
@pytest.mark.slow
def test_a_second_process_in_a_run_folder_stops_and_a_killed_ones_lock_does_not_block(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "fql.py", *TINY, "--offline-steps", "100000", "--eval-interval", "20",
                              "--runs-dir", str(tmp_path)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not glob.glob(f"{tmp_path}/*/fql.pt") and time.time() < deadline:
            time.sleep(0.2)
        (ckpt,) = glob.glob(f"{tmp_path}/*/fql.pt")
        second = subprocess.run([sys.executable, "fql.py", *TINY, "--offline-steps", "100000", "--eval-interval",
                                 "20", "--resume", ckpt], cwd=ROOT, env=env, capture_output=True, text=True)
        err = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(err) == 1 and f"in use by process {first.pid}" in err[0], err
    finally:
        first.kill()
        first.wait()
    rows = open(os.path.join(os.path.dirname(ckpt), "eval.csv")).read().splitlines()
    steps = [r.split(",")[0] for r in rows[1:]]
    assert len(steps) == len(set(steps))  # one writer: no duplicated rows
    # the killed process's lock file is still there, but the kernel released its lock: the resume runs
    done = subprocess.run([sys.executable, "fql.py", *TINY, "--offline-steps", "100000", "--eval-interval", "20",
                           "--resume", ckpt, "--offline-steps", str(int(steps[-1]) + 3)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]


# ---------------------------------------------------------------------------------------------------- damage
def test_nan_weights_and_damaged_bytes_in_a_checkpoint_are_named(run, tmp_path, capsys, monkeypatch):
    _, ckpt = run
    nan = tmp_path / "nan.pt"
    payload = torch.load(ckpt, weights_only=True)
    payload["nets"]["critic.weights.0"][0, 0, 0] = float("nan")
    torch.save(payload, nan)
    code, err = cli("fql", [*TINY, "--offline-steps", "4", "--resume", str(nan)], capsys, monkeypatch)
    assert_one_line(code, err, str(nan), "nets.critic.weights.0 holds NaN or inf")
    flipped = tmp_path / "flipped.pt"
    data = bytearray(open(ckpt, "rb").read())
    with zipfile.ZipFile(ckpt) as z:  # the largest tensor record, as it lies in the file
        info = max(z.infolist(), key=lambda i: i.file_size)
    at = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little") \
        + int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    data[at + info.file_size // 2] ^= 0xFF  # 8 bits of one weight: the zip still opens, torch.load would not notice
    flipped.write_bytes(bytes(data))
    code, err = cli("fql", [*TINY, "--offline-steps", "4", "--resume", str(flipped)], capsys, monkeypatch)
    assert_one_line(code, err, str(flipped), "checksum")
    for bad in (nan, flipped):  # load_policy says the same in one exception
        with pytest.raises(ValueError, match=str(bad)):
            runfiles.load_policy(bad)


def test_nan_in_a_dataset_array_is_named_with_its_file(ogbench_dir, tmp_path, monkeypatch):
    out = tmp_path / "data"
    shutil.copytree(ogbench_dir, out)
    path = out / "pointmaze-medium-navigate-v0.npz"
    arrays = dict(np.load(path))
    arrays["observations"][7, 1] = np.inf
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    monkeypatch.setenv("OGBENCH_DATA_DIR", str(out))
    with pytest.raises(common.UsageError, match=f"{path}: its array observations holds NaN or inf .*row 7"):
        common.load_task(MAZE_ID, torch.device("cpu"))


# -------------------------------------------------------------------------------------------------- nothing left behind
def test_a_full_disk_at_a_checkpoint_keeps_the_last_good_one(tmp_path, capsys, monkeypatch):
    real, calls = torch.save, []

    def full_disk(obj, path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"half")  # what a full disk leaves
            raise OSError(28, "No space left on device")
        return real(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    code, err = cli("fql", [*TINY, "--offline-steps", "4", "--eval-interval", "2", "--runs-dir", str(tmp_path)],
                    capsys, monkeypatch)
    d = run_dir_of(tmp_path)
    assert_one_line(code, err, "No space left on device", f"{d}/fql.pt stays")
    assert not glob.glob(f"{d}/*.tmp") and torch.load(f"{d}/fql.pt", weights_only=True)["step"] == 1


def test_a_stop_before_the_first_checkpoint_removes_the_run_folder(tmp_path, capsys, monkeypatch):
    def stopped(*a, **kw):
        raise KeyboardInterrupt(signal.SIGTERM)  # what SIGTERM becomes, during the first evaluation

    monkeypatch.setattr(common, "evaluate", stopped)
    code, err = cli("fql", [*TINY, "--offline-steps", "4", "--runs-dir", str(tmp_path / "runs")], capsys, monkeypatch)
    assert code == 128 + signal.SIGTERM and len(err) == 1 and "removed the run folder" in err[0]
    assert os.listdir(tmp_path / "runs") == []


def test_a_second_signal_during_the_clean_up_does_not_cut_it_short(tmp_path, capsys, monkeypatch):
    def stopped(*a, **kw):
        raise KeyboardInterrupt(signal.SIGTERM)

    def close_then_signalled(self):  # a second SIGTERM arrives while the run's logs are being closed
        os.kill(os.getpid(), signal.SIGTERM)
        real_close(self)

    real_close = plumbing.Run.close
    monkeypatch.setattr(common, "evaluate", stopped)
    monkeypatch.setattr(plumbing.Run, "close", close_then_signalled)
    try:
        code, err = cli("fql", [*TINY, "--offline-steps", "4", "--runs-dir", str(tmp_path / "runs")], capsys,
                        monkeypatch)
    except KeyboardInterrupt:
        pytest.fail("the second SIGTERM interrupted the clean-up")
    assert code == 128 + signal.SIGTERM and len(err) == 1 and "removed the run folder" in err[0], err
    assert os.listdir(tmp_path / "runs") == []


@pytest.mark.parametrize("argv, says", [
    (["--batch-size", "99999999999"], "out of memory"),
    (["--exp-name", "../../escape"], "--exp-name '../../escape' must be a plain file name"),
])
def test_sizes_that_cannot_fit_and_paths_out_of_the_runs_folder_are_one_line(argv, says, tmp_path, capsys,
                                                                            monkeypatch):
    runs = tmp_path / "a" / "b" / "runs"
    code, err = cli("fql", [*TINY, "--offline-steps", "4", "--runs-dir", str(runs), *argv], capsys, monkeypatch)
    assert_one_line(code, err, says)
    assert not glob.glob(f"{tmp_path}/**/*.pt", recursive=True) and (not runs.exists() or os.listdir(runs) == [])


def test_track_without_wandb_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails as on a machine without it
    code, err = cli("fql", [*TINY, "--track", "--runs-dir", str(tmp_path / "runs")], capsys, monkeypatch)
    assert_one_line(code, err, "--track", "pip install wandb")
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------- the tools
def test_load_policy_names_the_file_and_checks_its_input(run, tmp_path):
    _, ckpt = run
    for name, content in (("text.pt", b"not a checkpoint"), ("truncated.pt", open(ckpt, "rb").read()[:300])):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=str(tmp_path / name)):
            runfiles.load_policy(tmp_path / name)
    torch.save({"algo": "fql", "nets": {}}, tmp_path / "keys.pt")
    with pytest.raises(ValueError, match=f"{tmp_path / 'keys.pt'} is not a checkpoint .*lacks step"):
        runfiles.load_policy(tmp_path / "keys.pt")
    policy = runfiles.load_policy(ckpt)
    assert policy(np.zeros((3, 2))).shape == (3, 2)  # numpy, float64: cast
    assert policy(torch.zeros(2)).shape == (2,)  # one observation
    with pytest.raises(ValueError, match=r"observations \[B, 2\] or \[2\], not \[3, 5\]"):
        policy(torch.zeros(3, 5))


def test_the_final_score_never_counts_the_step_1_evaluation(capsys):
    assert plot.final_score({1: -18.6, 500: 3.7}, 3) == pytest.approx(3.7)
    assert np.isnan(plot.final_score({1: -18.6}, 3))


def test_without_a_terminal_progress_comes_every_2_percent(tmp_path, capsys):
    import fql
    fql.main(fql.Args(env_id="bandit-4gaussian", device="cpu", actor_hidden_dims=(8,), value_hidden_dims=(8,),
                      batch_size=16, offline_steps=100, log_interval=100, eval_interval=100, runs_dir=str(tmp_path)))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ") and "/100 (" in ln]
    assert len(lines) >= 45  # every 2 steps of 100, not only at the log interval


@pytest.mark.slow
def test_the_readme_snippet_runs_from_another_folder(run, tmp_path):
    _, ckpt = run
    readme = open(os.path.join(ROOT, "README.md")).read()
    snippet = readme.split("## Loading a checkpoint as a policy")[1].split("```python\n")[1].split("```")[0]
    assert "/path/to/this/repository" in snippet and "runs/<run>/fql.pt" in snippet
    code = snippet.replace("/path/to/this/repository", os.path.abspath(ROOT)).replace("runs/<run>/fql.pt", ckpt)
    out = subprocess.run([sys.executable, "-c", code + "\nprint(tuple(actions.shape))"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "(8, 2)", out.stderr[-800:]


@pytest.mark.parametrize("damage, says", [
    ("binary", "is not an eval.csv of numbers"),
    ("words", "is not an eval.csv of numbers"),
    ("args", "args.json is not JSON"),
])
def test_plot_refuses_damaged_run_folders_in_one_line(damage, says, run, tmp_path):
    folder, _ = run
    if damage == "binary":
        open(f"{folder}/eval.csv", "wb").write(bytes(range(256)) * 4)
    elif damage == "words":
        open(f"{folder}/eval.csv", "a").write("3,abc,def,1,1,1,1\n")
    else:
        open(f"{folder}/args.json", "w").write("{not json")
    out = subprocess.run([sys.executable, "plot.py", str(tmp_path / "r"), "--out", str(tmp_path / "fig")], cwd=ROOT,
                         capture_output=True, text=True)
    err = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(err) == 1 and err[0].startswith("error: ") and says in err[0], err


def test_plot_skips_a_header_only_eval_csv_and_refuses_bad_options(run, tmp_path):
    folder, _ = run
    plot.main(plot.Args(folders=(str(tmp_path / "r"),), out=str(tmp_path / "fig"), resamples=10))  # it plots
    for bad, says in ((dict(last=0), "--last 0"), (dict(resamples=0), "--resamples 0"),
                      (dict(out="/proc/no/such"), "--out /proc/no/such cannot be written")):
        with pytest.raises(SystemExit, match=says):
            plot.main(plot.Args(folders=(str(tmp_path / "r"),), **bad))
    open(f"{folder}/eval.csv", "w").write("step,episodic_return\n")
    with pytest.raises(SystemExit, match="no run folder"):  # the only run has no rows: skipped, said, then refused
        plot.main(plot.Args(folders=(str(tmp_path / "r"),), out=str(tmp_path / "fig")))


@pytest.mark.parametrize("argv, says", [
    (["--algos", "fqll"], "--algos fqll: not a script here"),
    (["--steps", "0"], "--steps 0 is out of range"),
    (["--device", "cuda"], "--device cuda was asked for but torch sees no GPU"),
])
def test_benchmark_bad_input_is_one_line(argv, says, capsys, monkeypatch):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, err = cli("benchmark", argv, capsys, monkeypatch)
    assert_one_line(code, err, says)


def test_an_error_after_the_first_evaluation_keeps_the_folder_flushes_and_releases_it(tmp_path, capsys,
                                                                                    monkeypatch):
    import fql
    real, calls = fql.update, []

    def poisoned(*a, **kw):
        calls.append(1)
        out = real(*a, **kw)
        out["total_loss"] = out["total_loss"] * (float("nan") if len(calls) >= 3 else 1.0)
        return out

    monkeypatch.setattr(fql, "update", poisoned)
    code, err = cli("fql", [*TINY, "--offline-steps", "8", "--eval-interval", "4", "--no-save-model", "--runs-dir",
                            str(tmp_path)], capsys, monkeypatch)
    d = run_dir_of(tmp_path)
    assert_one_line(code, err, "NaN/inf at step 3")
    # no checkpoint (--no-save-model), but the step-1 evaluation is kept; the lock is gone and the logs are flushed
    assert open(f"{d}/eval.csv").read().splitlines()[1].startswith("1,")
    assert not os.path.exists(f"{d}/.lock") and glob.glob(f"{d}/events.out.tfevents.*")


def test_offline_steps_may_not_change_once_the_online_phase_began_and_lr_keeps_the_experiment(ogbench_dir, tmp_path,
                                                                                            capsys, monkeypatch):
    maze = ["--device", "cpu", "--actor-hidden-dims", "8", "--value-hidden-dims", "8", "--batch-size", "16",
            "--env-id", MAZE_ID, "--eval-episodes", "1"]
    code, _ = cli("fql", [*maze, "--offline-steps", "2", "--online-steps", "3", "--eval-interval", "4", "--runs-dir",
                          str(tmp_path)], capsys, monkeypatch)
    d = run_dir_of(tmp_path)
    ckpt = f"{d}/fql.pt"
    assert code == 0 and torch.load(ckpt, weights_only=True)["step"] == 5
    code, err = cli("fql", [*maze, "--offline-steps", "3", "--online-steps", "3", "--resume", ckpt], capsys,
                    monkeypatch)
    assert_one_line(code, err, "--offline-steps is 3 here but 2 in the run")
    code, _ = cli("fql", [*maze, "--offline-steps", "2", "--online-steps", "4", "--eval-interval", "4", "--lr", "1e-4",
                          "--resume", ckpt], capsys, monkeypatch)
    record = json.load(open(f"{d}/args.json"))
    assert code == 0 and record["online_steps"] == 4 and record["lr"] == 3e-4  # a NaN rescue stays the same run
    assert record["run"]["continuations"][-1]["changed"] == {"online_steps": [3, 4], "lr": [3e-4, 1e-4]}
