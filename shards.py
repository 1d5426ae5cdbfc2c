"""Sharded OGBench datasets: the 100M-transition folders of Park et al. 2025 ("Horizon Reduction Makes RL Scalable",
README "Using large datasets"; 100 files of 1,000 episodes each) and the folders `collect.py --shards` writes.

A method reader needs one fact: with --dataset-dir DIR, gradient step s trains on shard (s // N) mod K of the sorted
`*.npz` files of DIR without the `-val.npz` ones, where N = --dataset-replace-interval and K = the number of files
--dataset-proportion keeps (the first max(1, int(K * p)) of them), as the official main.py of ColinQiyangLi/qam and
KAIST-Visual-AI-Group/DFP. Each shard is relabelled for the --env-id's task as the default file is, and `common.Dataset`
sees one shard at a time. Online, QAM's loop copies the shard of the step over the replay's first rows (DFP's keeps
the last offline shard). The difference from the official loop is speed only: the next shard is read on a thread while
the current one trains, so a swap is a pointer change. `UniformShards` (--dataset-sampling uniform) is an extension:
every batch is drawn from all shards at once through memory-mapped, uncompressed copies in DIR/.uniform-cache.
"""
import glob
import json
import os
import sys
import threading
import zipfile
import zlib

import gymnasium as gym
import numpy as np
import torch

from loaders import ACTION_CLIP, KEYS, UsageError, finite, npz_shapes

FIX = "rebuild the folder with `python collect.py <dataset> --shards K --shard-episodes M` or download it again"
READ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)


def shard_paths(dataset_dir: str, proportion: float) -> list:
    """The sorted training shards of a folder (every `*.npz` but `*-val.npz`), the first max(1, int(K * p)) kept."""
    if not os.path.isdir(dataset_dir):
        raise UsageError(f"--dataset-dir {dataset_dir}: no such folder; pass a folder of OGBench .npz shards ({FIX})")
    paths = [p for p in sorted(glob.glob(os.path.join(dataset_dir, "*.npz"))) if not p.endswith("-val.npz")]
    if not paths:
        raise UsageError(f"--dataset-dir {dataset_dir} holds no .npz shards (only -val files or none); {FIX}")
    return paths[:max(1, int(len(paths) * proportion))]


def env_name_of(env_id: str) -> str:
    """The single-task env of an OGBench id: the dataset type removed ('cube-quadruple-singletask-task2-v0')."""
    splits = env_id.split("-")
    pos = splits.index("singletask")
    return "-".join(splits[:pos - 1] + splits[pos:])


def make_env(env_id: str):
    """The id's single-task env (what ogbench.make_env_and_datasets(env_only=True) makes)."""
    import ogbench  # noqa: F401  (registers the envs)

    return gym.make(env_name_of(env_id))


def check_shards(env_id: str, paths: list) -> list:
    """Reads the headers of every shard (nothing is decompressed): each must be a readable archive whose observation
    and action shapes are the task's. Returns the raw row counts."""
    probe = make_env(env_id)
    want = {"observations": probe.observation_space.shape, "actions": probe.action_space.shape}
    probe.close()
    rows = []
    for path in paths:
        shape = npz_shapes(path, FIX)
        got = {k: tuple(shape[k][1:]) for k in want}
        if got != want:
            raise UsageError(f"shard {path} has observations {got['observations']} and actions {got['actions']}, but "
                             f"{env_id} (and {os.path.basename(paths[0])}) have {want['observations']} and "
                             f"{want['actions']}: the folder mixes datasets; keep the shards of one dataset only")
        rows.append(shape["terminals"][0])
    return rows


def load_shard(path: str, env_id: str, env) -> dict:
    """One shard as KEYS arrays in the protocol's form: loaded and relabelled for the task as ogbench's own loader does
    (`ogbench.utils.load_dataset`, `relabel_utils.relabel_dataset`), actions clipped to +-(1 - 1e-5)."""
    from ogbench.relabel_utils import relabel_dataset
    from ogbench.utils import load_dataset

    try:
        data = load_dataset(path, add_info=True)
        relabel_dataset(env_name_of(env_id), env, data)
    except READ_ERRORS as e:
        raise UsageError(f"shard {path} cannot be read ({type(e).__name__}: truncated or damaged); {FIX}") from None
    out = {k: np.asarray(data[k], dtype=np.float32) for k in KEYS}
    out["actions"] = np.clip(out["actions"], -ACTION_CLIP, ACTION_CLIP)
    finite(out, f"shard {path}", FIX)
    return out


class Shards:
    """The official rotation: `at(step, offline_steps, online)` returns the dataset of a step. The shard after the
    current one is read on a thread as soon as the current one is in use (`prefetch=False`: read at the swap, as the
    official code); the host holds at most the shard in use and the one being read. On CUDA the next shard is copied
    to the device on a side stream, so the swap waits for nothing."""

    def __init__(self, env_id: str, paths: list, interval: int, device: torch.device, make_dataset, prefetch=True):
        self.env_id, self.paths, self.interval, self.device = env_id, paths, interval, device
        self.rows = check_shards(env_id, paths)  # raw rows of each shard, from the headers
        self.make_dataset, self.prefetch = make_dataset, prefetch
        self.reward_fn = None  # applied to every shard's rewards (QAM's --sparse), see common.relabel_rewards
        self.online_rotation = True  # QAM: the rotation goes on online; DFP's official loop stops it
        self.index, self.current, self.pending, self.replay_index = None, None, None, None
        self.env, self.env_lock = make_env(env_id), threading.Lock()  # the loader's own env, for the relabelling
        self.swaps = []  # (step, shard index) of every swap, for the logs and the tests

    def index_at(self, step: int, offline_steps: int) -> int:
        """Shard of a step: (s // N) mod K offline; online the official counter restarts at the online step j."""
        online = max(step - offline_steps, 0) // self.interval if self.online_rotation else 0
        return (min(step, offline_steps) // self.interval + online) % len(self.paths)

    def build(self, i: int):
        """Reads shard i into a Dataset on the device (the loader thread calls this too)."""
        with self.env_lock:  # one MuJoCo env is never stepped by two threads
            data = load_shard(self.paths[i], self.env_id, self.env)
        if self.device.type != "cuda":
            return self._finish(self.make_dataset(data, self.device))
        stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(stream):
            ds = self._finish(self.make_dataset(data, self.device))
        stream.synchronize()
        return ds

    def _finish(self, ds):
        if self.reward_fn is not None:
            ds.rewards.copy_(self.reward_fn(ds.rewards))
        return ds

    def start(self, i: int) -> None:
        """Begins reading shard i on a thread."""
        box = {}

        def work():
            try:
                box["data"] = self.build(i)
            except BaseException as e:  # noqa: BLE001 (handed to the training thread at the swap)
                box["error"] = e
        thread = threading.Thread(target=work, name=f"shard-{i}", daemon=True)
        thread.start()
        self.pending = (i, thread, box)

    def take(self, i: int):
        """Shard i: the prefetched one when it is i (waiting for its thread if it is still reading), else read now."""
        if self.pending is not None:
            j, thread, box = self.pending
            thread.join()
            self.pending = None
            if j == i:
                if "error" in box:
                    raise box["error"]
                return box["data"]
        return self.build(i)

    def at(self, step: int, offline_steps: int, online=None):
        i = self.index_at(step, offline_steps)
        if i != self.index:
            self.current, self.index = None, None  # the old shard goes before the next one is read
            self.current, self.index = self.take(i), i
            if self.device.type == "cuda":  # read on the side stream, used on this one: keep it until done here
                for k in KEYS:
                    getattr(self.current, k).record_stream(torch.cuda.current_stream(self.device))
            self.swaps.append((step, i))
        if self.prefetch and self.pending is None and len(self.paths) > 1:  # read the next one while this one trains
            self.start((i + 1) % len(self.paths))
        if online is None or step <= offline_steps:
            return self.current
        if self.replay_index != i:  # the official online loop: the shard overwrites the replay's offline rows
            n = online.offline_size
            if self.current.size != n:
                raise UsageError(f"shard {self.paths[i]} holds {self.current.size} transitions but the replay's "
                                 f"offline part has {n}: online fine-tuning needs shards of one size; {FIX}")
            for k in KEYS:
                getattr(online.data, k)[:n] = getattr(self.current, k)[:n]
            self.replay_index = i
        return online.data

    def state(self) -> dict:
        """What a checkpoint records: the shard files in rotation order and the shard in use."""
        return {"files": [os.path.basename(p) for p in self.paths], "index": self.index}


# ---------------------------------------------------------------------------------------------------- uniform mode
CACHED = ("observations", "actions", "next_observations", "terminals")  # task-independent; rewards, masks per task


def cache_files(path: str, env_id: str) -> dict:
    """Where the uncompressed copy of a shard lives: DIR/.uniform-cache/<shard>.<key>.npy (rewards and masks per
    task), beside a <shard>.json that records the source's size and mtime."""
    root, stem = os.path.join(os.path.dirname(path), ".uniform-cache"), os.path.basename(path)[:-4]
    task = env_name_of(env_id)
    files = {k: os.path.join(root, f"{stem}.{k}.npy") for k in CACHED}
    files.update({k: os.path.join(root, f"{stem}.{task}.{k}.npy") for k in ("rewards", "masks")})
    return dict(files, source=os.path.join(root, f"{stem}.json"))


def convert(path: str, env_id: str, env) -> dict:
    """Writes the uncompressed copy of one shard once (each file to a temp name, then renamed); returns its files."""
    files = cache_files(path, env_id)
    stat = os.stat(path)
    source = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    fresh = os.path.exists(files["source"]) and json.load(open(files["source"])) == source
    if fresh and all(os.path.exists(files[k]) for k in KEYS):
        return files
    data = load_shard(path, env_id, env)
    try:
        os.makedirs(os.path.dirname(files["source"]), exist_ok=True)
        for k in KEYS:
            if fresh and os.path.exists(files[k]):
                continue
            with open(files[k] + ".tmp", "wb") as f:
                np.save(f, data[k])
            os.replace(files[k] + ".tmp", files[k])
        with open(files["source"] + ".tmp", "w") as f:
            json.dump(source, f)
        os.replace(files["source"] + ".tmp", files["source"])
    except OSError as e:
        raise UsageError(f"--dataset-sampling uniform cannot write its cache beside {path} ({e.strerror}): make the "
                         "folder writable with room for an uncompressed copy, or use the default rotation") from None
    return files


class UniformShards:
    """--dataset-sampling uniform: batches drawn uniformly from the transitions of all shards (a shard is picked with
    probability proportional to its size), gathered from memory maps of the uncompressed cache, so host memory does not
    grow with the number of shards. Indices come from torch's CPU generator (resumable). Every other attribute (the
    shapes, the device, check_horizon's terminals) is the first shard's, held on the device as `first`."""

    def __init__(self, env_id: str, paths: list, first, make_dataset):
        from tqdm import tqdm

        env = make_env(env_id)
        self.maps, self.reward_fn, self.make_dataset = [], None, make_dataset
        for path in tqdm(paths, desc="uniform cache", unit="shard", file=sys.stdout):
            files = convert(path, env_id, env)
            self.maps.append({k: np.load(files[k], mmap_mode="r") for k in KEYS})
        env.close()
        self.first, self.paths = first, paths
        self.sizes = np.array([len(m["masks"]) for m in self.maps])
        self.size = int(self.sizes.sum())

    def __getattr__(self, name):  # only called for names not set above
        if name == "first":
            raise AttributeError(name)
        return getattr(self.first, name)

    def gather(self, starts: torch.Tensor, width: int) -> tuple:
        """Rows [start, start + width) of the whole collection (starts index the shards' concatenation and never make
        a window cross a shard end); returns ({key: [B * width, ...] tensor on the device}, shard of each window)."""
        ends = np.cumsum(self.sizes)
        g = starts.numpy()
        shard = np.searchsorted(ends, g, side="right")
        local = g - (ends - self.sizes)[shard]
        out = {k: np.empty((len(g), width) + self.maps[0][k].shape[1:], np.float32) for k in KEYS}
        for s in np.unique(shard):
            sel = shard == s
            rows = local[sel][:, None] + np.arange(width)
            for k in KEYS:
                out[k][sel] = self.maps[s][k][rows.ravel()].reshape(rows.shape + out[k].shape[2:])
        data = {k: v.reshape((-1,) + v.shape[2:]) for k, v in out.items()}
        ds = self.make_dataset(data, self.first.observations.device)
        if self.reward_fn is not None:
            ds.rewards.copy_(self.reward_fn(ds.rewards))
        return ds, shard

    def sample(self, batch_size: int) -> dict:
        ds, _ = self.gather(torch.randint(self.size, (batch_size,)), 1)
        return {k: getattr(ds, k) for k in KEYS}

    def sample_chunks(self, batch_size: int, horizon: int, discount: float) -> dict:
        """As Dataset.sample_chunks, the start uniform over every window of h rows that lies inside one shard."""
        valid = np.maximum(self.sizes - horizon + 1, 0)
        g = torch.randint(int(valid.sum()), (batch_size,)).numpy()
        shard = np.searchsorted(np.cumsum(valid), g, side="right")
        starts = g - (np.cumsum(valid) - valid)[shard] + (np.cumsum(self.sizes) - self.sizes)[shard]
        ds, _ = self.gather(torch.as_tensor(starts), horizon)
        return ds.chunks_at(torch.arange(batch_size, device=ds.observations.device) * horizon, horizon, discount)
