"""Where `--precision bf16` moves the update of FQL and DriftQL (a measurement that prints a table, not a test).

The same weights, batch and noise go through each candidate quantity twice, in fp32 and under the bf16 autocast the
scripts use, and the table gives the relative error |bf16 - fp32| / |fp32| (norms over the batch), its median and
maximum over --batches batches, and for gradients the cosine between the two. The weights are those of an fp32 run of
--warmup-steps steps of the script's own `update` on the task, so the critic and the flow are past their initial
state, or with --checkpoint those of a run's checkpoint (its flags, its task), to measure late in training where
|Q| is large. Candidates:
- the TD target y (next action, target critic, aggregation), and its error against the TD error y - Q(s, a) that the
  critic regresses on (Q in fp32 for both); the critic's gradient;
- FQL: the distillation target (the K-step Euler flow), the one-step actor's output;
- DriftQL: the generator's samples, and the drift field V built from the bf16 samples against the fp32 field;
- both: the critic's Q(s, a) and its action contrast Q(s, a) - Q(s, pi(s)) (how far the critic tells the data's
  action from the policy's), the action gradient of Q at the policy's actions (what the Q term feeds the actor), the
  actor's gradient.

    python benchmarks/bf16_error.py --algo fql --out docs/figures/bf16_error_fql.md
    python benchmarks/bf16_error.py --algo driftql --warmup-steps 500 --batches 5 --hidden 64 64
    python benchmarks/bf16_error.py --algo fql --checkpoint runs/<run>/fql.pt --batches 10

It needs the task's dataset (`python collect.py pointmaze-medium-navigate-v0` for the default task).
"""
import importlib
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common  # noqa: E402
import plumbing  # noqa: E402
import runfiles  # noqa: E402


@dataclass
class Args:
    algo: Literal["fql", "driftql"] = "fql"
    """the script whose update is measured"""
    env_id: str = "pointmaze-medium-navigate-singletask-task3-v0"
    """task of the warm-up run and of the batches"""
    warmup_steps: int = 2000
    """fp32 update steps before the measurement"""
    batches: int = 20
    """batches measured"""
    hidden: tuple[int, ...] = (256, 256)
    """actor and critic hidden sizes (the reference check's)"""
    seed: int = 0
    checkpoint: Optional[str] = None
    """measure at this checkpoint's weights (a <algo>.pt of a run; its flags and task) instead of a warm-up run"""
    threads: int = 1
    """torch CPU threads"""
    out: Optional[str] = None
    """also write the table to this markdown file, with the machine, commit and command"""


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """|b - a| / |a| over the whole tensor (a: fp32, b: bf16)."""
    return float((b.float() - a.float()).norm() / a.float().norm().clamp_min(1e-12))


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


def grads(mod, nets, batch, args, loss_name: str, net_names: tuple, noise_seed: int) -> torch.Tensor:
    """The flattened gradient of one loss term over the named networks, the step's noise drawn from noise_seed."""
    nets.zero_grad(set_to_none=True)
    torch.manual_seed(noise_seed)
    with plumbing.autocast(args.precision, batch["observations"].device):
        out = mod.losses(nets, batch, args)
    out[loss_name].backward()
    g = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                   for n in net_names for p in nets[n].parameters()])
    nets.zero_grad(set_to_none=True)
    return g


def measure(mod, algo: str, nets, batch, args, noise_seed: int) -> dict:
    """Every candidate once in fp32 and once under the bf16 autocast: {name: (fp32 value, bf16 value)}."""
    a32, a16 = replace(args, precision="fp32"), replace(args, precision="bf16")
    obs, actions = batch["observations"], batch["actions"]
    pairs = {}

    def both(fn):
        outs = []
        for a in (a32, a16):
            torch.manual_seed(noise_seed)
            with torch.no_grad(), plumbing.autocast(a.precision, obs.device):
                outs.append(fn(a))
        return tuple(outs)

    actor_name = "actor_onestep_flow" if algo == "fql" else "actor_bc_drift"
    if algo == "fql":
        z = torch.randn_like(actions)
        pairs["distillation target (K-step flow)"] = both(
            lambda a: mod.euler_integrate(nets["actor_bc_flow"], obs, z, a.flow_steps))
        pairs["one-step actor output"] = both(lambda a: nets["actor_onestep_flow"](obs, z))
        next_actions = lambda a: nets["actor_onestep_flow"](batch["next_observations"],  # noqa: E731
                                                            torch.randn_like(actions)).clamp(-1, 1)
        policy_actions = nets["actor_onestep_flow"](obs, z).clamp(-1, 1).detach()
    else:
        gen_noise = torch.randn(obs.shape[0] * args.drift_ngen, nets[actor_name].noise_dim)
        gen = lambda a: nets[actor_name](obs.repeat_interleave(a.drift_ngen, 0), gen_noise).clamp(-1, 1)  # noqa
        g32, g16 = both(gen)
        pairs["generator samples (N per state)"] = (g32, g16)
        field = lambda g: mod.drift_field(g.view(obs.shape[0], args.drift_ngen, -1),  # noqa: E731
                                          actions.clamp(-1, 1).unsqueeze(1), args.drift_temp, args.kernel)[0]
        pairs["drift field V from the bf16 samples"] = (field(g32), field(g16))
        next_actions = lambda a: mod.sample_actions(nets[actor_name], batch["next_observations"])  # noqa: E731
        policy_actions = nets[actor_name](obs, torch.randn(obs.shape[0], nets[actor_name].noise_dim)).clamp(-1, 1)
        policy_actions = policy_actions.detach()
    pairs["TD target y"] = both(lambda a: mod.td_target(batch["rewards"], batch["masks"], mod.aggregate_q(
        nets["target_critic"](batch["next_observations"], next_actions(a)), a.q_agg), a.discount))
    with torch.no_grad():  # the critic's regression signal: y's bf16 error against the fp32 TD error
        q32 = nets["critic"](obs, actions)
    pairs["TD error y - Q(s, a), Q in fp32"] = tuple(y - q32 for y in pairs["TD target y"])
    pairs["critic Q(s, a) at the data's actions"] = both(lambda a: nets["critic"](obs, actions))
    pairs["action contrast Q(s, a) - Q(s, pi(s))"] = both(
        lambda a: nets["critic"](obs, actions) - nets["critic"](obs, policy_actions))
    grads_a = []
    for a in (a32, a16):
        x = policy_actions.clone().requires_grad_(True)
        with plumbing.autocast(a.precision, obs.device):
            q = nets["critic"](obs, x).mean(0)
        grads_a.append(torch.autograd.grad(q.sum(), x)[0])
    pairs["action gradient of Q at the policy's actions"] = tuple(grads_a)
    pairs["critic gradient"] = tuple(grads(mod, nets, batch, a, "critic_loss", ("critic",), noise_seed)
                                     for a in (a32, a16))
    actor_nets = ("actor_bc_flow", "actor_onestep_flow") if algo == "fql" else (actor_name,)
    pairs["actor gradient"] = tuple(grads(mod, nets, batch, a, "actor_loss", actor_nets, noise_seed)
                                    for a in (a32, a16))
    return pairs


def main(args: Args) -> str:
    if args.batches < 1 or args.warmup_steps < 0:
        raise common.UsageError(f"--batches {args.batches} --warmup-steps {args.warmup_steps}: measure at least one "
                                "batch after zero or more warm-up steps (--batches 1 or more, --warmup-steps 0 or more)")
    torch.set_num_threads(args.threads)
    mod = importlib.import_module(args.algo)
    device = torch.device("cpu")
    if args.checkpoint:  # a run's weights, flags and task; measured in fp32 against bf16 whatever it trained in
        payload = runfiles.load_checkpoint(args.checkpoint, args.algo, device)
        margs = replace(mod.Args(**payload["args"]), precision="fp32", device="cpu")
        if getattr(margs, "horizon", 1) > 1 or getattr(margs, "actor_type", "distill-ddpg") != "distill-ddpg":
            raise common.UsageError(f"--checkpoint {args.checkpoint}: a chunked or best-of-n run; this measurement "
                                    "takes h = 1 runs with a one-step actor: pass such a checkpoint")
        args = replace(args, env_id=margs.env_id, hidden=tuple(margs.value_hidden_dims), warmup_steps=0)
        origin = f"at {args.checkpoint} (step {payload['step']}, trained in {payload['args'].get('precision')})"
    else:
        margs = mod.Args(env_id=args.env_id, actor_hidden_dims=args.hidden, value_hidden_dims=args.hidden,
                         seed=args.seed, device="cpu")
        origin = f"after {args.warmup_steps} fp32 steps"
    task = common.load_task(args.env_id, device)
    torch.manual_seed(args.seed)
    nets = mod.make_nets(margs, task.train.observations.shape[1], task.train.actions.shape[1]).to(device)
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=margs.lr)
    if args.checkpoint:
        nets.load_state_dict(payload["nets"])
    for step in range(args.warmup_steps):
        mod.update(nets, opt, task.train.sample(margs.batch_size), margs)
    rows = {}
    for i in range(args.batches):
        pairs = measure(mod, args.algo, nets, task.train.sample(margs.batch_size), margs, noise_seed=10_000 + i)
        for name, (a, b) in pairs.items():
            rows.setdefault(name, []).append((rel(a, b), cos(a, b)))
    lines = [f"| {args.algo}: quantity | relative error bf16 vs fp32, median | max | cosine, min |", "|---|---|---|---|"]
    for name, v in rows.items():
        r, c = np.array(v).T
        lines.append(f"| {name} | {np.median(r):.2e} | {r.max():.2e} | {c.min():.6f} |")
    table = "\n".join(lines)
    head = runfiles.provenance()
    text = (f"{args.algo}, {args.env_id}, {'x'.join(map(str, args.hidden))} networks, {origin}, "
            f"{args.batches} batches of {margs.batch_size}; commit {head.get('commit', '?')}"
            f"{' (uncommitted changes)' if head.get('dirty') else ''}; torch {torch.__version__}\n\n{table}\n")
    print(text)
    if args.out:
        runfiles.write_atomic(Path(args.out), text)
    return text


if __name__ == "__main__":
    plumbing.cli(main, Args)
