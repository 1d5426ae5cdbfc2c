"""common.Dataset.sample_chunks against the official sample_sequence (github.com/ColinQiyangLi/qc,
utils/datasets.py at 48283b4) at every start index of a dataset with episodes of 1 to 7 steps, so that chunks start
at, run into and run past episode ends. Set OFFICIAL_QC to the checkout.

Where the chunk stays in its episode up to its last action (official valid[..., -1] = 1, the samples the critic
trains on) every field must agree. Past an episode end the two differ by design and both weight the sample out:
ours stops R, the mask and s' at the end (common.py), the official code sums on; the actions, the per-step valid and
the observation must still agree."""
import unittest.mock

import numpy as np
import pytest
import torch

import harness

H, DISCOUNT = 4, 0.9


def episodes(rng, n=12):
    """A dataset of n episodes of 1..7 steps: random transitions, terminals on each episode's last step, masks 0 on
    some terminals (solved) and 1 elsewhere."""
    lengths = rng.integers(1, 8, n)
    size = int(lengths.sum())
    terminals = np.zeros(size)
    terminals[np.cumsum(lengths) - 1] = 1
    masks = 1 - terminals * (rng.random(size) < 0.5)
    return dict(observations=rng.standard_normal((size, 3)), actions=rng.uniform(-1, 1, (size, 2)),
                rewards=rng.standard_normal(size), next_observations=rng.standard_normal((size, 3)),
                masks=masks, terminals=terminals)


@pytest.mark.parametrize("horizon", [1, 2, H])
def test_sample_chunks_every_start(horizon):
    path = harness.official("OFFICIAL_QC")
    import common
    if not hasattr(common.Dataset, "sample_chunks"):
        pytest.skip("common.py has no sample_chunks yet")
    report = harness.Report("chunks", f"sample_chunks h={horizon} float32")
    import importlib
    import sys
    harness.load_agent(path, "acfql")  # puts the checkout's utils/ in sys.modules
    sys.path.insert(0, path)
    try:
        datasets = importlib.import_module("utils.datasets")
    finally:
        sys.path.remove(path)
    data = episodes(np.random.default_rng(0))
    size = len(data["rewards"])
    starts = np.arange(size - horizon + 1)
    theirs_ds = datasets.Dataset.create(**{k: v.astype(np.float32) for k, v in data.items()})
    with unittest.mock.patch.object(np.random, "randint", lambda high, size=None: starts):
        theirs = theirs_ds.sample_sequence(len(starts), sequence_length=horizon, discount=DISCOUNT)
    ours_ds = common.Dataset.from_numpy(data, torch.device("cpu"))
    with unittest.mock.patch.object(torch, "randint", lambda high, size, **k: torch.as_tensor(starts)):
        ours = {k: v.numpy() for k, v in ours_ds.sample_chunks(len(starts), horizon, DISCOUNT).items()}
    ok = np.asarray(theirs["valid"])[:, -1] == 1
    assert ok.any() and (horizon == 1 or not ok.all()), "the dataset must have chunks on both sides of an end"
    t_obs = np.asarray(theirs["observations"])
    t_obs = t_obs[:, 0] if t_obs.ndim == 3 else t_obs
    pairs = [("observations", ours["observations"], t_obs, slice(None)),
             ("actions", ours["actions"], np.asarray(theirs["actions"]), slice(None)),
             ("valid_steps (per-step valid)", ours["valid_steps"], np.asarray(theirs["valid"]), slice(None)),
             ("valid", ours["valid"], np.asarray(theirs["valid"])[:, -1], slice(None)),
             ("rewards (valid chunks)", ours["rewards"], np.asarray(theirs["rewards"])[:, -1], ok),
             ("masks (valid chunks)", ours["masks"], np.asarray(theirs["masks"])[:, -1], ok),
             ("next_observations (valid chunks)", ours["next_observations"],
              np.asarray(theirs["next_observations"])[:, -1], ok)]
    for name, o, t, keep in pairs:
        report.check(name, harness.rel_err(o[keep], t[keep]), 1e-6, f"h={horizon}")
    report.assert_ok()
