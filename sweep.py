"""Sweeps: one of the five scripts over tasks x seeds x flags, on a Slurm cluster or on this machine, through submitit.

Every run of the grid gets a stable folder, <sweep-dir>/<env>__<script>__<seed>__<hash of the flags>, which the
script receives as --runs-dir (it makes its run folder inside). The folder also holds the sweep's own records:
  sweep.json   the run's script and flags            log.txt     the script's output, every attempt appended
  job.json     the job that runs it (Slurm id, or     running.json  host, pids of script and job while it runs
               the local sweep.py that launched it)   done        written after the script returned 0
  failed       the last error line of a failed attempt (removed when the next attempt starts)
job.json and running.json record each pid's start time too, so a later process that reuses a pid is not taken for
the run.

Each run is one submitit job that starts the script as a child process. The script saves `<exp_name>.pt` at every
evaluation, and a job that starts where a checkpoint exists passes `--resume`, which restores the networks, the
optimizer and torch's random streams (and the online transitions): an interrupted run continues its own run folder,
and offline it ends with the numbers of an uninterrupted one (online it goes on with a fresh episode). On Slurm the job is checkpointable: at the time limit (and on preemption with a signal) submitit
calls `Run.checkpoint`, which stops the script and requeues the same run, which resumes. Relaunching the same sweep
skips the runs that are done, queued or running, and starts (or resumes) all the others.

    python sweep.py fql.py --env-ids cube-single-play-singletask-task{1..5}-v0 --seeds 0-7 --flags alpha=300 --cluster slurm --partition gpu
    python sweep.py fql.py --env-ids cube-single-play-singletask-task{1..5}-v0 --seeds 0-7 --flags alpha=300 --parallel 2
    python sweep.py fql.py --env-ids cube-single-play-singletask-task{1..5}-v0 --seeds 0-7 --flags alpha=300 --status
    python sweep.py fql.py --env-ids bandit-4gaussian --seeds 0-2 --flags alpha=1,10,100 q-agg=mean,min
"""
import dataclasses
import hashlib
import importlib
import io
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import cloudpickle
import submitit
import tyro

ROOT = Path(__file__).resolve().parent
SCRIPTS = ("fql.py", "driftql.py", "dfp.py", "qam.py", "deflow.py")
SWEEP_OWNED = ("env_id", "seed", "runs_dir", "resume")  # set by sweep.py for each run, never through --flags
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # runs on this machine have no time limit
QUEUED_SLURM = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED"}
RUNNING_SLURM = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


@dataclass
class Args:
    script: tyro.conf.Positional[Optional[Literal[SCRIPTS]]] = None
    """the script to sweep (optional with --status, which then lists every run in --sweep-dir)"""
    env_ids: tuple[str, ...] = ()
    """tasks; {a,b} and {1..5} expand, so cube-single-play-singletask-task{1..5}-v0 names all five"""
    seeds: tuple[str, ...] = ("0",)
    """seeds: numbers and inclusive ranges, e.g. 0-7, or 0 3 5"""
    flags: tuple[str, ...] = ()
    """flags of the script as name=value (alpha=300 q-agg=min normalize-q-loss=True); values separated by commas
    are crossed with the rest of the grid (alpha=100,300); a tuple takes spaces (actor-hidden-dims='256 256')"""
    sweep_dir: str = "sweeps"
    """parent of the runs' stable folders and of submitit's logs (.submitit); shared by all sweeps"""
    status: bool = False
    """count the runs that are queued, running, done and failed, with each failed run's last error line; launch
    nothing"""
    cluster: Literal["local", "slurm"] = "local"
    """local: runs on this machine (sweep.py waits for them); slurm: one job array, sweep.py returns once submitted"""
    parallel: Optional[int] = None
    """runs at once: on this machine (default 1), or the Slurm array's throttle %K (default: the whole array)"""
    partition: Optional[str] = None
    """Slurm partition (default: the cluster's)"""
    account: Optional[str] = None
    """Slurm account (default: yours)"""
    gpus_per_task: int = 1
    """Slurm: GPUs per run"""
    cpus_per_task: int = 8
    """Slurm: CPUs per run"""
    mem_gb: Optional[int] = None
    """Slurm: memory per run in GB (default: the partition's)"""
    timeout_min: int = 24 * 60
    """Slurm time limit of a job in minutes; a run that reaches it is requeued and resumes from its checkpoint"""
    max_timeouts: int = 30
    """Slurm: how often a run may reach the time limit and be requeued (preemptions do not count)"""


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------------------------------------------- the grid
def expand(text: str) -> list:
    """Brace expansion as in bash: 'a{1..3}b' -> a1b a2b a3b, 'x{p,q}' -> xp xq (nested and repeated groups too)."""
    m = re.search(r"\{([^{}]*)\}", text)
    if m is None:
        return [text]
    r = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", m.group(1))
    if r:
        a, b = int(r.group(1)), int(r.group(2))
        items = [str(i) for i in range(a, b + (1 if b >= a else -1), 1 if b >= a else -1)]
    elif "," in m.group(1):
        items = m.group(1).split(",")
    else:
        fail(f"{text!r}: braces take a list {{a,b}} or a range {{1..5}}")
    return [out for item in items for out in expand(text[:m.start()] + item + text[m.end():])]


def parse_seeds(tokens) -> list:
    seeds = []
    for token in (t for tok in tokens for s in expand(tok) for t in s.split(",")):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", token.strip())
        if m is None or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            fail(f"--seeds {token!r}: give numbers and ranges such as 0-7 or 0 3 5")
        seeds += range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1)
    return list(dict.fromkeys(seeds))


def parse_flags(script: str, tokens) -> list:
    """name=v1,v2 tokens -> every combination, each a list of the script's command-line arguments."""
    fields = {f.name: f for f in dataclasses.fields(importlib.import_module(script[:-3]).Args)}
    axes = []
    for token in tokens:
        name, sep, values = token.partition("=")
        key = name.strip().lstrip("-").replace("-", "_")
        if not sep or not values:
            fail(f"--flags {token!r}: write name=value, e.g. alpha=300 or alpha=100,300 to cross two values")
        if key not in fields:
            fail(f"--flags {token!r}: {script} has no flag --{key.replace('_', '-')} (see python {script} --help)")
        if key in SWEEP_OWNED:
            fail(f"--flags {token!r}: sweep.py sets --{key.replace('_', '-')} itself; use --env-ids and --seeds")
        flag = "--" + key.replace("_", "-")
        if fields[key].type is bool:
            bools = {"true": [flag], "false": ["--no-" + key.replace("_", "-")]}
            if any(v.strip().lower() not in bools for v in values.split(",")):
                fail(f"--flags {token!r}: --{key.replace('_', '-')} is True or False")
            axes.append([bools[v.strip().lower()] for v in values.split(",")])
        else:
            axes.append([[flag, *v.split()] for v in values.split(",")])
    return [[arg for part in combo for arg in part] for combo in itertools.product(*axes)]


def script_args(script: str, argv: list):
    """The script's Args for this command line, or one error line (tyro's own message silenced)."""
    module = importlib.import_module(script[:-3])
    try:
        with redirect_stderr(io.StringIO()):
            return tyro.cli(module.Args, args=argv)
    except SystemExit:
        fail(f"{script} rejects {' '.join(argv)} (run `python {script} {' '.join(argv)}` to see why)")


def run_folder(sweep_dir: Path, script: str, parsed) -> Path:
    """<env>__<script>__<seed>__<hash>: the hash covers every flag that differs from the script's default (as
    parsed, so alpha=300 and alpha=300.0 are the same run), the env id, the seed and --save-interval aside (adding
    it to a relaunch resumes the same runs)."""
    defaults = dataclasses.asdict(importlib.import_module(script[:-3]).Args())
    changed = {k: v for k, v in dataclasses.asdict(parsed).items()
               if k not in SWEEP_OWNED + ("save_interval",) and v != defaults[k]}  # a resume may change save_interval
    digest = hashlib.sha1(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return sweep_dir / f"{parsed.env_id.replace('/', '-')}__{script[:-3]}__{parsed.seed}__{digest}"


def grid(args: Args, sweep_dir: Path) -> list:
    """Every run of the sweep: one `Run` per (flags, env id, seed), with its stable folder."""
    if args.script is None:
        fail("name the script to sweep, e.g. python sweep.py fql.py --env-ids bandit-4gaussian")
    env_ids = [e for tok in args.env_ids for e in expand(tok)]
    if not env_ids:
        fail("--env-ids is empty: name at least one task")
    runs = []
    for flags in parse_flags(args.script, args.flags):
        for env_id in env_ids:
            for seed in parse_seeds(args.seeds):
                argv = ["--env-id", env_id, "--seed", str(seed), *flags]
                parsed = script_args(args.script, argv)
                if not parsed.save_model:
                    fail("--flags save-model=False: a sweep resumes its runs from the checkpoint, keep it")
                folder = run_folder(sweep_dir, args.script, parsed)
                runs.append(Run(args.script, argv, str(folder), parsed.exp_name))
    return list({r.folder: r for r in runs}.values())


# ---------------------------------------------------------------------------------------------------- one run (the job)
class Run(submitit.helpers.Checkpointable):
    """One run of the grid as a submitit job: starts (or resumes) the script in its stable folder, records how it
    ended."""

    def __init__(self, script: str, argv: list, folder: str, exp_name: str, visible_gpus: Optional[str] = None):
        self.script, self.argv, self.folder, self.exp_name = script, argv, folder, exp_name
        self.visible_gpus = visible_gpus  # the launcher's CUDA_VISIBLE_DEVICES for local jobs ("" = unset)
        self._proc = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}

    def __setstate__(self, state):
        self.__dict__.update(state, _proc=None)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit at the time limit or on preemption: stop the script, requeue this run (which resumes).
        This runs in a signal handler while __call__ waits for the script, so it only signals the script; the wait
        in __call__'s `finally` (reached when submitit exits after the requeue) reaps it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
        return submitit.helpers.DelayedSubmission(Run(self.script, self.argv, self.folder, self.exp_name,
                                                      self.visible_gpus))

    def last_checkpoint(self) -> Optional[Path]:
        found = sorted(Path(self.folder).glob(f"*/{self.exp_name}.pt"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None

    def __call__(self) -> str:
        folder = Path(self.folder)
        ckpt = self.last_checkpoint()
        for d in folder.iterdir():  # run folders of attempts that stopped before their first checkpoint
            if d.is_dir() and (d / "args.json").exists() and (ckpt is None or ckpt.parent != d):
                shutil.rmtree(d)
        (folder / "failed").unlink(missing_ok=True)
        cmd = [sys.executable, str(ROOT / self.script), *self.argv, "--runs-dir", str(folder)]
        cmd += ["--resume", str(ckpt)] if ckpt else []
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.visible_gpus is not None:  # submitit's local executor hides the GPUs; give back the launcher's
            env.pop("CUDA_VISIBLE_DEVICES") if self.visible_gpus == "" else env.update(
                CUDA_VISIBLE_DEVICES=self.visible_gpus)
        try:
            with open(folder / "log.txt", "a") as log:
                log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}: {' '.join(cmd)}\n")
                log.flush()
                start = log.tell()
                self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                              preexec_fn=_child_setup)
                write_json(folder / "running.json", host=socket.gethostname(), pid=self._proc.pid, job_pid=os.getpid(),
                           job_id=submitit.JobEnvironment().job_id, pid_start=start_time(self._proc.pid),
                           job_pid_start=start_time(os.getpid()))
                rc = self._proc.wait()
        finally:
            self._stop()
            (folder / "running.json").unlink(missing_ok=True)
        if rc == 0:
            write_json(folder / "done", run_dir=str(Path(self.last_checkpoint() or folder).parent))
            return self.folder
        with open(folder / "log.txt") as log:
            log.seek(start)
            lines = [line.strip() for line in log if line.strip()]
        error = f"killed by {signal.Signals(-rc).name}" if rc < 0 else (lines[-1] if lines else f"exit code {rc}")
        (folder / "failed").write_text(error + "\n")
        raise RuntimeError(f"{self.folder}: {error}")

    def _stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _child_setup() -> None:
    """In the script's process: leave Slurm's warning signal to the job (it stops the script itself), and die with
    the job if it is killed, so that no orphan keeps writing to a run folder."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass


def write_json(path: Path, **content) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------- state of a run
def proc_stat(pid: int) -> Optional[list]:
    """The fields of /proc/<pid>/stat after the command name (state first, the start time 20th); None without /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> Optional[int]:
    """When the process started, in clock ticks after boot (field 22 of /proc/<pid>/stat); None where unknown."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def alive(record: Optional[dict], key: str) -> bool:
    """Whether the process record[key] of this host still runs: not ended, not a zombie, and not a later process
    that got the same pid (its start time differs from the one recorded as record[key + '_start'])."""
    if not record or record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(record[key], 0)
    except (ProcessLookupError, PermissionError):
        return False
    fields, recorded = proc_stat(record[key]), record.get(f"{key}_start")
    if not fields:
        return True
    if recorded is not None and len(fields) > 19 and int(fields[19]) != recorded:
        return False
    return fields[0] != "Z"  # a process that ended but that nobody reaped yet (a zombie) is not alive


def state_of(folder: Path) -> tuple:
    """(state, detail): done, failed (with the last error line), running, queued or 'not launched'."""
    if (folder / "done").exists():
        return "done", ""
    if (folder / "failed").exists():
        return "failed", (folder / "failed").read_text().strip()
    job, running = read_json(folder / "job.json"), read_json(folder / "running.json")
    if job is None:
        return "not launched", ""
    if job["cluster"] == "slurm":
        slurm_state = submitit.SlurmJob.watcher.get_state(job["job_id"], mode="cache").split()[0]
        if slurm_state in RUNNING_SLURM or (slurm_state == "UNKNOWN" and running):
            return "running", ""
        if slurm_state in QUEUED_SLURM or slurm_state == "UNKNOWN":
            return "queued", ""
        logs = job["folder"].replace("%j", job["job_id"])
        return "failed", f"Slurm job {job['job_id']} ended {slurm_state}; its logs are in {logs}"
    if alive(running, "pid"):
        return "running", ""
    if alive(job, "launcher_pid"):
        return "queued", ""
    if not (folder / "log.txt").exists():  # the launcher stopped before it started this run
        return "not launched", ""
    return "failed", "stopped before finishing (killed or interrupted); relaunching resumes it"


def states_of(folders: list) -> dict:
    """{folder: (state, detail)}, with one sacct call for all the Slurm jobs among them (through submitit's watcher)."""
    slurm = [j["job_id"] for j in map(read_json, (f / "job.json" for f in folders)) if j and j["cluster"] == "slurm"]
    for job_id in slurm:
        submitit.SlurmJob.watcher.register_job(job_id)
    if slurm:
        submitit.SlurmJob.watcher.update()
    return {f: state_of(f) for f in folders}


def report(folders: list, sweep_dir: Path) -> dict:
    states = states_of(folders)
    counts = {s: sum(v[0] == s for v in states.values()) for s in ("queued", "running", "done", "failed")}
    left = sum(v[0] == "not launched" for v in states.values())
    print(f"{len(folders)} runs in {sweep_dir}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + (f", {left} not launched" if left else ""))
    for f, (state, detail) in states.items():
        if state == "failed":
            print(f"  failed: {f.name}: {detail}")
    return {**counts, "not launched": left}


# ---------------------------------------------------------------------------------------------------- launching
def make_executor(args: Args, sweep_dir: Path, count: int) -> submitit.AutoExecutor:
    """submitit's executor with the sweep's job parameters (Slurm: one array of `count` runs)."""
    try:
        executor = submitit.AutoExecutor(folder=sweep_dir / ".submitit" / "%j", cluster=args.cluster,
                                         slurm_max_num_timeout=args.max_timeouts)
    except RuntimeError:
        fail("--cluster slurm: submitit finds no srun here; run sweep.py on the cluster's login node")
    if args.cluster == "local":
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    else:
        executor.update_parameters(
            name=f"sweep-{args.script[:-3]}", timeout_min=args.timeout_min, gpus_per_node=args.gpus_per_task or None,
            cpus_per_task=args.cpus_per_task,
            mem_gb=args.mem_gb, slurm_partition=args.partition, slurm_account=args.account,
            slurm_array_parallelism=min(args.parallel or count, count), slurm_additional_parameters={"requeue": True})
    return executor


def main(args: Args) -> dict:
    sweep_dir = Path(args.sweep_dir).resolve()
    if args.parallel is not None and args.parallel < 1:
        fail(f"--parallel {args.parallel}: runs at once must be at least 1")
    if args.status:
        if args.script is None and not args.env_ids:
            return report(sorted(p.parent for p in sweep_dir.glob("*/sweep.json")), sweep_dir)
        return report([Path(r.folder) for r in grid(args, sweep_dir)], sweep_dir)
    runs = grid(args, sweep_dir)
    cloudpickle.register_pickle_by_value(sys.modules[Run.__module__])  # jobs need not import sweep.py from a path
    states = {str(f): s for f, (s, _) in states_of([Path(r.folder) for r in runs]).items()}
    todo = [r for r in runs if states[r.folder] in ("not launched", "failed")]
    busy = sum(s in ("queued", "running") for s in states.values())
    resumes = sum(r.last_checkpoint() is not None for r in todo)
    print(f"{len(runs)} runs in {sweep_dir}: {sum(s == 'done' for s in states.values())} done, {busy} queued or running"
          f" (left alone), {len(todo)} to launch ({resumes} resume from their checkpoint)")
    for r in todo:
        Path(r.folder).mkdir(parents=True, exist_ok=True)
        write_json(Path(r.folder) / "sweep.json", script=r.script, argv=r.argv)
        (Path(r.folder) / "failed").unlink(missing_ok=True)
    if not todo:
        return {"launched": 0, "done": 0, "failed": 0}
    executor = make_executor(args, sweep_dir, len(todo))
    if args.cluster == "slurm":
        with executor.batch():
            jobs = [executor.submit(r) for r in todo]
        for r, job in zip(todo, jobs):
            write_json(Path(r.folder) / "job.json", cluster="slurm", job_id=job.job_id, folder=str(executor.folder))
        print(f"submitted Slurm array {jobs[0].job_id.split('_')[0]} ({len(jobs)} runs); logs in {sweep_dir}/.submitit;"
              f" follow it with the same command plus --status")
        return {"launched": len(jobs), "done": 0, "failed": 0}
    return run_here(executor, todo, args.parallel or 1)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signum)


def submit_quietly(executor, run, log: Path):
    """executor.submit with this process's stdout and stderr pointed at `log` while submitit starts the job: its
    local controller inherits them, so what it prints when stopped (a traceback on Ctrl-C) goes to the log, not to
    the terminal."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(log, "a") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            return executor.submit(run)
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def run_here(executor, todo: list, parallel: int) -> dict:
    """Runs `parallel` jobs at once on this machine until all are finished. Ctrl-C or SIGTERM stops every run it
    started and waits for them to end (each stops its script, which keeps its last checkpoint: a relaunch resumes)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)
        # started in the background (`&`, nohup), SIGINT comes ignored, and the jobs would inherit that and ignore
        # the SIGINT that stops them; with a handler here they start with the default one
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for r in todo:
        r.visible_gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        write_json(Path(r.folder) / "job.json", cluster="local", host=socket.gethostname(), launcher_pid=os.getpid(),
                   launcher_pid_start=start_time(os.getpid()))
    pending, active, out = list(todo), {}, {"launched": len(todo), "done": 0, "failed": 0}
    try:
        while pending or active:
            while pending and len(active) < parallel:
                run = pending.pop(0)
                active[submit_quietly(executor, run, Path(executor.folder).parent / "controllers.log")] = run
                flags = " ".join(run.argv[4:])  # after --env-id E --seed S: the flags the folder's hash stands for
                print(f"started  {Path(run.folder).name}" + (f"  ({flags})" if flags else ""))
            time.sleep(0.2)
            for job in [j for j in active if j.done()]:
                run = active.pop(job)
                state, detail = state_of(Path(run.folder))
                state, detail = ("done", "") if state == "done" else ("failed", detail or "the job died")
                out[state] += 1
                print(f"{state:8} {Path(run.folder).name}" + (f": {detail}" if detail else ""))
    except KeyboardInterrupt as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        scripts = [read_json(Path(run.folder) / "running.json") for run in active.values()]  # the job removes it
        for job in active:
            job.cancel()  # SIGINT to the job: it stops its script (SIGTERM, then SIGKILL after 60 s) and ends
        # submitit's controller kills a job 1 s after passing it the SIGINT, which can leave the script running on
        # its own (it gets a SIGTERM when its job dies): wait for the scripts too, and kill what is left at the end
        deadline = time.time() + 60
        while time.time() < deadline:
            scripts = [s for s in scripts if alive(s, "pid")]  # once seen gone, a pid is never looked at again
            if not scripts and all(job.done() for job in active):
                break
            time.sleep(0.2)
        for job in active:  # a job that did not end in time
            proc = getattr(job, "_process", None)
            if proc is not None and proc.poll() is None:
                proc.kill()
        for record in scripts:  # a script that did not end in time
            try:
                os.kill(record["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        while any(alive(s, "pid") for s in scripts) and time.time() < deadline + 5:
            time.sleep(0.05)
        for run in active.values():  # its job, killed by submitit's controller, may not have removed it
            (Path(run.folder) / "running.json").unlink(missing_ok=True)
        signum = e.args[0] if e.args else signal.SIGINT
        print(f"stopped by {signal.Signals(signum).name}: {len(active)} runs stopped; relaunch the same command to "
              "resume them", file=sys.stderr)
        raise SystemExit(128 + signum)
    print(f"{out['done']} done, {out['failed']} failed")
    return out


if __name__ == "__main__":
    raise SystemExit(1 if main(tyro.cli(Args)).get("failed") else 0)
