"""common.py on real data: regenerated OGBench files and locally built Minari datasets, through load_task."""
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

import common
import plumbing
from conftest import CUBE_ID, MAZE_ID

CPU = torch.device("cpu")


def raw_kept_rows(path):
    """The raw OGBench file, without the last stored step of every episode (it has no successor)."""
    raw = dict(np.load(path))
    keep = ~raw["terminals"]
    return {k: v[keep] for k, v in raw.items() if k != "stamp"}  # the stamp is one value per file


def test_ogbench_pointmaze_masks_are_zero_exactly_where_solved(ogbench_dir):
    task = common.load_task(MAZE_ID, CPU)
    raw = raw_kept_rows(os.path.join(ogbench_dir, "pointmaze-medium-navigate-v0.npz"))
    n = len(raw["observations"])
    assert task.train.size == n == 4 * 200 and task.val.size == 200
    assert task.train.observations.shape == (n, 2) and task.train.actions.shape == (n, 2)
    # task 3 goal of pointmaze-medium and its tolerance (ogbench locomaze: 1.0 for the point mass)
    solved = np.linalg.norm(raw["qpos"][:, :2] - np.array([4.0, 12.0]), axis=1) <= 1.0
    np.testing.assert_array_equal(task.train.masks.numpy(), (~solved).astype(np.float32))
    np.testing.assert_array_equal(task.train.rewards.numpy(), solved.astype(np.float32) - 1)
    # next_observations are the following stored observation; terminals mark the 4 episode ends only
    np.testing.assert_allclose(task.train.observations[1:200].numpy(), task.train.next_observations[:199].numpy())
    assert task.train.terminals.sum() == 4 and task.train.terminals[199] == 1
    assert task.train.actions.abs().max() <= common.ACTION_CLIP
    assert task.max_episode_steps == 1000


@pytest.mark.slow
def test_ogbench_cube_masks_and_val_split(ogbench_dir):
    task = common.load_task(CUBE_ID, CPU)
    raw = raw_kept_rows(os.path.join(ogbench_dir, "cube-single-play-v0.npz"))
    solved = np.linalg.norm(raw["qpos"][:, 14:17] - np.array([0.5, 0.0, 0.02]), axis=1) <= 0.04  # task 2 goal
    np.testing.assert_array_equal(task.train.masks.numpy(), (~solved).astype(np.float32))
    val_raw = raw_kept_rows(os.path.join(ogbench_dir, "cube-single-play-v0-val.npz"))
    assert task.train.size == 600 and task.val.size == 200
    np.testing.assert_allclose(task.val.observations.numpy(), val_raw["observations"])
    assert not np.isin(task.val.observations[:, 0].numpy(), task.train.observations[:, 0].numpy()).all()


def test_missing_dataset_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("OGBENCH_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python collect.py scene-play-v0"):
        common.load_task("scene-play-singletask-task2-v0", CPU)
    with pytest.raises(FileNotFoundError, match="official file"):
        common.load_task("antmaze-large-navigate-singletask-task1-v0", CPU)


def test_unknown_env_id_lists_families():
    with pytest.raises(ValueError, match="OGBench .* Minari .*bandit-4gaussian"):
        common.load_task("halfcheetah", CPU)


def test_sample_is_uniform_gather_on_device():
    n = 10
    data = {k: np.arange(n, dtype=np.float32).reshape(n, 1) for k in ("observations", "actions", "next_observations")}
    data.update(rewards=np.arange(n), masks=np.ones(n), terminals=np.zeros(n))
    ds = common.Dataset.from_numpy(data, CPU, capacity=12)
    torch.manual_seed(0)
    b = ds.sample(5000)
    assert b["observations"].shape == (5000, 1)
    np.testing.assert_array_equal(b["observations"][:, 0].numpy(), b["rewards"].numpy())
    counts = np.bincount(b["rewards"].numpy().astype(int), minlength=12)
    assert counts[10:].sum() == 0 and counts[:10].min() > 400  # never the empty rows, all valid rows
    ds.add(**{k: torch.full((2,) + getattr(ds, k).shape[1:], 99.0) for k in common.Dataset.KEYS})
    assert ds.size == 12 and (ds.sample(2000)["rewards"] == 99).any()
    with pytest.raises(ValueError, match="full"):
        ds.add(**{k: getattr(ds, k)[:1] for k in common.Dataset.KEYS})
    big = ds.grow(3)
    assert big.size == 12 and len(big.observations) == 15 and torch.equal(big.rewards[:12], ds.rewards)
    big.add(**{k: getattr(ds, k)[:3] for k in common.Dataset.KEYS})
    assert big.size == 15


def test_load_task_leaves_room_for_online_transitions():
    task = common.load_task("bandit-4gaussian", CPU, extra_capacity=100)
    assert task.train.size == 10_000 and len(task.train.observations) == 10_100
    assert (task.train.sample(20_000)["rewards"] != 0).all()  # the empty rows are never sampled


def test_chunk_sampler_stops_at_episode_boundaries():
    # two episodes: rows 0-3 and 4-9; mask 0 at row 2 (task solved)
    n, h, g = 10, 3, 0.5
    term = np.zeros(n)
    term[[3, 9]] = 1
    masks = np.ones(n)
    masks[2] = 0
    data = dict(observations=np.arange(n, dtype=np.float32)[:, None], actions=np.arange(n, dtype=np.float32)[:, None],
                rewards=np.arange(n) + 1.0, next_observations=np.arange(n, dtype=np.float32)[:, None] + 100,
                masks=masks, terminals=term)
    ds = common.Dataset.from_numpy(data, CPU)
    torch.manual_seed(0)
    b = ds.sample_chunks(4000, h, g)
    starts = b["observations"][:, 0].long().numpy()
    assert set(starts) == set(range(n - h + 1))  # uniform over [0, n - h]
    assert b["actions"].shape == (4000, h, 1)
    expect = {  # start: (R, mask, valid, s')
        0: (1 + g * 2 + g * g * 3, 0.0, 1.0, 102), 1: (2 + g * 3 + g * g * 4, 0.0, 1.0, 103),
        2: (3 + g * 4, 0.0, 0.0, 103), 3: (4.0, 1.0, 0.0, 103), 4: (5 + g * 6 + g * g * 7, 1.0, 1.0, 106),
        7: (8 + g * 9 + g * g * 10, 1.0, 1.0, 109)}
    for s, (r, m, v, nxt) in expect.items():
        i = np.flatnonzero(starts == s)[0]
        assert b["rewards"][i].item() == pytest.approx(r), s
        assert (b["masks"][i].item(), b["valid"][i].item(), b["next_observations"][i, 0].item()) == (m, v, nxt), s
        np.testing.assert_array_equal(b["actions"][i, :, 0].numpy(), np.arange(s, s + h))
    h1 = ds.sample_chunks(100, 1, g)
    np.testing.assert_array_equal(h1["next_observations"][:, 0].numpy(), h1["observations"][:, 0].numpy() + 100)


# ---------------------------------------------------------------------------------------------------- Minari
@pytest.fixture()
def minari_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    return tmp_path


def build_minari(dataset_id, env, n_episodes, T, eval_env=None, **kw):
    """A small Minari dataset from random actions, built from episode buffers (DataCollector needs jax)."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    buffers = []
    for ep in range(n_episodes):
        obs, _ = env.reset(seed=ep)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        for t in range(T):
            a = env.action_space.sample()
            obs, r, term, trunc, _ = env.step(a)
            observations.append(obs)
            actions.append(a)
            rewards.append(r)
            terms.append(bool(term))
            truncs.append(t == T - 1 and not term)
            if term:
                break
        stack = (lambda xs: {k: np.stack([x[k] for x in xs]) for k in xs[0]}) if isinstance(obs, dict) else np.stack
        buffers.append(EpisodeBuffer(id=ep, seed=ep, observations=stack(observations), actions=np.stack(actions),
                                     rewards=rewards, terminations=terms, truncations=truncs, infos={}))
    return minari.create_dataset_from_buffers(dataset_id=dataset_id, buffer=buffers, env=env, eval_env=eval_env, **kw)


def test_minari_mujoco_transitions_and_score(minari_dir):
    env = gym.make("InvertedPendulum-v5")
    env.action_space.seed(0)
    build_minari("mujoco/invertedpendulum/tiny-v0", env, 4, 30, ref_min_score=0.0, ref_max_score=100.0)
    task = common.load_task("mujoco/invertedpendulum/tiny-v0", CPU)
    import minari

    ds = minari.load_dataset("mujoco/invertedpendulum/tiny-v0")
    eps = list(ds.iterate_episodes())
    assert task.train.size == sum(len(e.rewards) for e in eps) and task.val is None
    e0 = eps[0]
    T = len(e0.rewards)
    np.testing.assert_allclose(task.train.observations[:T].numpy(), e0.observations[:-1], rtol=1e-6)
    np.testing.assert_allclose(task.train.next_observations[:T].numpy(), e0.observations[1:], rtol=1e-6)
    np.testing.assert_array_equal(task.train.masks[:T].numpy(), 1 - np.asarray(e0.terminations, np.float32))
    assert task.train.terminals[:T].sum() == 1 and task.train.terminals[T - 1] == 1
    assert task.score(np.array([50.0])) == pytest.approx(50.0)
    out = common.evaluate(lambda o: torch.zeros(len(o), 1), task, num_episodes=2, seed=0)
    assert out["episodic_length"] > 0 and "normalized_score" in out


def test_minari_antmaze_relabelled_to_eval_goal(minari_dir):
    import gymnasium_robotics  # noqa: F401 (registers AntMaze)

    maze = [[1, 1, 1, 1, 1], [1, "r", 0, 0, 1], [1, 1, 1, 0, 1], [1, "g", 0, 0, 1], [1, 1, 1, 1, 1]]
    env = gym.make("AntMaze_UMaze-v4", continuing_task=True, reset_target=False, max_episode_steps=40)
    env.action_space.seed(0)
    eval_env = gym.make("AntMaze_UMaze-v4", maze_map=maze, continuing_task=True, max_episode_steps=40)
    build_minari("D4RL/antmaze/tiny-v1", env, 2, 40, eval_env=eval_env)
    task = common.load_task("D4RL/antmaze/tiny-v1", CPU)
    assert task.train.observations.shape == (80, 29)
    goal = np.array(eval_env.unwrapped.maze.unique_goal_locations[0])
    xy_next = task.train.next_observations[:, :2].numpy()
    np.testing.assert_allclose(task.train.observations[1:40, :2].numpy(), xy_next[:39], rtol=1e-6)
    solved = np.linalg.norm(xy_next - goal, axis=1) <= 0.5
    np.testing.assert_array_equal(task.train.masks.numpy(), (~solved).astype(np.float32))
    np.testing.assert_array_equal(task.train.rewards.numpy(), solved.astype(np.float32) - 1)
    out = common.evaluate(lambda o: torch.zeros(len(o), 8), task, num_episodes=2, seed=0)
    assert out["episodic_length"] == 40 and out["normalized_score"] == 100 * out["episodic_return"]


def test_d4rl_alias_is_mapped_and_printed(minari_dir, capsys):
    with pytest.raises(FileNotFoundError, match="D4RL/pen/human-v2 .*minari download"):
        common.load_task("pen-human-v1", CPU)
    assert "pen-human-v1 -> Minari dataset D4RL/pen/human-v2" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- evaluation
def test_ogbench_eval_reads_final_success(ogbench_dir):
    task = common.load_task(MAZE_ID, CPU)
    helper = task.make_env()
    helper.reset(seed=0)
    u = helper.unwrapped  # the env's own BFS subgoal gives a policy that reaches the goal well inside 1000 steps
    goal = np.array(u.cur_goal_xy)

    def oracle(obs):
        acts = [np.asarray(u.get_oracle_subgoal(o, goal)[0]) - o for o in obs.numpy()]
        return torch.as_tensor(np.clip(np.stack(acts) * 2, -1, 1), dtype=torch.float32)

    out = common.evaluate(oracle, task, num_episodes=3, seed=0)
    assert out["success_rate"] == 1.0 and out["episodic_length"] < 1000
    zero = common.evaluate(lambda o: torch.zeros(len(o), 2), task, num_episodes=2, seed=0)
    assert zero["success_rate"] == 0.0 and zero["episodic_length"] == 1000 and zero["episodic_return"] == -1000


def test_bandit_eval_and_png(tmp_path):
    task = common.load_task("bandit-4gaussian", CPU)
    assert task.train.size == 10_000 and float(task.train.rewards.max()) == pytest.approx(5.0, abs=0.01)
    on_right = lambda o: torch.tensor([[0.8, 0.0]]).expand(len(o), 2)  # noqa: E731
    out = common.evaluate(on_right, task, 1, 0, png_path=str(tmp_path / "b.png"))
    assert out["frac_right"] == 1.0 and out["frac_between"] == 0.0 and out["episodic_return"] == pytest.approx(5.0)
    from PIL import Image

    assert Image.open(tmp_path / "b.png").size == (440, 440)
    mid = common.evaluate(lambda o: torch.zeros(len(o), 2), task, 1, 0)
    assert mid["frac_between"] == 1.0


def test_bandit_rotations_turn_the_peaks_and_keep_the_centres(tmp_path):
    """'-rotK' is the base bandit turned K quarter turns clockwise: r_K(R^K a) = r_0(a) for every action a, with
    R(x, y) = (y, -x); the centres stay, so the tied pair walks right/bottom -> bottom/left -> left/top -> top/right."""
    a = np.random.default_rng(0).uniform(-1, 1, (500, 2)).astype(np.float32)
    base = common.bandit_reward(a, common.bandit_peaks("bandit-4gaussian"))
    rotated = a
    for k, tied in enumerate([("right", "bottom"), ("bottom", "left"), ("top", "left"), ("right", "top")]):
        env_id = "bandit-4gaussian" + (f"-rot{k}" if k else "")
        np.testing.assert_allclose(common.bandit_reward(rotated, common.bandit_peaks(env_id)), base, rtol=0, atol=1e-5)
        assert common.bandit_tied_modes(env_id) == tied
        task = common.load_task(env_id, CPU)
        assert task.env_id == env_id and common.default_offline_steps(env_id) == 5_000
        np.testing.assert_allclose(task.train.rewards.numpy(),
                                   common.bandit_reward(task.train.actions.numpy(), common.bandit_peaks(env_id)))
        # the evaluation scores the rotated landscape: a policy on a tied mode gets the top reward 5
        centre = torch.as_tensor(common.BANDIT_CENTRES[common.BANDIT_NAMES.index(tied[1])])
        out = common.evaluate(lambda o: centre.expand(len(o), 2), task, 1, 0, png_path=str(tmp_path / f"{k}.png"))
        assert out[f"frac_{tied[1]}"] == 1.0 and out["episodic_return"] == pytest.approx(5.0)
        rotated = np.stack([rotated[:, 1], -rotated[:, 0]], -1)
    assert not np.allclose(common.load_task("bandit-4gaussian-rot1", CPU).train.rewards.numpy(),
                           common.load_task("bandit-4gaussian", CPU).train.rewards.numpy())
    with pytest.raises(ValueError, match="bandit-4gaussian\\[-rot1\\|2\\|3\\]"):
        common.load_task("bandit-4gaussian-rot4", CPU)


def test_device_auto_is_loud_and_cuda_raises(capsys):
    if torch.cuda.is_available():
        pytest.skip("machine has a GPU")
    assert plumbing.get_device("auto").type == "cpu"
    assert "NO GPU FOUND" in capsys.readouterr().out
    with pytest.raises(common.UsageError, match="--device cpu"):
        plumbing.get_device("cuda")
