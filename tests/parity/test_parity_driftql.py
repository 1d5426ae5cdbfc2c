"""driftql.py against the official DriftQL agent (github.com/DT6A/driftql, agents/driftql.py at 2da54d1): three full
updates from the same weights, batches and noise, in float64 and float32, for both kernels, and the drift field side
by side over shapes, temperatures, kernels and edge cases. Set OFFICIAL_DRIFTQL to the checkout."""
import numpy as np
import pytest
import torch

import harness
import mapping

OBS, ACT, B, HID = 6, 3, 32, (32, 32, 32)
SHARED = dict(drift_ngen=4)  # a small N keeps the suite fast; every other value is the default of both sides
CONFIGS = {  # name -> (our flags, official config overrides)
    "laplace": ({}, {}),
    "gaussian+mean+normq+noise5": (dict(kernel="gaussian", drift_temp=0.5, q_agg="mean", normalize_q_loss=True,
                                        noise_dim=5, drift_eta=0.5, alpha=3.0, tau=0.1),
                                   dict(kernel="gaussian", drift_temp=0.5, q_agg="mean", normalize_q_loss=True,
                                        noise_dim=5, drift_eta=0.5, alpha=3.0, tau=0.1)),
    # our option; with no repeated state in the batch each state's only positive is its own action, the official one
    "same-state-positives": (dict(same_state_positives=True), {}),
}
METRICS = [("critic_loss", "critic/critic_loss"), ("q_mean", "critic/q_mean"), ("q_max", "critic/q_max"),
           ("q_min", "critic/q_min"), ("actor_loss", "actor/actor_loss"), ("bc_drift_loss", "actor/bc_drift_loss"),
           ("bc_drift_loss_raw", "actor/bc_drift_loss_raw"), ("drift_norm", "actor/drift_norm"),
           ("drift_attract_norm", "actor/drift_attract_norm"), ("drift_repel_norm", "actor/drift_repel_norm"),
           ("q_loss", "actor/q_loss"), ("q", "actor/q")]


def noise_maker(dtype, noise_dim, n, seed=1, b=B):
    rng = np.random.default_rng(seed)

    def make(step):  # both sides: TD-target sample at s', the N drift samples per state, the Q-term sample
        arrays = dict(next=harness.normal(rng, (b, noise_dim), dtype),
                      gen=harness.normal(rng, (b * n, noise_dim), dtype), qz=harness.normal(rng, (b, noise_dim), dtype))
        return harness.Noise(arrays, ours=["next", "gen", "qz"], theirs=["next", "gen", "qz"])
    return make


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_driftql_parity(config, dtype):
    path = harness.official("OFFICIAL_DRIFTQL")
    import driftql
    ours, theirs = CONFIGS[config]
    report = harness.Report("driftql", f"{config} {str(dtype)[6:]}")
    with harness.precision(dtype):
        mod = harness.load_agent(path, "driftql")
        cfg = mod.get_config()
        cfg.update(dict(actor_hidden_dims=HID, value_hidden_dims=HID, batch_size=B, drift_batch_size=B, **SHARED,
                        **theirs))
        f = harness.np_dtype(dtype)
        agent = harness.create_agent(mod.DriftQLAgent, cfg, np.zeros((1, OBS), f), np.zeros((1, ACT), f))
        agent = harness.cast_agent(agent, dtype)
        args = driftql.Args(actor_hidden_dims=HID, value_hidden_dims=HID, batch_size=B, device="cpu", **SHARED,
                            **ours)
        nets = driftql.make_nets(args, OBS, ACT).to(dtype)
        entries = mapping.driftql(nets)
        mapping.check_complete(entries, agent.network.params, nets)
        mapping.load(entries, agent.network.params, nets)
        opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=args.lr)
        harness.run_updates(report, script=driftql, agent=agent, nets=nets, opt=opt, args=args, entries=entries,
                            frozen={"modules_target_critic"}, metrics=METRICS,
                            make_batch=harness.transitions(B, OBS, ACT, dtype),
                            make_noise=noise_maker(dtype, nets["actor_bc_drift"].noise_dim, args.drift_ngen),
                            dtype=dtype)
    report.assert_ok()


def field_cases(rng, dtype):
    """(name, gen [B, N, A], pos [B, P, A], pos_mask or None, temp, kernel): shapes, temperatures, kernels, edges."""
    f = harness.np_dtype(dtype)
    u = lambda *s: rng.uniform(-1, 1, s).astype(f)  # noqa: E731
    for kernel in ("laplace", "gaussian"):
        for temp in (0.02, 0.2, 1.0):
            for b, n, a, p in ((4, 1, 2, 1), (8, 4, 3, 1), (3, 32, 8, 1), (5, 6, 4, 3)):
                yield f"{kernel} T={temp} B{b} N{n} A{a} P{p}", u(b, n, a), u(b, p, a), None, temp, kernel
        gen = np.repeat(u(4, 1, 3), 5, 1)  # every sample of a state the same point
        yield f"{kernel} collapsed samples", gen, u(4, 1, 3), None, 0.2, kernel
        gen = np.sign(u(4, 6, 3)).astype(f)  # every sample on a corner of the clip box
        yield f"{kernel} samples on the clip box", gen, np.clip(u(4, 1, 3) * 2, -1, 1), None, 0.2, kernel
        gen = u(4, 6, 3)
        gen[:, 1] = gen[:, 0]  # one duplicate pair per state, and a positive on a sample
        pos = u(4, 1, 3)
        pos[:, 0] = gen[:, 2]
        yield f"{kernel} duplicate pairs, positive on a sample", gen, pos, None, 0.2, kernel
        pos = u(4, 5, 3)  # same-state positives: state b keeps its first b + 1 of 5
        mask = np.arange(5)[None] <= np.arange(4)[:, None]
        yield f"{kernel} same-state positives (masked)", u(4, 6, 3), pos, mask, 0.3, kernel


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_driftql_drift_field(dtype):
    """Our drift_field (exact differences, masked positives) against the official _compute_drift_batched (expanded
    squared norms) on each state's unmasked positives; float32 tolerance is looser for the expansion's rounding."""
    path = harness.official("OFFICIAL_DRIFTQL")
    import driftql
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    report = harness.Report("driftql", f"drift field {str(dtype)[6:]}")
    with harness.precision(dtype):
        mod = harness.load_agent(path, "driftql")
        worst = {}
        for name, gen, pos, mask, temp, kernel in field_cases(np.random.default_rng(0), dtype):
            ours = driftql.drift_field(torch.as_tensor(gen), torch.as_tensor(pos), temp, kernel,
                                       None if mask is None else torch.as_tensor(mask))
            for b in range(gen.shape[0]):  # official: one state at a time, only its own positives
                keep = slice(None) if mask is None else mask[b]
                theirs = mod._compute_drift_batched(gen[b:b + 1], pos[b:b + 1][:, keep], temp, kernel)
                for part, o, t in zip(("V", "V_attract", "V_repel"), ours, theirs):
                    err = harness.rel_err(o[b].numpy(), np.asarray(t[0]))
                    key = name.split(" ")[0] + " " + " ".join(name.split(" ")[1:]).split(" B")[0]
                    if key not in worst or not err <= worst[key][0]:
                        worst[key] = (err, f"{name} state {b} {part}")
        for key, (err, where) in worst.items():
            report.check(f"field {key}", err, tol, where)
    report.assert_ok()
