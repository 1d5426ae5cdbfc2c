"""Shared fixtures: tiny OGBench datasets regenerated with collect.py into a temp data folder."""
import glob
import importlib
import os
import signal
import sys

import pytest
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download: a missing Minari dataset fails at once, no retries
os.environ.setdefault("MUJOCO_GL", "egl")  # the visual tests render; MuJoCo picks its GL backend when imported

import collect  # noqa: E402
import plumbing  # noqa: E402

# Tiny networks gain nothing from intra-op threads, and OpenMP spin-waiting on a busy core makes a 32-unit
# matmul take milliseconds: one thread keeps the suite fast on a shared 2-core machine.
torch.set_num_threads(1)

MAZE_ID = "pointmaze-medium-navigate-singletask-task3-v0"
CUBE_ID = "cube-single-play-singletask-task2-v0"


@pytest.fixture(scope="session")
def ogbench_dir(tmp_path_factory):
    """$OGBENCH_DATA_DIR with a 4-episode pointmaze-medium-navigate and a 3-episode cube-single-play dataset."""
    out = str(tmp_path_factory.mktemp("ogbench_data"))
    collect.main(collect.Args("pointmaze-medium-navigate-v0", data_dir=out, num_episodes=4, num_val_episodes=1,
                              max_episode_steps=201, workers=1))
    collect.main(collect.Args("cube-single-play-v0", data_dir=out, num_episodes=3, num_val_episodes=1,
                              max_episode_steps=201, workers=1))
    old = os.environ.get("OGBENCH_DATA_DIR")
    os.environ["OGBENCH_DATA_DIR"] = out
    yield out
    if old is None:
        os.environ.pop("OGBENCH_DATA_DIR")
    else:
        os.environ["OGBENCH_DATA_DIR"] = old


# ---------------------------------------------------------------------------------------------------- unit-test inputs
D, A, B = 5, 3, 16  # observation size, action size and batch of the unit tests


def small_args(module, **kw):
    """A script's Args with 32x32 networks (keywords override)."""
    return module.Args(**{**dict(actor_hidden_dims=(32, 32), value_hidden_dims=(32, 32)), **kw})


def random_batch(seed=0, b=B, d=D, a=A):
    """A batch of b random transitions in the form `Dataset.sample` returns, actions in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return dict(observations=torch.randn(b, d, generator=g), actions=torch.rand(b, a, generator=g) * 2 - 1,
                rewards=-torch.rand(b, generator=g), next_observations=torch.randn(b, d, generator=g),
                masks=(torch.rand(b, generator=g) > 0.3).float(), terminals=torch.zeros(b))


def seeded_nets(module, args, seed=0, d=D, a=A):
    """module.make_nets(args, d, a) under torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return module.make_nets(args, d, a)


TINY = dict(env_id="bandit-4gaussian", actor_hidden_dims=(8,), value_hidden_dims=(8,), batch_size=16, eval_interval=2,
            device="cpu")


def tiny_args(module, **kw):
    """Tiny networks on the bandit, for end-to-end runs of main(); QAM with h = 1 (the bandit's episodes are one
    step long), two critics and two Euler steps."""
    extra = dict(horizon=1, num_qs=2, flow_steps=2) if module.__name__ == "qam" else {}
    return module.Args(**{**TINY, **extra, **kw})


def grads_of(loss, nets):
    """Backpropagates `loss` alone and returns the summed |grad| of every network in the ModuleDict."""
    for p in nets.parameters():
        p.grad = None
    loss.backward()
    return {name: sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None)
            for name, m in nets.items()}


def run_dir_of(tmp_path):
    """The single run folder a script's main() made under tmp_path."""
    (d,) = glob.glob(str(tmp_path / "*"))
    return d


def assert_batched_critic(critic, num_qs, in_dim, hidden=(512, 512, 512, 512)):
    """The official critic as one batched ensemble: num_qs members in_dim -> hidden -> 1, a per-member LayerNorm on
    every hidden layer, Xavier-uniform weights drawn independently per member, zero biases, unit LayerNorm scales."""
    dims = (in_dim, *hidden, 1)
    assert [tuple(w.shape) for w in critic.weights] == [(num_qs, i, o) for i, o in zip(dims[:-1], dims[1:])]
    assert [tuple(b.shape) for b in critic.biases] == [(num_qs, 1, o) for o in dims[1:]]
    assert [tuple(w.shape) for w in critic.norm_weights] == [(num_qs, 1, h) for h in hidden]
    assert all(float(b.abs().max()) == 0 for b in [*critic.biases, *critic.norm_biases])
    assert all(torch.equal(w, torch.ones_like(w)) for w in critic.norm_weights)
    for w, (i, o) in zip(critic.weights, zip(dims[:-1], dims[1:])):
        assert float(w.abs().max()) <= (6 / (i + o)) ** 0.5 * (1 + 1e-6) and not torch.equal(w[0], w[1])


# ---------------------------------------------------------------------------------------------------- entry point
def cli(script, argv, capsys, monkeypatch):
    """Runs `python <script>.py <argv>` in-process; returns (exit code, stderr lines)."""
    mod = importlib.import_module(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    monkeypatch.delenv(plumbing.TRACEBACK_VAR, raising=False)
    old, code = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}, 0
    try:
        plumbing.cli(mod.main, mod.Args)
    except SystemExit as e:
        code = e.code
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return code, capsys.readouterr().err.splitlines()


def assert_one_line(code, err, *names):
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for name in names:
        assert name in err[0], (name, err[0])
    assert "Traceback" not in err[0] and "allow_pickle" not in err[0]
