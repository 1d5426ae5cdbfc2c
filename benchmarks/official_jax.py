"""Training steps per second of an official JAX agent's jitted `update`, for the side-by-side in the README.

Not part of the project's requirements: it needs `pip install jax flax optax ml_collections` and a checkout of the
official repository (its `agents/` and `utils/` folders), given by path; nothing of it is copied here. The batch is
random data of the chosen sizes (default: antmaze, 29-D obs, 8-D action, batch 256) at the agent's default config
(4 x 512 networks), the same sizes as `python benchmark.py`. Run both on the same machine, minutes apart, with the
same thread count (--threads here, --threads there).

    python benchmarks/official_jax.py /tmp/fql --agent fql --threads 1
    python benchmarks/official_jax.py /tmp/driftql --agent driftql --utils /tmp/fql --threads 1
    python benchmarks/official_jax.py /tmp/deflow --agent deflow --threads 1
    python benchmarks/official_jax.py /tmp/dfp --agent drift --set horizon_length=1 --threads 1
"""
import argparse
import ast
import os
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("repo", help="checkout of the official repository (holds agents/<agent>.py)")
    p.add_argument("--agent", default="fql", help="module name under agents/ (fql, driftql, deflow, qam, drift)")
    p.add_argument("--utils", default=None, help="repository whose utils/ to use, when the official one has none")
    p.add_argument("--steps", type=int, default=20, help="timed update steps (after 2 untimed compile/warm-up steps)")
    p.add_argument("--threads", type=int, default=None, help="XLA CPU threads (default: XLA's choice)")
    p.add_argument("--obs-dim", type=int, default=29)
    p.add_argument("--action-dim", type=int, default=8)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. horizon_length=1 (values parsed as Python literals)")
    a = p.parse_args()
    if a.threads:  # must be set before jax starts
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                   f"intra_op_parallelism_threads={a.threads}").strip()
    for path in (a.utils, a.repo):
        if path and not os.path.isdir(os.path.join(path, "agents" if path == a.repo else "utils")):
            sys.exit(f"error: {path} has no {'agents' if path == a.repo else 'utils'}/ folder; pass a checkout of "
                     "the official repository")
    sys.path[:0] = [a.repo] + ([a.utils] if a.utils else [])
    import jax
    import numpy as np
    import importlib
    mod = importlib.import_module(f"agents.{a.agent}")
    (agent_cls,) = [v for v in vars(mod).values() if isinstance(v, type) and v.__module__ == mod.__name__
                    and hasattr(v, "create") and hasattr(v, "update")]
    config = mod.get_config()
    for kv in a.set:
        key, value = kv.split("=", 1)
        config[key] = ast.literal_eval(value)
    rng = np.random.default_rng(0)
    b, horizon = config["batch_size"], config.get("horizon_length", 1) if config.get("action_chunking") else 1
    act_dim = a.action_dim * horizon if "action_chunking" in config else a.action_dim

    def batch():
        obs = rng.standard_normal((b, a.obs_dim)).astype(np.float32)
        out = dict(observations=obs, next_observations=rng.standard_normal((b, a.obs_dim)).astype(np.float32),
                   actions=rng.uniform(-1, 1, (b, act_dim)).astype(np.float32),
                   rewards=-rng.random(b).astype(np.float32), masks=np.ones(b, np.float32),
                   terminals=np.zeros(b, np.float32), valid=np.ones((b, horizon), np.float32))
        return out

    ex = batch()
    agent = agent_cls.create(0, ex["observations"][:1], ex["actions"][:1], config)
    batches = [batch() for _ in range(4)]
    for i in range(2):
        agent, info = agent.update(batches[i % 4])
    jax.block_until_ready(info)
    t = time.perf_counter()
    for i in range(a.steps):
        agent, info = agent.update(batches[i % 4])
    jax.block_until_ready((agent, info))
    sps = a.steps / (time.perf_counter() - t)
    print(f"official {a.agent} (jax {jax.__version__}, {jax.devices()[0].platform}, threads {a.threads or 'default'}): "
          f"{sps:.2f} update steps/s at batch {b}, obs {a.obs_dim}, action {act_dim}")


if __name__ == "__main__":
    main()
