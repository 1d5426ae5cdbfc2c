"""Pixels: fql.py, deflow.py and driftql.py with --encoder impala_small against the official agents with
encoder='impala_small' (FQL, DeFlow, DriftQL at the commits of harness.REPOS): three full updates from the same weights
(one encoder per network, the critic's shared by its ensemble members, the target critic's a copy), the same noise and
the same augmented batches. Each side crops the frames with its own sampler, our visual.random_shift and the official
Dataset.sample with p_aug (utils/datasets.py), both fed the same coin and crop offsets; the crops must be equal. The
variants reuse each script's test: its default configuration, noise and metrics.
Float64 only: in float32 the one jitted official update moves up to 6e-3 from its own float64 gradient on
edge-padded frames (eager, and ours, stay within 6e-6), and Adam turns float32 rounding in the many near-zero
gradients of the encoders' 2048 x 512 Dense layers into 2e-4 of parameter differences (docs/parity.md)."""
import contextlib
import importlib
import sys
import types
from unittest import mock

import numpy as np
import pytest
import torch

import harness
import mapping
import test_parity_deflow
import test_parity_driftql
import test_parity_fql
import visual

ACT, B, HID, P_AUG = 3, 8, (32, 32), 0.5
COINS = {1: 0.25, 2: 0.75, 3: 0.25}  # the augmentation coin of each step: with p_aug 0.5, steps 1 and 3 are cropped
SCRIPTS = {  # script -> (variable, official class, our flags, official config, mapping, metrics, noise maker)
    "fql": ("OFFICIAL_FQL", "FQLAgent", {}, {}, mapping.fql, test_parity_fql.METRICS,
            lambda nets, args: test_parity_fql.noise_maker(torch.float64, b=B)),
    "deflow": ("OFFICIAL_DEFLOW", "DeFlowAgent", *test_parity_deflow.CONFIGS["default"][:2], mapping.deflow,
               test_parity_deflow.METRICS, lambda nets, args: test_parity_deflow.noise_maker(torch.float64, b=B)),
    "driftql": ("OFFICIAL_DRIFTQL", "DriftQLAgent", test_parity_driftql.SHARED,
                dict(test_parity_driftql.SHARED, drift_batch_size=B), mapping.driftql, test_parity_driftql.METRICS,
                lambda nets, args: test_parity_driftql.noise_maker(torch.float64, nets["actor_bc_drift"].noise_dim,
                                                                   args.drift_ngen, b=B)),
}


def offsets_drawn(offsets, wrap):
    """A fake randint that returns `offsets` for the crop draw of both samplers: randint(0, 2 PAD + 1, (B, 2))."""
    def randint(low, high, size, **kw):
        assert (low, high, tuple(size)) == (0, 2 * visual.PAD + 1, offsets.shape), "the crop offsets changed"
        return wrap(offsets)
    return randint


@contextlib.contextmanager
def official_cast_in_float64():
    """The official ImpalaEncoder casts the pixels to float32 before dividing by 255 (utils/encoders.py); here that
    cast is one to float64, as the harness makes our `.float()` leave float64 alone. Both sides get the pixels (whole
    numbers 0..255) as float64."""
    enc = sys.modules["utils.encoders"]
    jnp = enc.jnp
    enc.jnp = types.ModuleType("jax.numpy, float32 read as float64")
    enc.jnp.__dict__.update(vars(jnp), float32=jnp.float64)
    try:
        yield
    finally:
        enc.jnp = jnp


def pixel_batches(report, dataset_cls, k, seed=0):
    """make(step) -> (ours, theirs): random uint8 frames [B, 64, 64, 3k] for s and s', actions, rewards and masks,
    cropped by each side's sampler with the same coin and offsets; the report checks that the crops are equal."""
    rng, f = np.random.default_rng(seed), np.float64

    def make(step):
        frames = {key: rng.integers(0, 256, (B, 64, 64, 3 * k), dtype=np.uint8)
                  for key in ("observations", "next_observations")}
        rest = dict(actions=rng.uniform(-1, 1, (B, ACT)).astype(f), rewards=rng.standard_normal(B).astype(f),
                    masks=(rng.random(B) < 0.8).astype(f))
        offsets, coin = rng.integers(0, 2 * visual.PAD + 1, (B, 2)), COINS[step]
        # ours: random_shift draws the offsets, then the coin (torch.rand(()) < p_aug)
        with mock.patch.multiple(torch, randint=offsets_drawn(offsets, torch.as_tensor), rand=lambda *a, **kw: torch.tensor(coin)):
            ours = [x.numpy() for x in visual.random_shift([torch.from_numpy(frames["observations"]),
                                                            torch.from_numpy(frames["next_observations"])], P_AUG)]
        # theirs: Dataset.sample draws the coin (np.random.rand() < p_aug), then Dataset.augment the offsets
        with mock.patch.multiple(np.random, randint=offsets_drawn(offsets, np.asarray), rand=lambda: coin):
            data = dataset_cls.create(**frames, terminals=np.zeros(B), **rest)
            data.p_aug = P_AUG
            theirs = data.sample(B, idxs=np.arange(B))
        same = all(np.array_equal(o, theirs[key]) for o, key in zip(ours, ("observations", "next_observations")))
        moved = not np.array_equal(ours[0], frames["observations"])
        assert moved == (coin < P_AUG)
        report.check(f"step {step} crops ({'shifted' if moved else 'not shifted'})", 0.0 if same else np.inf, 0.0,
                     "random_shift vs Dataset.sample")
        ours = dict(rest, observations=ours[0].astype(f), next_observations=ours[1].astype(f))
        return ours, {key: np.asarray(theirs[key]).astype(f) for key in ours}
    return make


@pytest.mark.parametrize("script,k", [("fql", 1), ("fql", 3), ("deflow", 1), ("driftql", 1)],
                         ids=["fql-stack1", "fql-stack3", "deflow-stack1", "driftql-stack1"])
def test_visual_parity(script, k):
    var, cls, ours, theirs, entries_of, metrics, noise = SCRIPTS[script]
    path = harness.official(var)
    ours_mod = importlib.import_module(script)
    dtype = torch.float64
    report = harness.Report(script, f"visual frame_stack {k} float64")
    with harness.precision(dtype):
        mod = harness.load_agent(path, script)
        dataset_cls = importlib.import_module("utils.datasets").Dataset
        with official_cast_in_float64():
            cfg = mod.get_config()
            cfg.update(dict(actor_hidden_dims=HID, value_hidden_dims=HID, batch_size=B, encoder="impala_small",
                            **theirs))
            agent = harness.create_agent(getattr(mod, cls), cfg, np.zeros((1, 64, 64, 3 * k)), np.zeros((1, ACT)))
            agent = harness.cast_agent(agent, dtype)
            args = ours_mod.Args(actor_hidden_dims=HID, value_hidden_dims=HID, batch_size=B, device="cpu",
                                 encoder="impala_small", frame_stack=k, p_aug=P_AUG, **ours)
            nets = ours_mod.make_nets(args, 64, ACT).to(dtype)
            entries = entries_of(nets)
            mapping.check_complete(entries, agent.network.params, nets)
            mapping.load(entries, agent.network.params, nets)
            opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=args.lr)
            harness.run_updates(report, script=ours_mod, agent=agent, nets=nets, opt=opt, args=args, entries=entries,
                                frozen={"modules_target_critic"}, metrics=metrics,
                                make_batch=pixel_batches(report, dataset_cls, k), make_noise=noise(nets, args),
                                dtype=dtype)
    report.assert_ok()
