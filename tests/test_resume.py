"""--resume: every script continues a run from its checkpoint (networks, targets, optimizer, step)."""
import csv
import importlib

import pytest
import torch

import common
from conftest import run_dir_of

SCRIPTS = ("fql", "driftql", "dfp", "qam", "deflow")
TINY = dict(env_id="bandit-4gaussian", actor_hidden_dims=(8,), value_hidden_dims=(8,), batch_size=16, eval_interval=2,
            device="cpu")


def tiny_args(mod, **kw):
    extra = dict(horizon=1, num_qs=2, flow_steps=2) if mod.__name__ == "qam" else {}
    return mod.Args(**{**TINY, **extra, **kw})


@pytest.mark.parametrize("name", SCRIPTS)
def test_resume_continues_from_the_checkpoint_step_with_its_state(name, tmp_path):
    mod = importlib.import_module(name)
    mod.main(tiny_args(mod, offline_steps=4, runs_dir=str(tmp_path / "a")))
    ckpt = f"{run_dir_of(tmp_path / 'a')}/{name}.pt"
    saved = common.load_checkpoint(ckpt, name, torch.device("cpu"))
    assert saved["step"] == 4
    # the state goes back in exactly: networks (targets and EMA copies included) and Adam's moments and step count
    args = tiny_args(mod)
    torch.manual_seed(1)
    nets = mod.make_nets(args, 2, 2)
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=args.lr)
    assert common.resume(ckpt, name, nets, opt, torch.device("cpu")) == 4
    for k, v in nets.state_dict().items():
        assert torch.equal(v, saved["nets"][k]), k
    assert all(int(s["step"]) == 4 for s in opt.state_dict()["state"].values())
    # main picks up at step 5: no step-1 evaluation, the final one at 6, and the new checkpoint says 6
    mod.main(tiny_args(mod, offline_steps=6, runs_dir=str(tmp_path / "b"), resume=ckpt))
    d = run_dir_of(tmp_path / "b")
    assert [r["step"] for r in csv.DictReader(open(f"{d}/eval.csv"))] == ["6"]
    assert common.load_checkpoint(f"{d}/{name}.pt", name, torch.device("cpu"))["step"] == 6


def test_resume_refuses_other_flags_and_other_scripts(tmp_path):
    fql, driftql = importlib.import_module("fql"), importlib.import_module("driftql")
    fql.main(tiny_args(fql, offline_steps=2, runs_dir=str(tmp_path / "a")))
    ckpt = f"{run_dir_of(tmp_path / 'a')}/fql.pt"
    with pytest.raises(ValueError, match="does not fit these networks.*flags it was trained with"):
        fql.main(tiny_args(fql, offline_steps=4, actor_hidden_dims=(16,), runs_dir=str(tmp_path / "b"), resume=ckpt))
    with pytest.raises(ValueError, match="written by fql.py, not driftql.py"):
        driftql.main(tiny_args(driftql, offline_steps=4, runs_dir=str(tmp_path / "c"), resume=ckpt))


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(name, tmp_path):
    """The checkpoint carries torch's random streams, so 4 steps + --resume to 6 draw the batches and noise of 6."""
    mod = importlib.import_module(name)
    mod.main(tiny_args(mod, offline_steps=6, runs_dir=str(tmp_path / "whole")))
    mod.main(tiny_args(mod, offline_steps=4, runs_dir=str(tmp_path / "a")))
    ckpt = f"{run_dir_of(tmp_path / 'a')}/{name}.pt"
    mod.main(tiny_args(mod, offline_steps=6, runs_dir=str(tmp_path / "b"), resume=ckpt))
    whole, resumed = (common.load_checkpoint(f"{run_dir_of(tmp_path / d)}/{name}.pt", name, torch.device("cpu"))["nets"]
                      for d in ("whole", "b"))
    for k, v in whole.items():
        assert torch.equal(v, resumed[k]), k
