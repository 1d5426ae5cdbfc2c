"""Training steps per second of an official JAX agent's jitted `update`, for the side-by-side in the README.

Not part of the project's requirements: it needs `pip install jax flax optax ml_collections` and a checkout of the
official repository (its `agents/` and `utils/` folders), given by path; nothing of it is copied here. The batch is
random data of the chosen sizes (default: antmaze, 29-D obs, 8-D action, batch 256) at the agent's default config
(4 x 512 networks), the same sizes as `python benchmark.py`. Run both on the same machine, minutes apart, with the
same thread count (--threads here, --threads there).

    python benchmarks/official_jax.py /tmp/fql --agent fql --threads 1
    python benchmarks/official_jax.py /tmp/driftql --agent driftql --utils /tmp/fql --threads 1
    python benchmarks/official_jax.py /tmp/deflow --agent deflow --threads 1
    python benchmarks/official_jax.py /tmp/dfp --agent drift --sequence --threads 1 --set horizon_length=1 \
        "drift_temps=(0.05,)" online_n_samples=16 online_pos_samples=8 q_bon=1 eval_bon=1   # dfp.py's defaults
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
    p.add_argument("--sequence", action="store_true",
                   help="batches with a time axis of length horizon_length (DFP's and QAM's agents read chunks)")
    a = p.parse_args()
    if a.threads:  # must be set before jax starts
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                   f"intra_op_parallelism_threads={a.threads}").strip()
    for path in (a.utils, a.repo):
        if path and not os.path.isdir(os.path.join(path, "agents" if path == a.repo else "utils")):
            sys.exit(f"error: {path} has no {'agents' if path == a.repo else 'utils'}/ folder; pass a checkout of "
                     "the official repository")
    sys.path[:0] = [a.repo] + ([a.utils] if a.utils else [])
    import inspect

    import jax
    import jax.numpy as jnp
    import numpy as np
    if "a_min" not in inspect.signature(jnp.clip).parameters:  # DFP's code calls jnp.clip(x, a_min=...), gone in jax 0.6+
        clip = jnp.clip
        jnp.clip = lambda x, min=None, max=None, a_min=None, a_max=None: clip(x, a_min if min is None else min,
                                                                              a_max if max is None else max)
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
        if a.sequence:  # the chunk layout of ACFQL's sample_sequence: a time axis of length h after the batch
            h = config["horizon_length"]
            return dict(observations=obs, next_observations=rng.standard_normal((b, h, a.obs_dim)).astype(np.float32),
                        actions=rng.uniform(-1, 1, (b, h, a.action_dim)).astype(np.float32),
                        rewards=-rng.random((b, h)).astype(np.float32), masks=np.ones((b, h), np.float32),
                        terminals=np.zeros((b, h), np.float32), valid=np.ones((b, h), np.float32))
        out = dict(observations=obs, next_observations=rng.standard_normal((b, a.obs_dim)).astype(np.float32),
                   actions=rng.uniform(-1, 1, (b, act_dim)).astype(np.float32),
                   rewards=-rng.random(b).astype(np.float32), masks=np.ones(b, np.float32),
                   terminals=np.zeros(b, np.float32), valid=np.ones((b, horizon), np.float32))
        return out

    ex = batch()
    if a.sequence:  # DFP's main.py passes one unbatched, unchunked example (train_dataset.sample(()))
        agent = agent_cls.create(0, ex["observations"][0], ex["actions"][0, 0], config)
    else:
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
