"""Drift Q-Learning (DriftQL): Houssaini, Danesh, Abyaneh, Fujimoto, Lin, Meger, "Drift Q-Learning", arXiv 2606.00350.
Official code: github.com/DT6A/driftql (JAX, built on FQL's code), `agents/driftql.py`, followed at commit 2da54d1.

One noise-conditioned generator f_theta(s, eps) (no flow, no distillation) and FQL's critic, one Adam step on the sum:
    drift samples  a_i = clip(f_theta(s, eps_i), -1, 1), i = 1..N, eps_i ~ N(0, I)             (Alg. 1, [B, N, A])
    repulsion      w_ik = softmax_{k != i}(l_ik),  l_ik = -d_ik / temp (laplace) or -d_ik^2 / (2 temp^2) (gaussian),
                   d_ik = |a_i - a_k| / sqrt(A),   V-_i = sum_{k != i} w_ik (a_k - a_i)           (Eqs. 8-10)
    attraction     V+_i = sum_j softmax_j(l(a_i, a+_j)) (a+_j - a_i) over the positives of the state (Eq. 3);
                   the official code has one, the dataset action, so V+_i = a+ - a_i                  (Eq. 7)
    drift loss     L_drift = mean_{B,N,A} (a_i - sg(clip(a_i + eta (V+_i - V-_i), -1, 1)))^2      (Eq. 11, per element)
    actor          L_actor = alpha * L_drift - mean_B mean_j Q_j(s, clip(f_theta(s, eps)))      (Eq. 12, critic frozen)
    critic         L_Q = mean_{j,B} (Q_j(s, a) - (r + discount * mask * agg_j Qbar_j(s', clip(f_theta(s', eps')))))^2
The deployed policy is one forward pass of the generator with fresh noise eps ~ N(0, I) at every step.

Deviations from the official code:
  1. PyTorch instead of JAX; Xavier-uniform init, tanh-GELU and LayerNorm eps 1e-6 reproduce the flax defaults.
  2. OGBench evaluation uses the installed ogbench 1.2.2, which scores success on the pre-action state;
     DriftQL's runs used ogbench 1.1.0 ('post'). The OGBench README calls the difference negligible.
  3. D4RL tasks are read from their Minari re-releases (see loaders.py and the README, "Data protocol"); the D4RL-v2
     locomotion sets have no Minari re-release, so those official commands cannot be reproduced here.
  4. Evaluation runs the episodes side by side in a vector env and also evaluates at the final step.
  5. Validation losses on the OGBench val split are not logged (the official code logs them every 5K steps).
  6. Pairwise distances are computed exactly from differences; the official code expands |x|^2 + |y|^2 - 2 x.y
     (under TF32 on recent GPUs). The eps 1e-12 inside the square root and the finite self-mask distance 1e6 are kept.
  7. Added option, off by default: --same-state-positives makes every batch action taken at the row's state a
     positive of that state (Eq. 3 with M > 1). Only data with repeated states, the bandit, is affected; there it
     keeps both tied best modes as the paper's Fig. 1 shows, which the official single positive does not.
  8. Settings that no README command or config changes are constants, not flags: distance scaling by sqrt(A) (on),
     drift normalisation (off), drift batch = the whole batch (official drift_batch_size 256 = batch_size),
     mean ensemble aggregation in the actor's Q term (official q_agg_actor).
  9. --offline-steps defaults to 500K on D4RL/Minari as the paper reports; the official flag default is 1M on every
     task and no command overrides it. Pass --eval-episodes 100 (D4RL antmaze) or 10 (Adroit) as the configs do.
 10. Logs FQL's diagnostic `mse` (Q-term sample vs dataset action) in addition to the official metrics.
 11. --online-steps is our extension: FQL's online loop, which the official main.py carries over, run through
     common.Collector; the paper reports no online runs, so no setting of it is tuned.
Where paper and code differ this file follows the code (docs/driftql.md): per-element mean in L_drift (Eq. 11
sums over action dims), laplace as the default kernel (the paper's Sec. 5.5 says gaussian), min in the TD target by
default, the step size eta, the finite self-mask (Alg. 1: +inf), N = 4 and noise dim 8 on cube-double (Table 5: N = 32).
Speed flags (--compile, --precision bf16) are the same in all five scripts: README, "Benchmark". Under bf16
this file keeps the critics (a pixel encoder aside), losses, TD targets, LayerNorms and the drift field (distances
of nearby actions) in fp32.
Pixels (visual-* ids; --encoder impala_small --p-aug --frame-stack, the official hooks): visual.py, docs/visual.md.
The full list, the commands for every task family and the logged metrics are in docs/driftql.md.

    python driftql.py --env-id bandit-4gaussian --actor-hidden-dims 64 64 --value-hidden-dims 64 64 --batch-size 64 \\
        --lr 1e-3 --alpha 30 --drift-temp 0.1 --same-state-positives
    python driftql.py --env-id antmaze-large-navigate-singletask-task1-v0 --alpha 10 --drift-temp 0.5 --q-agg mean
    python driftql.py --env-id cube-single-play-singletask-task2-v0 --alpha 60 --drift-temp 0.02 --kernel gaussian \\
        --discount 0.995 --q-agg mean
    python driftql.py --env-id antmaze-large-play-v2 --alpha 3 --drift-temp 0.5 --kernel gaussian --discount 0.995 \\
        --eval-episodes 100
"""
import copy
import math
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
    """gradient steps; default 1M on OGBench, 500K on D4RL/Minari (paper; the official flag is 1M), 5K on the bandit"""
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
    """discount factor gamma (official: 0.99; 0.995 or 0.998 on many tasks, docs/driftql.md)"""
    tau: float = 0.005
    """Polyak rate of the target critic (official: 0.005); the kernel temperature is --drift-temp"""
    q_agg: Literal["mean", "min"] = "min"
    """aggregation of the two target Qs in the TD target (official: min, unlike FQL; mean on many tasks, docs/driftql.md)"""
    alpha: float = 10.0
    """drift-loss coefficient alpha in Eq. 12 (official default 10; tuned per task, Table 6)"""
    drift_temp: float = 0.2
    """kernel temperature tau of the repulsion weights, Eq. 10 and Alg. 1 (official default 0.2; tuned per task)"""
    kernel: Literal["laplace", "gaussian"] = "laplace"
    """repulsion kernel on sqrt(A)-scaled distances (official code default: laplace; tuned per task, Table 6)"""
    drift_ngen: int = 32
    """generated actions N per state in the drift loss (official: 32; 4 on cube-double)"""
    noise_dim: Optional[int] = None
    """dimension of the generator noise eps; None means the action dim (official: action dim; 8 on cube-double)"""
    drift_eta: float = 1.0
    """drift step size eta in the target clip(a + eta V) (official: 1.0; absent from the paper's Eq. 11)"""
    normalize_q_loss: bool = False
    """divide the Q loss by sg(mean |Q| + 1e-6) (official: False in every reported run)"""
    same_state_positives: bool = False
    """every batch action taken at the row's state is a positive of it (Eq. 3); changes only data with repeated
    states, the bandit (official: off, one positive per state)"""
    # --- offline-to-online
    online_steps: int = 0
    """env steps of online fine-tuning after the offline phase, one update per step (the official main.py keeps
    FQL's --online_steps loop; the paper reports no online runs, so this is our extension with untuned settings)"""
    buffer_size: int = 2_000_000
    """replay rows (dataset + online transitions); the oldest are overwritten beyond max(this, N + 1) (official: 2M)"""
    start_training: int = 0
    """online updates begin at this online env step; the steps before only collect (official main.py: 0)"""
    balanced_sampling: bool = False
    """online batches half from the dataset, half from the online transitions (official --balanced_sampling: off)"""


# Allowed range of every numeric flag of this script (interval notation; the shared flags are in plumbing.py),
# checked by plumbing.check_args before any work starts.
LIMITS = dict(plumbing.TRAIN_LIMITS, p_aug="[0, 1]", frame_stack="[1, inf)",
              alpha="[0, inf)", drift_temp="(0, inf)", drift_ngen="[1, inf)",
              drift_eta="[0, inf)")


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


class Generator(nn.Module):
    """One-step generator f_theta(s, eps) on concat[s, eps]; unsquashed output (the official `ActorVectorField`
    called without a time input)."""

    def __init__(self, obs_dim: int, action_dim: int, noise_dim: int, hidden: tuple, layer_norm: bool):
        super().__init__()
        self.noise_dim = noise_dim
        self.net = mlp(obs_dim + noise_dim, hidden, action_dim, layer_norm)

    def forward(self, obs: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, eps], -1)).float()  # fp32 out, also under bf16 autocast


def make_nets(args: Args, obs_dim: int, action_dim: int) -> nn.ModuleDict:
    """With --encoder each network gets its own encoder (the official `encoders` dict); the target critic's is a copy
    of the critic's."""
    obs_dim, enc = visual.feature_dim(args, obs_dim), lambda net: visual.with_encoder(net, args)  # noqa: E731
    critic = enc(Critic(obs_dim, action_dim, args.value_hidden_dims, args.layer_norm))
    noise_dim = args.noise_dim if args.noise_dim and args.noise_dim > 0 else action_dim  # official: <= 0 -> A
    return nn.ModuleDict(dict(
        actor_bc_drift=enc(Generator(obs_dim, action_dim, noise_dim, args.actor_hidden_dims, args.actor_layer_norm)),
        critic=critic,
        target_critic=copy.deepcopy(critic).requires_grad_(False),
    ))


# ---------------------------------------------------------------------------------------------------- algorithm
SELF_MASK_DIST = 1e6  # distance written on the diagonal (official; finite, so N = 1 gives V- = 0 rather than NaN)
DRIFT_EPS = 1e-12  # inside the square root of every distance and norm (official drift_eps)


def kernel_logits(dist: torch.Tensor, temp: float, kernel: str) -> torch.Tensor:
    """Alg. 1 line 6 on sqrt(A)-scaled distances d: laplace -d / temp, gaussian -d^2 / (2 temp^2) (Eq. 10)."""
    if kernel == "laplace":
        return -dist / temp
    if kernel == "gaussian":
        return -dist ** 2 / (2 * temp ** 2)
    raise ValueError(f"unknown kernel {kernel!r}")


def repulsion_weights(gen: torch.Tensor, temp: float, kernel: str) -> torch.Tensor:
    """Alg. 1 lines 4-7 (Eq. 9) per state: w_ik = softmax over k != i of the kernel logits between the generated
    actions i and k of the same state; w_ii = 0 through the masked diagonal. gen [B, N, A] -> w [B, N, N]."""
    n, a = gen.shape[-2:]
    dist = torch.sqrt((gen.unsqueeze(-2) - gen.unsqueeze(-3)).pow(2).sum(-1) + DRIFT_EPS)  # [B, N, N]
    dist = dist.masked_fill(torch.eye(n, dtype=torch.bool, device=gen.device), SELF_MASK_DIST)
    return torch.softmax(kernel_logits(dist / math.sqrt(a), temp, kernel), -1)


def drift_field(gen: torch.Tensor, pos: torch.Tensor, temp: float, kernel: str,
                pos_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eqs. 3 and 6-9 (Alg. 1 lines 8-10) for every state at once; states never interact.
    gen [B, N, A] generated actions, pos [B, P, A] positives (official: P = 1, the dataset action), pos_mask [B, P]
    (False drops a positive) -> (V, V_attract, V_repel), each [B, N, A], with separate normalisations:
    V_attract_i = sum_j softmax_j(l(a_i, a+_j)) (a+_j - a_i), which is a+ - a_i when P = 1 (Eq. 7),
    V_repel_i = sum_k w_ik (a_k - a_i), V = V_attract - V_repel."""
    a = gen.shape[-1]
    dist_pos = torch.sqrt((gen.unsqueeze(-2) - pos.unsqueeze(-3)).pow(2).sum(-1) + DRIFT_EPS)  # [B, N, P]
    logits_pos = kernel_logits(dist_pos / math.sqrt(a), temp, kernel)
    if pos_mask is not None:
        logits_pos = logits_pos.masked_fill(~pos_mask.unsqueeze(-2), -math.inf)
    v_attract = torch.softmax(logits_pos, -1) @ pos - gen
    w = repulsion_weights(gen, temp, kernel)
    v_repel = w @ gen - w.sum(-1, keepdim=True) * gen  # = sum_k w_ik (a_k - a_i) without a [B, N, N, A] tensor
    return v_attract - v_repel, v_attract, v_repel


def drift_target(gen: torch.Tensor, v: torch.Tensor, eta: float) -> torch.Tensor:
    """Alg. 1 line 11: sg(clip(a_i + eta V_i, -1, 1)). [B, N, A]"""
    return (gen + eta * v).clamp(-1, 1).detach()


def drift_loss(gen: torch.Tensor, pos: torch.Tensor, temp: float, kernel: str, eta: float,
               pos_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 11 reduced as the official code does: mean over all B * N * A elements of (a_i - target_i)^2.
    The field is built from gen.detach(), so the only gradient is the regression of gen onto its fixed target.
    Returns the loss and (V, V_attract, V_repel) for logging."""
    with torch.no_grad(), torch.autocast(gen.device.type, enabled=False):  # the field in fp32 (--precision)
        v, v_attract, v_repel = drift_field(gen.detach(), pos, temp, kernel, pos_mask)
    return ((gen - drift_target(gen, v, eta)) ** 2).mean(), v, v_attract, v_repel


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


def sample_actions(actor: Generator, obs: torch.Tensor) -> torch.Tensor:
    """The official `sample_actions`: clip(f_theta(s, eps), -1, 1), fresh eps ~ N(0, I), NaN -> 0. [B, D] -> [B, A]"""
    eps = torch.randn(obs.shape[0], actor.noise_dim, device=obs.device)
    return actor(obs, eps).clamp(-1, 1).nan_to_num(0.0)


def losses(nets: nn.ModuleDict, batch: dict, args: Args) -> dict:
    """Every DriftQL loss term of one step (still attached to the graph) and its diagnostics, from one snapshot."""
    obs, actions = batch["observations"], batch["actions"]
    actor, critic = nets["actor_bc_drift"], nets["critic"]
    # critic: TD target from one generator sample at s' (no gradient)
    with torch.no_grad():
        next_obs = batch["next_observations"]
        next_actions = sample_actions(actor, next_obs)
        next_q = aggregate_q(nets["target_critic"](next_obs, next_actions), args.q_agg)
        y = td_target(batch["rewards"], batch["masks"], next_q, args.discount)
    q = critic(obs, actions)  # [2, B]
    critic_loss = ((q - y) ** 2).mean()
    # actor: drift loss on N generated actions per state (Alg. 1); state b fills rows b*N .. b*N + N - 1
    (b, a_dim), n = actions.shape, args.drift_ngen
    eps = torch.randn(b * n, actor.noise_dim, device=obs.device)
    gen = actor(obs.repeat_interleave(n, 0), eps).clamp(-1, 1).view(b, n, a_dim)  # [B, N, A]
    pos, pos_mask = actions.clamp(-1, 1).unsqueeze(1), None  # [B, 1, A]: the dataset action, the official positive
    if args.same_state_positives:  # every batch action whose state equals the row's: [B, B, A], mask [B, B]
        same = (obs.unsqueeze(1) == obs.unsqueeze(0)).flatten(2).all(-1)  # [B, B]; pixels compare whole frames
        pos, pos_mask = pos.transpose(0, 1).expand(b, b, a_dim), same
    drift, v_drift, v_attract, v_repel = drift_loss(gen, pos, args.drift_temp, args.kernel, args.drift_eta, pos_mask)
    # actor: a separate generator sample per state for the Q term (not one of the N drift samples)
    actor_actions = actor(obs, torch.randn(b, actor.noise_dim, device=obs.device))
    # actor: Q term through the frozen critic: this loss routes gradient only into the actor through the action;
    # the critic's parameters get none of it (the same idiom in every script).
    q_pi = frozen(critic)(obs, actor_actions.clamp(-1, 1)).mean(0)  # always the ensemble mean here
    q_loss = -q_pi.mean()
    if args.normalize_q_loss:
        q_loss = q_loss / (q_pi.abs().mean().detach() + 1e-6)
    actor_loss = args.alpha * drift + q_loss
    norm = lambda x: torch.sqrt((x ** 2).sum(-1) + DRIFT_EPS).mean()  # noqa: E731  (official _l2_norm, averaged)
    return dict(critic_loss=critic_loss, q_mean=q.mean(), q_max=q.max(), q_min=q.min(), actor_loss=actor_loss,
                bc_drift_loss=args.alpha * drift, bc_drift_loss_raw=drift, drift_norm=norm(v_drift),
                drift_attract_norm=norm(v_attract), drift_repel_norm=norm(v_repel), q_loss=q_loss, q=q_pi.mean(),
                mse=((actor_actions.clamp(-1, 1) - actions) ** 2).mean())


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
    """Evaluation policy of the official code: ONE generator forward pass with fresh noise, clipped. [B, D] -> [B, A]"""
    return sample_actions(nets["actor_bc_drift"], obs)


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
            metrics = update(nets, opt, batch, args, loss_fn=loss_fn)
        # TRY NOT TO MODIFY: NaN watch, progress and logs; evaluation, eval.csv and checkpoint
        run.log(step, metrics, episode)
        if run.eval_due(step):
            result = common.evaluate(make_policy(nets, args), task, args.eval_episodes, args.seed + step, run.png(step))
            result = run.record_eval(step, result)
    run.close()
    return result


if __name__ == "__main__":
    plumbing.cli(main, Args)
