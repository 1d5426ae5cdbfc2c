"""common.Dataset.sample_chunks against the official `Dataset.sample_sequence` (ColinQiyangLi/qam utils/datasets.py
at f93efd2, which qam.py and dfp.py follow, and KAIST-Visual-AI-Group/DFP utils/datasets.py at babc3da), at every
start index of a dataset of short episodes (1 to 5 steps, so that chunks cross episode ends), for h = 1 .. 4.
Both samplers draw their start indices with one randint; here that draw returns every index once.

The official agents read the last column of the [B, h] fields: ours must equal it. DFP's vectorised sampler does not
stop rewards, masks and s' at an episode end; it differs from QAM's only on chunks with valid = 0, which every loss
weights out (the test checks both facts)."""
import importlib
import sys

import numpy as np
import pytest
import torch

import harness

LENGTHS = [3, 1, 5, 2, 1, 4, 2, 5, 3]  # episode lengths
OBS, ACT = 3, 2


def load_datasets(path):
    """`utils.datasets` of the checkout at `path` (another checkout's `utils` purged first)."""
    for k in [k for k in sys.modules if k.split(".")[0] in ("agents", "utils", "envs")]:
        del sys.modules[k]
    sys.path.insert(0, path)
    try:
        return importlib.import_module("utils.datasets")
    finally:
        sys.path.remove(path)


def episodes(seed=0):
    """Transitions of the episodes in LENGTHS: rewards in {-1, 0, 1, 2} (exact in float32 sums with discount 0.5),
    masks 0 at random steps, terminals 1 on each episode's last step, next_observations = the next row's observation
    inside an episode and a fresh one at its end."""
    rng = np.random.default_rng(seed)
    n = sum(LENGTHS)
    obs = rng.standard_normal((n, OBS)).astype(np.float32)
    terminals = np.zeros(n, np.float32)
    terminals[np.cumsum(LENGTHS) - 1] = 1
    next_obs = np.concatenate([obs[1:], rng.standard_normal((1, OBS)).astype(np.float32)])
    ends = terminals == 1
    next_obs[ends] = rng.standard_normal((int(ends.sum()), OBS)).astype(np.float32)
    return dict(observations=obs, actions=rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
                rewards=rng.integers(-1, 3, n).astype(np.float32), next_observations=next_obs,
                masks=(rng.random(n) < 0.7).astype(np.float32), terminals=terminals)


def ours_all_starts(data, h, discount, monkeypatch):
    import common
    ds = common.Dataset.from_numpy(data, torch.device("cpu"))
    starts = ds.size - h + 1

    def every_start(high, size, **k):
        assert (high, tuple(size)) == (starts, (starts,)), (high, size)
        return torch.arange(starts)
    monkeypatch.setattr(torch, "randint", every_start)
    out = ds.sample_chunks(starts, h, discount)
    monkeypatch.undo()
    return {k: v.numpy() for k, v in out.items()}


def theirs_all_starts(module, data, h, discount, monkeypatch):
    ds = module.Dataset.create(**{k: v.copy() for k, v in data.items()})
    starts = ds.size - h + 1

    def every_start(high, size=None, **k):
        assert (high, size) == (starts, starts), (high, size)
        return np.arange(starts)
    monkeypatch.setattr(np.random, "randint", every_start)
    out = ds.sample_sequence(starts, h, discount)
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("repo", ["OFFICIAL_QAM", "OFFICIAL_DFP"])
def test_chunk_sampler_every_start(repo, monkeypatch):
    path = harness.official(repo)
    module = load_datasets(path)
    name = "qam" if repo == "OFFICIAL_QAM" else "dfp"
    report = harness.Report("chunks", f"vs {name} sample_sequence")
    data = episodes()
    for h in (1, 2, 3, 4):
        worst = {}  # tolerance -> (worst error, where)
        for discount, tol in ((0.5, 0.0), (0.99, 1e-6)):  # 0.5: every sum exact in float32; 0.99: float32 powers
            ours = ours_all_starts(data, h, discount, monkeypatch)
            theirs = theirs_all_starts(module, data, h, discount, monkeypatch)
            last = dict(observations=theirs["observations"], actions=theirs["actions"],
                        rewards=theirs["rewards"][:, -1], masks=theirs["masks"][:, -1], valid=theirs["valid"][:, -1],
                        next_observations=theirs["next_observations"][:, -1])
            valid = last["valid"] == 1
            assert valid.any() and (h == 1 or not valid.all()), "chunks must cross episode ends"
            rows = slice(None) if name == "qam" else valid  # DFP: the rows that a loss reads
            for k in last:
                t = tol if k == "rewards" else 0.0
                err = harness.rel_err(ours[k][rows], last[k][rows])
                if err > worst.get(t, (-1.0, ""))[0]:
                    worst[t] = (err, f"{k} discount={discount}")
            if name == "dfp" and h > 1:  # where they differ, valid = 0 (the official critic loss weights those out)
                differ = ~np.isclose(ours["rewards"], last["rewards"]) | (ours["masks"] != last["masks"]) | \
                    np.any(ours["next_observations"] != last["next_observations"], 1)
                assert differ.any(), "the episodes should show where DFP's sampler differs"
                report.check(f"h={h} discount={discount} differs only where valid=0", float(np.any(differ & valid)),
                             0.0, f"rows {np.nonzero(differ & valid)[0]}")
        for t, (err, where) in sorted(worst.items()):
            report.check(f"h={h} every start, {'exact fields' if t == 0 else 'rewards (discount 0.99)'}", err, t,
                         where)
    report.assert_ok()
