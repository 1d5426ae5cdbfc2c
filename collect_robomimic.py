"""A small Robomimic low-dim dataset for tests and for users without the download, called by `collect.py` for the
ids '<task>-<type>-low_dim' (`python collect.py lift-ph-low_dim --num-episodes 20`).

It runs robosuite's Lift (Panda arm, OSC_POSE control at 20 Hz, sparse reward: the environment of the released files)
with a scripted grasp: move above the cube, descend, close the gripper, lift; Gaussian noise of std `--noise` on the
six arm dimensions. It writes the file in robomimic's hdf5 layout (robomimic `scripts/dataset_states_to_obs.py`,
docs "Dataset Structure"): `data` with attributes `total` and `env_args` (the environment metadata json:
env_name, env_version, type 1 = robosuite, env_kwargs), and per episode `data/demo_<k>` with attributes
`num_samples` and `model_file`, datasets `states`, `actions`, `rewards`, `dones`, and the groups `obs` and `next_obs`
holding `object` and every `robot0_*` observation, as robomimic's EnvRobosuite returns them. `dones` follow the
released files (done_mode 2): 1 where the next state is a success and at the last step. `mask/train` and
`mask/valid` hold a 90/10 split of the demo names. The controller is stored in robosuite's pre-1.5 form, as in the
robomimic v0.1 files, so the loader's conversion to robosuite 1.5's composite controllers runs on it.

Only Lift has a script; the other tasks need the download (docs/robomimic.md). The episodes are scripted, not human:
the file tests the loading path and gives a short run something to learn, it does not stand in for the MH/PH data.
"""
import json
import os
import tempfile

import numpy as np

# The OSC_POSE part controller of robomimic's v0.1 datasets (robosuite <= 1.4 format).
OSC_POSE = dict(type="OSC_POSE", input_max=1, input_min=-1, output_max=[0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
                output_min=[-0.05, -0.05, -0.05, -0.5, -0.5, -0.5], kp=150, damping=1, impedance_mode="fixed",
                kp_limits=[0, 300], damping_limits=[0, 10], position_limits=None, orientation_limits=None,
                uncouple_pos_ori=True, control_delta=True, interpolation=None, ramp_ratio=0.2)
ENV_KWARGS = dict(has_renderer=False, has_offscreen_renderer=False, ignore_done=True, use_object_obs=True,
                  use_camera_obs=False, control_freq=20, controller_configs=OSC_POSE, robots=["Panda"],
                  camera_depths=False, camera_heights=84, camera_widths=84, reward_shaping=False)


def scripted_action(raw: dict, phase: dict, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Grasp-and-lift from the cube's and the hand's positions; `phase` carries the stage and a step counter."""
    eef, cube = raw["robot0_eef_pos"], raw["cube_pos"]
    stage = phase["stage"]
    if stage == 0 and np.linalg.norm(eef[:2] - cube[:2]) < 0.01:
        stage = 1
    if stage == 1 and abs(eef[2] - cube[2]) < 0.01:
        stage, phase["wait"] = 2, 0
    if stage == 2:
        phase["wait"] += 1
        stage = 3 if phase["wait"] > 8 else 2
    phase["stage"] = stage
    target = {0: cube + [0, 0, 0.06], 1: cube, 2: cube, 3: cube + [0, 0, 0.25]}[stage]
    action = np.zeros(7)
    action[:3] = np.clip(10.0 * (target - eef), -1, 1)
    action[:6] += noise * rng.standard_normal(6)
    action[6] = 1.0 if stage >= 2 else -1.0  # close the gripper from the grasp on
    return np.clip(action, -1, 1)


def observation(env, raw: dict) -> dict:
    """What robomimic's EnvRobosuite.get_observation keeps: 'object' and the arm's own keys."""
    keys = [k for k in raw if k.startswith("robot0_") and not k.endswith("proprio-state")]
    return {"object": np.array(raw["object-state"]), **{k: np.array(raw[k]) for k in keys}}


def episode(env, rng: np.random.Generator, noise: float, max_steps: int) -> dict:
    raw = env.reset()
    rows = {"obs": [], "next_obs": [], "states": [], "actions": [], "rewards": [], "dones": []}
    model = env.sim.model.get_xml()
    phase = {"stage": 0}
    for t in range(max_steps):
        action = scripted_action(raw, phase, rng, noise)
        rows["states"].append(np.array(env.sim.get_state().flatten()))
        rows["obs"].append(observation(env, raw))
        raw, reward, _, _ = env.step(action)
        success = bool(env._check_success())
        rows["next_obs"].append(observation(env, raw))
        rows["actions"].append(action)
        rows["rewards"].append(float(reward))
        rows["dones"].append(int(success or t == max_steps - 1))
        if success:
            break
    return {**rows, "model": model}


def collect(args) -> str:
    """Writes <data_dir>/lift/<type>/<file> for args.dataset = 'lift-<type>-low_dim'; returns its path."""
    import h5py

    import loaders

    path = loaders.robomimic_path(args.dataset)  # an unknown task or type lists the valid ids
    if not args.dataset.startswith("lift-"):
        raise loaders.UsageError(f"{args.dataset}: only Lift has a scripted policy here; download the file "
                                 "(docs/robomimic.md) or pass lift-ph-low_dim")
    unused = [f"--{k.replace('_', '-')}" for k in ("num_val_episodes", "p_random_action")
              if getattr(args, k) is not None]
    if unused:
        raise loaders.UsageError(f"{unused[0]} is an OGBench setting; a Robomimic file takes --num-episodes, "
                                 "--max-episode-steps, --noise, --seed and --data-dir")
    if args.data_dir:
        path = os.path.join(os.path.expanduser(args.data_dir), *path.split(os.sep)[-3:])
    n = 10 if args.num_episodes is None else args.num_episodes
    steps = loaders.ROBOMIMIC_STEPS["lift"] if args.max_episode_steps is None else args.max_episode_steps
    noise = 0.1 if args.noise is None else args.noise
    import robosuite  # after the checks: its import prints warnings
    from robosuite.controllers.composite.composite_controller_factory import refactor_composite_controller_config

    kwargs = dict(ENV_KWARGS)
    kwargs["controller_configs"] = refactor_composite_controller_config(OSC_POSE, robot_type="Panda", arms=["right"])
    env = robosuite.make("Lift", **kwargs)
    state = np.random.get_state()  # robosuite places the cube with numpy's global generator: seed it, then restore
    np.random.seed(args.seed)
    try:
        rng = np.random.default_rng(args.seed)
        episodes = [episode(env, rng, noise, steps) for _ in range(n)]
    finally:
        np.random.set_state(state)
        env.close()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".collect-", suffix=".hdf5")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            for k, ep in enumerate(episodes):
                g = data.create_group(f"demo_{k}")
                for key in ("states", "actions", "rewards", "dones"):
                    g.create_dataset(key, data=np.array(ep[key]))
                for group in ("obs", "next_obs"):
                    for key in ep[group][0]:
                        g.create_dataset(f"{group}/{key}", data=np.stack([o[key] for o in ep[group]]))
                g.attrs["num_samples"] = len(ep["actions"])
                g.attrs["model_file"] = ep["model"]
            data.attrs["total"] = sum(len(ep["actions"]) for ep in episodes)
            meta = dict(env_name="Lift", env_version=robosuite.__version__, type=1, env_kwargs=ENV_KWARGS)
            data.attrs["env_args"] = json.dumps(meta, indent=4)
            names = [f"demo_{k}" for k in range(n)]
            n_valid = n // 10
            f.create_dataset("mask/train", data=np.array(names[:n - n_valid], dtype="S"))
            f.create_dataset("mask/valid", data=np.array(names[n - n_valid:], dtype="S"))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    solved = sum(int(ep["rewards"][-1] > 0) for ep in episodes)
    print(f"{path}: {n} episodes ({solved} reach the goal), {sum(len(ep['actions']) for ep in episodes)} steps")
    return path
