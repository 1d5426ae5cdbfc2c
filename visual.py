"""Pixel observations: OGBench's `visual-*` tasks as FQL's and DeFlow's papers ran them (64x64x3 uint8 frames).

It holds the four parts the official code (seohongpark/fql at 719d044; muzhancun/DeFlow and DT6A/driftql carry the
same files) spreads over `utils/encoders.py`, `utils/datasets.py`, `envs/env_utils.py` and the agents:
  * `ImpalaEncoder`, the `impala_small` CNN, and `with_encoder`, which puts one in front of a network the way each
    agent's `encoders` dict does (one per network; the critic's is shared by its ensemble members);
  * `random_shift`, the pad-and-crop augmentation applied to a sampled batch with probability p_aug;
  * `VisualDataset`: frames stored once as uint8, transitions as indices into them, frames stacked at sample time;
  * `load_visual_task`, the loader behind `common.load_task` for `visual-*` ids, and `FrameStack` for evaluation.
A method reader needs `with_encoder` (what each network sees), `random_shift` and `VisualDataset.sample` (what a batch
is). `check` (called by plumbing.setup) gives the one-line refusals: a script without pixel support, online fine-tuning
(FQL's main.py refuses it), --encoder without pixels. Only fql.py, deflow.py and driftql.py accept pixels.
"""
import collections
import os
import sys
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from loaders import ACTION_CLIP, REGENERABLE, UsageError, npz_shapes, ogbench_data_dir, ogbench_ids

FRAME = (64, 64, 3)  # one frame of OGBench's visual envs (height, width, RGB)
PAD = 3  # the official random shift pads each side by 3 pixels (utils/datasets.py, Dataset.augment)
EVAL_MAX_STEPS: Optional[int] = None  # None: the env's own time limit; tests set a short one (rendering is slow)


# ---------------------------------------------------------------------------------------------------- encoder
class ResnetStack(nn.Module):
    """conv 3x3 -> max-pool 3x3 stride 2 ('SAME') -> num_blocks x [relu, conv, relu, conv, + input]."""

    def __init__(self, in_ch: int, features: int, num_blocks: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, features, 3, padding=1)
        self.blocks = nn.ModuleList(nn.ModuleList([nn.Conv2d(features, features, 3, padding=1),
                                                   nn.Conv2d(features, features, 3, padding=1)])
                                    for _ in range(num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # flax's 'SAME' pooling pads (0, 1) on each spatial axis for even sizes, with -inf
        x = F.max_pool2d(F.pad(self.conv(x), (0, 1, 0, 1), value=float("-inf")), 3, 2)
        for c1, c2 in self.blocks:
            x = x + c2(F.relu(c1(F.relu(x))))
        return x


class ImpalaEncoder(nn.Module):
    """The official `ImpalaEncoder`; `impala_small` = stacks (16, 32, 32), one residual block each, then ReLU,
    flatten, Dense 512 and GELU (flax's MLP with activate_final). Convolutions and the Dense layer: Xavier-uniform
    weights, zero biases. Input [..., H, W, C] in 0..255 (uint8 or float), divided by 255; output [..., 512].
    The flatten takes (H, W, C) order, as flax's NHWC reshape does."""

    def __init__(self, in_ch: int, stack_sizes=(16, 32, 32), num_blocks: int = 1, mlp_dim: int = 512,
                 frame=FRAME):
        super().__init__()
        sizes = (in_ch,) + tuple(stack_sizes)
        self.stacks = nn.Sequential(*[ResnetStack(sizes[i], sizes[i + 1], num_blocks) for i in range(len(stack_sizes))])
        h, w = frame[:2]
        for _ in stack_sizes:
            h, w = (h + 1) // 2, (w + 1) // 2
        self.dense = nn.Linear(h * w * sizes[-1], mlp_dim)
        self.out_dim = mlp_dim
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0  # NHWC -> NCHW
        x = F.relu(self.stacks(x)).permute(0, 2, 3, 1).flatten(1)
        return F.gelu(self.dense(x), approximate="tanh").reshape(*lead, -1)


ENCODERS = {"impala_small": dict(stack_sizes=(16, 32, 32), num_blocks=1)}


def feature_dim(args, obs_dim: int) -> int:
    """What the networks after the encoder see: 512 features with --encoder, else the observation size."""
    return 512 if getattr(args, "encoder", None) else obs_dim


def _encode_first_input(module: nn.Module, inputs: tuple):
    """Forward pre-hook: encodes the observation (first input) with the module's own encoder; an input that is
    already a feature vector [B, F] passes through (e.g. euler_integrate encodes once for its K steps)."""
    if inputs[0].dim() > 2:
        return (module.encoder(inputs[0]),) + tuple(inputs[1:])
    return None


def with_encoder(net: nn.Module, args) -> nn.Module:
    """`net` with its own `impala_small` in front when --encoder is set (the official agents give each network its
    own encoder; a deepcopy, such as the target critic, gets a copy of it). Unchanged otherwise."""
    if getattr(args, "encoder", None):
        net.encoder = ImpalaEncoder(FRAME[2] * args.frame_stack, **ENCODERS[args.encoder])
        net.register_forward_pre_hook(_encode_first_input)
    return net


# ---------------------------------------------------------------------------------------------------- augmentation
def random_shift(images: list, p_aug: float) -> list:
    """The official random shift: with probability p_aug (one draw per batch) every sample is padded by PAD pixels
    on each side, repeating the edge, and cropped back at a random offset in [0, 2 PAD] per axis, the same offset
    for all tensors of `images` ([B, H, W, C] each, e.g. s and s'). Edge padding then cropping is an index clamp, so
    this is one gather on the device with no host sync (the coin is drawn there too)."""
    if p_aug <= 0:
        return images
    b, dev = images[0].shape[0], images[0].device
    shift = torch.randint(0, 2 * PAD + 1, (b, 2), device=dev)
    shift = torch.where(torch.rand((), device=dev) < p_aug, shift, torch.full_like(shift, PAD))  # PAD: no move
    return shift_images(images, shift)


def shift_images(images: list, shift: torch.Tensor) -> list:
    """Crops at `shift` [B, 2] (row, column offsets in [0, 2 PAD]) of the edge-padded images [B, H, W, C]: the
    official `batched_random_crop` with crop_froms = (shift, 0)."""
    b, h, w = images[0].shape[:3]
    dev = images[0].device
    rows = (torch.arange(h, device=dev) + shift[:, :1] - PAD).clamp(0, h - 1)  # [B, H]
    cols = (torch.arange(w, device=dev) + shift[:, 1:] - PAD).clamp(0, w - 1)  # [B, W]
    batch = torch.arange(b, device=dev)[:, None, None]
    return [im[batch, rows[:, :, None], cols[:, None, :]] for im in images]


# ---------------------------------------------------------------------------------------------------- data
class VisualDataset:
    """Transitions over frames stored once: `frames` [R, 64, 64, 3] uint8 holds every episode's frames including its
    final one, and transition i goes from frame `rows[i]` to `rows[i] + 1` (the official loader copies the frames
    into separate next observations; this derives them and needs one byte per pixel). `starts[i]` is the first frame
    of transition i's episode.

    `sample` stacks the last `frame_stack` frames on the channel axis, oldest first, repeating the episode's first
    frame before it starts (the official `Dataset.sample`); s' is stacked the same way, so s and s' share k - 1
    frames. It then applies `random_shift` with `p_aug`. The frames live on the device when they fit there (`frames`
    on the device); otherwise in pinned host memory, each batch gathered there and copied in one non-blocking
    transfer. `observations` is the frames on the device, or an empty tensor on it that gives the device and frame
    shape to code that asks (plumbing, evaluate)."""

    KEYS = ("observations", "actions", "rewards", "next_observations", "masks", "terminals")

    def __init__(self, frames: np.ndarray, data: dict, device: torch.device, frame_stack: int = 1, p_aug: float = 0.0):
        self.device, self.frame_stack, self.p_aug = device, frame_stack, p_aug
        self.size = len(data["rows"])
        on_device = device.type == "cpu" or frames.nbytes < 0.5 * torch.cuda.mem_get_info(device)[0]
        self.frames = torch.from_numpy(frames)
        if on_device:
            self.frames = self.frames.to(device)
        elif device.type == "cuda":
            self.frames = self.frames.pin_memory()
        host = self.frames.device
        self.rows = torch.as_tensor(data["rows"], dtype=torch.long, device=host)
        self.starts = torch.as_tensor(data["starts"], dtype=torch.long, device=host)
        for k in ("actions", "rewards", "masks", "terminals"):
            setattr(self, k, torch.as_tensor(np.asarray(data[k], dtype=np.float32), device=device))

    @property
    def observations(self) -> torch.Tensor:
        return self.frames if self.frames.device == self.device else self.frames.new_empty((0,) + FRAME,
                                                                                           device=self.device)

    def stacked_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Frame rows [B, k + 1]: columns 0..k-1 make s, columns 1..k make s' (clamped at the episode start)."""
        k = self.frame_stack
        offsets = torch.arange(-(k - 1), 2, device=idx.device)
        return torch.maximum(self.rows[idx, None] + offsets, self.starts[idx, None])

    def sample(self, batch_size: int, idx: Optional[torch.Tensor] = None) -> dict:
        """Uniform with replacement over transitions, as the official `np.random.randint` (or the rows `idx`)."""
        host = self.frames.device
        idx = torch.randint(self.size, (batch_size,), device=host) if idx is None else idx.to(host)
        r = self.stacked_rows(idx)
        if host == self.device:
            frames = self.frames[r]  # [B, k + 1, H, W, C]
        else:  # gathered into pinned memory (the caching host allocator reuses it once the copy is done)
            frames = torch.empty(r.shape + FRAME, dtype=torch.uint8, pin_memory=True)
            torch.index_select(self.frames, 0, r.flatten(), out=frames.view(-1, *FRAME))
            frames, idx = frames.to(self.device, non_blocking=True), idx.to(self.device, non_blocking=True)
        b, k = batch_size, self.frame_stack
        stack = lambda f: f.permute(0, 2, 3, 1, 4).reshape(b, *FRAME[:2], k * FRAME[2])  # noqa: E731
        obs, next_obs = random_shift([stack(frames[:, :k]), stack(frames[:, 1:])], self.p_aug)
        return dict(observations=obs, next_observations=next_obs, actions=self.actions[idx],
                    rewards=self.rewards[idx], masks=self.masks[idx], terminals=self.terminals[idx])

    def nbytes(self) -> int:
        """Bytes held: frames plus the per-transition arrays (rows, starts, actions, rewards, masks, terminals)."""
        return sum(t.numel() * t.element_size() for t in
                   (self.frames, self.rows, self.starts, self.actions, self.rewards, self.masks, self.terminals))


def visual_arrays(path: str, env_name: str, env, fix: str) -> tuple:
    """(frames, transition dict) of one raw OGBench file: the official (non-compact) `load_dataset` transitions and
    rewards, without copying frames into next observations."""
    from ogbench.relabel_utils import relabel_dataset

    with np.load(path) as f:
        raw = {k: f[k] for k in f.files if k != "stamp"}
    frames = raw["observations"]
    if frames.dtype != np.uint8 or frames.shape[1:] != FRAME:
        raise UsageError(f"{path}: its frames are {frames.dtype} {frames.shape[1:]}, the visual tasks need uint8 "
                         f"{FRAME}; {fix}")
    ends = raw["terminals"].astype(bool)  # the last frame of each episode (it has no action of its own)
    rows = np.flatnonzero(~ends)
    starts = np.concatenate([[0], np.flatnonzero(ends)[:-1] + 1])
    data = dict(rows=rows, starts=starts[np.searchsorted(starts, rows, side="right") - 1],
                actions=np.clip(raw["actions"][rows].astype(np.float32), -ACTION_CLIP, ACTION_CLIP),
                terminals=ends[rows + 1].astype(np.float32))
    info = {k: raw[k][rows] for k in ("qpos", "qvel", "button_states") if k in raw}
    relabel_dataset(env_name, env, info)  # OGBench's single-task rewards and masks from the same rows
    data.update(rewards=info["rewards"], masks=info["masks"])
    for k in ("actions", "rewards", "masks"):
        if not np.isfinite(data[k]).all():
            raise UsageError(f"{path}: its array {k} holds NaN or inf; {fix}")
    return frames, data


def load_visual_task(env_id: str, device: torch.device):
    """A `common.Task` for a `visual-*` OGBench id from the official files (or collect.py's); val is not loaded
    (its losses are not logged)."""
    os.environ.setdefault("MUJOCO_GL", "egl")  # evaluation renders; the backend is chosen when MuJoCo is imported
    import ogbench
    import common

    splits = env_id.split("-")
    pos = splits.index("singletask") if "singletask" in splits else -1
    if env_id not in ogbench_ids() or pos < 0:
        raise UsageError(f"--env-id {env_id}: no such OGBench visual task; e.g. "
                         "visual-cube-single-play-singletask-task1-v0")
    name = "-".join(splits[:pos] + splits[-1:])
    env_name = "-".join(splits[:pos - 1] + splits[pos:])
    data_dir = ogbench_data_dir()
    paths = [os.path.join(data_dir, f"{name}{s}.npz") for s in ("", "-val")]
    fix = (f"regenerate both with `python collect.py {name}`" if REGENERABLE.match(name.removeprefix("visual-"))
           else "fetch the official files on a networked machine")
    if not all(os.path.exists(p) for p in paths):
        if any(os.path.exists(p) for p in paths):
            raise UsageError(f"OGBench dataset {name}: one of {paths[0]} and its -val file is missing; {fix}")
        try:
            ogbench.download_datasets([name], data_dir)
        except Exception as e:  # noqa: BLE001 (any download failure gives the same advice)
            raise FileNotFoundError(f"OGBench dataset {name} is not in {data_dir} and could not be downloaded "
                                    f"({type(e).__name__}); {fix}") from None
    shapes = [npz_shapes(p, fix) for p in paths]
    for path, shape in zip(paths, shapes):  # from the headers, before anything is decompressed or rendered
        if tuple(shape["observations"][1:]) != FRAME:
            raise UsageError(f"{path}: its frames are {tuple(shape['observations'][1:])}, the visual tasks need "
                             f"{FRAME} (64x64 RGB); {fix}")
    if shapes[0].get("stamp") != shapes[1].get("stamp"):
        raise UsageError(f"{paths[0]} and {paths[1]} come from different collections; {fix}")
    env = gym.make(env_name)
    frames, data = visual_arrays(paths[0], env_name, env, fix)
    env.close()
    steps = gym.spec(env_name).max_episode_steps

    def make_env():
        kw = {} if EVAL_MAX_STEPS is None else dict(max_episode_steps=EVAL_MAX_STEPS)
        return ogbench.make_env_and_datasets(env_id, env_only=True, **kw)

    return common.Task(env_id, VisualDataset(frames, data, device), None, make_env, max_episode_steps=steps)


class FrameStack(gym.Wrapper):
    """The official `FrameStackWrapper`: the last k frames on the channel axis, the first frame repeated at reset."""

    def __init__(self, env: gym.Env, k: int):
        super().__init__(env)
        self.k, self.frames = k, collections.deque(maxlen=k)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(np.concatenate([space.low] * k, -1),
                                                np.concatenate([space.high] * k, -1), dtype=space.dtype)

    def reset(self, **kwargs):
        ob, info = self.env.reset(**kwargs)
        self.frames.extend([ob] * self.k)
        return np.concatenate(self.frames, -1), info

    def step(self, action):
        ob, *rest = self.env.step(action)
        self.frames.append(ob)
        return (np.concatenate(self.frames, -1), *rest)


def configure(task, args) -> None:
    """Hands --frame-stack and --p-aug to a visual task's dataset and evaluation envs; nothing for other tasks."""
    if isinstance(task.train, VisualDataset):
        task.train.frame_stack, task.train.p_aug = args.frame_stack, args.p_aug
        if args.frame_stack > 1:
            make_env = task.make_env
            task.make_env = lambda: FrameStack(make_env(), args.frame_stack)


def check(args) -> None:
    """One-line refusals before any work (plumbing.setup calls it for every script)."""
    env_id = getattr(args, "env_id", "")
    visual = env_id.startswith("visual-")
    if visual and not hasattr(args, "encoder"):
        module = sys.modules.get(type(args).__module__)
        script = os.path.basename(getattr(module, "__file__", None) or type(args).__module__)
        raise UsageError(f"--env-id {env_id}: this script ({script}) has no pixel support (its official code has "
                         "none); pixels run with fql.py, deflow.py or driftql.py")
    if not hasattr(args, "encoder"):
        return
    if visual and args.encoder is None:
        raise UsageError(f"--env-id {env_id} has pixel observations: pass --encoder impala_small (the papers ran "
                         "--encoder impala_small --p-aug 0.5 --frame-stack 3)")
    if visual and getattr(args, "horizon", 1) > 1:
        raise UsageError(f"--horizon {args.horizon} on pixels: action chunks are not sampled from frame datasets here "
                         "(the papers' pixel runs use single actions); drop --horizon")
    if not visual and args.encoder is not None:
        raise UsageError(f"--encoder {args.encoder} reads pixels, and {env_id} has none: use a visual-* id or drop "
                         "--encoder")
    if visual and getattr(args, "online_steps", 0):
        raise UsageError(f"--online-steps {args.online_steps}: online fine-tuning is not supported on pixels "
                         "(the official main.py refuses it too); run offline (--online-steps 0)")
