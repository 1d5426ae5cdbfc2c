"""Robomimic low-dim tasks on a file that collect.py writes in robomimic's hdf5 layout (scripted Lift episodes):
the official observation order, rewards, masks and terminals; the env built from the file's metadata; every script
offline then online; the bad-input lines."""
import csv
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

pytest.importorskip("robosuite", reason="requirements.txt installs robosuite; the Robomimic tests need it")

import collect  # noqa: E402
import common  # noqa: E402
import loaders  # noqa: E402
import runfiles  # noqa: E402
from conftest import assert_one_line, cli, run_dir_of  # noqa: E402
from test_online import tiny_args  # noqa: E402

CPU = torch.device("cpu")
LIFT = "lift-ph-low_dim"


@pytest.fixture(scope="session")
def robomimic_dir(tmp_path_factory):
    """$ROBOMIMIC_DATA_DIR with lift/ph/low_dim_v15.hdf5: 3 scripted episodes, the last two renamed demo_9 and
    demo_10 so that a lexicographic sort would put them out of order."""
    out = str(tmp_path_factory.mktemp("robomimic_data"))
    path = collect.main(collect.Args(LIFT, data_dir=out, num_episodes=3, noise=0.05))["train"]
    with h5py.File(path, "a") as f:
        f.move("data/demo_2", "data/demo_10")
        f.move("data/demo_1", "data/demo_9")
    old = os.environ.get("ROBOMIMIC_DATA_DIR")
    os.environ["ROBOMIMIC_DATA_DIR"] = out
    yield out
    if old is None:
        os.environ.pop("ROBOMIMIC_DATA_DIR")
    else:
        os.environ["ROBOMIMIC_DATA_DIR"] = old


def file_rows(path):
    """The file's demos in numeric order: (obs, next_obs, actions, rewards, dones), obs in the official key order."""
    with h5py.File(path) as f:
        out = []
        for d in ("demo_0", "demo_9", "demo_10"):
            g = f[f"data/{d}"]
            cat = [np.concatenate([g[o][k][()] for k in loaders.ROBOMIMIC_OBS], -1) for o in ("obs", "next_obs")]
            out.append((*cat, g["actions"][()], g["rewards"][()], g["dones"][()]))
        return out


def test_loads_official_order_rewards_masks_terminals(robomimic_dir):
    task = common.load_task(LIFT, CPU)
    rows = file_rows(loaders.robomimic_path(LIFT))
    cat = lambda i: np.concatenate([r[i] for r in rows])  # noqa: E731
    d = {k: getattr(task.train, k)[:task.train.size].numpy() for k in common.Dataset.KEYS}
    assert d["observations"].shape[1] == 3 + 4 + 2 + 10  # eef pos, eef quat, gripper qpos, Lift's object state
    np.testing.assert_allclose(d["observations"], cat(0), rtol=1e-6)
    np.testing.assert_allclose(d["next_observations"], cat(1), rtol=1e-6)
    np.testing.assert_allclose(d["actions"], np.clip(cat(2), -1 + 1e-5, 1 - 1e-5), rtol=1e-6)
    np.testing.assert_array_equal(d["rewards"], cat(3) - 1.0)  # DFP/QC main.py: r - 1
    np.testing.assert_array_equal(d["masks"], 1.0 - cat(4))
    np.testing.assert_array_equal(d["terminals"], cat(4))  # done_mode 2: the last step of each demo is done
    lengths = [len(r[2]) for r in rows]
    assert np.flatnonzero(d["terminals"]).tolist() == list(np.cumsum(lengths) - 1)
    assert d["rewards"][np.cumsum(lengths) - 1].tolist() == [0.0] * 3  # the scripted grasps all succeed
    assert task.max_episode_steps == 300 and task.online_reward_shift == -1.0 and task.val is None
    assert common.default_offline_steps(LIFT) == 1_000_000


def test_env_from_metadata_matches_the_dataset_layout(robomimic_dir):
    task = common.load_task(LIFT, CPU)
    env = task.make_env()
    obs, _ = env.reset(seed=3)
    assert obs.shape == (task.train.observations.shape[1],) and env.action_space.shape == (7,)
    with h5py.File(loaders.robomimic_path(LIFT)) as f:
        states, first = f["data/demo_9/states"][()], f["data/demo_9/obs"]
        want = np.concatenate([first[k][5] for k in loaders.ROBOMIMIC_OBS])
    sim = env.env.sim  # the recorded simulator state of step 5 gives the recorded observation, key for key
    sim.set_state_from_flattened(states[5])
    sim.forward()
    # to within the arm's motion in one 2 ms physics substep: after mj_step the site positions robosuite reads are
    # those of the substep's start, after forward() those of its end (a wrong key order is off by 0.1 or more)
    np.testing.assert_allclose(env._obs(env.env._get_observations(force_update=True)), want, atol=2e-3)
    # a positive reward is success: the episode ends with info['success'] = 1
    qpos_addr = sim.model.get_joint_qpos_addr(env.env.cube.joints[0])[0]
    sim.data.qpos[qpos_addr + 2] += 0.2
    sim.forward()
    _, reward, terminated, truncated, info = env.step(np.zeros(7))
    assert reward == 1.0 and terminated and not truncated and info["success"] == 1.0
    # no success: truncated at the task's limit
    env.max_steps = 3
    env.reset(seed=4)
    ends = [env.step(np.zeros(7))[2:4] for _ in range(3)]
    assert ends == [(False, False), (False, False), (False, True)]
    env.close()


def test_reset_seeds_the_placement_and_leaves_numpy_alone(robomimic_dir):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    env = common.load_task(LIFT, CPU).make_env()
    a, b, c = env.reset(seed=7)[0], env.reset(seed=7)[0], env.reset(seed=8)[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)  # the cube's start differs with the seed
    assert np.array_equal(np.random.get_state()[1], before)  # the process's generator is untouched
    env.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fql", "driftql", "dfp-h5", "qam", "deflow"])
def test_script_runs_offline_then_online(name, robomimic_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(loaders.ROBOMIMIC_STEPS, "lift", 40)  # short episodes: evaluations and resets cost less
    script = name.split("-")[0]
    extra = dict(horizon=5, topk_start=20) if name == "dfp-h5" else dict(horizon=5) if script == "qam" else {}
    mod, args = tiny_args(script, env_id=LIFT, offline_steps=20, online_steps=120, start_training=30,
                          eval_interval=1000, log_interval=40, runs_dir=str(tmp_path), **extra)
    result = mod.main(args)
    assert "offline done at step 20; online for 120" in capsys.readouterr().out
    d = run_dir_of(tmp_path)
    assert [r["step"] for r in csv.DictReader(open(f"{d}/eval.csv"))] == ["1", "20", "140"]
    assert 0.0 <= result["success_rate"] <= 1.0 and 1 <= result["episodic_length"] <= 40
    ckpt = runfiles.load_checkpoint(f"{d}/{script}.pt", script, CPU)
    n = sum(len(r[2]) for r in file_rows(loaders.robomimic_path(LIFT)))
    assert ckpt["step"] == 140 and ckpt["online"]["steps"] == 120 and ckpt["online"]["size"] == n + 120
    rows = ckpt["online"]["rows"]
    assert set(rows["rewards"].tolist()) <= {-1.0, 0.0}  # online rewards shifted like the dataset's
    assert rows["terminals"].sum() >= 120 // 40  # episodes end at the limit of 40 steps at the latest


# ---------------------------------------------------------------------------------------------------- bad input
def test_missing_file_names_the_download(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROBOMIMIC_DATA_DIR", str(tmp_path / "none"))
    code, err = cli("fql", ["--env-id", "can-mh-low_dim", "--runs-dir", str(tmp_path / "runs")], capsys, monkeypatch)
    assert_one_line(code, err, str(tmp_path / "none" / "can" / "mh" / "low_dim_v15.hdf5"),
                    "wget -P", "v1.5/can/mh/low_dim_v15.hdf5")
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize("env_id", ["lift-xx-low_dim", "tool_hang-mh-low_dim", "stack-ph-low_dim"])
def test_unknown_task_or_type_lists_the_valid_ids(env_id, tmp_path, capsys, monkeypatch):
    code, err = cli("dfp", ["--env-id", env_id, "--runs-dir", str(tmp_path / "runs")], capsys, monkeypatch)
    assert_one_line(code, err, env_id, "lift-mh-low_dim", "tool_hang-ph-low_dim", "can-mg-low_dim")
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize("drop", ["data/demo_9/next_obs/object", "data/demo_0/obs/robot0_eef_quat",
                                  "data/demo_10/dones"])
def test_file_without_a_low_dim_key_names_it(drop, robomimic_dir, tmp_path, capsys, monkeypatch):
    shutil.copytree(robomimic_dir, tmp_path / "data")
    with h5py.File(tmp_path / "data" / "lift" / "ph" / "low_dim_v15.hdf5", "a") as f:
        del f[drop]
    monkeypatch.setenv("ROBOMIMIC_DATA_DIR", str(tmp_path / "data"))
    code, err = cli("qam", ["--env-id", LIFT, "--runs-dir", str(tmp_path / "runs")], capsys, monkeypatch)
    demo, _, key = drop.removeprefix("data/").partition("/")
    assert_one_line(code, err, f"data/{demo} has no {key}", "low_dim_v15.hdf5")
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize("argv, names", [(["can-ph-low_dim"], ["can-ph-low_dim", "lift-ph-low_dim"]),
                                         (["lift-xx-low_dim"], ["lift-xx-low_dim", "lift-mh-low_dim"]),
                                         (["lift-ph-low_dim", "--p-random-action", "0.1"], ["--p-random-action"])])
def test_collect_refuses_what_it_cannot_write(argv, names, tmp_path, capsys, monkeypatch):
    code, err = cli("collect", [*argv, "--data-dir", str(tmp_path)], capsys, monkeypatch)
    assert_one_line(code, err, *names)
    assert os.listdir(tmp_path) == []
