"""Speed of the single-file scripts at the paper's network sizes on synthetic data (a script, not a test).

For every module named in --algos it reports: milliseconds per `act` call at batch 1 and at batch 50, training steps
per second at the script's default batch size (256), and the number of network forward evaluations (NFE) one `act`
call costs: calls of the output layer of any MLP during the call. The one-step policies of FQL and DriftQL cost 1.
A call returns one action, or a chunk of h actions for QAM (`actions/call`).
Every script takes part through the same three functions, so adding one is adding its module name to --algos:
    make_nets(args, obs_dim, action_dim) -> nn.ModuleDict      update(nets, opt, batch, args) -> dict
    act(nets, obs [B, D]) -> actions [B, A]
with `args = <module>.Args(...)` at its defaults (4 x 512 networks) and one Adam over all trainable parameters, as
in every script's `main`. The data are random transitions of the chosen sizes (default: antmaze, 29-D obs, 8-D action).

    python benchmark.py --device cpu --steps 5
    python benchmark.py --algos fql driftql --obs-dim 39 --action-dim 9 --device cuda
"""
import importlib
import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import tyro

import common


@dataclass
class Args:
    algos: tuple[str, ...] = ("fql", "driftql", "dfp", "qam", "deflow")
    """script modules to time (each exposes make_nets, update, act and Args)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto takes CUDA when present and says so loudly when it falls back to the CPU"""
    steps: int = 20
    """timed training steps per script (after 2 untimed warm-up steps)"""
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


def ms_per_call(fn, calls: int, device: torch.device) -> float:
    for _ in range(5):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return 1000 * (time.perf_counter() - t) / calls


def bench(name: str, args: Args, device: torch.device, data: common.Dataset) -> dict:
    mod = importlib.import_module(name)
    margs = mod.Args(device=device.type)
    torch.manual_seed(args.seed)
    nets = mod.make_nets(margs, args.obs_dim, args.action_dim).to(device)
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=margs.lr)
    obs1, obs50 = data.observations[:1], data.observations[:50]
    row = dict(algo=name, nfe=count_forward_evaluations(nets, lambda: mod.act(nets, obs1)),
               per_call=mod.act(nets, obs1).shape[-1] // args.action_dim,  # > 1 for action chunks (QAM)
               ms_b1=ms_per_call(lambda: mod.act(nets, obs1), args.act_calls, device),
               ms_b50=ms_per_call(lambda: mod.act(nets, obs50), args.act_calls, device))
    for _ in range(2):
        mod.update(nets, opt, sample(data, margs), margs)
    sync(device)
    t = time.perf_counter()
    for _ in range(args.steps):
        mod.update(nets, opt, sample(data, margs), margs)
    sync(device)
    row["steps_per_s"] = args.steps / (time.perf_counter() - t)
    row["batch"] = margs.batch_size
    row["params_m"] = sum(p.numel() for p in nets.parameters() if p.requires_grad) / 1e6
    return row


def main(args: Args) -> list:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = common.get_device(args.device)
    cpu = f", {torch.get_num_threads()} CPU threads" if device.type == "cpu" else f", {torch.cuda.get_device_name()}"
    print(f"torch {torch.__version__}, device {device}{cpu}; synthetic data obs {args.obs_dim}, action "
          f"{args.action_dim}; networks at each script's defaults (4 x 512)")
    data = synthetic_data(args.obs_dim, args.action_dim, device)
    rows = [bench(name, args, device, data) for name in args.algos]
    head = (f"| {'algo':<10} | {'ms/act B=1':>10} | {'ms/act B=50':>11} | {'train steps/s':>13} | "
            f"{'NFE/act call':>12} | {'actions/call':>12} | {'trainable params (M)':>20} |")
    print(head + "\n|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['algo']:<10} | {r['ms_b1']:>10.3f} | {r['ms_b50']:>11.3f} | {r['steps_per_s']:>13.2f} |"
              f" {r['nfe']:>12d} | {r['per_call']:>12d} | {r['params_m']:>20.2f} |")
    print(f"(training batch {rows[0]['batch'] if rows else '-'}, {args.steps} timed steps; {args.act_calls} timed "
          f"act calls per batch size)")
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
