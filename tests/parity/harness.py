"""Parity harness: run one of our updates and the official JAX agent's update side by side and compare them.

The official code is never copied here: each repository is a checkout the user names with an environment variable
(OFFICIAL_FQL, ...), imported from there at run time. The pieces:
  official(var)       the checkout's path, or a skip that says what to set
  load_agent(...)     imports `agents.<name>` of that checkout (its `agents`/`utils` packages replace any other's)
  Noise               pre-drawn arrays fed to both sides in call order, shape- and kind-checked, all must be used
  precision(dtype)    float64 (jax x64, ours in double) or float32 (both as written)
  Report              one line per check (worst relative error, tolerance), PASS/FAIL per script at the end
  run_updates(...)    several full updates from the same weights and batches; compares every shared metric, the
                      gradient of every network and every parameter after each update
The flax <-> torch parameter layout lives in mapping.py. How to add a script: docs/parity.md.
"""
import contextlib
import importlib
import os
import sys
import types

import numpy as np
import pytest
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

REPOS = dict(  # env var -> (repository, commit our script follows)
    OFFICIAL_FQL=("github.com/seohongpark/fql", "719d044"),
    OFFICIAL_DRIFTQL=("github.com/DT6A/driftql", "2da54d1"),
    OFFICIAL_DEFLOW=("github.com/muzhancun/DeFlow", "d81dd59"),
    OFFICIAL_QC=("github.com/ColinQiyangLi/qc", "48283b4"),
    OFFICIAL_QAM=("github.com/ColinQiyangLi/qam", "f93efd2"),
    OFFICIAL_DFP=("github.com/KAIST-Visual-AI-Group/DFP", "babc3da"),
)
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}  # worst relative error allowed per tensor (see docs/parity.md)


def official(var: str) -> str:
    """The checkout named by $var, or skip the test with one line saying what to set."""
    path = os.environ.get(var)
    repo, commit = REPOS[var]
    if not path or not os.path.isdir(os.path.join(path, "agents")):
        pytest.skip(f"set {var} to a checkout of {repo} at {commit} (docs/parity.md)")
    try:
        import flax  # noqa: F401
        import jax  # noqa: F401
        import optax  # noqa: F401
    except ImportError:
        pytest.skip("pip install -r requirements-parity.txt (jax, flax, optax, ml_collections)")
    return path


def _stub_distrax():
    """The official utils/networks.py imports distrax for its Gaussian actors, which no checked agent uses; distrax
    0.1.9 does not import under jax >= 0.7. A stub module lets networks.py import; any use of it raises."""
    try:
        import distrax  # noqa: F401
        return
    except Exception:
        for k in [k for k in sys.modules if k.split(".")[0] in ("distrax", "tensorflow_probability")]:
            del sys.modules[k]

    class Unavailable:
        def __init__(self, *a, **k):
            raise RuntimeError("distrax is stubbed by tests/parity/harness.py")
    stub = types.ModuleType("distrax")
    for name in ("Transformed", "Distribution", "MultivariateNormalDiag", "Normal", "Block", "Tanh", "Bijector"):
        setattr(stub, name, type(name, (Unavailable,), {}))
    sys.modules["distrax"] = stub


def load_agent(path: str, name: str, extra_paths=()):
    """Import `agents.<name>` from the checkout at `path` (then `extra_paths` for a missing `utils`)."""
    _stub_distrax()
    for k in [k for k in sys.modules if k.split(".")[0] in ("agents", "utils", "envs")]:
        del sys.modules[k]  # another checkout's packages of the same names
    sys.path[:0] = [path, *extra_paths]
    package = types.ModuleType("agents")  # the package without its __init__, which imports every other agent
    package.__path__ = [os.path.join(path, "agents")]
    sys.modules["agents"] = package
    try:
        return importlib.import_module(f"agents.{name}")
    finally:
        del sys.path[:1 + len(extra_paths)]


# ---------------------------------------------------------------------------------------------------- precision
@contextlib.contextmanager
def precision(dtype: torch.dtype):
    """float64: jax x64 on; torch's default dtype float64 (for torch.randn(...) without a dtype), and our modules'
    `.float()` (a bf16 -> fp32 cast that would round a double) leaves float64 tensors alone.
    float32: both sides exactly as written."""
    import jax
    old_x64, old_float, old_default = jax.config.jax_enable_x64, torch.Tensor.float, torch.get_default_dtype()
    jax.config.update("jax_enable_x64", dtype == torch.float64)
    torch.set_default_dtype(dtype)
    if dtype == torch.float64:
        torch.Tensor.float = lambda self, *a, **k: self if self.dtype == torch.float64 else old_float(self, *a, **k)
    try:
        yield
    finally:
        torch.Tensor.float = old_float
        torch.set_default_dtype(old_default)
        jax.config.update("jax_enable_x64", old_x64)


def np_dtype(dtype: torch.dtype):
    return np.float64 if dtype == torch.float64 else np.float32


# ---------------------------------------------------------------------------------------------------- noise
class NoiseError(AssertionError):
    pass


class Noise:
    """Pre-drawn noise for one update. `arrays` maps a name to (kind, array), kind 'normal' or 'uniform' (on [0, 1)).
    `ours` and `theirs` list the names in the order each side draws them (a name may repeat where one side reuses
    an array for a draw the other side does not make). Every draw on a side must be the next name of its list with
    the same kind and shape, every name of both lists must be drawn, and any other random call raises."""

    def __init__(self, arrays: dict, ours: list, theirs: list, our_shapes: dict = None, views: dict = None):
        """our_shapes: {name: shape} where our draw has another shape of the same values in the same (row-major)
        order, e.g. [B*N, D] for the official [B, N, D]; checked like any other shape. views: {name: f} where the
        official code lays the same numbers out otherwise (e.g. lambda a: a.T for TFP, which draws a Gaussian [event,
        batch] and transposes it); applied on the official side only, with array methods numpy and jax share."""
        assert set(ours) == set(theirs) == set(arrays), (sorted(arrays), ours, theirs)
        self.arrays, self.order = arrays, dict(ours=list(ours), theirs=list(theirs))
        self.our_shapes, self.views = our_shapes or {}, dict(views or {})

    def _next(self, side, kind, shape):
        queue = self.order[side]
        if not queue:
            raise NoiseError(f"{side}: an extra {kind} draw of shape {tuple(shape)} beyond the pre-drawn noise")
        name = queue.pop(0)
        k, a = self.arrays[name]
        want = tuple(self.our_shapes.get(name, a.shape)) if side == "ours" else tuple(a.shape)
        if k != kind or want != tuple(shape):
            raise NoiseError(f"{side}: draw '{name}' expected {k} {want}, got {kind} {tuple(shape)} "
                             "(the draw order or a shape changed)")
        return a.reshape(want)

    def _done(self, side):
        if self.order[side]:
            raise NoiseError(f"{side}: pre-drawn noise not used: {self.order[side]}")

    @contextlib.contextmanager
    def torch_side(self):
        orig = {n: getattr(torch, n) for n in ("randn_like", "rand_like", "randn", "rand", "randint", "randperm",
                                                "randint_like", "multinomial", "normal", "bernoulli", "poisson")}

        def like(kind):
            return lambda x, **k: torch.as_tensor(self._next("ours", kind, x.shape), dtype=k.get("dtype") or x.dtype,
                                                  device=x.device)

        def new(kind):
            def f(*size, dtype=None, device=None, generator=None, **k):
                size = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
                return torch.as_tensor(self._next("ours", kind, size), dtype=dtype or torch.get_default_dtype(),
                                       device=device)
            return f

        def unfed(name):
            def f(*a, **k):
                raise NoiseError(f"ours: torch.{name} is not fed by the harness; add its draw to the noise list")
            return f
        patch = {n: unfed(n) for n in orig}
        patch.update(randn_like=like("normal"), rand_like=like("uniform"), randn=new("normal"), rand=new("uniform"))
        try:
            for n, f in patch.items():
                setattr(torch, n, f)
            yield
        finally:
            for n, f in orig.items():
                setattr(torch, n, f)
        self._done("ours")

    @contextlib.contextmanager
    def jax_side(self, values: dict):
        """While the official update is traced: jax.random.normal/uniform return the next array of `theirs` (from
        `values`, name -> the traced array), any other jax.random sampler raises."""
        import jax
        names = ("normal", "uniform", "randint", "bernoulli", "choice", "permutation", "truncated_normal",
                 "categorical", "gumbel", "beta", "exponential", "laplace", "logistic", "gamma")
        orig = {n: getattr(jax.random, n) for n in names}
        queue = list(self.order["theirs"])

        def draw(kind, shape, dtype):
            if not queue:
                raise NoiseError(f"theirs: an extra {kind} draw of shape {tuple(shape)} beyond the pre-drawn noise")
            name = queue.pop(0)
            k, a = self.arrays[name]
            view = self.views.get(name, lambda x: x)
            if k != kind or tuple(view(a).shape) != tuple(shape):
                raise NoiseError(f"theirs: draw '{name}' expected {k} {tuple(view(a).shape)}, got {kind} "
                                 f"{tuple(shape)} (the draw order or a shape changed)")
            return view(values[name]) if dtype is None else view(values[name]).astype(dtype)

        def normal(key, shape=(), dtype=None, *a, **k):
            return draw("normal", shape, dtype)

        def uniform(key, shape=(), dtype=None, minval=0.0, maxval=1.0, *a, **k):
            u = draw("uniform", shape, dtype)
            return u if (minval, maxval) == (0.0, 1.0) else minval + (maxval - minval) * u

        def unfed(name):
            def f(*a, **k):
                raise NoiseError(f"theirs: jax.random.{name} is not fed by the harness; add its draw")
            return f
        patch = {n: unfed(n) for n in names}
        patch.update(normal=normal, uniform=uniform)
        try:
            for n, f in patch.items():
                setattr(jax.random, n, f)
            yield
        finally:
            for n, f in orig.items():
                setattr(jax.random, n, f)
        if queue:
            raise NoiseError(f"theirs: pre-drawn noise not used: {queue}")


class Official:
    """The official `agent.update` as one jax.jit program whose noise and gradient are inputs and outputs: traced
    once (the agent's own jitted methods inlined, jax.random fed from the noise arguments, the gradient caught where
    TrainState applies it), then run for every step. A new trace (other shapes) checks the draws again."""

    def __init__(self, agent):
        import jax
        self.cls, self.state_cls = type(agent), type(agent.network)
        self.jitted = {n: f for n, f in vars(self.cls).items()  # jax.jit methods (not static/class methods)
                       if hasattr(f, "lower") and hasattr(f, "__wrapped__")}
        self.noise = None
        self.fn = jax.jit(self._traced)

    def _traced(self, agent, batch, values):
        caught, apply = {}, self.state_cls.apply_gradients

        def catching(state, grads, **kw):
            caught["grads"] = grads
            return apply(state, grads=grads, **kw)
        try:
            self.state_cls.apply_gradients = catching
            for n, f in self.jitted.items():
                setattr(self.cls, n, f.__wrapped__)
            with self.noise.jax_side(values):
                agent, info = agent.update(batch)
        finally:
            self.state_cls.apply_gradients = apply
            for n, f in self.jitted.items():
                setattr(self.cls, n, f)
        return agent, info, caught["grads"]

    def update(self, agent, batch: dict, noise: Noise):
        """(new agent, info, gradient) of one official update on `batch` with the pre-drawn `noise`."""
        self.noise = noise
        values = {n: a for n, (k, a) in noise.arrays.items()}
        if os.environ.get("PARITY_EAGER"):
            import jax
            with jax.disable_jit():
                return self._traced(agent, batch, values)
        return self.fn(agent, batch, values)


# ---------------------------------------------------------------------------------------------------- report
class Report:
    """Collects one line per check; `line()` also prints it (visible with pytest -s). The per-script PASS/FAIL
    summary is printed by conftest.py at the end of the session."""
    lines: list = []  # (script, text, ok), shared by every test of the session
    worst: dict = {}  # (script, configuration, dtype) -> worst relative error over its checks

    def __init__(self, script: str, config: str):
        self.script, self.config, self.failures = script, config, []

    def check(self, what: str, worst: float, tol: float, where: str = ""):
        ok = bool(worst <= tol)  # NaN fails
        text = f"{self.script:8s} {self.config:28s} {what:34s} worst rel {worst:9.2e}  tol {tol:7.1e}  " \
               f"{'ok' if ok else 'FAIL at ' + where}"
        Report.lines.append((self.script, text, ok))
        if "zero gradient" not in what:  # exact checks (tolerance 0) are not errors of the port's arithmetic
            config, dtype = self.config.rsplit(" ", 1)
            key = (self.script, config, dtype)
            Report.worst[key] = max(Report.worst.get(key, 0.0), worst)
        print(text)
        if not ok:
            self.failures.append(f"{self.config}: {what} {where} (rel {worst:.2e} > {tol:.1e})")

    def assert_ok(self):
        assert not self.failures, "parity failures:\n" + "\n".join(self.failures)


def rel_err(ours, theirs, scale=None) -> float:
    """max |ours - theirs| / max |theirs| over the tensor (relative to its scale, or to `scale` when given); 0 when
    both are exactly 0."""
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if a.size == b.size:  # our layout may keep a unit axis that flax drops (mapping.py transposes kernels)
        a = a.reshape(b.shape)
    if a.shape != b.shape:
        return float("inf")
    diff, scale = np.abs(a - b).max(initial=0.0), np.abs(b).max(initial=0.0) if scale is None else scale
    if diff == 0:
        return 0.0
    return float(diff / scale) if scale > 0 else float("inf")


class Checks:
    """Worst error per named group of tensors for one step; remembers where the worst one was."""

    def __init__(self):
        self.worst = {}

    def add(self, group: str, where: str, err: float):
        if group not in self.worst or not err <= self.worst[group][0]:
            self.worst[group] = (err, where)


def transitions(b: int, obs_dim: int, act_dim: int, dtype: torch.dtype, seed: int = 0, repeat_states: int = 1):
    """make(step) -> a batch of random transitions (numpy): N(0, 1) observations, actions on (-1, 1), N(0, 1)
    rewards, masks 0 with probability 0.2. repeat_states > 1: each observation appears that many times in a row."""
    rng, f = np.random.default_rng(seed), np_dtype(dtype)

    def make(step):
        obs = np.repeat(rng.standard_normal((b // repeat_states, obs_dim)), repeat_states, 0)
        return dict(observations=obs.astype(f), actions=rng.uniform(-1, 1, (b, act_dim)).astype(f),
                    next_observations=rng.standard_normal((b, obs_dim)).astype(f),
                    rewards=rng.standard_normal(b).astype(f), masks=(rng.random(b) < 0.8).astype(f))
    return make


def normal(rng, shape, dtype):
    return "normal", rng.standard_normal(shape).astype(np_dtype(dtype))


def uniform(rng, shape, dtype):
    return "uniform", rng.random(shape).astype(np_dtype(dtype))


def create_agent(cls, cfg, ex_observations, ex_actions, seed=0):
    """`cls.create(seed, ex_observations, ex_actions, cfg)` compiled as one program (eager flax init compiles every
    operation on its own, which takes a minute); the same parameters."""
    import jax
    return jax.jit(lambda o, a: cls.create(seed, o, a, cfg))(ex_observations, ex_actions)


def cast_agent(agent, dtype: torch.dtype):
    """The official agent with its parameters (targets included) in `dtype` and a fresh optimizer state for them;
    flax creates float32 parameters even under x64."""
    import jax
    import jax.numpy as jnp
    jdt = jnp.float64 if dtype == torch.float64 else jnp.float32
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jdt), agent.network.params)
    network = agent.network.replace(params=params, opt_state=agent.network.tx.init(params))
    return agent.replace(network=network)


# ---------------------------------------------------------------------------------------------------- one run
def run_updates(report, *, script, agent, nets, opt, args, entries, frozen, metrics, make_batch, make_noise,
                dtype, steps=3):  # noqa: C901
    """`steps` full updates of the official `agent` and of `script.update(nets, opt, batch, args)` from the same
    weights (the caller loaded them through mapping.load). After each update compares, per step:
      metrics   pairs (ours key, official info key) of shared losses and diagnostics;
      gradients of every entry of `entries` that is trained (official gradient of the `frozen` flax modules, i.e.
                targets, EMA copies and untrained nets, must be exactly zero, and ours must have none);
      params    every parameter afterwards, `frozen` modules included, relative to max(1, largest parameter) of its
                network: Adam's first steps move a zero-initialised bias by about lr * g / (|g| + eps), and where
                |g| is near eps = 1e-8 a 1e-16 difference in g becomes ~1e-12 in the step, 1e-9 of the bias itself.
    make_batch(step) -> dict of numpy arrays, or (ours, theirs) where the layouts differ; make_noise(step) -> Noise.
    Official modules that we do not build (no entry in `entries`) must be in `frozen`: their gradient is checked to
    be zero and their parameters are not compared."""
    from mapping import flatten, torch_view
    tol = TOL[dtype]
    official = Official(agent)
    for step in range(1, steps + 1):
        batch = make_batch(step)
        batch, their_batch = batch if isinstance(batch, tuple) else (batch, batch)
        noise = make_noise(step)
        # theirs: the official update (one jitted program, see Official)
        agent, info, their_grads = official.update(agent, {k: np.asarray(v) for k, v in their_batch.items()}, noise)
        # ours: our update as written, its gradient caught right after backward (before any clipping, like the
        # official one, which optax clips after apply_gradients), or just before the optimizer step
        grads, step_fn, backward = {}, opt.step, torch.Tensor.backward

        def catch():
            grads.update({n: None if p.grad is None else p.grad.detach().clone() for n, p in nets.named_parameters()})

        def stepping(*a, **k):
            if not grads:
                catch()
            return step_fn(*a, **k)

        def backward_and_catch(self, *a, **k):
            backward(self, *a, **k)
            catch()
        opt.step, torch.Tensor.backward = stepping, backward_and_catch
        try:
            with noise.torch_side():
                out = script.update(nets, opt, {k: torch.as_tensor(v, dtype=dtype if v.dtype.kind == "f" else None)
                                                for k, v in batch.items()}, args)
        finally:
            del opt.step
            torch.Tensor.backward = backward
        checks = Checks()
        for ours_key, their_key in metrics:
            checks.add("metrics", f"metric {ours_key}", rel_err(out[ours_key].numpy(), np.asarray(info[their_key])))
        their_grads, their_params = flatten(their_grads), flatten(agent.network.params)
        our_grads = torch_view(entries, {n: g for n, g in grads.items() if g is not None})
        our_params = torch_view(entries, dict(nets.named_parameters()))
        for path, g in their_grads.items():
            module = path.split("/")[0]
            if module in frozen:
                checks.add("zero gradient (frozen/targets)", f"module {path}", 0.0 if not np.any(np.asarray(g))
                           else float("inf"))
                continue
            checks.add("gradients", f"module {path}", rel_err(our_grads.get(path, np.full(1, np.inf)), g))
        for e in entries:
            if e.module in frozen and grads.get(e.torch_name) is not None:
                checks.add("zero gradient (frozen/targets)", f"ours {e.torch_name} has a gradient", float("inf"))
        scale = {}  # max(1, largest |parameter|) of each network: a zero-initialised bias that Adam moved by ~lr is
        for path, p in their_params.items():  # compared on the network's scale, not on its own (see docs)
            scale[path.split("/")[0]] = max(scale.get(path.split("/")[0], 1.0), float(np.abs(p).max(initial=0.0)))
        for path, p in their_params.items():
            if path not in our_params and path.split("/")[0] in frozen:
                continue  # an official module we do not build (its zero gradient is checked above)
            checks.add("params after", f"module {path}", rel_err(our_params[path], p, scale[path.split("/")[0]]))
        for group, (err, where) in checks.worst.items():
            report.check(f"step {step} {group}", err, 0.0 if group.startswith("zero") else tol, where)
    return agent
