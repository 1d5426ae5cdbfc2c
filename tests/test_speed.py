"""The speed work shared by the five scripts: the batched critic ensemble, the frozen critic of the actor's Q term,
--precision bf16 and --compile. Speed itself is measured by benchmark.py, never here."""
import dataclasses
import importlib

import pytest
import torch

SCRIPTS = ["fql", "driftql", "dfp", "qam", "deflow"]


# ---------------------------------------------------------------------------------------------------- batched ensemble
@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("num_qs,layer_norm", [(1, True), (2, True), (2, False), (10, True)])
def test_batched_critic_equals_a_loop_over_member_mlps(name, num_qs, layer_norm):
    mod = importlib.import_module(name)
    hidden, d, a = (32, 16, 24), 5, 3
    torch.manual_seed(0)
    loop = [mod.mlp(d + a, hidden, 1, layer_norm) for _ in range(num_qs)]  # the ensemble as it used to be
    torch.manual_seed(0)
    critic = mod.Critic(d, a, hidden, layer_norm, num_qs)
    # same seed, same draws: the members' initial weights are the loop's, not only the same distribution
    assert all(torch.equal(critic.state_dict()[k], v) for k, v in mod.Critic.stack(loop).items())
    with torch.no_grad():  # perturb every tensor so that biases and LayerNorm affines are not trivially 0 and 1
        for q in loop:
            for p in q.parameters():
                p.add_(0.1 * torch.randn_like(p))
    critic.load_state_dict(mod.Critic.stack(loop))
    obs, act = torch.randn(7, d), torch.rand(7, a) * 2 - 1
    want = torch.stack([q(torch.cat([obs, act], -1)).squeeze(-1) for q in loop])
    torch.testing.assert_close(critic(obs, act), want, rtol=1e-5, atol=1e-5)  # float rounding only
    # leading batch dims are kept: [num_qs, K, B]
    torch.testing.assert_close(critic(obs.expand(2, 7, d), act.expand(2, 7, a)), want.unsqueeze(1).expand(-1, 2, -1),
                               rtol=1e-5, atol=1e-5)
    # a checkpoint of the loop ensemble (keys qs.<member>.<layer>.*) loads into the batched one
    old = {f"qs.{j}.{k}": v for j, q in enumerate(loop) for k, v in q.state_dict().items()}
    fresh = mod.Critic(d, a, hidden, layer_norm, num_qs)
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh(obs, act), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError):  # an old checkpoint of other sizes still fails loudly
        mod.Critic(d, a, (32, 16, 8), layer_norm, num_qs).load_state_dict(old)


def test_batched_members_are_drawn_independently():
    import fql
    torch.manual_seed(0)
    critic = fql.Critic(29, 8, (512, 512), True, 10)
    w = critic.weights[0].flatten(1)  # [10, 37 * 512]
    corr = torch.corrcoef(w)
    assert float((corr - torch.eye(10)).abs().max()) < 0.05
    assert float(w.std(1).div((2 / (37 + 512)) ** 0.5).sub(1).abs().max()) < 0.05  # Xavier-uniform std


def test_a_checkpoint_of_the_loop_ensemble_refuses_resume_in_one_line(tmp_path):
    import fql
    from conftest import run_dir_of
    args = fql.Args(env_id="bandit-4gaussian", actor_hidden_dims=(8,), value_hidden_dims=(8,), batch_size=16,
                    eval_interval=2, device="cpu", offline_steps=2, runs_dir=str(tmp_path / "a"))
    fql.main(args)
    path = f"{run_dir_of(tmp_path / 'a')}/fql.pt"
    payload = torch.load(path, weights_only=True)
    want = dict(payload["nets"])
    nets = payload["nets"]  # rewrite the critics in the layout of the loop ensemble: qs.<member>.<layer>.*
    for c in ("critic", "target_critic"):
        for j in range(2):
            for i, l in ((0, 0), (3, 1)):
                nets[f"{c}.qs.{j}.{i}.weight"] = want[f"{c}.weights.{l}"][j].T.clone()
                nets[f"{c}.qs.{j}.{i}.bias"] = want[f"{c}.biases.{l}"][j, 0].clone()
            nets[f"{c}.qs.{j}.2.weight"] = want[f"{c}.norm_weights.0"][j, 0].clone()
            nets[f"{c}.qs.{j}.2.bias"] = want[f"{c}.norm_biases.0"][j, 0].clone()
        for k in [k for k in nets if k.startswith(f"{c}.") and ".qs." not in k]:
            del nets[k]
    torch.save(payload, path)
    fresh = fql.make_nets(args, 2, 2)  # the bandit: 2-D obs, 2-D action
    fresh.load_state_dict(payload["nets"])  # its networks load ...
    assert all(torch.equal(v, want[k]) for k, v in fresh.state_dict().items())
    with pytest.raises(ValueError, match="predates the batched critic ensemble.*start a new run"):  # ... resume not
        fql.main(dataclasses.replace(args, offline_steps=4, runs_dir=str(tmp_path / "b"), resume=path))
