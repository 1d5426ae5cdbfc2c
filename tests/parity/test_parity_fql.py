"""fql.py against the official FQL agent (github.com/seohongpark/fql, agents/fql.py at 719d044): three full updates
from the same weights, batches and noise, in float64 and float32. Set OFFICIAL_FQL to the checkout."""
import numpy as np
import pytest
import torch

import harness
import mapping

OBS, ACT, B, HID = 6, 3, 32, (32, 32, 32)
CONFIGS = {  # name -> (our flags, official config); every flag that differs from a default is set on both sides
    "default": ({}, {}),
    "min+normq+actor_ln+K3": (dict(q_agg="min", normalize_q_loss=True, actor_layer_norm=True, flow_steps=3,
                                   alpha=3.0, discount=0.95, tau=0.1),
                              dict(q_agg="min", normalize_q_loss=True, actor_layer_norm=True, flow_steps=3,
                                   alpha=3.0, discount=0.95, tau=0.1)),
}
METRICS = [("critic_loss", "critic/critic_loss"), ("q_mean", "critic/q_mean"), ("q_max", "critic/q_max"),
           ("q_min", "critic/q_min"), ("actor_loss", "actor/actor_loss"), ("bc_flow_loss", "actor/bc_flow_loss"),
           ("distill_loss", "actor/distill_loss"), ("q_loss", "actor/q_loss"), ("q", "actor/q"),
           ("mse", "actor/mse")]


def noise_maker(dtype, seed=1, b=B):
    rng = np.random.default_rng(seed)

    def make(step):
        arrays = dict(next=harness.normal(rng, (b, ACT), dtype), x0=harness.normal(rng, (b, ACT), dtype),
                      t=harness.uniform(rng, (b, 1), dtype), z=harness.normal(rng, (b, ACT), dtype))
        # the official `mse` diagnostic samples the one-step policy with fresh noise; ours reuses the distillation
        # noise z: feeding it z again makes the two the same quantity
        return harness.Noise(arrays, ours=["next", "x0", "t", "z"], theirs=["next", "x0", "t", "z", "z"])
    return make


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_fql_parity(config, dtype):
    path = harness.official("OFFICIAL_FQL")
    import fql
    ours, theirs = CONFIGS[config]
    report = harness.Report("fql", f"{config} {str(dtype)[6:]}")
    with harness.precision(dtype):
        mod = harness.load_agent(path, "fql")
        cfg = mod.get_config()
        cfg.update(dict(actor_hidden_dims=HID, value_hidden_dims=HID, batch_size=B, **theirs))
        f = harness.np_dtype(dtype)
        agent = harness.create_agent(mod.FQLAgent, cfg, np.zeros((1, OBS), f), np.zeros((1, ACT), f))
        agent = harness.cast_agent(agent, dtype)
        args = fql.Args(actor_hidden_dims=HID, value_hidden_dims=HID, batch_size=B, device="cpu", **ours)
        nets = fql.make_nets(args, OBS, ACT).to(dtype)
        entries = mapping.fql(nets)
        mapping.check_complete(entries, agent.network.params, nets)
        mapping.load(entries, agent.network.params, nets)
        opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=args.lr)
        harness.run_updates(report, script=fql, agent=agent, nets=nets, opt=opt, args=args, entries=entries,
                            frozen={"modules_target_critic"}, metrics=METRICS,
                            make_batch=harness.transitions(B, OBS, ACT, dtype),
                            make_noise=noise_maker(dtype), dtype=dtype)
    report.assert_ok()
