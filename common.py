"""Shared plumbing for the single-file scripts: data on the device, evaluation, seeding, logging, checkpoints.

Nothing here is algorithm code. Every script calls these functions through `common.<name>` so tests can
monkeypatch them. The data protocol follows the official FQL code (seohongpark/fql, `envs/env_utils.py`) and
OGBench (`ogbench/utils.py`, `relabel_utils.py`); the Minari side reproduces the D4RL processing FQL applies.
See the README, "Data protocol", for the choices made where Minari differs from D4RL.
"""
import csv
import difflib
import json
import os
import random
import re
import signal
import sys
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import gymnasium as gym
import numpy as np
import torch

ACTION_CLIP = 1 - 1e-5  # dataset actions are clipped to +-(1 - 1e-5), as in FQL's env_utils
REGENERABLE = re.compile(r"^(cube-(single|double|triple)|scene|puzzle-(3x3|4x4))-(play|noisy)-v0$|"
                         r"^pointmaze-(medium|large|giant)-(navigate|stitch)-v0$")
# D4RL names used in the papers -> the Minari re-release of the same task.
D4RL_ALIASES = {f"antmaze-{m}-v2": f"D4RL/antmaze/{m}-v1"
                for m in ["umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse"]}
D4RL_ALIASES.update({f"{e}-{k}-v1": f"D4RL/{e}/{k}-v2"
                     for e in ["pen", "door", "hammer", "relocate"] for k in ["human", "cloned", "expert"]})
D4RL_ALIASES.update({f"{e}-{k}-v2": f"mujoco/{e}/{k}-v0"
                     for e in ["halfcheetah", "hopper", "walker2d", "ant"] for k in ["medium", "expert"]})
ADROIT_HORIZON = {"pen": 100, "door": 200, "hammer": 200, "relocate": 200}  # D4RL episode lengths
ADROIT_REF = {"pen": (96.262799, 3076.8331017826877), "door": (-56.512833, 2880.5693087298737),  # d4rl/infos.py
              "hammer": (-274.856578, 12794.134825156867), "relocate": (-6.425911, 4233.877797728884)}
TRACEBACK_VAR = "OFFLINE_RL_TRACEBACK"  # set to 1 for the full traceback of an `error: ...` line
FAMILIES = ("OGBench '<env>-<dataset>-singletask[-taskN]-v0', Minari 'D4RL/...' or 'mujoco/...', "
            f"a D4RL alias ({', '.join(list(D4RL_ALIASES)[:3])}, ...), or 'bandit-4gaussian[-rot1|2|3]'")


# ---------------------------------------------------------------------------------------------------- entry point
class UsageError(ValueError):
    """An expected failure (a flag out of range, a missing or unreadable file, an unknown id): the message names the
    flag, file or id and the fix; `cli` prints it as one line."""


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
    except (UsageError, FileNotFoundError, FloatingPointError, KeyboardInterrupt) as e:
        if os.environ.get(TRACEBACK_VAR, "0") not in ("", "0"):
            raise
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", [])):  # end a progress bar's line before the message
            bar.close()
        if isinstance(e, KeyboardInterrupt):  # Ctrl-C, or SIGTERM through _raise_interrupt: exit 128 + the signal
            signum = e.args[0] if e.args else signal.SIGINT
            print(f"error: stopped by {signal.Signals(signum).name}", file=sys.stderr)
            sys.exit(128 + signum)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signum)


def _bound(text: str, args) -> float:
    """One end of an interval: a number ('inf' included) or the name of another flag, e.g. '[1, online_n_samples]'."""
    try:
        return float(text)
    except ValueError:
        return getattr(args, text)


# Allowed ranges of the flags every training script shares, in interval notation ('inf' is open); checked by
# `check_args` together with each script's own table before any work starts. None (the default) always passes.
TRAIN_LIMITS = dict(seed="[0, 4294967295]", eval_interval="[1, inf)", eval_episodes="[1, inf)",
                    log_interval="[1, inf)", offline_steps="[1, inf)", batch_size="[1, inf)", lr="(0, inf)",
                    actor_hidden_dims="[1, inf)", value_hidden_dims="[1, inf)", discount="[0, 1]", tau="(0, 1]",
                    online_steps="[0, inf)", buffer_size="[0, inf)", start_training="[0, inf)")


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
    if getattr(args, "resume", None) and not os.path.isfile(args.resume):
        raise UsageError(f"--resume {args.resume}: no such file; pass a checkpoint (<exp_name>.pt) from a run folder")


# ---------------------------------------------------------------------------------------------------- device, seed
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


def default_offline_steps(env_id: str) -> int:
    """The papers' budgets: 1M gradient steps on OGBench, 500K on D4RL/Minari (FQL README), 5K on the toy bandit."""
    if BANDIT_ID.match(env_id):
        return 5_000
    return 1_000_000 if "singletask" in env_id else 500_000


# ---------------------------------------------------------------------------------------------------- speed flags
def autocast(precision: str, device: torch.device):
    """--precision: bf16 autocasts the matmuls inside the block to bfloat16 while the parameters, their gradients and
    the optimizer state stay fp32; each script keeps its losses, TD targets, LayerNorms (and drift fields) in fp32.
    fp32 makes the block a no-op."""
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


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class Dataset:
    """Transitions as device tensors with room to grow (online fine-tuning appends with `add`).

    Rows [0, size) are valid. `masks` = 0 where the value must not bootstrap (task solved / true terminal);
    `terminals` = 1 on the last transition of each episode (trajectory bookkeeping only, never used to bootstrap).
    """

    observations: torch.Tensor  # [C, D]
    actions: torch.Tensor  # [C, A]
    rewards: torch.Tensor  # [C]
    next_observations: torch.Tensor  # [C, D]
    masks: torch.Tensor  # [C]
    terminals: torch.Tensor  # [C]
    size: int

    KEYS = ("observations", "actions", "rewards", "next_observations", "masks", "terminals")

    @classmethod
    def from_numpy(cls, data: dict, device: torch.device, capacity: Optional[int] = None) -> "Dataset":
        n = len(data["observations"])
        capacity = max(capacity or n, n)
        tensors = {}
        for k in cls.KEYS:
            x = torch.as_tensor(np.asarray(data[k], dtype=np.float32), device=device)
            tensors[k] = torch.cat([x, x.new_zeros((capacity - n,) + x.shape[1:])]) if capacity > n else x
        return cls(**tensors, size=n)

    def grow(self, extra: int) -> "Dataset":
        """A copy with room for `extra` more rows (e.g. online transitions after the offline phase)."""
        pad = lambda x: torch.cat([x[:self.size], x.new_zeros((extra + len(x) - self.size,) + x.shape[1:])])  # noqa
        return Dataset(**{k: pad(getattr(self, k)) for k in self.KEYS}, size=self.size)

    def add(self, **transitions: torch.Tensor) -> None:
        """Appends a batch of transitions (same keys as the dataset, leading dim = count) in place."""
        n = len(transitions["observations"])
        if self.size + n > len(self.observations):
            raise ValueError(f"dataset is full ({len(self.observations)} rows); build it with a larger capacity")
        for k in self.KEYS:
            getattr(self, k)[self.size:self.size + n] = transitions[k]
        self.size += n

    def sample(self, batch_size: int) -> dict:
        """Uniform with replacement over all rows, as FQL does (np.random.randint); an index gather on the device."""
        idx = torch.randint(self.size, (batch_size,), device=self.observations.device)
        return {k: getattr(self, k)[idx] for k in self.KEYS}

    def sample_chunks(self, batch_size: int, horizon: int, discount: float) -> dict:
        """Action chunks of length h for Q-chunking (specs/qam.md §2.1), start index uniform in [0, size - h].

        Rewards, masks and the next observation stop at the end of the episode: steps after the first
        terminal are dropped from R = sum_j discount^j r_j, from the mask (min over steps) and from the choice of
        s'. `valid` is 0 when the chunk's actions run past the episode end; losses weight those samples out.
        Returns observations [B, D], actions [B, h, A], rewards [B], masks [B], valid [B], next_observations [B, D].
        """
        dev = self.observations.device
        start = torch.randint(self.size - horizon + 1, (batch_size,), device=dev)
        idx = start[:, None] + torch.arange(horizon, device=dev)  # [B, h]
        term = self.terminals[idx]
        in_episode = (torch.cumsum(term, 1) - term) == 0  # step j is before or at the first episode end
        w = in_episode.float()
        powers = discount ** torch.arange(horizon, device=dev, dtype=torch.float32)
        last = idx.gather(1, (in_episode.sum(1, keepdim=True) - 1)).squeeze(1)
        return {
            "observations": self.observations[start],
            "actions": self.actions[idx],
            "rewards": (self.rewards[idx] * w * powers).sum(1),
            "masks": torch.where(in_episode, self.masks[idx], torch.ones_like(w)).amin(1),
            "valid": in_episode.all(1).float(),
            "next_observations": self.next_observations[last],
        }


def check_horizon(data: Dataset, horizon: int, env_id: str) -> None:
    """Refuses an action-chunk length h that no episode can hold: every chunk would run past an episode end and be
    weighted out (the bandit, where every step is terminal, holds only h = 1)."""
    ends = torch.nonzero(data.terminals[:data.size]).squeeze(1).cpu()
    longest = int(torch.cat([torch.tensor([-1]), ends, torch.tensor([data.size - 1])]).diff().max())
    if horizon > longest:
        raise UsageError(f"--horizon {horizon} is longer than every episode of {env_id} (the longest has {longest} "
                         "steps): pass a shorter --horizon")


@dataclass
class Task:
    """What a training script needs about its environment: data, evaluation envs and the score definition."""

    env_id: str
    train: Dataset
    val: Optional[Dataset]
    make_env: Optional[Callable[[], gym.Env]]  # one evaluation env (None for the bandit)
    score: Optional[Callable[[np.ndarray], np.ndarray]] = None  # episodic return -> normalised score x100
    max_episode_steps: int = 1
    online_reward_shift: float = 0.0  # added to env rewards collected online (D4RL AntMaze: -1, as FQL's main.py)


def load_task(env_id: str, device: torch.device, extra_capacity: int = 0) -> Task:
    """Dispatches on the id: bandit, OGBench single-task, a D4RL alias, or a Minari dataset id.
    `extra_capacity` leaves room in the training set for that many online transitions (`Dataset.add`)."""
    task = _load_task(env_id, device)
    if extra_capacity:
        task.train = task.train.grow(extra_capacity)
    return task


def _load_task(env_id: str, device: torch.device) -> Task:
    if BANDIT_ID.match(env_id):
        return _bandit_task(env_id, device)
    if env_id in D4RL_ALIASES:
        print(f"D4RL alias: {env_id} -> Minari dataset {D4RL_ALIASES[env_id]}")
        env_id = D4RL_ALIASES[env_id]
    if "singletask" in env_id:
        return _ogbench_task(env_id, device)
    if env_id.count("/") >= 1:
        return _minari_task(env_id, device)
    close = difflib.get_close_matches(env_id, [*D4RL_ALIASES, "bandit-4gaussian"], n=3)
    raise UsageError(f"unknown --env-id {env_id!r}: use {FAMILIES}"
                     + (f"; closest: {', '.join(close)}" if close else ""))


def _ogbench_task(env_id: str, device: torch.device) -> Task:
    import ogbench

    splits = env_id.split("-")
    pos = splits.index("singletask")
    name = "-".join(splits[:pos] + splits[-1:])  # the data file: '...-singletask[-taskN]' removed
    env_name = "-".join(splits[:pos - 1] + splits[pos:])  # the env: the dataset type removed
    if env_id not in ogbench_ids():
        close = difflib.get_close_matches(env_id, ogbench_ids(), n=3, cutoff=0.6)
        raise UsageError(f"--env-id {env_id}: no such OGBench environment and dataset"
                         + (f"; the closest valid ids are {', '.join(close)}" if close else ""))
    data_dir = ogbench_data_dir()
    paths = [os.path.join(data_dir, f"{name}{s}.npz") for s in ("", "-val")]
    fix = (f"regenerate both with `python collect.py {name}`" if REGENERABLE.match(name)
           else "it needs an expert policy to regenerate: fetch the official files on a networked machine")
    missing = [p for p in paths if not os.path.exists(p)]
    if len(missing) == 1:  # never pair a file with a downloaded or regenerated partner it was not made with
        raise UsageError(f"OGBench dataset file {missing[0]} is missing beside {(set(paths) - set(missing)).pop()}; "
                         f"{fix}")
    if missing:
        try:
            ogbench.download_datasets([name], data_dir)
        except Exception as e:  # noqa: BLE001 (any download failure gives the same advice)
            raise FileNotFoundError(f"OGBench dataset {name} is not in {data_dir} and could not be downloaded "
                                    f"({type(e).__name__}); {fix}") from None
    probe = gym.make(env_name)
    want = {"observations": probe.observation_space.shape, "actions": probe.action_space.shape}
    probe.close()
    shapes = [npz_shapes(p, fix) for p in paths]
    for path, shape in zip(paths, shapes):
        if any(shape.get(k, (0,))[1:] != v for k, v in want.items()):
            raise UsageError(f"{path} holds another dataset (observations {shape['observations'][1:]}, actions "
                             f"{shape['actions'][1:]}; {env_id} has {want['observations']}, {want['actions']}); {fix}")
    if shapes[0].get("stamp") != shapes[1].get("stamp"):
        raise UsageError(f"{paths[0]} and {paths[1]} come from different collections; {fix}")
    try:
        env, train, val = ogbench.make_env_and_datasets(env_id, dataset_dir=data_dir)
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as e:  # damage inside a member
        raise UsageError(f"{paths[0]} or its -val file cannot be read ({type(e).__name__}); {fix}") from None
    env.close()
    for d in (train, val):
        d["actions"] = np.clip(d["actions"], -ACTION_CLIP, ACTION_CLIP)
    make_env = lambda: ogbench.make_env_and_datasets(env_id, env_only=True)  # noqa: E731
    steps = gym.spec(env_name).max_episode_steps
    return Task(env_id, Dataset.from_numpy(train, device), Dataset.from_numpy(val, device), make_env, None, steps)


def ogbench_ids() -> list:
    """Every OGBench single-task id: each registered single-task env with the dataset types of its family."""
    import ogbench  # noqa: F401  (registers the envs)

    ids = []
    for env in (k for k in gym.registry if "-singletask" in k):
        base, rest = env.split("-singletask")
        manip = re.search("cube|scene|puzzle|powderworld", base)
        kinds = ("play", "noisy") if manip else ("navigate", "stitch", "explore")
        ids += [f"{base}-{kind}-singletask{rest}" for kind in kinds]
    return ids


def npz_shapes(path: str, fix: str) -> dict:
    """The array shapes in an .npz archive, read from its headers only (nothing is unpickled or decompressed in full);
    a file that is empty, truncated, not an archive or without observations/actions/terminals gets one UsageError.
    'stamp' maps to the collection stamp collect.py stores in both files of a pair (None in official files)."""
    try:
        with zipfile.ZipFile(path) as z:
            shapes = {}
            for member in z.namelist():
                with z.open(member) as f:
                    fmt = np.lib.format
                    read = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
                    shapes[member.removesuffix(".npy")] = read(f)[0]
            stamp = z.read("stamp.npy") if "stamp.npy" in z.namelist() else None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise UsageError(f"{path} cannot be read ({type(e).__name__}: empty, truncated or not an .npz archive); "
                         f"{fix}") from None
    lacking = [k for k in ("observations", "actions", "terminals") if k not in shapes]
    if lacking:
        raise UsageError(f"{path} has no {', '.join(lacking)}: it is not an OGBench dataset; {fix}")
    return {**shapes, "stamp": stamp}


def ogbench_data_dir() -> str:
    """Folder that holds OGBench `.npz` files: $OGBENCH_DATA_DIR, else OGBench's own default."""
    return os.path.expanduser(os.environ.get("OGBENCH_DATA_DIR", "~/.ogbench/data"))


def _minari_task(dataset_id: str, device: torch.device) -> Task:
    import minari

    try:
        ds = minari.load_dataset(dataset_id, download=False)
    except Exception:  # noqa: BLE001 (not on disk: try the hub once, then give the fix)
        try:
            ds = minari.load_dataset(dataset_id, download=True)
        except Exception as e:  # noqa: BLE001
            raise FileNotFoundError(
                f"Minari dataset {dataset_id} is not in {os.environ.get('MINARI_DATASETS_PATH', '~/.minari/datasets')}"
                f" and could not be downloaded ({type(e).__name__}); run `minari download {dataset_id}` on a "
                "networked machine and copy it there") from None
    family = dataset_id.split("/")[1]
    antmaze = family == "antmaze"
    goal = None
    if antmaze:  # single-task relabelling to the evaluation goal (d4rl semantics), see README "Data protocol"
        goal = np.asarray(ds.recover_environment(eval_env=True).unwrapped.maze.unique_goal_locations[0])
    cols = {k: [] for k in Dataset.KEYS}
    for ep in ds.iterate_episodes():
        obs = ep.observations
        if antmaze:  # d4rl's 29-D observation = [x, y, 27 joint positions/velocities]
            obs = np.concatenate([obs["achieved_goal"], obs["observation"]], -1)
        T = len(ep.rewards)
        term = np.asarray(ep.terminations, dtype=np.float32)
        if antmaze:
            success = (np.linalg.norm(ep.observations["achieved_goal"][1:] - goal, axis=-1) <= 0.5).astype(np.float32)
            rewards, masks = success - 1.0, 1.0 - success
        else:
            rewards, masks = np.asarray(ep.rewards, dtype=np.float32), 1.0 - term
        ends = term.copy()
        ends[-1] = 1.0
        for k, v in zip(Dataset.KEYS, (obs[:T], ep.actions, rewards, obs[1:T + 1], masks, ends)):
            cols[k].append(np.asarray(v, dtype=np.float32))
    data = {k: np.concatenate(v) for k, v in cols.items()}
    data["actions"] = np.clip(data["actions"], -ACTION_CLIP, ACTION_CLIP)

    env_kwargs, score = {}, None
    if antmaze:
        env_kwargs = dict(continuing_task=False)  # the episode ends at the goal: return = success in {0, 1}
        score = lambda ret: 100.0 * ret  # noqa: E731  (d4rl antmaze reference scores are 0 and 1)
    elif family in ADROIT_HORIZON:
        env_kwargs = dict(max_episode_steps=ADROIT_HORIZON[family])
        lo, hi = ADROIT_REF[family]
        score = lambda ret: 100.0 * (ret - lo) / (hi - lo)  # noqa: E731
    elif "ref_max_score" in ds.storage.metadata:
        score = lambda ret: 100.0 * np.asarray(minari.get_normalized_score(ds, ret))  # noqa: E731

    def make_env():
        env = ds.recover_environment(eval_env=True, **env_kwargs)
        if antmaze:
            space = gym.spaces.Box(-np.inf, np.inf, (29,), np.float64)
            env = gym.wrappers.TransformObservation(
                env, lambda o: np.concatenate([o["achieved_goal"], o["observation"]]), space)
        return env

    probe = make_env()
    steps = probe.spec.max_episode_steps
    probe.close()
    return Task(dataset_id, Dataset.from_numpy(data, device), None, make_env, score, steps, -1.0 if antmaze else 0.0)


# The four-Gaussian bandit of DriftQL Fig. 1 (reconstruction in specs/driftql.md §9): modes in a cross, two adjacent
# ones tied for the best reward. 'bandit-4gaussian' ties right and bottom; '-rotK' turns the peaks (not the centres)
# K quarter turns clockwise: rot1 ties bottom and left, rot2 left and top, rot3 top and right.
BANDIT_CENTRES = np.array([[0.8, 0.0], [0.0, -0.8], [0.0, 0.8], [-0.8, 0.0]], dtype=np.float32)  # R, B, T, L
BANDIT_PEAKS = np.array([5.0, 5.0, 1.5, 0.0], dtype=np.float32)  # of 'bandit-4gaussian'
BANDIT_NAMES = ("right", "bottom", "top", "left")
BANDIT_CLOCKWISE = (0, 1, 3, 2)  # right -> bottom -> left -> top, as indices of the centres
BANDIT_ID = re.compile(r"^bandit-4gaussian(-rot[123])?$")


def bandit_peaks(env_id: str) -> np.ndarray:
    """Peak reward of each mode (centre order R, B, T, L) for 'bandit-4gaussian' or 'bandit-4gaussian-rotK'."""
    k = int(env_id[-1]) if env_id.endswith(("rot1", "rot2", "rot3")) else 0
    peaks = np.empty_like(BANDIT_PEAKS)
    for i, c in enumerate(BANDIT_CLOCKWISE):
        peaks[BANDIT_CLOCKWISE[(i + k) % 4]] = BANDIT_PEAKS[c]
    return peaks


def bandit_tied_modes(env_id: str) -> tuple:
    """Names of the two modes tied for the best reward, e.g. ('right', 'bottom')."""
    peaks = bandit_peaks(env_id)
    return tuple(n for n, p in zip(BANDIT_NAMES, peaks) if p == peaks.max())


def bandit_reward(a: np.ndarray, peaks: np.ndarray = BANDIT_PEAKS) -> np.ndarray:
    """r(a) = max_m (peak_m - 80 |a - c_m|^2) for actions [..., 2]."""
    d2 = ((a[..., None, :] - BANDIT_CENTRES) ** 2).sum(-1)
    return (peaks - 80.0 * d2).max(-1)


def _bandit_task(env_id: str, device: torch.device, n: int = 10_000) -> Task:
    rng = np.random.default_rng(0)
    a = BANDIT_CENTRES[np.arange(n) % 4] + 0.05 * rng.standard_normal((n, 2)).astype(np.float32)
    a = np.clip(a, -1, 1)
    obs = np.zeros((n, 2), dtype=np.float32)
    data = dict(observations=obs, actions=np.clip(a, -ACTION_CLIP, ACTION_CLIP),
                rewards=bandit_reward(a, bandit_peaks(env_id)), next_observations=obs, masks=np.zeros(n),
                terminals=np.ones(n))
    return Task(env_id, Dataset.from_numpy(data, device), None, None, None, 1)


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate(policy: Callable[[torch.Tensor], torch.Tensor], task: Task, num_episodes: int, seed: int,
             png_path: Optional[str] = None) -> dict:
    """Runs `num_episodes` episodes side by side in a vector env, one policy call per step on the whole batch.

    OGBench: success = the final step's info['success'] (FQL's protocol). Minari: episodic return and, where the
    task defines one, the normalised score x100. The bandit evaluates 1,000 samples at s = 0 instead.
    """
    device = task.train.observations.device
    if task.make_env is None:
        return evaluate_bandit(policy, device, png_path, peaks=bandit_peaks(task.env_id))
    envs = gym.vector.SyncVectorEnv([task.make_env] * num_episodes)
    obs, _ = envs.reset(seed=seed)
    ret, length, success = np.zeros(num_episodes), np.zeros(num_episodes), np.zeros(num_episodes)
    done = np.zeros(num_episodes, dtype=bool)
    while not done.all():
        action = policy(torch.as_tensor(obs, dtype=torch.float32, device=device))
        action = np.clip(action.cpu().numpy(), -1, 1)
        obs, reward, terminated, truncated, info = envs.step(action)
        live = ~done
        ret[live] += reward[live]
        length[live] += 1
        ended = live & (terminated | truncated)
        if "success" in info:
            success[ended] = np.asarray(info["success"], dtype=np.float64)[ended]
        done |= ended  # the vector env resets finished envs on the next step; their later steps are ignored
    envs.close()
    out = {"episodic_return": ret.mean(), "episodic_length": length.mean(), "success_rate": success.mean()}
    if task.score is not None:
        out["normalized_score"] = float(np.mean(task.score(ret)))
    return out


@torch.no_grad()
def evaluate_bandit(policy: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                    png_path: Optional[str] = None, n: int = 1000, peaks: np.ndarray = BANDIT_PEAKS) -> dict:
    """Fraction of n samples within 0.2 of each mode centre and between modes; optional PNG like DriftQL Fig. 1."""
    a = policy(torch.zeros(n, 2, device=device)).clamp(-1, 1).cpu().numpy()
    near = np.linalg.norm(a[:, None] - BANDIT_CENTRES, axis=-1) < 0.2  # [n, 4]
    out = {f"frac_{m}": near[:, i].mean() for i, m in enumerate(BANDIT_NAMES)}
    out["frac_between"] = 1.0 - near.any(1).mean()
    out["episodic_return"] = bandit_reward(a, peaks).mean()
    if png_path:
        save_bandit_png(a, png_path, peaks)
    return out


def save_bandit_png(actions: np.ndarray, path: str, peaks: np.ndarray = BANDIT_PEAKS, size: int = 440) -> None:
    """Samples (black) over the reward landscape (dark blue = -4 or less, yellow = 5), axes [-1.1, 1.1]."""
    from PIL import Image

    lin = np.linspace(-1.1, 1.1, size, dtype=np.float32)
    grid = np.stack(np.meshgrid(lin, -lin), -1)  # image rows go top to bottom
    r = np.clip((bandit_reward(grid, peaks) + 4) / 9, 0, 1)[..., None]
    img = ((1 - r) * np.array([30, 40, 110]) + r * np.array([250, 225, 60])).astype(np.uint8)
    px = np.clip(((actions + 1.1) / 2.2 * (size - 1)).round().astype(int), 1, size - 2)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            img[size - 1 - px[:, 1] + dy, px[:, 0] + dx] = 0
    Image.fromarray(img).save(path)


def chunked_policy(policy, horizon: int):
    """Open-loop chunk execution for `evaluate`, which calls the policy once per env step and wants [N, A]:
    plan a chunk [N, h*A] every h steps and hand out its actions in order. The episodes of the vector env start
    together and a finished env's later actions are ignored, so one step counter serves every env. `reset()` makes
    the next call plan a new chunk (for a new batch of episodes)."""
    state = {"step": 0, "chunk": None}

    def step_policy(obs: torch.Tensor) -> torch.Tensor:
        if state["step"] % horizon == 0:
            chunk = policy(obs)
            state["chunk"] = chunk.reshape(chunk.shape[0], horizon, -1)  # [N, h, A]
        action = state["chunk"][:, state["step"] % horizon]
        state["step"] += 1
        return action

    step_policy.reset = lambda: state.update(step=0)
    return step_policy


# ---------------------------------------------------------------------------------------------------- online phase
class Collector:
    """The online phase of offline-to-online fine-tuning, as the official main.py loops run it: one training env,
    its current episode, and the replay, which is `task.train` itself (the offline rows, then the online ones).

    `step` executes one env step and stores exactly one transition: masks = 1 - terminated (a time limit still
    bootstraps), terminals = terminated or truncated, rewards = the env reward + task.online_reward_shift, passed
    through `reward_fn` when given (QAM's --sparse). The policy maps [1, D] to a chunk [1, h*A]; its h actions run
    open-loop and every executed step is stored, so chunk samplers see online data as they see the dataset. The chunk
    queue is dropped when an episode ends. The replay holds max(buffer_size, N + 1) rows (buffer_size 0: N + online
    steps) and then overwrites its oldest rows, like the official ReplayBuffer; with `balanced` the online rows form
    their own buffer of buffer_size rows after the N offline ones, as FQL's --balanced_sampling.
    """

    def __init__(self, task: Task, online_steps: int, buffer_size: int, seed: int, writer, horizon: int = 1,
                 balanced: bool = False, reward_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        if task.make_env is None:
            raise UsageError(f"--online-steps needs an environment to act in, and {task.env_id} has none: "
                             "fine-tune on an OGBench or Minari task")
        try:
            self.env = task.make_env()
        except Exception as e:  # noqa: BLE001 (any failure to build the env gives the same advice)
            raise UsageError(f"--online-steps: the environment of {task.env_id} cannot be built here "
                             f"({type(e).__name__}: {e}); run without --online-steps") from None
        n = task.train.size
        if balanced:
            capacity = n + min(buffer_size, online_steps)
        elif buffer_size == 0:
            capacity = n + online_steps
        else:
            capacity = min(max(buffer_size, n + 1), n + online_steps)  # never allocate rows no step can fill
        task.train = task.train.grow(capacity - n)
        self.task, self.data, self.offline_size, self.balanced = task, task.train, n, balanced
        self.seed, self.writer, self.horizon, self.reward_fn = seed, writer, horizon, reward_fn
        self.start = n if balanced else 0  # where the write pointer wraps to when the replay is full
        self.pointer, self.wrapped = n, False
        self.steps = 0  # env steps collected so far (the official online step i)
        self.policy_calls = 0
        self.obs, self.queue, self.ret, self.length = None, [], 0.0, 0

    def step(self, policy: Callable[[torch.Tensor], torch.Tensor], global_step: int) -> None:
        """One env step of the deployed policy; one transition into the replay; episode stats to `online/`."""
        device = self.data.observations.device
        if self.obs is None:  # a fresh episode; the first reset of a process is seeded (also after --resume)
            self.obs, _ = self.env.reset(seed=self.seed + 3000 + global_step) if self.policy_calls == 0 \
                else self.env.reset()
            self.queue, self.ret, self.length = [], 0.0, 0
        if not self.queue:  # the host waits for the chunk here, the one sync of an online step besides the env step
            chunk = policy(torch.as_tensor(self.obs, dtype=torch.float32, device=device)[None])
            self.queue = list(chunk.reshape(self.horizon, -1).cpu().numpy())
            self.policy_calls += 1
        action = self.queue.pop(0)
        next_obs, reward, terminated, truncated, info = self.env.step(np.clip(action, -1, 1))
        stored = float(reward) + self.task.online_reward_shift
        if self.reward_fn is not None:
            stored = float(self.reward_fn(torch.tensor(stored)))
        done = bool(terminated or truncated)
        row = np.concatenate([np.asarray(self.obs, np.float32).ravel(), action.astype(np.float32),
                              [stored], np.asarray(next_obs, np.float32).ravel(), [1.0 - float(terminated)],
                              [float(done)]]).astype(np.float32)
        self._put(torch.as_tensor(row, device=device))
        self.steps += 1
        self.ret, self.length = self.ret + float(reward), self.length + 1
        if done:
            episode = {"episodic_return": self.ret, "episodic_length": self.length}
            if "success" in info:
                episode["success"] = float(info["success"])
            if self.writer is not None:
                log_scalars(self.writer, "online", episode, global_step)
            self.obs = None
        else:
            self.obs = next_obs

    def _put(self, row: torch.Tensor) -> None:
        """Writes one flat transition [D + A + 1 + D + 2] at the write pointer."""
        d, a = self.data.observations.shape[1], self.data.actions.shape[1]
        if self.pointer == len(self.data.observations):  # full: overwrite the oldest rows from here on
            self.pointer, self.wrapped = self.start, True
        i, ds = self.pointer, self.data
        ds.observations[i], ds.actions[i], ds.rewards[i] = row[:d], row[d:d + a], row[d + a]
        ds.next_observations[i], ds.masks[i], ds.terminals[i] = row[d + a + 1:2 * d + a + 1], row[-2], row[-1]
        ds.size = max(ds.size, i + 1)
        self.pointer = i + 1

    def sample(self, batch_size: int) -> dict:
        """A batch for an online update: uniform over the whole replay, or with `balanced` half from the offline rows
        and half from the online ones (FQL's --balanced_sampling). Indices are drawn on the device."""
        if not self.balanced:
            return self.data.sample(batch_size)
        dev, n = self.data.observations.device, self.offline_size
        idx = torch.cat([torch.randint(n, (batch_size // 2,), device=dev),
                         n + torch.randint(self.data.size - n, (batch_size // 2,), device=dev)])
        return {k: getattr(self.data, k)[idx] for k in Dataset.KEYS}

    def state_dict(self) -> dict:
        """The online rows (all rows once the replay has wrapped into the dataset) and the counters."""
        lo = self.start if self.wrapped else self.offline_size
        return {"steps": self.steps, "pointer": self.pointer, "wrapped": self.wrapped, "size": self.data.size,
                "lo": lo, "rows": {k: getattr(self.data, k)[lo:self.data.size].clone() for k in Dataset.KEYS}}

    def load_state_dict(self, state: dict) -> None:
        lo, size = state["lo"], state["size"]
        if size > len(self.data.observations) or lo < 0:
            raise UsageError(f"the checkpoint holds {size} replay rows but this run has room for "
                             f"{len(self.data.observations)}: pass the --online-steps and --buffer-size it ran with")
        for k in Dataset.KEYS:
            getattr(self.data, k)[lo:size] = state["rows"][k]
        self.data.size, self.pointer, self.wrapped = size, state["pointer"], state["wrapped"]
        self.steps = state["steps"]
        self.obs, self.queue = None, []  # the resumed run starts a fresh episode


# ---------------------------------------------------------------------------------------------------- logging
def start_run(args, script: str) -> tuple:
    """Makes runs/<env>__<exp>__<seed>__<time>[_k]/ (an exclusive mkdir, so runs started together never share one)
    with args.json and a tensorboard writer (+ wandb on --track). Scripts call it once the data and any checkpoint
    have loaded, so a run that fails before its first step leaves no folder behind.

    With --resume the run continues in the checkpoint's own folder, so that a run keeps one eval.csv and one
    tensorboard history however often it is interrupted: rows and events past the checkpoint's step (written after
    it, by the attempt that was interrupted) are dropped, and args.json keeps the flags the run started with."""
    from torch.utils.tensorboard import SummaryWriter

    run_name = f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    purge_step = None
    if args.resume:
        run_dir = Path(args.resume).parent
        purge_step = int(torch.load(args.resume, map_location="cpu", weights_only=True)["step"]) + 1  # resume read it
        if (run_dir / "eval.csv").exists():
            with open(run_dir / "eval.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            if rows and int(rows[-1]["step"]) >= purge_step:
                with open(run_dir / "eval.csv", "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(rows[0]))
                    w.writeheader()
                    w.writerows(r for r in rows if int(r["step"]) < purge_step)
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
    if not (args.resume and (run_dir / "args.json").exists()):  # a resume keeps the flags the run started with
        (run_dir / "args.json").write_text(json.dumps({"script": script, **asdict(args), "run": provenance()}, indent=2))
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=asdict(args), name=run_name,
                   sync_tensorboard=True, dir=str(run_dir))
    writer = SummaryWriter(str(run_dir), purge_step=purge_step)
    table = "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
    return run_dir, writer


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


def progress(first: int, steps: int):
    """A tqdm bar over the gradient steps (step, steps/s, ETA, last evaluation) when stderr is a terminal; otherwise
    a disabled one, and `log_train` prints a plain line at every log interval instead."""
    from tqdm import tqdm

    return tqdm(total=steps, initial=first - 1, unit="step", dynamic_ncols=True, smoothing=0.05,
                disable=not sys.stderr.isatty())


def log_train(writer, bar, metrics: dict, step: int, first: int, t0: float) -> dict:
    """Writes the losses/ scalars and charts/SPS (one host sync); without a terminal also one plain progress line."""
    values = log_scalars(writer, "losses", metrics, step)
    elapsed = time.time() - t0
    sps = (step - first + 1) / max(elapsed, 1e-9)
    writer.add_scalar("charts/SPS", sps, step)
    if bar.disable:
        hms = lambda sec: time.strftime("%H:%M:%S", time.gmtime(sec))  # noqa: E731
        print(f"step {step}/{bar.total} ({100 * step / bar.total:.1f} %), {sps:.1f} steps/s, elapsed {hms(elapsed)}, "
              f"ETA {hms((bar.total - step) / sps)}, last eval {getattr(bar, 'postfix', None) or '-'}, "
              + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
    return values


def log_eval(bar, step: int, result: dict) -> None:
    """Prints the evaluation line above the progress bar and shows its score in the bar."""
    key = next((k for k in ("normalized_score", "success_rate", "episodic_return") if k in result), None)
    bar.set_postfix_str(f"{key}={result[key]:.3f}" if key else "")
    bar.write(f"step {step}: " + ", ".join(f"{k}={v:.3f}" for k, v in result.items()))


def log_scalars(writer, prefix: str, metrics: dict, step: int) -> dict:
    """Writes `prefix/name` scalars (one host sync for all of them) and returns them as floats."""
    values = {k: float(v) for k, v in metrics.items()}
    for k, v in values.items():
        writer.add_scalar(f"{prefix}/{k}", v, step)
    return values


def append_csv(path: Path, step: int, metrics: dict) -> None:
    """Appends one row to eval.csv (header written on first use)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", *metrics])
        if new:
            w.writeheader()
        w.writerow({"step": step, **metrics})


# ---------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, algo: str, step: int, args, nets: torch.nn.Module, opt, task: Task,
                    online: Optional[Collector] = None) -> None:
    """One self-describing file (the script, its flags, the observation and action sizes of the task, every network
    and the optimizer); written to a temp name first so a crash never leaves a half checkpoint.
    During the online phase it also holds the online transitions and counters of `online`."""
    payload = {"algo": algo, "step": step, "args": asdict(args), "obs_dim": task.train.observations.shape[1],
               "action_dim": task.train.actions.shape[1], "nets": nets.state_dict(),
               "optimizer": opt.state_dict() if opt is not None else None, "rng": torch.get_rng_state(),
               "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    if online is not None and online.steps > 0:
        payload["online"] = online.state_dict()
    tmp = Path(str(path) + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, algo: str, device: torch.device) -> dict:
    """Loads a checkpoint and refuses a missing, empty, truncated or corrupt file and one written by another script."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path}: no such file; pass a {algo}.pt from a run folder of {algo}.py")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 (empty, truncated, not a torch file: all get the same advice)
        raise UsageError(f"checkpoint {path} cannot be read ({type(e).__name__}: it is empty, truncated or not a "
                         f"checkpoint); pass a complete {algo}.pt from a run folder of {algo}.py") from None
    if not isinstance(payload, dict) or payload.get("algo") != algo:
        written = payload.get("algo") if isinstance(payload, dict) else None
        raise UsageError(f"{path} was written by {written}.py, not {algo}.py: load it with that script")
    return payload


def load_policy(checkpoint, device="cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """The evaluation policy of any script's checkpoint as a callable, observations [B, D] -> actions [B, A].

    The script named by the checkpoint is imported, its Args rebuilt from the stored flags and its networks from
    `make_nets`; the callable is the script's `make_policy`, exactly the policy main() evaluates (fresh noise at every
    call, so seed torch for repeatable actions). QAM executes its chunks open-loop: the callable plans h actions
    every h-th call and returns them one per call, so start each new batch of episodes with `policy.reset()`.
    Checkpoints written before the sizes were stored get them from the networks' weights."""
    import importlib

    device = torch.device(device)
    payload = torch.load(checkpoint, map_location=device, weights_only=True)
    try:
        mod = importlib.import_module(payload["algo"])
        args = mod.Args(**payload["args"])
    except (ImportError, TypeError) as e:
        raise ValueError(f"{checkpoint}: cannot rebuild {payload.get('algo')}.py from it ({e}); load it from the folder "
                         "of that script, at the commit that wrote it") from None
    obs_dim, action_dim = payload.get("obs_dim"), payload.get("action_dim")
    if obs_dim is None:
        obs_dim, action_dim = _sizes_from_weights(payload["nets"], getattr(args, "horizon", 1))
    nets = mod.make_nets(args, obs_dim, action_dim).to(device)
    nets.load_state_dict(payload["nets"])
    return mod.make_policy(nets.eval(), args)


def _sizes_from_weights(state: dict, horizon: int) -> tuple:
    """(obs_dim, action_dim) of an older checkpoint: in every script the critic's first layer reads
    concat[s, a] with a of horizon * A entries, and the last layer of every `actor_*.net` MLP outputs horizon * A."""
    batched = "critic.weights.0" in state  # [num_qs, in, out]; before the batched ensemble: qs.<j>.0.weight [out, in]
    critic_in = state["critic.weights.0"].shape[1] if batched else state["critic.qs.0.0.weight"].shape[1]
    heads = [k for k in state if re.fullmatch(r"actor_\w+\.net\.\d+\.weight", k)]
    chunk = state[max(heads, key=lambda k: int(k.split(".")[-2]))].shape[0]
    return critic_in - chunk, chunk // horizon


def resume(path, algo: str, nets: torch.nn.Module, opt, device: torch.device,
           online: Optional[Collector] = None, env_id: Optional[str] = None, budget: Optional[int] = None) -> int:
    """Loads the networks (targets and EMA copies included), the optimizer state and torch's random streams of a
    checkpoint, so that the resumed run draws the same batches and noise as an uninterrupted one; returns its step.
    A checkpoint of the online phase also puts its online transitions back into the replay of `online`.
    The --lr given now wins over the saved one (the only flag that changes a resumed run's updates on its own).
    Refuses a checkpoint of another --env-id, and one already at the step budget."""
    payload = load_checkpoint(path, algo, device)
    if any(".qs." in k for k in payload["nets"]):  # the networks load (Critic converts them), the Adam state not
        raise UsageError(f"{path} predates the batched critic ensemble: its networks load for evaluation, but its "
                         "optimizer state does not fit, so training cannot resume from it; start a new run")
    saved_env = payload.get("args", {}).get("env_id")
    if env_id is not None and saved_env not in (None, env_id):
        raise UsageError(f"--resume {path} was trained on {saved_env}, not on --env-id {env_id}: pass --env-id "
                         f"{saved_env}")
    if budget is not None and payload["step"] >= budget:
        raise UsageError(f"--resume {path} is at step {payload['step']}, already at or past the budget of {budget} "
                         "steps: pass a larger --offline-steps (or --online-steps) to train on")
    lrs = [group["lr"] for group in opt.param_groups]
    try:
        nets.load_state_dict(payload["nets"])
        opt.load_state_dict(payload["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path} does not fit these networks ({str(e).splitlines()[0]}); pass the flags it was "
                         "trained with, saved in args.json of its run folder") from None
    for group, lr in zip(opt.param_groups, lrs):
        group["lr"] = lr
    if "rng" in payload:  # checkpoints written before the streams were saved resume with fresh ones
        torch.set_rng_state(payload["rng"].cpu())
        if torch.cuda.is_available() and len(payload["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in payload["cuda_rng"]])
    if "online" in payload and online is not None:
        online.load_state_dict(payload["online"])
    return payload["step"]


def check_finite(bad_step: torch.Tensor, ckpt_path: Path) -> None:
    """Stops training when any loss went NaN/inf; `bad_step` (device scalar) is the first such step or -1.
    The checkpoint is saved only after this check passes, so the one on disk is from before the NaN."""
    step = int(bad_step)
    if step >= 0:
        kept = f"the last good checkpoint is {ckpt_path}" if ckpt_path.exists() else "no checkpoint was saved yet"
        raise FloatingPointError(
            f"a loss became NaN/inf at step {step}; stopped, {kept}. A plain --resume replays the same NaN (resuming "
            "is bit-exact): resume with a smaller --lr (it takes effect on resume) or a milder setting of the method's "
            "flags (e.g. a larger temperature or a smaller alpha), or start again with another --seed")
