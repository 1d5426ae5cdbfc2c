"""DeFlow: Mu, "DeFlow: Decoupling Manifold Modeling and Value Maximization for Offline Policy Extraction",
arXiv 2601.10471 (2026). Official code: github.com/muzhancun/DeFlow (JAX), `agents/deflow.py`, followed at commit
d81dd59.

A multi-step BC flow models the data; a refinement net moves its action by a residual held in a soft trust region:
    BC flow      v_theta(s, x_t, t):  L_flow = mean (v_theta(s, (1-t) x0 + t a, t) - (a - x0))^2   (its only loss)
    base action  a_b = sg(clip(Euler_K(v_theta, s, z))),  z ~ N(0, I)
    refinement   f_phi(s, a_b) = da (unbounded),  action = clip(a_b + da, -1, 1)
                 D = mean_{B,A} da^2,  L_refine = -mean_B Qbar(s, action) / sg(mean_B |Qbar|) + sg(alpha) * D
    multiplier   alpha = exp(log_alpha), log_alpha_0 = 1:  L_alpha = -log_alpha * sg(D - delta)   (D -> delta)
    critic       L_Q = mean_{j,B} (Q_j(s, a) - (r + discount * mask * agg_j Qtarget_j(s', a')))^2,
                 a' = clip(a_b' + f_phi(s', a_b')) from the online flow and refinement with fresh noise
One Adam step on L_Q + L_flow + L_refine + L_alpha (log alpha is one more parameter of the same optimiser).
Qbar is the ensemble mean (critic frozen there). The deployed policy: K Euler steps from fresh noise, one refinement.

Deviations from the official code:
  1. PyTorch instead of JAX; Xavier-uniform init, tanh-GELU and LayerNorm eps 1e-6 reproduce the flax defaults.
  2. --normalize-q-loss defaults to True: the official get_config says False, but every command in the official
     README (every reported run) sets it to True.
  3. OGBench evaluation uses the installed ogbench 1.2.2, which scores success on the pre-action state;
     the FQL codebase DeFlow builds on was run with ogbench 1.1.0 ('post'). The OGBench README calls it negligible.
  4. D4RL tasks are read from their Minari re-releases (see loaders.py and the README, "Data protocol").
  5. Evaluation runs the episodes side by side in a vector env and also evaluates at the final step.
  6. The logged `mse` reuses the refined actions of the actor loss; the official code draws a third sample for it
     (same distribution, K fewer flow passes per step).
  7. Validation losses on the OGBench val split are not logged (the official code logs them every 5K steps).
  8. Not ported: the fixed-alpha ablation (use_lagrange=False), the unused max-Q and iterative-refinement samplers,
     and the pixel encoders.
  9. --fix-bc-flow-online freezes the flow from the first online update; the official code still trains it on the
     first one (its step counter is compared before increment) and Adam's momentum keeps moving it for a while.
 10. --online-steps runs the official main.py online loop through common.Collector; the training env's first reset
     is seeded from --seed (official: unseeded); collected episodes are logged as online/* (official: exploration/*).
Speed flags (--compile, --precision bf16) are the same in all five scripts: README, "Benchmark". Under bf16
this file keeps the critics (a pixel encoder aside), losses, TD targets and LayerNorms in fp32.
Pixels (visual-* ids; --encoder impala_small --p-aug --frame-stack, the official hooks): visual.py, docs/visual.md.
The full list, the commands for every task family and the logged metrics are in docs/deflow.md.

    python deflow.py --env-id bandit-4gaussian
    python deflow.py --env-id cube-double-play-singletask-task2-v0 --delta 0.001
    python deflow.py --env-id antmaze-large-navigate-singletask-task1-v0 --delta 0.01 --q-agg min
"""
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn as nn

import common
import plumbing
import visual


@dataclass
class Args:
    # --- experiment
    exp_name: str = Path(__file__).stem
    """name of this experiment (run folder and checkpoint name)"""
    seed: int = 0
    """seed of python, numpy and torch; evaluation envs are seeded from it too"""
    torch_deterministic: bool = True
    """sets cudnn.deterministic and torch.use_deterministic_algorithms"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto takes CUDA when present and says so loudly when it falls back to the CPU"""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocasts the actors' matmuls (fp32 parts: docstring above); FQL learned worse with it: use fp32"""
    compile: bool = False
    """torch.compile the loss computation (fullgraph) and the policy, with a fused Adam; CUDA graphs on CUDA"""
    track: bool = False
    """log to Weights & Biases as well as tensorboard"""
    wandb_project_name: str = "offline-generative-rl"
    """the wandb project"""
    wandb_entity: Optional[str] = None
    """the wandb entity (team)"""
    save_model: bool = True
    """save `<exp_name>.pt` in the run folder at every evaluation"""
    save_interval: Optional[int] = None
    """also save it every this many steps (default: at evaluations only): a --resume after a kill repeats less"""
    runs_dir: str = "runs"
    """parent folder of the run folders"""
    resume: Optional[str] = None
    """a checkpoint of this script to continue from (networks, targets, optimizer, step and torch's random streams)
    in its own folder, bit-exactly with the same flags. Only --offline-steps, --online-steps, --eval-interval,
    --log-interval, --save-interval, --runs-dir, --device, --torch-deterministic, --compile, --lr and the logging
    flags may change (a changed budget or schedule changes the noise drawn after it), and the online flags and
    --offline-steps while the checkpoint is from the offline phase; args.json records each continuation"""
    # --- data and evaluation
    env_id: str = "cube-single-play-singletask-task2-v0"
    """OGBench single-task id, Minari dataset id, D4RL alias (antmaze-large-play-v2) or bandit-4gaussian"""
    eval_interval: int = 100_000
    """evaluate at step 1, every this many steps and at the end (official: 100K)"""
    eval_episodes: int = 50
    """episodes per evaluation (official: 50)"""
    log_interval: int = 5_000
    """write training metrics every this many steps (official: 5K)"""
    # --- pixels (visual-* ids, docs/visual.md)
    encoder: Optional[Literal["impala_small"]] = None
    """the CNN in front of each network on pixels (official --agent.encoder; the papers: impala_small)"""
    p_aug: float = 0.0
    """probability that a batch gets the random-shift augmentation (official --p_aug; the papers: 0.5)"""
    frame_stack: int = 1
    """frames stacked on the channel axis (official --frame_stack; the papers: 3)"""
    dataset_dir: Optional[str] = None
    """a folder of OGBench .npz shards (e.g. cube-quadruple-play-100m-v0/, docs/shards.md) that replaces the --env-id's
    dataset file; the id still picks the env, the task's reward relabelling and --sparse (official
    --ogbench_dataset_dir)"""
    dataset_replace_interval: int = 1_000
    """with --dataset-dir: move to the next shard (sorted, cyclic) every this many steps (official: 1000)"""
    dataset_proportion: float = 1.0
    """keep the first max(1, int(K * p)) of the K shards; without --dataset-dir the first p of the rows (official: 1)"""
    dataset_sampling: Literal["rotate", "uniform"] = "rotate"
    """rotate: one shard at a time, as official; uniform (extension, offline): every batch from all shards through
    memory-mapped copies cached once in DIR/.uniform-cache"""
    # --- optimisation
    offline_steps: Optional[int] = None
    """gradient steps; default 1M on OGBench, 500K on D4RL/Minari (official), 5K on the bandit"""
    batch_size: int = 256
    """transitions per gradient step (official: 256)"""
    lr: float = 3e-4
    """Adam learning rate (official: 3e-4)"""
    actor_hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    """hidden widths of the actor networks (official: 4 x 512)"""
    value_hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    """hidden widths of each critic member (official: 4 x 512)"""
    layer_norm: bool = True
    """LayerNorm in the critic (official: True)"""
    actor_layer_norm: bool = False
    """LayerNorm in the actor networks (official: False)"""
    # --- algorithm
    discount: float = 0.99
    """discount factor gamma (official: 0.99; 0.995 on antmaze-giant, humanoidmaze, antsoccer)"""
    tau: float = 0.005
    """Polyak rate of the target critic (official: 0.005)"""
    q_agg: Literal["mean", "min"] = "mean"
    """aggregation of the two target Qs in the TD target (official: mean; min on antmaze-large/giant, adroit)"""
    delta: float = 0.001
    """target divergence delta: bound on D = mean over batch and action dims of residual^2 (official
    target_divergence: 0.001; 0.01 on antmaze/antsoccer, docs/deflow.md)"""
    flow_steps: int = 10
    """Euler steps K of the BC flow (official: 10)"""
    normalize_q_loss: bool = True
    """divide the Q loss by sg(mean |Q|) (official config: False, but True in every reported run)"""
    eval_bc_flow: bool = False
    """also evaluate the K-step BC flow on its own (the flow-BC baseline), logged as eval/bc_flow_*"""
    # --- offline-to-online
    online_steps: int = 0
    """env steps of online fine-tuning after the offline phase, one update per step (official --online_steps; 1M in
    the paper's offline-to-online table, with the offline delta: "zero additional tuning")"""
    buffer_size: int = 2_000_000
    """replay rows (dataset + online transitions); the oldest are overwritten beyond max(this, N + 1) (official: 2M)"""
    start_training: int = 0
    """online updates begin at this online env step; the steps before only collect (official DeFlow: 0)"""
    balanced_sampling: bool = False
    """online batches half from the dataset, half from the online transitions (official --balanced_sampling: off)"""
    fix_bc_flow_online: bool = False
    """freeze the BC flow online: L_flow leaves the loss and the flow gets no optimizer step (official option, off;
    the paper's frozen-prior variant); alpha keeps adapting either way"""


# Allowed range of every numeric flag of this script (interval notation; the shared flags are in plumbing.py),
# checked by plumbing.check_args before any work starts.
LIMITS = dict(plumbing.TRAIN_LIMITS, p_aug="[0, 1]", frame_stack="[1, inf)",
              delta="(0, inf)", flow_steps="[1, inf)")


# ---------------------------------------------------------------------------------------------------- networks
def mlp(in_dim: int, hidden: tuple, out_dim: int, layer_norm: bool) -> nn.Sequential:
    """Linear -> GELU(tanh) [-> LayerNorm] per hidden layer, then Linear; Xavier-uniform weights, zero biases.
    Mirrors flax's `MLP` in the official `utils/networks.py` (LayerNorm after the activation, eps 1e-6)."""
    layers, d = [], in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.GELU(approximate="tanh")] + ([nn.LayerNorm(h, eps=1e-6)] if layer_norm else [])
        d = h
    layers.append(nn.Linear(d, out_dim))
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class Critic(nn.Module):
    """Ensemble of num_qs independently initialised Q-networks on concat[s, a]; returns [num_qs, B].
    Member j is `mlp(obs_dim + action_dim, hidden, 1, layer_norm)` (flax's MLP: Linear -> GELU(tanh) ->
    LayerNorm(eps 1e-6) per hidden layer, then Linear). Layer l stacks the members' weights as [num_qs, in, out]. The
    hidden layers run member by member (an addmm each: the values of one batched matmul, bit for bit), since each
    member's LayerNorm has its own scale and offset and stacking their outputs copies the whole activation at every
    layer (a tenth of DFP's best-of-N forward on 4,096 rows); the output layer is one batched matmul. The init draws
    each member's mlp in turn and stacks its tensors: Xavier-uniform per member, zero biases, the same draws as a loop
    over members."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple, layer_norm: bool, num_qs: int = 2):
        super().__init__()
        members = [mlp(obs_dim + action_dim, hidden, 1, layer_norm) for _ in range(num_qs)]
        linears = [[m for m in q if isinstance(m, nn.Linear)] for q in members]
        norms = [[m for m in q if isinstance(m, nn.LayerNorm)] for q in members]

        def stack(layers, name, f):  # entry l of the list: layer l of every member, stacked
            return nn.ParameterList([nn.Parameter(torch.stack([f(getattr(q[l], name).detach()) for q in layers]))
                                     for l in range(len(layers[0]))])
        self.weights = stack(linears, "weight", lambda w: w.T)  # [num_qs, in, out]
        self.biases = stack(linears, "bias", lambda b: b[None])  # [num_qs, 1, out]
        self.norm_weights = stack(norms, "weight", lambda w: w[None])  # [num_qs, 1, h]
        self.norm_biases = stack(norms, "bias", lambda b: b[None])  # [num_qs, 1, h]

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        # fp32 also under --precision bf16: bf16 keeps 8 bits of a Q near -80 (steps of 0.5), while the critic learns
        # from TD errors near 1; the actors keep bf16 (README, "Benchmark"; benchmarks/bf16_error.py)
        with torch.autocast(obs.device.type, enabled=False):
            x = torch.cat([obs, action], -1).float()
            hs = [x.reshape(-1, x.shape[-1])] * len(self.weights[0])  # one [B, in] input per member
            for l in range(len(self.weights) - 1):  # b + h @ w, GELU, LayerNorm
                hs = [nn.functional.gelu(torch.addmm(b[0], h, w), approximate="tanh")
                      for h, w, b in zip(hs, self.weights[l], self.biases[l])]
                if len(self.norm_weights):
                    hs = [nn.functional.layer_norm(h, h.shape[-1:], w[0], b[0], eps=1e-6)
                          for h, w, b in zip(hs, self.norm_weights[l], self.norm_biases[l])]
            q = torch.baddbmm(self.biases[-1], torch.stack(hs), self.weights[-1])  # [num_qs, B, 1]
        return q.reshape(len(self.weights[0]), *x.shape[:-1])


class VectorField(nn.Module):
    """BC flow v_theta(s, x, t) on concat[s, x, t], t a raw scalar feature (no time embedding)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple, layer_norm: bool):
        super().__init__()
        self.net = mlp(obs_dim + action_dim + 1, hidden, action_dim, layer_norm)

    def forward(self, obs: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, x, t], -1)).float()  # fp32 out, also under bf16 autocast


class Refinement(nn.Module):
    """Residual f_phi(s, a_base) on concat[s, a_base] (no time input); unbounded output, no tanh or scaling."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple, layer_norm: bool):
        super().__init__()
        self.net = mlp(obs_dim + action_dim, hidden, action_dim, layer_norm)

    def forward(self, obs: torch.Tensor, base_actions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, base_actions], -1)).float()  # fp32 out, also under bf16 autocast


class LogAlpha(nn.Module):
    """The Lagrange multiplier as a learnable scalar log alpha; no clamp (official `Scalar`, init 1.0)."""

    def __init__(self, init: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> torch.Tensor:
        return self.value


def make_nets(args: Args, obs_dim: int, action_dim: int) -> nn.ModuleDict:
    """The official module names; log alpha is a parameter like the others, so main's single Adam (shared lr, as
    in the official optax chain) and the checkpoint cover it. With --encoder each network gets its own encoder (the
    official `encoders` dict); the target critic's is a copy of the critic's."""
    obs_dim, enc = visual.feature_dim(args, obs_dim), lambda net: visual.with_encoder(net, args)  # noqa: E731
    critic = enc(Critic(obs_dim, action_dim, args.value_hidden_dims, args.layer_norm))
    return nn.ModuleDict(dict(
        actor_bc_flow=enc(VectorField(obs_dim, action_dim, args.actor_hidden_dims, args.actor_layer_norm)),
        refine_onestep_flow=enc(Refinement(obs_dim, action_dim, args.actor_hidden_dims, args.actor_layer_norm)),
        log_alpha=LogAlpha(1.0),  # alpha_0 = e (the official comment's "2.3 = log 10" is not what the code uses)
        critic=critic,
        target_critic=copy.deepcopy(critic).requires_grad_(False),
    ))


# ---------------------------------------------------------------------------------------------------- algorithm
def flow_bc_loss(v: nn.Module, obs: torch.Tensor, actions: torch.Tensor, x0: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
    """Flow matching on the straight path x_t = (1-t) x0 + t a with target velocity a - x0; mean over [B, A]."""
    xt = (1 - t) * x0 + t * actions
    return ((v(obs, xt, t) - (actions - x0)) ** 2).mean()


def euler_integrate(v, obs: torch.Tensor, z: torch.Tensor, steps: int) -> torch.Tensor:
    """x_{k+1} = x_k + v(s, x_k, k/K) / K from x_0 = z; only the result is clipped to [-1, 1]. [B, A]"""
    if hasattr(v, "encoder"):  # pixels: the observation is encoded once for the K steps (official
        obs = v.encoder(obs)  # actor_bc_flow_encoder); v's pre-hook passes features through
    x = z
    for k in range(steps):
        x = x + v(obs, x, torch.full_like(x[:, :1], k / steps)) / steps
    return x.clamp(-1, 1)


def aggregate_q(q: torch.Tensor, how: str) -> torch.Tensor:
    """[num_qs, B] -> [B] by mean or min over the ensemble."""
    return q.mean(0) if how == "mean" else q.amin(0)


def td_target(rewards, masks, next_q, discount: float) -> torch.Tensor:
    """y = r + discount * mask * Q(s', a'); mask = 0 where the task is solved (never the time-limit terminals)."""
    return rewards + discount * masks * next_q


def soft_update_(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- tau * source + (1 - tau) * target, in place."""
    targets = list(target.parameters())
    if targets:  # one call for all the tensors: one kernel per group of them on a GPU, not one each
        with torch.no_grad():
            torch._foreach_lerp_(targets, list(source.parameters()), tau)


def frozen(module: nn.Module):
    """`module` as a function of its inputs only: a functional call on detached copies of its parameters. A loss
    through it sends gradient into the inputs (the actor's action) and none into the parameters. Unlike toggling
    requires_grad, this compiles without graph breaks."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return lambda *inputs: torch.func.functional_call(module, params, inputs)


def sample_actions(nets: nn.ModuleDict, obs: torch.Tensor, flow_steps: int) -> torch.Tensor:
    """The official `sample_actions`: a_base = clip(Euler_K(v, s, z)), z ~ N(0, I), then clip(a_base + f(s, a_base))."""
    z = torch.randn(obs.shape[0], nets["actor_bc_flow"].net[-1].out_features, device=obs.device)
    base_actions = euler_integrate(nets["actor_bc_flow"], obs, z, flow_steps)
    return (base_actions + nets["refine_onestep_flow"](obs, base_actions)).clamp(-1, 1)


def losses(nets: nn.ModuleDict, batch: dict, args: Args, *, train_flow: bool = True) -> dict:
    """Every DeFlow loss term of one step (still attached to the graph) and its diagnostics, from one snapshot.
    train_flow=False (--fix-bc-flow-online in the online phase) leaves L_flow out of the loss, so the flow receives
    no gradient and Adam skips it; L_flow is still reported."""
    obs, actions = batch["observations"], batch["actions"]
    bc_flow, refine, critic = nets["actor_bc_flow"], nets["refine_onestep_flow"], nets["critic"]
    # critic: TD target from the refined policy at s' (online flow and refinement, fresh noise, no gradient)
    with torch.no_grad():
        next_obs = batch["next_observations"]
        next_actions = sample_actions(nets, next_obs, args.flow_steps)
        next_q = aggregate_q(nets["target_critic"](next_obs, next_actions), args.q_agg)
        y = td_target(batch["rewards"], batch["masks"], next_q, args.discount)
    q = critic(obs, actions)  # [2, B]
    critic_loss = ((q - y) ** 2).mean()
    # actor: BC flow matching, the only loss that reaches the flow
    x0, t = torch.randn_like(actions), torch.rand_like(actions[:, :1])  # drawn in this order (torch.compile too)
    bc_flow_loss = flow_bc_loss(bc_flow, obs, actions, x0, t)
    # refinement: a residual on the stop-gradient flow action; its mean square D over [B, A] is pushed to delta
    with torch.no_grad():
        base_actions = euler_integrate(bc_flow, obs, torch.randn_like(actions), args.flow_steps)
    residual = refine(obs, base_actions)
    distill_loss = (residual ** 2).mean()  # D, unclipped (the official name)
    log_alpha = nets["log_alpha"]()
    alpha = log_alpha.exp().detach()
    alpha_loss = -log_alpha * (distill_loss.detach() - args.delta)  # d/d log_alpha = -(D - delta)
    actor_actions = base_actions + residual
    # actor: Q term through the frozen critic: this loss routes gradient only into the actor through the action;
    # the critic's parameters get none of it (the same idiom in every script).
    q_pi = frozen(critic)(obs, actor_actions.clamp(-1, 1)).mean(0)  # always the ensemble mean here
    q_loss = -q_pi.mean()
    if args.normalize_q_loss:
        q_loss = q_loss / q_pi.abs().mean().detach()
    actor_loss = (bc_flow_loss if train_flow else 0.0) + alpha * distill_loss + q_loss + alpha_loss
    return dict(critic_loss=critic_loss, q_mean=q.mean(), q_max=q.max(), q_min=q.min(), actor_loss=actor_loss,
                bc_flow_loss=bc_flow_loss, distill_loss=distill_loss, q_loss=q_loss, q=q_pi.mean(),
                alpha_loss=alpha_loss, alpha_value=alpha, mse=((actor_actions.clamp(-1, 1) - actions) ** 2).mean())


def update(nets: nn.ModuleDict, opt: torch.optim.Optimizer, batch: dict, args: Args, loss_fn=losses,
           **phase) -> dict:
    """One Adam step on critic + actor losses; the target moves from the pre-update critic, as in the official code."""
    with plumbing.autocast(args.precision, batch["observations"].device):  # loss_fn: losses, or compiled
        out = loss_fn(nets, batch, args, **phase)
    total = out["critic_loss"] + out["actor_loss"]
    opt.zero_grad(set_to_none=True)
    total.backward()
    soft_update_(nets["target_critic"], nets["critic"], args.tau)
    opt.step()
    return {**{k: v.detach() for k, v in out.items()}, "total_loss": total.detach()}


@torch.no_grad()
def act(nets: nn.ModuleDict, obs: torch.Tensor, args: Args) -> torch.Tensor:
    """Evaluation policy of the official code: K Euler steps from fresh noise, one refinement pass, clipped; no
    best-of-N. [B, D] -> [B, A]"""
    return sample_actions(nets, obs, args.flow_steps)


@torch.no_grad()
def act_bc_flow(nets: nn.ModuleDict, obs: torch.Tensor, flow_steps: int) -> torch.Tensor:
    """The flow-BC baseline: K Euler steps of the BC flow from fresh noise, clipped."""
    z = torch.randn(obs.shape[0], nets["actor_bc_flow"].net[-1].out_features, device=obs.device)
    return euler_integrate(nets["actor_bc_flow"], obs, z, flow_steps)


def make_policy(nets: nn.ModuleDict, args: Args):
    """The evaluation policy as a callable, observations [B, D] -> actions [B, A]; main's evaluation and
    runfiles.load_policy both use it."""
    return lambda obs: act(nets, obs, args)


# ---------------------------------------------------------------------------------------------------- training loop
def main(args: Args) -> dict:
    # TRY NOT TO MODIFY: flags, seeds and device; the data; the step budget
    device = plumbing.setup(args, LIMITS)
    task = common.load_task(args.env_id, device, flags=args)
    steps = common.default_offline_steps(task.env_id) if args.offline_steps is None else args.offline_steps
    # ALGO LOGIC: what the method needs of the data, the replay for the online phase, the networks, the optimizer
    visual.configure(task, args)  # pixels: --frame-stack and --p-aug reach the dataset and the eval envs
    online = common.Collector(task, args.online_steps, args.buffer_size, args.seed,
                              balanced=args.balanced_sampling) if args.online_steps else None
    nets = make_nets(args, task.train.observations.shape[1], task.train.actions.shape[1]).to(device)
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=args.lr, fused=args.compile or None)
    # TRY NOT TO MODIFY: --compile; --resume, the run folder, logs and checkpoints
    loss_fn, policy = (plumbing.compiled(losses, device), plumbing.compiled(act, device)) if args.compile \
        else (losses, act)
    run = plumbing.Run(args, __file__, nets, opt, task, online, steps)
    result = {}
    for step in range(run.first, run.total + 1):
        # TRY NOT TO MODIFY: the data of this step (--dataset-dir: its shard, read ahead; online: the replay)
        task.train = common.data_at(task, step, steps, online)
        # ALGO LOGIC: one step; offline a gradient step, online first one env step of the deployed policy
        metrics = episode = None
        if step > steps:  # stored in the replay (task.train)
            episode = online.step(lambda o: policy(nets, o, args), step)
        if step <= steps or online.steps >= args.start_training:
            batch = task.train.sample(args.batch_size) if step <= steps else online.sample(args.batch_size)
            metrics = update(nets, opt, batch, args, loss_fn=loss_fn,
                             train_flow=step <= steps or not args.fix_bc_flow_online)
        # TRY NOT TO MODIFY: NaN watch, progress and logs; evaluation, eval.csv and checkpoint
        run.log(step, metrics, episode)
        if run.eval_due(step):
            result = common.evaluate(make_policy(nets, args), task, args.eval_episodes, args.seed + step, run.png(step))
            # ALGO LOGIC: the flow-BC baseline beside the policy
            if args.eval_bc_flow:
                bc = common.evaluate(lambda o: act_bc_flow(nets, o, args.flow_steps), task, args.eval_episodes,
                                     args.seed + step, run.png(step, "bandit_bc_flow"))
                result.update({f"bc_flow_{k}": v for k, v in bc.items()})
            # TRY NOT TO MODIFY: eval.csv, tensorboard and checkpoint
            result = run.record_eval(step, result)
    run.close()
    return result


if __name__ == "__main__":
    plumbing.cli(main, Args)
