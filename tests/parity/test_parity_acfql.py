"""fql.py with --horizon (Q-chunking) against the official acfql agent (github.com/ColinQiyangLi/qc,
agents/acfql.py at 48283b4): QC-FQL, FQL-n, BFN and QC-BFN, three full updates each from the same weights, chunk
batches and noise, in float64 and float32. Set OFFICIAL_QC to the checkout."""
import numpy as np
import pytest
import torch

import harness
import mapping

OBS, ACT, B, HID, H, N = 5, 2, 16, (32, 32, 32), 3, 4
VARIANTS = {  # name -> (action_chunking, actor_type); both sides get H, N, alpha and the rest at their defaults
    "QC-FQL": (True, "distill-ddpg"), "FQL-n": (False, "distill-ddpg"),
    "BFN": (False, "best-of-n"), "QC-BFN": (True, "best-of-n"),
}
METRICS = [("critic_loss", "critic/critic_loss"), ("q_mean", "critic/q_mean"), ("q_max", "critic/q_max"),
           ("q_min", "critic/q_min"), ("actor_loss", "actor/actor_loss"), ("bc_flow_loss", "actor/bc_flow_loss"),
           ("distill_loss", "actor/distill_loss")]


def chunk_batches(dtype, seed=0):
    """make(step) -> (ours, theirs): the official sample_sequence layout (per-step next observations, cumulative
    discounted rewards, masks and valid [B, h]) and ours (common.sample_chunks: the chunk's last entries, valid_steps
    = the per-step valid). Chunks end their episode at a random step, so some are partly invalid."""
    rng, f = np.random.default_rng(seed), harness.np_dtype(dtype)

    def make(step):
        valid = (np.arange(H)[None] < rng.integers(1, H + 1, (B, 1))).astype(f)  # [B, h], 1 up to the episode end
        theirs = dict(observations=rng.standard_normal((B, OBS)).astype(f),
                      actions=rng.uniform(-1, 1, (B, H, ACT)).astype(f),
                      next_observations=rng.standard_normal((B, H, OBS)).astype(f),
                      rewards=np.cumsum(rng.standard_normal((B, H)), 1).astype(f),
                      masks=(rng.random((B, H)) < 0.8).astype(f), valid=valid)
        ours = dict(observations=theirs["observations"], actions=theirs["actions"],
                    next_observations=theirs["next_observations"][:, -1], rewards=theirs["rewards"][:, -1],
                    masks=theirs["masks"][:, -1], valid=valid[:, -1], valid_steps=valid)
        return ours, theirs
    return make


def noise_maker(dtype, dim, best_of_n, seed=1):
    rng = np.random.default_rng(seed)

    def make(step):
        if best_of_n:  # the TD target's N flow samples per state (ours [B*N, D], state b's N rows in a row), x0, t
            arrays = dict(next=harness.normal(rng, (B, N, dim), dtype), x0=harness.normal(rng, (B, dim), dtype),
                          t=harness.uniform(rng, (B, 1), dtype))
            return harness.Noise(arrays, ours=["next", "x0", "t"], theirs=["next", "x0", "t"],
                                 our_shapes=dict(next=(B * N, dim)))
        arrays = dict(next=harness.normal(rng, (B, dim), dtype), x0=harness.normal(rng, (B, dim), dtype),
                      t=harness.uniform(rng, (B, 1), dtype), z=harness.normal(rng, (B, dim), dtype))
        return harness.Noise(arrays, ours=["next", "x0", "t", "z"], theirs=["next", "x0", "t", "z"])
    return make


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_acfql_parity(variant, dtype):
    path = harness.official("OFFICIAL_QC")
    import fql
    if not hasattr(fql.Args, "horizon"):
        pytest.skip("fql.py has no --horizon yet")
    chunking, actor_type = VARIANTS[variant]
    shared = dict(actor_hidden_dims=HID, value_hidden_dims=HID, batch_size=B, alpha=100.0, actor_type=actor_type,
                  actor_num_samples=N, action_chunking=chunking)
    report = harness.Report("fql-qc", f"{variant} {str(dtype)[6:]}")
    with harness.precision(dtype):
        mod = harness.load_agent(path, "acfql")
        cfg = mod.get_config()
        cfg.update(dict(shared, horizon_length=H))
        f = harness.np_dtype(dtype)
        agent = harness.create_agent(mod.ACFQLAgent, cfg, np.zeros(OBS, f), np.zeros(ACT, f))  # main.py: unbatched
        agent = harness.cast_agent(agent, dtype)
        args = fql.Args(device="cpu", horizon=H, **shared)
        nets = fql.make_nets(args, OBS, ACT).to(dtype)
        entries = mapping.acfql(nets)
        official_only = set() if actor_type == "distill-ddpg" else {"modules_actor_onestep_flow"}
        mapping.check_complete(entries, agent.network.params, nets, official_only)
        mapping.load(entries, agent.network.params, nets)
        opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=args.lr)
        dim = ACT * (H if chunking else 1)
        harness.run_updates(report, script=fql, agent=agent, nets=nets, opt=opt, args=args, entries=entries,
                            frozen={"modules_target_critic"} | official_only, metrics=METRICS,
                            make_batch=chunk_batches(dtype),
                            make_noise=noise_maker(dtype, dim, actor_type != "distill-ddpg"), dtype=dtype)
    report.assert_ok()
