"""sweep.py: a grid of real runs on submitit's local executor, resume after a kill and after submitit's checkpoint
signal, and the Slurm array that sweep.py hands to submitit (sbatch text and array mapping, nothing submitted)."""
import csv
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import submitit
import torch
import tyro
from submitit.slurm.test_slurm import mocked_slurm  # submitit's own stand-in for sbatch/sacct

import sweep
from conftest import MAZE_ID

TINY = ("eval-episodes=1", "batch-size=16", "actor-hidden-dims=8", "value-hidden-dims=8", "device=cpu")
LONG = ("offline-steps=600", "eval-interval=100", *TINY)  # long enough to be stopped mid-way


def folders(sweep_dir):
    return sorted(p.parent for p in Path(sweep_dir).glob("*/sweep.json"))


def run_dirs(folder):
    return [d for d in Path(folder).iterdir() if d.is_dir()]


def eval_rows(folder):
    (d,) = run_dirs(folder)
    return list(csv.DictReader(open(d / "eval.csv")))


def ckpt_step(folder):
    found = list(Path(folder).glob("*/fql.pt"))
    return torch.load(found[0], weights_only=True)["step"] if found else 0


def test_grid_expands_and_names_stable_folders(tmp_path):
    args = sweep.Args("fql.py", env_ids=("cube-single-play-singletask-task{1..5}-v0",), seeds=("0-7",),
                      flags=("alpha=100,300", "q-agg=min"), sweep_dir=str(tmp_path))
    runs = sweep.grid(args, tmp_path)
    assert len(runs) == 5 * 8 * 2
    assert {r.argv[1] for r in runs} == {f"cube-single-play-singletask-task{i}-v0" for i in range(1, 6)}
    # the folder depends on script, env, seed and the flags as parsed: spelling, order and stated defaults don't matter
    def one(*flags):
        return Path(sweep.grid(dataclasses.replace(args, seeds=("3",), flags=flags), tmp_path)[0].folder)

    a = one("alpha=300", "q-agg=min")
    assert a == one("q_agg=min", "--alpha=300.0", "discount=0.99")
    assert a == one("alpha=300", "q-agg=min", "save-interval=5000")  # added to a relaunch, it resumes the same runs
    assert a.parent == tmp_path and a.name.startswith("cube-single-play-singletask-task1-v0__fql__3__")
    others = one("alpha=300"), one("alpha=30", "q-agg=min"), one("alpha=300", "q-agg=min", "layer-norm=False")
    assert len({a, *others}) == 4
    assert sweep.expand("x{a,b}{1..2}") == ["xa1", "xa2", "xb1", "xb2"]


@pytest.mark.parametrize("argv, message", [
    (["fql.py", "--env-ids", "bandit-4gaussian", "--flags", "alpa=3"], "fql.py has no flag --alpa"),
    (["fql.py", "--env-ids", "bandit-4gaussian", "--flags", "alpha=abc"], "fql.py rejects --env-id bandit-4gaussian"),
    (["fql.py", "--env-ids", "bandit-4gaussian", "--flags", "seed=1"], "sweep.py sets --seed itself"),
    (["fql.py", "--env-ids", "bandit-4gaussian", "--flags", "save-model=False"], "save-model=False"),
    (["fql.py", "--env-ids", "bandit-4gaussian", "--seeds", "3-1"], "--seeds '3-1'"),
    (["fql.py", "--env-ids", "task{1}"], "braces take a list"),
    (["fql.py", "--env-ids", "bandit-4gaussian", "--parallel", "0"], "--parallel 0"),
    (["--env-ids", "bandit-4gaussian"], "name the script"),
    (["fql.py"], "--env-ids is empty"),
])
def test_bad_grids_get_one_error_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(tyro.cli(sweep.Args, args=[*argv, "--sweep-dir", str(tmp_path)]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_command_line_says_one_line_too():
    argv = ["qam.py", "--env-ids", "bandit-4gaussian", "--flags", "horizon=x"]
    out = subprocess.run([sys.executable, "sweep.py", *argv], cwd=sweep.ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: qam.py rejects --env-id bandit-4gaussian --seed 0 --horizon x")


@pytest.mark.slow
def test_two_tasks_two_seeds_end_to_end_then_a_relaunch_skips_them(tmp_path, ogbench_dir, capsys):
    args = sweep.Args("fql.py", env_ids=(f"{{bandit-4gaussian,{MAZE_ID}}}",), seeds=("0-1",),
                      flags=("offline-steps=2", "eval-interval=2", *TINY), sweep_dir=str(tmp_path), parallel=2)
    assert sweep.main(args) == {"launched": 4, "done": 4, "failed": 0}
    expected = sorted(Path(r.folder) for r in sweep.grid(args, tmp_path))
    assert folders(tmp_path) == expected and len({f.name.split("__")[-1] for f in expected}) == 1
    assert {f.name.rsplit("__", 1)[0] for f in expected} == {f"{e}__fql__{s}" for e in ("bandit-4gaussian", MAZE_ID)
                                                              for s in (0, 1)}
    for f in expected:
        (d,) = run_dirs(f)
        assert json.load(open(f / "done"))["run_dir"] == str(d)
        assert [r["step"] for r in eval_rows(f)] == ["1", "2"]
        assert json.load(open(d / "args.json"))["runs_dir"] == str(f)
    jobs_before = sorted(os.listdir(tmp_path / ".submitit"))
    logs_before = [(f / "log.txt").read_text() for f in expected]
    capsys.readouterr()
    assert sweep.main(args) == {"launched": 0, "done": 0, "failed": 0}
    assert "4 runs in" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / ".submitit")) == jobs_before
    assert [(f / "log.txt").read_text() for f in expected] == logs_before
    assert sweep.main(dataclasses.replace(args, status=True)) == {"queued": 0, "running": 0, "done": 4, "failed": 0,
                                                                   "not launched": 0}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The eval.csv rows of the LONG bandit run, run whole through the sweep."""
    sweep_dir = tmp_path_factory.mktemp("whole")
    args = sweep.Args("fql.py", env_ids=("bandit-4gaussian",), flags=LONG, sweep_dir=str(sweep_dir))
    assert sweep.main(args)["done"] == 1
    (f,) = folders(sweep_dir)
    rows = eval_rows(f)
    assert [r["step"] for r in rows] == ["1", "100", "200", "300", "400", "500", "600"]
    return rows


def wait_for(condition, timeout=120):
    end = time.time() + timeout
    while not condition():
        assert time.time() < end, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_killed_run_resumes_on_relaunch_and_ends_like_an_uninterrupted_one(tmp_path, uninterrupted, capsys):
    args = sweep.Args("fql.py", env_ids=("bandit-4gaussian",), flags=LONG, sweep_dir=str(tmp_path))
    (folder,) = [Path(r.folder) for r in sweep.grid(args, tmp_path)]
    result = {}
    launcher = threading.Thread(target=lambda: result.update(sweep.main(args)))
    launcher.start()
    wait_for(lambda: ckpt_step(folder) >= 100)
    os.kill(json.load(open(folder / "running.json"))["pid"], signal.SIGKILL)
    launcher.join()
    assert result == {"launched": 1, "done": 0, "failed": 1}
    killed_at = ckpt_step(folder)
    assert 100 <= killed_at < 600
    capsys.readouterr()
    assert sweep.main(dataclasses.replace(args, status=True))["failed"] == 1
    assert "killed by SIGKILL" in capsys.readouterr().out
    assert sweep.main(args) == {"launched": 1, "done": 1, "failed": 0}
    attempts = [line for line in (folder / "log.txt").read_text().splitlines() if line.startswith("==== ")]
    assert len(attempts) == 2 and "--resume" not in attempts[0] and f"--resume {folder}/" in attempts[1]
    assert eval_rows(folder) == uninterrupted  # one run folder, every evaluation number identical


@pytest.mark.slow
def test_submitits_checkpoint_signal_requeues_the_run_which_resumes(tmp_path, uninterrupted):
    """USR2 (Slurm's warning before the time limit, or a preemption) to the job: submitit calls Run.checkpoint, which
    stops the script, and requeues the run (the local executor starts it again), which resumes from its checkpoint."""
    args = sweep.Args("fql.py", env_ids=("bandit-4gaussian",), flags=LONG, sweep_dir=str(tmp_path))
    (folder,) = [Path(r.folder) for r in sweep.grid(args, tmp_path)]
    result = {}
    launcher = threading.Thread(target=lambda: result.update(sweep.main(args)))
    launcher.start()
    wait_for(lambda: ckpt_step(folder) >= 100)
    os.kill(json.load(open(folder / "running.json"))["job_pid"], signal.SIGUSR2)
    launcher.join()
    assert result == {"launched": 1, "done": 1, "failed": 0}
    attempts = [line for line in (folder / "log.txt").read_text().splitlines() if line.startswith("==== ")]
    assert len(attempts) == 2 and "--resume" not in attempts[0] and f"--resume {folder}/" in attempts[1]
    assert eval_rows(folder) == uninterrupted


@pytest.mark.slow
def test_slurm_array_parameters_and_mapping(tmp_path, capsys):
    """sweep.py's job array through submitit's own Slurm executor; submitit's mock answers sbatch and sacct."""
    args = sweep.Args("fql.py", env_ids=("bandit-4gaussian", "{pointmaze,antmaze}-medium-navigate-singletask-task1-v0"),
                      seeds=("0-1",), flags=("offline-steps=2", *TINY), sweep_dir=str(tmp_path), cluster="slurm",
                      partition="gpu", account="lab", gpus_per_task=1, cpus_per_task=6, mem_gb=32, timeout_min=240,
                      parallel=4)
    runs = sweep.grid(args, tmp_path)
    with mocked_slurm() as mock:
        assert sweep.main(args) == {"launched": 6, "done": 0, "failed": 0}
        array = mock.last_job
        sbatch = submitit.SlurmJob(tmp_path / ".submitit" / "%j", array).paths.submission_file.read_text()
        for line in ("--array=0-5%4", "--partition=gpu", "--account=lab", "--gpus-per-node=1", "--cpus-per-task=6",
                     "--mem=32GB", "--time=240", "--signal=USR2@90", "--requeue", "--job-name=sweep-fql"):
            assert f"#SBATCH {line}\n" in sbatch
        # array task i runs the grid's run i, and each run's folder records its task
        for i, run in enumerate(runs):
            job_id = f"{array}_{i}"
            assert json.load(open(Path(run.folder) / "job.json"))["job_id"] == job_id
            pickled = submitit.SlurmJob(tmp_path / ".submitit" / "%j", job_id).paths.submitted_pickle
            assert submitit.helpers.DelayedSubmission.load(pickled).function.folder == run.folder
        # --status asks sacct; a relaunch leaves queued and running runs alone
        mock.set_job_state(array, "PENDING", len(runs))
        assert sweep.main(dataclasses.replace(args, status=True))["queued"] == 6
        assert sweep.main(args)["launched"] == 0 and mock.last_job == array
        mock.set_job_state(array, "NODE_FAIL", len(runs))
        capsys.readouterr()
        assert sweep.main(dataclasses.replace(args, status=True))["failed"] == 6
        assert f"Slurm job {array}_0 ended NODE_FAIL" in capsys.readouterr().out
        # run the bandit's array task as a node would (the sbatch file's srun command, with Slurm's variables)
        command = sbatch.strip().splitlines()[-1].split(" " + sys.executable + " ", 1)[1]
        env = dict(os.environ, SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="99", SLURM_ARRAY_JOB_ID=array,
                   SLURM_ARRAY_TASK_ID="0")
        assert subprocess.run([sys.executable, *command.split()], env=env).returncode == 0
        assert sweep.state_of(Path(runs[0].folder)) == ("done", "")
        assert runs[0].argv[:2] == ["--env-id", "bandit-4gaussian"]


def test_a_pid_that_a_later_process_reuses_is_not_taken_for_the_run(tmp_path):
    """running.json and job.json record each pid's start time; a live process with that pid but another start time
    (the pid was reused after the run died) leaves the run 'failed', resumable, not 'running' or 'queued'."""
    me, host = os.getpid(), socket.gethostname()
    started = sweep.start_time(me)
    assert isinstance(started, int)
    (tmp_path / "log.txt").write_text("the run's output\n")
    for start, state in ((started, "running"), (started + 1, "failed")):
        sweep.write_json(tmp_path / "job.json", cluster="local", host=host, launcher_pid=me, launcher_pid_start=start)
        sweep.write_json(tmp_path / "running.json", host=host, pid=me, job_pid=me, pid_start=start, job_pid_start=start)
        assert sweep.state_of(tmp_path)[0] == state
    assert sweep.alive(dict(host=host, pid=me), "pid")  # records written before start times were kept


def processes_under(folder: Path) -> list:
    """PIDs of live processes whose command line names `folder` (the sweep's jobs and their scripts)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(folder) in cmd and state != "Z" and int(pid) != os.getpid():
            pids.append(int(pid))
    return pids


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_every_run_it_started_even_a_hung_one(tmp_path):
    flags = ["offline-steps=100000", "eval-interval=20", *TINY]
    cmd = [sys.executable, "sweep.py", "fql.py", "--env-ids", "bandit-4gaussian", "--seeds", "0-1", "--parallel", "2",
           "--sweep-dir", str(tmp_path), "--flags", *flags]
    # launched as a shell launches a background job (`&`, nohup): with SIGINT ignored, which its children inherit
    proc = subprocess.Popen(cmd, cwd=sweep.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        wait_for(lambda: len(list(tmp_path.glob("*/*/fql.pt"))) == 2, timeout=180)
        assert len(processes_under(tmp_path)) >= 2  # the scripts (and their jobs) are running
        hung_run, other_run = folders(tmp_path)
        hung = json.loads((hung_run / "running.json").read_text())["pid"]
        os.kill(hung, signal.SIGSTOP)  # one script cannot act on signals: it stands for one stuck while stopping
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM: 2 runs stopped"), err[-600:]
    assert processes_under(tmp_path) == []  # nothing of the sweep survives it, the hung script included
    log = (other_run / "log.txt").read_text()  # the other script stopped itself (its one line), it was not killed
    assert log.strip().splitlines()[-1].startswith("error: stopped by SIGTERM"), log[-600:]
    assert "Traceback" not in log, log[-2000:]
    for ckpt in tmp_path.glob("*/*/fql.pt"):  # each run keeps a checkpoint to resume from
        assert torch.load(ckpt, weights_only=True)["step"] >= 1
