"""What a run writes to disk and reads back: the run folder with its lock and args.json (flags and provenance),
eval.csv and online.csv, and the checkpoint, written atomically and checked on load; `load_policy` turns a
checkpoint back into the policy it evaluated. A reader of a method can skip this file; plumbing.py's `Run` is its
only caller in a script, and a user who wants a trained policy needs only `load_policy`.
"""
import csv
import importlib
import io
import json
import os
import sys
import time
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch

from common import UsageError


# ---------------------------------------------------------------------------------------------------- run folder
def provenance() -> dict:
    """What a run folder needs to say where its numbers came from: the git commit of the code (and whether the work
    tree had uncommitted changes), the command line, torch's version, the device and torch's thread count."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    git = lambda *cmd: subprocess.run(["git", "-C", here, *cmd], capture_output=True, text=True).stdout.strip()  # noqa
    try:
        commit, dirty = git("rev-parse", "HEAD") or None, bool(git("status", "--porcelain", "--untracked-files=no"))
    except OSError:  # no git on this machine
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty, "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
            "device": str(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"),
            "threads": torch.get_num_threads()}


UNFINISHED = []  # run folders this process made that hold neither a checkpoint nor an evaluation yet


def finished(run_dir: Path) -> None:
    """The folder holds a checkpoint or an evaluation: an error no longer removes it (plumbing.cli)."""
    if run_dir in UNFINISHED:
        UNFINISHED.remove(run_dir)


def start_run(args, script: str, changed: Optional[dict] = None, resumed: int = 0) -> tuple:
    """Makes runs/<env>__<exp>__<seed>__<time>[_k]/ (an exclusive mkdir, so runs started together never share one)
    with args.json and a tensorboard writer (+ wandb on --track), and locks it. With --resume (from step `resumed`):
    the checkpoint's folder, where rows and events past that step (written by the attempt that was interrupted) are
    dropped, and args.json records the continuation and takes the `changed` flags (all but --lr, which a NaN rescue
    changes without making the run another experiment). Returns (folder, writer, lock)."""
    from torch.utils.tensorboard import SummaryWriter

    run_name = f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    purge_step = None
    if args.resume:
        run_dir = Path(args.resume).parent
        lock = acquire(run_dir)
        purge_step = resumed + 1
        try:
            for table in ("eval.csv", "online.csv"):
                if (run_dir / table).exists():
                    rows = read_csv(run_dir / table)
                    if rows and int(rows[-1]["step"]) >= purge_step:
                        kept = io.StringIO()
                        w = csv.DictWriter(kept, fieldnames=list(rows[0]))
                        w.writeheader()
                        w.writerows(r for r in rows if int(r["step"]) < purge_step)
                        write_atomic(run_dir / table, kept.getvalue())
            record = json.loads((run_dir / "args.json").read_text()) if (run_dir / "args.json").exists() else \
                {"script": script, **asdict(args), "run": provenance()}
        except (ValueError, KeyError, TypeError, csv.Error) as e:  # a damaged eval.csv or args.json
            release(lock)
            raise UsageError(f"--resume {args.resume}: the run folder's eval.csv, online.csv or args.json is damaged "
                             f"({type(e).__name__}); restore them or start a new run") from None
        record.update({k: new for k, (old, new) in (changed or {}).items() if k != "lr"})
        record.setdefault("run", {}).setdefault("continuations", []).append(
            {"step": resumed, "changed": changed or {}, **provenance()})
    else:
        for k in range(1, 10_000):
            run_dir = Path(args.runs_dir) / (run_name if k == 1 else f"{run_name}_{k}")
            try:
                run_dir.mkdir(parents=True)
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise UsageError(f"--runs-dir {args.runs_dir}: cannot make a run folder there ({e.strerror})") from None
        UNFINISHED.append(run_dir)
        lock = acquire(run_dir)
        record = {"script": script, **asdict(args), "run": provenance()}
    try:
        write_atomic(run_dir / "args.json", json.dumps(record, indent=2))
        if args.track:
            import wandb

            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=asdict(args), name=run_name,
                       sync_tensorboard=True, dir=str(run_dir))
        writer = SummaryWriter(str(run_dir), purge_step=purge_step)
    except BaseException:
        release(lock)
        raise
    table = "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
    return run_dir, writer, lock


_HELD = {}  # run folder -> this process's open lock file


def acquire(run_dir: Path):
    """An exclusive lock on the run folder (`.lock`, holding the owner's PID) for as long as this process runs:
    a second process in the same folder stops with one line. The kernel drops the lock when its process dies, so a
    killed run never blocks its --resume; a lock this process still holds (an earlier run in the same Python
    session that ended in an error) is handed over."""
    import fcntl

    if run_dir.resolve() in _HELD:
        release(_HELD[run_dir.resolve()])
    try:
        f = open(run_dir / ".lock", "a+")
    except OSError as e:
        raise UsageError(f"run folder {run_dir} cannot be written ({e.strerror}): pass a --runs-dir (or a checkpoint "
                         "in a folder) you can write") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "another process"
        f.close()
        raise UsageError(f"run folder {run_dir} is in use by process {owner}: wait for it to end (or stop it) before "
                         "resuming") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _HELD[run_dir.resolve()] = f
    return f


def release(lock) -> None:
    """Removes the lock file and drops the lock (again: a no-op)."""
    if lock.closed:
        return
    try:
        os.unlink(lock.name)
    except OSError:
        pass
    lock.close()
    for key in [k for k, v in _HELD.items() if v is lock]:
        del _HELD[key]


def write_atomic(path: Path, text: str) -> None:
    """Writes a whole file under a temp name, then renames it: a reader never sees half of it."""
    tmp = Path(str(path) + ".tmp")
    try:
        tmp.write_text(text)
    except BaseException as e:  # a full disk, or a signal while writing: no half file stays
        tmp.unlink(missing_ok=True)
        if not isinstance(e, OSError):
            raise
        raise UsageError(f"cannot write {path} ({e.strerror})") from None
    os.replace(tmp, path)


def read_csv(path: Path) -> list:
    """The rows of eval.csv or online.csv, as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_csv(path: Path, step: int, metrics: dict) -> None:
    """Appends one row to eval.csv or online.csv (header written on first use)."""
    new = not path.exists()
    try:
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", *metrics])
            if new:
                w.writeheader()
            w.writerow({"step": step, **metrics})
    except OSError as e:
        raise UsageError(f"cannot write {path} ({e.strerror}): free space there and resume") from None


# ---------------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_KEYS = ("algo", "step", "args", "obs_dim", "action_dim", "nets", "optimizer", "rng", "cuda_rng")


def read_checkpoint(path, device) -> dict:
    """A checkpoint's payload, after checking every record's CRC-32 (torch.load does not) and that it holds the keys
    a checkpoint has and finite weights; any failure is one UsageError that names the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path}: no such file; pass a <script>.pt from a run folder")
    advice = "pass a complete checkpoint from a run folder (or an earlier copy of this one)"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            raise UsageError(f"checkpoint {path} is damaged: the checksum of its record {bad} does not match; {advice}")
        payload = torch.load(path, map_location=device, weights_only=True)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 (empty, truncated, not a torch file: all get the same advice)
        raise UsageError(f"checkpoint {path} cannot be read ({type(e).__name__}: it is empty, truncated or not a "
                         f"checkpoint); {advice}") from None
    lacking = [k for k in CHECKPOINT_KEYS if not isinstance(payload, dict) or k not in payload]
    if lacking:
        raise UsageError(f"{path} is not a checkpoint of these scripts (it lacks {', '.join(lacking)}); {advice}")
    tensors = {f"nets.{k}": v for k, v in payload["nets"].items()}
    tensors.update({f"optimizer.{i}.{k}": v for i, st in payload["optimizer"]["state"].items() for k, v in st.items()})
    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UsageError(f"checkpoint {path}: {name} holds NaN or inf (a damaged file, or one saved after a "
                             f"divergence); {advice}")
    return payload


def load_checkpoint(path, algo: str, device: torch.device) -> dict:
    """Loads a checkpoint (read_checkpoint's checks) and refuses one written by another script."""
    payload = read_checkpoint(path, device)
    if payload["algo"] != algo:
        raise UsageError(f"{path} was written by {payload['algo']}.py, not {algo}.py: load it with that script")
    return payload


def load_policy(checkpoint, device="cpu") -> Callable:
    """The evaluation policy of any script's checkpoint as a callable, observations [B, D] -> actions [B, A].

    Uses only the interface every script has: the checkpoint names its script, whose `Args` takes the stored flags,
    `make_nets(args, obs_dim, action_dim)` builds the networks and `make_policy(nets, args)` is exactly the policy
    main() evaluates (fresh noise at every call, so seed torch for repeatable actions). The callable takes a tensor
    or a numpy array, [B, D] or one observation [D] (then it returns [A]), of any float dtype. Chunked policies (QAM,
    DFP with --horizon > 1) execute a chunk open-loop over h calls: start each new batch of episodes with
    `policy.reset()`. A file that is not a complete checkpoint raises ValueError naming it."""
    device = torch.device(device)
    payload = read_checkpoint(checkpoint, device)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the scripts sit beside this file
    try:
        mod = importlib.import_module(payload["algo"])
        args = mod.Args(**payload["args"])
    except (ImportError, TypeError) as e:
        raise ValueError(f"{checkpoint}: cannot rebuild {payload['algo']}.py from it ({e}); load it with the "
                         "scripts of the commit that wrote it") from None
    finally:
        sys.path.pop(0)
    nets = mod.make_nets(args, payload["obs_dim"], payload["action_dim"]).to(device)
    try:
        nets.load_state_dict(payload["nets"])
    except RuntimeError as e:
        raise ValueError(f"{checkpoint}: its networks do not fit {payload['algo']}.py's ({str(e).splitlines()[0]}); "
                         "load it with the scripts of the commit that wrote it") from None
    inner, obs_dim = mod.make_policy(nets.eval(), args), payload["obs_dim"]

    def policy(obs):
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        if obs.shape[-1:] != (obs_dim,) or obs.ndim not in (1, 2):
            raise ValueError(f"the policy of {checkpoint} takes observations [B, {obs_dim}] or [{obs_dim}], not "
                             f"{list(obs.shape)}")
        with torch.no_grad():
            return inner(obs[None])[0] if obs.ndim == 1 else inner(obs)

    policy.reset, policy.obs_dim = getattr(inner, "reset", lambda: None), obs_dim
    return policy
