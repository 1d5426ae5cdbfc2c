"""The run machinery of the five training scripts: nothing here is the method, and only the flags seeding,
--precision and --compile reach a number through it.

It holds the command line and its one-line errors, the flag ranges, seeding and the device, the speed flags
(--compile, --precision bf16), and `Run`: --resume, progress and logs, evaluation records, checkpoints and the NaN
stop. What a run writes to disk (folder, args.json, checkpoint) and `load_policy` are in runfiles.py. A reader of a
method can skip this file: the scripts call it in the blocks marked TRY NOT TO MODIFY. What decides a number (data,
sampling, evaluation, online collection) is in common.py.
"""
import importlib
import json
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

import runfiles
import visual
from common import Collector, Task, UsageError
from common import default_offline_steps as common_default_steps

TRACEBACK_VAR = "OFFLINE_RL_TRACEBACK"  # set to 1 for the full traceback of an `error: ...` line


# ---------------------------------------------------------------------------------------------------- entry point
def cli(main: Callable, args_type: type) -> None:
    """The entry point of every script: parse the flags with tyro, run `main`, and print an expected failure (bad
    input, missing or unreadable file, the NaN stop, Ctrl-C or SIGTERM) as one line `error: ...` on stderr with exit
    code 2 (128 + the signal when stopped: 130, 143). Set OFFLINE_RL_TRACEBACK=1 to get the traceback instead."""
    import tyro

    doc = (sys.modules[main.__module__].__doc__ or "").strip().split("\n")[0]
    args = tyro.cli(args_type, description=f"{doc} Bad input ends in one line `error: ...`; set "
                    f"{TRACEBACK_VAR}=1 for the traceback.")
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM unwinds like Ctrl-C: `finally` blocks clean up
    try:
        main(args)
    except (UsageError, FileNotFoundError, FloatingPointError, KeyboardInterrupt, RuntimeError) as e:
        if os.environ.get(TRACEBACK_VAR, "0") not in ("", "0"):
            raise
        oom = isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e) or "out of memory" in str(e)
        if isinstance(e, RuntimeError) and not oom:
            raise
        # a second Ctrl-C or SIGTERM must not cut the clean-up short (a local sweep's stop sends two: its job's, then
        # the one a script gets when its job ends)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", [])):  # end a progress bar's line before the message
            bar.close()
        for run in list(Run.active):  # flush its logs and release its folder
            run.close()
        removed = _remove_unfinished_runs()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the clean-up is done: what runs at exit (a wandb
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # sync) may be stopped again
        if isinstance(e, KeyboardInterrupt):  # Ctrl-C, or SIGTERM through _raise_interrupt: exit 128 + the signal
            signum = e.args[0] if e.args else signal.SIGINT
            print(f"error: stopped by {signal.Signals(signum).name}{removed}", file=sys.stderr)
            sys.exit(128 + signum)
        if oom:
            e = f"out of memory ({str(e).splitlines()[0][:120]}): lower --batch-size or the hidden sizes " \
                "(--actor-hidden-dims, --value-hidden-dims)"
        print(f"error: {e}{removed}", file=sys.stderr)
        sys.exit(2)


def _remove_unfinished_runs() -> str:
    """Removes the run folders this process made that hold neither a checkpoint nor an evaluation (a folder --resume
    cannot use)."""
    gone = [d for d in runfiles.UNFINISHED if d.is_dir()]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
    runfiles.UNFINISHED.clear()
    return f"; removed the run folder {gone[0]}, which held no checkpoint yet" if gone else ""


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signum)


# Allowed ranges of the flags every training script shares, in interval notation ('inf' is open); checked by
# `check_args` together with each script's own table before any work starts. None (the default) always passes.
TRAIN_LIMITS = dict(seed="[0, 4294967295]", eval_interval="[1, inf)", eval_episodes="[1, inf)",
                    log_interval="[1, inf)", offline_steps="[1, inf)", batch_size="[1, inf)", lr="(0, inf)",
                    actor_hidden_dims="[1, inf)", value_hidden_dims="[1, inf)", discount="[0, 1]", tau="(0, 1]",
                    online_steps="[0, inf)", buffer_size="[0, inf)", start_training="[0, inf)",
                    dataset_replace_interval="[1, inf)", dataset_proportion="(0, 1]", save_interval="[1, inf)")


def _bound(text: str, args) -> float:
    """One end of an interval: a number ('inf' included) or the name of another flag, e.g. '[1, online_n_samples]'."""
    try:
        return float(text)
    except ValueError:
        return getattr(args, text)


def check_args(args, limits: dict) -> None:
    """Refuses the first flag outside its allowed interval ({field: '[lo, hi)'}; every entry of a tuple flag), and a
    --resume file that does not exist, with one UsageError that names the flag and the allowed range."""
    for name, interval in limits.items():
        value = getattr(args, name)
        lo, hi = (_bound(b.strip(), args) for b in interval[1:-1].split(","))
        lo_closed, hi_closed = interval[0] == "[", interval[-1] == "]"
        for v in value if isinstance(value, tuple) else (value,):
            inside = v is None or ((lo <= v if lo_closed else lo < v) and (v <= hi if hi_closed else v < hi))
            if not inside:  # NaN is never inside
                shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
                named = "".join(f" (--{b.strip().replace('_', '-')} is {getattr(args, b.strip())})"
                                for b in interval[1:-1].split(",") if hasattr(args, b.strip()))
                raise UsageError(f"--{name.replace('_', '-')} {shown} is out of range: it must lie in {interval}"
                                 f"{named}")
    name = getattr(args, "exp_name", None)
    if name is not None and (not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name):
        raise UsageError(f"--exp-name {name!r} must be a plain file name (no '/', not '.' or '..'): it names the "
                         "run folder and the checkpoint inside --runs-dir")
    if getattr(args, "resume", None) and not os.path.isfile(args.resume):  # collect.py has no --resume
        raise UsageError(f"--resume {args.resume}: no such file; pass a checkpoint (<exp_name>.pt) from a run folder")


# ---------------------------------------------------------------------------------------------------- device, seed
def setup(args, limits: dict) -> torch.device:
    """Checks the flags against `limits`, seeds python, numpy and torch, and returns the device."""
    check_args(args, limits)
    visual.check(args)  # pixels: the scripts that refuse them, online fine-tuning, --encoder without pixels
    if args.track:
        try:
            importlib.import_module("wandb")
        except ImportError:
            raise UsageError("--track logs to Weights & Biases, which is not installed: `pip install wandb`, or run "
                             "without --track (tensorboard logs are always written)") from None
    seed_everything(args.seed, args.torch_deterministic)
    return get_device(args.device)


def get_device(name: str) -> torch.device:
    """'auto' takes CUDA when present and says loudly when it falls back to the CPU; 'cuda' without a GPU raises."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no GPU; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cpu":
            print("=" * 80 + "\nNO GPU FOUND: running on the CPU (pass --device cpu to silence this)\n" + "=" * 80)
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seeds python, numpy and torch. Bit-exact cuBLAS also needs CUBLAS_WORKSPACE_CONFIG=:4096:8."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


# ---------------------------------------------------------------------------------------------------- speed flags
def autocast(precision: str, device: torch.device):
    """--precision: bf16 autocasts the matmuls inside the block to bfloat16 while the parameters, their gradients and
    the optimizer state stay fp32; each script keeps its critics (their pixel encoders aside), losses, TD targets,
    LayerNorms (and drift fields) in fp32. fp32 makes the block a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def compiled(fn, device: torch.device):
    """--compile: torch.compile with fullgraph=True, so a graph break (and with it a host sync) is an error, not a
    silent slow path; a backward through the result is compiled too. On CUDA the compiled code runs as CUDA graphs
    (mode reduce-overhead): each call starts a new graph step, so its outputs stay valid until the next call."""
    if device.type != "cuda":
        return torch.compile(fn, fullgraph=True)
    graphed = torch.compile(fn, fullgraph=True, mode="reduce-overhead")

    def step(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return graphed(*args, **kwargs)
    return step


# ---------------------------------------------------------------------------------------------------- the run
# Flags a continuation (--resume) may change: the budget, the evaluation schedule, the logging, the machine and,
# for the NaN advice, --lr. The online-phase flags may change too while the checkpoint is from the offline phase
# (the switch is then chosen), and --offline-steps only then. Evaluations draw noise from torch's generator, so a
# changed budget or schedule changes the course of the rest of the run; unchanged flags resume bit-exactly.
CONTINUATION_FLAGS = ("offline_steps", "online_steps", "eval_interval", "log_interval", "runs_dir", "resume", "lr",
                      "device", "torch_deterministic", "compile", "track", "wandb_project_name", "wandb_entity",
                      "save_model", "save_interval")
ONLINE_FLAGS = ("buffer_size", "start_training", "balanced_sampling", "fix_bc_flow_online")


class Run:
    """One training run's bookkeeping: --resume, the run folder, logging, evaluation records and checkpoints.

    Made once the data, the networks and the optimizer exist, so that a run that fails before its first step leaves
    no folder behind. With --resume it loads the checkpoint (networks, optimizer, torch's random streams and the
    online replay) and continues in the checkpoint's own folder, so a run keeps one eval.csv and one tensorboard
    history however often it is interrupted. The step axis counts offline gradient steps, then online env steps."""

    active = []  # the runs of this process not closed yet: cli closes them after an error

    def __init__(self, args, script: str, nets: torch.nn.Module, opt, task: Task, online: Optional[Collector],
                 steps: int):
        self.args, self.algo, self.nets, self.opt, self.task, self.online = args, Path(script).stem, nets, opt, task, \
            online
        self.steps, self.total = steps, steps + args.online_steps
        self.device = task.train.observations.device
        changed, resumed = {}, 0
        if args.resume:
            resumed, changed = self._resume(args.resume)
        self.first = resumed + 1
        self.dir, self.writer, self.lock = runfiles.start_run(args, self.algo, changed, resumed)
        self.ckpt = self.dir / f"{args.exp_name}.pt"
        Run.active.append(self)
        self.bad_step = torch.full((), -1, device=self.device)  # first step with a non-finite loss, on the device
        online_part = f" + {args.online_steps} online env steps" if args.online_steps else ""
        print(f"{task.env_id}: {task.train.size} transitions, {steps} offline steps{online_part}, run folder "
              f"{self.dir}")
        self.t0, self.bar = time.time(), progress(self.first, self.total)
        if resumed and (self.dir / "eval.csv").exists():  # the bar shows the score from before the interruption
            rows = runfiles.read_csv(self.dir / "eval.csv")
            self.bar.set_postfix_str(score_text(rows[-1]) if rows else "")
        self.last_line, self.successes, self.last_eval = self.t0, [], getattr(self.bar, "postfix", None) or ""

    def log(self, step: int, metrics: Optional[dict] = None, episode: Optional[dict] = None) -> None:
        """After each step: watch the losses for NaN/inf (no host sync), advance the progress bar, write a finished
        online episode to online/* and online.csv, and at every --log-interval the losses to losses/* (one host sync).
        Without a terminal a progress line also comes every 2 % of the steps or every minute, whichever is sooner."""
        if episode is not None:
            log_scalars(self.writer, "online", episode, step)
            runfiles.append_csv(self.dir / "online.csv", step, episode)
            self.successes = (self.successes + [episode.get("success", 0.0)])[-20:]
            online = f"online success (last {len(self.successes)} episodes) {np.mean(self.successes):.2f}"
            self.bar.set_postfix_str(", ".join(filter(None, [self.last_eval, online])))
        if metrics is not None:
            self.bad_step = torch.where((self.bad_step < 0) & ~torch.isfinite(metrics["total_loss"]), step,
                                        self.bad_step)
        self.bar.update()
        every = self.args.save_interval
        if every and self.args.save_model and step % every == 0 and not self.eval_step(step):
            self.check_finite()
            self.save(step)
        if step == self.steps and self.args.online_steps:
            self.bar.write(f"offline done at step {step}; online for {self.args.online_steps} env steps")
        if metrics is not None and (step % self.args.log_interval == 0 or step == self.total):
            self.check_finite()
            log_train(self.writer, self.bar, metrics, step, self.first, self.t0)
            self.last_line = time.time()
        elif self.bar.disable and (step % max(1, self.total // 50) == 0 or time.time() - self.last_line > 60):
            log_train(None, self.bar, {}, step, self.first, self.t0)
            self.last_line = time.time()

    def eval_step(self, step: int) -> bool:
        """At step 1, every --eval-interval, at the end of the offline phase and at the end."""
        return step == 1 or step % self.args.eval_interval == 0 or step == self.steps or step == self.total

    def eval_due(self, step: int) -> bool:
        """Whether to evaluate now (eval_step). Stops with the NaN error first if a loss went non-finite, so no
        evaluation or checkpoint follows a NaN."""
        due = self.eval_step(step)
        if due:
            self.check_finite()
        return due

    def png(self, step: int, name: str = "bandit") -> str:
        """Where the bandit evaluation draws its picture of step `step`."""
        return str(self.dir / f"{name}_{step}.png")

    def record_eval(self, step: int, result: dict) -> dict:
        """An evaluation's results to eval/* in tensorboard, to eval.csv and to the terminal; then the checkpoint."""
        result = log_scalars(self.writer, "eval", result, step)
        runfiles.append_csv(self.dir / "eval.csv", step, result)
        runfiles.finished(self.dir)  # a folder with an evaluation is kept, whatever happens next
        log_eval(self.bar, step, result)
        self.last_eval = self.bar.postfix or ""
        if self.args.save_model:
            self.save(step)
        return result

    def close(self) -> None:
        """Ends the progress bar, flushes the logs and releases the folder (after an error too: plumbing.cli)."""
        self.bar.close()
        self.writer.close()
        runfiles.release(self.lock)
        if self in Run.active:
            Run.active.remove(self)

    def check_finite(self) -> None:
        """Stops training when any loss went NaN/inf. The checkpoint is saved only after this check passes, so the
        one on disk is from before the NaN."""
        step = int(self.bad_step)
        if step >= 0:
            kept = f"the last good checkpoint is {self.ckpt}" if self.ckpt.exists() else "no checkpoint was saved yet"
            raise FloatingPointError(
                f"a loss became NaN/inf at step {step}; stopped, {kept}. A plain --resume replays the same NaN "
                "(resuming is bit-exact): resume with a smaller --lr (it takes effect on resume), or start again with "
                "another --seed or a milder setting of the method's flags (e.g. a larger temperature or a smaller "
                "alpha)")

    def save(self, step: int) -> None:
        """One self-describing file: the script, its flags, the observation and action sizes (all `load_policy`
        needs), every network, the optimizer and torch's random streams, plus the online replay rows during the
        online phase. Written to a temp name first, so a crash or a full disk never leaves a half checkpoint; the
        zip format's CRC-32 of every record is checked on load."""
        train = self.task.train
        payload = {"algo": self.algo, "step": step, "args": asdict(self.args), "obs_dim": train.observations.shape[1],
                   "action_dim": train.actions.shape[1], "nets": self.nets.state_dict(),
                   "optimizer": self.opt.state_dict(), "rng": torch.get_rng_state(),
                   "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        if self.online is not None and self.online.steps > 0:
            payload["online"] = self.online.state_dict()
        if self.task.shards is not None:  # --dataset-dir: the rotation's files and the shard in use
            payload["shards"] = self.task.shards.state()
        tmp = Path(str(self.ckpt) + ".tmp")
        try:
            torch.save(payload, tmp)
        except BaseException as e:  # a full disk (OSError or RuntimeError), or a signal while writing
            tmp.unlink(missing_ok=True)
            if not isinstance(e, (OSError, RuntimeError)):
                raise
            kept = f"the last good checkpoint {self.ckpt} stays" if self.ckpt.exists() else "no checkpoint was saved"
            raise UsageError(f"cannot write the checkpoint {tmp} ({str(e).splitlines()[0][:100]}): free space in "
                             f"{self.dir} and resume; {kept}") from None
        os.replace(tmp, self.ckpt)
        runfiles.finished(self.dir)

    def _resume(self, path) -> tuple:
        """Loads the networks (targets and EMA copies included), the optimizer state and torch's random streams, so
        that the resumed run draws the same batches and noise as an uninterrupted one. A checkpoint of the online
        phase also puts its online transitions back into the replay. Refuses a flag that changes the experiment
        (CONTINUATION_FLAGS may change) and a checkpoint already at the step budget. Returns the checkpoint's step and
        the changed flags {name: [old, new]}."""
        payload = runfiles.load_checkpoint(path, self.algo, self.device)
        saved, now = json.loads(json.dumps(payload["args"])), json.loads(json.dumps(asdict(self.args)))
        offline_budget = saved.get("offline_steps") or common_default_steps(self.args.env_id)
        allowed = CONTINUATION_FLAGS if payload["step"] <= offline_budget else \
            tuple(k for k in CONTINUATION_FLAGS if k != "offline_steps")  # online: the switch has happened
        allowed += ONLINE_FLAGS if "online" not in payload else ()
        changed = {k: [saved.get(k), v] for k, v in now.items() if saved.get(k) != v}
        for k, (old, new) in changed.items():
            if k not in allowed:
                flag = lambda v: "on" if v is True else "off" if v is False else " ".join(map(str, v)) \
                    if isinstance(v, list) else v  # noqa: E731
                raise UsageError(f"--resume {path}: --{k.replace('_', '-')} is {flag(new)} here but {flag(old)} in the "
                                 f"run; a continuation keeps the experiment's flags (it may change --"
                                 f"{', --'.join(a.replace('_', '-') for a in allowed[:5])} and the logging): pass "
                                 f"the run's value, or start a new run")
        if payload["step"] >= self.total:
            raise UsageError(f"--resume {path} is at step {payload['step']}, already at or past the budget of "
                             f"{self.total} steps: pass a larger --offline-steps (or --online-steps) to train on")
        files = self.task.shards.state()["files"] if self.task.shards is not None else None
        if payload.get("shards", {}).get("files") != files and (files or "shards" in payload):
            raise UsageError(f"--resume {path}: the run trained on the shards {_few(payload.get('shards', {}))}, but "
                             f"--dataset-dir now lists {_few({'files': files})}: pass the run's folder of shards")
        lrs = [group["lr"] for group in self.opt.param_groups]
        try:
            self.nets.load_state_dict(payload["nets"])
            self.opt.load_state_dict(payload["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{path} does not fit these networks ({str(e).splitlines()[0]}); pass the flags it was "
                             "trained with, saved in args.json of its run folder") from None
        for group, lr in zip(self.opt.param_groups, lrs):
            group["lr"] = lr
        torch.set_rng_state(payload["rng"].cpu())
        if torch.cuda.is_available() and len(payload["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in payload["cuda_rng"]])
        if "online" in payload and self.online is not None:
            self.online.load_state_dict(payload["online"])
        return payload["step"], {k: v for k, v in changed.items() if k not in ("resume", "runs_dir")}


def _few(state: dict) -> str:
    """A shard list for an error line: its count and first names."""
    files = state.get("files") or []
    return f"{len(files)} files ({', '.join(files[:2])}{', ...' if len(files) > 2 else ''})" if files else "none"


# ---------------------------------------------------------------------------------------------------- logging
def progress(first: int, steps: int):
    """A tqdm bar over the steps (step, steps/s, ETA, last evaluation) when stderr is a terminal; otherwise a
    disabled one, and `log_train` prints a plain line at every log interval instead."""
    from tqdm import tqdm

    return tqdm(total=steps, initial=first - 1, unit="step", dynamic_ncols=True, smoothing=0.05,
                disable=not sys.stderr.isatty())


def log_train(writer, bar, metrics: dict, step: int, first: int, t0: float) -> dict:
    """Writes the losses/ scalars and charts/SPS (one host sync); without a terminal also one plain progress line.
    With writer None it only prints that line."""
    values = log_scalars(writer, "losses", metrics, step) if writer is not None else {}
    elapsed = time.time() - t0
    sps = (step - first + 1) / max(elapsed, 1e-9)
    if writer is not None:
        writer.add_scalar("charts/SPS", sps, step)
    if bar.disable:
        hms = lambda sec: time.strftime("%H:%M:%S", time.gmtime(sec))  # noqa: E731
        print(f"step {step}/{bar.total} ({100 * step / bar.total:.1f} %), {sps:.1f} steps/s, elapsed {hms(elapsed)}, "
              f"ETA {hms((bar.total - step) / sps)}, last eval {getattr(bar, 'postfix', None) or '-'}"
              + "".join(f", {k}={v:.4g}" for k, v in values.items()))
    return values


def score_text(result: dict) -> str:
    """An evaluation's score for the progress bar: its normalized score, else success rate, else return."""
    key = next((k for k in ("normalized_score", "success_rate", "episodic_return") if k in result), None)
    return f"{key}={float(result[key]):.3f}" if key else ""


def log_eval(bar, step: int, result: dict) -> None:
    """Prints the evaluation line above the progress bar and shows its score in the bar."""
    bar.set_postfix_str(score_text(result))
    bar.write(f"step {step}: " + ", ".join(f"{k}={v:.3f}" for k, v in result.items()))


def log_scalars(writer, prefix: str, metrics: dict, step: int) -> dict:
    """Writes `prefix/name` scalars (one host sync for all of them) and returns them as floats."""
    values = {k: float(v) for k, v in metrics.items()}
    for k, v in values.items():
        writer.add_scalar(f"{prefix}/{k}", v, step)
    return values
