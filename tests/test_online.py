"""Offline-to-online fine-tuning (--online-steps): the shared collector and every script's online phase."""
import csv
import importlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import common
import runfiles
from conftest import CUBE_ID, MAZE_ID, run_dir_of
from test_common import build_minari, minari_dir  # noqa: F401 (fixture)

CPU = torch.device("cpu")
SCRIPTS = ("fql", "driftql", "dfp", "qam", "deflow")
TINY = dict(actor_hidden_dims=(16,), value_hidden_dims=(16,), batch_size=16, eval_episodes=1, device="cpu")


def tiny_args(name, **kw):
    mod = importlib.import_module(name)
    extra = dict(qam=dict(num_qs=2, flow_steps=2, horizon=2), dfp=dict(horizon=2),
                 fql=dict(flow_steps=2), deflow=dict(flow_steps=2)).get(name, {})
    return mod, mod.Args(**{**TINY, **extra, **kw})


class Recorder:
    """A policy that returns known chunks [1, h*A] and counts its calls."""

    def __init__(self, action_dim, horizon=1, seed=0):
        self.rng, self.shape, self.calls, self.chunks = np.random.default_rng(seed), (horizon, action_dim), 0, []

    def __call__(self, obs):
        assert obs.shape[0] == 1
        self.calls += 1
        chunk = self.rng.uniform(-1, 1, self.shape).astype(np.float32)
        self.chunks.append(chunk)
        return torch.as_tensor(chunk.reshape(1, -1))


def replay_with_reference(task, collector, policy, n, global_step, episodes=None):
    """Runs n collector steps and the same actions in a second env reset with the collector's seed; returns the
    reference transitions (obs, action, reward, next_obs, terminated, truncated). The episodes the collector reports
    finished go to `episodes` as (global step, stats)."""
    ref_env, ref, obs = task.make_env(), [], None
    for i in range(n):
        before = task.train.size
        episode = collector.step(policy, global_step + i)
        if episode is not None and episodes is not None:
            episodes.append((global_step + i, episode))
        assert task.train.size == before + 1 and collector.steps == i + 1  # exactly one transition per env step
        if obs is None:
            obs, _ = ref_env.reset(seed=collector.seed + 3000 + global_step) if i == 0 else ref_env.reset()
        a = task.train.actions[task.train.size - 1].numpy()
        nxt, r, term, trunc, _ = ref_env.step(a)
        ref.append((obs, a, r, nxt, term, trunc))
        obs = None if term or trunc else nxt
    return ref


def check_rows(task, start, ref, shift=0.0):
    for j, (obs, a, r, nxt, term, trunc) in enumerate(ref):
        i = start + j
        np.testing.assert_allclose(task.train.observations[i].numpy(), obs, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(task.train.next_observations[i].numpy(), nxt, rtol=1e-6, atol=1e-6)
        assert task.train.rewards[i].item() == pytest.approx(r + shift)
        assert task.train.masks[i].item() == 1.0 - float(term)  # a time limit still bootstraps
        assert task.train.terminals[i].item() == float(term or trunc)


@pytest.mark.slow
def test_ogbench_env_step_stores_one_transition_with_official_semantics(ogbench_dir, tmp_path):
    task = common.load_task(CUBE_ID, CPU)
    n = task.train.size
    offline = task.train.observations[:n].clone()
    online = common.Collector(task, 250, 2_000_000, 0)
    assert len(task.train.observations) == n + 250  # no rows that no online step can fill
    policy, episodes = Recorder(task.train.actions.shape[1]), []
    ref = replay_with_reference(task, online, policy, 205, global_step=11, episodes=episodes)
    check_rows(task, n, ref)  # OGBench: the env's reward as it is, like the official loop
    assert torch.equal(task.train.observations[:n], offline)  # the dataset rows are untouched
    ends = task.train.terminals[n:task.train.size].nonzero().flatten().tolist()
    assert ends == [199]  # cube-single truncates after 200 steps: one episode end
    assert task.train.masks[n + 199].item() == 1.0 and policy.calls == 205  # h = 1: one call per env step
    # the next episode starts from a reset observation, not from the last one
    assert not torch.equal(task.train.observations[n + 200], task.train.next_observations[n + 199])
    # the finished episode is reported once, at its last global step (11 + 199)
    assert [(step, ep["episodic_length"], ep["success"]) for step, ep in episodes] == [(210, 200, 0.0)]
    assert episodes[0][1]["episodic_return"] == pytest.approx(sum(t[2] for t in ref[:200]))


def test_minari_env_step_terminal_and_antmaze_reward_shift(minari_dir):  # noqa: F811
    env = gym.make("InvertedPendulum-v5")
    env.action_space.seed(0)
    build_minari("mujoco/invertedpendulum/tiny-v0", env, 2, 30)
    task = common.load_task("mujoco/invertedpendulum/tiny-v0", CPU)
    n = task.train.size
    online = common.Collector(task, 60, 2_000_000, 0)
    ref = replay_with_reference(task, online, Recorder(1, seed=1), 60, global_step=1)
    assert any(t[4] for t in ref)  # the pendulum falls: a true terminal, mask 0
    check_rows(task, n, ref)

    import gymnasium_robotics  # noqa: F401 (registers AntMaze)

    maze = [[1, 1, 1, 1, 1], [1, "r", 0, 0, 1], [1, 1, 1, 0, 1], [1, "g", 0, 0, 1], [1, 1, 1, 1, 1]]
    env = gym.make("AntMaze_UMaze-v4", continuing_task=True, reset_target=False, max_episode_steps=20)
    eval_env = gym.make("AntMaze_UMaze-v4", maze_map=maze, continuing_task=True, max_episode_steps=20)
    build_minari("D4RL/antmaze/tiny-v1", env, 2, 20, eval_env=eval_env)
    task = common.load_task("D4RL/antmaze/tiny-v1", CPU)
    n = task.train.size
    online = common.Collector(task, 25, 2_000_000, 0)
    ref = replay_with_reference(task, online, Recorder(8), 25, global_step=1)
    check_rows(task, n, ref, shift=-1.0)  # D4RL AntMaze: reward - 1 online, as offline (FQL's main.py)
    assert task.train.terminals[n + 19].item() == 1.0 and task.train.masks[n + 19].item() == 1.0


def test_chunks_run_open_loop_with_one_policy_call_each(minari_dir):  # noqa: F811
    env = gym.make("InvertedPendulum-v5")
    env.action_space.seed(0)
    build_minari("mujoco/invertedpendulum/tiny-v0", env, 2, 30)
    task = common.load_task("mujoco/invertedpendulum/tiny-v0", CPU)
    n, h = task.train.size, 3
    online = common.Collector(task, 100, 2_000_000, 0, horizon=h)
    policy = Recorder(1, horizon=h)
    calls, stored = [], 0
    for i in range(40):
        before = policy.calls
        online.step(policy, i + 1)
        calls.append(policy.calls - before)
        stored += 1
        assert task.train.size == n + stored  # every executed step of a chunk is stored
    # the chunk's actions are executed in order; a new call comes every h steps or right after an episode end
    actions, terms = task.train.actions[n:n + 40, 0].numpy(), task.train.terminals[n:n + 40].numpy()
    k, pos = -1, h
    for i in range(40):
        if pos == h or (i > 0 and terms[i - 1]):
            assert calls[i] == 1, i
            k, pos = k + 1, 0
        else:
            assert calls[i] == 0, i
        assert actions[i] == pytest.approx(policy.chunks[k][pos, 0]), i
        pos += 1
    assert terms.any() and policy.calls < 40


def test_online_steps_refuse_the_bandit():
    with pytest.raises(ValueError, match="--online-steps needs an environment.*bandit-4gaussian"):
        common.Collector(common.load_task("bandit-4gaussian", CPU), 10, 100, 0)


def test_balanced_sampling_draws_half_from_each_part():
    n = 100
    data = {k: np.zeros((n, 2)) if "obs" in k or k == "actions" else np.zeros(n) for k in common.Dataset.KEYS}
    task = common.Task("x", common.Dataset.from_numpy(data, CPU), None, lambda: gym.make("Pendulum-v1"))
    online = common.Collector(task, 50, 1000, 0, balanced=True)
    for i in range(10):
        online.step(lambda o: torch.zeros(1, 1), i + 1)
    b = online.sample(64)
    assert (b["observations"].abs().sum(1) > 0).sum() == 32  # Pendulum observations are never all zero
    uniform = common.Collector(common.Task("x", common.Dataset.from_numpy(data, CPU), None,
                                           lambda: gym.make("Pendulum-v1")), 50, 1000, 0)
    for i in range(10):
        uniform.step(lambda o: torch.zeros(1, 1), i + 1)
    assert (uniform.sample(640)["observations"].abs().sum(1) > 0).sum() < 150  # ~ 640 * 10 / 110


def test_full_replay_overwrites_the_oldest_rows():
    n = 20
    data = {k: np.zeros((n, 3)) if "obs" in k else np.zeros((n, 1)) if k == "actions" else np.zeros(n)
            for k in common.Dataset.KEYS}
    task = common.Task("x", common.Dataset.from_numpy(data, CPU), None, lambda: gym.make("Pendulum-v1"))
    online = common.Collector(task, 30, 25, 0)  # official: max(buffer_size, N + 1) = 25 rows
    for i in range(30):
        online.step(lambda o: torch.ones(1, 1) * 0.5, i + 1)
    assert task.train.size == 25 and len(task.train.observations) == 25
    assert (task.train.actions[:, 0] == 0.5).sum() == 25  # 5 online rows, then 25 more wrapped over the oldest


# ---------------------------------------------------------------------------------------------------- scripts
def adam_steps(ckpt):
    return max(int(s["step"]) for s in ckpt["optimizer"]["state"].values())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fql", "qam", "dfp"])
def test_updates_start_after_the_warm_up(name, ogbench_dir, tmp_path, monkeypatch):
    mod, args = tiny_args(name, env_id=MAZE_ID, offline_steps=10, online_steps=30, start_training=12,
                          eval_interval=1000, runs_dir=str(tmp_path))
    steps_seen, real = [], mod.update

    def counting(nets, opt, batch, *rest, **kw):
        steps_seen.append(len(steps_seen))
        return real(nets, opt, batch, *rest, **kw)

    monkeypatch.setattr(mod, "update", counting)
    mod.main(args)
    ckpt = runfiles.load_checkpoint(f"{run_dir_of(tmp_path)}/{name}.pt", name, CPU)
    # 10 offline updates, none for the first 11 online env steps, then one per env step from the 12th: 19
    assert len(steps_seen) == 10 + 30 - 12 + 1 and adam_steps(ckpt) == len(steps_seen)
    assert ckpt["step"] == 40 and ckpt["online"]["steps"] == 30


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fql", "dfp"])
def test_resume_mid_online_keeps_the_transitions_and_the_step(name, ogbench_dir, tmp_path):
    mod, args = tiny_args(name, env_id=MAZE_ID, offline_steps=10, online_steps=25, eval_interval=1000,
                          runs_dir=str(tmp_path / "a"))
    mod.main(args)
    ckpt = f"{run_dir_of(tmp_path / 'a')}/{name}.pt"
    first = runfiles.load_checkpoint(ckpt, name, CPU)
    assert first["step"] == 35 and first["online"]["steps"] == 25
    n = first["online"]["lo"]
    assert first["online"]["size"] == n + 25 and len(first["online"]["rows"]["observations"]) == 25
    mod.main(mod.Args(**{**vars(args), "online_steps": 40, "runs_dir": str(tmp_path / "b"), "resume": ckpt}))
    d = run_dir_of(tmp_path / "a")  # the run continues in its own folder
    assert [r["step"] for r in csv.DictReader(open(f"{d}/eval.csv"))] == ["1", "10", "35", "50"]  # 36 to 50 added
    last = runfiles.load_checkpoint(f"{d}/{name}.pt", name, CPU)
    assert last["step"] == 50 and last["online"]["steps"] == 40 and last["online"]["size"] == n + 40
    for k, v in first["online"]["rows"].items():  # the 25 stored transitions came back, 15 new ones follow
        assert torch.equal(last["online"]["rows"][k][:25], v), k
    # a fresh episode after the resume: row 26 starts from a reset, not from row 25's next observation
    rows = last["online"]["rows"]
    assert not torch.equal(rows["observations"][25], rows["next_observations"][24])


@pytest.mark.slow
def test_online_episodes_go_to_online_csv_and_a_resume_drops_rows_past_its_checkpoint(ogbench_dir, tmp_path):
    """plot.py's offline-to-online table reads online.csv: one row per collected episode at its global step."""
    mod, args = tiny_args("fql", env_id=CUBE_ID, offline_steps=2, online_steps=210, start_training=205,
                          eval_interval=1000, runs_dir=str(tmp_path))
    mod.main(args)
    d = run_dir_of(tmp_path)
    rows = list(csv.DictReader(open(f"{d}/online.csv")))
    assert [(r["step"], r["episodic_length"]) for r in rows] == [("202", "200")]  # 2 offline + 200 env steps
    assert set(rows[0]) == {"step", "episodic_return", "episodic_length", "success"}
    before = open(f"{d}/online.csv").read()
    runfiles.append_csv(Path(d) / "online.csv", 213, {k: v for k, v in rows[0].items() if k != "step"})  # killed
    mod.main(mod.Args(**{**vars(args), "online_steps": 215, "resume": f"{d}/fql.pt"}))  # from its step-212 checkpoint
    assert open(f"{d}/online.csv").read() == before


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_script_runs_offline_then_online(name, ogbench_dir, tmp_path, capsys):
    mod, args = tiny_args(name, env_id=MAZE_ID, offline_steps=10, online_steps=200, start_training=50,
                          eval_interval=1000, log_interval=40, runs_dir=str(tmp_path))
    result = mod.main(args)
    out = capsys.readouterr().out
    assert "10 offline steps + 200 online env steps" in out and "offline done at step 10; online for 200" in out
    d = run_dir_of(tmp_path)
    assert [r["step"] for r in csv.DictReader(open(f"{d}/eval.csv"))] == ["1", "10", "210"]  # offline + online steps
    assert "success_rate" in result
    ckpt = runfiles.load_checkpoint(f"{d}/{name}.pt", name, CPU)
    assert ckpt["step"] == 210 and ckpt["online"]["steps"] == 200 and ckpt["online"]["size"] == 800 + 200
    assert adam_steps(ckpt) == 10 + 200 - 50 + 1


@pytest.mark.slow
def test_dfp_switch_resets_pi_old_and_turns_top_k_on(ogbench_dir, tmp_path, monkeypatch):
    """The main O2O setting: L_BC alone offline (--topk-start = offline steps), then pi_old <- theta and L_topK."""
    mod, args = tiny_args("dfp", env_id=MAZE_ID, offline_steps=8, topk_start=8, online_steps=6, start_training=1,
                          eval_interval=1000, lr=1e-2, runs_dir=str(tmp_path))
    seen, real = [], mod.update

    def recording(nets, opt, batch, args_, topk_on=True, **kw):
        same = all(torch.equal(a, b) for a, b in zip(nets["actor_drift"].parameters(),
                                                      nets["actor_drift_ema"].parameters()))
        out = real(nets, opt, batch, args_, topk_on=topk_on, **kw)
        seen.append((topk_on, same, out["topk_drift_loss"].item()))
        return out

    monkeypatch.setattr(mod, "update", recording)
    mod.main(args)
    assert [s[0] for s in seen] == [False] * 8 + [True] * 6
    assert all(s[2] == 0.0 for s in seen[:8]) and all(s[2] > 0.0 for s in seen[8:])  # L_topK zero before it
    assert not any(s[1] for s in seen[1:8]) and seen[8][1]  # pi_old had drifted from theta; equal right after


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [True, False])
def test_deflow_frozen_flow_gets_no_online_update(frozen, ogbench_dir, tmp_path, monkeypatch):
    mod, args = tiny_args("deflow", env_id=MAZE_ID, offline_steps=6, online_steps=8, eval_interval=1000,
                          fix_bc_flow_online=frozen, runs_dir=str(tmp_path))
    at_switch, real = {}, mod.update

    def recording(nets, opt, batch, args_, train_flow=True, **kw):
        if recording.calls == 6:  # the first online update: the state the offline phase left
            at_switch.update({k: v.clone() for k, v in nets.state_dict().items()})
        recording.calls += 1
        return real(nets, opt, batch, args_, train_flow=train_flow, **kw)

    recording.calls = 0
    monkeypatch.setattr(mod, "update", recording)
    mod.main(args)
    end = runfiles.load_checkpoint(f"{run_dir_of(tmp_path)}/deflow.pt", "deflow", CPU)["nets"]
    flow = [k for k in end if k.startswith("actor_bc_flow.")]
    assert flow and recording.calls == 14
    assert all(torch.equal(end[k], at_switch[k]) for k in flow) == frozen  # the flow moves online only unfrozen
    assert not all(torch.equal(end[k], at_switch[k]) for k in end if k.startswith("refine_onestep_flow."))
    alpha = [k for k in end if k.startswith("log_alpha")]
    assert alpha and not all(torch.equal(end[k], at_switch[k]) for k in alpha)  # alpha keeps adapting
