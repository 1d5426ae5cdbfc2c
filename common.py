"""The protocol shared by the five training scripts: everything that can change a reported number.

A method reader needs these parts: `Dataset` and its `sample` (uniform transitions) and `sample_chunks` (action
chunks), `load_task` (which data, and how masks and action clipping are set; the loaders are in loaders.py),
`evaluate` (the evaluation protocol), `default_offline_steps` (the papers' budgets) and, for offline-to-online,
`Collector`. The four-Gaussian bandit of DriftQL Fig. 1 is here too. Nothing here is algorithm code, and the run
machinery (flags, logging, checkpoints) is in plumbing.py. The data protocol follows the official FQL code
(seohongpark/fql, `envs/env_utils.py`) and OGBench (`ogbench/utils.py`, `relabel_utils.py`).
"""
import difflib
import re
from dataclasses import dataclass
from typing import Callable, Optional

import gymnasium as gym
import numpy as np
import torch

from loaders import (ACTION_CLIP, D4RL_ALIASES, FAMILIES, KEYS, ROBOMIMIC_ID, UsageError, minari_task, ogbench_task,
                     robomimic_task)


def default_offline_steps(env_id: str) -> int:
    """The papers' budgets: 1M gradient steps on OGBench and Robomimic (FQL README, DFP Tab. 5), 500K on D4RL/Minari,
    5K on the toy bandit."""
    if BANDIT_ID.match(env_id):
        return 5_000
    return 1_000_000 if "singletask" in env_id or ROBOMIMIC_ID.match(env_id) else 500_000


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

    KEYS = KEYS

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
        """Action chunks of length h for Q-chunking (Li, Zhou, Levine, "Reinforcement Learning with Action Chunking",
        arXiv 2507.07969, §4; official `sample_sequence` in ColinQiyangLi/qam `utils/datasets.py`), start index
        uniform in [0, size - h].

        Rewards, masks and the next observation stop at the end of the episode: steps after the first
        terminal are dropped from R = sum_j discount^j r_j, from the mask (min over steps) and from the choice of
        s'. `valid` is 0 when the chunk's actions run past the episode end; losses weight those samples out.
        `valid_steps` [B, h] is the same per step (the official per-step `valid`: no episode end before step j).
        Returns observations [B, D], actions [B, h, A], rewards [B], masks [B], valid [B], valid_steps [B, h],
        next_observations [B, D].
        """
        start = torch.randint(self.size - horizon + 1, (batch_size,), device=self.observations.device)
        return self.chunks_at(start, horizon, discount)

    def chunks_at(self, start: torch.Tensor, horizon: int, discount: float) -> dict:
        """The chunks of `sample_chunks` that begin at rows `start` [B]."""
        dev = self.observations.device
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
            "valid_steps": w,
            "next_observations": self.next_observations[last],
        }


def check_horizon(data: Dataset, horizon: int, env_id: str) -> None:
    """Refuses an action-chunk length h that no episode can hold: every chunk would run past an episode end and be
    weighted out (the bandit, where every step is terminal, holds only h = 1)."""
    ends = torch.nonzero(data.terminals[:data.size]).squeeze(1).cpu()
    longest = int(torch.cat([torch.tensor([-1]), ends, torch.tensor([data.size - 1])]).diff().max())
    if horizon > longest:
        raise UsageError(f"--horizon {horizon} is longer than every episode of {env_id} (the longest has {longest} "
                         f"steps): pass --horizon {longest} or less")


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
    shards: Optional["shards.Shards"] = None  # --dataset-dir: the rotation that `data_at` asks for a step's shard


def load_task(env_id: str, device: torch.device, extra_capacity: int = 0, flags=None) -> Task:
    """Dispatches on the id: bandit, OGBench single-task, Robomimic low-dim, a D4RL alias, or a Minari dataset
    id.
    `extra_capacity` leaves room in the training set for that many online transitions (`Dataset.add`). `flags`: a
    script's Args; its --dataset-dir, --dataset-proportion and --dataset-sampling choose the data (`load_sharded`)."""
    task = load_sharded(env_id, device, flags) if getattr(flags, "dataset_dir", None) else _load_task(env_id, device)
    proportion = getattr(flags, "dataset_proportion", 1.0)
    if proportion < 1 and task.shards is None and not getattr(flags, "dataset_dir", None):
        n = max(1, int(task.train.size * proportion))  # the official process_train_dataset: the first rows
        task.train = Dataset(**{k: getattr(task.train, k)[:n] for k in Dataset.KEYS}, size=n)
    if extra_capacity:
        task.train = task.train.grow(extra_capacity)
    return task


def _load_task(env_id: str, device: torch.device) -> Task:
    if BANDIT_ID.match(env_id):
        return _bandit_task(env_id, device)
    if env_id.startswith("visual-"):  # pixels: frames kept as uint8 (visual.py)
        import visual
        return visual.load_visual_task(env_id, device)
    if env_id in D4RL_ALIASES:
        print(f"D4RL alias: {env_id} -> Minari dataset {D4RL_ALIASES[env_id]}")
        env_id = D4RL_ALIASES[env_id]
    if "singletask" in env_id:
        parts = ogbench_task(env_id)
    elif ROBOMIMIC_ID.match(env_id):
        parts = robomimic_task(env_id)
    elif env_id.count("/") >= 1:
        parts = minari_task(env_id)
    else:
        close = difflib.get_close_matches(env_id, [*D4RL_ALIASES, "bandit-4gaussian"], n=3)
        raise UsageError(f"unknown --env-id {env_id!r}: use {FAMILIES}"
                         + (f"; closest: {', '.join(close)}" if close else ""))
    train = Dataset.from_numpy(parts.pop("train"), device)
    val = Dataset.from_numpy(parts.pop("val"), device) if "val" in parts else None
    return Task(env_id, train, val, **parts)


def load_sharded(env_id: str, device: torch.device, flags) -> Task:
    """--dataset-dir: an OGBench single-task id trained on a folder of shards (shards.py), in the official rotation
    or, with --dataset-sampling uniform, from all shards at once. The task's env, evaluation and relabelling are the
    id's; the first shard is `task.train` until `data_at` swaps it."""
    import shards

    if BANDIT_ID.match(env_id) or "singletask" not in env_id:
        raise UsageError(f"--dataset-dir reads OGBench shards, and {env_id} is not an OGBench single-task id (Minari, "
                         "D4RL and the bandit come as one dataset): drop --dataset-dir or pass an OGBench id such as "
                         "cube-quadruple-play-singletask-task2-v0")
    paths = shards.shard_paths(flags.dataset_dir, flags.dataset_proportion)
    rotation = shards.Shards(env_id, paths, flags.dataset_replace_interval, device, Dataset.from_numpy)
    first = rotation.take(0)
    make_env = lambda: shards.make_env(env_id)  # noqa: E731
    steps = gym.spec(shards.env_name_of(env_id)).max_episode_steps
    print(f"--dataset-dir: {len(paths)} shards of {flags.dataset_dir}, {first.size} transitions in the first")
    if getattr(flags, "dataset_sampling", "rotate") == "uniform":
        if getattr(flags, "online_steps", 0):
            raise UsageError("--dataset-sampling uniform is offline only: drop --online-steps, or fine-tune with the "
                             "default rotation (--dataset-sampling rotate)")
        data = shards.UniformShards(env_id, paths, first, Dataset.from_numpy)
        return Task(env_id, data, None, make_env, max_episode_steps=steps)
    rotation.current, rotation.index = first, 0
    return Task(env_id, first, None, make_env, max_episode_steps=steps, shards=rotation)


def data_at(task: Task, step: int, offline_steps: int, online: Optional["Collector"]):
    """The data of a step: `task.train`, or with --dataset-dir the shard of the step, read ahead on a thread (offline)
    or the replay whose offline rows are that shard (online; QAM's official loop)."""
    return task.train if task.shards is None else task.shards.at(step, offline_steps, online)


def relabel_rewards(task: Task, reward_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Applies `reward_fn` to the training rewards in place, and to every shard that --dataset-dir loads later."""
    task.train.rewards.copy_(reward_fn(task.train.rewards))
    for holder in (task.shards, task.train):
        if hasattr(holder, "reward_fn"):
            holder.reward_fn = reward_fn


# The four-Gaussian bandit of DriftQL Fig. 1, rebuilt from the figure (the paper gives no numbers): modes in a cross,
# two adjacent ones tied for the best reward. 'bandit-4gaussian' ties right and bottom; '-rotK' turns the peaks (not
# the centres) K quarter turns clockwise: rot1 ties bottom and left, rot2 left and top, rot3 top and right.
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

    OGBench: success = the final step's info['success'] (FQL's protocol); Robomimic likewise, where a positive reward
    is success and ends the episode (DFP's wrapper). Minari: episodic return and, where the
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


def save_bandit_png(actions: np.ndarray, path: str, peaks: np.ndarray = BANDIT_PEAKS) -> None:
    """Samples (black) over the reward landscape, axes [-1.1, 1.1] as in DriftQL Fig. 1, colour bar from -4 (or
    less) to 5. 440 x 440 pixels."""
    from matplotlib.figure import Figure  # no pyplot: no display, no global state

    lin = np.linspace(-1.1, 1.1, 300, dtype=np.float32)
    fig = Figure(figsize=(4.4, 4.4), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(bandit_reward(np.stack(np.meshgrid(lin, lin), -1), peaks), extent=(-1.1, 1.1, -1.1, 1.1),
                      origin="lower", vmin=-4, vmax=5, cmap="viridis")
    ax.scatter(actions[:, 0], actions[:, 1], s=2, c="black", linewidths=0)
    ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), xlabel="action 1", ylabel="action 2")
    fig.colorbar(image, ax=ax, label="reward", shrink=0.8)
    fig.tight_layout()
    fig.savefig(path)


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

    def __init__(self, task: Task, online_steps: int, buffer_size: int, seed: int, horizon: int = 1,
                 balanced: bool = False, reward_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        if task.make_env is None:
            raise UsageError(f"--online-steps needs an environment to act in, and {task.env_id} has none: "
                             "fine-tune on an OGBench or Minari task")
        try:
            self.env = task.make_env()
        except Exception as e:  # noqa: BLE001 (any failure to build the env gives the same advice)
            raise UsageError(f"--online-steps: the environment of {task.env_id} cannot be built here "
                             f"({type(e).__name__}: {e}); run without --online-steps") from None
        if task.shards is not None and (buffer_size and not balanced or len(set(task.shards.rows)) > 1):
            raise UsageError("--online-steps with --dataset-dir copies each shard over the replay's first rows, as the "
                             "official loop: it needs shards of one size and --buffer-size 0 (or --balanced-sampling)")
        n = task.train.size
        if balanced:
            capacity = n + min(buffer_size, online_steps)
        elif buffer_size == 0:
            capacity = n + online_steps
        else:
            capacity = min(max(buffer_size, n + 1), n + online_steps)  # never allocate rows no step can fill
        task.train = task.train.grow(capacity - n)
        self.task, self.data, self.offline_size, self.balanced = task, task.train, n, balanced
        self.seed, self.horizon, self.reward_fn = seed, horizon, reward_fn
        self.start = n if balanced else 0  # where the write pointer wraps to when the replay is full
        self.pointer, self.wrapped = n, False
        self.steps = 0  # env steps collected so far (the official online step i)
        self.policy_calls = 0
        self.obs, self.queue, self.ret, self.length = None, [], 0.0, 0

    def step(self, policy: Callable[[torch.Tensor], torch.Tensor], global_step: int) -> Optional[dict]:
        """One env step of the deployed policy and one transition into the replay. Returns the episode's return,
        length and success when this step ended it, else None."""
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
            self.obs = None
            return episode
        self.obs = next_obs
        return None

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
