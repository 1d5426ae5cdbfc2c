"""Evaluation speed on a Robomimic task: episodes per minute of `common.evaluate`, the protocol every script runs.

It writes a scripted Lift file with collect.py into a temporary $ROBOMIMIC_DATA_DIR (or uses the one already in
$ROBOMIMIC_DATA_DIR with --env-id), then evaluates a uniform random policy, which never lifts the cube, so every
episode runs to the task's limit (Lift: 300 steps), the slowest case. It prints one markdown table (episodes, env
steps, seconds to build the envs, seconds in all, env steps per second, episodes per minute, and the same per CPU
second of this process, which a loaded machine does not change much) with the machine and its load average, and
writes it to --out.

    python benchmarks/robomimic_eval.py --episodes 5 --out results/robomimic/eval_speed.md
"""
import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", default=None, help="a downloaded task, e.g. can-mh-low_dim (default: Lift)")
    parser.add_argument("--episodes", type=int, nargs="+", default=[10])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import numpy as np
    import torch

    import collect
    import common

    tmp = None
    if args.env_id is None:
        tmp = tempfile.mkdtemp(prefix="robomimic-bench-")
        collect.main(collect.Args("lift-ph-low_dim", data_dir=tmp, num_episodes=2))
        os.environ["ROBOMIMIC_DATA_DIR"] = tmp
    env_id = args.env_id or "lift-ph-low_dim"
    task = common.load_task(env_id, torch.device("cpu"))
    action_dim = task.train.actions.shape[1]
    rng = np.random.default_rng(0)
    policy = lambda obs: torch.as_tensor(rng.uniform(-1, 1, (len(obs), action_dim)), dtype=torch.float32)  # noqa
    load = os.getloadavg()
    rows = []
    for n in args.episodes:
        start = time.perf_counter()
        envs = [task.make_env() for _ in range(n)]  # what evaluate's vector env builds first
        built = time.perf_counter() - start
        for env in envs:
            env.close()
        start, cpu = time.perf_counter(), time.process_time()
        out = common.evaluate(policy, task, n, seed=0)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
        steps = n * out["episodic_length"]
        rows.append(f"| {n} | {steps:.0f} | {built:.1f} | {total:.1f} | {steps / total:.1f} | {60 * n / total:.2f} "
                    f"| {cpu:.1f} | {60 * n / cpu:.2f} |")
    lines = [f"Evaluation speed, {env_id}, uniform random policy (every episode runs to the limit of "
             f"{task.max_episode_steps} steps), one process",
             "",
             "| episodes | env steps | s to build the envs | s in all (build + run) | env steps/s | episodes/min "
             "| CPU s of this process | episodes per CPU minute |",
             "|---|---|---|---|---|---|---|---|", *rows, "",
             f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; load average before: "
             + ", ".join(f"{x:.2f}" for x in load) + "; after: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
             "Command: python benchmarks/robomimic_eval.py " + " ".join(sys.argv[1:])]
    text = "\n".join(lines) + "\n"
    print(text)
    if tmp:
        shutil.rmtree(tmp)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
