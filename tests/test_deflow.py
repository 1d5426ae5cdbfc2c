"""DeFlow: the action box, the Euler sampler, the gradient routing and the multiplier of the official code, the
constraint on a linear-Q toy, and an end-to-end run on regenerated data."""
import csv
import functools
import glob
import math

import pytest
import torch

import conftest
import deflow
import runfiles
from conftest import A, B, D, MAZE_ID, run_dir_of

small_args = functools.partial(conftest.small_args, deflow)
nets_for = functools.partial(conftest.seeded_nets, deflow)
batch = conftest.random_batch


def losses_at(nets, b, args, seed=3):
    torch.manual_seed(seed)
    return deflow.losses(nets, b, args)


def grads(loss, params):
    """d loss / d params with zeros where the loss does not depend on a parameter."""
    params = list(params)
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def assert_all_close(gs1, gs2, atol=1e-6):
    assert len(gs1) == len(gs2)
    for g1, g2 in zip(gs1, gs2):
        torch.testing.assert_close(g1, g2, rtol=0, atol=atol)


def last_linear(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]


class TrueVelocity(torch.nn.Module):
    """v(s, x_t, t) = (a - x_t) / (1 - t): the straight path towards a, seen from wherever x_t is."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, obs, x, t):
        return (self.target - x) / (1 - t)


# ---------------------------------------------------------------------------------------------------- box, sampler
def test_every_action_is_in_the_box_even_with_huge_network_outputs():
    args = small_args()
    nets = nets_for(args)
    with torch.no_grad():
        for name in ("actor_bc_flow", "refine_onestep_flow"):
            last_linear(nets[name]).weight.mul_(100)
    obs = torch.randn(64, D) * 3
    torch.manual_seed(0)
    base = deflow.euler_integrate(nets["actor_bc_flow"], obs, torch.randn(64, A), args.flow_steps)
    residual = nets["refine_onestep_flow"](obs, base)
    assert residual.abs().max() > 5  # the residual itself is unbounded: the box comes from the clip only
    for a in (base, deflow.act(nets, obs, args), deflow.sample_actions(nets, obs, 3)):
        assert a.shape == (64, A) and a.abs().max() <= 1.0
        assert (a.abs() == 1.0).any()  # the outputs really were pushed against the box
    recorded = []
    target = nets["target_critic"]
    nets["target_critic"] = type("Rec", (torch.nn.Module,), dict(
        forward=lambda self, s, a: (recorded.append(a), target(s, a))[1]))()
    out = deflow.losses(nets, batch(), args)
    (next_actions,) = recorded
    assert next_actions.abs().max() <= 1.0 and (next_actions.abs() == 1.0).any()
    assert out["distill_loss"] > 4  # D is taken on the unclipped residual (clipped moves are at most 2 per dim)


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_euler_is_exact_for_constant_and_straight_line_fields(steps):
    z = torch.tensor([[0.1, 0.4, -0.5], [0.9, -0.95, 0.0]])
    c = torch.tensor([[0.3, -0.2, 0.05]])
    out = deflow.euler_integrate(lambda s, x, t: c.expand_as(x), None, z, steps)
    torch.testing.assert_close(out, (z + c).clamp(-1, 1), rtol=0, atol=1e-6)
    assert out[1, 0] == 1.0  # 0.9 + 0.3 is clipped at the end
    # the exact velocity of the straight path to a target lands on it for any K; targets outside the box are clipped
    target = torch.tensor([[0.7, -0.3, 1.6], [-0.2, 0.5, -3.0]])
    out = deflow.euler_integrate(TrueVelocity(target), None, z, steps)
    torch.testing.assert_close(out, target.clamp(-1, 1), rtol=0, atol=1e-5)
    if steps == 1:  # K = 1 is one step of size 1 from v(s, z, 0)
        torch.testing.assert_close(deflow.euler_integrate(lambda s, x, t: x * (1 + t), None, z, 1),
                                   (2 * z).clamp(-1, 1))


# ---------------------------------------------------------------------------------------------------- gradient routing
def test_stop_gradients_each_network_is_trained_by_its_own_loss_only():
    args = small_args(delta=0.02)
    nets = nets_for(args)
    out = losses_at(nets, batch(), args)
    total = out["critic_loss"] + out["actor_loss"]
    flow = list(nets["actor_bc_flow"].parameters())
    critic = list(nets["critic"].parameters())
    refine = list(nets["refine_onestep_flow"].parameters())
    # (a) the flow: its BC loss alone; the refinement and Q losses never reach it through the base action
    assert_all_close(grads(total, flow), grads(out["bc_flow_loss"], flow))
    assert sum(float(g.abs().sum()) for g in grads(out["bc_flow_loss"], flow)) > 0
    # (b) the critic: its TD loss alone (critic frozen in the actor's Q term)
    assert_all_close(grads(total, critic), grads(out["critic_loss"], critic))
    assert all(float(g.abs().sum()) == 0 for g in grads(out["actor_loss"], critic))
    # (c) the target critic takes no gradient at all
    assert not any(p.requires_grad for p in nets["target_critic"].parameters())
    # (d) the refinement: nothing from the BC and TD losses, something from the actor loss
    assert all(float(g.abs().sum()) == 0 for g in grads(out["bc_flow_loss"] + out["critic_loss"], refine))
    assert sum(float(g.abs().sum()) for g in grads(out["actor_loss"], refine)) > 0
    # (e) log alpha: exactly -(D - delta), and from nothing but its own loss
    (g_alpha,) = grads(total, nets["log_alpha"].parameters())
    assert g_alpha.item() == pytest.approx(-(out["distill_loss"].item() - args.delta), rel=1e-6, abs=1e-9)
    (g_pen,) = grads(out["actor_loss"] - out["alpha_loss"], nets["log_alpha"].parameters())
    assert g_pen.item() == 0


def test_refinement_gradient_is_q_term_plus_alpha_times_d():
    args = small_args()
    nets = nets_for(args)
    with torch.no_grad():
        nets["log_alpha"].value.fill_(math.log(7.0))
    out = losses_at(nets, batch(), args)
    refine = list(nets["refine_onestep_flow"].parameters())
    expect = [gq + 7.0 * gd for gq, gd in zip(grads(out["q_loss"], refine), grads(out["distill_loss"], refine))]
    assert_all_close(grads(out["actor_loss"], refine), expect, atol=1e-5)
    assert out["alpha_value"].item() == pytest.approx(7.0, rel=1e-6)


def test_critic_constant_in_the_action_gives_zero_refinement_gradient():
    args = small_args()
    nets = nets_for(args)
    with torch.no_grad():
        nets["critic"].weights[0][:, D:] = 0  # Q(s, a) no longer depends on a (and is not 0: finite normaliser)
    out = losses_at(nets, batch(), args)
    refine = list(nets["refine_onestep_flow"].parameters())
    assert out["q"].abs().item() > 0
    assert all(float(g.abs().max()) == 0 for g in grads(out["q_loss"], refine))
    assert_all_close(grads(out["actor_loss"], refine), [out["alpha_value"] * g for g in grads(out["distill_loss"],
                                                                                              refine)])


def test_zeroed_last_layer_gives_the_flow_action_bitwise():
    args = small_args()
    nets = nets_for(args)
    obs = torch.randn(32, D)
    torch.manual_seed(1)
    flow_actions = deflow.act_bc_flow(nets, obs, args.flow_steps)
    torch.manual_seed(1)
    assert not torch.equal(deflow.act(nets, obs, args), flow_actions)  # the untrained residual is not zero
    with torch.no_grad():
        last_linear(nets["refine_onestep_flow"]).weight.zero_()
        last_linear(nets["refine_onestep_flow"]).bias.zero_()
    torch.manual_seed(1)
    assert torch.equal(deflow.act(nets, obs, args), flow_actions)


def test_act_runs_flow_steps_euler_steps_then_one_refinement():
    args = small_args(flow_steps=3)
    nets = nets_for(args)
    obs = torch.randn(8, D)
    torch.manual_seed(2)
    a = deflow.act(nets, obs, args)
    torch.manual_seed(2)
    z = torch.randn(8, A)
    base = deflow.euler_integrate(nets["actor_bc_flow"], obs, z, 3)
    torch.testing.assert_close(a, (base + nets["refine_onestep_flow"](obs, base)).clamp(-1, 1), rtol=0, atol=0)
    base10 = deflow.euler_integrate(nets["actor_bc_flow"], obs, z, 10)
    assert not torch.equal(a, (base10 + nets["refine_onestep_flow"](obs, base10)).clamp(-1, 1))


class Recorder(torch.nn.Module):
    """Wraps the critic (its parameters stay its own) and records every action it is asked about."""

    def __init__(self, critic):
        super().__init__()
        self.inner, self.actions = critic, []

    def forward(self, obs, a):
        self.actions.append(a.detach())
        return self.inner(obs, a)


def test_actor_q_term_uses_the_ensemble_mean_even_with_q_agg_min():
    args = small_args(q_agg="min")
    nets = nets_for(args)
    nets["critic"] = Recorder(nets["critic"])
    b = batch()
    out = losses_at(nets, b, args)
    data_actions, actor_actions = nets["critic"].actions  # the TD loss call, then the actor's call
    assert torch.equal(data_actions, b["actions"]) and actor_actions.abs().max() <= 1
    with torch.no_grad():
        qs = nets["critic"].inner(b["observations"], actor_actions)
    assert out["q"].item() == pytest.approx(qs.mean().item(), rel=1e-6)
    assert abs(qs.amin(0).mean().item() - qs.mean().item()) > 1e-3


def test_td_target_uses_the_refined_action_at_the_next_state():
    args = small_args()
    nets = nets_for(args)
    recorded = []
    target = nets["target_critic"]
    nets["target_critic"] = type("Rec", (torch.nn.Module,), dict(
        forward=lambda self, s, a: (recorded.append((s, a)), target(s, a))[1]))()
    b = batch()
    losses_at(nets, b, args, seed=4)
    torch.manual_seed(4)
    expect = deflow.sample_actions(nets, b["next_observations"], args.flow_steps)
    torch.manual_seed(4)
    flow_only = deflow.act_bc_flow(nets, b["next_observations"], args.flow_steps)
    ((s, a),) = recorded
    assert torch.equal(s, b["next_observations"]) and torch.equal(a, expect) and not torch.equal(a, flow_only)


def test_td_target_aggregates_with_q_agg_and_bootstraps_on_masks():
    q = torch.tensor([[1.0, 4.0], [3.0, 2.0]])
    torch.testing.assert_close(deflow.aggregate_q(q, "mean"), torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(deflow.aggregate_q(q, "min"), torch.tensor([1.0, 2.0]))
    args = small_args(discount=0.0)
    nets = nets_for(args)
    b = batch()
    with torch.no_grad():  # discount 0: y = r, so a critic that outputs r has zero TD loss
        nets["critic"].weights[-1].zero_()
    out_far = losses_at(nets, {**b, "rewards": torch.zeros(B)}, args)["critic_loss"]
    assert out_far.item() == pytest.approx(0.0, abs=1e-12)
    args = small_args(discount=0.9)
    base = losses_at(nets, b, args)["critic_loss"]
    assert base != losses_at(nets, {**b, "masks": 1 - b["masks"]}, args)["critic_loss"]
    assert base == losses_at(nets, {**b, "terminals": 1 - b["terminals"]}, args)["critic_loss"]


# ---------------------------------------------------------------------------------------------------- multiplier, Q term
@pytest.mark.parametrize("delta, sign", [(1e6, -1.0), (0.0, 1.0)])
def test_dual_ascent_moves_log_alpha_the_right_way(delta, sign):
    """D < delta: alpha falls; D > delta: alpha rises, by about lr on Adam's first step."""
    args = small_args(delta=delta)
    nets = nets_for(args)
    lr = 1e-3
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=lr)
    before = nets["log_alpha"].value.item()
    metrics = deflow.update(nets, opt, batch(), args)
    assert before == 1.0 and metrics["alpha_value"].item() == pytest.approx(math.e)
    assert nets["log_alpha"].value.item() - before == pytest.approx(sign * lr, rel=1e-3)


def test_q_normalisation_makes_the_refinement_gradient_invariant_to_critic_scale():
    def q_grads(scale, normalize):
        args = small_args(normalize_q_loss=normalize)
        nets = nets_for(args)
        with torch.no_grad():
            nets["critic"].biases[-1].fill_(-2.0)
            nets["critic"].weights[-1].mul_(scale)
            nets["critic"].biases[-1].mul_(scale)
        out = losses_at(nets, batch(), args)
        return grads(out["q_loss"], nets["refine_onestep_flow"].parameters())

    ref = q_grads(1.0, True)
    assert sum(float(g.abs().sum()) for g in ref) > 0
    for c in (0.1, 10.0):
        for g, g_ref in zip(q_grads(c, True), ref):
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-7)
    for g, g_ref in zip(q_grads(10.0, False), q_grads(1.0, False)):  # without it the gradient scales with Q
        torch.testing.assert_close(g, 10 * g_ref, rtol=1e-4, atol=1e-6)


class LinearQ(torch.nn.Module):
    """Q_j(s, a) = 1 + w . a for both members, not learned (the 1 keeps the normaliser mean |Q| away from 0)."""

    def __init__(self, w):
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, obs, a):
        return (1 + a @ self.w).expand(2, -1)


@pytest.mark.slow
def test_constraint_reaches_equilibrium_on_the_linear_q_toy():
    """Q = 1 + w . a, a_base = 0: the residual grows along w until D = delta, where the multiplier holds it."""
    torch.manual_seed(0)
    delta, w = 0.01, torch.tensor([1.0, -2.0, 0.5])
    args = small_args(delta=delta)
    nets = deflow.make_nets(args, D, A)
    nets["actor_bc_flow"] = TrueVelocity(torch.zeros(1, A))  # every base action is exactly 0 (inside the box)
    nets["actor_bc_flow"].net = torch.nn.Sequential(torch.nn.Linear(1, A))  # only read for the action dim
    nets["critic"] = nets["target_critic"] = LinearQ(w)
    with torch.no_grad():
        last_linear(nets["refine_onestep_flow"]).weight.mul_(0.01)  # start well inside the constraint
    opt = torch.optim.Adam([dict(params=nets["refine_onestep_flow"].parameters(), lr=1e-3),
                            dict(params=nets["log_alpha"].parameters(), lr=1e-2)])
    g = torch.Generator().manual_seed(1)
    ds, alphas = [], []
    for step in range(2500):
        b = dict(observations=torch.randn(64, D, generator=g), actions=torch.zeros(64, A), rewards=torch.zeros(64),
                 next_observations=torch.randn(64, D, generator=g), masks=torch.ones(64), terminals=torch.zeros(64))
        m = deflow.update(nets, opt, b, args)
        ds.append(m["distill_loss"].item())
        alphas.append(m["alpha_value"].item())
    d_end = sum(ds[-300:]) / 300
    assert d_end == pytest.approx(delta, rel=0.2)
    assert ds[0] < delta / 10 and max(ds) > 2 * delta  # it started well inside, overshot and came back
    residual = nets["refine_onestep_flow"](torch.randn(256, D, generator=g), torch.zeros(256, A))
    cos = torch.nn.functional.cosine_similarity(residual, w.expand_as(residual), dim=-1)
    assert cos.min() > 0.99
    assert all(0 < a < 1e4 for a in alphas)
    # stationarity: w / mean|Q| = 2 alpha da / A with |da|^2 = A delta gives alpha = A |w| / (2 |da| (1 + |w| |da|))
    norm_w, norm_da = w.norm().item(), math.sqrt(A * delta)
    assert alphas[-1] == pytest.approx(A * norm_w / (2 * norm_da * (1 + norm_w * norm_da)), rel=0.05)


# ---------------------------------------------------------------------------------------------------- end to end
def test_networks_follow_the_official_architecture():
    nets = deflow.make_nets(deflow.Args(), 29, 8)
    kinds = [type(m).__name__ for m in nets["refine_onestep_flow"].net]
    assert kinds == ["Linear", "GELU"] * 4 + ["Linear"]  # same 4 x 512 MLP as the flow, no LayerNorm, no tanh
    assert nets["refine_onestep_flow"].net[0].in_features == 29 + 8 and nets["actor_bc_flow"].net[0].in_features == 38
    assert nets["log_alpha"].value.shape == () and nets["log_alpha"].value.item() == 1.0
    assert deflow.Args().flow_steps == 10 and deflow.Args().delta == 0.001 and deflow.Args().normalize_q_loss
    assert not any(p.requires_grad for p in nets["target_critic"].parameters())


@pytest.mark.slow
def test_end_to_end_on_regenerated_pointmaze(ogbench_dir, tmp_path):
    args = small_args(env_id=MAZE_ID, offline_steps=200, eval_interval=100, eval_episodes=2, log_interval=50,
                      device="cpu", runs_dir=str(tmp_path), delta=0.01, q_agg="min", flow_steps=4)
    result = deflow.main(args)
    assert {"success_rate", "episodic_return"} <= set(result)
    d = run_dir_of(tmp_path)
    rows = list(csv.DictReader(open(f"{d}/eval.csv")))
    assert [r["step"] for r in rows] == ["1", "100", "200"]
    assert glob.glob(f"{d}/events.out.tfevents.*")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(d)
    ea.Reload()
    assert {"losses/critic_loss", "losses/distill_loss", "losses/alpha_value", "losses/alpha_loss", "losses/mse",
            "eval/success_rate", "charts/SPS"} <= set(ea.Tags()["scalars"])
    assert ea.Scalars("losses/alpha_value")[-1].value != pytest.approx(math.e, abs=1e-3)  # the multiplier moved
    # the checkpoint reloads to the same actions, log alpha and its Adam state included
    payload = runfiles.load_checkpoint(f"{d}/deflow.pt", "deflow", torch.device("cpu"))
    assert payload["step"] == 200 and payload["args"]["delta"] == 0.01 and payload["args"]["flow_steps"] == 4
    assert len(payload["optimizer"]["state"]) == sum(1 for p in deflow.make_nets(args, 2, 2).parameters()
                                                     if p.requires_grad)
    nets = deflow.make_nets(deflow.Args(**{**payload["args"], "actor_hidden_dims": (32, 32),
                                           "value_hidden_dims": (32, 32)}), 2, 2)
    nets.load_state_dict(payload["nets"])
    assert nets["log_alpha"].value.item() != 1.0
    fresh = deflow.make_nets(args, 2, 2)
    args = deflow.Args(**payload["args"])  # K = 4, as trained
    obs = torch.randn(7, 2)
    torch.manual_seed(5)
    a1 = deflow.act(nets, obs, args)
    torch.manual_seed(5)
    a2 = deflow.act(nets, obs, args)
    torch.manual_seed(5)
    assert torch.equal(a1, a2) and not torch.equal(a1, deflow.act(fresh, obs, args))
    with pytest.raises(ValueError, match="written by deflow.py, not fql.py"):
        runfiles.load_checkpoint(f"{d}/deflow.pt", "fql", torch.device("cpu"))
