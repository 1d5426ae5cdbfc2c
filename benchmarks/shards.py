"""--dataset-dir speed and memory: step time around a shard swap (the official synchronous read vs our read-ahead
thread) and peak host memory of the rotation with 2, 10 and 100 shards and of --dataset-sampling uniform.

The shards are synthetic, written in the real OGBench npz format (observations, actions, terminals, qpos, qvel of
cube-quadruple: 55-D observations, 5-D actions, 1,001-row episodes; compressed like the official files) with random
values, so that a shard reads like a 1M-transition shard of the 100M folder. A step is one QAM update (default
networks of docs/qam.md unless --hidden) on a batch of the shard in use; "step around a swap" is the slowest step
within 2 steps of a swap. Peak memory is measured in a fresh process per row (ru_maxrss, the resident high-water
mark, which counts the memory-mapped cache pages the process touched).

    python benchmarks/shards.py --steps 45 --interval 15 --out docs/figures/shards.md   # 1M-transition shards
    python benchmarks/shards.py --episodes 20 --steps 40                      # a quick look
    python benchmarks/shards.py --rows prefetch100 uniform                     # only some rows
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
SHAPES = {"cube-quadruple": dict(observations=55, actions=5, qpos=14 + 4 * 7, qvel=14 + 4 * 6),
          "cube-single": dict(observations=28, actions=5, qpos=21, qvel=20)}


def write_synthetic_shards(folder: str, env: str, count: int, episodes: int, length: int = 1001, seed: int = 0,
                           distinct: int = None) -> list:
    """`count` shards `<env>-play-v0-<k>.npz` (and -val files of one episode) of `episodes` random episodes of
    `length` rows each, in the official format. With `distinct`, only that many files are written and the others are
    hard links to them (same bytes, same read cost, less disk)."""
    os.makedirs(folder, exist_ok=True)
    paths, rng = [], np.random.default_rng(seed)
    for k in range(count):
        for suffix, n in (("", episodes), ("-val", 1)):
            path = os.path.join(folder, f"{env}-play-v0-{k:03d}{suffix}.npz")
            if distinct and k >= distinct:
                os.link(os.path.join(folder, f"{env}-play-v0-{k % distinct:03d}{suffix}.npz"), path)
            else:
                rows = n * length
                arrays = {key: rng.uniform(-1, 1, (rows, d)).astype(np.float32) for key, d in SHAPES[env].items()}
                arrays["terminals"] = np.zeros(rows, bool)
                arrays["terminals"][length - 1::length] = True
                np.savez_compressed(path, **arrays)
            paths += [path] if not suffix else []
    return paths


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(folder: str, mode: str, steps: int, interval: int, hidden: int) -> dict:
    """`steps` QAM updates on the shards of `folder`; mode 'sync' (official), 'prefetch' (ours) or 'uniform'."""
    import torch

    import common
    import qam

    torch.set_num_threads(1)  # training on one core leaves the other to the read-ahead thread (2-core machine)
    torch.manual_seed(0)
    args = qam.Args(env_id="cube-quadruple-play-singletask-task2-v0", dataset_dir=folder, device="cpu",
                    dataset_replace_interval=interval, dataset_sampling="uniform" if mode == "uniform" else "rotate",
                    actor_hidden_dims=(hidden,) * 4, value_hidden_dims=(hidden,) * 4)
    task = common.load_task(args.env_id, torch.device("cpu"), flags=args)
    if task.shards is not None:
        task.shards.prefetch = mode == "prefetch"
    nets = qam.make_nets(args, task.train.observations.shape[1], task.train.actions.shape[1])
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=args.lr)
    times = []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        task.train = common.data_at(task, step, steps, None)
        batch = task.train.sample_chunks(args.batch_size, args.horizon, args.discount)
        qam.update(nets, opt, batch, args)
        times.append(time.perf_counter() - t0)
    swaps = [s for s in range(1, steps + 1) if s % interval == 0]
    near = [times[s - 1 + d] for s in swaps for d in (-1, 0, 1) if 0 <= s - 1 + d < steps]
    steady = [t for i, t in enumerate(times) if all(abs(i + 1 - s) > 2 for s in swaps) and i > 2]
    return {"mean_ms": 1e3 * float(np.mean(steady or times)), "worst_swap_ms": 1e3 * max(near) if near else None,
            "peak_rss_mb": rss_mb(), "transitions": int(task.train.size)}


def child(folder, mode, steps, interval, hidden) -> dict:
    """`run` in a fresh process, so that each row's peak memory is its own."""
    out = subprocess.run([sys.executable, __file__, "--child", folder, mode, str(steps), str(interval), str(hidden)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# row -> (shard folder, mode, memory row: runs only to two swaps instead of --steps); NAMES: its name in the table
ROWS = {"sync10": ("k10", "sync", False), "prefetch10": ("k10", "prefetch", False),
        "prefetch2": ("k2", "prefetch", True), "prefetch100": ("k100", "prefetch", True),
        "uniform": ("u10", "uniform", False)}
NAMES = {"sync10": "rotation, official synchronous read, 10 shards",
         "prefetch10": "rotation, read-ahead thread (ours), 10 shards",
         "prefetch2": "rotation, read-ahead thread (ours), 2 shards",
         "prefetch100": "rotation, read-ahead thread (ours), 100 shards",
         "uniform": "uniform (extension), 10 shards of a tenth the size"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=1000, help="episodes per shard (1000 = 1M transitions, official)")
    p.add_argument("--steps", type=int, default=60, help="updates per row")
    p.add_argument("--interval", type=int, default=20, help="--dataset-replace-interval of the timing rows")
    p.add_argument("--hidden", type=int, default=512, help="width of the 4 hidden layers (official 512)")
    p.add_argument("--dir", default=None, help="where to write the shards (default: a temp folder, removed)")
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    p.add_argument("--from-log", default=None, help="only write the table of the rows a stopped run printed to this log")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="run only these rows (default: all)")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.from_log:  # the rows are the printed tuples; the command is the log's first line
        import ast

        text = open(a.from_log).read().splitlines()
        rows = [ast.literal_eval(line) for line in text if line.startswith("('")]
        write_table(rows, a.out, text[0].removeprefix("command: ") + " (stopped; the rows it finished)")
        return
    if a.child:
        folder, mode, steps, interval, hidden = a.child
        print(json.dumps(run(folder, mode, int(steps), int(interval), int(hidden))))
        return
    print(f"command: {' '.join(sys.argv[1:])}", flush=True)
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        t0 = time.time()
        first = write_synthetic_shards(os.path.join(tmp, "k2"), "cube-quadruple", 2, a.episodes)
        for k in (10, 100):  # the two files again under other names, as hard links (same bytes, same read cost)
            os.makedirs(os.path.join(tmp, f"k{k}"))
            for i in range(k):
                for suffix in ("", "-val"):
                    os.link(first[i % 2].replace(".npz", f"{suffix}.npz"),
                            os.path.join(tmp, f"k{k}", f"cube-quadruple-play-v0-{i:03d}{suffix}.npz"))
        write_synthetic_shards(os.path.join(tmp, "u10"), "cube-quadruple", 10, max(1, a.episodes // 10))
        print(f"wrote the shards in {time.time() - t0:.0f} s", flush=True)
        rows = []
        for key in a.rows:
            folder, mode, memory_row = ROWS[key]
            steps = 2 * a.interval + 3 if memory_row else a.steps
            rows.append((NAMES[key], child(os.path.join(tmp, folder), mode, steps, a.interval, a.hidden)))
            print(rows[-1], flush=True)
    write_table(rows, a.out, " ".join(sys.argv[1:]))


def write_table(rows: list, out: str, command: str) -> None:
    """Prints the rows [(name, result)] as a markdown table and writes it to `out` under the machine and command."""
    fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    lines = ["| data | transitions (rotation: one shard; uniform: all) | mean step (ms) | "
             "worst step within 1 of a swap (ms) | peak RSS (MB) |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['transitions']:,} | {fmt(r['mean_ms'])} | {fmt(r['worst_swap_ms'])} | "
              f"{fmt(r['peak_rss_mb'])} |" for name, r in rows]
    table = "\n".join(lines)
    print(table)
    if out:
        import platform

        head = (f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, CPU only "
                f"(torch {__import__('torch').__version__}), load average {os.getloadavg()[0]:.1f} at the end\n"
                f"- command: `python benchmarks/shards.py {command}`\n\n")
        with open(out, "w") as f:
            f.write(head + table + "\n")


if __name__ == "__main__":
    main()
