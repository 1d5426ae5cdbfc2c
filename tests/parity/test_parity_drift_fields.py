"""The drift fields side by side with the official functions, over shapes, temperatures, kernels and edge cases
(collapsed samples, samples on the clip box, duplicate pairs), and DFP's top-K selection.

DriftQL: driftql.drift_field against `_compute_drift_batched` (DT6A/driftql agents/driftql.py at 2da54d1; dim_scale
on, drift_normalize off, drift_eps 1e-12 as the script): V, V_attract, V_repel, each error relative to max(1, the
largest |V|, |V+|, |V-|) of the case (the actions' scale is 1: where the samples collapse, the official V- is exactly
0 and ours, summed as w @ x - sum(w) x, is 1e-17).
DFP: dfp.drift_loss against `drift_loss` (KAIST-Visual-AI-Group/DFP utils/drift_loss.py at babc3da): the per-state
loss, the distance scale, the mean squared force per temperature, and the gradient with respect to the generated
samples (-2 V / (G A c): the field itself). Set OFFICIAL_DRIFTQL / OFFICIAL_DFP."""
import sys

import numpy as np
import pytest
import torch

import harness
from test_parity_dfp import jnp_shim

SHAPES = [(3, 4, 1, 2), (2, 8, 5, 6), (1, 16, 3, 1)]  # (states B, generated G, positives P, action dims A)
TEMPS = [(0.02,), (0.05, 0.2), (1.0,)]
# float32, DFP's field: the official cdist expands |x|^2 + |y|^2 - 2 x.y (dfp.py deviation 9), which loses digits on
# close pairs, and a temperature of 0.02 multiplies the normalised distances by 50 inside the softmax.
FIELD_TOL32 = 5e-3


def cases(dtype, seed=0):
    """(name, gen [B, G, A], pos [B, P, A]) numpy pairs: random shapes, then the edge cases."""
    rng, f = np.random.default_rng(seed), harness.np_dtype(dtype)
    out = []
    for b, g, p, a in SHAPES:
        out.append((f"random B{b} G{g} P{p} A{a}", rng.uniform(-1, 1, (b, g, a)), rng.uniform(-1, 1, (b, p, a))))
    b, g, p, a = 2, 6, 3, 3
    gen, pos = rng.uniform(-1, 1, (b, g, a)), rng.uniform(-1, 1, (b, p, a))
    out.append(("collapsed samples", np.repeat(gen[:, :1], g, 1), pos))
    out.append(("collapsed onto a positive", np.repeat(pos[:, :1], g, 1), pos))
    out.append(("on the clip box", np.sign(gen), np.sign(pos)))
    dup = gen.copy()
    dup[:, 1] = dup[:, 0]
    dup[:, 3] = pos[:, 0]
    out.append(("duplicate pairs", dup, pos))
    return [(n, x.astype(f), y.astype(f)) for n, x, y in out]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_driftql_field(dtype):
    path = harness.official("OFFICIAL_DRIFTQL")
    import driftql
    report = harness.Report("fields", f"driftql {str(dtype)[6:]}")
    with harness.precision(dtype):
        mod = harness.load_agent(path, "driftql")
        for kernel in ("laplace", "gaussian"):
            worst = (0.0, "")
            for name, gen, pos in cases(dtype):
                for temp in (0.02, 0.1, 1.0):
                    theirs = mod._compute_drift_batched(gen, pos, temp, kernel=kernel, dim_scale=True,
                                                        drift_normalize=False, eps=driftql.DRIFT_EPS)
                    ours = driftql.drift_field(torch.as_tensor(gen), torch.as_tensor(pos), temp, kernel)
                    scale = max([1.0] + [float(np.abs(np.asarray(t)).max()) for t in theirs])  # action scale 1
                    for part, o, t in zip(("V", "V_attract", "V_repel"), ours, theirs):
                        err = harness.rel_err(o.numpy(), np.asarray(t), scale)
                        if not err <= worst[0]:
                            worst = (err, f"{name} temp {temp} {part}")
            report.check(f"{kernel} field V, V+, V- (all cases)", worst[0], harness.TOL[dtype], worst[1])
    report.assert_ok()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_dfp_field(dtype):
    path = harness.official("OFFICIAL_DFP")
    import dfp
    report = harness.Report("fields", f"dfp {str(dtype)[6:]}")
    with harness.precision(dtype):
        harness.load_agent(path, "drift")
        jnp_shim(dtype)
        import jax
        official = sys.modules["utils.drift_loss"].drift_loss
        worst = {}
        for name, gen, pos in cases(dtype):
            for temps in TEMPS:
                loss, info = official(gen, pos, R_list=temps)
                grad = jax.grad(lambda g: official(g, pos, R_list=temps)[0].sum())(gen)
                g = torch.as_tensor(gen).requires_grad_(True)
                our_loss, _, scale, rms = dfp.drift_loss(g, torch.as_tensor(pos), temps)
                our_loss.sum().backward()
                pairs = dict(loss=(our_loss.detach(), loss), scale=(scale, info["scale"]),
                             field=(g.grad, grad), **{f"force ms {r}": (rms[i] ** 2, info[f"loss_{r}"])
                                                      for i, r in enumerate(temps)})
                for what, (o, t) in pairs.items():
                    group = "field (gradient)" if what == "field" else "loss, scale, force ms"
                    err = harness.rel_err(o.numpy(), np.asarray(t))
                    if not err <= worst.get(group, (0.0, ""))[0]:
                        worst[group] = (err, f"{name} temps {temps} {what}")
        for group, (err, where) in worst.items():
            report.check(f"{group} (all cases)", err, FIELD_TOL32 if dtype == torch.float32 and
                         group.startswith("field") else harness.TOL[dtype], where)
    report.assert_ok()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_dfp_top_k(dtype):
    """dfp.top_k_positives against the official selection in `_actor_loss_online` (argsort of the candidates' Q,
    the last K, take_along_axis): the same set of positives per state (the order within it does not enter the field),
    with random Q, tied Q on duplicated candidates, and K = 1 and K = N."""
    path = harness.official("OFFICIAL_DFP")
    import dfp
    report = harness.Report("topk", f"dfp {str(dtype)[6:]}")
    rng, f = np.random.default_rng(0), harness.np_dtype(dtype)
    with harness.precision(dtype):
        harness.load_agent(path, "drift")
        import jax.numpy as jnp
        worst = (0.0, "")
        b, n, a = 5, 8, 3
        for case in ("random", "ties on duplicates"):
            cand = rng.uniform(-1, 1, (b, n, a)).astype(f)
            q = rng.standard_normal((b, n)).astype(f)
            if case != "random":
                cand[:, 1], q[:, 1] = cand[:, 0], q[:, 0]  # a duplicated candidate has the same Q
                cand[:, 5], q[:, 5] = cand[:, 4], q[:, 4]
            for k in (1, 3, n):
                idx = jnp.argsort(jnp.asarray(q), axis=-1)[:, -k:]  # as the official _actor_loss_online
                theirs = np.asarray(jnp.take_along_axis(jnp.asarray(cand), idx[..., None], axis=1))
                their_q = np.take_along_axis(q, np.asarray(idx), 1)
                ours, our_q = dfp.top_k_positives(torch.as_tensor(cand), torch.as_tensor(q), k)
                for s in range(b):  # compare as sets: sort both by their rows
                    o, t = ours[s].numpy(), theirs[s]
                    o, t = o[np.lexsort(o.T)], t[np.lexsort(t.T)]
                    err = max(harness.rel_err(o, t), harness.rel_err(np.sort(our_q[s].numpy()), np.sort(their_q[s])))
                    if not err <= worst[0]:
                        worst = (err, f"{case} K={k} state {s}")
        report.check("top-K positives and their Q (as sets)", worst[0], 0.0, worst[1])
    report.assert_ok()
