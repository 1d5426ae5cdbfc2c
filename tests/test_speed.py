"""The speed work shared by the five scripts: the batched critic ensemble, the frozen critic of the actor's Q term,
--precision bf16 and --compile. Speed itself is measured by benchmark.py, never here."""
import copy
import importlib
import math
import os

import pytest
import torch

import plumbing

SCRIPTS = ["fql", "driftql", "dfp", "qam", "deflow"]


# ---------------------------------------------------------------------------------------------------- batched ensemble
# The Critic class is the same text in all five scripts (tests/test_layout.py), so fql's stands for all of them.
def stacked(members: list) -> dict:
    """The state dict of a batched Critic holding these per-member mlps: weights.l [num_qs, in, out], biases.l
    [num_qs, 1, out], norm_weights.l and norm_biases.l [num_qs, 1, h]."""
    out = {}
    nn = torch.nn
    for kind, names in ((nn.Linear, ("weights", "biases")), (nn.LayerNorm, ("norm_weights", "norm_biases"))):
        layers = [[m for m in q if isinstance(m, kind)] for q in members]
        for l in range(len(layers[0])):
            out[f"{names[0]}.{l}"] = torch.stack([q[l].weight.T if kind is nn.Linear else q[l].weight[None]
                                                  for q in layers])
            out[f"{names[1]}.{l}"] = torch.stack([q[l].bias[None] for q in layers])
    return out


@pytest.mark.parametrize("num_qs,layer_norm", [(1, True), (2, True), (2, False), (10, True)])
def test_batched_critic_equals_a_loop_over_member_mlps(num_qs, layer_norm):
    import fql
    hidden, d, a = (32, 16, 24), 5, 3
    torch.manual_seed(0)
    loop = [fql.mlp(d + a, hidden, 1, layer_norm) for _ in range(num_qs)]  # the official ensemble: one mlp a member
    torch.manual_seed(0)
    critic = fql.Critic(d, a, hidden, layer_norm, num_qs)
    # same seed, same draws: the members' initial weights are the loop's, not only the same distribution
    assert all(torch.equal(critic.state_dict()[k], v) for k, v in stacked(loop).items())
    with torch.no_grad():  # perturb every tensor so that biases and LayerNorm affines are not trivially 0 and 1
        for q in loop:
            for p in q.parameters():
                p.add_(0.1 * torch.randn_like(p))
    critic.load_state_dict({k: v.detach() for k, v in stacked(loop).items()})
    obs, act = torch.randn(7, d), torch.rand(7, a) * 2 - 1
    want = torch.stack([q(torch.cat([obs, act], -1)).squeeze(-1) for q in loop])
    torch.testing.assert_close(critic(obs, act), want, rtol=1e-5, atol=1e-5)  # float rounding only
    # and the gradients: each member's weights, biases, LayerNorm scales and offsets get the loop's gradient
    c = torch.randn(num_qs, 7)  # a different weight per member and row, so that a mixed-up member shows
    (critic(obs, act) * c).sum().backward()
    (want * c).sum().backward()
    grads = [copy.deepcopy(q) for q in loop]
    for g, q in zip(grads, loop):
        for pg, p in zip(g.parameters(), q.parameters()):
            pg.data = p.grad
    for k, v in stacked(grads).items():
        torch.testing.assert_close(critic.get_parameter(k).grad, v, rtol=1e-4, atol=1e-5)
    # leading batch dims are kept: [num_qs, K, B]
    torch.testing.assert_close(critic(obs.expand(2, 7, d), act.expand(2, 7, a)), want.unsqueeze(1).expand(-1, 2, -1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_qs,hidden,rows", [(2, (32, 32), 16), (10, (64, 48), 33), (2, (512, 512), 256)])
def test_member_by_member_hidden_layers_give_the_batched_values_bit_for_bit(num_qs, hidden, rows):
    """The hidden layers run member by member to avoid stacking the LayerNorm outputs (issue 35); the values and the
    gradients are those of one batched matmul per layer, bit for bit (tests/test_bit_identity.py relies on it)."""
    import fql
    nn = torch.nn

    def batched(self, obs, action):  # every layer one baddbmm over the members, LayerNorm outputs stacked
        x = torch.cat([obs, action], -1)
        h = x.expand(len(self.weights[0]), -1, -1)
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if l < len(self.weights) - 1:
                h = torch.stack([nn.functional.layer_norm(nn.functional.gelu(m, approximate="tanh"), m.shape[-1:],
                                                          g[0], o[0], eps=1e-6)
                                 for m, g, o in zip(h, self.norm_weights[l], self.norm_biases[l])])
        return h.squeeze(-1)
    torch.manual_seed(0)
    critic = fql.Critic(5, 3, hidden, True, num_qs)
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(0.1 * torch.randn_like(p))
    obs, act = torch.randn(rows, 5), torch.rand(rows, 3) * 2 - 1
    out = []
    for f in (fql.Critic.forward, batched):
        critic.zero_grad()
        q = f(critic, obs, act)
        (q * torch.randn(q.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        out.append([q.detach()] + [p.grad.clone() for p in critic.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*out))


def test_batched_members_are_drawn_independently():
    import fql
    torch.manual_seed(0)
    critic = fql.Critic(29, 8, (512, 512), True, 10)
    w = critic.weights[0].flatten(1)  # [10, 37 * 512]
    corr = torch.corrcoef(w)
    assert float((corr - torch.eye(10)).abs().max()) < 0.05
    assert float(w.std(1).div((2 / (37 + 512)) ** 0.5).sub(1).abs().max()) < 0.05  # Xavier-uniform std


# ---------------------------------------------------------------------------------------------------- --compile, --precision
D, A, B = 5, 3, 8


def tiny(name, **kw):
    mod = importlib.import_module(name)
    extra = dict(horizon=2, flow_steps=3, num_qs=3) if name == "qam" else dict(drift_ngen=4) if name == "driftql" else {}
    args = mod.Args(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), **extra, **kw)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    actions = torch.rand(B, *((2,) if name == "qam" else ()), A, generator=g) * 2 - 1
    batch = dict(observations=torch.randn(B, D, generator=g), actions=actions, rewards=-torch.rand(B, generator=g),
                 next_observations=torch.randn(B, D, generator=g), masks=torch.ones(B), valid=torch.ones(B))
    return mod, args, batch


def fixed_noise(monkeypatch):
    """torch's random draws replaced by a fixed function of the shape (and of the input's mean), so that an eager and
    a compiled run see the same noise: the compiled graph may draw its random numbers in another order."""
    def noise(shape, like=None, device=None):
        i = torch.arange(math.prod(shape), dtype=torch.float32, device=device).reshape(shape)
        salt = 0.0 if like is None else 0.1 * torch.tanh(like.detach().float().mean())
        return (i * 0.6180339) % 1.0 * 2 - 1 + salt  # in [-1.1, 1.1]

    def randn(*shape, device=None, **_):
        return noise(tuple(shape[0]) if len(shape) == 1 else shape, None, device)
    monkeypatch.setattr(torch, "randn_like", lambda x, **_: noise(x.shape, x, x.device))
    monkeypatch.setattr(torch, "rand_like", lambda x, **_: (noise(x.shape, x, x.device) + 1.1) / 2.2)
    monkeypatch.setattr(torch, "randn", randn)


def steps(mod, args, batch, loss_fn, n=3, fused=None):
    torch.manual_seed(0)
    nets = mod.make_nets(args, D, A)
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=1e-3, fused=fused)
    metrics = [mod.update(nets, opt, batch, args, loss_fn=loss_fn) for _ in range(n)]
    return metrics, nets


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_the_loss_compiles_with_fullgraph_and_the_compiled_update_matches_eager(name, monkeypatch):
    """fullgraph=True fails on any graph break. The traced graph (forward and backward, backend aot_eager: the same
    graph the default inductor backend turns into C++, without the minutes of C++ compilation) gives the eager
    losses and parameters over 3 steps."""
    mod, args, batch = tiny(name)
    fixed_noise(monkeypatch)
    eager, eager_nets = steps(mod, args, batch, mod.losses)
    torch._dynamo.reset()
    compiled, compiled_nets = steps(mod, args, batch, torch.compile(mod.losses, fullgraph=True, backend="aot_eager"))
    for e, c in zip(eager, compiled):
        assert e.keys() == c.keys()
        for k in e:
            torch.testing.assert_close(c[k], e[k], rtol=1e-5, atol=1e-6, msg=k)
    for (k, e), c in zip(eager_nets.named_parameters(), compiled_nets.parameters()):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6, msg=k)
    assert not all(torch.equal(a, b) for a, b in zip(eager_nets.parameters(), mod.make_nets(args, D, A).parameters()))


@pytest.mark.slow
def test_compiled_fql_update_with_inductor_and_fused_adam_matches_eager(monkeypatch):
    """The path of --compile on the CPU end to end: plumbing.compiled (inductor, C++) and the fused Adam."""
    mod, args, batch = tiny("fql", flow_steps=2)  # a smaller graph: C++ compilation takes most of this test's time
    fixed_noise(monkeypatch)
    eager, eager_nets = steps(mod, args, batch, mod.losses, n=2)
    torch._dynamo.reset()
    compiled, compiled_nets = steps(mod, args, batch, plumbing.compiled(mod.losses, torch.device("cpu")), n=2,
                                    fused=True)
    for k in eager[-1]:
        torch.testing.assert_close(compiled[-1][k], eager[-1][k], rtol=1e-4, atol=1e-5, msg=k)
    for (k, e), c in zip(eager_nets.named_parameters(), compiled_nets.parameters()):
        torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("name", SCRIPTS)
def test_bf16_autocasts_the_actors_and_keeps_critics_losses_parameters_and_adam_state_fp32(name):
    mod, args, batch = tiny(name, precision="bf16")
    metrics, nets = steps(mod, args, batch, mod.losses, n=2)
    assert all(v.dtype == torch.float32 for v in metrics[-1].values())  # losses, TD-target-based terms, diagnostics
    assert all(p.dtype == torch.float32 for p in nets.parameters())  # and so the checkpoints
    fp32, _ = steps(mod, tiny(name)[1], batch, mod.losses, n=2)
    ratio = metrics[-1]["critic_loss"] / fp32[-1]["critic_loss"]
    assert 0.9 < float(ratio) < 1.1 and float(ratio) != 1.0  # bf16 matmuls did run: close to fp32, not equal
    actions = torch.rand(B, nets["critic"].weights[0].shape[1] - D) * 2 - 1
    with plumbing.autocast("bf16", torch.device("cpu")):
        y = nets["critic"](batch["observations"], actions)
    assert y.dtype == torch.float32 and torch.equal(y, nets["critic"](batch["observations"], actions))  # fp32 critic



@pytest.mark.parametrize("name", ["driftql", "dfp"])
def test_bf16_drift_fields_are_computed_in_fp32(name):
    mod = importlib.import_module(name)
    gen = torch.rand(4, 6, 3) * 2 - 1  # generator samples: fp32, as every network's output under autocast
    pos = torch.rand(4, 1, 3) * 2 - 1
    with plumbing.autocast("bf16", torch.device("cpu")):
        out = mod.drift_loss(gen, pos, 0.2, "laplace", 1.0) if name == "driftql" else mod.drift_loss(gen, pos, (0.2,))
    assert out[0].dtype == torch.float32 and out[1].dtype == torch.float32  # the loss and the field V
    want = mod.drift_loss(gen, pos, 0.2, "laplace", 1.0) if name == "driftql" else mod.drift_loss(gen, pos, (0.2,))
    torch.testing.assert_close(out[1], want[1], rtol=1e-6, atol=1e-7)  # the field as without autocast


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fql", "driftql", "dfp"])
def test_compiled_bf16_update_matches_eager_bf16(name, monkeypatch):
    mod, args, batch = tiny(name, precision="bf16")
    fixed_noise(monkeypatch)
    eager, eager_nets = steps(mod, args, batch, mod.losses, n=2)
    torch._dynamo.reset()
    compiled, compiled_nets = steps(mod, args, batch, torch.compile(mod.losses, fullgraph=True, backend="aot_eager"),
                                    n=2)
    for k in eager[-1]:
        torch.testing.assert_close(compiled[-1][k], eager[-1][k], rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.slow
def test_benchmark_times_every_requested_mode(tmp_path):
    import benchmark
    (row,) = benchmark.main(benchmark.Args(algos=("fql",), modes=("eager", "bf16"), steps=1, act_calls=1,
                                           device="cpu", obs_dim=5, action_dim=2, out=str(tmp_path / "t.md")))
    text = (tmp_path / "t.md").read_text()  # the table as a file: machine, commit, command and load average first
    assert "- machine: " in text and "- commit: " in text and "- load average" in text and "| fql " in text
    assert row["eager"] > 0 and row["bf16"] > 0 and row["ms_b1_eager"] > 0 and row["nfe"] == 1
    assert "compile" not in row and row["params_m"] > 3
    # operator calls per update (a GPU's kernel launches): dozens for FQL's three networks, the same in both modes
    assert 100 < row["ops_eager"] < 5000 and row["ops_bf16"] >= row["ops_eager"]


def test_the_benchmark_header_names_the_code_as_it_was_before_the_table_was_written(tmp_path, monkeypatch):
    """The table is rewritten after every script; its own file must not turn the header into 'uncommitted'."""
    import benchmark
    states = iter([False] + [True] * 10)  # clean at the start, dirty once the table file exists
    monkeypatch.setattr(benchmark.runfiles, "provenance",
                        lambda: dict(commit="c0ffee", dirty=next(states), command="python benchmark.py"))
    benchmark.main(benchmark.Args(algos=("fql", "deflow"), modes=("eager",), steps=1, act_calls=1, hidden=8,
                                  device="cpu", obs_dim=5, action_dim=2, out=str(tmp_path / "t.md")))
    text = (tmp_path / "t.md").read_text()
    assert "- commit: c0ffee, " in text and "| deflow " in text


@pytest.mark.slow
def test_the_prepared_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    """benchmarks/gpu.sh is the one GPU run a session gets: a dry run here must reach its table (every mode's
    columns and the whole-loop column) and write it with the machine and commit."""
    import subprocess
    import sys as _sys
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out = subprocess.run(["bash", "benchmarks/gpu.sh", str(tmp_path), "--device", "cpu", "--steps", "1", "--act-calls",
                          "1", "--loop-steps", "10", "--hidden", "16", "--threads", "1", "--algos", "fql", "qam",
                          "--modes", "eager", "bf16"], cwd=root,
                         capture_output=True, text=True, env={**os.environ, "PATH": os.path.dirname(_sys.executable)
                                                              + os.pathsep + os.environ["PATH"]})
    assert out.returncode == 0, out.stderr[-800:]
    table = (tmp_path / "gpu.md").read_text()
    assert "- machine: " in table and "- commit: " in table and "| fql " in table and "| qam " in table
    assert "bf16 steps/s" in table and "ops/step fp32 eager" in table and "loop steps/s (10 steps)" in table
