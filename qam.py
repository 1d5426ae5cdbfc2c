"""Q-learning with Adjoint Matching (QAM): Li, Levine, "Q-learning with Adjoint Matching", 2026, arXiv 2601.14234.
Official code: github.com/ColinQiyangLi/qam (JAX), `agents/qam.py`, `main.py`, `utils/datasets.py`, at commit f93efd2.

Three networks and their targets, one Adam step on the summed loss with one global grad-norm clip of 1.0:
    behaviour flow v_b(s, x, t)    L_flow = mean_B valid * mean_D (v_b(s, (1-t) z + t a, t) - (a - z))^2
    critic Q_1..Q_N (N = num_qs)   L_Q    = mean_{N,B} valid * (Q_j(s, a) - y)^2,  a = the whole chunk [B, h*A]
                                   y = R + discount^h * mask * (mean_j Qbar_j - rho * std_j Qbar_j)(s', a' ~ ODE(v_ft))
    fine-tuned flow v_ft(s, x, t)  memoryless SDE, no grad, h_K = 1/K, t_i = i/K, sigma_i = sqrt(2 (1 - t_i + h_K) /
                                   (t_i + h_K)): x_{i+1} = x_i + h_K (2 v_ft - x_i / (t_i + h_K)) + sqrt(h_K) sigma_i e,
                                   last step x_K = x_{K-1} + h_K vbar_b (noiseless, target behaviour flow)
                                   g_K = -inv_temp * grad_x mean_j Qbar_j(s, clip(x_K))        (target critic)
                                   g_i = g_{i+1} + h_K g_{i+1}^T d/dx[2 vbar_b(s, x, t_i + h_K) - x / (t_i + h_K)](x_i)
                                   L_adj = mean_B sum_{i,D} (2 (v_ft - vbar_b)(s, x_i, t_i) / sigma_i + sigma_i g_i)^2
Its fixed point is pi(a|s) ~ pi_b(a|s) exp(inv_temp * Q(s, a)). The deployed policy integrates v_ft with K Euler
steps from fresh noise z ~ N(0, I), clips, and executes the h actions of the chunk open-loop.
QAM-FQL (--variant qam-fql) adds a one-step actor distilled from v_ft that maximises Q (it then acts and backs up);
QAM-EDIT (--variant qam-edit) adds a tanh-Gaussian edit edit_scale * Delta on v_ft's action, trained SAC-style.

Deviations from the official code:
  1. PyTorch instead of JAX; Xavier-uniform init, tanh-GELU and LayerNorm eps 1e-6 reproduce the flax defaults.
  2. OGBench evaluation uses the installed ogbench 1.2.2 (the official requirements do not pin a version).
  3. The 100M-transition folders of cube-quadruple and puzzle-4x4 (--dataset-dir, official --ogbench_dataset_dir):
     the same rotation, the next shard read ahead on a thread; --dataset-proportion keeps files only (docs/shards.md).
     Online (--online-steps): the official --balanced_sampling mode (random actions during the warm-up,
     half-and-half batches) is not ported; the default uniform replay is.
  4. Evaluation runs the episodes side by side in a vector env and also evaluates at step 1; the official code
     evaluates every 50K steps and at the end. The official loop samples a chunk at every env step and discards it
     while a chunk is queued; here the policy is called only when a new chunk is needed (same action distribution).
  5. Validation losses are not logged; `grad_norm` is the global L2 norm before clipping (the official logs the L1
     norm of per-leaf norms).
  6. The variant is chosen with --variant; the official code turns QAM-FQL / QAM-EDIT on with fql_alpha > 0 /
     edit_scale > 0 (0 = plain QAM), so --fql-alpha and --edit-scale here default to their most used tuned values.
  7. Settings that no official command changes are constants, not flags: action_chunking=True (the whole chunk is
     the critic's action; the official False mode with n-step returns on the first action is absent), best_of_n=1,
     target_actor=True, use_target_grad=True, clip_adj=True. The never-used target of v_ft is not allocated.
  8. The flag is --horizon (official --horizon_length); the scene/puzzle sparse reward is --sparse, as official.
  9. --online-steps runs the official online loop through common.Collector: chunks open-loop, every executed step
     stored, the chunk queue dropped at an episode end, updates from online step --start-training on. The training
     env's first reset is seeded from --seed (official: unseeded). Evaluation stays on the offline schedule.
Where paper and code differ this file follows the official code (`agents/qam.py`): v_ft is an independent network,
not a residual (--residual gives the paper's form); the prior in the SDE, adjoint and loss is the EMA target of v_b; the
terminal gradient uses the target critic at the clipped action; sigma is shifted by h_K; the last SDE step is a
noiseless prior step; the adjoint Jacobian is taken at (x_i, t_i + h_K); L_adj sums over steps and dims without an
h_K factor; one global-norm clip instead of element-wise clipping; population std; discount^h with chunk rewards.
Speed flags (--compile, --precision bf16) are the same in all five scripts: README, "Benchmark". Under bf16
this file keeps the critics, losses, TD targets and LayerNorms in fp32.
The full list, the commands for every task family and the logged metrics are in docs/qam.md.

    python qam.py --env-id cube-double-play-singletask-task2-v0 --inv-temp 1 --horizon 5
    python qam.py --env-id scene-play-singletask-task2-v0 --inv-temp 1 --horizon 5 --sparse
    python qam.py --env-id antmaze-large-navigate-singletask-task1-v0 --inv-temp 10 --horizon 1
"""
import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import plumbing


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
    eval_interval: int = 50_000
    """evaluate at step 1, every this many steps and at the end (official: 50K)"""
    eval_episodes: int = 50
    """episodes per evaluation (official: 50)"""
    log_interval: int = 5_000
    """write training metrics every this many steps (official: 5K)"""
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
    """discount factor gamma; chunks bootstrap with gamma^horizon (official: 0.99; 0.995 antmaze-giant, humanoidmaze)"""
    tau: float = 0.005
    """Polyak rate of the target critic and of the target behaviour flow (official: 0.005)"""
    horizon: int = 5
    """action-chunk length h (official horizon_length: 5 on cube/scene/puzzle, 1 on antmaze/humanoidmaze)"""
    num_qs: int = 10
    """critic ensemble size N (official: 10)"""
    rho: float = 0.5
    """pessimism rho of the TD target mean - rho * std over the ensemble (official: 0.5; 0 on humanoidmaze)"""
    inv_temp: float = 0.3
    """inverse temperature tau scaling the critic's action gradient (official default 0.3; tuned per domain, docs/qam.md);
    0 makes the deployed policy the behaviour flow"""
    flow_steps: int = 10
    """steps K of the SDE, the adjoint and the Euler ODE (official: 10)"""
    residual: bool = False
    """the policy velocity is v_b + v_ft (the paper's residual form) instead of v_ft alone (official: False)"""
    clip_grad: bool = True
    """clip the global gradient norm over all trained networks to 1.0 (official: True)"""
    sparse: bool = False
    """replace every non-zero reward by -1 (official: on for scene and puzzle)"""
    variant: Literal["qam", "qam-fql", "qam-edit"] = "qam"
    """qam; qam-fql adds a one-step actor distilled from v_ft; qam-edit adds a Gaussian edit policy"""
    fql_alpha: float = 30.0
    """QAM-FQL distillation coefficient alpha (official: 0 = off; tuned 3, 30 or 300, docs/qam.md)"""
    edit_scale: float = 0.1
    """QAM-EDIT edit bound sigma_a on the tanh-squashed edit (official: 0 = off; tuned 0.1, 0.5 or 0.9, docs/qam.md)"""
    eval_bc_flow: bool = False
    """also evaluate the K-step BC flow on its own (the flow-BC baseline), logged as eval/bc_flow_*"""
    # --- offline-to-online
    online_steps: int = 0
    """env steps of online fine-tuning after the offline phase, one update per step with the same losses (official
    --online_steps: 500K after 1M offline; the paper fine-tunes QAM-EDIT)"""
    buffer_size: int = 0
    """replay rows; 0 = the dataset plus every online transition, nothing overwritten (official: |D| + online steps)"""
    start_training: int = 5_000
    """online updates begin at this online env step; the steps before only collect (official: 5K)"""


# Allowed range of every numeric flag of this script (interval notation; the shared flags are in plumbing.py),
# checked by plumbing.check_args before any work starts.
LIMITS = dict(plumbing.TRAIN_LIMITS, horizon="[1, inf)", num_qs="[1, inf)", rho="[0, inf)", inv_temp="[0, inf)",
              flow_steps="[1, inf)", fql_alpha="[0, inf)", edit_scale="[0, inf)")


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


class OneStepActor(nn.Module):
    """One-step policy mu_omega(s, z) on concat[s, z]; unsquashed output."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple, layer_norm: bool):
        super().__init__()
        self.net = mlp(obs_dim + action_dim, hidden, action_dim, layer_norm)

    def forward(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, z], -1)).float()  # fp32 out, also under bf16 autocast


class EditPolicy(nn.Module):
    """QAM-EDIT's edit pi_omega(Delta | s, a~): tanh-squashed diagonal Gaussian on concat[s, a~]. GELU after every
    hidden layer, separate linear mean and log-std heads, log-std clipped to [-20, 2] (official `TanhNormal`)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple):
        super().__init__()
        trunk = mlp(obs_dim + action_dim, hidden[:-1], hidden[-1], False)
        self.trunk = nn.Sequential(trunk, nn.GELU(approximate="tanh"))  # official MLP(activate_final=True)
        self.mean, self.log_std = nn.Linear(hidden[-1], action_dim), nn.Linear(hidden[-1], action_dim)
        for m in (self.mean, self.log_std):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, obs: torch.Tensor, base_action: torch.Tensor) -> tuple:
        x = self.trunk(torch.cat([obs, base_action], -1))
        return self.mean(x).float(), self.log_std(x).float().clamp(-20, 2)  # fp32, also under bf16


class LogAlpha(nn.Module):
    """SAC temperature of the edit policy, alpha = exp(log_alpha), log_alpha initialised to 0 (official `LogParam`)."""

    def __init__(self):
        super().__init__()
        self.log_value = nn.Parameter(torch.zeros(()))

    def forward(self) -> torch.Tensor:
        return self.log_value.exp()


def make_nets(args: Args, obs_dim: int, action_dim: int) -> nn.ModuleDict:
    """`action_dim` is the env's; every policy network and the critic act on whole chunks of horizon * action_dim."""
    chunk_dim = action_dim * args.horizon
    critic = Critic(obs_dim, chunk_dim, args.value_hidden_dims, args.layer_norm, args.num_qs)
    bc_flow = VectorField(obs_dim, chunk_dim, args.actor_hidden_dims, args.actor_layer_norm)  # official actor_slow
    nets = dict(
        actor_bc_flow=bc_flow,
        actor_ft_flow=VectorField(obs_dim, chunk_dim, args.actor_hidden_dims, args.actor_layer_norm),  # actor_fast
        critic=critic,
        target_critic=copy.deepcopy(critic).requires_grad_(False),
        target_actor_bc_flow=copy.deepcopy(bc_flow).requires_grad_(False),
    )
    if args.variant == "qam-fql":
        nets["actor_onestep_flow"] = OneStepActor(obs_dim, chunk_dim, args.actor_hidden_dims, args.actor_layer_norm)
    if args.variant == "qam-edit":
        nets["actor_edit"] = EditPolicy(obs_dim, chunk_dim, args.actor_hidden_dims)
        nets["edit_alpha"] = LogAlpha()
    return nn.ModuleDict(nets)


# ---------------------------------------------------------------------------------------------------- algorithm
def flow_bc_loss(v: nn.Module, obs: torch.Tensor, actions: torch.Tensor, x0: torch.Tensor,
                 t: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Flow matching on the straight path x_t = (1-t) x0 + t a with target velocity a - x0; mean over the action
    dims, weighted by `valid` [B] and divided by B (chunks that run past the episode end count as zeros)."""
    xt = (1 - t) * x0 + t * actions
    return (((v(obs, xt, t) - (actions - x0)) ** 2).mean(-1) * valid).mean()


def euler_integrate(v, obs: torch.Tensor, z: torch.Tensor, steps: int) -> torch.Tensor:
    """x_{k+1} = x_k + v(s, x_k, k/K) / K from x_0 = z; only the result is clipped to [-1, 1]. [B, A]"""
    if hasattr(v, "encoder"):  # pixels: the observation is encoded once for the K steps (official
        obs = v.encoder(obs)  # actor_bc_flow_encoder); v's pre-hook passes features through
    x = z
    for k in range(steps):
        x = x + v(obs, x, torch.full_like(x[:, :1], k / steps)) / steps
    return x.clamp(-1, 1)


def noise_schedule(steps: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """sigma_i = sqrt(2 (1 - t_i + h) / (t_i + h)) at t_i = i/K, h = 1/K: the memoryless sigma(u) = sqrt(2 (1-u) / u)
    with numerator and denominator shifted by one step so it stays finite at t = 0. [K], in the data's dtype"""
    t = torch.arange(steps, device=device, dtype=dtype) / steps
    return torch.sqrt(2 * (1 - t + 1 / steps) / (t + 1 / steps))


@torch.compiler.assume_constant_result
def noise_levels(steps: int, dtype=torch.float32) -> list:
    """noise_schedule(steps) as Python floats; torch.compile takes them as constants (no host sync in the step)."""
    return noise_schedule(steps, dtype=dtype).tolist()


@torch.no_grad()
def memoryless_rollout(v, prior, obs: torch.Tensor, x0: torch.Tensor, steps: int) -> tuple:
    """Memoryless SDE dx = (2 v - x / t) dt + sigma(t) dB with the discretisation of the official `adj_matching`:
    K-1 noisy steps driven by v, then one noiseless Euler step of the prior. The drift -x/(t+h) cancels x_0 in the
    first step, so x_1 does not depend on x_0. Returns X = [x_0..x_{K-1}] [K, B, D], T [K, B, 1] and x_K [B, D]."""
    h, sigma = 1.0 / steps, noise_levels(steps, x0.dtype)
    x, xs, ts = x0, [], []
    for i in range(steps):
        t = torch.full_like(x[:, :1], i * h)
        xs.append(x)
        ts.append(t)
        if i < steps - 1:
            x = x + h * (2 * v(obs, x, t) - x / (t + h)) + math.sqrt(h) * sigma[i] * torch.randn_like(x)
        else:  # the official code follows the adjoint-matching paper: the last step is the prior's ODE step
            x = x + h * prior(obs, x, t)
    return torch.stack(xs), torch.stack(ts), x


def terminal_adjoint(critic: nn.Module, obs: torch.Tensor, x: torch.Tensor, inv_temp: float) -> torch.Tensor:
    """g_K = -inv_temp * grad_x mean_j Q_j(s, clip(x, -1, 1)): zero on coordinates clipped away. No parameter grads,
    no graph kept (torch.func.grad, which torch.compile traces, unlike torch.autograd.grad). [B, D]"""
    grad = torch.func.grad(lambda x: critic(obs, x.clamp(-1, 1)).mean(0).sum())(x.detach())
    return -inv_temp * grad.detach()


def lean_adjoint(prior, obs: torch.Tensor, xs: torch.Tensor, g_final: torch.Tensor, steps: int) -> torch.Tensor:
    """Lean adjoint ODE backwards with vector-Jacobian products of the prior only:
    g_i = g_{i+1} + h * g_{i+1}^T d/dx [2 prior(s, x, t_i + h) - x / (t_i + h)] at x = x_i (the official time index).
    Gradients are taken with respect to x only (torch.func.vjp); the result is detached. Returns G = [g_0..g_{K-1}]
    [K, B, D]."""
    h, g, out = 1.0 / steps, g_final.detach(), []
    for i in reversed(range(steps)):
        u = torch.full_like(xs[i][:, :1], i * h) + h
        _, vjp_fn = torch.func.vjp(lambda x: 2 * prior(obs, x, u) - x / u, xs[i].detach())  # noqa: B023
        (vjp,) = vjp_fn(g)
        g = (g + h * vjp).detach()
        out.append(g)
    return torch.stack(out[::-1])


def adjoint_matching_loss(v_ft: torch.Tensor, v_base: torch.Tensor, adjoints: torch.Tensor,
                          sigma: torch.Tensor) -> torch.Tensor:
    """L = mean_B sum_{i, D} (2 (v_ft - v_base) / sigma_i + sigma_i g_i)^2, i.e. a regression of v_ft onto
    v_base - sigma_i^2 g_i / 2 with weights 4 / sigma_i^2. v_ft, v_base, adjoints [K, B, D]; sigma [K]."""
    s = sigma[:, None, None]
    return ((2 * (v_ft - v_base) / s + s * adjoints) ** 2).sum(-1).sum(0).mean()


def chunked_td_target(rewards, masks, next_q, discount: float, horizon: int, rho: float) -> torch.Tensor:
    """y = R + discount^h * mask * (mean_j Q_j - rho * std_j Q_j), std over the ensemble with 1/N (population).
    R is the discounted reward sum over the chunk, mask 0 where the task got solved inside it. next_q [N, B] -> [B]"""
    pessimistic = next_q.mean(0) - rho * next_q.std(0, correction=0)
    return rewards + discount ** horizon * masks * pessimistic


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


def tanh_gaussian_sample(mean: torch.Tensor, log_std: torch.Tensor) -> tuple:
    """Reparameterised Delta = tanh(u), u ~ N(mean, exp(log_std)^2), and log pi(Delta) [B] with the stable
    log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)) (the Tanh bijector of TFP)."""
    u = mean + log_std.exp() * torch.randn_like(mean)
    log_prob = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1)
    return torch.tanh(u), log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)


def policy_velocity(nets: nn.ModuleDict, args: Args):
    """Velocity of the fine-tuned policy: v_ft, or online v_b + v_ft with --residual (official model='slow,fast')."""
    ft, bc = nets["actor_ft_flow"], nets["actor_bc_flow"]
    return (lambda s, x, t: bc(s, x, t) + ft(s, x, t)) if args.residual else ft


def variant_losses(nets: nn.ModuleDict, obs: torch.Tensor, chunk_dim: int, args: Args) -> dict:
    """QAM-FQL or QAM-EDIT loss on top of a no-grad sample of the fine-tuned flow; the critic is frozen, as in FQL."""
    critic = frozen(nets["critic"])  # gradient into the action only, never into the critic (the idiom of every script)
    z = torch.randn(obs.shape[0], chunk_dim, device=obs.device)
    with torch.no_grad():
        flow_actions = euler_integrate(policy_velocity(nets, args), obs, z, args.flow_steps)
    if args.variant == "qam-fql":  # one-step actor: distil the fine-tuned flow (same noise) while maximising Q
        onestep_actions = nets["actor_onestep_flow"](obs, z)
        fql_distill_loss = ((flow_actions - onestep_actions) ** 2).mean()
        fql_q_loss = -critic(obs, onestep_actions.clamp(-1, 1)).mean(0).mean()
        out = dict(variant_loss=fql_q_loss + args.fql_alpha * fql_distill_loss, fql_distill_loss=fql_distill_loss,
                   fql_q_loss=fql_q_loss)
    else:  # edit policy: maximise Q of the edited action, SAC entropy term with an auto-tuned temperature
        delta, log_prob = tanh_gaussian_sample(*nets["actor_edit"](obs, flow_actions))
        edit_q_loss = -critic(obs, (flow_actions + args.edit_scale * delta).clamp(-1, 1)).mean(0).mean()
        alpha = nets["edit_alpha"]()
        edit_entropy_loss = (log_prob * alpha.detach()).mean()
        entropy = -log_prob.detach().mean()
        edit_alpha_loss = alpha * (entropy - (-0.5 * chunk_dim))  # official target entropy -0.5 * dim
        out = dict(variant_loss=edit_q_loss + edit_entropy_loss + edit_alpha_loss, edit_q_loss=edit_q_loss,
                   edit_entropy_loss=edit_entropy_loss, edit_alpha_loss=edit_alpha_loss, edit_entropy=entropy,
                   edit_alpha=alpha)
    return out


def losses(nets: nn.ModuleDict, batch: dict, args: Args) -> dict:
    """Every QAM loss term of one step (still attached to the graph) and its diagnostics, from one snapshot.
    `batch` comes from `Dataset.sample_chunks`: actions [B, h, A] (flattened here to the chunk [B, h*A]), chunk
    rewards R, masks, valid and the next observation after the chunk."""
    obs, valid = batch["observations"], batch["valid"]
    actions = batch["actions"].reshape(obs.shape[0], -1)  # [B, D]
    bc_flow, ft_flow, critic = nets["actor_bc_flow"], nets["actor_ft_flow"], nets["critic"]
    prior, target_critic = nets["target_actor_bc_flow"], nets["target_critic"]
    # critic: pessimistic chunked TD target from the current policy at s' (no gradient)
    with torch.no_grad():
        next_obs = batch["next_observations"]
        next_q = target_critic(next_obs, act(nets, next_obs, args))  # [N, B]
        y = chunked_td_target(batch["rewards"], batch["masks"], next_q, args.discount, args.horizon, args.rho)
    q = critic(obs, actions)  # [N, B]
    critic_loss = (((q - y) ** 2) * valid).mean()
    # behaviour flow: flow matching on the dataset chunks
    x0, t = torch.randn_like(actions), torch.rand_like(actions[:, :1])  # drawn in this order (torch.compile too)
    bc_flow_loss = flow_bc_loss(bc_flow, obs, actions, x0, t, valid)
    # fine-tuned flow: adjoint matching against the target behaviour flow; X, G and the base velocity are constants
    v_sde = (lambda s, x, t: ft_flow(s, x, t) + prior(s, x, t)) if args.residual else ft_flow
    xs, ts, x_final = memoryless_rollout(v_sde, prior, obs, torch.randn_like(actions), args.flow_steps)
    g_final = terminal_adjoint(target_critic, obs, x_final, args.inv_temp)
    adjoints = lean_adjoint(prior, obs, xs, g_final, args.flow_steps)  # [K, B, D]
    obs_k = obs.expand(args.flow_steps, *obs.shape)
    v_ft = ft_flow(obs_k, xs, ts)  # [K, B, D], the only term with a gradient
    with torch.no_grad():
        v_base = torch.zeros_like(v_ft) if args.residual else prior(obs_k, xs, ts)
    adj_loss = adjoint_matching_loss(v_ft, v_base, adjoints, noise_schedule(args.flow_steps, obs.device, obs.dtype))
    actor_loss = bc_flow_loss + adj_loss
    out = dict(critic_loss=critic_loss, q_mean=q.mean(), q_max=q.max(), q_min=q.min(), bc_flow_loss=bc_flow_loss,
               adj_loss=adj_loss, adj_max=g_final.abs().max(), adj_mean=g_final.abs().mean(),
               adj_std=g_final.abs().std(correction=0))
    if args.variant != "qam":
        extra = variant_losses(nets, obs, actions.shape[1], args)
        actor_loss = actor_loss + extra["variant_loss"]
        out.update(extra)
    return dict(out, actor_loss=actor_loss)


def trained_parameters(opt: torch.optim.Optimizer) -> list:
    return [p for group in opt.param_groups for p in group["params"]]


def update(nets: nn.ModuleDict, opt: torch.optim.Optimizer, batch: dict, args: Args, loss_fn=losses,
           **phase) -> dict:
    """One Adam step on the summed losses after one global grad-norm clip over every trained network (official
    optax.clip_by_global_norm(1.0)); the targets move from the pre-update networks, as in the official code."""
    with plumbing.autocast(args.precision, batch["observations"].device):  # loss_fn: losses, or compiled
        out = loss_fn(nets, batch, args, **phase)
    total = out["critic_loss"] + out["actor_loss"]
    opt.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trained_parameters(opt), 1.0 if args.clip_grad else math.inf)
    soft_update_(nets["target_critic"], nets["critic"], args.tau)
    soft_update_(nets["target_actor_bc_flow"], nets["actor_bc_flow"], args.tau)
    opt.step()
    return {**{k: v.detach() for k, v in out.items()}, "total_loss": total.detach(), "grad_norm": grad_norm}


@torch.no_grad()
def act(nets: nn.ModuleDict, obs: torch.Tensor, args: Args) -> torch.Tensor:
    """Policy of the official `sample_actions`: K Euler steps of v_ft from fresh noise, clipped (the behaviour flow
    when inv_temp = 0); QAM-FQL acts with its one-step actor; QAM-EDIT adds a sampled edit and clips again.
    Returns whole chunks [B, h*A]."""
    z = torch.randn(obs.shape[0], nets["actor_ft_flow"].net[-1].out_features, device=obs.device)
    if args.variant == "qam-fql":
        return nets["actor_onestep_flow"](obs, z).clamp(-1, 1)
    v = nets["actor_bc_flow"] if args.inv_temp == 0 else policy_velocity(nets, args)
    actions = euler_integrate(v, obs, z, args.flow_steps)
    if args.variant == "qam-edit":
        delta, _ = tanh_gaussian_sample(*nets["actor_edit"](obs, actions))
        actions = (actions + args.edit_scale * delta).clamp(-1, 1)
    return actions


@torch.no_grad()
def act_bc_flow(nets: nn.ModuleDict, obs: torch.Tensor, flow_steps: int) -> torch.Tensor:
    """The flow-BC baseline: K Euler steps of the BC flow from fresh noise, clipped."""
    z = torch.randn(obs.shape[0], nets["actor_bc_flow"].net[-1].out_features, device=obs.device)
    return euler_integrate(nets["actor_bc_flow"], obs, z, flow_steps)


def sparse_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """The official --sparse rule for scene and puzzle: r <- -1 where r != 0, else 0."""
    return -(rewards != 0).float()


def make_policy(nets: nn.ModuleDict, args: Args):
    """The evaluation policy as a callable, observations [B, D] -> actions [B, A]; main's evaluation and
    runfiles.load_policy both use it.
    The chunk is executed open-loop: every h-th call plans a chunk for the batch, the other calls return its next
    action without looking at the observations; a new batch of episodes needs `policy.reset()`."""
    return common.chunked_policy(lambda obs: act(nets, obs, args), args.horizon)


# ---------------------------------------------------------------------------------------------------- training loop
def main(args: Args) -> dict:
    # TRY NOT TO MODIFY: flags, seeds and device; the data; the step budget
    device = plumbing.setup(args, LIMITS)
    task = common.load_task(args.env_id, device, flags=args)
    steps = common.default_offline_steps(task.env_id) if args.offline_steps is None else args.offline_steps
    # ALGO LOGIC: what the method needs of the data, the replay for the online phase, the networks, the optimizer
    if args.sparse:  # also on every later shard of --dataset-dir (the official process_train_dataset)
        common.relabel_rewards(task, sparse_rewards)
    common.check_horizon(task.train, args.horizon, task.env_id)
    online = common.Collector(task, args.online_steps, args.buffer_size, args.seed, horizon=args.horizon,
                              reward_fn=sparse_rewards if args.sparse else None) if args.online_steps else None
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
        if step > steps:  # its chunk executed open-loop (one policy call per h env steps), every step stored
            episode = online.step(lambda o: policy(nets, o, args), step)
        if step <= steps or online.steps >= args.start_training:
            batch = task.train.sample_chunks(args.batch_size, args.horizon, args.discount)
            metrics = update(nets, opt, batch, args, loss_fn=loss_fn)
        # TRY NOT TO MODIFY: NaN watch, progress and logs; evaluation, eval.csv and checkpoint
        run.log(step, metrics, episode)
        if run.eval_due(step):
            result = common.evaluate(make_policy(nets, args), task, args.eval_episodes, args.seed + step, run.png(step))
            # ALGO LOGIC: the flow-BC baseline beside the policy
            if args.eval_bc_flow:
                bc_policy = common.chunked_policy(lambda o: act_bc_flow(nets, o, args.flow_steps), args.horizon)
                bc = common.evaluate(bc_policy, task, args.eval_episodes, args.seed + step,
                                     run.png(step, "bandit_bc_flow"))
                result.update({f"bc_flow_{k}": v for k, v in bc.items()})
            # TRY NOT TO MODIFY: eval.csv, tensorboard and checkpoint
            result = run.record_eval(step, result)
    run.close()
    return result


if __name__ == "__main__":
    plumbing.cli(main, Args)
