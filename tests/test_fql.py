"""FQL: the math, the gradient routing of the official code, and end-to-end runs on regenerated data."""
import csv
import dataclasses
import functools
import glob

import numpy as np
import pytest
import torch

import common
import conftest
import fql
import runfiles
from conftest import A, B, D, MAZE_ID, assert_batched_critic, grads_of, run_dir_of

small_args = functools.partial(conftest.small_args, fql)
nets_for = functools.partial(conftest.seeded_nets, fql)
batch = conftest.random_batch


# ---------------------------------------------------------------------------------------------------- math
class TrueVelocity(torch.nn.Module):
    """v(s, x_t, t) = (a - x_t) / (1 - t): the exact velocity of the straight path towards a."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, obs, x, t):
        return (self.target - x) / (1 - t)


def test_flow_bc_loss_is_zero_for_the_true_velocity_and_positive_otherwise():
    a, x0, t = torch.rand(B, A) * 2 - 1, torch.randn(B, A), torch.rand(B, 1) * 0.9
    assert fql.flow_bc_loss(TrueVelocity(a), torch.zeros(B, D), a, x0, t) == pytest.approx(0.0, abs=1e-10)
    assert fql.flow_bc_loss(TrueVelocity(a + 0.1), torch.zeros(B, D), a, x0, t) > 1e-3


def test_euler_integration_of_a_constant_field_is_exact_and_only_the_end_is_clipped():
    c = torch.tensor([[0.3, -0.2, 0.05]])
    z = torch.tensor([[0.1, 0.4, -0.5]])
    out = fql.euler_integrate(lambda s, x, t: c.expand_as(x), None, z, steps=10)
    torch.testing.assert_close(out, z + c, rtol=0, atol=1e-6)
    # a field that leaves the box and comes back: per-step clipping would end elsewhere
    times = []
    field = lambda s, x, t: (times.append(t[0, 0].item()), torch.where(t < 0.5, 4.0, -4.0) * torch.ones_like(x))[1]
    out = fql.euler_integrate(field, None, torch.zeros(1, 1), steps=10)
    assert out.item() == pytest.approx(0.0, abs=1e-6)
    assert times == pytest.approx([k / 10 for k in range(10)])


def test_td_target_bootstraps_on_masks_and_aggregates():
    q = torch.tensor([[1.0, 4.0], [3.0, 2.0]])
    torch.testing.assert_close(fql.aggregate_q(q, "mean"), torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(fql.aggregate_q(q, "min"), torch.tensor([1.0, 2.0]))
    y = fql.td_target(torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([10.0, 10.0]), 0.9)
    torch.testing.assert_close(y, torch.tensor([8.0, 0.0]))


def test_critic_loss_uses_masks_not_terminals():
    args = small_args()
    nets, b = nets_for(args), batch()
    torch.manual_seed(1)
    base = fql.losses(nets, b, args)["critic_loss"]
    torch.manual_seed(1)
    flipped_terminals = fql.losses(nets, {**b, "terminals": 1 - b["terminals"]}, args)["critic_loss"]
    torch.manual_seed(1)
    flipped_masks = fql.losses(nets, {**b, "masks": 1 - b["masks"]}, args)["critic_loss"]
    assert base == flipped_terminals and base != flipped_masks


def test_soft_update():
    src, dst = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    w0 = dst.weight.detach().clone()
    fql.soft_update_(dst, src, 0.25)
    torch.testing.assert_close(dst.weight, 0.75 * w0 + 0.25 * src.weight)
    fql.soft_update_(dst, src, 1.0)
    torch.testing.assert_close(dst.weight, src.weight)


def test_networks_follow_the_official_architecture():
    nets = fql.make_nets(fql.Args(), 29, 8)
    assert_batched_critic(nets["critic"], 2, 29 + 8)
    assert [type(m).__name__ for m in nets["actor_onestep_flow"].net].count("LayerNorm") == 0
    assert nets["actor_bc_flow"].net[0].in_features == 29 + 8 + 1 and nets["actor_onestep_flow"].net[0].in_features == 37
    assert all(float(m.bias.abs().max()) == 0 for m in nets.modules() if isinstance(m, torch.nn.Linear))
    w = nets["critic"].weights[0][0]  # Xavier-uniform bound sqrt(6 / (fan_in + fan_out))
    assert float(w.abs().max()) <= np.sqrt(6 / (37 + 512)) and float(w.std()) == pytest.approx(np.sqrt(2 / 549), 0.05)
    assert not any(p.requires_grad for p in nets["target_critic"].parameters())


# ---------------------------------------------------------------------------------------------------- gradient routing
def test_q_term_reaches_only_the_one_step_actor():
    args = small_args()
    nets = nets_for(args)
    g = grads_of(fql.losses(nets, batch(), args)["q_loss"], nets)
    assert g["actor_onestep_flow"] > 0
    assert g["critic"] == 0 and g["actor_bc_flow"] == 0 and g["target_critic"] == 0


def test_distillation_target_carries_no_gradient():
    args = small_args()
    nets = nets_for(args)
    g = grads_of(fql.losses(nets, batch(), args)["distill_loss"], nets)
    assert g["actor_onestep_flow"] > 0 and g["actor_bc_flow"] == 0 and g["critic"] == 0


def test_actor_loss_leaves_the_critic_untouched_and_critic_loss_the_actor():
    args = small_args()
    nets = nets_for(args)
    out = fql.losses(nets, batch(), args)
    g = grads_of(out["actor_loss"], nets)
    assert g["critic"] == 0 and g["actor_onestep_flow"] > 0 and g["actor_bc_flow"] > 0
    g = grads_of(fql.losses(nets, batch(), args)["critic_loss"], nets)
    assert g["critic"] > 0 and g["actor_onestep_flow"] == 0 and g["actor_bc_flow"] == 0


def test_normalized_q_loss_is_scale_free():
    args = small_args(normalize_q_loss=True)
    nets = nets_for(args)

    def q_loss():
        torch.manual_seed(3)
        return fql.losses(nets, batch(), args)["q_loss"].item()

    mixed = q_loss()  # Q of both signs at init: -mean(Q) / mean|Q| is strictly inside (-1, 1)
    with torch.no_grad():
        nets["critic"].biases[-1].sub_(50.0)  # all Q < 0, as with OGBench rewards: the normalised loss is exactly 1
    assert abs(mixed) < 0.99 and q_loss() == pytest.approx(1.0)
    with torch.no_grad():
        nets["critic"].weights[-1].mul_(0.5)
        nets["critic"].biases[-1].add_(20.0)  # still all negative, different scale
    assert q_loss() == pytest.approx(1.0)
    args = small_args(normalize_q_loss=False)
    assert q_loss() > 20


def test_update_moves_the_target_only_by_polyak_from_the_pre_update_critic():
    args = small_args(tau=0.1)
    nets = nets_for(args)
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=1e-2)
    critic_before = [p.detach().clone() for p in nets["critic"].parameters()]
    target_before = [p.detach().clone() for p in nets["target_critic"].parameters()]
    fql.update(nets, opt, batch(), args)
    for c0, t0, t1, c1 in zip(critic_before, target_before, nets["target_critic"].parameters(),
                              nets["critic"].parameters()):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * c0)
        assert not torch.equal(c1, c0)


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_end_to_end_on_regenerated_pointmaze(ogbench_dir, tmp_path):
    args = small_args(env_id=MAZE_ID, offline_steps=200, eval_interval=100, eval_episodes=2, log_interval=50,
                      device="cpu", runs_dir=str(tmp_path), eval_bc_flow=True)
    result = fql.main(args)
    assert {"success_rate", "episodic_return", "bc_flow_success_rate"} <= set(result)
    d = run_dir_of(tmp_path)
    rows = list(csv.DictReader(open(f"{d}/eval.csv")))
    assert [r["step"] for r in rows] == ["1", "100", "200"]
    assert glob.glob(f"{d}/events.out.tfevents.*")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(d)
    ea.Reload()
    assert {"losses/critic_loss", "losses/distill_loss", "eval/success_rate", "charts/SPS"} <= set(ea.Tags()["scalars"])
    # the checkpoint reloads to the same actions
    payload = runfiles.load_checkpoint(f"{d}/fql.pt", "fql", torch.device("cpu"))
    assert payload["step"] == 200
    nets = fql.make_nets(fql.Args(**{**payload["args"], "actor_hidden_dims": (32, 32), "value_hidden_dims": (32, 32)}),
                         2, 2)
    nets.load_state_dict(payload["nets"])
    fresh = fql.make_nets(args, 2, 2)
    obs = torch.randn(7, 2)
    torch.manual_seed(5)
    a1 = fql.act(nets, obs, args)
    torch.manual_seed(5)
    a2 = fql.act(nets, obs, args)
    torch.manual_seed(5)
    assert torch.equal(a1, a2) and not torch.equal(a1, fql.act(fresh, obs, args))
    with pytest.raises(ValueError, match="written by fql.py, not driftql.py"):
        runfiles.load_checkpoint(f"{d}/fql.pt", "driftql", torch.device("cpu"))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_update = fql.update
    calls = {"n": 0}

    def poisoned(nets, opt, b, args, **kw):
        calls["n"] += 1
        out = real_update(nets, opt, b, args, **kw)
        if calls["n"] >= 61:
            out["total_loss"] = out["total_loss"] * float("nan")
        return out

    monkeypatch.setattr(fql, "update", poisoned)
    args = small_args(env_id="bandit-4gaussian", offline_steps=200, eval_interval=50, log_interval=100,
                      device="cpu", runs_dir=str(tmp_path))
    with pytest.raises(FloatingPointError, match="step 61.*last good checkpoint"):
        fql.main(args)
    assert runfiles.load_checkpoint(f"{run_dir_of(tmp_path)}/fql.pt", "fql", torch.device("cpu"))["step"] == 50


@pytest.mark.slow
def test_bad_flag_value_is_refused_with_the_choices():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "fql.py", "--q-agg", "median"], capture_output=True, text=True,
                       cwd=common.__file__.rsplit("/", 1)[0])
    assert r.returncode != 0 and "mean" in r.stderr and "min" in r.stderr


@pytest.mark.slow
def test_bandit_samples_move_to_the_best_modes(tmp_path):
    args = small_args(env_id="bandit-4gaussian", offline_steps=2000, eval_interval=2000, device="cpu",
                      runs_dir=str(tmp_path))
    args = dataclasses.replace(args, actor_hidden_dims=(64, 64), value_hidden_dims=(64, 64))
    out = fql.main(args)
    rows = list(csv.DictReader(open(f"{run_dir_of(tmp_path)}/eval.csv")))
    first = {k: float(v) for k, v in rows[0].items()}
    best = out["frac_right"] + out["frac_bottom"]
    # FQL moves its samples from the initial blob at the origin into the two tied best modes (with the bridge
    # between them that DriftQL Fig. 1 shows for FQL); almost none go to the worse top and left modes
    assert best > 0.1 and out["frac_top"] + out["frac_left"] < 0.02
    assert out["episodic_return"] > first["episodic_return"] + 10
