"""benchmarks/bf16_error.py, the measurement of where bf16 moves FQL's and DriftQL's update, on regenerated data."""
import sys
from pathlib import Path

import pytest
import torch

import common
import conftest
from conftest import MAZE_ID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bf16_error  # noqa: E402


@pytest.mark.parametrize("algo", ["fql", "driftql"])
def test_bf16_moves_every_quantity_a_little_and_fp32_against_itself_not_at_all(algo, ogbench_dir, tmp_path,
                                                                                  monkeypatch):
    """bf16 moves every quantity an actor computes by a small nonzero amount and leaves the critic's own outputs
    exactly as in fp32 (the critics run in fp32 under bf16), while the same measurement with autocast off on both
    sides gives exactly 0: the two sides share weights, batch and noise exactly."""
    mod = __import__(algo)
    margs = mod.Args(env_id=MAZE_ID, actor_hidden_dims=(16,), value_hidden_dims=(16,), device="cpu", batch_size=32)
    task = common.load_task(MAZE_ID, torch.device("cpu"))
    torch.manual_seed(0)
    nets = mod.make_nets(margs, task.train.observations.shape[1], task.train.actions.shape[1])
    batch = task.train.sample(32)
    pairs = bf16_error.measure(mod, algo, nets, batch, margs, noise_seed=3)
    errors = {k: bf16_error.rel(*v) for k, v in pairs.items()}
    critic_only = {"critic Q(s, a) at the data's actions", "action contrast Q(s, a) - Q(s, pi(s))",
                   "action gradient of Q at the policy's actions"}
    assert len(errors) == 9 and critic_only < set(errors), errors
    assert all(errors[k] == 0 for k in critic_only) and all(0 < e < 0.2 for k, e in errors.items()
                                                            if k not in critic_only), errors
    monkeypatch.setattr(bf16_error.plumbing, "autocast", lambda precision, device: torch.autocast("cpu", enabled=False))
    pairs = bf16_error.measure(mod, algo, nets, batch, margs, noise_seed=3)
    assert all(bf16_error.rel(a, b) == 0 for a, b in pairs.values())
    monkeypatch.undo()
    text = bf16_error.main(bf16_error.Args(algo=algo, env_id=MAZE_ID, warmup_steps=2, batches=1, hidden=(16,),
                                           out=str(tmp_path / "t.md")))
    assert (tmp_path / "t.md").read_text() == text and "| critic gradient |" in text


def test_a_checkpoint_is_measured_at_its_own_weights_and_flags(ogbench_dir, tmp_path):
    """--checkpoint takes the run's flags (its 16-unit networks, not --hidden) and step, runs no warm-up, and refuses
    another script's checkpoint with one line."""
    import fql
    fql.main(fql.Args(env_id=MAZE_ID, actor_hidden_dims=(16,), value_hidden_dims=(16,), batch_size=16, device="cpu",
                      offline_steps=3, eval_interval=3, eval_episodes=1, precision="bf16", runs_dir=str(tmp_path)))
    ckpt = f"{conftest.run_dir_of(tmp_path)}/fql.pt"
    text = bf16_error.main(bf16_error.Args(algo="fql", checkpoint=ckpt, batches=1, hidden=(99,)))
    assert "16 networks, at " in text and "(step 3, trained in bf16)" in text and "| action contrast" in text
    with pytest.raises(common.UsageError, match="written by fql.py, not driftql.py"):
        bf16_error.main(bf16_error.Args(algo="driftql", checkpoint=ckpt, batches=1))


def test_a_chunked_checkpoint_is_refused_with_one_line(ogbench_dir, tmp_path):
    import fql
    fql.main(fql.Args(env_id=MAZE_ID, actor_hidden_dims=(16,), value_hidden_dims=(16,), batch_size=16, device="cpu",
                      offline_steps=2, eval_interval=2, eval_episodes=1, horizon=2, runs_dir=str(tmp_path)))
    with pytest.raises(common.UsageError, match="a chunked or best-of-n run"):
        bf16_error.main(bf16_error.Args(algo="fql", checkpoint=f"{conftest.run_dir_of(tmp_path)}/fql.pt", batches=1))


@pytest.mark.parametrize("flags", [dict(batches=0), dict(warmup_steps=-1)])
def test_a_measurement_of_nothing_is_refused_with_one_line(flags):
    with pytest.raises(common.UsageError, match="--batches 1 or more, --warmup-steps 0 or more"):
        bf16_error.main(bf16_error.Args(**flags))
