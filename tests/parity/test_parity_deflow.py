"""deflow.py against the official DeFlow agent (github.com/muzhancun/DeFlow, agents/deflow.py at d81dd59): three full
updates from the same weights, batches and noise, in float64 and float32, with the flow trained and frozen.
Set OFFICIAL_DEFLOW to the checkout."""
import types

import numpy as np
import pytest
import torch

import harness
import mapping

OBS, ACT, B, HID = 6, 3, 32, (32, 32, 32)
CONFIGS = {  # name -> (our flags, official config overrides, flow frozen)
    # our --normalize-q-loss default is True (every official README command sets it); delta = target_divergence
    "default": ({}, dict(normalize_q_loss=True, target_divergence=0.001), False),
    "min+no-normq+delta0.01+K3": (dict(q_agg="min", normalize_q_loss=False, delta=0.01, flow_steps=3, tau=0.1,
                                       actor_layer_norm=True),
                                  dict(q_agg="min", normalize_q_loss=False, target_divergence=0.01, flow_steps=3,
                                       tau=0.1, actor_layer_norm=True), False),
    # --fix-bc-flow-online: ours update(train_flow=False); official fix_bc_flow_online with offline_steps=0, so its
    # flow is frozen from the first update (our deviation 9 concerns only the first online step after training)
    "frozen flow": (dict(fix_bc_flow_online=True), dict(normalize_q_loss=True, fix_bc_flow_online=True,
                                                       offline_steps=0), True),
}
METRICS = [("critic_loss", "critic/critic_loss"), ("q_mean", "critic/q_mean"), ("q_max", "critic/q_max"),
           ("q_min", "critic/q_min"), ("actor_loss", "actor/actor_loss"), ("bc_flow_loss", "actor/bc_flow_loss"),
           ("distill_loss", "actor/distill_loss"), ("q_loss", "actor/q_loss"), ("q", "actor/q"),
           ("alpha_loss", "actor/alpha_loss"), ("alpha_value", "actor/alpha_value"), ("mse", "actor/mse")]


def noise_maker(dtype, seed=1, b=B):
    rng = np.random.default_rng(seed)

    def make(step):
        arrays = dict(next=harness.normal(rng, (b, ACT), dtype), x0=harness.normal(rng, (b, ACT), dtype),
                      t=harness.uniform(rng, (b, 1), dtype), z=harness.normal(rng, (b, ACT), dtype))
        # the official `mse` draws a third policy sample; ours reuses the refined actions of z (deviation 6):
        # feeding it z again makes the two the same quantity
        return harness.Noise(arrays, ours=["next", "x0", "t", "z"], theirs=["next", "x0", "t", "z", "z"])
    return make


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_deflow_parity(config, dtype):
    path = harness.official("OFFICIAL_DEFLOW")
    import deflow
    ours, theirs, frozen_flow = CONFIGS[config]
    report = harness.Report("deflow", f"{config} {str(dtype)[6:]}")
    with harness.precision(dtype):
        mod = harness.load_agent(path, "deflow")
        cfg = mod.get_config()
        cfg.update(dict(actor_hidden_dims=HID, value_hidden_dims=HID, batch_size=B, **theirs))
        f = harness.np_dtype(dtype)
        agent = harness.create_agent(mod.DeFlowAgent, cfg, np.zeros((1, OBS), f), np.zeros((1, ACT), f))
        agent = harness.cast_agent(agent, dtype)
        args = deflow.Args(actor_hidden_dims=HID, value_hidden_dims=HID, batch_size=B, device="cpu", **ours)
        nets = deflow.make_nets(args, OBS, ACT).to(dtype)
        entries = mapping.deflow(nets)
        mapping.check_complete(entries, agent.network.params, nets)
        mapping.load(entries, agent.network.params, nets)
        opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=args.lr)
        script = types.SimpleNamespace(update=lambda n, o, b, a: deflow.update(n, o, b, a, train_flow=not frozen_flow))
        # frozen: the official flow loss is the constant 0 (so is its gradient); ours reports L_flow unused
        metrics = [m for m in METRICS if not (frozen_flow and m[0] == "bc_flow_loss")]
        frozen = {"modules_target_critic"} | ({"modules_actor_bc_flow"} if frozen_flow else set())
        harness.run_updates(report, script=script, agent=agent, nets=nets, opt=opt, args=args, entries=entries,
                            frozen=frozen, metrics=metrics, make_batch=harness.transitions(B, OBS, ACT, dtype),
                            make_noise=noise_maker(dtype), dtype=dtype)
    report.assert_ok()
