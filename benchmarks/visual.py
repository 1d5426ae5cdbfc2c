"""Pixel tasks on this machine: rendering rate per MuJoCo GL backend, what a collection and a 50-episode evaluation
take at that rate, and the memory of a visual dataset per million transitions. Prints a table and writes
results/visual/bench.json (the numbers docs/visual.md quotes).

    python benchmarks/visual.py            # under a minute idle, 2-4 minutes on a loaded 2-core machine
    python benchmarks/visual.py --note "..."   # a word on the machine's state, kept in bench.json
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
ENV = "visual-cube-single-play-singletask-task1-v0"
PROBE = """
import sys, time, numpy as np, ogbench
env = ogbench.make_env_and_datasets(sys.argv[1], env_only=True)
env.reset(seed=0)
t = time.time()
for _ in range(int(sys.argv[2])):
    env.step(np.zeros(env.action_space.shape))
print(int(sys.argv[2]) / (time.time() - t))
"""


def render_rate(backend: str, steps: int = 40) -> float:
    """Env steps per second of one visual env (each step renders a 64x64 frame), or None when the backend fails."""
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    r = subprocess.run([sys.executable, "-c", PROBE, ENV, str(steps)], env=env, capture_output=True, text=True)
    return float(r.stdout.split()[-1]) if r.returncode == 0 and r.stdout.strip() else None


def main(note: str = "") -> dict:
    import gymnasium as gym
    import numpy as np
    import ogbench  # noqa: F401  (registers the envs)

    import visual

    load = os.getloadavg()[0]
    rates = {b: render_rate(b) for b in ("egl", "osmesa")}
    best = max((r, b) for b, r in rates.items() if r)
    horizon = gym.spec(ENV.replace("-play", "")).max_episode_steps
    # memory: frames (one byte per pixel, each episode's final frame too) + the per-transition arrays of VisualDataset
    n, ep = 1_000_000, 1000  # official files: 1000 episodes of 1001 frames -> 1000 transitions each
    frame_bytes = int(np.prod(visual.FRAME))
    per_transition = 8 + 8 + 4 * 5 + 4 * 3  # rows, starts (int64), actions (5 x fp32), rewards, masks, terminals
    frames = frame_bytes * n * (ep + 1) // ep
    out = {
        "machine": f"{os.cpu_count()} cores, load average {load:.1f} at the start" + (f" ({note})" if note else ""),
        "steps_per_s": rates, "backend": best[1],
        "collection_hours_1000x1001": 1000 * 1001 / best[0] / 3600,
        "eval_50_episodes_s": 50 * horizon / best[0], "eval_horizon": horizon,
        "frames_gb_per_1m": frames / 1e9, "arrays_gb_per_1m": per_transition * n / 1e9,
        "official_obs_plus_next_gb_per_1m": 2 * frame_bytes * n / 1e9,
        "batch_mb_256_k3": 256 * 4 * frame_bytes / 1e6, "encoder_input_mb_256_k3": 256 * frame_bytes * 3 * 4 / 1e6,
    }
    os.makedirs(os.path.join(ROOT, "results", "visual"), exist_ok=True)
    with open(os.path.join(ROOT, "results", "visual", "bench.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"{'quantity':<52} value")
    for k, v in out.items():
        print(f"{k:<52} {v if not isinstance(v, float) else round(v, 3)}")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--note", default="", help="the machine's state, e.g. what else ran (the 1-min load lags)")
    t = time.time()
    main(parser.parse_args().note)
    print(f"({time.time() - t:.0f} s)")
