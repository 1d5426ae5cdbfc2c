"""Regenerate OGBench datasets offline with OGBench's own scripted oracles.

Writes `<data-dir>/<name>.npz` and `<data-dir>/<name>-val.npz` in the official raw format (flat
concatenation of episodes: observations, actions, terminals, qpos, qvel[, button_states]) so that
`ogbench.make_env_and_datasets('<env>-<type>-singletask[-taskN]-v0', dataset_dir=<data-dir>)`
loads them without downloading anything.

Procedure (OGBench repo, `data_gen_scripts/generate_manipspace.py`, `generate_locomaze.py`,
sizes from `commands.sh`):
  * cube-{single,double,triple}, scene, puzzle-{3x3,4x4}: goal-conditioned env with
    `terminate_at_goal=False, mode='data_collection'`. `play`: open-loop plan oracles with
    temporally smoothed noise (noise 0.1, smoothing 0.5). `noisy`: closed-loop Markov oracles
    (min_norm 0.4) + Gaussian noise with per-episode xi ~ U(0, 0.1), std [xi,xi,xi,3xi,10xi], + a
    uniform random action with prob. 0.1 (puzzle 0.2). When the oracle finishes, the env samples a
    new target (`set_new_target`, per-episode stacking prob. p_stack). scene: episodes where the
    cube leaves the visible area are rejected and redone.
  * visual-<manipulation dataset>: the same procedure on OGBench's `visual-<env>-v0` env, whose observation is a
    64x64x3 frame rendered through MuJoCo (MUJOCO_GL, egl unless set), stored as uint8 as in the official files.
  * pointmaze-{medium,large,giant}: action = unit vector towards the env's BFS subgoal + N(0, 0.5^2).
    `navigate`: start in any free cell, goal in a random non-corridor cell, new goal on success.
    `stitch`: goal is a cell exactly 4 BFS steps from the start, 201-step episodes.
  * Every episode runs `max_episode_steps` steps (1001 -> 1000 transitions after loading);
    `num_episodes // 10` extra episodes (at least 1) go to the `-val` file.

Examples:
    python collect.py pointmaze-medium-navigate-v0            # official size, ~3 min (2 workers)
    python collect.py cube-single-play-v0                     # official size, ~20-25 min (2 workers)
    python collect.py cube-double-noisy-v0 --num-episodes 10 --data-dir /tmp/og
    python collect.py cube-single-play-v0 --p-random-action 0.3   # random-action corruption
    python collect.py visual-cube-single-play-v0              # 64x64 frames (MUJOCO_GL=egl), docs/visual.md
    python collect.py lift-ph-low_dim --num-episodes 20          # Robomimic Lift, scripted (collect_robomimic.py)

Deviations from the official scripts:
  * Seeding: the official scripts never seed. Here episode i seeds `np.random` (oracles, noise,
    p_stack, random actions, maze cells) and the env reset from (seed, i), so the output is
    deterministic and independent of `--workers`.
  * Random actions are drawn with `np.random.uniform(-1, 1)` instead of `env.action_space.sample()`
    (same distribution, but from the seeded RNG). pointmaze accepts `--p-random-action` too
    (officially always 0).
  * Both files carry a `stamp` (a hash of the settings) that loaders.ogbench_task compares, so a train file is
    never trained on beside a -val file from another collection; the pair is written to temp files and renamed together.
    Stopping the collection (Ctrl-C, SIGTERM) stops the workers and removes their temp files.
  * Different MuJoCo/NumPy versions and seeds: same distribution, not bit-identical to the
    downloadable files. Ant/humanoid/antsoccer datasets need trained SAC experts: not supported.
"""
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import tempfile
from collections import deque
from typing import Optional

import numpy as np
import tyro

MANIP_ENVS = ("cube-single", "cube-double", "cube-triple", "cube-quadruple", "scene", "puzzle-3x3", "puzzle-4x4")
MAZE_ENVS = ("pointmaze-medium", "pointmaze-large", "pointmaze-giant")
SUPPORTED = ("[visual-]{cube-single,cube-double,cube-triple,cube-quadruple,scene,puzzle-3x3,puzzle-4x4}-{play,noisy}-v0 "
             "and pointmaze-{medium,large,giant}-{navigate,stitch}-v0; lift-ph-low_dim (Robomimic, scripted)")
P_STACK = {"cube-single": 0.0, "cube-double": (0.0, 0.25), "cube-triple": (0.05, 0.35),
           "cube-quadruple": (0.1, 0.5)}  # per episode
DTYPES = dict(observations=np.float32, actions=np.float32, terminals=bool,
              qpos=np.float32, qvel=np.float32, button_states=np.int64)


@dataclasses.dataclass
class Args:
    dataset: tyro.conf.Positional[str]
    """Dataset to generate, e.g. cube-single-play-v0 or pointmaze-medium-navigate-v0."""
    num_episodes: Optional[int] = None
    """Training episodes. Official: 1000; cube-triple 3000, cube-quadruple 5000; pointmaze giant-navigate 500,
    stitch 5000."""
    num_val_episodes: Optional[int] = None
    """Validation episodes (the -val file). Official: num_episodes // 10; at least 1, so that training can load it."""
    max_episode_steps: Optional[int] = None
    """Steps per episode. Official: 1001; pointmaze giant-navigate 2001, stitch 201."""
    noise: Optional[float] = None
    """Action noise. Official: 0.1 manipulation (play: plan-oracle noise; noisy: max xi), 0.5 pointmaze."""
    p_random_action: Optional[float] = None
    """Prob. of a uniform random action in [-1,1]. Official: 0 play & pointmaze, 0.1 cube/scene noisy,
    0.2 puzzle noisy."""
    seed: int = 0
    """Base seed; episode i is seeded from (seed, i). (Official scripts: unseeded.)"""
    workers: int = min(2, os.cpu_count() or 1)
    """Worker processes (the output does not depend on it)."""
    data_dir: Optional[str] = None
    """Output folder. Default: loaders.ogbench_data_dir() ($OGBENCH_DATA_DIR or ~/.ogbench/data); Robomimic:
    loaders.robomimic_data_dir() ($ROBOMIMIC_DATA_DIR or ~/.robomimic)."""
    shards: Optional[int] = None
    """Write K shards instead of one file, into <data-dir>/<env>-<type>-<size>-v0/ as the official 100M folders
    (<name>-000.npz and <name>-000-val.npz, ...): the --dataset-dir of the training scripts. Shard k seeds episode i
    from (seed, k, i); a shard already written with these settings is kept (a stopped collection resumes)."""
    shard_episodes: Optional[int] = None
    """Training episodes per shard (official 100M folders: 1000); -val: a tenth, at least 1."""


# Allowed range of every numeric flag (interval notation), checked by plumbing.check_args before any work starts.
LIMITS = dict(num_episodes="[1, inf)", num_val_episodes="[1, inf)", max_episode_steps="[2, inf)", noise="[0, inf)",
              p_random_action="[0, 1]", seed="[0, inf)", workers="[1, inf)", shards="[1, inf)",
              shard_episodes="[1, inf)")


def make_config(args: Args) -> dict:
    """Check the flags and the dataset name and fill in the official defaults for every unset flag."""
    import common
    import plumbing

    plumbing.check_args(args, LIMITS)
    name = args.dataset
    stem, _, version = name.removeprefix("visual-").rpartition("-")  # visual-*: the same oracles, pixel frames
    env_base, _, kind = stem.rpartition("-")
    manip = env_base in MANIP_ENVS and kind in ("play", "noisy")
    maze = env_base in MAZE_ENVS and kind in ("navigate", "stitch") and not name.startswith("visual-")
    if version != "v0" or not (manip or maze):
        if name.startswith(("antmaze", "humanoidmaze", "antsoccer")):
            raise common.UsageError(f"{name}: ant/humanoid datasets need trained SAC experts; use the official "
                                    f"download (ogbench.download_datasets). Supported here: {SUPPORTED}")
        raise common.UsageError(f"unsupported dataset {name!r}; supported: {SUPPORTED}")
    if manip:
        n, steps, noise = {"cube-triple": 3000, "cube-quadruple": 5000}.get(env_base, 1000), 1001, 0.1
        p = 0.0 if kind == "play" else 0.2 if env_base.startswith("puzzle") else 0.1
    else:
        giant_nav = kind == "navigate" and env_base == "pointmaze-giant"
        n = 5000 if kind == "stitch" else 500 if giant_nav else 1000
        steps = 201 if kind == "stitch" else 2001 if giant_nav else 1001
        noise, p = 0.5, 0.0
    n = n if args.num_episodes is None else args.num_episodes
    n = n if args.shard_episodes is None else args.shard_episodes
    return dict(
        name=name, env_base=env_base, kind=kind, manip=manip, seed=args.seed, num_episodes=n,
        num_val_episodes=max(1, n // 10) if args.num_val_episodes is None else args.num_val_episodes,
        max_episode_steps=steps if args.max_episode_steps is None else args.max_episode_steps,
        noise=noise if args.noise is None else args.noise,
        p_random_action=p if args.p_random_action is None else args.p_random_action)


def make_env_and_oracles(cfg):
    if cfg["name"].startswith("visual-"):  # rendering needs a GL backend chosen before MuJoCo is imported
        os.environ.setdefault("MUJOCO_GL", "egl")
    import gymnasium
    import ogbench.locomaze  # noqa: F401  (registers the env ids)
    import ogbench.manipspace  # noqa: F401
    kw = dict(terminate_at_goal=False, max_episode_steps=cfg["max_episode_steps"])
    if not cfg["manip"]:
        return gymnasium.make(f"{cfg['env_base']}-v0", **kw), None
    from ogbench.manipspace.oracles.markov import button_markov, cube_markov, drawer_markov, window_markov
    from ogbench.manipspace.oracles.plan import button_plan, cube_plan, drawer_plan, window_plan
    visual = "visual-" if cfg["name"].startswith("visual-") else ""  # 64x64 frames rendered through MUJOCO_GL
    env = gymnasium.make(f"{visual}{cfg['env_base']}-v0", mode="data_collection", **kw)
    family = cfg["env_base"].split("-")[0]  # cube / scene / puzzle
    if cfg["kind"] == "play":
        o = dict(env=env, noise=cfg["noise"], noise_smoothing=0.5)
        cube, button = cube_plan.CubePlanOracle(**o), button_plan.ButtonPlanOracle(**o)
        drawer, window = drawer_plan.DrawerPlanOracle(**o), window_plan.WindowPlanOracle(**o)
        puzzle = button_plan.ButtonPlanOracle(gripper_always_closed=True, **o)
    else:
        o = dict(env=env, min_norm=0.4)
        cube = cube_markov.CubeMarkovOracle(max_step=100 if family == "scene" else 200, **o)
        button = button_markov.ButtonMarkovOracle(**o)
        puzzle = button_markov.ButtonMarkovOracle(gripper_always_closed=True, **o)
        drawer, window = drawer_markov.DrawerMarkovOracle(**o), window_markov.WindowMarkovOracle(**o)
    oracles = {"cube": dict(cube=cube), "scene": dict(cube=cube, button=button, drawer=drawer, window=window),
               "puzzle": dict(button=puzzle)}[family]
    return env, oracles


def to_arrays(rows):
    """Rows -> arrays in the official dtypes; pixel frames stay uint8 (one byte per pixel, as OGBench's files)."""
    pixels = np.asarray(rows[0]["observations"]).dtype == np.uint8
    return {k: np.asarray([r[k] for r in rows], dtype=np.uint8 if pixels and k == "observations" else DTYPES[k])
            for k in rows[0]}


def random_or(p, action_fn, dim):
    """With prob. p a uniform random action, else the oracle's; always clipped to [-1, 1]."""
    return np.clip(np.random.uniform(-1, 1, dim) if np.random.rand() < p else action_fn(), -1, 1)


def manip_episode(env, oracles, cfg, seed):
    """One episode (redone while scene's cube leaves the visible area); returns (arrays, #rejected)."""
    u, noisy, p = env.unwrapped, cfg["kind"] == "noisy", cfg["p_random_action"]
    has_buttons = hasattr(u, "_cur_button_states")
    for attempt in range(1000):
        ob, info = env.reset(seed=seed if attempt == 0 else None)  # redo: continue the seeded RNGs
        p_stack = P_STACK.get(cfg["env_base"], 0.5)  # prob. that a new cube target is on another cube
        p_stack = np.random.uniform(*p_stack) if isinstance(p_stack, tuple) else p_stack
        xi = np.random.uniform(0, cfg["noise"]) if noisy else 0.0
        oracle = oracles[info["privileged/target_task"]]
        oracle.reset(ob, info)

        def oracle_action():
            a = np.asarray(oracle.select_action(ob, info), dtype=np.float64)
            return a + np.random.normal(0, [xi, xi, xi, 3 * xi, 10 * xi], a.shape) if noisy else a

        rows, done = [], False
        while not done:
            action = random_or(p, oracle_action, 5)
            next_ob, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            if oracle.done:  # sub-task finished: the env picks a new target
                new_ob, new_info = u.set_new_target(p_stack=p_stack)
                oracle = oracles[new_info["privileged/target_task"]]
                oracle.reset(new_ob, new_info)
            rows.append(dict(observations=ob, actions=action, terminals=done, qpos=info["prev_qpos"],
                             qvel=info["prev_qvel"]))
            if has_buttons:
                rows[-1]["button_states"] = info["prev_button_states"]
            ob = next_ob
        ep = to_arrays(rows)
        if cfg["env_base"] != "scene":
            return ep, attempt
        y, z = ep["qpos"][:, 15], ep["qpos"][:, 16]  # cube xyz = qpos[14:17]; must stay visible unless in the drawer
        if not ((y >= 0.29).any() or ((y <= -0.3) & ((z < 0.06) | (z > 0.08))).any()):
            return ep, attempt
    raise RuntimeError("scene: 1000 rejected episodes in a row")


def maze_cells(maze_map):
    """Free cells, and 'vertex' cells = free cells that are not straight corridor pieces."""
    free = [(i, j) for i, j in zip(*np.nonzero(maze_map == 0))]
    m = maze_map
    corridor = lambda i, j: ((m[i - 1, j] == 0 and m[i + 1, j] == 0 and m[i, j - 1] == 1 and m[i, j + 1] == 1)
                             or (m[i, j - 1] == 0 and m[i, j + 1] == 0 and m[i - 1, j] == 1 and m[i + 1, j] == 1))
    return [(int(i), int(j)) for i, j in free], [(int(i), int(j)) for i, j in free if not corridor(i, j)]


def cells_at_distance(maze_map, start, dist):
    """Free cells exactly `dist` BFS steps (4-connected) from `start`, in BFS order."""
    seen, todo, found = {start: 0}, deque([start]), []
    while todo:
        i, j = todo.popleft()
        for c in ((i - 1, j), (i, j - 1), (i + 1, j), (i, j + 1)):
            inside = 0 <= c[0] < maze_map.shape[0] and 0 <= c[1] < maze_map.shape[1]
            if inside and maze_map[c] == 0 and c not in seen:
                seen[c] = seen[(i, j)] + 1
                todo.append(c)
                found += [c] if seen[c] == dist else []
    return found


def maze_episode(env, cells, cfg, seed):
    u, (free, vertex), p = env.unwrapped, cells, cfg["p_random_action"]
    init = free[np.random.randint(len(free))]
    if cfg["kind"] == "navigate":
        goal = vertex[np.random.randint(len(vertex))]
    else:
        ring = cells_at_distance(u.maze_map, init, 4)
        goal = ring[np.random.randint(len(ring))] if ring else init
    ob, info = env.reset(seed=seed, options=dict(task_info=dict(init_ij=init, goal_ij=goal)))

    def oracle_action():
        direction = u.get_oracle_subgoal(u.get_xy(), u.cur_goal_xy)[0] - u.get_xy()
        return direction / (np.linalg.norm(direction) + 1e-6) + np.random.normal(0, cfg["noise"], 2)

    rows, done = [], False
    while not done:
        action = random_or(p, oracle_action, 2)
        next_ob, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        if info["success"] and cfg["kind"] == "navigate":
            u.set_goal(vertex[np.random.randint(len(vertex))])
        rows.append(dict(observations=ob, actions=action, terminals=done, qpos=info["prev_qpos"],
                         qvel=info["prev_qvel"]))
        ob = next_ob
    return to_arrays(rows), 0


def collect_range(cfg, start, stop, tick):
    """Episodes start..stop-1, each seeded from (seed, episode index); returns concatenated arrays."""
    env, oracles = make_env_and_oracles(cfg)
    aux = oracles if cfg["manip"] else maze_cells(env.unwrapped.maze_map)
    run = manip_episode if cfg["manip"] else maze_episode
    episodes = []
    for idx in range(start, stop):
        key = [cfg["seed"], idx] if "shard" not in cfg else [cfg["seed"], cfg["shard"], idx]
        seed = int(np.random.SeedSequence(key).generate_state(1)[0])
        np.random.seed(seed)
        env.action_space.seed(seed)
        ep, rejected = run(env, aux, cfg, seed)
        episodes.append(ep)
        tick(rejected)
    env.close()
    return {k: np.concatenate([ep[k] for ep in episodes]) for k in episodes[0]}


def worker(cfg, start, stop, out_path, q, parent):
    """Ctrl-C reaches the whole process group: only the parent handles it (it stops the workers). A worker whose
    parent died anyway (SIGKILL) stops at its next episode instead of running on as an orphan."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # held back during our start-up

    def tick(n_rejected):
        if os.getppid() != parent:
            os._exit(1)
        q.put(n_rejected)

    np.savez(out_path, **collect_range(cfg, start, stop, tick))
    q.put(None)


def run_workers(cfg, total, n_workers, tmp, tick):
    ctx, chunks = mp.get_context("spawn"), np.array_split(np.arange(total), n_workers)
    q, paths = ctx.Queue(), [os.path.join(tmp, f"chunk{k}.npz") for k in range(n_workers)]
    procs = [ctx.Process(target=worker, args=(cfg, int(c[0]), int(c[-1]) + 1, path, q, os.getpid()), daemon=True)
             for c, path in zip(chunks, paths)]
    finished = 0
    try:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:  # a stop during the start-up waits until every worker is tracked, so that `finally` stops them all
            for proc in procs:
                proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        while finished < n_workers:
            try:
                msg = q.get(timeout=1.0)
            except queue.Empty:
                if any(proc.exitcode not in (None, 0) for proc in procs):
                    raise RuntimeError("a collection worker crashed (see its traceback above)")
                continue
            if msg is None:
                finished += 1
            else:
                tick(msg)
        for proc in procs:
            proc.join()
    finally:  # also on Ctrl-C or SIGTERM (plumbing.cli turns it into KeyboardInterrupt): no worker outlives the parent
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return [dict(np.load(path)) for path in paths]


def main(args: Args) -> dict:
    """Generate the dataset; returns {'train': path, 'val': path} (Robomimic: {'train': path})."""
    import loaders
    if loaders.ROBOMIMIC_ID.match(args.dataset):  # a small scripted Robomimic file: collect_robomimic.py
        import collect_robomimic
        import plumbing
        plumbing.check_args(args, LIMITS)
        return {"train": collect_robomimic.collect(args)}
    cfg = make_config(args)
    if args.shard_episodes is not None and args.shards is None:
        raise loaders.UsageError("--shard-episodes sets the episodes of each shard: pass --shards K as well, or use "
                                 "--num-episodes for one file")
    data_dir = os.path.expanduser(args.data_dir or loaders.ogbench_data_dir())
    if args.shards:
        return collect_shards(cfg, args, data_dir)
    os.makedirs(data_dir, exist_ok=True)
    paths = {s: os.path.join(data_dir, cfg["name"] + ("-val" if s == "val" else "") + ".npz") for s in ("train", "val")}
    return write_pair(cfg, paths, args.workers, data_dir)


def stamp_of(cfg: dict) -> np.ndarray:
    """The id of a pair of files: a hash of its settings."""
    return np.asarray(hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16])


def collect_shards(cfg: dict, args: Args, data_dir: str) -> dict:
    """K shards in the official 100M layout: <name-without-v0>-<size>-v0/<name>-<k>.npz and its -val file, shard k
    seeded from (seed, k); a shard whose files already carry this stamp is kept. Returns {'dir': folder, 'train':
    [paths]}."""
    steps = cfg["num_episodes"] * args.shards * (cfg["max_episode_steps"] - 1)
    size = next((f"{steps // u}{t}" for u, t in ((10 ** 9, "b"), (10 ** 6, "m"), (10 ** 3, "k")) if steps % u == 0
                 and steps >= u), str(steps))
    folder = os.path.join(data_dir, f"{cfg['name'][:-3]}-{size}-v0")
    os.makedirs(folder, exist_ok=True)
    width, train = max(3, len(str(args.shards - 1))), []
    for k in range(args.shards):
        shard = dict(cfg, shard=k)
        paths = {s: os.path.join(folder, f"{cfg['name']}-{k:0{width}d}" + ("-val" if s == "val" else "") + ".npz")
                 for s in ("train", "val")}
        train.append(paths["train"])
        try:
            done = all(str(np.load(p)["stamp"]) == str(stamp_of(shard)) for p in paths.values())
        except (OSError, KeyError, ValueError, EOFError):  # missing, foreign or damaged: write it (again)
            done = False
        if done:
            print(f"{paths['train']}: already written with these settings, kept")
            continue
        write_pair(shard, paths, args.workers, folder)
    print(f"{folder}: {args.shards} shards; train on it with --dataset-dir {folder}")
    return {"dir": folder, "train": train}


def write_pair(cfg: dict, paths: dict, workers: int, data_dir: str) -> dict:
    """Collects the episodes of one train/-val pair and writes both files (replaced together or not at all)."""
    from tqdm import tqdm
    n, total = cfg["num_episodes"], cfg["num_episodes"] + cfg["num_val_episodes"]
    stamp = stamp_of(cfg)  # the pair's id
    n_workers = max(1, min(workers, total))
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".collect-") as tmp:
        # a bar on a terminal; in a log a plain line every 10 % instead of carriage-return updates
        with tqdm(total=total, desc=cfg["name"], unit="ep", disable=not sys.stderr.isatty()) as bar:
            def tick(n_rejected):
                rejected.append(n_rejected)
                bar.update(1)
                if bar.disable and len(rejected) % max(1, total // 10) == 0:
                    print(f"{cfg['name']}: {len(rejected)}/{total} episodes", flush=True)

            rejected = []
            if n_workers == 1:  # in-process; leave the caller's global RNG as it was
                state = np.random.get_state()
                try:
                    parts = [collect_range(cfg, 0, total, tick)]
                finally:
                    np.random.set_state(state)
            else:
                parts = run_workers(cfg, total, n_workers, tmp, tick)
        data = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
        n_train = int(np.flatnonzero(data["terminals"])[n - 1]) + 1  # rows of the first n episodes
        splits = {s: {k: v[:n_train] if s == "train" else v[n_train:] for k, v in data.items()} for s in paths}
        for split in paths:  # both to temp files first: a stop while writing leaves the old pair as it was
            with open(os.path.join(tmp, f"{split}.npz"), "wb") as f:
                np.savez_compressed(f, stamp=stamp, **splits[split])
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:  # then the two renames with Ctrl-C and SIGTERM held back: the pair is replaced together or not at all
            for split in paths:
                os.replace(os.path.join(tmp, f"{split}.npz"), paths[split])
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    for split in ("train", "val"):
        rows, eps = len(splits[split]["terminals"]), int(splits[split]["terminals"].sum())
        print(f"{paths[split]}: {eps} episodes, {rows} steps -> {rows - eps} transitions after loading")
    if sum(rejected):
        print(f"scene: {sum(rejected)} unhealthy episodes were redone")
    return paths


if __name__ == "__main__":
    import plumbing

    plumbing.cli(main, Args)
