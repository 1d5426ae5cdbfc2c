"""DriftQL: the drift field of Alg. 1, the gradient routing of the official code, the bandit and end-to-end runs."""
import csv
import functools
import glob
import math

import pytest
import torch

import common
import conftest
import driftql
import fql
import plumbing
import runfiles
from conftest import A, B, D, MAZE_ID, assert_batched_critic, grads_of, run_dir_of

KERNELS = ("laplace", "gaussian")
small_args = functools.partial(conftest.small_args, driftql, drift_ngen=8)
nets_for = functools.partial(conftest.seeded_nets, driftql)
batch = conftest.random_batch


def rand_set(b, n, a, seed=0, scale=0.5):
    return (torch.randn(b, n, a, generator=torch.Generator().manual_seed(seed)) * scale).clamp(-1, 1)


# ---------------------------------------------------------------------------------------------------- kernel, Alg. 1
@pytest.mark.parametrize("kernel", KERNELS)
def test_weights_match_alg1_by_hand(kernel):
    """Alg. 1 lines 4-7 written out for N = 3, A = 2: d = |a_i - a_k| / sqrt(2), logits, softmax over k != i."""
    g = torch.tensor([[[0.1, -0.2], [0.5, 0.3], [-0.4, 0.6]]], dtype=torch.float64)
    temp = 0.3
    w = driftql.repulsion_weights(g, temp, kernel)[0]
    for i in range(3):
        logits = {}
        for k in range(3):
            if k != i:
                d = math.dist(g[0, i].tolist(), g[0, k].tolist()) / math.sqrt(2)
                logits[k] = -d / temp if kernel == "laplace" else -d * d / (2 * temp * temp)
        z = sum(math.exp(v) for v in logits.values())
        assert w[i, i].item() == 0.0
        for k, v in logits.items():
            assert w[i, k].item() == pytest.approx(math.exp(v) / z, rel=1e-9)
    d = torch.tensor([0.0, 0.5, 2.0])
    expect = -d / temp if kernel == "laplace" else -d ** 2 / (2 * temp ** 2)
    torch.testing.assert_close(driftql.kernel_logits(d, temp, kernel), expect)


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel"):
        driftql.kernel_logits(torch.ones(2), 0.2, "cosine")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("temp", [0.02, 0.2, 0.9])
def test_self_repulsion_is_masked_and_rows_are_normalised_over_the_others(kernel, temp):
    g = rand_set(4, 6, 3)
    w = driftql.repulsion_weights(g, temp, kernel)
    assert torch.all(torch.diagonal(w, dim1=-2, dim2=-1) == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(4, 6), rtol=0, atol=1e-6)
    # moving sample 2 (even on top of sample 0) leaves every self weight at exactly 0, and sample 0 now
    # gives its weight almost entirely to sample 2; the diagonal is masked by index, not by distance
    moved = g.clone()
    moved[:, 2] = g[:, 0]
    w2 = driftql.repulsion_weights(moved, temp, kernel)
    assert torch.all(torch.diagonal(w2, dim1=-2, dim2=-1) == 0)
    assert torch.all(w2[:, 0, 2] >= w[:, 0, 2]) and torch.all(w2[:, 0, 2] == w2[:, 0].amax(-1))


def test_a_single_sample_has_no_repulsion_and_no_nan():
    g, pos = rand_set(3, 1, 2), torch.rand(3, 2)
    v, v_att, v_rep = driftql.drift_field(g, pos[:, None], 0.2, "laplace")
    assert torch.all(v_rep == 0) and torch.equal(v, pos[:, None] - g)


@pytest.mark.parametrize("kernel", KERNELS)
def test_two_samples_repel_by_exactly_the_displacement_to_the_other(kernel):
    g, pos = rand_set(5, 2, 3), torch.rand(5, 3) * 2 - 1
    for temp in (0.02, 0.2, 5.0):
        v, v_att, v_rep = driftql.drift_field(g, pos[:, None], temp, kernel)
        assert torch.equal(v_rep[:, 0], g[:, 1] - g[:, 0]) and torch.equal(v_rep[:, 1], g[:, 0] - g[:, 1])
        torch.testing.assert_close(v[:, 0], pos - g[:, 1], rtol=0, atol=3e-7)  # V_1 = a+ - a_2


def test_attraction_is_the_displacement_to_the_dataset_action_and_affine_in_it():
    g, pos = rand_set(4, 7, 3), torch.rand(4, 3) * 2 - 1
    v, v_att, v_rep = driftql.drift_field(g, pos[:, None], 0.2, "gaussian")
    assert torch.equal(v_att, pos[:, None] - g) and torch.equal(v, v_att - v_rep)
    delta = torch.tensor([0.1, -0.3, 0.2])
    torch.testing.assert_close(driftql.drift_field(g, (pos + delta)[:, None], 0.2, "gaussian")[0] - v, delta.expand_as(v))


def test_states_do_not_interact():
    g, pos = rand_set(3, 8, 2), torch.rand(3, 2)
    moved = g.clone()
    moved[1] += 0.3
    for a, b in zip(driftql.drift_field(g, pos[:, None], 0.2, "laplace"),
                    driftql.drift_field(moved, pos[:, None], 0.2, "laplace")):
        assert torch.equal(a[[0, 2]], b[[0, 2]]) and not torch.equal(a[1], b[1])


def test_tau_to_zero_repels_from_the_nearest_other_sample_only():
    g = rand_set(2, 5, 2)
    v_rep = driftql.drift_field(g, torch.zeros(2, 1, 2), 1e-4, "laplace")[2]
    d = torch.cdist(g, g) + torch.eye(5) * 1e9
    nn = g.gather(1, d.argmin(-1, keepdim=True).expand(-1, -1, 2))
    torch.testing.assert_close(v_rep, nn - g)


# ---------------------------------------------------------------------------------------------------- q = p
# Eq. 3 is a difference of two mean shifts, over the positives and over the other generated samples. In its
# multi-positive form it cancels exactly when the two sets are equal; that is checked first, with a positive mask
# that leaves sample i out of state i's positives, as the repulsion leaves it out of its negatives. The official code
# has one positive per state (Eq. 7); what survives of "V = 0 when q = p" there is checked next: (a) exactly, in the
# flat-kernel limit, the repulsion sums to zero over the samples and the whole field sums to zero when the positive
# is the samples' mean; (b) statistically, with positives and samples drawn from the same p, the expected field at a
# sample, E[V_i | a_i], vanishes as the kernel widens, and does not at a narrow kernel (there it pulls every sample
# towards the data mean).
@pytest.mark.parametrize("kernel", KERNELS)
def test_multi_positive_field_cancels_exactly_when_positives_and_negatives_are_the_same_set(kernel):
    n = 7
    g = rand_set(1, n, 3).double().expand(n, n, 3)  # state i holds the same n samples; sample i is the one we read
    not_self = ~torch.eye(n, dtype=torch.bool)  # state i's positives: the other n - 1 samples, its negatives too
    for temp in (0.05, 0.2, 2.0):
        v, v_att, v_rep = driftql.drift_field(g, g, temp, kernel, pos_mask=not_self)
        diag = torch.arange(n)
        assert v_att[diag, diag].abs().max() > 1e-2  # both terms are there ...
        torch.testing.assert_close(v[diag, diag], torch.zeros(n, 3, dtype=torch.float64), rtol=0, atol=1e-12)
        # ... and with the sample itself among its positives (no mask) they no longer cancel
        v_self = driftql.drift_field(g, g, temp, kernel)[0]
        assert v_self[diag, diag].abs().max() > 1e-3


def test_masked_positives_are_ignored_and_one_positive_gets_weight_one():
    g, pos = rand_set(3, 6, 2), torch.rand(3, 1, 2) * 2 - 1
    junk = torch.cat([pos, g[:, :2] + 0.01], 1)  # two decoys right next to the samples
    mask = torch.tensor([[True, False, False]]).expand(3, 3)
    for out_one, out_masked in zip(driftql.drift_field(g, pos, 0.2, "laplace"),
                                   driftql.drift_field(g, junk, 0.2, "laplace", pos_mask=mask)):
        assert torch.equal(out_one, out_masked)
    assert torch.equal(driftql.drift_field(g, pos, 0.2, "laplace")[1], pos - g)  # Eq. 7, bit for bit
    assert not torch.equal(driftql.drift_field(g, junk, 0.2, "laplace")[1], pos - g)


def test_flat_kernel_field_sums_to_zero_when_the_positive_is_the_mean():
    g = rand_set(4, 16, 3).double()
    v, v_att, v_rep = driftql.drift_field(g, g.mean(1, keepdim=True), 1e6, "gaussian")
    torch.testing.assert_close(v_rep.sum(1), torch.zeros(4, 3, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(v.sum(1), torch.zeros(4, 3, dtype=torch.float64), rtol=0, atol=1e-10)
    v_narrow = driftql.drift_field(g, g.mean(1, keepdim=True), 0.05, "gaussian")[0]
    assert v_narrow.sum(1).abs().max() > 1e-2  # the row-normalised weights are not symmetric at finite tau


def test_collapsed_samples_on_the_dataset_action_feel_no_drift():
    pos = torch.rand(3, 2) * 2 - 1
    g = pos[:, None].expand(3, 6, 2).clone().requires_grad_(True)
    loss, v, _, _ = driftql.drift_loss(g, pos[:, None], 0.2, "laplace", 1.0)
    loss.backward()
    assert v.abs().max() < 1e-6 and loss < 1e-12 and g.grad.abs().max() < 1e-6


def test_expected_field_vanishes_as_the_kernel_widens_when_q_equals_p():
    gen = torch.Generator().manual_seed(0)
    states, n = 4000, 16
    g = torch.randn(states, n, 2, generator=gen) * 0.3  # generated samples ~ p
    pos = torch.randn(states, 2, generator=gen) * 0.3  # one positive per state ~ p
    slopes = []
    for temp in (0.02, 0.2, 2.0, 50.0):
        v = driftql.drift_field(g, pos[:, None], temp, "gaussian")[0]
        # regression slope of V_i on a_i - mean(p): 0 iff the expected field does not depend on where the sample is
        slopes.append(float((v * g).sum() / (g * g).sum()))
    assert slopes[0] < -0.5  # narrow kernel: V_i ~ a+ - nearest neighbour, a pull towards the mean of p
    assert all(abs(b) < abs(a) for a, b in zip(slopes, slopes[1:]))
    assert abs(slopes[-1]) < 0.02  # flat kernel: E[V_i | a_i] = E[a+] - E[mean of the others] = 0


# ---------------------------------------------------------------------------------------------------- target, loss
def test_target_is_clipped_and_carries_no_gradient():
    g = torch.tensor([[[0.9, 0.0], [0.2, -0.95]]], requires_grad=True)
    pos = torch.tensor([[0.99, -0.99]])
    v = driftql.drift_field(g.detach(), pos[:, None], 0.2, "laplace")[0]
    raw = g.detach() + v
    target = driftql.drift_target(g, v, 1.0)
    assert raw.abs().max() > 1 and not target.requires_grad and target.grad_fn is None
    torch.testing.assert_close(target, raw.clamp(-1, 1))
    assert torch.all(target.abs() <= 1) and (target.abs() == 1).any()


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_loss_gradient_is_the_regression_onto_the_fixed_target(eta):
    """d L / d a = 2 (a - target) / (B N A): a mean over every element, as the official code reduces Eq. 11."""
    b, n, a = 3, 5, 4
    g = (rand_set(b, n, a, scale=0.8) * 1.2).clamp(-1, 1).requires_grad_(True)  # some targets clip
    pos = torch.rand(b, a) * 2 - 1
    loss, v, _, _ = driftql.drift_loss(g, pos[:, None], 0.2, "gaussian", eta)
    loss.backward()
    target = (g.detach() + eta * v).clamp(-1, 1)
    torch.testing.assert_close(g.grad, 2 * (g.detach() - target) / (b * n * a))
    torch.testing.assert_close(loss, ((g.detach() - target) ** 2).sum() / (b * n * a))
    # where nothing is clipped the step is the drift itself
    free = (g.detach() + eta * v).abs() < 1
    torch.testing.assert_close(g.grad[free], (-2 * eta * v / (b * n * a))[free])


def test_no_gradient_outside_the_action_box():
    raw = torch.tensor([[[1.5, 0.2], [-0.3, -2.0], [0.1, 0.4]]], requires_grad=True)
    loss = driftql.drift_loss(raw.clamp(-1, 1), torch.tensor([[[0.5, 0.5]]]), 0.2, "laplace", 1.0)[0]
    loss.backward()
    assert raw.grad[0, 0, 0] == 0 and raw.grad[0, 1, 1] == 0 and raw.grad[0, 2].abs().min() > 0


# ---------------------------------------------------------------------------------------------------- networks, act
def test_networks_follow_the_official_architecture():
    nets = driftql.make_nets(driftql.Args(), 29, 8)
    assert list(nets) == ["actor_bc_drift", "critic", "target_critic"]
    actor = nets["actor_bc_drift"].net
    assert [type(m).__name__ for m in actor] == ["Linear", "GELU"] * 4 + ["Linear"]
    assert actor[0].in_features == 29 + 8 and actor[-1].out_features == 8
    assert driftql.make_nets(driftql.Args(noise_dim=8), 29, 5)["actor_bc_drift"].net[0].in_features == 37
    assert_batched_critic(nets["critic"], 2, 29 + 8)
    assert not any(p.requires_grad for p in nets["target_critic"].parameters())


def test_act_is_one_forward_pass_clipped_with_fresh_noise():
    args = small_args(noise_dim=7)
    nets = nets_for(args)
    calls = []
    nets["actor_bc_drift"].net[-1].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        nets["actor_bc_drift"].net[-1].weight.mul_(50)  # push raw outputs outside the box
    obs = torch.randn(64, D)
    a1, a2 = driftql.act(nets, obs, args), driftql.act(nets, obs, args)
    assert len(calls) == 2 and a1.shape == (64, A) and a1.abs().max() == 1 and not torch.equal(a1, a2)
    with torch.no_grad():
        nets["actor_bc_drift"].net[-1].bias[0] = float("nan")
    assert torch.all(driftql.act(nets, obs, args)[:, 0] == 0)  # NaN -> 0, as the official sample_actions


# ---------------------------------------------------------------------------------------------------- gradient routing
def test_q_term_reaches_only_the_actor():
    args = small_args()
    nets = nets_for(args)
    g = grads_of(driftql.losses(nets, batch(), args)["q_loss"], nets)
    assert g["actor_bc_drift"] > 0 and g["critic"] == 0 and g["target_critic"] == 0


def test_actor_loss_leaves_the_critic_untouched_and_critic_loss_the_actor():
    args = small_args()
    nets = nets_for(args)
    out = driftql.losses(nets, batch(), args)
    g = grads_of(out["actor_loss"], nets)
    assert g["critic"] == 0 and g["actor_bc_drift"] > 0
    g = grads_of(driftql.losses(nets, batch(), args)["critic_loss"], nets)
    assert g["critic"] > 0 and g["actor_bc_drift"] == 0
    g = grads_of(driftql.losses(nets, batch(), args)["bc_drift_loss"], nets)
    assert g["actor_bc_drift"] > 0 and g["critic"] == 0
    # an optimiser step on the actor loss alone leaves the critic's parameters exactly where they were
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=1e-2)
    critic0 = [p.detach().clone() for p in nets["critic"].parameters()]
    actor0 = [p.detach().clone() for p in nets["actor_bc_drift"].parameters()]
    opt.zero_grad()
    driftql.losses(nets, batch(), args)["actor_loss"].backward()
    opt.step()
    assert all(torch.equal(p, p0) for p, p0 in zip(nets["critic"].parameters(), critic0))
    assert not all(torch.equal(p, p0) for p, p0 in zip(nets["actor_bc_drift"].parameters(), actor0))


def test_drift_samples_are_grouped_by_state_with_independent_noise():
    args = small_args()
    nets = nets_for(args)
    assert driftql.losses(nets, batch(), args)["drift_repel_norm"] > 1e-3
    with torch.no_grad():
        nets["actor_bc_drift"].net[0].weight[:, D:] = 0  # the output no longer depends on the noise
    # the N samples of a state are now identical, so nothing repels (the norm is sqrt(1e-12)): this fails if the
    # rows of a state mixed samples of several states
    assert driftql.losses(nets, batch(), args)["drift_repel_norm"] < 1e-5


def test_same_state_positives_change_nothing_unless_states_repeat():
    """--same-state-positives: with distinct states every row keeps its own action as its only positive, so the
    losses equal the official ones bit for bit; with one repeated state the attraction sees the other rows' actions."""
    def drift_terms(b, **kw):
        args = small_args(**kw)
        torch.manual_seed(3)
        out = driftql.losses(nets_for(args), b, args)
        return out["bc_drift_loss"], out["drift_attract_norm"]

    distinct = batch()
    for x, y in zip(drift_terms(distinct), drift_terms(distinct, same_state_positives=True)):
        assert torch.equal(x, y)
    one_state = dict(distinct, observations=distinct["observations"][:1].expand(B, D).clone())
    official, pooled = drift_terms(one_state), drift_terms(one_state, same_state_positives=True)
    assert official[0] > pooled[0] + 1e-3 and official[1] > pooled[1]  # the nearest positives pull less far


def test_q_term_uses_the_ensemble_mean_at_a_clipped_sample():
    args = small_args()
    nets, b = nets_for(args), batch()
    with torch.no_grad():  # a generator with a constant output, partly outside the box
        nets["actor_bc_drift"].net[-1].weight.zero_()
        nets["actor_bc_drift"].net[-1].bias.copy_(torch.tensor([0.3, -1.7, 2.0]))
    out = driftql.losses(nets, b, args)
    qs = nets["critic"](b["observations"], torch.tensor([0.3, -1.0, 1.0]).expand(B, A))
    assert not torch.allclose(qs[0], qs[1])
    torch.testing.assert_close(out["q"], qs.mean(0).mean())
    torch.testing.assert_close(out["q_loss"], -qs.mean(0).mean())


def test_critic_loss_uses_masks_not_terminals_and_the_q_agg():
    args = small_args()
    nets, b = nets_for(args), batch()

    def critic_loss(bb, **kw):
        torch.manual_seed(1)
        return driftql.losses(nets, bb, small_args(**kw))["critic_loss"]

    base = critic_loss(b)
    assert base == critic_loss({**b, "terminals": 1 - b["terminals"]})
    assert base != critic_loss({**b, "masks": 1 - b["masks"]})
    assert base != critic_loss(b, q_agg="mean")


def test_normalized_q_loss_is_scale_free():
    args = small_args(normalize_q_loss=True)
    nets = nets_for(args)
    with torch.no_grad():
        nets["critic"].biases[-1].sub_(50.0)  # all Q < 0: -mean(Q) / (mean|Q| + 1e-6) is 1 up to the 1e-6
    torch.manual_seed(3)
    assert driftql.losses(nets, batch(), args)["q_loss"].item() == pytest.approx(1.0, abs=1e-6)


def test_update_moves_the_target_only_by_polyak_from_the_pre_update_critic():
    args = small_args(tau=0.1)
    nets = nets_for(args)
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=1e-2)
    critic_before = [p.detach().clone() for p in nets["critic"].parameters()]
    target_before = [p.detach().clone() for p in nets["target_critic"].parameters()]
    metrics = driftql.update(nets, opt, batch(), args)
    for c0, t0, t1, c1 in zip(critic_before, target_before, nets["target_critic"].parameters(),
                              nets["critic"].parameters()):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * c0)
        assert not torch.equal(c1, c0)
    assert {"bc_drift_loss", "drift_norm", "drift_attract_norm", "drift_repel_norm", "total_loss"} <= set(metrics)
    assert metrics["bc_drift_loss"] == pytest.approx(args.alpha * metrics["bc_drift_loss_raw"].item())


# ---------------------------------------------------------------------------------------------------- bandit
# python driftql.py --env-id bandit-4gaussian --actor-hidden-dims 64 64 --value-hidden-dims 64 64 --batch-size 64 \
#     --lr 1e-3 --alpha 30 --drift-temp 0.1 --same-state-positives      (laplace, N = 32, noise dim 2, 5K steps: defaults)
BANDIT = dict(env_id="bandit-4gaussian", actor_hidden_dims=(64, 64), value_hidden_dims=(64, 64), batch_size=64, lr=1e-3,
              eval_interval=5000, alpha=30.0, drift_temp=0.1, same_state_positives=True, device="cpu")
# the official single positive, at the settings where it does best on the bandit (README, DriftQL, The bandit)
BANDIT_ONE_POSITIVE = dict(BANDIT, offline_steps=2500, eval_interval=2500, kernel="gaussian", drift_temp=0.2, alpha=0.1,
                           same_state_positives=False)


@pytest.mark.slow
def test_bandit_samples_concentrate_on_both_tied_best_modes(tmp_path):
    """Fig. 1: one state, the batch's dataset actions are all positives of it (Eq. 3). Seeds 0-2 give 47-49 % on each
    tied best mode, 4 % between the modes and none on the low modes."""
    out = driftql.main(driftql.Args(**BANDIT, runs_dir=str(tmp_path)))
    assert out["frac_right"] >= 0.3 and out["frac_bottom"] >= 0.3
    assert out["frac_right"] + out["frac_bottom"] >= 0.9
    assert out["frac_top"] + out["frac_left"] + out["frac_between"] <= 0.1


@pytest.mark.slow
def test_bandit_with_one_positive_per_state_takes_one_tied_mode_only(tmp_path):
    """The official field (one positive per row) pulls every sample towards the mean of the data, so nothing spreads
    the samples over the modes: the Q term carries the whole cloud to ONE of the tied modes (seed-dependent)."""
    out = driftql.main(driftql.Args(**BANDIT_ONE_POSITIVE, runs_dir=str(tmp_path)))
    assert max(out["frac_right"], out["frac_bottom"]) >= 0.9
    assert out["frac_top"] + out["frac_left"] + out["frac_between"] <= 0.1


@pytest.mark.parametrize("env_id", ["bandit-4gaussian", "bandit-4gaussian-rot1", "bandit-4gaussian-rot2",
                                    "bandit-4gaussian-rot3"])
@pytest.mark.slow
def test_bandit_samples_go_to_the_tied_pair_whichever_it_is(env_id, tmp_path):
    """The tie is a parameter of the bandit: after 1K steps (a fifth of the budget) the samples have reached both
    tied modes of every rotation and no other mode. At 5K steps (README, DriftQL) see the measured rates."""
    out = driftql.main(driftql.Args(**dict(BANDIT, env_id=env_id, offline_steps=1000, eval_interval=1000,
                                           save_model=False), runs_dir=str(tmp_path)))
    tied = common.bandit_tied_modes(env_id)
    untied = [m for m in common.BANDIT_NAMES if m not in tied]
    assert min(out[f"frac_{m}"] for m in tied) >= 0.03
    assert max(out[f"frac_{m}"] for m in untied) == 0.0


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
            saved[step] = driftql.act(nets, obs, args)

    monkeypatch.setattr(plumbing.Run, "save", save_and_remember_actions)
    args = small_args(env_id=MAZE_ID, offline_steps=150, eval_interval=100, eval_episodes=2, log_interval=50,
                      device="cpu", runs_dir=str(tmp_path / "driftql"), noise_dim=4)
    result = driftql.main(args)
    assert {"success_rate", "episodic_return", "episodic_length"} <= set(result)
    d = run_dir_of(tmp_path / "driftql")
    rows = list(csv.DictReader(open(f"{d}/eval.csv")))
    assert [r["step"] for r in rows] == ["1", "100", "150"]
    assert glob.glob(f"{d}/events.out.tfevents.*")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(d)
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"losses/critic_loss", "losses/bc_drift_loss", "losses/drift_norm", "losses/drift_attract_norm",
            "losses/drift_repel_norm", "eval/success_rate", "charts/SPS"} <= tags
    # the final checkpoint reloads to the actions the trained nets gave under the same seed
    payload = runfiles.load_checkpoint(f"{d}/driftql.pt", "driftql", torch.device("cpu"))
    assert payload["step"] == 150
    args = driftql.Args(**payload["args"])
    nets = driftql.make_nets(args, 2, 2)
    nets.load_state_dict(payload["nets"])
    torch.manual_seed(5)
    assert torch.equal(driftql.act(nets, obs, args), saved[150]) and not torch.equal(saved[1], saved[150])
    # a checkpoint of another script is refused
    monkeypatch.setattr(plumbing.Run, "save", real_save)
    fql.main(fql.Args(env_id="bandit-4gaussian", actor_hidden_dims=(8,), value_hidden_dims=(8,), offline_steps=2,
                      device="cpu", runs_dir=str(tmp_path / "fql")))
    with pytest.raises(ValueError, match="written by fql.py, not driftql.py"):
        runfiles.load_checkpoint(f"{run_dir_of(tmp_path / 'fql')}/fql.pt", "driftql", torch.device("cpu"))
