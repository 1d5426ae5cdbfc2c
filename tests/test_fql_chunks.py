"""fql.py with --horizon h > 1 and --actor-type best-of-n: the Q-chunking agent of ColinQiyangLi/qc `agents/acfql.py`
(QC-FQL, FQL-n, BFN, QC-BFN). The h = 1 distill-ddpg path stays FQL's, number for number."""
import copy
import csv
import functools

import numpy as np
import pytest
import torch

import common
import conftest
import fql
import runfiles
from conftest import A, B, D, MAZE_ID, assert_one_line, cli, grads_of, run_dir_of

small_args = functools.partial(conftest.small_args, fql)
nets_for = functools.partial(conftest.seeded_nets, fql)
CPU = torch.device("cpu")
# the four agents of the Q-chunking paper's table at h = 3
VARIANTS = {"qc-fql": dict(), "fql-n": dict(action_chunking=False), "qc-bfn": dict(actor_type="best-of-n"),
            "bfn-n": dict(actor_type="best-of-n", action_chunking=False)}


def chunk_batch(h=3, seed=0, b=B, d=D, a=A):
    """A batch in the form `Dataset.sample_chunks` returns: actions [b, h, a], some chunks cut by an episode end."""
    g = torch.Generator().manual_seed(seed)
    ended = torch.randint(0, h + 2, (b,), generator=g)  # the first invalid step; >= h: the whole chunk is valid
    valid_steps = (torch.arange(h)[None] < ended[:, None]).float()
    return dict(observations=torch.randn(b, d, generator=g), actions=torch.rand(b, h, a, generator=g) * 2 - 1,
                rewards=-torch.rand(b, generator=g) * h, next_observations=torch.randn(b, d, generator=g),
                masks=(torch.rand(b, generator=g) > 0.3).float(), valid=valid_steps[:, -1], valid_steps=valid_steps)


# ---------------------------------------------------------------------------------------------------- h = 1
def plain_fql_losses(nets, batch, args):
    """fql.losses as it was before Q-chunking (commit f644219), kept verbatim as the reference of the h = 1 path."""
    obs, actions = batch["observations"], batch["actions"]
    bc_flow, onestep, critic = nets["actor_bc_flow"], nets["actor_onestep_flow"], nets["critic"]
    with torch.no_grad():
        next_obs = batch["next_observations"]
        next_actions = onestep(next_obs, torch.randn_like(actions)).clamp(-1, 1)
        next_q = fql.aggregate_q(nets["target_critic"](next_obs, next_actions), args.q_agg)
        y = fql.td_target(batch["rewards"], batch["masks"], next_q, args.discount)
    q = critic(obs, actions)
    critic_loss = ((q - y) ** 2).mean()
    x0, t = torch.randn_like(actions), torch.rand_like(actions[:, :1])
    xt = (1 - t) * x0 + t * actions
    bc_flow_loss = ((bc_flow(obs, xt, t) - (actions - x0)) ** 2).mean()
    z = torch.randn_like(actions)
    with torch.no_grad():
        target_flow_actions = fql.euler_integrate(bc_flow, obs, z, args.flow_steps)
    actor_actions = onestep(obs, z)
    distill_loss = ((actor_actions - target_flow_actions) ** 2).mean()
    q_pi = fql.frozen(critic)(obs, actor_actions.clamp(-1, 1)).mean(0)
    q_loss = -q_pi.mean()
    if args.normalize_q_loss:
        q_loss = q_loss / q_pi.abs().mean().detach()
    actor_loss = bc_flow_loss + args.alpha * distill_loss + q_loss
    return dict(critic_loss=critic_loss, q_mean=q.mean(), q_max=q.max(), q_min=q.min(), actor_loss=actor_loss,
                bc_flow_loss=bc_flow_loss, distill_loss=distill_loss, q_loss=q_loss, q=q_pi.mean(),
                mse=((actor_actions.clamp(-1, 1) - actions) ** 2).mean())


def plain_fql_nets(args, obs_dim, action_dim):
    """fql.make_nets before Q-chunking: the critic's weights are drawn first, then the BC flow's, the actor's."""
    critic = fql.Critic(obs_dim, action_dim, args.value_hidden_dims, args.layer_norm)
    return torch.nn.ModuleDict(dict(
        actor_bc_flow=fql.VectorField(obs_dim, action_dim, args.actor_hidden_dims, args.actor_layer_norm),
        actor_onestep_flow=fql.OneStepActor(obs_dim, action_dim, args.actor_hidden_dims, args.actor_layer_norm),
        critic=critic, target_critic=copy.deepcopy(critic).requires_grad_(False)))


@pytest.mark.parametrize("chunking", [True, False])
@pytest.mark.parametrize("q_agg", ["mean", "min"])
def test_h1_distill_ddpg_losses_and_updates_are_plain_fql_bit_for_bit(chunking, q_agg):
    args = small_args(action_chunking=chunking, q_agg=q_agg)
    assert args.horizon == 1 and args.actor_type == "distill-ddpg"  # the defaults are plain FQL
    nets = nets_for(args)
    torch.manual_seed(0)
    plain = plain_fql_nets(args, D, A)
    assert list(nets.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in nets.state_dict().items())
    ref_nets = copy.deepcopy(nets)
    opts = [torch.optim.Adam([p for p in n.parameters() if p.requires_grad], lr=1e-2) for n in (nets, ref_nets)]
    for step in range(3):
        b = conftest.random_batch(step)
        torch.manual_seed(step)
        got = fql.update(nets, opts[0], b, args)
        torch.manual_seed(step)
        want = fql.update(ref_nets, opts[1], b, args, loss_fn=plain_fql_losses)
        assert list(got) == list(want)
        assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]
    for (name, p), q in zip(nets.named_parameters(), ref_nets.parameters()):
        assert torch.equal(p, q), name
    for (name, p), q in zip(nets["target_critic"].named_parameters(), ref_nets["target_critic"].parameters()):
        assert torch.equal(p, q), name


def test_h1_takes_a_chunk_batch_of_length_one_as_the_plain_batch():
    # benchmark.py draws `sample_chunks` batches for every script with a --horizon: at h = 1 they give FQL's numbers
    args, b = small_args(), conftest.random_batch()
    nets = nets_for(args)
    torch.manual_seed(0)
    plain = fql.losses(nets, b, args)
    torch.manual_seed(0)
    chunked = fql.losses(nets, {**b, "actions": b["actions"][:, None], "valid": torch.ones(B)}, args)
    assert all(torch.equal(plain[k], chunked[k]) for k in plain)


# ---------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("variant", VARIANTS)
def test_networks_act_on_the_flattened_chunk_or_on_one_action(variant):
    h = 3
    args = small_args(horizon=h, actor_num_samples=4, **VARIANTS[variant])
    nets = nets_for(args)
    dim = h * A if args.action_chunking else A
    assert nets["actor_bc_flow"].net[0].in_features == D + dim + 1 and nets["actor_bc_flow"].net[-1].out_features == dim
    assert nets["critic"].weights[0].shape == (2, D + dim, 32)
    assert ("actor_onestep_flow" in nets) == (args.actor_type == "distill-ddpg")
    if "actor_onestep_flow" in nets:
        assert nets["actor_onestep_flow"].net[0].in_features == D + dim
        assert nets["actor_onestep_flow"].net[-1].out_features == dim
    obs = torch.randn(7, D)
    chunk = fql.act(nets, obs, args)
    assert chunk.shape == (7, dim) and float(chunk.abs().max()) <= 1
    out = fql.losses(nets, chunk_batch(h), args)
    assert all(v.shape == () for v in out.values())


@pytest.mark.parametrize("variant", VARIANTS)
def test_policy_plans_one_chunk_per_h_env_steps(variant, monkeypatch):
    h, calls = 3, []
    args = small_args(horizon=h, actor_num_samples=4, **VARIANTS[variant])
    nets, real = nets_for(args), fql.act
    monkeypatch.setattr(fql, "act", lambda *a: calls.append(1) or real(*a))
    policy = fql.make_policy(nets, args)
    torch.manual_seed(0)
    steps = [policy(torch.randn(5, D)) for _ in range(2 * h)]
    assert all(a.shape == (5, A) for a in steps)
    assert len(calls) == (2 if args.action_chunking else 2 * h)
    if args.action_chunking:  # the h actions of one plan, in order
        torch.manual_seed(0)
        first = real(nets, torch.randn(5, D), args).reshape(5, h, A)
        assert all(torch.equal(steps[j], first[:, j]) for j in range(h))


# ---------------------------------------------------------------------------------------------------- TD target
def tiny_chunk_dataset():
    """Two episodes, rows 0-3 and 4-9; the task is solved at row 2 (mask 0); row 9 ends by a time limit (mask 1).
    r_i = i + 1, observation i = [i, 0, 0, 0, 0]: a sampled chunk's observation names its start."""
    n = 10
    terminals, masks = np.zeros(n), np.ones(n)
    terminals[[3, 9]], masks[2] = 1, 0
    obs = np.zeros((n, D), np.float32)
    obs[:, 0] = np.arange(n)
    data = dict(observations=obs, actions=np.random.default_rng(0).uniform(-1, 1, (n, A)), rewards=np.arange(n) + 1.0,
                next_observations=obs + 100, masks=masks, terminals=terminals)
    return common.Dataset.from_numpy(data, CPU)


def constant_critic_(critic, values):
    """Member j of the ensemble returns values[j] for every input."""
    with torch.no_grad():
        critic.weights[-1].zero_()
        critic.biases[-1].copy_(torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("q_agg, next_value", [("mean", -5.0), ("min", -6.0)])
def test_h_step_target_matches_a_hand_computed_value(variant, q_agg, next_value):
    # discount 0.5, h = 3: R = r_0 + r_1 / 2 + r_2 / 4, bootstrapped with 0.5^3 = 0.125 where the chunk's mask is 1;
    # chunks 2 and 3 cross the episode end before their last step (valid 0); chunk 7 ends exactly at it (valid 1)
    want_y = {0: 2.75, 1: 4.5, 4: 9.75 + 0.125 * next_value, 5: 11.5 + 0.125 * next_value,
              6: 13.25 + 0.125 * next_value, 7: 15.0 + 0.125 * next_value}
    args = small_args(horizon=3, discount=0.5, q_agg=q_agg, actor_num_samples=3, **VARIANTS[variant])
    nets = nets_for(args, d=D, a=A)
    constant_critic_(nets["critic"], [0.5, 0.5])
    constant_critic_(nets["target_critic"], [-4.0, -6.0])  # mean -5, min -6 whatever the next action
    torch.manual_seed(0)
    batch = tiny_chunk_dataset().sample_chunks(64, 3, 0.5)
    starts = batch["observations"][:, 0].long().tolist()
    assert {2, 3} & set(starts) and {0, 7} & set(starts)
    per_sample = [(0.5 - want_y[s]) ** 2 if s in want_y else 0.0 for s in starts]
    got = fql.losses(nets, batch, args)["critic_loss"]
    assert got.item() == pytest.approx(np.mean(per_sample), rel=1e-6)


def test_fql_n_critic_sees_the_first_action_and_qc_fql_the_whole_chunk():
    b = chunk_batch()
    later = {**b, "actions": torch.cat([b["actions"][:, :1], -b["actions"][:, 1:]], 1)}
    for chunking in (True, False):
        args = small_args(horizon=3, action_chunking=chunking)
        nets = nets_for(args)
        loss = []
        for batch in (b, later):
            torch.manual_seed(0)
            out = fql.losses(nets, batch, args)
            loss.append((out["critic_loss"].item(), out["bc_flow_loss"].item()))
        assert (loss[0] != loss[1]) == chunking


def test_bc_flow_weights_each_chunk_step_by_its_validity_and_fql_n_does_not():
    # acfql: mean over [B, h, A] of the squared error times the step's validity (invalid steps count as zeros);
    # FQL-n: the plain mean over the first action
    b = chunk_batch()
    assert 0 < b["valid_steps"].mean() < 1
    for chunking in (True, False):
        args = small_args(horizon=3, action_chunking=chunking, actor_type="best-of-n", actor_num_samples=2)
        nets = nets_for(args)
        torch.manual_seed(0)
        got = fql.losses(nets, b, args)["bc_flow_loss"].item()
        torch.manual_seed(0)  # the draws of losses in order: the TD target's samples, then x0 and t
        fql.act(nets, b["next_observations"], args)
        dim = 3 * A if chunking else A
        x0, t = torch.randn(B, dim), torch.rand(B, 1)
        a = b["actions"].flatten(1) if chunking else b["actions"][:, 0]
        with torch.no_grad():
            err = (nets["actor_bc_flow"](b["observations"], (1 - t) * x0 + t * a, t) - (a - x0)) ** 2
        w = b["valid_steps"].repeat_interleave(A, 1) if chunking else torch.ones_like(err)
        assert got == pytest.approx((err * w).sum().item() / err.numel(), rel=1e-5)
        assert (got != pytest.approx(err.mean().item(), rel=1e-3)) == chunking


# ---------------------------------------------------------------------------------------------------- best-of-n
@pytest.mark.parametrize("q_agg", ["mean", "min"])
def test_best_of_n_executes_the_sample_with_the_largest_online_q(q_agg):
    n, h = 6, 2
    args = small_args(horizon=h, actor_type="best-of-n", actor_num_samples=n, q_agg=q_agg, flow_steps=3)
    nets = nets_for(args)
    with torch.no_grad():  # a target critic far from the online one: it must play no part in the choice
        for p in nets["target_critic"].parameters():
            p.mul_(-3.0)
    obs = torch.randn(9, D)
    torch.manual_seed(4)
    got = fql.best_of_n(nets, obs, args)
    torch.manual_seed(4)
    z = torch.randn(9, n, h * A)  # the official noise layout [B, N, D]
    picked = []
    for i in range(9):
        samples = fql.euler_integrate(nets["actor_bc_flow"], obs[i].expand(n, D), z[i], args.flow_steps)
        q = nets["critic"](obs[i].expand(n, D), samples)  # [2, n]
        score = q.mean(0) if q_agg == "mean" else q.amin(0)
        best = int(score.argmax())
        picked.append(best)
        torch.testing.assert_close(got[i], samples[best], rtol=0, atol=1e-6)
        assert float(score[best]) >= float(score.max())
    assert len(set(picked)) > 1  # not always the same slot


def test_td_target_uses_best_of_n_ranked_by_the_online_critic_and_valued_by_the_target():
    args = small_args(horizon=3, actor_type="best-of-n", actor_num_samples=5, discount=0.9, flow_steps=3)
    nets, b = nets_for(args), chunk_batch()
    torch.manual_seed(7)
    got = fql.losses(nets, b, args)["critic_loss"]
    torch.manual_seed(7)
    with torch.no_grad():
        nxt = fql.best_of_n(nets, b["next_observations"], args)
        y = b["rewards"] + 0.9 ** 3 * b["masks"] * nets["target_critic"](b["next_observations"], nxt).mean(0)
        q = nets["critic"](b["observations"], b["actions"].flatten(1))
    torch.testing.assert_close(got, (((q - y) ** 2) * b["valid"]).mean())
    # a one-sample policy gives another target
    torch.manual_seed(7)
    assert fql.losses(nets, b, small_args(**{**vars(args), "actor_num_samples": 1}))["critic_loss"] != got


# ---------------------------------------------------------------------------------------------------- gradient routing
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_loss_reaches_only_its_own_network(variant):
    args = small_args(horizon=3, actor_num_samples=3, **VARIANTS[variant])
    nets = nets_for(args)
    out = lambda: fql.losses(nets, chunk_batch(), args)  # noqa: E731
    g = grads_of(out()["critic_loss"], nets)
    assert g.pop("critic") > 0 and set(g.values()) == {0}
    g = grads_of(out()["bc_flow_loss"], nets)
    assert g.pop("actor_bc_flow") > 0 and set(g.values()) == {0}
    if args.actor_type == "best-of-n":  # nothing but the BC flow is trained by the actor loss
        g = grads_of(out()["actor_loss"], nets)
        assert g.pop("actor_bc_flow") > 0 and set(g.values()) == {0}
        assert not out()["distill_loss"].requires_grad and not out()["q_loss"].requires_grad
        return
    for term in ("distill_loss", "q_loss"):
        g = grads_of(out()[term], nets)
        assert g.pop("actor_onestep_flow") > 0 and set(g.values()) == {0}, term
    g = grads_of(out()["actor_loss"], nets)
    assert g["critic"] == 0 and g["target_critic"] == 0 and g["actor_onestep_flow"] > 0 and g["actor_bc_flow"] > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_update_moves_the_target_only_by_polyak(variant):
    args = small_args(horizon=3, actor_num_samples=3, tau=0.1, **VARIANTS[variant])
    nets = nets_for(args)
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=1e-2)
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in nets.items()}
    fql.update(nets, opt, chunk_batch(), args)
    for c0, t0, t1 in zip(before["critic"], before["target_critic"], nets["target_critic"].parameters()):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * c0)
    for name in ("critic", "actor_bc_flow", "actor_onestep_flow"):
        if name in nets:
            assert any(not torch.equal(p, q) for p, q in zip(nets[name].parameters(), before[name])), name


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, named", [
    (["--horizon", "0"], "--horizon"),
    (["--horizon", "2"], "--horizon"),  # every bandit episode is one step long: no chunk of 2 fits
    (["--actor-type", "best-of-n", "--actor-num-samples", "0"], "--actor-num-samples"),
])
def test_bad_chunk_flags_are_one_line(argv, named, tmp_path, capsys, monkeypatch):
    code, err = cli("fql", ["--env-id", "bandit-4gaussian", "--runs-dir", str(tmp_path / "runs"), "--device", "cpu",
                            "--actor-hidden-dims", "8", "--value-hidden-dims", "8", *argv], capsys, monkeypatch)
    assert_one_line(code, err, named)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_balanced_sampling_with_chunks_is_one_line(ogbench_dir, tmp_path, capsys, monkeypatch):
    code, err = cli("fql", ["--env-id", MAZE_ID, "--runs-dir", str(tmp_path / "runs"), "--device", "cpu",
                            "--horizon", "2", "--online-steps", "5", "--balanced-sampling"], capsys, monkeypatch)
    assert_one_line(code, err, "--balanced-sampling", "--horizon")
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------- end to end
TINY = dict(actor_hidden_dims=(16,), value_hidden_dims=(16,), batch_size=16, flow_steps=2, actor_num_samples=3,
            device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_offline_then_online_on_regenerated_pointmaze(variant, ogbench_dir, tmp_path, monkeypatch):
    h, online_calls, real = 3, [], fql.act
    monkeypatch.setattr(fql, "act", lambda nets, obs, args: (online_calls.append(1) if obs.shape[0] == 1 else None)
                        or real(nets, obs, args))
    args = fql.Args(**TINY, **VARIANTS[variant], env_id=MAZE_ID, horizon=h, offline_steps=10, online_steps=30,
                    start_training=6, eval_interval=1000, eval_episodes=2, log_interval=10, runs_dir=str(tmp_path),
                    eval_bc_flow=variant == "qc-fql")  # the flow-BC baseline executes chunks too
    result = fql.main(args)
    assert "success_rate" in result and ("bc_flow_success_rate" in result) == args.eval_bc_flow
    d = run_dir_of(tmp_path)
    assert [r["step"] for r in csv.DictReader(open(f"{d}/eval.csv"))] == ["1", "10", "40"]
    ckpt = runfiles.load_checkpoint(f"{d}/fql.pt", "fql", CPU)
    assert ckpt["step"] == 40 and ckpt["online"]["steps"] == 30
    assert max(int(s["step"]) for s in ckpt["optimizer"]["state"].values()) == 10 + 30 - 6 + 1
    # one policy call per chunk online (the pointmaze episodes outlast the 30 steps): 10 with chunks, 30 without
    assert len(online_calls) == (30 // h if args.action_chunking else 30)
    rows = ckpt["online"]["rows"]  # every executed step is stored, each chunk's steps in a row
    assert len(rows["observations"]) == 30
    assert torch.equal(rows["observations"][1:], rows["next_observations"][:-1])


@pytest.mark.slow
@pytest.mark.parametrize("actor_type", ["distill-ddpg", "best-of-n"])
def test_load_policy_of_a_qc_run_executes_the_same_chunks(actor_type, ogbench_dir, tmp_path, monkeypatch):
    obs, trained = torch.randn(7, 2), {}
    real_save = fql.plumbing.Run.save

    def actions_of(policy, seed=5):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return torch.stack([policy(obs) for _ in range(4)])

    def save_and_remember(run, step):
        real_save(run, step)
        trained[step] = actions_of(fql.make_policy(run.nets, run.args))

    monkeypatch.setattr(fql.plumbing.Run, "save", save_and_remember)
    fql.main(fql.Args(**TINY, env_id=MAZE_ID, horizon=2, actor_type=actor_type, offline_steps=4, eval_interval=2,
                      eval_episodes=1, runs_dir=str(tmp_path)))
    policy = runfiles.load_policy(f"{run_dir_of(tmp_path)}/fql.pt", "cpu")
    loaded = actions_of(policy)
    assert loaded.shape == (4, 7, 2) and torch.equal(loaded, trained[4]) and not torch.equal(loaded, trained[1])
    policy.reset()  # open-loop: the second call of a chunk ignores the observation; reset() plans anew
    with torch.random.fork_rng():
        torch.manual_seed(5)
        first, second = policy(obs), policy(obs * 0 + 9)
    assert torch.equal(first, loaded[0]) and torch.equal(second, loaded[1])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["qc-fql", "qc-bfn"])
def test_chunked_losses_compile_with_fullgraph_and_match_eager(variant, monkeypatch):
    """--compile traces losses whole (fullgraph fails on any graph break), best-of-n's ranking included."""
    from test_speed import fixed_noise

    args = small_args(horizon=3, actor_num_samples=3, flow_steps=3, **VARIANTS[variant])
    fixed_noise(monkeypatch)

    def run(loss_fn):
        nets = nets_for(args)
        opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=1e-3)
        return [fql.update(nets, opt, chunk_batch(), args, loss_fn=loss_fn) for _ in range(2)], nets

    eager, eager_nets = run(fql.losses)
    torch._dynamo.reset()
    compiled, compiled_nets = run(torch.compile(fql.losses, fullgraph=True, backend="aot_eager"))
    for e, c in zip(eager, compiled):
        for k in e:
            torch.testing.assert_close(c[k], e[k], rtol=1e-5, atol=1e-6, msg=k)
    for (k, e), c in zip(eager_nets.named_parameters(), compiled_nets.parameters()):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6, msg=k)
