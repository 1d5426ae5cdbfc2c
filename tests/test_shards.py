"""--dataset-dir on real shards that collect.py writes (4 shards x 5 episodes of 20 transitions): the official rotation,
the read-ahead thread, chunks that stay inside a shard and an episode, the uniform mode, resume, and bad input."""
import gc
import importlib
import importlib.util
import os
import shutil
import weakref

import numpy as np
import pytest
import torch

import collect
import common
import runfiles
from conftest import CUBE_ID, assert_one_line, cli, run_dir_of

_spec = importlib.util.spec_from_file_location(  # benchmarks/shards.py, not the shared shards.py
    "shards_benchmark", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "shards.py"))
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)
write_synthetic_shards = _bench.write_synthetic_shards

CPU = torch.device("cpu")
LENGTH = 21  # rows per episode: 20 transitions


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shards"))
    res = collect.main(collect.Args("cube-single-play-v0", data_dir=out, shards=4, shard_episodes=5,
                                    max_episode_steps=LENGTH, workers=1))
    return res["dir"]


def flags(dataset_dir, **kw):
    fql = importlib.import_module("fql")
    return fql.Args(env_id=CUBE_ID, dataset_dir=dataset_dir, device="cpu", **kw)


def rows_of(path):
    """{observation row bytes: (episode, t)} and {next-observation row bytes: (episode, t)} of a shard file's
    transitions, read with numpy alone."""
    z = np.load(path)
    obs, ends = z["observations"], np.flatnonzero(z["terminals"])
    first, nxt = {}, {}
    for e, end in enumerate(ends):
        start = 0 if e == 0 else ends[e - 1] + 1
        for t in range(end - start):
            first[obs[start + t].tobytes()] = (e, t)
            nxt[obs[start + t + 1].tobytes()] = (e, t)
    return first, nxt


def shard_of(rows, table):
    """The shard whose observations hold every row (None if none, or if the rows come from several)."""
    found = {k for k, (first, _) in table.items() for r in rows if r.tobytes() in first}
    return found.pop() if len(found) == 1 else None


def test_the_shard_of_step_s_is_s_div_n_mod_k_of_the_sorted_files_and_batches_never_mix(shard_dir):
    files = sorted(f for f in os.listdir(shard_dir) if f.endswith(".npz"))
    train = [f for f in files if not f.endswith("-val.npz")]
    table = {f: rows_of(os.path.join(shard_dir, f)) for f in files}
    task = common.load_task(CUBE_ID, CPU, flags=flags(shard_dir, dataset_replace_interval=3))
    assert [os.path.basename(p) for p in task.shards.paths] == train and len(train) == 4
    for step in range(1, 31):
        task.train = common.data_at(task, step, 1000, None)
        batch = task.train.sample(64)
        # the whole batch comes from one training file: the one the official rotation uses at this step
        assert shard_of(batch["observations"].numpy(), table) == train[(step // 3) % 4], step
    assert [i for _, i in task.shards.swaps] == [1, 2, 3, 0, 1, 2, 3, 0, 1, 2]  # every 3 steps, cyclic


def test_dataset_proportion_keeps_the_first_files(shard_dir):
    task = common.load_task(CUBE_ID, CPU, flags=flags(shard_dir, dataset_replace_interval=1, dataset_proportion=0.5))
    names = [os.path.basename(p) for p in task.shards.paths]
    assert names == sorted(f for f in os.listdir(shard_dir) if not f.endswith("-val.npz"))[:2]
    assert {task.shards.index_at(s, 100) for s in range(1, 50)} == {0, 1}


def test_the_read_ahead_shard_holds_what_a_synchronous_read_does(shard_dir):
    task = common.load_task(CUBE_ID, CPU, flags=flags(shard_dir, dataset_replace_interval=2))
    for step in range(1, 9):
        data = common.data_at(task, step, 1000, None)
        direct = task.shards.build(task.shards.index_at(step, 1000))
        for k in common.Dataset.KEYS:
            assert torch.equal(getattr(data, k), getattr(direct, k)), (step, k)


def test_no_shard_outlives_its_turn_over_20_swaps(shard_dir):
    task = common.load_task(CUBE_ID, CPU, flags=flags(shard_dir, dataset_replace_interval=1))
    made, real = [], task.shards.make_dataset

    def tracked(*a):
        ds = real(*a)
        made.append(weakref.ref(ds))
        return ds
    task.shards.make_dataset = tracked
    for step in range(1, 22):
        task.train = common.data_at(task, step, 1000, None)
    gc.collect()
    assert len(made) >= 20 and sum(r() is not None for r in made) <= 2  # the shard in use and the one being read


def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def test_host_memory_does_not_grow_over_20_swaps(tmp_path):
    """Shards of ~6 MB each (synthetic, real format): 20 swaps later the process holds no more than two."""
    folder = str(tmp_path / "big")
    write_synthetic_shards(folder, "cube-single", 6, 25, distinct=3)
    task = common.load_task(CUBE_ID, CPU, flags=flags(folder, dataset_replace_interval=1))
    shard_mb = sum(getattr(task.train, k).numel() * 4 for k in common.Dataset.KEYS) / 2 ** 20
    assert shard_mb > 5  # a leak of 20 shards would be > 100 MB
    for step in range(1, 5):
        task.train = common.data_at(task, step, 1000, None)
    before = rss_mb()
    for step in range(5, 25):
        task.train = common.data_at(task, step, 1000, None)
        task.train.sample(32)
    gc.collect()
    assert rss_mb() - before < 3 * shard_mb, (before, rss_mb(), shard_mb)


def check_chunks(batch, table, h, discount=0.99):
    """Every chunk stays inside one shard and one episode: its next observation is the one after its last in-episode
    step, and `valid` is 1 exactly when all h steps lie in the episode."""
    for b in range(len(batch["observations"])):
        s = shard_of(batch["observations"][b:b + 1].numpy(), table)
        first, nxt = table[s]
        e, t = first[batch["observations"][b].numpy().tobytes()]
        last = max(tt for (ee, tt) in first.values() if ee == e)
        assert nxt[batch["next_observations"][b].numpy().tobytes()] == (e, min(t + h - 1, last))
        assert float(batch["valid"][b]) == float(t + h - 1 <= last)


def test_h5_chunks_never_cross_a_shard_end_or_an_episode_end(shard_dir):
    files = sorted(f for f in os.listdir(shard_dir) if not f.endswith("-val.npz"))
    table = {f: rows_of(os.path.join(shard_dir, f)) for f in files}
    task = common.load_task(CUBE_ID, CPU, flags=flags(shard_dir, dataset_replace_interval=2))
    torch.manual_seed(0)
    for step in range(1, 9):
        task.train = common.data_at(task, step, 1000, None)
        check_chunks(task.train.sample_chunks(128, 5, 0.99), table, 5)
    uniform = common.load_task(CUBE_ID, CPU, flags=flags(shard_dir, dataset_sampling="uniform"))
    batch = uniform.train.sample_chunks(512, 5, 0.99)
    check_chunks(batch, table, 5)
    assert float(batch["valid"].mean()) < 1  # some chunks did run past an episode end


def test_uniform_mode_reaches_every_shard_in_proportion_to_its_size(shard_dir, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    big = collect.main(collect.Args("cube-single-play-v0", data_dir=str(tmp_path), shards=2, shard_episodes=15,
                                    max_episode_steps=LENGTH, workers=1, seed=1))["dir"]
    npz = lambda d: sorted(f for f in os.listdir(d) if f.endswith(".npz"))  # noqa: E731
    for i, src in enumerate([*npz(shard_dir)[:4], *npz(big)]):  # shards 0, 1 of 5 episodes, 2, 3 of 15
        full = os.path.join(shard_dir if i < 4 else big, src)
        shutil.copy(full, folder / f"{i // 2}{src[-8:] if src.endswith('-val.npz') else '.npz'}")
    table = {f: rows_of(str(folder / f)) for f in sorted(os.listdir(folder)) if not f.endswith("-val.npz")
             and f.endswith(".npz")}
    sizes = np.array([len(t[0]) for t in table.values()])
    assert list(sizes) == [100, 100, 300, 300]
    task = common.load_task(CUBE_ID, CPU, flags=flags(str(folder), dataset_sampling="uniform"))
    assert task.train.size == sizes.sum() and os.path.isdir(folder / ".uniform-cache")
    torch.manual_seed(0)
    obs = task.train.sample(8000)["observations"].numpy()
    names = list(table)
    counts = np.zeros(4)
    for row in obs:
        counts[[i for i, n in enumerate(names) if row.tobytes() in table[n][0]][0]] += 1
    assert (counts > 0).all()
    assert np.abs(counts / counts.sum() - sizes / sizes.sum()).max() < 0.03, counts


def tiny(mod, shard_dir, runs_dir, **kw):
    extra = dict(horizon=5, num_qs=2, flow_steps=2) if mod.__name__ == "qam" else {}
    return mod.Args(**{**dict(env_id=CUBE_ID, dataset_dir=shard_dir, dataset_replace_interval=3, device="cpu",
                              actor_hidden_dims=(8,), value_hidden_dims=(8,), batch_size=16, eval_interval=4,
                              eval_episodes=1, runs_dir=str(runs_dir)), **extra, **kw})


def final_nets(tmp_path, d, name):
    return runfiles.load_checkpoint(f"{run_dir_of(tmp_path / d)}/{name}.pt", name, CPU)


def test_a_run_resumed_between_two_swaps_ends_as_an_uninterrupted_one(shard_dir, tmp_path):
    fql = importlib.import_module("fql")
    fql.main(tiny(fql, shard_dir, tmp_path / "whole", offline_steps=8))
    fql.main(tiny(fql, shard_dir, tmp_path / "a", offline_steps=4))  # stopped at 4: swaps at 3 and 6
    ckpt = f"{run_dir_of(tmp_path / 'a')}/fql.pt"
    assert runfiles.load_checkpoint(ckpt, "fql", CPU)["shards"]["index"] == 1
    fql.main(tiny(fql, shard_dir, tmp_path / "a", offline_steps=8, resume=ckpt))
    whole, resumed = final_nets(tmp_path, "whole", "fql"), final_nets(tmp_path, "a", "fql")
    assert whole["shards"] == resumed["shards"] and resumed["shards"]["index"] == 2
    for k, v in whole["nets"].items():
        assert torch.equal(v, resumed["nets"][k]), k


def test_online_rotation_after_a_resume_ends_as_an_uninterrupted_run(shard_dir, tmp_path):
    """QAM offline to online: the shard of each online step overwrites the replay's offline rows (swaps at online
    steps 3 and 6); a run stopped offline between two swaps and resumed through the online phase is bit-identical."""
    qam = importlib.import_module("qam")
    online = dict(offline_steps=8, online_steps=8, start_training=1, sparse=True)
    qam.main(tiny(qam, shard_dir, tmp_path / "whole", **online))
    qam.main(tiny(qam, shard_dir, tmp_path / "a", **dict(online, offline_steps=4, online_steps=0)))
    ckpt = f"{run_dir_of(tmp_path / 'a')}/qam.pt"
    qam.main(tiny(qam, shard_dir, tmp_path / "a", resume=ckpt, **online))
    whole, resumed = final_nets(tmp_path, "whole", "qam"), final_nets(tmp_path, "a", "qam")
    assert whole["step"] == resumed["step"] == 16 and whole["shards"] == resumed["shards"]
    assert whole["shards"]["index"] == (8 // 3 + 8 // 3) % 4
    for k, v in whole["nets"].items():
        assert torch.equal(v, resumed["nets"][k]), k
    for k, v in whole["online"]["rows"].items():
        assert torch.equal(v, resumed["online"]["rows"][k]), k


# ---------------------------------------------------------------------------------------------------- bad input
def bad(script, argv, capsys, monkeypatch, tmp_path, *names):
    code, err = cli(script, [*argv, "--runs-dir", str(tmp_path / "runs"), "--device", "cpu", "--offline-steps", "4"],
                    capsys, monkeypatch)
    assert_one_line(code, err, *names)
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")
    return err[0]


def copy_of(shard_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(shard_dir, folder)
    return folder


def test_a_folder_without_shards_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x-val.npz").write_bytes(b"")
    bad("fql", ["--env-id", CUBE_ID, "--dataset-dir", str(tmp_path / "empty")], capsys, monkeypatch, tmp_path,
        "--dataset-dir", "no .npz shards", "collect.py")


def test_shards_of_another_shape_are_one_line(shard_dir, tmp_path, capsys, monkeypatch):
    folder = copy_of(shard_dir, tmp_path)
    path = sorted(folder.glob("*-002.npz"))[0]
    z = dict(np.load(path))
    z["observations"] = z["observations"][:, :10]
    np.savez_compressed(path, **z)
    bad("qam", ["--env-id", CUBE_ID, "--dataset-dir", str(folder)], capsys, monkeypatch, tmp_path, path.name,
        "(10,)", "(28,)")


def test_a_truncated_shard_found_at_the_start_is_one_line(shard_dir, tmp_path, capsys, monkeypatch):
    folder = copy_of(shard_dir, tmp_path)
    path = sorted(folder.glob("*-003.npz"))[0]
    path.write_bytes(path.read_bytes()[:5000])
    bad("dfp", ["--env-id", CUBE_ID, "--dataset-dir", str(folder)], capsys, monkeypatch, tmp_path, path.name,
        "truncated")


def test_a_damaged_shard_found_at_a_later_swap_stops_with_the_last_checkpoint_intact(shard_dir, tmp_path, capsys,
                                                                                      monkeypatch):
    folder = copy_of(shard_dir, tmp_path)
    path = sorted(folder.glob("*-002.npz"))[0]
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)  # inside a compressed member: the headers still read fine
    path.write_bytes(bytes(data))
    code, err = cli("fql", ["--env-id", CUBE_ID, "--dataset-dir", str(folder), "--dataset-replace-interval", "2",
                            "--offline-steps", "8", "--eval-interval", "2", "--eval-episodes", "1", "--device", "cpu",
                            "--actor-hidden-dims", "8", "--value-hidden-dims", "8", "--runs-dir",
                            str(tmp_path / "runs")], capsys, monkeypatch)
    assert_one_line(code, err, path.name, "cannot be read")
    ckpt = runfiles.load_checkpoint(f"{run_dir_of(tmp_path / 'runs')}/fql.pt", "fql", CPU)
    assert ckpt["step"] == 2 and ckpt["shards"]["index"] == 1  # shard 2 is due at step 4


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5"])
def test_a_proportion_outside_0_1_is_one_line(shard_dir, value, tmp_path, capsys, monkeypatch):
    bad("fql", ["--env-id", CUBE_ID, "--dataset-dir", shard_dir, "--dataset-proportion", value], capsys, monkeypatch,
        tmp_path, "--dataset-proportion", "(0, 1]")


@pytest.mark.parametrize("env_id", ["bandit-4gaussian", "D4RL/pen/human-v2", "hopper-medium-v2"])
def test_dataset_dir_with_a_dataset_that_cannot_be_sharded_is_one_line(shard_dir, env_id, tmp_path, capsys,
                                                                       monkeypatch):
    bad("driftql", ["--env-id", env_id, "--dataset-dir", shard_dir], capsys, monkeypatch, tmp_path, env_id,
        "--dataset-dir")
