"""QAM: the schedule, SDE, lean adjoint and adjoint-matching loss (paper §4, official `agents/qam.py`), gradient
routing, chunked TD targets and chunk execution, and an end-to-end run on regenerated cube data."""
import copy
import csv
import functools
import glob
import math

import numpy as np
import pytest
import torch

import common
import conftest
import runfiles
import qam
from conftest import CUBE_ID, assert_batched_critic, grads_of

S, A, H, B, K = 6, 2, 3, 16, 10
D = A * H


small_args = functools.partial(conftest.small_args, qam, horizon=H, num_qs=4, inv_temp=1.0)
nets_for = functools.partial(conftest.seeded_nets, qam, d=S, a=A)


def batch(seed=0, valid=None):
    g = torch.Generator().manual_seed(seed)
    return dict(observations=torch.randn(B, S, generator=g), actions=torch.rand(B, H, A, generator=g) * 2 - 1,
                rewards=-torch.rand(B, generator=g), next_observations=torch.randn(B, S, generator=g),
                masks=(torch.rand(B, generator=g) > 0.3).float(),
                valid=(torch.rand(B, generator=g) > 0.2).float() if valid is None else valid)


class QuadraticCritic(torch.nn.Module):
    """Q_j(s, a) = -|a - c|^2 / 2 for every member j; returns [N, B]."""

    def __init__(self, c, n=3):
        super().__init__()
        self.c, self.n = c, n

    def forward(self, obs, a):
        return (-0.5 * ((a - self.c) ** 2).sum(-1)).expand(self.n, -1)


# ---------------------------------------------------------------------------------------------------- §7.1, §7.2
def test_noise_schedule_values_for_k10():
    sigma = qam.noise_schedule(10)
    expect = [4.6904, 3.1623, 2.4495, 2.0000, 1.6733, 1.4142, 1.1952, 1.0000, 0.8165, 0.6325]
    torch.testing.assert_close(sigma, torch.tensor(expect), rtol=0, atol=1e-4)
    assert sigma[0].item() == pytest.approx(4.690416, abs=1e-6) and sigma[9].item() == pytest.approx(0.632456, abs=1e-6)
    assert sigma[7].item() == pytest.approx(1.0, abs=1e-6)
    per_step = math.sqrt(1 / 10) * sigma
    assert per_step[0].item() == pytest.approx(1.48324, abs=1e-5) and per_step[9].item() == pytest.approx(0.2, abs=1e-6)
    expect7 = torch.tensor([math.sqrt(2 * (8 - i) / (i + 1)) for i in range(7)])
    torch.testing.assert_close(qam.noise_schedule(7), expect7)


def test_memoryless_first_step_forgets_x0_and_last_step_is_the_noiseless_prior_step():
    c, p = torch.full((B, D), 0.3), torch.full((B, D), -0.7)
    v, prior = (lambda s, x, t: c), (lambda s, x, t: p)
    obs = torch.zeros(B, S)
    runs = []
    for scale in (0.0, 5.0):
        torch.manual_seed(1)
        runs.append(qam.memoryless_rollout(v, prior, obs, scale * torch.randn(B, D), K))
    (xs_a, ts_a, xk_a), (xs_b, _, _) = runs
    assert xs_a.shape == (K, B, D) and ts_a.shape == (K, B, 1) and xk_a.shape == (B, D)
    torch.testing.assert_close(ts_a[:, 0, 0], torch.arange(K) / K)
    assert not torch.allclose(xs_a[0], xs_b[0])
    torch.testing.assert_close(xs_a[1], xs_b[1], rtol=0, atol=1e-5)  # x_1 does not depend on x_0
    torch.manual_seed(1)
    torch.randn(B, D)  # the x_0 draw above
    eps = torch.randn(B, D)
    torch.testing.assert_close(xs_a[1], 2 * c / K + math.sqrt(1 / K) * qam.noise_schedule(K)[0] * eps,
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(xk_a, xs_a[-1] + p / K, rtol=0, atol=1e-6)  # no noise in the last step


# ---------------------------------------------------------------------------------------------------- §7.3 - §7.6
def test_terminal_adjoint_is_tau_times_the_displacement_and_zero_where_clipped():
    c, tau = torch.randn(B, D) * 0.3, 2.5
    x = torch.randn(B, D) * 0.9  # some coordinates outside [-1, 1]
    g = qam.terminal_adjoint(QuadraticCritic(c), torch.zeros(B, S), x, tau)
    inside = x.abs() <= 1
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(g, torch.where(inside, tau * (x - c), torch.zeros_like(x)), rtol=0, atol=1e-6)
    const = qam.terminal_adjoint(lambda s, a: torch.ones(3, a.shape[0]) + 0 * a.sum(-1), torch.zeros(B, S), x, tau)
    assert torch.equal(const, torch.zeros_like(x))


def test_lean_adjoint_with_a_zero_prior_is_i_over_k_of_the_terminal_adjoint():
    torch.manual_seed(0)
    xs, c, tau = torch.randn(K, B, D), torch.randn(B, D) * 0.2, 1.7
    x_final = torch.randn(B, D) * 0.5
    g_final = qam.terminal_adjoint(QuadraticCritic(c), torch.zeros(B, S), x_final, tau)
    G = qam.lean_adjoint(lambda s, x, t: torch.zeros_like(x), torch.zeros(B, S), xs, g_final, K)
    expect_final = torch.where(x_final.abs() <= 1, tau * (x_final - c), torch.zeros_like(x_final))
    assert G.shape == (K, B, D) and not G.requires_grad
    for i in range(K):
        torch.testing.assert_close(G[i], i / K * expect_final, rtol=0, atol=1e-6)
    assert torch.equal(G[0], torch.zeros_like(G[0]))


def test_lean_adjoint_with_a_linear_prior_is_the_transposed_product():
    torch.manual_seed(0)
    M = torch.randn(D, D, dtype=torch.float64) * 0.5  # not symmetric: a VJP without the transpose fails
    prior = lambda s, x, t: x @ M.T  # noqa: E731  (v = M x for each row)
    xs, g_final = torch.randn(K, B, D, dtype=torch.float64), torch.randn(B, D, dtype=torch.float64)
    G = qam.lean_adjoint(prior, torch.zeros(B, S, dtype=torch.float64), xs, g_final, K)
    g = g_final
    for i in reversed(range(K)):
        g = g @ (i / (i + 1) * torch.eye(D, dtype=torch.float64) + 2 / K * M.T).T  # g_i = (i/(i+1) I + 2/K M^T) g_{i+1}
        torch.testing.assert_close(G[i], g, rtol=1e-10, atol=1e-10)
    # the scalar case of the spec: v = 0.7 x gives the product of (j/(j+1) + 1.4/K)
    G1 = qam.lean_adjoint(lambda s, x, t: 0.7 * x, None, xs[:, :, :1], g_final[:, :1], K)
    for i in range(K):
        factor = math.prod(j / (j + 1) + 2 * 0.7 / K for j in range(i, K))
        torch.testing.assert_close(G1[i], factor * g_final[:, :1], rtol=1e-10, atol=1e-12)


def test_adjoint_matching_target_gives_zero_loss_and_a_perturbation_its_weighted_square():
    torch.manual_seed(0)
    sigma = qam.noise_schedule(K).double()
    v_base, adj = torch.randn(K, B, D, dtype=torch.float64), torch.randn(K, B, D, dtype=torch.float64)
    target = v_base - 0.5 * sigma[:, None, None] ** 2 * adj
    assert qam.adjoint_matching_loss(target, v_base, adj, sigma).item() == pytest.approx(0.0, abs=1e-20)
    delta = torch.randn(K, B, D, dtype=torch.float64) * 0.1
    expect = (4 * (delta ** 2).sum(-1) / sigma[:, None] ** 2).sum(0).mean()
    loss = qam.adjoint_matching_loss(target + delta, v_base, adj, sigma).item()
    assert loss == pytest.approx(expect.item(), rel=1e-12)
    # zero adjoint: the loss is sum_i 4 |v_ft - v_base|^2 / sigma_i^2
    assert qam.adjoint_matching_loss(v_base + delta, v_base, 0 * adj, sigma).item() == pytest.approx(expect.item())


def test_constant_critic_and_a_copy_of_the_prior_give_exactly_zero_loss_and_gradient():
    args = small_args()
    nets = nets_for(args)
    with torch.no_grad():
        nets["target_critic"].weights[-1].zero_()  # Q independent of the action
    nets["actor_ft_flow"].load_state_dict(nets["target_actor_bc_flow"].state_dict())
    out = qam.losses(nets, batch(), args)
    assert out["adj_loss"].item() == 0.0 and out["adj_max"].item() == 0.0
    out["adj_loss"].backward()
    assert all(torch.count_nonzero(p.grad) == 0 for p in nets["actor_ft_flow"].parameters())
    # a fresh v_ft (the official default: an independent network) does not start at the fixed point
    assert qam.losses(nets_for(args), batch(), args)["adj_loss"].item() > 0


# ---------------------------------------------------------------------------------------------------- §7.7
def tilted_fixed_point(steps, n=20_000, iters=15):
    """1-D, state-free: data N(0, 1) with its exact flow prior, Q(a) = -(a - 1)^2 / 2, tau = 1, and v_ft restricted
    to one affine map per step, fitted by least squares onto the AM target until it stops changing."""
    torch.manual_seed(0)
    prior = lambda s, x, t: (2 * t - 1) * x / ((1 - t) ** 2 + t ** 2)  # noqa: E731
    grid = torch.arange(steps) / steps
    coef = torch.stack([(2 * grid - 1) / ((1 - grid) ** 2 + grid ** 2), torch.zeros(steps)], 1)  # start at the prior

    def v(s, x, t):
        i = (t[:, 0] * steps).round().long()
        return coef[i, 0:1] * x + coef[i, 1:2]

    sigma2 = qam.noise_schedule(steps)[:, None, None] ** 2
    obs = torch.zeros(n, 0)
    for _ in range(iters):
        xs, ts, x_final = qam.memoryless_rollout(v, prior, obs, torch.randn(n, 1), steps)
        adj = qam.lean_adjoint(prior, obs, xs, 1.0 * (x_final - 1.0), steps)  # -tau grad Q, unclipped
        target = prior(obs, xs, ts) - 0.5 * sigma2 * adj
        for i in range(steps):
            design = torch.cat([xs[i], torch.ones(n, 1)], 1).double()
            coef[i] = torch.linalg.lstsq(design, target[i].double()).solution[:, 0].float()
    x = torch.randn(100_000, 1)
    for i in range(steps):  # the deployed policy: the Euler ODE of v_ft
        x = x + v(obs, x, torch.full_like(x, i / steps)) / steps
    return x.mean().item(), x.var().item()


@pytest.mark.slow
def test_fixed_point_is_the_exponentially_tilted_behaviour_distribution():
    mean, var = tilted_fixed_point(50)  # exact tilt of N(0, 1) by exp(Q): N(0.5, 0.5)
    assert mean == pytest.approx(0.5, abs=0.05) and var == pytest.approx(0.5, abs=0.05)
    assert mean == pytest.approx(0.475, abs=0.015) and var == pytest.approx(0.480, abs=0.015)  # spec's K = 50 numbers
    mean, var = tilted_fixed_point(10)  # the discretisation bias of K = 10 (mostly the Euler prior itself)
    assert mean == pytest.approx(0.434, abs=0.015) and var == pytest.approx(0.392, abs=0.015)


# ---------------------------------------------------------------------------------------------------- §7.9, masks
def test_chunked_td_target_with_the_pessimistic_ensemble():
    q = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    y = qam.chunked_td_target(torch.tensor([-1.0]), torch.tensor([1.0]), q, 0.99, 5, 0.5)
    q_pess = 2.5 - 0.5 * 1.118034
    assert q_pess == pytest.approx(1.940983, abs=1e-6)
    assert y.item() == pytest.approx(-1 + 0.99 ** 5 * q_pess, abs=1e-6)
    assert qam.chunked_td_target(torch.tensor([-1.0]), torch.tensor([0.0]), q, 0.99, 5, 0.5).item() == -1.0
    assert qam.chunked_td_target(torch.tensor([0.0]), torch.tensor([1.0]), q, 0.9, 1, 0.0).item() == pytest.approx(2.25)


def test_adjoint_matching_reads_the_target_critic_and_target_behaviour_flow_only():
    args = small_args()
    nets = nets_for(args)

    def adj_loss():
        torch.manual_seed(6)
        return qam.losses(nets, batch(), args)["adj_loss"].item()

    base = adj_loss()
    with torch.no_grad():
        for name in ("critic", "actor_bc_flow"):  # the online networks do not enter the AM loss
            for p in nets[name].parameters():
                p.add_(0.3)
    assert adj_loss() == base
    for name in ("target_critic", "target_actor_bc_flow"):
        with torch.no_grad():
            nets[name].weights[0][0].mul_(1.5) if name == "target_critic" else nets[name].net[0].weight.mul_(1.5)
        changed = adj_loss()
        assert changed != base, name
        base = changed


def test_valid_weights_the_critic_and_bc_losses_but_not_adjoint_matching():
    args = small_args()
    nets = nets_for(args)
    torch.manual_seed(3)
    full = qam.losses(nets, batch(valid=torch.ones(B)), args)
    torch.manual_seed(3)
    none = qam.losses(nets, batch(valid=torch.zeros(B)), args)
    assert full["critic_loss"] > 0 and full["bc_flow_loss"] > 0
    assert none["critic_loss"] == 0 and none["bc_flow_loss"] == 0 and none["adj_loss"] == full["adj_loss"]
    torch.manual_seed(3)
    flipped = qam.losses(nets, {**batch(valid=torch.ones(B)), "masks": torch.zeros(B)}, args)
    assert flipped["critic_loss"] != full["critic_loss"]


def test_sample_chunks_follows_the_official_sample_sequence_recursion():
    """common.Dataset.sample_chunks against the loop of the official utils/datasets.py:sample_sequence, re-derived
    step by step: valid_i = no episode end before step i; R, mask and s' accumulate only over valid steps."""
    rng = np.random.default_rng(0)
    n, h, gamma = 60, 4, 0.9
    data = dict(observations=rng.normal(size=(n, 3)), actions=rng.uniform(-1, 1, (n, 2)), rewards=rng.normal(size=n),
                next_observations=rng.normal(size=(n, 3)), masks=(rng.uniform(size=n) > 0.3).astype(float),
                terminals=(rng.uniform(size=n) > 0.7).astype(float))
    ds = common.Dataset.from_numpy(data, torch.device("cpu"))
    torch.manual_seed(5)
    got = ds.sample_chunks(500, h, gamma)
    torch.manual_seed(5)
    starts = torch.randint(n - h + 1, (500,)).numpy()
    for b, s0 in enumerate(starts):
        reward, mask, ended, valid, nxt = data["rewards"][s0], data["masks"][s0], data["terminals"][s0], 1.0, s0
        for i in range(1, h):
            valid = 1.0 - ended
            reward += data["rewards"][s0 + i] * gamma ** i * valid
            mask = min(mask, data["masks"][s0 + i]) if valid else mask
            ended = max(ended, data["terminals"][s0 + i])
            nxt = s0 + i if valid else nxt
        assert got["rewards"][b].item() == pytest.approx(reward, abs=1e-5)
        assert (got["masks"][b].item(), got["valid"][b].item()) == (mask, valid)
        np.testing.assert_allclose(got["next_observations"][b].numpy(), data["next_observations"][nxt], atol=1e-6)
        np.testing.assert_allclose(got["actions"][b].numpy(), data["actions"][s0:s0 + h], atol=1e-6)
        np.testing.assert_allclose(got["observations"][b].numpy(), data["observations"][s0], atol=1e-6)


# ---------------------------------------------------------------------------------------------------- §7.8, §7.13
@pytest.mark.parametrize("variant", ["qam", "qam-fql", "qam-edit"])
@pytest.mark.parametrize("residual", [False, True])
def test_each_loss_reaches_only_its_own_network(variant, residual):
    args = small_args(variant=variant, residual=residual)
    nets = nets_for(args)
    owners = {"critic_loss": {"critic"}, "bc_flow_loss": {"actor_bc_flow"}, "adj_loss": {"actor_ft_flow"},
              "variant_loss": {"qam": set(), "qam-fql": {"actor_onestep_flow"},
                               "qam-edit": {"actor_edit", "edit_alpha"}}[variant]}
    for key, own in owners.items():
        if variant == "qam" and key == "variant_loss":
            continue
        torch.manual_seed(2)
        g = grads_of(qam.losses(nets, batch(), args)[key], nets)
        assert {name for name, v in g.items() if v > 0} == own, key
    assert not any(p.requires_grad for n in ("target_critic", "target_actor_bc_flow") for p in nets[n].parameters())
    if variant == "qam-edit":  # the temperature moves only by its own loss, d/d log_alpha = alpha (H - H_target)
        for key in ("edit_q_loss", "edit_entropy_loss"):
            torch.manual_seed(2)
            g = grads_of(qam.losses(nets, batch(), args)[key], nets)
            assert {name for name, v in g.items() if v > 0} == {"actor_edit"}, key
        torch.manual_seed(2)
        out = qam.losses(nets, batch(), args)
        assert grads_of(out["edit_alpha_loss"], nets) == {**{k: 0.0 for k in nets}, "edit_alpha": pytest.approx(
            abs(out["edit_entropy"].item() + 0.5 * D))}


def test_update_clips_one_global_norm_and_moves_targets_only_by_polyak():
    args = small_args(tau=0.1, variant="qam-edit")
    nets = nets_for(args)
    opt = torch.optim.SGD([p for p in nets.parameters() if p.requires_grad], lr=1.0)  # step = -grad, to read it back
    params = {n: [p.detach().clone() for p in m.parameters()] for n, m in nets.items()}
    torch.manual_seed(4)
    out = qam.losses(copy.deepcopy(nets), batch(), args)
    total = out["critic_loss"] + out["actor_loss"]
    trained = {n: [p for p in m.parameters() if p.requires_grad] for n, m in nets.items()}
    torch.manual_seed(4)
    metrics = qam.update(nets, opt, batch(), args)
    assert metrics["total_loss"].item() == pytest.approx(total.item())
    norm = metrics["grad_norm"].item()
    assert norm > 1.0  # a fresh QAM loss has a large gradient: the clip is active
    steps = {n: [p0 - p1 for p0, p1 in zip(params[n], nets[n].parameters())] for n in trained if trained[n]}
    global_norm = torch.sqrt(sum((d ** 2).sum() for ds in steps.values() for d in ds)).item()
    assert global_norm == pytest.approx(1.0, rel=1e-4)  # one norm over every network, not one per network
    per_net = {n: torch.sqrt(sum((d ** 2).sum() for d in ds)).item() for n, ds in steps.items()}
    assert all(v > 0 for v in per_net.values()) and max(per_net.values()) < 1.0
    for target, source in (("target_critic", "critic"), ("target_actor_bc_flow", "actor_bc_flow")):
        for t0, s0, t1 in zip(params[target], params[source], nets[target].parameters()):
            torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s0)  # from the pre-update online network


def test_no_clip_flag_leaves_the_gradient_unclipped():
    args = small_args(clip_grad=False)
    nets = nets_for(args)
    opt = torch.optim.SGD([p for p in nets.parameters() if p.requires_grad], lr=1.0)
    before = [p.detach().clone() for p in nets["actor_ft_flow"].parameters()]
    torch.manual_seed(4)
    norm = qam.update(nets, opt, batch(), args)["grad_norm"].item()
    moved = torch.sqrt(sum(((p0 - p1) ** 2).sum() for p0, p1 in zip(before, nets["actor_ft_flow"].parameters())))
    assert norm > 1.0 and moved.item() > 1.0


# ---------------------------------------------------------------------------------------------------- §7.10-7.12
def trainable(nets):
    return sum(p.numel() for p in nets.parameters() if p.requires_grad)


def test_parameter_counts_of_the_cube_configuration_match_the_paper():
    counts = {}
    for variant in ("qam", "qam-fql", "qam-edit"):
        nets = qam.make_nets(qam.Args(variant=variant, horizon=5), 46, 5)  # cube-triple: S = 46, h * A = 25
        counts[variant] = trainable(nets)
        # the paper's Table 6 also counts the official, never-used target copy of v_ft (838,169), which we drop
        assert sum(p.numel() for p in nets.parameters()) + 838_169 == {
            "qam": 19_941_496, "qam-fql": 20_779_153, "qam-edit": 20_791_979}[variant]
    assert counts == {"qam": 9_970_748, "qam-fql": 9_970_748 + 837_657, "qam-edit": 9_970_748 + 850_483}
    assert_batched_critic(nets["critic"], 10, 46 + 25)
    assert "LayerNorm" not in [type(m).__name__ for m in nets["actor_ft_flow"].net]
    assert nets["actor_ft_flow"].net[0].in_features == 46 + 25 + 1
    # v_ft is its own randomly initialised network (official residual=False), not a copy of v_b; the targets are
    assert not torch.equal(nets["actor_ft_flow"].net[0].weight, nets["actor_bc_flow"].net[0].weight)
    assert torch.equal(nets["target_actor_bc_flow"].net[0].weight, nets["actor_bc_flow"].net[0].weight)
    assert torch.equal(nets["target_critic"].weights[1][3], nets["critic"].weights[1][3])


def test_act_integrates_the_fine_tuned_flow_and_the_bc_flow_when_inv_temp_is_zero():
    args = small_args()
    nets = nets_for(args)
    c_ft, c_bc = torch.linspace(-0.5, 0.5, D), torch.full((D,), 0.25)
    with torch.no_grad():
        for name, c in (("actor_ft_flow", c_ft), ("actor_bc_flow", c_bc)):
            nets[name].net[-1].weight.zero_()
            nets[name].net[-1].bias.copy_(c)
    obs = torch.randn(7, S)
    torch.manual_seed(0)
    z = torch.randn(7, D)
    for a_args, c in ((args, c_ft), (small_args(inv_temp=0.0), c_bc)):
        torch.manual_seed(0)
        a = qam.act(nets, obs, a_args)
        assert a.shape == (7, D)
        torch.testing.assert_close(a, (z + c).clamp(-1, 1), rtol=0, atol=1e-6)  # Euler is exact for a constant field


@pytest.mark.parametrize("variant", ["qam-fql", "qam-edit"])
def test_variant_acting_is_clipped_chunks(variant):
    args = small_args(variant=variant, edit_scale=0.5)
    nets = nets_for(args)
    a = qam.act(nets, torch.randn(9, S) * 3, args)
    assert a.shape == (9, D) and a.abs().max() <= 1


def test_chunked_policy_plans_every_h_steps_and_hands_out_the_chunk_in_order():
    calls = []

    def policy(obs):
        calls.append(obs.clone())
        return torch.arange(2 * H * A, dtype=torch.float32).reshape(2, H * A) + 100 * len(calls)

    step = common.chunked_policy(policy, H)
    out = [step(torch.full((2, S), float(t))) for t in range(7)]
    assert len(calls) == 3 and [c[0, 0].item() for c in calls] == [0.0, 3.0, 6.0]
    for t, a in enumerate(out):
        expect = torch.arange(2 * H * A, dtype=torch.float32).reshape(2, H, A)[:, t % H] + 100 * (t // H + 1)
        assert a.shape == (2, A) and torch.equal(a, expect), t


def test_sparse_rewards():
    torch.testing.assert_close(qam.sparse_rewards(torch.tensor([0.0, -1.0, -3.0, 0.0])),
                               torch.tensor([0.0, -1.0, -1.0, 0.0]))


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_end_to_end_on_regenerated_cube_executes_chunks_and_reloads(ogbench_dir, tmp_path, monkeypatch):
    made, act_calls, evals = [], [], []
    real_make, real_act, real_evaluate = qam.make_nets, qam.act, common.evaluate

    def recording_make(*a, **kw):
        made.append(real_make(*a, **kw))
        return made[-1]

    def recording_act(nets, obs, args):
        out = real_act(nets, obs, args)
        act_calls.append(out)
        return out

    def recording_evaluate(policy, task, num_episodes, seed, png_path=None):
        sent, first = [], len(act_calls)

        def per_step(obs):
            sent.append(policy(obs))
            return sent[-1]

        result = real_evaluate(per_step, task, num_episodes, seed, png_path)
        evals.append((sent, act_calls[first:]))
        return result

    monkeypatch.setattr(qam, "make_nets", recording_make)
    monkeypatch.setattr(qam, "act", recording_act)
    monkeypatch.setattr(common, "evaluate", recording_evaluate)
    args = qam.Args(env_id=CUBE_ID, horizon=5, offline_steps=100, eval_interval=100, eval_episodes=2, log_interval=50,
                    actor_hidden_dims=(32, 32), value_hidden_dims=(32, 32), num_qs=3, inv_temp=1.0, device="cpu",
                    runs_dir=str(tmp_path))
    result = qam.main(args)
    assert {"success_rate", "episodic_return", "episodic_length"} <= set(result)
    assert len(evals) == 2  # step 1 and step 100
    for sent, chunks in evals:
        # one policy call per 5 env steps, and the env receives the chunk's actions in order
        assert len(sent) >= 5 and len(chunks) == math.ceil(len(sent) / 5)
        for t, action in enumerate(sent):
            assert action.shape == (2, 5) and torch.equal(action, chunks[t // 5].reshape(2, 5, 5)[:, t % 5])
    (d,) = glob.glob(str(tmp_path / "*"))
    assert [r["step"] for r in csv.DictReader(open(f"{d}/eval.csv"))] == ["1", "100"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(d)
    ea.Reload()
    assert {"losses/critic_loss", "losses/adj_loss", "losses/bc_flow_loss", "losses/grad_norm",
            "eval/success_rate"} <= set(ea.Tags()["scalars"])
    payload = runfiles.load_checkpoint(f"{d}/qam.pt", "qam", torch.device("cpu"))
    assert payload["step"] == 100
    saved_args = qam.Args(**payload["args"])
    reloaded = real_make(saved_args, 28, 5)  # cube-single: 28-D observations, 5-D actions
    reloaded.load_state_dict(payload["nets"])
    obs = torch.randn(4, 28)
    torch.manual_seed(9)
    a1 = real_act(made[0], obs, saved_args)
    torch.manual_seed(9)
    a2 = real_act(reloaded, obs, saved_args)
    torch.manual_seed(9)
    assert a1.shape == (4, 25) and torch.equal(a1, a2) and not torch.equal(a1, real_act(real_make(saved_args, 28, 5),
                                                                                         obs, saved_args))
