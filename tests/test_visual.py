"""Pixel observations (visual.py): the impala_small encoder against the official definition, frame stacking and
rewards against OGBench's own loader on a regenerated visual dataset, the random shift, uint8 storage, the one-line
refusals, and FQL and DeFlow trained and evaluated end to end on pixels."""
import os

import numpy as np
import pytest
import torch

import collect
import common
import visual
from conftest import assert_one_line, cli

VIS_ID = "visual-cube-single-play-singletask-task1-v0"
VIS = ["--env-id", VIS_ID, "--encoder", "impala_small", "--device", "cpu"]


@pytest.fixture(scope="module")
def vis_dir(tmp_path_factory):
    """$OGBENCH_DATA_DIR with a regenerated visual-cube-single-play pair: 2 + 1 episodes of 8 frames (rendering is
    slow here: about 2 frames a second under load)."""
    out = str(tmp_path_factory.mktemp("ogbench_visual"))
    collect.main(collect.Args("visual-cube-single-play-v0", data_dir=out, num_episodes=2, num_val_episodes=1,
                              max_episode_steps=8, workers=1))
    old = os.environ.get("OGBENCH_DATA_DIR")
    os.environ["OGBENCH_DATA_DIR"] = out
    yield out
    if old is None:
        os.environ.pop("OGBENCH_DATA_DIR")
    else:
        os.environ["OGBENCH_DATA_DIR"] = old


@pytest.fixture(scope="module")
def loaded(vis_dir):
    """(our Task, OGBench's own non-compact training dict) of the regenerated pair."""
    import ogbench

    env, train, _ = ogbench.make_env_and_datasets(VIS_ID, dataset_dir=vis_dir)
    env.close()
    return common.load_task(VIS_ID, torch.device("cpu")), train


# ---------------------------------------------------------------------------------------------------- encoder
def official_impala_small_params(in_ch: int) -> int:
    """Parameter count of the official `impala_small` (seohongpark/fql utils/encoders.py: ImpalaEncoder with
    stack_sizes (16, 32, 32), num_blocks 1, mlp_hidden_dims (512,)) on 64x64 inputs, from its definition: each
    ResnetStack is a 3x3 conv in->f (9 in f + f) and one block of two 3x3 convs f->f (2 (9 f f + f)); three 'SAME'
    stride-2 max-pools take 64 -> 32 -> 16 -> 8, so the Dense layer sees 8 * 8 * 32 = 2048 inputs (2048 * 512 + 512).
    In channels 3 (k = 1): 448 + 4640 + 4640 + 18496 + 9248 + 18496 + 1049088 = 1,105,056; 9 (k = 3): 1,105,920."""
    total, c = 0, in_ch
    for f in (16, 32, 32):
        total += 9 * c * f + f + 2 * (9 * f * f + f)
        c = f
    return total + 8 * 8 * 32 * 512 + 512


@pytest.mark.parametrize("k", [1, 3])
def test_encoder_output_and_parameter_count_are_the_official_impala_small(k):
    assert official_impala_small_params(3) == 1_105_056 and official_impala_small_params(9) == 1_105_920
    enc = visual.ImpalaEncoder(3 * k, **visual.ENCODERS["impala_small"])
    assert sum(p.numel() for p in enc.parameters()) == official_impala_small_params(3 * k)
    out = enc(torch.randint(0, 256, (5, 64, 64, 3 * k), dtype=torch.uint8))
    assert out.shape == (5, 512) and out.dtype == torch.float32
    # Xavier-uniform weights (flax xavier_uniform / variance_scaling fan_avg), zero biases
    for m in enc.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in, fan_out = m.weight[0].numel(), m.weight[:, 0].numel()
            assert float(m.weight.abs().max()) <= (6 / (fan_in + fan_out)) ** 0.5 * (1 + 1e-6) and not m.bias.any()


def test_pooling_pads_like_flax_same():
    """flax 'SAME' max-pooling on 64 pads only the far edge: window i covers rows 2i..2i+2, so a lone maximum at
    (1, 5) reaches output (0, 2) only; torch's symmetric padding=1 would also put it at (1, 2) and (0, 3)."""
    stack = visual.ResnetStack(1, 1, 0)
    torch.nn.init.zeros_(stack.conv.weight)
    stack.conv.weight.data[0, 0, 1, 1] = 1.0  # identity conv
    torch.nn.init.zeros_(stack.conv.bias)
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 1, 5], x[0, 0, 63, 63] = 1.0, 2.0
    y = stack(x)[0, 0]
    assert y.shape == (32, 32)
    assert y[0, 2] == 1.0  # rows 0..2, columns 4..6
    assert y[0, 3] == 0.0 and y[1, 2] == 0.0  # columns 6..8 and rows 2..4 miss it (torch's padding=1 would not)
    assert y[31, 31] == 2.0


def test_each_network_has_its_own_encoder_and_the_critic_members_share_one():
    import fql

    args = fql.Args(encoder="impala_small", frame_stack=3, actor_hidden_dims=(8,), value_hidden_dims=(8,))
    nets = fql.make_nets(args, 64, 5)
    encs = [nets[n].encoder for n in ("actor_bc_flow", "actor_onestep_flow", "critic", "target_critic")]
    assert len({id(e) for e in encs}) == 4 and all(e.stacks[0].conv.in_channels == 9 for e in encs)
    obs = torch.randint(0, 256, (4, 64, 64, 9), dtype=torch.uint8)
    q = nets["critic"](obs, torch.zeros(4, 5))
    assert q.shape == (2, 4)
    q.sum().backward()
    assert nets["critic"].encoder.dense.weight.grad.abs().sum() > 0  # the encoder trains with the critic loss
    # the pre-encoded path (euler_integrate) gives the same actions as encoding at every step
    z = torch.randn(4, 5)
    a1 = fql.euler_integrate(nets["actor_bc_flow"], obs, z, 3)
    x = z
    for i in range(3):
        x = x + nets["actor_bc_flow"](obs, x, torch.full_like(x[:, :1], i / 3)) / 3
    assert torch.allclose(a1, x.clamp(-1, 1), atol=1e-6)


# ---------------------------------------------------------------------------------------------------- augmentation
def test_random_shift_moves_at_most_the_pad_and_keeps_s_and_next_s_aligned():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 64, 64, 9), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 256, (32, 64, 64, 9), dtype=torch.uint8, generator=g)
    torch.manual_seed(1)
    sx, sy = visual.random_shift([x, y], 1.0)
    pad = lambda t: torch.nn.functional.pad(t.permute(0, 3, 1, 2).float(), (3, 3, 3, 3), mode="replicate")  # noqa
    px, py = pad(x), pad(y)
    moved = 0
    for i in range(32):
        hits = [(dy, dx) for dy in range(7) for dx in range(7)
                if torch.equal(px[i, :, dy:dy + 64, dx:dx + 64], sx[i].permute(2, 0, 1).float())]
        assert len(hits) == 1, i  # some crop of the edge-padded image within +-3 pixels, and only one
        dy, dx = hits[0]
        assert torch.equal(py[i, :, dy:dy + 64, dx:dx + 64], sy[i].permute(2, 0, 1).float())  # same shift for s'
        moved += (dy, dx) != (3, 3)
    assert moved > 20  # offsets are drawn per sample
    assert visual.random_shift([x], 0.0)[0] is x


def test_random_shift_leaves_a_batch_unchanged_with_probability_one_minus_p():
    x = torch.randint(0, 256, (8, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    unchanged = np.mean([torch.equal(visual.random_shift([x], 0.3)[0], x) for _ in range(600)])
    assert abs(unchanged - 0.7) < 0.07  # 600 draws: standard deviation 0.019


# ---------------------------------------------------------------------------------------------------- data
def test_frames_are_uint8_stored_once_and_transitions_match_ogbench(vis_dir, loaded):
    task, train = loaded
    data = task.train
    data.frame_stack = 1
    raw = np.load(os.path.join(vis_dir, "visual-cube-single-play-v0.npz"))
    assert data.frames.dtype == torch.uint8 and data.frames.element_size() == 1
    assert data.frames.numel() == raw["observations"].size == len(raw["observations"]) * 64 * 64 * 3  # 1 B/pixel
    assert len(data.frames) == data.size + int(raw["terminals"].sum())  # no separate next-observation copy
    assert data.nbytes() == data.frames.numel() + 48 * data.size  # + 48 B per transition (benchmarks/visual.py)
    assert data.size == len(train["observations"])
    batch = data.sample(data.size, torch.arange(data.size))
    for k in ("observations", "next_observations"):
        assert np.array_equal(batch[k].numpy(), train[k])
    for k in ("rewards", "masks", "terminals"):
        assert np.array_equal(batch[k].numpy(), train[k].astype(np.float32)), k
    assert np.allclose(batch["actions"].numpy(), np.clip(train["actions"], -1 + 1e-5, 1 - 1e-5))


def test_frame_stacking_repeats_the_first_frame_like_the_official_dataset(loaded):
    task, train = loaded
    task.train.frame_stack = 3
    # the official Dataset.sample (seohongpark/fql utils/datasets.py), in numpy
    idx = np.arange(len(train["observations"]))
    ends = np.nonzero(train["terminals"] > 0)[0]
    initial = np.concatenate([[0], ends[:-1] + 1])[np.searchsorted(np.concatenate([[0], ends[:-1] + 1]), idx,
                                                                     side="right") - 1]
    obs = np.concatenate([train["observations"][np.maximum(idx - i, initial)] for i in (2, 1, 0)], -1)
    nxt = np.concatenate([train["observations"][np.maximum(idx - i, initial)] for i in (1, 0)]
                         + [train["next_observations"][idx]], -1)
    batch = task.train.sample(len(idx), torch.as_tensor(idx))
    assert batch["observations"].shape == (len(idx), 64, 64, 9)
    assert np.array_equal(batch["observations"].numpy(), obs)
    assert np.array_equal(batch["next_observations"].numpy(), nxt)
    start = initial[1]  # the second episode's first transition: three copies of its first frame
    first = train["observations"][start]
    assert np.array_equal(batch["observations"][start].numpy(), np.concatenate([first] * 3, -1))
    assert np.array_equal(batch["observations"][start + 1].numpy()[..., :6], np.concatenate([first] * 2, -1))
    assert not np.array_equal(first, train["observations"][start - 1])  # the episode before is not used


def test_frames_that_are_not_64x64x3_are_one_line(vis_dir, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    for s in ("", "-val"):
        f = dict(np.load(os.path.join(vis_dir, f"visual-cube-single-play-v0{s}.npz")))
        f["observations"] = f["observations"][:, :32, :32]
        np.savez(bad / f"visual-cube-single-play-v0{s}.npz", **f)
    monkeypatch.setenv("OGBENCH_DATA_DIR", str(bad))
    code, err = cli("fql", [*VIS, "--runs-dir", str(tmp_path / "runs")], capsys, monkeypatch)
    assert_one_line(code, err, "visual-cube-single-play-v0.npz", "(64, 64, 3)")
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------- bad input
BAD = [
    ("qam", ["--env-id", VIS_ID], "qam"),
    ("dfp", ["--env-id", VIS_ID], "dfp"),
    ("fql", [*VIS, "--frame-stack", "0"], "--frame-stack"),
    ("deflow", [*VIS, "--p-aug", "1.5"], "--p-aug"),
    ("driftql", [*VIS, "--p-aug", "-0.1"], "--p-aug"),
    ("fql", ["--env-id", VIS_ID], "--encoder"),
    ("fql", [*VIS, "--online-steps", "10"], "--online-steps"),
    ("deflow", ["--env-id", "bandit-4gaussian", "--encoder", "impala_small"], "--encoder"),
    ("fql", [*VIS, "--horizon", "5"], "--horizon"),
]


@pytest.mark.parametrize("script, argv, named", BAD)
def test_visual_bad_input_is_one_line(script, argv, named, tmp_path, capsys, monkeypatch):
    code, err = cli(script, [*argv, "--runs-dir", str(tmp_path / "runs")], capsys, monkeypatch)
    assert_one_line(code, err, named)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.parametrize("script", ["fql", "deflow"])
def test_trains_and_evaluates_on_pixels(script, vis_dir, tmp_path, monkeypatch):
    """The official recipe's flags (--p-aug 0.5 --frame-stack 3), 200 offline steps on the regenerated pixels and an
    evaluation of 2 rendered episodes of 3 steps with the frame-stacked env."""
    import importlib

    mod = importlib.import_module(script)
    monkeypatch.setattr(visual, "EVAL_MAX_STEPS", 3)
    args = mod.Args(env_id=VIS_ID, encoder="impala_small", p_aug=0.5, frame_stack=3, offline_steps=200,
                    batch_size=4, eval_interval=200, eval_episodes=2, log_interval=100, actor_hidden_dims=(16,),
                    value_hidden_dims=(16,), runs_dir=str(tmp_path), device="cpu")
    result = mod.main(args)
    assert result["episodic_length"] == 3 and 0 <= result["success_rate"] <= 1
    ckpt = torch.load(next(tmp_path.rglob(f"{script}.pt")), weights_only=False)
    assert ckpt["step"] == 200 and any("encoder.dense.weight" in k for k in ckpt["nets"])


# ---------------------------------------------------------------------------------------------------- official code
OFFICIAL = os.environ.get("OFFICIAL_FQL")  # a checkout of seohongpark/fql (719d044) and jax/flax installed


@pytest.mark.skipif(not OFFICIAL, reason="set OFFICIAL_FQL to a checkout of seohongpark/fql (needs jax, flax)")
def test_encoder_and_shift_equal_the_official_code_on_the_same_weights_and_offsets():
    """The official flax `impala_small` with its own initial weights copied into ours gives the same features, and
    the official `batched_random_crop` and ours give the same pixels for the same crop offsets."""
    import importlib.util
    import sys
    import types

    import jax
    import jax.numpy as jnp

    sys.path.insert(0, OFFICIAL)
    stub = types.ModuleType("distrax")  # utils/networks.py subclasses distrax; the encoder does not use it
    stub.__getattr__ = lambda name: type(name, (), {})
    sys.modules.setdefault("distrax", stub)
    spec = importlib.util.spec_from_file_location("official_encoders", os.path.join(OFFICIAL, "utils", "encoders.py"))
    enc_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(enc_mod)
    spec = importlib.util.spec_from_file_location("official_datasets", os.path.join(OFFICIAL, "utils", "datasets.py"))
    ds_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ds_mod)
    x = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 9), dtype=np.uint8)
    flax_enc = enc_mod.encoder_modules["impala_small"]()
    params = flax_enc.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
    want = np.asarray(flax_enc.apply({"params": params}, jnp.asarray(x)))
    ours = visual.ImpalaEncoder(9, **visual.ENCODERS["impala_small"])
    with torch.no_grad():
        for i, stack in enumerate(ours.stacks):
            p = params[f"stack_blocks_{i}"]
            convs = [stack.conv] + [c for block in stack.blocks for c in block]
            for j, conv in enumerate(convs):
                conv.weight.copy_(torch.from_numpy(np.asarray(p[f"Conv_{j}"]["kernel"])).permute(3, 2, 0, 1))
                conv.bias.copy_(torch.from_numpy(np.asarray(p[f"Conv_{j}"]["bias"])))
        dense = params["MLP_0"]["Dense_0"]
        ours.dense.weight.copy_(torch.from_numpy(np.asarray(dense["kernel"])).T)
        ours.dense.bias.copy_(torch.from_numpy(np.asarray(dense["bias"])))
        got = ours(torch.from_numpy(x)).numpy()
    assert np.allclose(got, want, atol=1e-4), np.abs(got - want).max()
    offsets = np.random.default_rng(1).integers(0, 7, (4, 2))
    crop_froms = np.concatenate([offsets, np.zeros((4, 1), dtype=np.int64)], 1)
    want = np.asarray(ds_mod.batched_random_crop(jnp.asarray(x), jnp.asarray(crop_froms), 3))
    got = visual.shift_images([torch.from_numpy(x)], torch.from_numpy(offsets))[0].numpy()
    assert np.array_equal(got, want)
