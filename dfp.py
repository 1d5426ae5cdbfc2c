"""Drifting Field Policy (DFP): Koo, Park, Choi, Min, Sung, "Drifting Field Policy: A One-Step Generative Policy via
Wasserstein Gradient Flow", arXiv 2605.07727. Official code: github.com/KAIST-Visual-AI-Group/DFP (JAX, built on the
Q-chunking/FQL code), `agents/drift.py` and `utils/drift_loss.py`, followed at commit babc3da.

The paper's offline RL setting (App. B.2, Table 8): a one-step generator f_theta(s, eps), its EMA copy f_old, FQL's
critic, one Adam step on the sum. For every state of the batch:
    generated   x_i = clip(f_theta(s, eps_i), -1, 1), i = 1..G, with gradient                        (Alg. 1, [B, G, A])
    top-K set   a~_j = clip(f_old(s, eps'_j), -1, 1), j = 1..N; P_K = the K a~_j with the largest agg_e Q_e(s, a~_j)
    field       V(x; Y+) = sum_R F^R / rms(F^R), the negatives being the G generated samples (Deng et al.'s Alg. 2):
                F^R_i = sig-_i sum_{y in Y+} w_iy (y - x_i) - sig+_i sum_{k <= G} w_ik (x_k - x_i),
                sig+_i, sig-_i = the sums of w_i. over Y+ and over the generated samples,
                w = sqrt(softmax_y(l) * softmax_i(l)),  l_iy = -(|x_i - y| / mean |x - y| + 100 [y is x_i]) / R
    drift loss  L(Y+) = mean_{B,G,A} (x / c - sg(x / c + V(x; Y+)))^2, c = mean |x - y| / sqrt(A)  (Eq. 4, as the code)
    actor       L_actor = L(a) + lambda * L(P_K)      (Eqs. 16, 18; a = the dataset action; no -Q term, Q only ranks)
    critic      L_Q = mean_{e,B} (Q_e(s, a) - (r + discount * mask * agg_e Qbar_e(s', a')))^2,  a' ~ f_theta(s', .)
    EMA         theta_old <- tau_ema * theta + (1 - tau_ema) * theta_old after every step, from initialisation
The deployed policy is one generator forward pass with fresh noise eps ~ N(0, I) (best of --eval-bon by Q if > 1).

Deviations from the official code:
  1. PyTorch instead of JAX; Xavier-uniform init, tanh-GELU and LayerNorm eps 1e-6 reproduce the flax defaults.
  2. OGBench evaluation uses the installed ogbench 1.2.2 (manipulation success scored on the pre-action state);
     the official requirements pin ogbench 1.1.2.
  3. D4RL tasks are read from their Minari re-releases (see loaders.py and the README, "Data protocol"); DFP reports
     no D4RL results, so those commands use untuned defaults and the shared 500K steps (official flag: 1M).
  4. Evaluation runs the episodes side by side in a vector env and also evaluates at the final step; 50 episodes by
     default (the shared protocol; the official flag default is 100, pass --eval-episodes 100).
  5. Validation losses on the OGBench val split are not logged (the official code logs them).
  6. Defaults are the paper's offline RL setting (h = 1, top-K from step 1). The offline-to-online main setting is
     --horizon 5 --topk-start <offline steps> --online-steps N: L_BC alone offline, then at the switch pi_old <- theta
     and L_BC + lambda L_topK online (the official switch, which resets pi_old). --topk-start S < offline steps
     puts the switch inside the offline run.
     Online, the official separate-offline-buffer and offline_batch_ratio options (off by default) are not ported.
  7. The TD target's next action is one sample of f_theta (paper Eq. 1; --q-bon 1); the official YAML takes the best
     of q_bon = 16 samples by the online critic. Evaluation is one sample (App. B.2: best-of-N' disabled); the YAML
     uses eval_bon = 16. Both are flags.
  8. Defaults are the paper's offline values (Table 8): temperatures (0.05,), N = 16, K = 8, lambda = 0.5. The
     released YAML (offline-to-online runs) has drift_temps [0.1] and K = 4; no offline config was released.
  9. Pairwise distances are computed exactly from differences; the official `cdist` expands |x|^2 + |y|^2 - 2 x.y.
     The floors (1e-8 on squared distances, 1e-3 on scales, 1e-6 on affinity products, 1e-8 on the mean squared
     force) and the self mask +100 are kept. The force is summed as sig- * attraction - sig+ * repulsion, which is
     the official single einsum regrouped.
 10. Settings that no command or config of the offline setting changes are constants, not flags: BC weight 1
     (official alpha_target), no bottom-Q explicit negatives (online_neg_samples 0), hard top-K (the "soft" mode is
     not ported), no Q-gradient term (q_alpha 0), plus_only and use_neg_only off, noise dim = action dim, no encoder.
 11. Logs diagnostics the official code does not: the dataset-action MSE and the Q of a generated sample.
 12. --online-steps runs the official main.py online loop through common.Collector (best-of-eval_bon acting, chunks
     open-loop, uniform replay of 2M rows, updates from online step 5K); the training env's first reset is seeded
     with seed + 3000 + step (official: seed + 3000), evaluation envs with seed + step (official: + 1000 / + 2000).
 13. --dataset-dir (the cube-quadruple-100M folder, official --ogbench_dataset_dir): the same rotation, the next
     shard read ahead on a thread, the last offline shard kept online as the official loop does (docs/shards.md).
Where paper and code differ this file follows the code: the Laplace kernel on batch-mean-normalised distances with
doubly normalised, cross-weighted, unit-RMS affinities (the paper's Eq. 3 writes a Gaussian mean shift), the
per-element mean in the loss (Eq. 4 sums over action dims), the unclipped drift target, the EMA from the first step.
Speed flags (--compile, --precision bf16) are the same in all five scripts: README, "Benchmark". Under bf16
this file keeps the critics, losses, TD targets, LayerNorms and the drift field (distances of nearby actions) in fp32.
The full list, the commands for every task family and the logged metrics are in docs/dfp.md.

    python dfp.py --env-id bandit-4gaussian --actor-hidden-dims 64 64 --value-hidden-dims 64 64 --batch-size 64 \\
        --lr 1e-3 --actor-ema-tau 0.1 --alpha-pos 2 --offline-steps 1500
    python dfp.py --env-id cube-single-play-singletask-task2-v0 --alpha-pos 0.45
    python dfp.py --env-id scene-play-singletask-task2-v0 --drift-temps 0.01 0.05
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
    """episodes per evaluation (FQL protocol: 50; DFP's official flag is 100, Deviation 4)"""
    log_interval: int = 5_000
    """write training metrics every this many steps (the official main.yaml logs every 20K)"""
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
    """gradient steps; default 1M on OGBench, 500K on D4RL/Minari (FQL; DFP official flag: 1M), 5K on the bandit"""
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
    """discount factor gamma (official: 0.99, Table 5)"""
    tau: float = 0.005
    """Polyak rate of the target critic (official: 0.005); the EMA rate of the candidate actor is --actor-ema-tau"""
    q_agg: Literal["mean", "min"] = "mean"
    """ensemble aggregation in the TD target, the top-K ranking and best-of-N (official: mean, Table 5)"""
    alpha_pos: float = 0.5
    """weight lambda of the top-K drift loss in L_BC + lambda L_topK (official 0.5; Table 8: 0.45 cube-single,
    0.55 cube-double)"""
    drift_temps: tuple[float, ...] = (0.05,)
    """kernel temperatures R, the paper's bandwidths h, summed in the field (Table 8: 0.05 cube; 0.01 0.05 scene and
    puzzle; the official YAML of the offline-to-online runs: 0.1)"""
    gen_per_label: int = 8
    """generated actions G per state, shared by both drift losses and used as their negatives (official: 8, N_gen)"""
    online_n_samples: int = 16
    """candidates N per state drawn from the EMA actor for the top-K set (official: 16; Table 8: 32 on puzzle-4x4)"""
    online_pos_samples: int = 8
    """positives K kept from the N candidates (Table 8: 8, 16 on puzzle-4x4; official online YAML: 4)"""
    actor_ema_tau: float = 1e-4
    """EMA rate tau_EMA of the candidate actor pi_old, updated from step 1 (official: 1e-4)"""
    topk_start: int = 0
    """steps of L_BC alone before L_topK turns on; at the switch pi_old is reset to the actor, as the official
    offline-to-online switch does (0 = top-K from step 1, the paper's offline setting)"""
    q_bon: int = 1
    """next actions a' drawn for the TD target, the best by the online critic kept (paper Eq. 1: 1; official: 16)"""
    eval_bon: int = 1
    """actions drawn per evaluation step, the best by the online critic executed (App. B.2: 1; official YAML: 16);
    the online phase acts with the same policy"""
    horizon: int = 1
    """action-chunk length h: actor and critic act on chunks of h actions, executed open-loop (App. B.2: 1; the
    official offline-to-online runs: 5)"""
    # --- offline-to-online
    online_steps: int = 0
    """env steps of online fine-tuning after the offline phase, one update per step (official: 1M after 1M offline);
    pi_old is reset to the actor at the first online step, as the official switch_config_to_online"""
    buffer_size: int = 2_000_000
    """replay rows (dataset + online transitions); the oldest are overwritten beyond max(this, N + 1) (official: 2M)"""
    start_training: int = 5_000
    """online updates begin at this online env step; the steps before only collect (official: 5K)"""


# Allowed range of every numeric flag of this script (interval notation; the shared flags are in plumbing.py),
# checked by plumbing.check_args before any work starts.
LIMITS = dict(plumbing.TRAIN_LIMITS, alpha_pos="[0, inf)", drift_temps="(0, inf)", gen_per_label="[1, inf)",
              online_n_samples="[1, inf)", online_pos_samples="[1, online_n_samples]", actor_ema_tau="[0, 1]",
              topk_start="[0, inf)", q_bon="[1, inf)", eval_bon="[1, inf)", horizon="[1, inf)")


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
    """`action_dim` is the env's; the actor and the critic act on whole chunks of horizon * action_dim."""
    chunk_dim = action_dim * args.horizon
    critic = Critic(obs_dim, chunk_dim, args.value_hidden_dims, args.layer_norm)
    actor = Generator(obs_dim, chunk_dim, chunk_dim, args.actor_hidden_dims, args.actor_layer_norm)  # noise dim = h*A
    return nn.ModuleDict(dict(
        actor_drift=actor,
        actor_drift_ema=copy.deepcopy(actor).requires_grad_(False),  # pi_old, starts equal to the actor (official)
        critic=critic,
        target_critic=copy.deepcopy(critic).requires_grad_(False),
    ))


# ---------------------------------------------------------------------------------------------------- algorithm
DIST_EPS = 1e-8  # floor of every squared distance (official cdist eps)
SCALE_FLOOR = 1e-3  # floor of the distance scale and of the coordinate scale (official)
SELF_MASK = 100.0  # added to a generated sample's normalised distance to itself (official mask_val)
AFFINITY_FLOOR = 1e-6  # floor of the product of the two softmaxes, so every affinity is >= 1e-3 (official)
FORCE_FLOOR = 1e-8  # floor of the mean squared force before its square root (official)
BC_WEIGHT = 1.0  # weight of L_BC (official alpha_target; no config or command changes it)


def normalised_distances(gen: torch.Tensor, targets: torch.Tensor,
                         self_mask: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distances between the generated samples and the targets of each state, divided by their batch mean.
    gen [B, G, A], targets [B, J, A] -> (d~ [B, G, J], s, c): d_ij = sqrt(max(|x_i - y_j|^2, 1e-8)), s = the mean of d
    over every (b, i, j), d~ = d / max(s, 1e-3), c = max(s / sqrt(A), 1e-3) the coordinate scale. With self_mask the
    first G target columns are the generated samples themselves and d~_ii gets +100."""
    dist = (gen.unsqueeze(-2) - targets.unsqueeze(-3)).pow(2).sum(-1).clamp_min(DIST_EPS).sqrt()
    s = dist.mean()
    d = dist / s.clamp_min(SCALE_FLOOR)
    if self_mask:
        d = d + SELF_MASK * torch.eye(gen.shape[-2], targets.shape[-2], dtype=d.dtype, device=d.device)
    return d, s, (s / math.sqrt(gen.shape[-1])).clamp_min(SCALE_FLOOR)


def affinities(d: torch.Tensor, temp: float) -> torch.Tensor:
    """Laplace kernel on normalised distances, doubly normalised: w_ij = sqrt(max(softmax_j(l) softmax_i(l), 1e-6)),
    l = -d~ / R; the first softmax runs over the targets j, the second over the generated samples i. [B, G, J]"""
    logits = -d / temp
    return (logits.softmax(-1) * logits.softmax(-2)).clamp_min(AFFINITY_FLOOR).sqrt()


def drift_field(gen: torch.Tensor, pos: torch.Tensor, temps: tuple, neg: Optional[torch.Tensor] = None,
                gen_as_neg: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The drift field of `utils/drift_loss.py` (Deng et al.'s Alg. 2) for every state at once; states interact only
    through the two batch-global scalars (the distance scale s and each temperature's force RMS).
    gen [B, G, A] generated samples, pos [B, P, A] positives, neg [B, M, A] optional extra negatives; the negatives
    are the generated samples (self-masked) followed by neg, or neg alone when gen_as_neg is False.
    Per temperature R: F^R_i = sig-_i sum_pos w_ij (y_j - x_i) - sig+_i sum_neg w_ij (y_j - x_i), sig+- = sum of w over
    the positives / negatives, all in coordinates divided by c; V = sum_R F^R / sqrt(max(mean F^R^2, 1e-8)).
    Returns V [B, G, A] (coordinates / c), c, s and the force RMS per temperature [T] (the raw force magnitude)."""
    negs = ([gen] if gen_as_neg else []) + ([neg] if neg is not None else [])
    negs = torch.cat(negs, 1) if negs else gen[:, :0]
    m = negs.shape[1]
    d, s, c = normalised_distances(gen, torch.cat([negs, pos], 1), gen_as_neg)
    x, y_neg, y_pos = gen / c, negs / c, pos / c
    v, rms = torch.zeros_like(x), []
    for temp in temps:
        w = affinities(d, temp)
        w_neg, w_pos = w[..., :m], w[..., m:]
        sig_neg, sig_pos = w_neg.sum(-1, keepdim=True), w_pos.sum(-1, keepdim=True)  # [B, G, 1]
        attract = w_pos @ y_pos - sig_pos * x  # sum_j w_ij (y_j - x_i) over the positives, [B, G, A]
        repel = w_neg @ y_neg - sig_neg * x  # the same over the negatives
        force = sig_neg * attract - sig_pos * repel
        rms.append(force.pow(2).mean().clamp_min(FORCE_FLOOR).sqrt())
        v = v + force / rms[-1]
    return v, c, s, torch.stack(rms)


def drift_loss(gen: torch.Tensor, pos: torch.Tensor,
               temps: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 4 as the official code reduces it, per state: mean over G and A of (x / c - sg(x / c + V))^2 -> [B].
    The field, c and the goal are built from gen.detach(), so the gradient is -2 V / (G A c) per sample and state.
    Returns the per-state loss, V, the distance scale s and the force RMS per temperature."""
    with torch.no_grad(), torch.autocast(gen.device.type, enabled=False):  # the field in fp32 (--precision)
        v, c, s, rms = drift_field(gen.detach(), pos, temps)
        goal = gen.detach() / c + v
    return ((gen / c - goal) ** 2).mean((-2, -1)), v, s, rms


def top_k_positives(cand: torch.Tensor, cand_q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 15: the K candidates of each state with the highest Q. cand [B, N, A], cand_q [B, N] -> [B, K, A], [B, K]"""
    q, idx = cand_q.topk(k, dim=1)
    return cand.gather(1, idx.unsqueeze(-1).expand(-1, -1, cand.shape[-1])), q


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


def sample_actions(actor: Generator, obs: torch.Tensor, n: int) -> torch.Tensor:
    """n samples clip(f(s, eps), -1, 1) per state with fresh eps ~ N(0, I); state b fills rows b*n .. b*n + n - 1 of
    the flat batch, as the official jnp.repeat. Keeps the graph when called with gradients. [B, D] -> [B, n, A]"""
    eps = torch.randn(obs.shape[0] * n, actor.noise_dim, device=obs.device)
    return actor(obs.repeat_interleave(n, 0), eps).clamp(-1, 1).view(obs.shape[0], n, -1)


def score(critic: Critic, obs: torch.Tensor, actions: torch.Tensor, q_agg: str) -> torch.Tensor:
    """agg_e Q_e(s, a) of n actions per state (official `_score_actions`). obs [B, D], actions [B, n, A] -> [B, n]"""
    b, n, a = actions.shape
    return aggregate_q(critic(obs.repeat_interleave(n, 0), actions.reshape(b * n, a)), q_agg).view(b, n)


def best_of_n(actor: Generator, critic: Critic, obs: torch.Tensor, n: int, q_agg: str) -> torch.Tensor:
    """EMaQ-style best-of-n (official `sample_actions` with actor_type best-of-n): n samples of the actor, the one the
    online critic scores highest; n = 1 is a plain sample. [B, D] -> [B, A]"""
    actions = sample_actions(actor, obs, n)
    if n == 1:
        return actions[:, 0]
    best = score(critic, obs, actions, q_agg).argmax(1)
    return actions[torch.arange(obs.shape[0], device=obs.device), best]


def losses(nets: nn.ModuleDict, batch: dict, args: Args, *, topk_on: bool = True) -> dict:
    """Every DFP loss term of one step (still attached to the graph) and its diagnostics, from one snapshot.
    topk_on=False weights L_topK by 0 (the --topk-start warm-up); it is still computed for its diagnostics."""
    obs, actions = batch["observations"], batch["actions"].flatten(1)  # chunks [B, h, A] -> [B, h*A]
    actor, critic = nets["actor_drift"], nets["critic"]
    # critic: TD target from the best of q_bon samples of the current actor at s' (no gradient); a chunk's rewards
    # are discounted inside it and it bootstraps with discount^h (Dataset.sample_chunks)
    with torch.no_grad():
        next_obs = batch["next_observations"]
        next_actions = best_of_n(actor, critic, next_obs, args.q_bon, args.q_agg)
        next_q = aggregate_q(nets["target_critic"](next_obs, next_actions), args.q_agg)
        y = td_target(batch["rewards"], batch["masks"], next_q, args.discount ** args.horizon)
    q = critic(obs, actions)  # [2, B]
    td_error = (q - y) ** 2
    if args.horizon > 1:  # chunks that run past the episode end are weighted out of the critic loss (official valid)
        td_error = td_error * batch["valid"]
    critic_loss = td_error.mean()
    # actor: top-K positives among N candidates of the EMA actor, ranked by the online critic. Everything here runs
    # without gradient: the critic only ranks, so the actor loss never reaches the critic (no freezing needed).
    with torch.no_grad():
        cand = sample_actions(nets["actor_drift_ema"], obs, args.online_n_samples)  # [B, N, A]
        cand_q = score(critic, obs, cand, args.q_agg)  # [B, N]
        pos_topk, topk_q = top_k_positives(cand, cand_q, args.online_pos_samples)  # [B, K, A], [B, K]
    # actor: G generated actions per state, the only path of gradient into the actor; both drift losses use them
    gen = sample_actions(actor, obs, args.gen_per_label)  # [B, G, A]
    bc, _, bc_scale, bc_rms = drift_loss(gen, actions.unsqueeze(1), args.drift_temps)
    topk, _, topk_scale, topk_rms = drift_loss(gen, pos_topk, args.drift_temps)
    bc_drift_loss, topk_drift_loss = BC_WEIGHT * bc.mean(), (args.alpha_pos if topk_on else 0.0) * topk.mean()
    with torch.no_grad():  # diagnostics: Q of one generated action per state, squared distance to the dataset action
        q_gen, mse = critic(obs, gen[:, 0]).mean(), ((gen - actions.unsqueeze(1)) ** 2).mean()
    return dict(critic_loss=critic_loss, q_mean=q.mean(), q_max=q.max(), q_min=q.min(),
                actor_loss=bc_drift_loss + topk_drift_loss, bc_drift_loss=bc_drift_loss,
                topk_drift_loss=topk_drift_loss, bc_dist_scale=bc_scale, topk_dist_scale=topk_scale,
                **{f"bc_force_rms_{t:g}": r for t, r in zip(args.drift_temps, bc_rms)},
                **{f"topk_force_rms_{t:g}": r for t, r in zip(args.drift_temps, topk_rms)},
                cand_q=cand_q.mean(), topk_q=topk_q.mean(), q=q_gen, mse=mse)


def update(nets: nn.ModuleDict, opt: torch.optim.Optimizer, batch: dict, args: Args, loss_fn=losses,
           **phase) -> dict:
    """One Adam step on critic + actor losses; the target critic and the EMA actor move from the pre-update
    parameters, as in the official code."""
    with plumbing.autocast(args.precision, batch["observations"].device):  # loss_fn: losses, or compiled
        out = loss_fn(nets, batch, args, **phase)
    total = out["critic_loss"] + out["actor_loss"]
    opt.zero_grad(set_to_none=True)
    total.backward()
    soft_update_(nets["target_critic"], nets["critic"], args.tau)
    soft_update_(nets["actor_drift_ema"], nets["actor_drift"], args.actor_ema_tau)
    opt.step()
    return {**{k: v.detach() for k, v in out.items()}, "total_loss": total.detach()}


@torch.no_grad()
def act(nets: nn.ModuleDict, obs: torch.Tensor, args: Args) -> torch.Tensor:
    """Evaluation policy of the offline setting (App. B.2): ONE generator forward pass with fresh noise, clipped.
    --eval-bon > 1 executes the best of that many samples by the online critic, as the official YAML (and its online
    acting). Returns whole chunks [B, h*A]; common.chunked_policy / common.Collector run them open-loop."""
    return best_of_n(nets["actor_drift"], nets["critic"], obs, args.eval_bon, args.q_agg)


def make_policy(nets: nn.ModuleDict, args: Args):
    """The evaluation policy as a callable, observations [B, D] -> actions [B, A]; main's evaluation and
    runfiles.load_policy both use it. With --eval-bon > 1, the best of that many samples by the critic. With
    --horizon h > 1 the chunk is executed open-loop: every h-th call plans a chunk for the batch, the other calls
    return its next action without looking at the observations; a new batch of episodes needs `policy.reset()`."""
    return common.chunked_policy(lambda obs: act(nets, obs, args), args.horizon)


# ---------------------------------------------------------------------------------------------------- training loop
def main(args: Args) -> dict:
    # TRY NOT TO MODIFY: flags, seeds and device; the data; the step budget
    device = plumbing.setup(args, LIMITS)
    task = common.load_task(args.env_id, device, flags=args)
    steps = common.default_offline_steps(task.env_id) if args.offline_steps is None else args.offline_steps
    # ALGO LOGIC: what the method needs of the data, the replay for the online phase, the networks, the optimizer
    common.check_horizon(task.train, args.horizon, task.env_id)
    if task.shards is not None:  # --dataset-dir: the official DFP loop keeps the last offline shard online
        task.shards.online_rotation = False
    online = common.Collector(task, args.online_steps, args.buffer_size, args.seed,
                              horizon=args.horizon) if args.online_steps else None
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
        if (args.topk_start and step == args.topk_start + 1) or step == steps + 1:  # the switch: pi_old <- theta
            nets["actor_drift_ema"].load_state_dict(nets["actor_drift"].state_dict())
        if step > steps:  # its chunk executed open-loop (one policy call per h env steps), every step stored
            episode = online.step(lambda o: policy(nets, o, args), step)
        if step <= steps or online.steps >= args.start_training:
            batch = task.train.sample_chunks(args.batch_size, args.horizon, args.discount) if args.horizon > 1 \
                else task.train.sample(args.batch_size)
            metrics = update(nets, opt, batch, args, loss_fn=loss_fn, topk_on=step > args.topk_start)
        # TRY NOT TO MODIFY: NaN watch, progress and logs; evaluation, eval.csv and checkpoint
        run.log(step, metrics, episode)
        if run.eval_due(step):
            result = common.evaluate(make_policy(nets, args), task, args.eval_episodes, args.seed + step, run.png(step))
            result = run.record_eval(step, result)
    run.close()
    return result


if __name__ == "__main__":
    plumbing.cli(main, Args)
