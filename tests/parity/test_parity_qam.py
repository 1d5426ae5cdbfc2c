"""qam.py against the official QAM agent (github.com/ColinQiyangLi/qam, agents/qam.py at f93efd2): QAM, QAM-FQL,
QAM-EDIT and the residual form, three full updates from the same weights, batches and noise, in float64 and float32.
Set OFFICIAL_QAM to the checkout.

The official batch is `sample_sequence`'s: rewards, masks, valid [B, h] and next_observations [B, h, D], of which the
agent reads only the last column; the earlier columns are NaN here, so a read of them would show. Our update gets
the last columns, which is what `Dataset.sample_chunks` returns (test_parity_chunks.py checks that)."""
import types

import numpy as np
import pytest
import torch

import harness
import mapping

OBS, ACT, H, B, K, HID = 5, 2, 2, 16, 4, (32, 32)
D = ACT * H
COMMON = (dict(horizon=H, num_qs=3, flow_steps=K, inv_temp=0.8, rho=0.3, discount=0.97, tau=0.05),
          dict(horizon_length=H, action_chunking=True, num_qs=3, flow_steps=K, inv_temp=0.8, rho=0.3, discount=0.97,
               tau=0.05))
CONFIGS = {  # name -> (our flags, official config), on top of COMMON
    "qam": ({}, {}),
    "residual": (dict(residual=True), dict(residual=True)),
    "qam-fql": (dict(variant="qam-fql", fql_alpha=3.0), dict(fql_alpha=3.0)),
    "qam-edit": (dict(variant="qam-edit", edit_scale=0.5), dict(edit_scale=0.5)),
}
METRICS = {  # our key -> official info key; the variant terms where the variant is on
    "all": [("critic_loss", "critic/critic_loss"), ("q_mean", "critic/q_mean"), ("q_max", "critic/q_max"),
            ("q_min", "critic/q_min"), ("bc_flow_loss", "actor/flow_loss"), ("adj_loss", "actor/adj_loss"),
            ("adj_loss", "actor/fast_loss"), ("adj_max", "actor/adj_max"), ("adj_mean", "actor/adj_mean"),
            ("adj_std", "actor/adj_std")],
    "qam-fql": [("fql_distill_loss", "actor/fql_distill_loss"), ("fql_q_loss", "actor/fql_q_loss")],
    "qam-edit": [("edit_q_loss", "actor/edit_q_loss"), ("edit_entropy_loss", "actor/edit_entropy_loss"),
                 ("edit_alpha_loss", "actor/edit_alpha_loss"), ("edit_entropy", "actor/edit_entropy"),
                 ("edit_alpha", "actor/edit_alpha")],
}


def tfp_shim():
    """The official utils/networks.py imports tensorflow_probability (QAM-EDIT's TanhNormal). TFP 0.25 reads
    jax.interpreters.xla.pytype_aval_mappings, which newer jax keeps in jax._src.core only."""
    import jax.interpreters.xla as xla
    if not hasattr(xla, "pytype_aval_mappings"):
        from jax._src import core
        xla.pytype_aval_mappings = core.pytype_aval_mappings
    try:
        import tensorflow_probability.substrates.jax  # noqa: F401
    except ImportError:
        pytest.skip("pip install -r requirements-parity.txt (tensorflow-probability, for the official QAM networks)")


def normal(rng, shape, dtype):
    return "normal", rng.standard_normal(shape).astype(harness.np_dtype(dtype))


def uniform(rng, shape, dtype):
    return "uniform", rng.random(shape).astype(harness.np_dtype(dtype))


def batch_maker(dtype, seed=0):
    """The official sample_sequence layout; only the last column of the [B, h] fields is real."""
    rng, f = np.random.default_rng(seed), harness.np_dtype(dtype)

    def last(x):
        return np.concatenate([np.full(x.shape[:1] + (H - 1,) + x.shape[1:], np.nan), x[:, None]], 1).astype(f)

    def make(step):
        return dict(observations=rng.standard_normal((B, OBS)).astype(f),
                    actions=rng.uniform(-1, 1, (B, H, ACT)).astype(f),
                    rewards=last(rng.standard_normal(B)), masks=last((rng.random(B) < 0.8) * 1.0),
                    valid=last((rng.random(B) < 0.8) * 1.0), next_observations=last(rng.standard_normal((B, OBS))))
    return make


def noise_maker(variant, dtype, seed=1):
    """Draw order. Official: critic target (sample_actions: noise [B, best_of_n=1, D], then the edit's TFP draw),
    then actor (x_0, t, the SDE start, K step noises of which the last is drawn but unused, then the QAM-FQL noise or
    the QAM-EDIT base noise and its TFP draw). Ours: the same without the unused last step noise (the official's
    last draw is fed sde_0 again). TFP draws a Gaussian [event, batch] and transposes it: the official view is a.T."""
    rng = np.random.default_rng(seed)

    def make(step):
        arrays = {n: normal(rng, (B, D), dtype) for n in ["next", "x0", "sde"] + [f"sde_{i}" for i in
                                                                                            range(K - 1)]}
        arrays["t"] = uniform(rng, (B, 1), dtype)
        steps = [f"sde_{i}" for i in range(K - 1)]
        ours = ["next"] + ["x0", "t", "sde"] + steps
        theirs = ["next"] + ["x0", "t", "sde"] + steps + ["sde_0"]
        views = {"next": lambda a: a.reshape(B, 1, D)}
        if variant == "qam-edit":
            arrays.update(next_edit=normal(rng, (B, D), dtype), edit=normal(rng, (B, D), dtype))
            views.update(next_edit=lambda a: a.T.reshape(D, B, 1), edit=lambda a: a.T)
            ours.insert(1, "next_edit")
            theirs.insert(1, "next_edit")
        if variant != "qam":
            arrays["z"] = normal(rng, (B, D), dtype)
            ours, theirs = ours + ["z"], theirs + ["z"]
        if variant == "qam-edit":
            ours, theirs = ours + ["edit"], theirs + ["edit"]
        return harness.Noise(arrays, ours=ours, theirs=theirs, views=views)
    return make


def ours_update(qam):
    """Our update on the last column of the official batch (what Dataset.sample_chunks returns)."""
    def update(nets, opt, batch, args):
        b = dict(batch, rewards=batch["rewards"][:, -1], masks=batch["masks"][:, -1], valid=batch["valid"][:, -1],
                 next_observations=batch["next_observations"][:, -1])
        return qam.update(nets, opt, b, args)
    return types.SimpleNamespace(update=update)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_qam_parity(config, dtype):
    path = harness.official("OFFICIAL_QAM")
    tfp_shim()
    import qam
    ours, theirs = CONFIGS[config]
    report = harness.Report("qam", f"{config} {str(dtype)[6:]}")
    with harness.precision(dtype):
        mod = harness.load_agent(path, "qam")
        cfg = mod.get_config()
        cfg.update(dict(actor_hidden_dims=HID, value_hidden_dims=HID, batch_size=B, **COMMON[1], **theirs))
        f = harness.np_dtype(dtype)
        # example observation/action without a batch axis, as the official main.py (ob_dims = its shape)
        agent = harness.create_agent(mod.QAMAgent, cfg, np.zeros(OBS, f), np.zeros(ACT, f))
        params = dict(agent.network.params)
        del params["modules_target_actor_fast"]  # allocated, never read: the official update runs without it
        agent = harness.cast_agent(agent.replace(network=agent.network.replace(params=params)), dtype)
        args = qam.Args(actor_hidden_dims=HID, value_hidden_dims=HID, batch_size=B, device="cpu", **COMMON[0],
                        **ours)
        nets = qam.make_nets(args, OBS, ACT).to(dtype)
        entries = mapping.qam(nets)
        mapping.check_complete(entries, agent.network.params, nets)
        mapping.load(entries, agent.network.params, nets)
        opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=args.lr)
        variant = args.variant
        harness.run_updates(report, script=ours_update(qam), agent=agent, nets=nets, opt=opt, args=args,
                            entries=entries, frozen={"modules_target_critic", "modules_target_actor_slow"},
                            metrics=METRICS["all"] + METRICS.get(variant, []), make_batch=batch_maker(dtype),
                            make_noise=noise_maker(variant, dtype), dtype=dtype)
    report.assert_ok()
