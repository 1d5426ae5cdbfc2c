"""Speed of the single-file scripts at the paper's network sizes on synthetic data (a script, not a test).

For every module named in --algos it reports training steps per second at the script's default batch size (256) in
each configuration of --modes: `eager` (fp32, the default path), `bf16` (--precision bf16), `compile` (--compile) and
`compile-bf16` (both); milliseconds per `act` call at batch 1 and at batch 50, eager and compiled; the seconds the first
compiled step took (compilation); and the number of network forward evaluations (NFE) one `act` call costs: calls of
the output layer of any MLP during the call. The one-step policies of FQL and DriftQL cost 1. A call returns one
action, or a chunk of h actions for QAM (`actions/call`).
Every script takes part through the same functions, so adding one is adding its module name to --algos:
    make_nets(args, obs_dim, action_dim) -> nn.ModuleDict      losses(nets, batch, args) -> dict
    update(nets, opt, batch, args, loss_fn=losses) -> dict     act(nets, obs [B, D]) -> actions [B, A]
with `args = <module>.Args(precision=..., compile=...)` at its defaults (4 x 512 networks) and one Adam over all
trainable parameters (fused under compile), as in every script's `main`. The data are random transitions of the
chosen sizes (default: antmaze, 29-D obs, 8-D action). benchmarks/official_jax.py times an official JAX agent on the
same sizes for the side-by-side in the README.

    python benchmark.py --device cpu --steps 5 --threads 1
    python benchmark.py --algos fql qam --modes eager bf16 --device cpu
    python benchmark.py --device cuda
"""
import importlib
import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn

import common
import plumbing

MODES = {"eager": ("fp32", False), "bf16": ("bf16", False), "compile": ("fp32", True), "compile-bf16": ("bf16", True)}


@dataclass
class Args:
    algos: tuple[str, ...] = ("fql", "driftql", "dfp", "qam", "deflow")
    """script modules to time (each exposes make_nets, losses, update, act and Args)"""
    modes: tuple[Literal["eager", "bf16", "compile", "compile-bf16"], ...] = ("eager", "bf16", "compile",
                                                                            "compile-bf16")
    """training configurations: fp32 eager, --precision bf16, --compile, and both"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto takes CUDA when present and says so loudly when it falls back to the CPU"""
    steps: int = 20
    """timed training steps per script and mode (after 3 untimed warm-up steps, the first of which compiles)"""
    act_calls: int = 200
    """timed `act` calls per batch size (after 5 untimed warm-up calls)"""
    obs_dim: int = 29
    """observation size of the synthetic data (antmaze: 29)"""
    action_dim: int = 8
    """action size of the synthetic data (antmaze: 8)"""
    threads: Optional[int] = None
    """torch CPU threads (default: torch's choice)"""
    seed: int = 0
    """seed of the synthetic data and the networks"""


def synthetic_data(obs_dim: int, action_dim: int, device: torch.device, n: int = 10_000) -> common.Dataset:
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((n + 1, obs_dim)).astype(np.float32)
    data = dict(observations=obs[:-1], next_observations=obs[1:], actions=rng.uniform(-1, 1, (n, action_dim)),
                rewards=(rng.random(n) < 0.01) - 1.0, masks=np.ones(n), terminals=(np.arange(n) % 1000 == 999))
    data["actions"] = np.clip(data["actions"], -common.ACTION_CLIP, common.ACTION_CLIP)
    return common.Dataset.from_numpy(data, device)


def sample(data: common.Dataset, margs) -> dict:
    """The batch the script's main draws: action chunks for scripts with a chunk length (QAM's --horizon)."""
    if hasattr(margs, "horizon"):
        return data.sample_chunks(margs.batch_size, margs.horizon, margs.discount)
    return data.sample(margs.batch_size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def count_forward_evaluations(nets: nn.ModuleDict, fn) -> int:
    """Calls of the last Linear layer of every MLP (nn.Sequential) while fn() runs."""
    calls = []
    hooks = [m[-1].register_forward_hook(lambda *_: calls.append(1)) for m in nets.modules()
             if isinstance(m, nn.Sequential) and isinstance(m[-1], nn.Linear)]
    fn()
    for h in hooks:
        h.remove()
    return len(calls)


def count_kernel_ops(fn) -> int:
    """Operator calls that launch work while fn() runs: the profiler's leaf aten ops (those that call no other aten
    op), plus each compiled kernel. On a GPU each is about one kernel launch, the cost that dominates small updates."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::")]
    leaves = [e for e in aten if not any(c.name.startswith("aten::") for c in e.cpu_children)]
    kernels = [e for e in events if e.name.startswith(("cpp_fused", "triton_", "CompiledFunction"))]
    return len(leaves) + len(kernels)


def ms_per_call(fn, calls: int, device: torch.device) -> float:
    for _ in range(5):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return 1000 * (time.perf_counter() - t) / calls


def setup(mod, args: Args, device: torch.device, precision: str, compile: bool) -> tuple:
    """The networks, Adam, loss function and policy of the script's main for one configuration."""
    margs = mod.Args(device=device.type, precision=precision, compile=compile)
    torch.manual_seed(args.seed)
    nets = mod.make_nets(margs, args.obs_dim, args.action_dim).to(device)
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=margs.lr, fused=compile or None)
    if compile:
        return margs, nets, opt, plumbing.compiled(mod.losses, device), plumbing.compiled(mod.act, device)
    return margs, nets, opt, mod.losses, mod.act


def bench(name: str, args: Args, device: torch.device, data: common.Dataset) -> dict:
    mod = importlib.import_module(name)
    row = dict(algo=name)
    obs1, obs50 = data.observations[:1], data.observations[:50]
    for mode in args.modes:
        precision, compile = MODES[mode]
        torch._dynamo.reset()
        margs, nets, opt, loss_fn, policy = setup(mod, args, device, precision, compile)
        if mode == "eager":
            row["nfe"] = count_forward_evaluations(nets, lambda: mod.act(nets, obs1, margs))
            row["per_call"] = mod.act(nets, obs1, margs).shape[-1] // args.action_dim  # > 1 for action chunks (QAM)
            row["params_m"] = sum(p.numel() for p in nets.parameters() if p.requires_grad) / 1e6
        if mode in ("eager", "compile"):
            row[f"ms_b1_{mode}"] = ms_per_call(lambda: policy(nets, obs1, margs), args.act_calls, device)
            row[f"ms_b50_{mode}"] = ms_per_call(lambda: policy(nets, obs50, margs), args.act_calls, device)
        t = time.perf_counter()
        mod.update(nets, opt, sample(data, margs), margs, loss_fn=loss_fn)  # compiles under --compile
        sync(device)
        if compile:
            row[f"compile_s_{mode}"] = time.perf_counter() - t
        for _ in range(2):
            mod.update(nets, opt, sample(data, margs), margs, loss_fn=loss_fn)
        sync(device)
        t = time.perf_counter()
        for _ in range(args.steps):
            mod.update(nets, opt, sample(data, margs), margs, loss_fn=loss_fn)
        sync(device)
        row[mode] = args.steps / (time.perf_counter() - t)
        batch = sample(data, margs)
        row[f"ops_{mode}"] = count_kernel_ops(lambda: mod.update(nets, opt, batch, margs, loss_fn=loss_fn))
        row["batch"] = margs.batch_size
    return row


def fmt(row: dict, key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "-"


# allowed ranges, checked before any work (plumbing.check_args)
LIMITS = dict(steps="[1, inf)", act_calls="[1, inf)", obs_dim="[1, inf)", action_dim="[1, inf)", threads="[1, inf)",
              seed="[0, 4294967295]")
SCRIPTS = ("fql", "driftql", "dfp", "qam", "deflow")


def main(args: Args) -> list:
    plumbing.check_args(args, LIMITS)
    unknown = [a for a in args.algos if a not in SCRIPTS]
    if unknown:
        raise common.UsageError(f"--algos {' '.join(unknown)}: not a script here; choose from {' '.join(SCRIPTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = plumbing.get_device(args.device)
    cpu = f", {torch.get_num_threads()} CPU threads" if device.type == "cpu" else f", {torch.cuda.get_device_name()}"
    print(f"torch {torch.__version__}, device {device}{cpu}; synthetic data obs {args.obs_dim}, action "
          f"{args.action_dim}; networks at each script's defaults (4 x 512)")
    data = synthetic_data(args.obs_dim, args.action_dim, device)
    rows = [bench(name, args, device, data) for name in args.algos]
    names = {"eager": "fp32 eager", "bf16": "bf16", "compile": "compiled", "compile-bf16": "compiled+bf16"}
    cols = ([(f"{names[m]} steps/s", m, ".2f") for m in args.modes]
            + [(f"ms/act B={b}{' compiled' if m == 'compile' else ''}", f"ms_b{b}_{m}", ".3f")
               for m in ("eager", "compile") if m in args.modes for b in (1, 50)]
            + [(f"compile s{'' if m == 'compile' else ' (bf16)'}", f"compile_s_{m}", ".0f")
               for m in ("compile", "compile-bf16") if m in args.modes]
            + [(f"ops/step {names[m]}", f"ops_{m}", "d") for m in args.modes]
            + [("NFE/act call", "nfe", "d"), ("actions/call", "per_call", "d"), ("params (M)", "params_m", ".2f")])
    head = "| algo       | " + " | ".join(c[0] for c in cols) + " |"
    print(head + "\n|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['algo']:<10} | " + " | ".join(fmt(r, key, spec).rjust(len(title))
                                                   for title, key, spec in cols) + " |")
    print(f"(training batch {rows[0]['batch'] if rows else '-'}, {args.steps} timed steps per mode; {args.act_calls} "
          f"timed act calls per batch size)")
    return rows


if __name__ == "__main__":
    plumbing.cli(main, Args)
