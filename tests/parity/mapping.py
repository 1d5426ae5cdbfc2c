"""The one place that knows how the official flax parameter trees map onto our torch modules.

An entry ties one flax leaf (path 'modules_<name>/.../<leaf>') to one torch parameter (its name in our ModuleDict)
with a layout: 'T' (flax Dense kernel [in, out] is our Linear weight [out, in]), 'conv' (flax Conv kernel [kh, kw, in,
out] is our Conv2d weight [out, in, kh, kw]) or 'same' (same numbers, maybe a different shape, e.g. our batched
critic's bias [num_qs, 1, out] is flax's vmapped [num_qs, out]).
Each script's list is built from the module builders below; `check_complete` makes sure that no flax leaf and no
torch parameter is left out, so a layout change (another critic layout, a new network) fails until mapped here.
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn


@dataclass
class Entry:
    path: str  # flax path, '/'-joined
    torch_name: str  # name in nets.named_parameters()
    layout: str  # 'T', 'conv' or 'same'

    @property
    def module(self) -> str:
        return self.path.split("/")[0]


def flatten(tree, prefix="") -> dict:
    """Nested dict of arrays -> {'a/b/c': numpy array}."""
    out = {}
    for k, v in tree.items():
        p = f"{prefix}/{k}" if prefix else str(k)
        out.update(flatten(v, p) if hasattr(v, "items") else {p: np.asarray(v)})
    return out


def mlp(flax_prefix: str, torch_prefix: str, seq: nn.Sequential) -> list:
    """Our `mlp()` Sequential (Linear, GELU[, LayerNorm] ..., Linear) <-> the official `MLP`: Dense_i, LayerNorm_i."""
    out, n_lin, n_ln = [], 0, 0
    for i, m in enumerate(seq):
        if isinstance(m, nn.Linear):
            out += [Entry(f"{flax_prefix}/Dense_{n_lin}/kernel", f"{torch_prefix}.{i}.weight", "T"),
                    Entry(f"{flax_prefix}/Dense_{n_lin}/bias", f"{torch_prefix}.{i}.bias", "same")]
            n_lin += 1
        elif isinstance(m, nn.LayerNorm):
            out += [Entry(f"{flax_prefix}/LayerNorm_{n_ln}/scale", f"{torch_prefix}.{i}.weight", "same"),
                    Entry(f"{flax_prefix}/LayerNorm_{n_ln}/bias", f"{torch_prefix}.{i}.bias", "same")]
            n_ln += 1
    return out


def critic(flax_prefix: str, torch_prefix: str, module: nn.Module) -> list:
    """Our batched `Critic` (weights[l] [num_qs, in, out], ...) <-> the official vmapped `MLP` ensemble."""
    out = []
    for l in range(len(module.weights)):
        out += [Entry(f"{flax_prefix}/Dense_{l}/kernel", f"{torch_prefix}.weights.{l}", "same"),
                Entry(f"{flax_prefix}/Dense_{l}/bias", f"{torch_prefix}.biases.{l}", "same")]
    for l in range(len(module.norm_weights)):
        out += [Entry(f"{flax_prefix}/LayerNorm_{l}/scale", f"{torch_prefix}.norm_weights.{l}", "same"),
                Entry(f"{flax_prefix}/LayerNorm_{l}/bias", f"{torch_prefix}.norm_biases.{l}", "same")]
    return out


def impala(flax_prefix: str, torch_prefix: str, module: nn.Module) -> list:
    """Our visual.ImpalaEncoder <-> the official `ImpalaEncoder` (utils/encoders.py): stack i is stack_blocks_i, its
    first conv Conv_0 and block j's two convs Conv_{2j+1}, Conv_{2j+2}; the Dense layer is MLP_0/Dense_0."""
    out = []
    for i, stack in enumerate(module.stacks):
        for j, conv in enumerate([stack.conv] + [c for block in stack.blocks for c in block]):
            name = f"stacks.{i}." + ("conv" if j == 0 else f"blocks.{(j - 1) // 2}.{(j - 1) % 2}")
            out += [Entry(f"{flax_prefix}/stack_blocks_{i}/Conv_{j}/kernel", f"{torch_prefix}.{name}.weight", "conv"),
                    Entry(f"{flax_prefix}/stack_blocks_{i}/Conv_{j}/bias", f"{torch_prefix}.{name}.bias", "same")]
    return out + [Entry(f"{flax_prefix}/MLP_0/Dense_0/kernel", f"{torch_prefix}.dense.weight", "T"),
                  Entry(f"{flax_prefix}/MLP_0/Dense_0/bias", f"{torch_prefix}.dense.bias", "same")]


def encoders(nets, flax_paths: dict) -> list:
    """The encoder of each network that has one (--encoder): {our network: official encoder path}. The critic's
    one is shared by its ensemble members; a network that the official agent also calls as '<name>_encoder' (FQL's
    and DeFlow's BC flow, DriftQL's generator) holds its encoder under that top-level module."""
    return [e for name, path in flax_paths.items() if hasattr(nets[name], "encoder")
            for e in impala(path, f"{name}.encoder", nets[name].encoder)]


# ---------------------------------------------------------------------------------------------------- per script
def fql(nets) -> list:
    """fql.py (and the FQL agents of DriftQL's and QC's repositories)."""
    return (critic("modules_critic/value_net", "critic", nets["critic"])
            + critic("modules_target_critic/value_net", "target_critic", nets["target_critic"])
            + mlp("modules_actor_bc_flow/mlp", "actor_bc_flow.net", nets["actor_bc_flow"].net)
            + mlp("modules_actor_onestep_flow/mlp", "actor_onestep_flow.net", nets["actor_onestep_flow"].net)
            + encoders(nets, dict(critic="modules_critic/encoder", target_critic="modules_target_critic/encoder",
                                  actor_bc_flow="modules_actor_bc_flow_encoder",
                                  actor_onestep_flow="modules_actor_onestep_flow/encoder")))


def acfql(nets) -> list:
    """fql.py with --horizon (Q-chunking, ColinQiyangLi/qc agents/acfql.py): FQL's modules; best-of-n builds no
    one-step actor (the official one is never trained)."""
    out = (critic("modules_critic/value_net", "critic", nets["critic"])
           + critic("modules_target_critic/value_net", "target_critic", nets["target_critic"])
           + mlp("modules_actor_bc_flow/mlp", "actor_bc_flow.net", nets["actor_bc_flow"].net))
    if "actor_onestep_flow" in nets:
        out += mlp("modules_actor_onestep_flow/mlp", "actor_onestep_flow.net", nets["actor_onestep_flow"].net)
    return out


def driftql(nets) -> list:
    """driftql.py: the generator is the official `actor_bc_drift` (an ActorVectorField without time input)."""
    return (critic("modules_critic/value_net", "critic", nets["critic"])
            + critic("modules_target_critic/value_net", "target_critic", nets["target_critic"])
            + mlp("modules_actor_bc_drift/mlp", "actor_bc_drift.net", nets["actor_bc_drift"].net)
            + encoders(nets, dict(critic="modules_critic/encoder", target_critic="modules_target_critic/encoder",
                                  actor_bc_drift="modules_actor_bc_drift_encoder")))


def deflow(nets) -> list:
    """deflow.py: BC flow, refinement (an ActorVectorField without time input), the scalar log alpha."""
    return (critic("modules_critic/value_net", "critic", nets["critic"])
            + critic("modules_target_critic/value_net", "target_critic", nets["target_critic"])
            + mlp("modules_actor_bc_flow/mlp", "actor_bc_flow.net", nets["actor_bc_flow"].net)
            + mlp("modules_refine_onestep_flow/mlp", "refine_onestep_flow.net", nets["refine_onestep_flow"].net)
            + [Entry("modules_log_alpha/value", "log_alpha.value", "same")]
            + encoders(nets, dict(critic="modules_critic/encoder", target_critic="modules_target_critic/encoder",
                                  actor_bc_flow="modules_actor_bc_flow_encoder",
                                  refine_onestep_flow="modules_refine_onestep_flow/encoder")))


# ---------------------------------------------------------------------------------------------------- use
TO_TORCH = dict(T=lambda a: a.T, conv=lambda a: a.transpose(3, 2, 0, 1), same=lambda a: a)  # flax -> our layout
TO_FLAX = dict(T=lambda a: a.T, conv=lambda a: a.transpose(2, 3, 1, 0), same=lambda a: a)


def check_complete(entries: list, flax_params, nets: nn.Module, official_only=()):
    """Every flax leaf and every torch parameter appears in exactly one entry, with the same number of values.
    official_only: flax modules we do not build (e.g. acfql's untrained one-step actor under best-of-n)."""
    leaves, params = flatten(flax_params), dict(nets.named_parameters())
    leaves = {p: v for p, v in leaves.items() if p.split("/")[0] not in official_only}
    paths, names = [e.path for e in entries], [e.torch_name for e in entries]
    assert len(set(paths)) == len(paths) and len(set(names)) == len(names), "an entry is listed twice"
    assert set(paths) == set(leaves), f"flax leaves not mapped: {sorted(set(leaves) - set(paths))}; " \
                                      f"mapped but absent: {sorted(set(paths) - set(leaves))}"
    assert set(names) == set(params), f"torch parameters not mapped: {sorted(set(params) - set(names))}; " \
                                      f"mapped but absent: {sorted(set(names) - set(params))}"
    for e in entries:
        assert leaves[e.path].size == params[e.torch_name].numel(), f"{e.path} vs {e.torch_name}: sizes differ"


def load(entries: list, flax_params, nets: nn.Module):
    """Copy the official parameters into our modules (their dtype is kept: call nets.double() first for float64)."""
    leaves, params = flatten(flax_params), dict(nets.named_parameters())
    with torch.no_grad():
        for e in entries:
            p, a = params[e.torch_name], leaves[e.path]
            p.copy_(torch.as_tensor(np.ascontiguousarray(TO_TORCH[e.layout](a))).reshape(p.shape))


def torch_view(entries: list, tensors: dict) -> dict:
    """Our tensors (parameters or gradients, by torch name) in the flax layout, keyed by flax path; entries whose
    tensor is absent (no gradient) are left out."""
    out = {}
    for e in entries:
        if e.torch_name in tensors:
            out[e.path] = TO_FLAX[e.layout](tensors[e.torch_name].detach().cpu().numpy())
    return out


# ---------------------------------------------------------------------------------------------------- qam
def qam(nets) -> list:
    """qam.py <-> the official QAMAgent (ColinQiyangLi/qam agents/qam.py): actor_slow = our actor_bc_flow, actor_fast
    = actor_ft_flow, one_step_actor = actor_onestep_flow (QAM-FQL), edit_actor (a TanhNormal: MLP_0 trunk, mean and
    log-std heads) = actor_edit and edit_alpha (QAM-EDIT). The official agent also allocates target_actor_fast, which
    its update never reads; the parity test removes it from the official parameters (the update then still runs)."""
    out = (critic("modules_critic/value_net", "critic", nets["critic"])
           + critic("modules_target_critic/value_net", "target_critic", nets["target_critic"])
           + mlp("modules_actor_slow/mlp", "actor_bc_flow.net", nets["actor_bc_flow"].net)
           + mlp("modules_target_actor_slow/mlp", "target_actor_bc_flow.net", nets["target_actor_bc_flow"].net)
           + mlp("modules_actor_fast/mlp", "actor_ft_flow.net", nets["actor_ft_flow"].net))
    if "actor_onestep_flow" in nets:
        out += mlp("modules_one_step_actor/mlp", "actor_onestep_flow.net", nets["actor_onestep_flow"].net)
    if "actor_edit" in nets:
        edit = nets["actor_edit"]
        out += mlp("modules_edit_actor/MLP_0", "actor_edit.trunk.0", edit.trunk[0])
        for flax_name, head in (("OutputDenseMean", "mean"), ("OutputDenseLogStd", "log_std")):
            out += [Entry(f"modules_edit_actor/{flax_name}/kernel", f"actor_edit.{head}.weight", "T"),
                    Entry(f"modules_edit_actor/{flax_name}/bias", f"actor_edit.{head}.bias", "same")]
        out.append(Entry("modules_edit_alpha/log_value", "edit_alpha.log_value", "same"))
    return out


# ---------------------------------------------------------------------------------------------------- dfp
def dfp(nets) -> list:
    """dfp.py <-> the official DriftAgent (KAIST-Visual-AI-Group/DFP agents/drift.py): the same four modules."""
    return (critic("modules_critic/value_net", "critic", nets["critic"])
            + critic("modules_target_critic/value_net", "target_critic", nets["target_critic"])
            + mlp("modules_actor_drift/mlp", "actor_drift.net", nets["actor_drift"].net)
            + mlp("modules_actor_drift_ema/mlp", "actor_drift_ema.net", nets["actor_drift_ema"].net))
