"""dfp.py against the official DFP agent (github.com/KAIST-Visual-AI-Group/DFP, agents/drift.py and
utils/drift_loss.py at babc3da): with top-K (the official drift_mode 'hard' without bottom-Q negatives) and without
(drift_mode 'none', our --topk-start warm-up), three full updates from the same weights, batches and noise, in float64
and float32. Set OFFICIAL_DFP to the checkout.

Both sides run with the EMA actor pi_old updated after every step (official use_actor_ema, which its
switch_config_to_online turns on; our EMA moves from step 1, also in the warm-up, where nothing reads it).
The official drift_loss casts its inputs to float32; the float64 runs replace that cast by float64 (a run-time shim,
see jnp_shim), the float32 runs use it as written."""
import types

import numpy as np
import pytest
import torch

import harness
import mapping

OBS, ACT, B, HID = 5, 2, 16, (32, 32)
TEMPS = (0.02, 0.05, 0.2)
COMMON = dict(drift_temps=TEMPS, gen_per_label=4, online_pos_samples=3, alpha_pos=0.7, actor_ema_tau=0.1, tau=0.05,
              discount=0.97)
CONFIGS = {  # name -> (our flags, official config, top-K on)
    "topk h1": (dict(horizon=1, online_n_samples=8), dict(horizon_length=1, online_n_samples=8, drift_mode="hard"),
                True),
    "topk h2 min bon3": (dict(horizon=2, online_n_samples=8, q_agg="min", q_bon=3),
                         dict(horizon_length=2, online_n_samples=8, q_agg="min", drift_mode="hard"), True),
    "no-topk h2": (dict(horizon=2, online_n_samples=4), dict(horizon_length=2, online_n_samples=4, drift_mode="none"),
                   False),
}
CRITIC = [("critic_loss", "critic/critic_loss"), ("q_mean", "critic/q_mean"), ("q_max", "critic/q_max"),
          ("q_min", "critic/q_min"), ("actor_loss", "actor/actor_loss")]
METRICS = {  # our key -> official info key; *_ms_R is our force RMS squared (the official logs the mean square)
    True: CRITIC + [("topk_drift_loss", "actor/actor_drift_loss_pos"), ("bc_drift_loss", "actor/actor_drift_loss_tgt"),
                    ("topk_dist_scale", "actor/drift_scale_pos"), ("bc_dist_scale", "actor/drift_scale_tgt"),
                    ("topk_q", "actor/online_pos_q_mean"), ("cand_q", "actor/online_sel_q_mean")]
    + [(f"topk_force_ms_{r}", f"actor/drift_pos_loss_{r}") for r in TEMPS]
    + [(f"bc_force_ms_{r}", f"actor/drift_tgt_loss_{r}") for r in TEMPS],
    False: CRITIC + [("bc_drift_loss", "actor/actor_drift_loss"), ("bc_dist_scale", "actor/drift_scale")]
    + [(f"bc_force_ms_{r}", f"actor/drift_loss_{r}") for r in TEMPS],
}


def jnp_shim(dtype):
    """The official utils/drift_loss.py sees a jax.numpy with two run-time changes: `clip(x, a_min=, a_max=)` (the
    jax it was written for; newer jax only takes min=/max=) and, in the float64 runs, float32 = float64 (it casts
    every input to float32, which would round the float64 run to single precision). The float32 runs compute as
    written."""
    import sys

    import jax.numpy as jnp

    class Numpy:
        float32 = jnp.float64 if dtype == torch.float64 else jnp.float32

        def __getattr__(self, name):
            return getattr(jnp, name)

        @staticmethod
        def clip(x, a_min=None, a_max=None, **k):
            return jnp.clip(x, k.pop("min", a_min), k.pop("max", a_max), **k)
    sys.modules["utils.drift_loss"].jnp = Numpy()


def batch_maker(h, dtype, seed=0):
    """The official sample_sequence layout ([B, h] rewards, masks, valid, [B, h, D] next observations); only the last
    column is read, the others are NaN. valid is 1 for h = 1 (a one-step chunk never crosses an episode end)."""
    rng, f = np.random.default_rng(seed), harness.np_dtype(dtype)

    def last(x):
        return np.concatenate([np.full(x.shape[:1] + (h - 1,) + x.shape[1:], np.nan), x[:, None]], 1).astype(f)

    def make(step):
        valid = (rng.random(B) < 0.8) * 1.0 if h > 1 else np.ones(B)
        return dict(observations=rng.standard_normal((B, OBS)).astype(f),
                    actions=rng.uniform(-1, 1, (B, h, ACT)).astype(f),
                    rewards=last(rng.standard_normal(B)), masks=last((rng.random(B) < 0.8) * 1.0), valid=last(valid),
                    next_observations=last(rng.standard_normal((B, OBS))))
    return make


def noise_maker(args, topk, dtype, seed=1):
    """Draw order, both sides: the TD target's q_bon next actions (official [B, q_bon, D], ours [B * q_bon, D]), the
    N candidates of the EMA actor (top-K only on the official side), the G generated actions. Without top-K ours
    still draws the candidates (for diagnostics; weighted 0): N = G there, and that draw is fed the G array too."""
    rng, f = np.random.default_rng(seed), harness.np_dtype(dtype)
    d, n = ACT * args.horizon, args.q_bon

    def make(step):
        arrays = dict(next=("normal", rng.standard_normal((B * n, d)).astype(f)),
                      cand=("normal", rng.standard_normal((B * args.online_n_samples, d)).astype(f)),
                      gen=("normal", rng.standard_normal((B * args.gen_per_label, d)).astype(f)))
        views = dict(next=lambda a: a.reshape(B, n, d))
        if topk:
            return harness.Noise(arrays, ours=["next", "cand", "gen"], theirs=["next", "cand", "gen"], views=views)
        del arrays["cand"]
        return harness.Noise(arrays, ours=["next", "gen", "gen"], theirs=["next", "gen"], views=views)
    return make


def ours_update(dfp, topk):
    """Our update on the last column of the official batch, with the force RMS squared added to its metrics."""
    def update(nets, opt, batch, args):
        b = dict(batch, rewards=batch["rewards"][:, -1], masks=batch["masks"][:, -1], valid=batch["valid"][:, -1],
                 next_observations=batch["next_observations"][:, -1])
        out = dfp.update(nets, opt, b, args, topk_on=topk)
        for side in ("bc", "topk"):
            out.update({f"{side}_force_ms_{r}": out[f"{side}_force_rms_{r:g}"] ** 2 for r in args.drift_temps})
        return out
    return types.SimpleNamespace(update=update)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_dfp_parity(config, dtype):
    path = harness.official("OFFICIAL_DFP")
    import dfp
    ours, theirs, topk = CONFIGS[config]
    report = harness.Report("dfp", f"{config} {str(dtype)[6:]}")
    with harness.precision(dtype):
        mod = harness.load_agent(path, "drift")
        jnp_shim(dtype)
        args = dfp.Args(actor_hidden_dims=HID, value_hidden_dims=HID, batch_size=B, device="cpu", **COMMON, **ours)
        cfg = mod.get_config()
        cfg.update(dict(actor_hidden_dims=HID, value_hidden_dims=HID, batch_size=B, action_chunking=True,
                        actor_type="best-of-n", q_bon=args.q_bon, alpha=1.0,
                        alpha_target=1.0, q_alpha=0.0, online_neg_samples=0, use_actor_ema=True, **COMMON, **theirs))
        cfg["drift_temps"] = TEMPS
        f = harness.np_dtype(dtype)
        # example observation/action without a batch axis, as the official main.py (ob_dims = its shape)
        agent = harness.create_agent(mod.DriftAgent, cfg, np.zeros(OBS, f), np.zeros(ACT, f))
        agent = harness.cast_agent(agent, dtype)
        nets = dfp.make_nets(args, OBS, ACT).to(dtype)
        entries = mapping.dfp(nets)
        mapping.check_complete(entries, agent.network.params, nets)
        mapping.load(entries, agent.network.params, nets)
        opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=args.lr)
        harness.run_updates(report, script=ours_update(dfp, topk), agent=agent, nets=nets, opt=opt, args=args,
                            entries=entries, frozen={"modules_target_critic", "modules_actor_drift_ema"},
                            metrics=METRICS[topk], make_batch=batch_maker(args.horizon, dtype),
                            make_noise=noise_maker(args, topk, dtype), dtype=dtype)
    report.assert_ok()
