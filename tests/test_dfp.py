"""DFP: the drift field of `utils/drift_loss.py`, top-K and EMA, gradient routing, DriftQL's field side by side, the
bandit and an end-to-end run on regenerated data."""
import csv
import dataclasses
import functools
import glob
import math

import pytest
import torch

import conftest
import dfp
import driftql
import plumbing
import runfiles
from conftest import A, B, D, MAZE_ID, assert_batched_critic, grads_of, run_dir_of

small_args = functools.partial(conftest.small_args, dfp)
nets_for = functools.partial(conftest.seeded_nets, dfp)
batch = conftest.random_batch


def rand_set(b, n, a, seed=0, scale=0.5):
    return (torch.randn(b, n, a, generator=torch.Generator().manual_seed(seed)) * scale).clamp(-1, 1)


def cos(u, v):
    return torch.nn.functional.cosine_similarity(u, v, dim=-1)


# ---------------------------------------------------------------------------------------------------- the field
def reference_field(gen, pos, temps):
    """The official algorithm written out element by element in float64, generated samples as the negatives."""
    b_, g_, a_ = gen.shape
    targets = torch.cat([gen, pos], 1).double()
    x = gen.double()
    j_ = targets.shape[1]
    dist = [[[math.sqrt(max(sum((x[b, i, k] - targets[b, j, k]).item() ** 2 for k in range(a_)), 1e-8))
              for j in range(j_)] for i in range(g_)] for b in range(b_)]
    s = sum(dist[b][i][j] for b in range(b_) for i in range(g_) for j in range(j_)) / (b_ * g_ * j_)
    c = max(s / math.sqrt(a_), 1e-3)
    dn = [[[dist[b][i][j] / max(s, 1e-3) + (100.0 if j == i else 0.0) for j in range(j_)] for i in range(g_)]
          for b in range(b_)]
    v = torch.zeros(b_, g_, a_, dtype=torch.float64)
    for r in temps:
        force = torch.zeros(b_, g_, a_, dtype=torch.float64)
        for b in range(b_):
            e = [[math.exp(-dn[b][i][j] / r) for j in range(j_)] for i in range(g_)]
            row = [[e[i][j] / sum(e[i]) for j in range(j_)] for i in range(g_)]
            col = [[e[i][j] / sum(e[k][j] for k in range(g_)) for j in range(j_)] for i in range(g_)]
            w = [[math.sqrt(max(row[i][j] * col[i][j], 1e-6)) for j in range(j_)] for i in range(g_)]
            for i in range(g_):
                sig_neg, sig_pos = sum(w[i][:g_]), sum(w[i][g_:])
                for j in range(j_):
                    coeff = w[i][j] * sig_neg if j >= g_ else -w[i][j] * sig_pos
                    force[b, i] += coeff * (targets[b, j] - x[b, i]) / c
        v += force / math.sqrt(max(float((force ** 2).mean()), 1e-8))
    return v, c, s


@pytest.mark.parametrize("temps", [(0.05,), (0.01, 0.05), (0.3, 2.0)])
def test_field_matches_the_official_algorithm_written_out(temps):
    gen, pos = rand_set(2, 4, 2, seed=1), rand_set(2, 3, 2, seed=2)
    v, c, s, rms = dfp.drift_field(gen.double(), pos.double(), temps)
    v_ref, c_ref, s_ref = reference_field(gen, pos, temps)
    torch.testing.assert_close(v, v_ref, rtol=1e-9, atol=1e-9)
    assert c.item() == pytest.approx(c_ref, rel=1e-12) and s.item() == pytest.approx(s_ref, rel=1e-12)


@pytest.mark.parametrize("temps", [(0.05,), (0.01, 0.05), (0.2, 1.0)])
def test_field_vanishes_exactly_when_positives_and_negatives_are_the_same_set(temps):
    """Eqs. 3-4: V_{p,q} = 0 at p = q. Exact with explicit negatives (the official use_neg_only), for any samples."""
    gen, p = rand_set(4, 8, 3), rand_set(4, 5, 3, seed=1)
    v, c, s, rms = dfp.drift_field(gen, p, temps, neg=p.clone(), gen_as_neg=False)
    assert torch.all(v == 0)
    torch.testing.assert_close(rms, torch.full_like(rms, math.sqrt(dfp.FORCE_FLOOR)))  # only the floor is left
    v = dfp.drift_field(gen, p, temps, neg=p + 0.1, gen_as_neg=False)[0]
    assert v.abs().max() > 0.1


def test_expected_field_vanishes_when_the_generator_matches_the_positives():
    """DFP's own mode (generated samples as negatives, self-masked): no exact zero for finite sets, but the mean field
    is ~0 when generated samples and positives come from the same distribution, and points along a shift of it."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 16, 2, generator=g), torch.randn(256, 16, 2, generator=g)
    for temps in [(0.2,), (1.0,)]:
        assert dfp.drift_field(x, y, temps)[0].mean((0, 1)).abs().max() < 0.03
        shifted = dfp.drift_field(x, y + torch.tensor([0.25, 0.0]), temps)[0].mean((0, 1))
        assert shifted[0] > 0.25 and shifted[1].abs() < 0.03


@pytest.mark.parametrize("temps", [(0.05,), (0.01, 0.05)])
def test_swapping_positives_and_negatives_flips_the_sign(temps):
    gen, p, q = rand_set(3, 6, 2), rand_set(3, 4, 2, seed=1), rand_set(3, 5, 2, seed=2) + 0.2
    v_pq = dfp.drift_field(gen, p, temps, neg=q, gen_as_neg=False)[0]
    v_qp = dfp.drift_field(gen, q, temps, neg=p, gen_as_neg=False)[0]
    assert v_pq.abs().max() > 0.1
    torch.testing.assert_close(v_qp, -v_pq, rtol=0, atol=1e-5)


def test_self_interaction_is_masked():
    gen, pos = rand_set(2, 5, 3), rand_set(2, 2, 3, seed=1)
    targets = torch.cat([gen, pos], 1)
    d, s, c = dfp.normalised_distances(gen, targets, True)
    d0 = dfp.normalised_distances(gen, targets, False)[0]
    eye = torch.eye(5, 7, dtype=torch.bool)
    torch.testing.assert_close(d[:, eye], d0[:, eye] + dfp.SELF_MASK)  # +100 on (i, i) of the generated columns
    assert torch.equal(d[:, ~eye], d0[:, ~eye]) and d0[:, eye].max() < 1e-3  # nowhere else; self distance ~ 0
    for temp in (0.01, 0.05, 0.2, 1.0):
        w = dfp.affinities(d, temp)
        assert w[:, eye].max() <= 1.001e-3  # only the floor sqrt(1e-6) survives on the diagonal
        assert w[:, eye].max() < 0.01 * w[:, ~eye].max()
    # the mask is what the field uses: dropping it changes V
    v = dfp.drift_field(gen, pos, (0.2,))[0]
    unmasked = dfp.drift_field(gen, pos, (0.2,), neg=gen, gen_as_neg=False)[0]
    assert (v - unmasked).abs().max() > 1e-2


def test_a_single_sample_points_exactly_at_a_single_positive():
    """G = 1, P = 1: the only negative is the masked self, so V is along a+ - x (spec §7.6)."""
    gen, pos = rand_set(5, 1, 3), rand_set(5, 1, 3, seed=1)
    v = dfp.drift_field(gen, pos, (0.05, 0.2))[0]
    assert cos(v, pos - gen).min() > 1 - 1e-6


@pytest.mark.parametrize("temps", [(0.05,), (0.01, 0.05), (0.02, 0.05, 0.2)])
def test_each_temperature_force_is_scaled_to_unit_rms(temps):
    gen, pos = rand_set(8, 8, 4), rand_set(8, 3, 4, seed=1)
    v, c, s, rms = dfp.drift_field(gen, pos, temps)
    singles = [dfp.drift_field(gen, pos, (t,))[0] for t in temps]
    for vt, r in zip(singles, rms):
        assert vt.pow(2).mean().item() == pytest.approx(1.0, abs=1e-5) and r > 1e-3
    torch.testing.assert_close(v, sum(singles), rtol=0, atol=1e-5)
    # so the loss value (mean over B, G, A of V^2) is 1 with one temperature, whatever the distances
    loss = dfp.drift_loss(gen, pos, temps[:1])[0].mean()
    assert loss.item() == pytest.approx(1.0, abs=1e-5)


def test_small_temperature_points_at_the_nearest_positive():
    """Spec §7.8: G = 1, five positives, R = 1e-3 -> V along (nearest positive - x)."""
    gen, pos = rand_set(6, 1, 2, seed=3), rand_set(6, 5, 2, seed=4)
    nearest = pos.gather(1, (pos - gen).norm(dim=-1).argmin(1)[:, None, None].expand(-1, 1, 2))
    assert cos(dfp.drift_field(gen, pos, (1e-3,))[0], nearest - gen).min() > 0.999


@pytest.mark.parametrize("temp, min_cos", [(1e3, 0.995), (1e4, 0.9999)])
def test_large_temperature_gives_the_difference_of_the_means(temp, min_cos):
    """Spec §7.9: flat affinities. At R >> 100 the code's additive self mask (+100, i.e. a factor exp(-100 / R) on
    the self) no longer separates the self, so V_i tends to mean(P) - mean(G) with x_i itself inside mean(G): the
    same direction for every sample of a state."""
    gen, pos = rand_set(4, 8, 3).double(), rand_set(4, 5, 3, seed=1).double() + 0.3
    v = dfp.drift_field(gen, pos, (temp,))[0]
    assert cos(v, (pos.mean(1) - gen.mean(1))[:, None].expand_as(v)).min() > min_cos


def test_field_is_translation_and_scale_invariant():
    gen, pos = rand_set(3, 6, 2).double(), rand_set(3, 2, 2, seed=1).double()
    v = dfp.drift_field(gen, pos, (0.05, 0.2))[0]
    shift = torch.tensor([0.3, -0.2], dtype=torch.float64)
    torch.testing.assert_close(dfp.drift_field(gen + shift, pos + shift, (0.05, 0.2))[0], v, rtol=0, atol=1e-9)
    torch.testing.assert_close(dfp.drift_field(gen * 0.1, pos * 0.1, (0.05, 0.2))[0], v, rtol=0, atol=1e-3)


def test_loss_gradient_is_the_normalised_field_and_stops_at_the_positives():
    """d mean_b l_b / d x = -2 V / (B G A c): the goal x/c + V is fixed, and nothing reaches the positives."""
    b, g, a = 3, 5, 4
    gen = rand_set(b, g, a).requires_grad_(True)
    pos = rand_set(b, 2, a, seed=1).requires_grad_(True)
    loss, v, s, rms = dfp.drift_loss(gen, pos, (0.05, 0.2))
    loss.mean().backward()
    c = max(s.item() / math.sqrt(a), 1e-3)
    torch.testing.assert_close(gen.grad, -2 * v / (b * g * a * c), rtol=1e-4, atol=1e-7)
    assert pos.grad is None and loss.shape == (b,)


# ---------------------------------------------------------------------------------------------------- top-K and EMA
def test_top_k_picks_exactly_the_k_highest_q_candidates():
    g = torch.Generator().manual_seed(0)
    cand = torch.rand(32, 16, 2, generator=g) * 2 - 1
    best = torch.tensor([0.3, -0.5])
    q = -((cand - best) ** 2).sum(-1)  # a synthetic critic: the closer to a*, the better
    for k in (1, 4, 8, 16):
        pos, pos_q = dfp.top_k_positives(cand, q, k)
        assert pos.shape == (32, k, 2)
        for b_ in range(32):
            chosen = set(map(tuple, pos[b_].tolist()))
            closest = set(map(tuple, cand[b_, (cand[b_] - best).norm(dim=-1).argsort()[:k]].tolist()))
            assert chosen == closest
        assert torch.all(pos_q.amin(1) >= q.sort(1, descending=True).values[:, k - 1])  # none left out is better
        torch.testing.assert_close(pos_q, -((pos - best) ** 2).sum(-1))


def test_candidates_come_from_the_ema_actor_and_the_gradient_from_g_fresh_samples():
    args = small_args(online_n_samples=12, online_pos_samples=5, gen_per_label=6)
    nets = nets_for(args)
    rows = {"actor_drift": [], "actor_drift_ema": []}
    for name in rows:
        nets[name].register_forward_hook(lambda m, inp, out, name=name: rows[name].append((inp[0].shape[0],
                                                                                           out.requires_grad)))
    dfp.losses(nets, batch(), args)
    assert rows["actor_drift_ema"] == [(B * 12, False)]
    assert rows["actor_drift"] == [(B, False), (B * 6, True)]  # the TD sample at s', then the G generated samples


def test_ema_and_target_move_at_their_stated_rates_from_the_pre_update_parameters():
    args = small_args(tau=0.1, actor_ema_tau=0.25)
    nets = nets_for(args)
    assert all(torch.equal(p, q) for p, q in zip(nets["actor_drift"].parameters(),
                                                  nets["actor_drift_ema"].parameters()))  # starts equal (official)
    with torch.no_grad():  # make the EMA differ from the actor so that the rate is visible
        for p in nets["actor_drift_ema"].parameters():
            p.add_(0.1)
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=1e-2)
    before = {k: [p.detach().clone() for p in nets[k].parameters()] for k in nets}
    dfp.update(nets, opt, batch(), args)
    for src, dst, tau in (("actor_drift", "actor_drift_ema", 0.25), ("critic", "target_critic", 0.1)):
        for s0, d0, d1, s1 in zip(before[src], before[dst], nets[dst].parameters(), nets[src].parameters()):
            torch.testing.assert_close(d1, (1 - tau) * d0 + tau * s0)
            assert not torch.equal(s1, s0)
    assert not any(p.requires_grad for k in ("actor_drift_ema", "target_critic") for p in nets[k].parameters())


def test_warm_up_weights_the_top_k_term_by_zero():
    args = small_args(alpha_pos=2.0)
    nets = nets_for(args)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        on = dfp.losses(nets, batch(), args, topk_on=True)
    torch.manual_seed(3)
    off = dfp.losses(nets, batch(), args, topk_on=False)
    torch.testing.assert_close(off["bc_drift_loss"], on["bc_drift_loss"])  # same samples, same BC term
    assert on["topk_drift_loss"] > 0 and off["topk_drift_loss"] == 0
    torch.testing.assert_close(off["actor_loss"], off["bc_drift_loss"])
    g_on, g_off = grads_of(on["actor_loss"], nets), grads_of(off["actor_loss"], nets)
    assert g_off["actor_drift"] > 0 and g_off["actor_drift"] != g_on["actor_drift"]


def test_top_k_switches_on_after_the_warm_up_with_the_ema_reset_to_the_actor(tmp_path, monkeypatch):
    calls, real_update = [], dfp.update

    def spy(nets, opt, batch, args, topk_on=True, **kw):  # topk_on: the phase switch main passes
        same = all(torch.equal(p, q) for p, q in zip(nets["actor_drift"].parameters(),
                                                      nets["actor_drift_ema"].parameters()))
        calls.append((topk_on, same))
        return real_update(nets, opt, batch, args, topk_on=topk_on, **kw)

    monkeypatch.setattr(dfp, "update", spy)
    dfp.main(small_args(env_id="bandit-4gaussian", offline_steps=6, topk_start=3, actor_ema_tau=0.5, lr=1e-2,
                        eval_interval=100, eval_episodes=2, device="cpu", runs_dir=str(tmp_path), save_model=False))
    # steps 1-3: BC alone, the EMA drifts away from the actor; step 4: top-K on, the EMA restarts from the actor
    assert calls == [(False, True), (False, False), (False, False), (True, True), (True, False), (True, False)]


def test_best_of_n_takes_the_argmax_of_the_online_critic():
    args = small_args(q_agg="min")
    nets = nets_for(args)
    obs = torch.randn(12, D)
    torch.manual_seed(7)
    cands = dfp.sample_actions(nets["actor_drift"], obs, 6)
    torch.manual_seed(7)
    chosen = dfp.act(nets, obs, dataclasses.replace(args, eval_bon=6))
    q = nets["critic"](obs.repeat_interleave(6, 0), cands.reshape(-1, A)).amin(0).view(12, 6)
    torch.testing.assert_close(chosen, cands[torch.arange(12), q.argmax(1)])
    torch.manual_seed(7)
    one = dfp.act(nets, obs, args)
    torch.manual_seed(7)
    assert torch.equal(one, dfp.sample_actions(nets["actor_drift"], obs, 1)[:, 0]) and one.abs().max() <= 1


def test_td_target_uses_best_of_q_bon_by_the_online_critic_valued_by_the_target():
    args = small_args(q_bon=8)
    nets, b = nets_for(args), batch()
    with torch.no_grad():
        for p in nets["target_critic"].parameters():
            p.mul_(1.5)  # target != online, so the two roles can be told apart
    torch.manual_seed(1)
    loss = dfp.losses(nets, b, args)["critic_loss"]
    torch.manual_seed(1)
    nxt = dfp.sample_actions(nets["actor_drift"], b["next_observations"], 8)
    with torch.no_grad():
        pick = dfp.score(nets["critic"], b["next_observations"], nxt, "mean").argmax(1)
        a_next = nxt[torch.arange(B), pick]
        y = b["rewards"] + 0.99 * b["masks"] * nets["target_critic"](b["next_observations"], a_next).mean(0)
        expect = ((nets["critic"](b["observations"], b["actions"]) - y) ** 2).mean()
    torch.testing.assert_close(loss, expect)


def test_critic_loss_uses_masks_not_terminals_and_the_q_agg():
    args = small_args()
    nets, b = nets_for(args), batch()

    def critic_loss(bb, **kw):
        torch.manual_seed(1)
        return dfp.losses(nets, bb, small_args(**kw))["critic_loss"]

    base = critic_loss(b)
    assert base == critic_loss({**b, "terminals": 1 - b["terminals"]})
    assert base != critic_loss({**b, "masks": 1 - b["masks"]})
    assert base != critic_loss(b, q_agg="min")


# ---------------------------------------------------------------------------------------------------- gradient routing
def test_actor_loss_reaches_only_the_actor_and_critic_loss_only_the_critic():
    args = small_args()
    nets = nets_for(args)
    for term in ("actor_loss", "bc_drift_loss", "topk_drift_loss"):
        g = grads_of(dfp.losses(nets, batch(), args)[term], nets)
        assert g["actor_drift"] > 0 and g["critic"] == 0 and g["actor_drift_ema"] == 0 and g["target_critic"] == 0
    g = grads_of(dfp.losses(nets, batch(), args)["critic_loss"], nets)
    assert g["critic"] > 0 and g["actor_drift"] == 0 and g["actor_drift_ema"] == 0
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=1e-2)
    critic0 = [p.detach().clone() for p in nets["critic"].parameters()]
    opt.zero_grad()
    dfp.losses(nets, batch(), args)["actor_loss"].backward()
    opt.step()
    assert all(torch.equal(p, p0) for p, p0 in zip(nets["critic"].parameters(), critic0))


def test_the_critic_reaches_the_actor_only_through_the_ranking():
    """No -Q term: any change of the critic that keeps each member's ranking (Q -> 3 Q + 7) leaves the actor's
    gradient bit for bit the same; a change that reverses the ranking changes it."""
    args = small_args(online_n_samples=8, online_pos_samples=3)
    nets = nets_for(args)

    def actor_grad():
        torch.manual_seed(2)
        for p in nets.parameters():
            p.grad = None
        dfp.losses(nets, batch(), args)["actor_loss"].backward()
        return [p.grad.clone() for p in nets["actor_drift"].parameters()]

    g0 = actor_grad()
    with torch.no_grad():
        nets["critic"].weights[-1].mul_(3.0)
        nets["critic"].biases[-1].mul_(3.0).add_(7.0)
    assert all(torch.equal(a, b) for a, b in zip(g0, actor_grad()))
    with torch.no_grad():
        nets["critic"].weights[-1].neg_()
    assert not all(torch.allclose(a, b) for a, b in zip(g0, actor_grad()))


def test_networks_follow_the_official_architecture():
    nets = dfp.make_nets(dfp.Args(), 29, 8)
    assert list(nets) == ["actor_drift", "actor_drift_ema", "critic", "target_critic"]
    for name in ("actor_drift", "actor_drift_ema"):
        actor = nets[name].net
        assert [type(m).__name__ for m in actor] == ["Linear", "GELU"] * 4 + ["Linear"]
        assert actor[0].in_features == 29 + 8 and actor[-1].out_features == 8 and nets[name].noise_dim == 8
    assert_batched_critic(nets["critic"], 2, 29 + 8)


def test_update_returns_detached_metrics_with_the_raw_force():
    args = small_args(drift_temps=(0.01, 0.05))
    nets = nets_for(args)
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=1e-3)
    m = dfp.update(nets, opt, batch(), args)
    assert {"total_loss", "critic_loss", "actor_loss", "bc_drift_loss", "topk_drift_loss", "bc_force_rms_0.01",
            "bc_force_rms_0.05", "topk_force_rms_0.01", "topk_force_rms_0.05", "bc_dist_scale", "topk_q",
            "cand_q"} <= set(m)
    assert all(not v.requires_grad for v in m.values())
    assert m["actor_loss"] == pytest.approx(m["bc_drift_loss"] + m["topk_drift_loss"])
    assert m["topk_q"] >= m["cand_q"] and m["bc_force_rms_0.05"] != pytest.approx(1.0, abs=1e-3)  # not normalised
    # with one temperature each drift loss is exactly its weight (unit-RMS field): L_BC = 1, lambda L_topK = lambda
    args = small_args(alpha_pos=0.3)
    nets = nets_for(args)
    m = dfp.update(nets, torch.optim.Adam([p for p in nets.parameters() if p.requires_grad]), batch(), args)
    assert m["bc_drift_loss"] == pytest.approx(1.0, abs=1e-5) and m["topk_drift_loss"] == pytest.approx(0.3, abs=1e-5)


# ---------------------------------------------------------------------------------------------------- vs DriftQL
# DriftQL App. C compares its field with the original drifting computation, the one DFP uses. Same inputs to both:
# DFP's field is in coordinates / c, DriftQL's in action units, so directions and ratios are compared, not values.
def test_driftql_and_dfp_fields_agree_on_direction():
    gen, pos = rand_set(4, 8, 3, scale=0.3).double(), rand_set(4, 1, 3, seed=1).double()  # one positive: [B, 1, A]
    # one sample: both point straight at the dataset action
    v_q = driftql.drift_field(gen[:, :1], pos, 0.2, "laplace")[0]
    assert cos(dfp.drift_field(gen[:, :1], pos, (0.05,))[0], v_q).min() > 1 - 1e-9
    # wide kernels: both point along a+ minus the mean of the other samples, V_i = a+ - mean_{k != i} a_k
    v_q = driftql.drift_field(gen, pos, 1e3, "laplace")[0]
    torch.testing.assert_close(v_q, pos - (gen.sum(1, keepdim=True) - gen) / 7, rtol=0, atol=1e-3)
    for temp in (5.0, 10.0, 30.0):  # wide, yet well below R ~ 100 where DFP's additive self mask gives out
        assert cos(dfp.drift_field(gen, pos, (temp,))[0], v_q).min() > 0.995
    # samples collapsed onto the dataset action: neither moves
    on = pos.expand(4, 8, 3).clone()
    assert driftql.drift_field(on, pos, 0.2, "laplace")[0].abs().max() < 1e-6
    assert dfp.drift_field(on, pos, (0.05,))[0].abs().max() < 1e-6


def test_driftql_and_dfp_fields_differ_in_scale_weighting_and_batch_coupling():
    gen, pos = rand_set(4, 8, 3, scale=0.3).double(), rand_set(4, 1, 3, seed=1).double()  # one positive: [B, 1, A]
    # scale: shrinking the whole configuration shrinks DriftQL's field with it; DFP's is renormalised to unit RMS
    v_q, v_q_small = (driftql.drift_field(gen * k, pos * k, 1e3, "laplace")[0] for k in (1.0, 0.1))
    torch.testing.assert_close(v_q_small, 0.1 * v_q, rtol=0, atol=1e-4)
    v_d, v_d_small = (dfp.drift_field(gen * k, pos * k, (0.05,))[0] for k in (1.0, 0.1))
    torch.testing.assert_close(v_d_small, v_d, rtol=0, atol=1e-3)
    assert v_d.pow(2).mean().item() == pytest.approx(1.0)
    # weighting: samples on a line away from the dataset action. DriftQL moves every sample (a+ - its neighbours),
    # the far ones most; DFP weights each sample by its affinity to the positive, so the nearest one takes the drift
    line = torch.zeros(1, 6, 2, dtype=torch.float64)
    line[0, :, 0] = torch.arange(1, 7) * 0.2
    line[0, :, 1] = torch.tensor([0.05, -0.05, 0.04, -0.03, 0.02, -0.04])
    origin = torch.zeros(1, 1, 2, dtype=torch.float64)
    n_q = driftql.drift_field(line, origin, 0.05, "laplace")[0].norm(dim=-1)[0]
    n_d = dfp.drift_field(line, origin, (0.05,))[0].norm(dim=-1)[0]
    assert n_q.argmax() >= 4 and n_q[0] > 0.3 * n_q.max()
    assert n_d.argmax() == 0 and n_d[0] > 50 * n_d[1:].max()
    # batch coupling: DriftQL's states never interact; DFP's share the distance scale and each force RMS
    moved = gen.clone()
    moved[3] *= 3.0
    assert torch.equal(driftql.drift_field(moved, pos, 0.2, "laplace")[0][:3],
                       driftql.drift_field(gen, pos, 0.2, "laplace")[0][:3])
    assert (dfp.drift_field(moved, pos, (0.05,))[0][:3] - v_d[:3]).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------------- bandit
BANDIT = dict(env_id="bandit-4gaussian", actor_hidden_dims=(64, 64), value_hidden_dims=(64, 64), batch_size=64,
              offline_steps=1500, eval_interval=1500, log_interval=1500, lr=1e-3, actor_ema_tau=0.1, alpha_pos=2.0,
              device="cpu")


@pytest.mark.slow
def test_bandit_samples_move_to_a_best_mode(tmp_path):
    """One state, four modes (reward 5 - 80 d^2 at distance d from the right and bottom centres, 1.5 at the top, 0 at
    the left). The critic only ranks, and top-K is what moves the samples: with lambda = 0 the BC drift (one dataset
    action per state) keeps them at the centroid of the four modes. A mean reward above 0 puts the average sample
    within 0.25 of a best-mode centre. lambda = 2, EMA 0.1 and lr 1e-3 fit the 1.5K-step budget (README, DFP, The
    bandit: with the official lambda 0.5 the BC drift holds the samples short of the modes)."""
    out = dfp.main(dfp.Args(**BANDIT, runs_dir=str(tmp_path / "dfp")))
    (d,) = glob.glob(str(tmp_path / "dfp" / "*"))
    first = {k: float(v) for k, v in list(csv.DictReader(open(f"{d}/eval.csv")))[0].items()}
    bc = dfp.main(dfp.Args(**{**BANDIT, "alpha_pos": 0.0}, runs_dir=str(tmp_path / "bc")))
    assert first["episodic_return"] < -30 and bc["episodic_return"] < -30
    assert out["episodic_return"] > 0
    assert out["frac_top"] + out["frac_left"] == 0
    torch.manual_seed(0)
    nets = dfp.make_nets(dfp.Args(**BANDIT), 2, 2)
    nets.load_state_dict(runfiles.load_checkpoint(f"{d}/dfp.pt", "dfp", torch.device("cpu"))["nets"])
    mean = dfp.act(nets, torch.zeros(1000, 2), dfp.Args(**BANDIT)).mean(0)
    assert max(mean[0], -mean[1]) > 0.6 and min(mean[0], -mean[1]) > -0.1  # at right (0.8, 0) or bottom (0, -0.8)


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_end_to_end_on_regenerated_pointmaze(ogbench_dir, tmp_path, monkeypatch):
    obs = torch.randn(7, 2)
    saved = {}
    real_save = plumbing.Run.save

    def save_and_remember_actions(run, step):
        real_save(run, step)
        nets, args = run.nets, run.args
        with torch.random.fork_rng():
            torch.manual_seed(5)
            saved[step] = dfp.act(nets, obs, args)

    monkeypatch.setattr(plumbing.Run, "save", save_and_remember_actions)
    args = small_args(env_id=MAZE_ID, offline_steps=150, eval_interval=100, eval_episodes=2, log_interval=50,
                      batch_size=64, device="cpu", runs_dir=str(tmp_path))
    result = dfp.main(args)
    assert {"success_rate", "episodic_return", "episodic_length"} <= set(result)
    d = run_dir_of(tmp_path)
    rows = list(csv.DictReader(open(f"{d}/eval.csv")))
    assert [r["step"] for r in rows] == ["1", "100", "150"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(d)
    ea.Reload()
    assert {"losses/critic_loss", "losses/bc_drift_loss", "losses/topk_drift_loss", "losses/bc_force_rms_0.05",
            "losses/topk_force_rms_0.05", "eval/success_rate", "charts/SPS"} <= set(ea.Tags()["scalars"])
    # the final checkpoint (EMA actor included) reloads to the actions the trained nets gave under the same seed
    payload = runfiles.load_checkpoint(f"{d}/dfp.pt", "dfp", torch.device("cpu"))
    assert payload["step"] == 150
    args = dfp.Args(**payload["args"])
    nets = dfp.make_nets(args, 2, 2)
    nets.load_state_dict(payload["nets"])
    torch.manual_seed(5)
    assert torch.equal(dfp.act(nets, obs, args), saved[150]) and not torch.equal(saved[1], saved[150])
    with pytest.raises(ValueError, match="written by dfp.py, not driftql.py"):
        runfiles.load_checkpoint(f"{d}/dfp.pt", "driftql", torch.device("cpu"))
