"""runfiles.load_policy: any script's checkpoint back as its evaluation policy, observations -> actions."""
import dataclasses
import importlib

import pytest
import torch

import conftest
import plumbing
import runfiles
from conftest import MAZE_ID, run_dir_of

SCRIPTS = ("fql", "driftql", "dfp", "qam", "deflow")
# settings whose evaluation policy differs from the plain one-sample policy: best-of-3 (DFP), chunks of 2 (DFP, QAM)
EXTRA = dict(dfp=dict(eval_bon=3, horizon=2), qam=dict(horizon=2, num_qs=2, flow_steps=2))
# chunks of 2 need episodes longer than the bandit's single step (training refuses the bandit with --horizon 2):
# DFP and QAM train on the regenerated pointmaze, whose observations and actions are 2-D as well
CHUNKED = dict(env_id=MAZE_ID, eval_episodes=1)


def tiny_args(mod, **kw):
    return conftest.tiny_args(mod, **{**EXTRA.get(mod.__name__, {}), **kw})


def actions_of(policy, obs, calls=4, seed=5):
    """`calls` consecutive calls of the policy under one torch seed (a QAM chunk of 2 spans two calls)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.stack([policy(obs) for _ in range(calls)])


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_loaded_policy_acts_as_the_trained_one(name, tmp_path, monkeypatch, ogbench_dir):
    mod = importlib.import_module(name)
    obs, trained = torch.randn(7, 2), {}
    real_save = plumbing.Run.save

    def save_and_remember_actions(run, step):
        real_save(run, step)
        nets, args = run.nets, run.args
        trained[step] = actions_of(mod.make_policy(nets, args), obs)

    monkeypatch.setattr(plumbing.Run, "save", save_and_remember_actions)
    mod.main(tiny_args(mod, offline_steps=4, runs_dir=str(tmp_path), **(CHUNKED if name in ("dfp", "qam") else {})))
    ckpt = f"{run_dir_of(tmp_path)}/{name}.pt"
    payload = torch.load(ckpt, weights_only=True)
    assert (payload["obs_dim"], payload["action_dim"]) == (2, 2)
    policy = runfiles.load_policy(ckpt, "cpu")
    loaded = actions_of(policy, obs)
    assert loaded.shape == (4, 7, 2)
    assert torch.equal(loaded, trained[4]) and not torch.equal(loaded, trained[1])
    if name in ("dfp", "qam"):  # open-loop chunks: the second call of a chunk ignores the observation; reset() replans
        policy.reset()
        with torch.random.fork_rng():
            torch.manual_seed(5)
            first, second = policy(obs), policy(obs * 0 + 9)
        assert torch.equal(first, loaded[0]) and torch.equal(second, loaded[1])


def test_a_checkpoint_whose_flags_the_script_lacks_gets_one_line(tmp_path):
    fql = importlib.import_module("fql")
    args = tiny_args(fql)
    payload = {"algo": "fql", "step": 1, "args": {**dataclasses.asdict(args), "gone_flag": 1}, "obs_dim": 2,
               "action_dim": 2, "nets": fql.make_nets(args, 2, 2).state_dict(),
               "optimizer": {"state": {}, "param_groups": []}, "rng": torch.get_rng_state(), "cuda_rng": []}
    torch.save(payload, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="cannot rebuild fql.py from it .*gone_flag"):
        runfiles.load_policy(tmp_path / "x.pt")
