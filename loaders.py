"""Dataset loaders behind `common.load_task`: OGBench single-task files and Minari datasets (with the D4RL names
the papers use). Each returns the parts of a `common.Task` with its transitions as numpy arrays, already in the
protocol's form: dataset actions clipped to +-(1 - 1e-5), `masks` = 0 only where the value must not bootstrap,
`terminals` = 1 at each episode end. `UsageError`, the one-line error of every script, is defined here, at the
bottom of the house.

A method reader needs only that contract. This file follows the official FQL code (seohongpark/fql,
`envs/env_utils.py`, `envs/ogbench_utils.py`) and OGBench (`ogbench/utils.py`); the Minari side reproduces the D4RL
processing FQL applies (the README's "Data protocol" lists where Minari differs from D4RL). New loaders (Robomimic,
pixels) go here, each a function `<name>_task(env_id) -> dict`; folders of OGBench shards (--dataset-dir) are in
shards.py. `robomimic_task` follows KAIST-Visual-AI-Group/DFP `envs/robomimic_utils.py` (the same file as
ColinQiyangLi/qc's, plus robosuite 1.5's controller conversion) and the reward shift of its `main.py`.
"""
import difflib
import json
import os
import re
import zipfile
import zlib

import gymnasium as gym
import numpy as np
ACTION_CLIP = 1 - 1e-5  # dataset actions are clipped to +-(1 - 1e-5), as in FQL's env_utils
KEYS = ("observations", "actions", "rewards", "next_observations", "masks", "terminals")  # a transition's arrays


class UsageError(ValueError):
    """An expected failure (a flag out of range, a missing or unreadable file, an unknown id): the message names the
    flag, file or id and the fix; `plumbing.cli` prints it as one line."""


REGENERABLE = re.compile(r"^(cube-(single|double|triple|quadruple)|scene|puzzle-(3x3|4x4))-(play|noisy)-v0$|"
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
FAMILIES = ("OGBench '<env>-<dataset>-singletask[-taskN]-v0', Minari 'D4RL/...' or 'mujoco/...', "
            "Robomimic '<task>-<mh|ph|mg>-low_dim', "
            f"a D4RL alias ({', '.join(list(D4RL_ALIASES)[:3])}, ...), or 'bandit-4gaussian[-rot1|2|3]'")



def ogbench_task(env_id: str) -> dict:
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
    finite(train, paths[0], fix)
    finite(val, paths[1], fix)
    return dict(train=train, val=val, make_env=make_env, max_episode_steps=steps)


def finite(data: dict, source: str, fix: str) -> None:
    """Refuses data with NaN or inf in any array, naming the array and its first bad row: a damaged file would
    otherwise surface later as a NaN loss."""
    for k in KEYS:
        bad = ~np.isfinite(np.asarray(data[k], dtype=np.float32))
        if bad.any():
            row = int(np.nonzero(bad.reshape(len(bad), -1).any(1))[0][0])
            raise UsageError(f"{source}: its array {k} holds NaN or inf (first at row {row}); {fix}")


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


def minari_task(dataset_id: str) -> dict:
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
    cols = {k: [] for k in KEYS}
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
        for k, v in zip(KEYS, (obs[:T], ep.actions, rewards, obs[1:T + 1], masks, ends)):
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
    finite(data, f"Minari dataset {dataset_id}", "download it again (`minari download`)")
    return dict(train=data, make_env=make_env, score=score, max_episode_steps=steps,
                online_reward_shift=-1.0 if antmaze else 0.0)


# Robomimic low-dim datasets (robomimic v0.1 datasets re-released for robosuite 1.5, files *_v15.hdf5): the episode
# limit of each task (DFP/QC `_get_max_episode_length`), the dataset types released for it, and the observation keys
# the official loader concatenates, in order.
ROBOMIMIC_STEPS = {"lift": 300, "can": 300, "square": 400, "transport": 800, "tool_hang": 1000}
ROBOMIMIC_TYPES = {"ph": tuple(ROBOMIMIC_STEPS), "mh": ("lift", "can", "square", "transport"), "mg": ("lift", "can")}
ROBOMIMIC_OBS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
ROBOMIMIC_ID = re.compile(r"^([a-z_]+)-([a-z]+)-low_dim$")
ROBOMIMIC_URL = "https://huggingface.co/datasets/amandlek/robomimic/resolve/main/v1.5"


def robomimic_data_dir() -> str:
    """Folder that holds `<task>/<type>/low_dim_v15.hdf5`: $ROBOMIMIC_DATA_DIR, else robomimic's ~/.robomimic."""
    return os.path.expanduser(os.environ.get("ROBOMIMIC_DATA_DIR", "~/.robomimic"))


def robomimic_path(env_id: str) -> str:
    """The file of '<task>-<type>-low_dim' (type mg: the sparse-reward file); an unknown task or type lists the ids."""
    m = ROBOMIMIC_ID.match(env_id)
    task, kind = m.groups() if m else ("", "")
    if task not in ROBOMIMIC_TYPES.get(kind, ()):
        valid = [f"{t}-{k}-low_dim" for k, ts in ROBOMIMIC_TYPES.items() for t in ts]
        raise UsageError(f"--env-id {env_id}: no such Robomimic task and dataset type; valid ids: {', '.join(valid)}")
    name = "low_dim_sparse_v15.hdf5" if kind == "mg" else "low_dim_v15.hdf5"
    return os.path.join(robomimic_data_dir(), task, kind, name)


def robomimic_task(env_id: str) -> dict:
    import h5py

    path = robomimic_path(env_id)
    task, kind = env_id.split("-")[:2]
    if not os.path.exists(path):
        raise UsageError(f"Robomimic dataset {path} is missing; download it with `wget -P {os.path.dirname(path)} "
                         f"{ROBOMIMIC_URL}/{task}/{kind}/{os.path.basename(path)}` (or robomimic's "
                         "scripts/download_datasets.py, docs/robomimic.md); `python collect.py lift-ph-low_dim` "
                         "writes a small scripted Lift file there instead")
    fix = "download it again (docs/robomimic.md)"
    cols = {k: [] for k in KEYS}
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f or "env_args" not in f["data"].attrs:
                raise UsageError(f"{path} has no data/env_args (the environment metadata): it is not a robomimic "
                                 f"dataset; {fix}")
            env_meta = json.loads(f["data"].attrs["env_args"])
            demos = sorted(f["data"], key=lambda d: int(d.split("_")[-1]))  # demo_0, demo_1, ... by number
            for d in demos:
                g = f["data"][d]
                need = [f"{o}/{k}" for o in ("obs", "next_obs") for k in ROBOMIMIC_OBS] + ["actions", "rewards",
                                                                                             "dones"]
                lacking = [k for k in need if k not in g]
                if lacking:
                    raise UsageError(f"{path}: data/{d} has no {lacking[0]} (a low-dim file holds obs and next_obs "
                                     f"{', '.join(ROBOMIMIC_OBS)}, actions, rewards, dones); {fix}")
                obs, next_obs = (np.concatenate([g[o][k][()] for k in ROBOMIMIC_OBS], -1) for o in ("obs", "next_obs"))
                done = g["dones"][()].astype(np.float32)
                ends = done.copy()
                ends[-1] = 1.0  # the released files (done_mode 2) have it already
                rows = (obs, g["actions"][()], g["rewards"][()] - 1.0, next_obs, 1.0 - done, ends)  # main.py: r - 1
                for k, v in zip(KEYS, rows):
                    cols[k].append(np.asarray(v, dtype=np.float32))
    except (OSError, KeyError, ValueError) as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"{path} cannot be read ({type(e).__name__}: {e}); {fix}") from None
    if not demos:
        raise UsageError(f"{path} holds no demonstrations; {fix}")
    data = {k: np.concatenate(v) for k, v in cols.items()}
    data["actions"] = np.clip(data["actions"], -ACTION_CLIP, ACTION_CLIP)
    finite(data, path, fix)
    steps = ROBOMIMIC_STEPS[task]
    return dict(train=data, make_env=lambda: RobomimicEnv(env_meta, steps), max_episode_steps=steps,
                online_reward_shift=-1.0)


class RobomimicEnv(gym.Env):
    """The official RobomimicLowdimWrapper over the env that robomimic's `EnvUtils.create_env_from_metadata` builds:
    robosuite.make(env_name, **env_kwargs) with rendering and cameras off, object observations on and `ignore_done`
    (robosuite never ends an episode). The observation is the concatenation of ROBOMIMIC_OBS; a positive (sparse)
    reward is success and ends the episode; `max_steps` truncates it. `reset(seed=s)` seeds this env's stream of initial
    placements (the official wrapper seeds numpy's global generator once, at construction)."""

    def __init__(self, env_meta: dict, max_steps: int):
        import robosuite
        from robosuite.controllers.composite.composite_controller_factory import \
            refactor_composite_controller_config

        kwargs = dict(env_meta["env_kwargs"])
        if "controller_configs" in kwargs:  # robosuite <= 1.4 controller format -> 1.5 composite (as DFP does)
            kwargs["controller_configs"] = refactor_composite_controller_config(
                kwargs["controller_configs"], robot_type="Panda", arms=["right"])
        kwargs.update(has_renderer=False, has_offscreen_renderer=False, ignore_done=True, use_object_obs=True,
                      use_camera_obs=False, camera_depths=False)
        outer = np.random.get_state()  # building places the objects once too: numpy's generator is given back
        try:
            self.env = robosuite.make(env_meta["env_name"], **kwargs)
        finally:
            np.random.set_state(outer)
        self.max_steps, self.t, self.placement = max_steps, 0, None
        self.action_space = gym.spaces.Box(-1.0, 1.0, self.env.action_spec[0].shape, np.float64)
        dim = len(self._obs(self.env._get_observations(force_update=True)))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float64)

    @staticmethod
    def _obs(raw: dict) -> np.ndarray:
        return np.concatenate([raw["object-state" if k == "object" else k] for k in ROBOMIMIC_OBS])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None or self.placement is None:  # official: np.random.seed(seed), once per env
            self.placement = np.random.RandomState(seed).get_state()
        outer = np.random.get_state()  # robosuite places objects with numpy's global generator: lend it this env's
        np.random.set_state(self.placement)
        try:
            raw = self.env.reset()
        finally:
            self.placement = np.random.get_state()
            np.random.set_state(outer)
        self.t = 0
        return self._obs(raw), {}

    def step(self, action):
        raw, reward, _, info = self.env.step(action)
        self.t += 1
        success = reward > 0
        info = {**info, "success": float(success)}
        return self._obs(raw), float(reward), bool(success), bool(not success and self.t >= self.max_steps), info

    def close(self):
        self.env.close()
