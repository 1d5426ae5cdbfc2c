"""Bad input ends in one line `error: ...` that names the flag, file or id, exit code 2, and no run folder.

Most cases run the entry point in-process (`plumbing.cli` with a patched sys.argv: the code `python <script>.py` runs,
without paying for a new interpreter); one subprocess per script checks the `__main__` wiring, and collect.py is
stopped mid-collection as a real process.
"""
import dataclasses
import glob
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import collect
import common
import plumbing
import runfiles
from conftest import CUBE_ID, MAZE_ID, ROOT, assert_one_line, cli, run_dir_of

TINY = ["--device", "cpu", "--actor-hidden-dims", "8", "--value-hidden-dims", "8", "--batch-size", "16"]
MAZE = "pointmaze-medium-navigate-v0"


# ---------------------------------------------------------------------------------------------------- flags
FLAG_CASES = [
    ("fql", ["--offline-steps", "0"], "--offline-steps"),
    ("fql", ["--alpha", "-1"], "--alpha"),
    ("fql", ["--batch-size", "0"], "--batch-size"),
    ("fql", ["--eval-episodes", "0"], "--eval-episodes"),
    ("fql", ["--eval-interval", "0"], "--eval-interval"),
    ("fql", ["--log-interval", "0"], "--log-interval"),
    ("fql", ["--flow-steps", "0"], "--flow-steps"),
    ("fql", ["--actor-hidden-dims", "8", "0"], "--actor-hidden-dims"),
    ("driftql", ["--drift-temp", "0"], "--drift-temp"),
    ("driftql", ["--discount", "1.5"], "--discount"),
    ("driftql", ["--drift-ngen", "0"], "--drift-ngen"),
    ("dfp", ["--online-pos-samples", "17"], "--online-n-samples"),  # K > N
    ("dfp", ["--drift-temps", "0.05", "0"], "--drift-temps"),
    ("dfp", ["--actor-ema-tau", "2"], "--actor-ema-tau"),
    ("qam", ["--num-qs", "0"], "--num-qs"),
    ("qam", ["--lr", "nan"], "--lr"),
    ("qam", ["--horizon", "5"], "--horizon"),  # every bandit step is terminal: no chunk of 5 is valid
    ("deflow", ["--delta", "0"], "--delta"),
    ("deflow", ["--tau", "0"], "--tau"),
    ("deflow", ["--resume", "no/such.pt"], "no/such.pt"),
    ("fql", ["--env-id", "antmaze-large-paly-v2"], "antmaze-large-play-v2"),
    ("driftql", ["--online-steps", "5"], "--online-steps"),  # the bandit has no environment to act in
    ("dfp", ["--horizon", "2"], "--horizon"),
]


@pytest.mark.parametrize("script, argv, named", FLAG_CASES)
def test_bad_flag_is_one_line_naming_it_and_leaves_no_run_folder(script, argv, named, tmp_path, capsys,
                                                                  monkeypatch):
    code, err = cli(script, ["--env-id", "bandit-4gaussian", "--runs-dir", str(tmp_path / "runs"), *TINY, *argv],
                    capsys, monkeypatch)
    assert_one_line(code, err, named)
    assert not (tmp_path / "runs").exists()


ENTRY_CASES = [("fql", "--batch-size"), ("driftql", "--drift-temp"), ("dfp", "--gen-per-label"), ("qam", "--horizon"),
               ("deflow", "--eval-interval")]


@pytest.mark.slow
@pytest.mark.parametrize("script, flag", ENTRY_CASES)
def test_each_script_entry_point_prints_one_line(script, flag, tmp_path):
    r = subprocess.run([sys.executable, f"{script}.py", flag, "0", "--runs-dir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_one_line(r.returncode, r.stderr.splitlines(), flag)
    assert os.listdir(tmp_path) == []


def test_traceback_on_request(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["fql.py", "--batch-size", "0", "--runs-dir", str(tmp_path)])
    monkeypatch.setenv(plumbing.TRACEBACK_VAR, "1")
    with pytest.raises(common.UsageError, match="--batch-size"):
        plumbing.cli(importlib.import_module("fql").main, importlib.import_module("fql").Args)


@pytest.mark.parametrize("script", ["fql", "driftql", "dfp", "qam", "deflow", "collect"])
def test_every_numeric_flag_has_an_allowed_range(script):
    mod = importlib.import_module(script)
    numeric = {f.name for f in dataclasses.fields(mod.Args) if re.search(r"\b(int|float)\b", str(f.type))}
    assert numeric - set(mod.LIMITS) <= {"noise_dim"}  # DriftQL's noise_dim: any value (official: <= 0 = action dim)


# ---------------------------------------------------------------------------------------------------- data files
@pytest.fixture
def data_dir(ogbench_dir, tmp_path, monkeypatch):
    """A private copy of the regenerated pointmaze pair (and the cube pair) to damage."""
    out = tmp_path / "data"
    shutil.copytree(ogbench_dir, out)
    monkeypatch.setenv("OGBENCH_DATA_DIR", str(out))
    return out


def damage(path, how):
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif how == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif how == "corrupt inside":
        mid = len(data) // 3
        path.write_bytes(data[:mid] + bytes(200) + data[mid + 200:])


@pytest.mark.parametrize("which, how, says", [
    ("-val", "missing", "is missing beside"),
    ("", "empty", "cannot be read"),
    ("", "truncated", "cannot be read"),
    ("", "random bytes", "cannot be read"),
    ("-val", "corrupt inside", "cannot be read"),
])
def test_damaged_dataset_file_is_one_line_with_the_fix(which, how, says, data_dir, tmp_path, capsys, monkeypatch):
    path = data_dir / f"{MAZE}{which}.npz"
    damage(path, how)
    code, err = cli("fql", ["--env-id", MAZE_ID, "--runs-dir", str(tmp_path / "runs"), *TINY], capsys, monkeypatch)
    assert_one_line(code, err, str(path), says, f"python collect.py {MAZE}")
    assert not (tmp_path / "runs").exists()


def test_dataset_from_another_task_or_collection_is_refused(data_dir, tmp_path, capsys, monkeypatch):
    val = data_dir / f"{MAZE}-val.npz"
    shutil.copy(data_dir / "cube-single-play-v0-val.npz", val)  # 28-D cube observations under the maze's name
    code, err = cli("fql", ["--env-id", MAZE_ID, "--runs-dir", str(tmp_path / "runs"), *TINY], capsys, monkeypatch)
    assert_one_line(code, err, str(val), "another dataset")
    other = tmp_path / "other"  # a pointmaze pair collected with other settings: its -val file beside our train file
    collect.main(collect.Args(MAZE, data_dir=str(other), num_episodes=1, num_val_episodes=1, max_episode_steps=51,
                              workers=1))
    capsys.readouterr()  # collect.py's own progress output
    shutil.copy(other / f"{MAZE}-val.npz", val)
    code, err = cli("fql", ["--env-id", MAZE_ID, "--runs-dir", str(tmp_path / "runs"), *TINY], capsys, monkeypatch)
    assert_one_line(code, err, str(val), "different collections")
    assert not (tmp_path / "runs").exists()


def test_ogbench_typo_names_the_closest_ids(tmp_path, capsys, monkeypatch):
    code, err = cli("fql", ["--env-id", "cube-singel-play-singletask-task2-v0", "--runs-dir", str(tmp_path), *TINY],
                    capsys, monkeypatch)
    assert_one_line(code, err, "cube-singel-play-singletask-task2-v0", "no such OGBench environment", CUBE_ID)
    assert "download" not in err[0] and "expert" not in err[0]


# ---------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real fql.py checkpoint of 2 steps on the bandit."""
    runs = tmp_path_factory.mktemp("ckpt")
    fql = importlib.import_module("fql")
    fql.main(fql.Args(env_id="bandit-4gaussian", offline_steps=2, eval_interval=2, device="cpu", batch_size=16,
                      actor_hidden_dims=(8,), value_hidden_dims=(8,), runs_dir=str(runs)))
    return f"{run_dir_of(runs)}/fql.pt"


@pytest.mark.parametrize("how, script, extra, says", [
    ("empty", "fql", [], "cannot be read"),
    ("truncated", "fql", [], "cannot be read"),
    ("random bytes", "fql", [], "cannot be read"),
    ("as is", "driftql", [], "written by fql.py, not driftql.py"),
    ("as is", "fql", ["--offline-steps", "2"], "at step 2, already at or past the budget"),
    ("other env", "fql", [], f"--env-id is bandit-4gaussian here but {CUBE_ID} in the run"),
    ("as is", "fql", ["--actor-hidden-dims", "16"], "--actor-hidden-dims is 16 here but 8 in the run"),
])
def test_bad_checkpoint_is_one_line_naming_the_file(how, script, extra, says, checkpoint, tmp_path, capsys,
                                                    monkeypatch):
    path = tmp_path / "fql.pt"
    shutil.copy(checkpoint, path)
    if how == "other env":
        payload = torch.load(path, weights_only=True)
        payload["args"]["env_id"] = CUBE_ID
        torch.save(payload, path)
    elif how != "as is":
        damage(path, how)
    argv = ["--env-id", "bandit-4gaussian", "--offline-steps", "4", "--runs-dir", str(tmp_path / "runs"), *TINY,
            "--resume", str(path), *extra]
    code, err = cli(script, argv, capsys, monkeypatch)
    assert_one_line(code, err, str(path), says)
    assert not (tmp_path / "runs").exists()


def test_nan_stop_is_one_line_with_the_flags_to_change_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    fql = importlib.import_module("fql")
    real_update, calls = fql.update, []

    def poisoned(*update_args, **kw):  # the loss turns NaN from step 6 on
        calls.append(1)
        out = real_update(*update_args, **kw)
        out["total_loss"] = out["total_loss"] * (float("nan") if len(calls) >= 6 else 1.0)
        return out

    monkeypatch.setattr(fql, "update", poisoned)
    code, err = cli("fql", ["--env-id", "bandit-4gaussian", "--offline-steps", "20", "--eval-interval", "4",
                            "--log-interval", "10", "--runs-dir", str(tmp_path), *TINY], capsys, monkeypatch)
    assert_one_line(code, err, "step 6", "last good checkpoint", "--resume", "--lr", "--seed")
    ckpt = f"{run_dir_of(tmp_path)}/fql.pt"
    assert ckpt in err[0] and runfiles.load_checkpoint(ckpt, "fql", torch.device("cpu"))["step"] == 4


def test_resume_uses_the_new_lr(checkpoint, tmp_path):
    fql = importlib.import_module("fql")
    shutil.copytree(os.path.dirname(checkpoint), tmp_path / "run")  # the fixture's run stays at step 2
    checkpoint = str(tmp_path / "run" / "fql.pt")
    before = runfiles.load_checkpoint(checkpoint, "fql", torch.device("cpu"))["optimizer"]["param_groups"]
    fql.main(fql.Args(env_id="bandit-4gaussian", actor_hidden_dims=(8,), value_hidden_dims=(8,), batch_size=16,
                      eval_interval=2, device="cpu", lr=1e-5, offline_steps=6, resume=checkpoint))
    after = runfiles.load_checkpoint(checkpoint, "fql", torch.device("cpu"))["optimizer"]["param_groups"]
    assert all(g["lr"] != 1e-5 for g in before) and all(g["lr"] == 1e-5 for g in after)


# ---------------------------------------------------------------------------------------------------- run folders
def test_identical_runs_started_together_get_their_own_folders(tmp_path, monkeypatch):
    fql = importlib.import_module("fql")
    monkeypatch.setattr(runfiles.time, "time", lambda: 1_800_000_000.0)  # both start "in the same second"
    args = fql.Args(env_id="bandit-4gaussian", runs_dir=str(tmp_path))
    dirs = [runfiles.start_run(args, "fql")[0] for _ in range(3)]
    assert len(set(dirs)) == 3 and all((d / "args.json").exists() for d in dirs)
    assert sorted(os.listdir(tmp_path)) == sorted(d.name for d in dirs)


def test_progress_lines_without_a_terminal_and_losses_at_the_final_step(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fql = importlib.import_module("fql")
    fql.main(fql.Args(env_id="bandit-4gaussian", offline_steps=3, eval_interval=100, log_interval=100, device="cpu",
                      batch_size=16, actor_hidden_dims=(8,), value_hidden_dims=(8,), runs_dir=str(tmp_path)))
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step 3/3")]
    assert len(line) == 1 and "steps/s" in line[0] and "ETA" in line[0] and "last eval episodic_return=" in line[0]
    ea = EventAccumulator(run_dir_of(tmp_path))
    ea.Reload()
    assert [e.step for e in ea.Scalars("losses/critic_loss")] == [3]


# ---------------------------------------------------------------------------------------------------- collect.py
def test_collect_bad_count_is_one_line(tmp_path, capsys, monkeypatch):
    code, err = cli("collect", [MAZE, "--num-episodes", "0", "--data-dir", str(tmp_path)], capsys, monkeypatch)
    assert_one_line(code, err, "--num-episodes")
    assert os.listdir(tmp_path) == []


def children(pid):
    """Live (non-zombie) processes whose parent is pid, from /proc."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.split("/")[2]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_collect_stops_its_workers_and_keeps_the_old_pair(sig, tmp_path):
    old = {s: tmp_path / f"{MAZE}{s}.npz" for s in ("", "-val")}
    for path in old.values():
        path.write_bytes(b"old " + path.name.encode())
    proc = subprocess.Popen([sys.executable, "collect.py", MAZE, "--num-episodes", "200", "--workers", "2",
                             "--data-dir", str(tmp_path)], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},  # SIGINT as in a terminal's foreground,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even under `&`/nohup
    deadline = time.time() + 120
    while len(children(proc.pid)) < 3 and time.time() < deadline:  # 2 workers + the resource tracker
        time.sleep(0.2)
    workers = children(proc.pid)
    time.sleep(3)  # mid-collection: the workers are running episodes
    assert proc.poll() is None and len(workers) >= 2
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1].splitlines()
    assert proc.returncode == 128 + sig and f"error: stopped by {signal.Signals(sig).name}" in err, err
    time.sleep(0.5)
    assert not [w for w in workers if os.path.exists(f"/proc/{w}") and open(f"/proc/{w}/stat").read().split()[2] != "Z"]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in old.values())  # no temp folder or chunk left
    for path in old.values():
        assert path.read_bytes() == b"old " + path.name.encode()
