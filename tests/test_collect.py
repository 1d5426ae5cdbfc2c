"""Tests for collect.py: tiny OGBench regenerations (CPU, ~30 s in total)."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import collect  # noqa: E402
import common  # noqa: E402

ogbench = pytest.importorskip("ogbench")

STEPS = 101  # stored steps per episode -> 100 transitions after loading
NAMES = dict(cube="cube-single-play-v0", maze="pointmaze-medium-navigate-v0")


def run(tmp_path_factory, name, **kw):
    kw = {**dict(num_episodes=2, num_val_episodes=1, max_episode_steps=STEPS, workers=1), **kw}
    out = tmp_path_factory.mktemp(name)
    paths = collect.main(collect.Args(name, data_dir=str(out), **kw))
    return out, {s: dict(np.load(p)) for s, p in paths.items()}


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    return run(tmp_path_factory, NAMES["cube"], workers=2)  # exercises the worker processes


@pytest.fixture(scope="module")
def maze(tmp_path_factory):
    return run(tmp_path_factory, NAMES["maze"])


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


@pytest.mark.slow
@pytest.mark.parametrize("which, ob_dim, qpos_dim", [("cube", 28, None), ("maze", 2, 2)])
def test_keys_dtypes_shapes(which, ob_dim, qpos_dim, request):
    out, data = request.getfixturevalue(which)
    for split, n_eps in (("train", 2), ("val", 1)):
        d = data[split]
        assert set(d) == {"observations", "actions", "terminals", "qpos", "qvel", "stamp"}  # no buttons here
        assert d["observations"].dtype == np.float32 and d["actions"].dtype == np.float32
        assert d["qpos"].dtype == np.float32 and d["qvel"].dtype == np.float32 and d["terminals"].dtype == bool
        rows = n_eps * STEPS
        assert d["observations"].shape == (rows, ob_dim)
        assert d["actions"].shape[0] == rows and d["qpos"].shape[0] == rows and d["qvel"].shape[0] == rows
        if qpos_dim:
            assert d["qpos"].shape[1] == qpos_dim
        assert np.array_equal(np.flatnonzero(d["terminals"]), np.arange(1, n_eps + 1) * STEPS - 1)
        assert np.all(np.abs(d["actions"]) <= 1) and np.isfinite(d["observations"]).all()
    assert sorted(os.listdir(out)) == sorted([f"{NAMES[which]}.npz", f"{NAMES[which]}-val.npz"])


def test_val_is_separate(maze):
    train, val = maze[1]["train"], maze[1]["val"]
    assert not np.isin(val["observations"][:, 0], train["observations"][:, 0]).any()


def test_episode_seeding_independent_of_split(tmp_path_factory, maze):
    # Episode i depends only on (seed, i): 1 train + 2 val episodes = the 2 train + 1 val ones.
    _, data = run(tmp_path_factory, "pointmaze-medium-navigate-v0", num_episodes=1, num_val_episodes=2)
    keys = set(data["train"]) - {"stamp"}  # the stamp identifies the settings, which differ
    joined = lambda d: {k: np.concatenate([d["train"][k], d["val"][k]]) for k in keys}  # noqa: E731
    assert_same(joined(data), joined(maze[1]))
    assert len(data["train"]["terminals"]) == STEPS
    assert data["train"]["stamp"] == data["val"]["stamp"] != maze[1]["train"]["stamp"]


@pytest.mark.slow
def test_deterministic_and_independent_of_workers(tmp_path_factory, cube, maze):
    _, again = run(tmp_path_factory, "cube-single-play-v0", workers=1)
    for s in ("train", "val"):
        assert_same(cube[1][s], again[s])
    _, again = run(tmp_path_factory, "pointmaze-medium-navigate-v0", workers=2)
    for s in ("train", "val"):
        assert_same(maze[1][s], again[s])


@pytest.mark.slow
def test_different_seed_differs(tmp_path_factory, cube):
    _, other = run(tmp_path_factory, "cube-single-play-v0", seed=1)
    for k in ("observations", "actions", "qpos"):
        assert not np.allclose(cube[1]["train"][k], other["train"][k])


@pytest.mark.slow
@pytest.mark.parametrize("which, task", [("cube", 2), ("maze", 3)])
def test_loads_with_ogbench(which, task, request):
    out, data = request.getfixturevalue(which)
    name = NAMES[which]
    env_name = name.replace("-v0", f"-singletask-task{task}-v0")
    for kw in (dict(dataset_dir=str(out)), dict(dataset_path=str(out / f"{name}.npz"))):
        env, train, val = ogbench.make_env_and_datasets(env_name, **kw)
        assert train["observations"].shape == (2 * (STEPS - 1), env.observation_space.shape[0])
        assert val["observations"].shape[0] == STEPS - 1
        assert np.array_equal(train["observations"][:STEPS - 1], data["train"]["observations"][:STEPS - 1])
        assert set(np.unique(train["masks"])) <= {0.0, 1.0} and (train["rewards"] <= 0).all()
        env.close()


def actions(tmp_path_factory, name, **kw):
    _, d = run(tmp_path_factory, name, num_episodes=1, num_val_episodes=1, max_episode_steps=201, **kw)
    return d["train"]["actions"].astype(np.float64)


@pytest.mark.slow
def test_random_action_corruption_cube(tmp_path_factory):
    oracle = actions(tmp_path_factory, "cube-single-play-v0", p_random_action=0.0)
    rand = actions(tmp_path_factory, "cube-single-play-v0", p_random_action=1.0)
    lag1 = lambda a: np.mean([np.corrcoef(a[1:, j], a[:-1, j])[0, 1] for j in range(3)])  # arm xyz dims
    assert lag1(oracle) > 0.5  # the plan oracle moves smoothly
    assert abs(lag1(rand)) < 0.15  # i.i.d. actions
    assert abs(np.abs(rand).mean() - 0.5) < 0.04 and abs(rand.std() - 1 / np.sqrt(3)) < 0.04
    assert abs(np.abs(oracle).mean() - 0.5) > 0.1


def test_random_action_corruption_pointmaze(tmp_path_factory):
    oracle = actions(tmp_path_factory, "pointmaze-medium-navigate-v0", noise=0.0, p_random_action=0.0)
    norms = np.linalg.norm(oracle, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)  # noise-free oracle action = unit vector to the BFS subgoal
    rand = actions(tmp_path_factory, "pointmaze-medium-navigate-v0", noise=0.0, p_random_action=1.0)
    assert abs(np.abs(rand).mean() - 0.5) < 0.06
    assert np.mean(np.abs(np.linalg.norm(rand, axis=1) - 1) > 0.05) > 0.5


def test_official_defaults_and_a_val_episode_for_small_collections():
    cfg = lambda name: collect.make_config(collect.Args(name))
    c = cfg("cube-single-play-v0")
    assert (c["num_episodes"], c["num_val_episodes"], c["max_episode_steps"], c["noise"], c["p_random_action"]) \
        == (1000, 100, 1001, 0.1, 0.0)
    assert cfg("cube-triple-noisy-v0")["num_episodes"] == 3000 and cfg("cube-double-noisy-v0")["p_random_action"] == 0.1
    assert cfg("puzzle-4x4-noisy-v0")["p_random_action"] == 0.2 and cfg("scene-noisy-v0")["p_random_action"] == 0.1
    g = cfg("pointmaze-giant-navigate-v0")
    assert (g["num_episodes"], g["max_episode_steps"], g["noise"]) == (500, 2001, 0.5)
    s = cfg("pointmaze-large-stitch-v0")
    assert (s["num_episodes"], s["num_val_episodes"], s["max_episode_steps"], s["p_random_action"]) == (5000, 500, 201, 0)
    assert cfg("pointmaze-medium-navigate-v0")["num_episodes"] == 1000
    small = collect.make_config(collect.Args("cube-single-play-v0", num_episodes=5))
    assert small["num_val_episodes"] == 1  # 5 // 10 would leave an empty -val file that training cannot load


@pytest.mark.parametrize("name", ["antmaze-large-navigate-v0", "humanoidmaze-medium-navigate-v0",
                                  "antsoccer-arena-navigate-v0", "cube-single-navigate-v0",
                                  "pointmaze-medium-play-v0", "cube-octuple-play-v0", "cube-single-play-v1"])
def test_unsupported_names(name, tmp_path):
    with pytest.raises(common.UsageError, match="(?i)supported") as e:
        collect.main(collect.Args(name, data_dir=str(tmp_path)))
    assert ("SAC experts" in str(e.value)) == name.startswith(("ant", "humanoid"))
    assert os.listdir(tmp_path) == []


def test_cells_at_distance():
    m = np.ones((5, 7), dtype=int)
    m[1, 1:6] = 0  # corridor (1,1)..(1,5)
    m[1:4, 3] = 0  # branch down from (1,3)
    assert sorted(collect.cells_at_distance(m, (1, 1), 3)) == [(1, 4), (2, 3)]
    free, vertex = collect.maze_cells(m)
    assert len(free) == 7 and (1, 2) not in vertex and (1, 1) in vertex and (3, 3) in vertex


def test_cube_quadruple_has_the_official_defaults():
    """OGBench's commands.sh: 5000 episodes of 1001 steps; its script stacks with p ~ U(0.1, 0.5) per episode."""
    cfg = collect.make_config(collect.Args("cube-quadruple-noisy-v0"))
    assert (cfg["num_episodes"], cfg["max_episode_steps"], cfg["p_random_action"]) == (5000, 1001, 0.1)
    assert collect.P_STACK["cube-quadruple"] == (0.1, 0.5)
