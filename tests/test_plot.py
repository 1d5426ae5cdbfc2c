"""plot.py on run folders in the scripts' format: grouping, final-score numbers, figures, and a real run's folder."""
import csv
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

import driftql
import fql
import plot
from conftest import MAZE_ID, run_dir_of

CUBE = "cube-single-play-singletask-task2-v0"


def write_run(root, name, mod, rows, **flags):
    """A run folder as the scripts write it: args.json (every flag of the script) and eval.csv."""
    d = root / name
    d.mkdir(parents=True)
    args = dataclasses.asdict(mod.Args(**flags))
    (d / "args.json").write_text(json.dumps({"script": mod.__name__, **args}))
    with open(d / "eval.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def rows(steps, **cols):
    return [{"step": s, **{k: v[i] for k, v in cols.items()}} for i, s in enumerate(steps)]


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    steps = [1, 10, 20, 30, 40]
    # FQL alpha 10 on cube, 3 seeds; the bookkeeping flags differ between seeds, which must not split the group
    for seed, succ, bc in [(0, [0, .1, .2, .4, .6], [0, 0, .1, .1, .1]), (1, [0, .2, .4, .6, .8], [0, 0, 0, 0, .3]),
                           (2, [0, .1, .3, .5, .7], [0, .1, .1, .1, .2])]:
        write_run(root, f"cube__fql__{seed}", fql, rows(steps, success_rate=succ, episodic_return=[-1] * 5,
                  bc_flow_success_rate=bc), env_id=CUBE, seed=seed, alpha=10.0, eval_bc_flow=True,
                  runs_dir=f"elsewhere{seed}", exp_name=f"fql_s{seed}", device=["cpu", "cuda", "auto"][seed],
                  offline_steps=40, eval_interval=10)
    # FQL alpha 300: one seed, stopped at step 20 and continued with --resume in a second folder
    write_run(root, "cube__fql300__0__a", fql, rows([1, 10, 20], success_rate=[0, .5, .5], episodic_return=[0] * 3),
              env_id=CUBE, alpha=300.0, offline_steps=20)
    write_run(root, "more/cube__fql300__0__b", fql, rows([30, 40], success_rate=[.9, 1.0], episodic_return=[0] * 2),
              env_id=CUBE, alpha=300.0, offline_steps=40, resume="runs/cube__fql300__0__a/fql.pt")
    # DriftQL on cube, 2 seeds
    for seed, succ in [(0, [0, .2, .2, .2, .2]), (1, [0, .4, .4, .4, .4])]:
        write_run(root, f"cube__driftql__{seed}", driftql, rows(steps, success_rate=succ, episodic_return=[-1] * 5),
                  env_id=CUBE, seed=seed)
    # the bandit has no success rate: the return is the metric
    write_run(root, "bandit__fql__0", fql, rows([1, 5000], episodic_return=[-40.0, 4.5], frac_right=[0, .5]),
              env_id="bandit-4gaussian")
    return root


def test_runs_are_grouped_by_script_task_and_flags_and_scored_exactly(runs, tmp_path, capsys):
    out = plot.main(plot.Args(folders=(str(runs),), out=str(tmp_path / "fig"), resamples=500))
    table = {(r["task"], r["method"]): r for r in out["table"]}
    assert set(table) == {(CUBE, "fql"), (CUBE, "fql: flow BC"), (CUBE, "fql --alpha 300"),
                          (CUBE, "driftql"), ("bandit-4gaussian", "fql")}
    fql10 = table[CUBE, "fql"]
    # last 3 evaluations per seed: 0.4, 0.6, 0.5 -> mean 0.5 over 3 seeds
    assert fql10["metric"] == "success_rate" and fql10["seeds"] == 3 and fql10["steps"] == "40"
    np.testing.assert_allclose(fql10["finals"], [0.4, 0.6, 0.5])
    assert fql10["mean"] == pytest.approx(0.5)
    assert 0.4 <= fql10["ci"][0] < 0.5 < fql10["ci"][1] <= 0.6
    assert table[CUBE, "fql: flow BC"]["mean"] == pytest.approx((0.1 + 0.1 + 0.4 / 3) / 3)
    # the resumed seed is one run of 5 evaluations: last 3 = 0.5, 0.9, 1.0
    fql300 = table[CUBE, "fql --alpha 300"]
    assert fql300["seeds"] == 1 and fql300["mean"] == pytest.approx(0.8) and np.isnan(fql300["ci"][0])
    assert table[CUBE, "driftql"]["mean"] == pytest.approx(0.3) and table[CUBE, "driftql"]["seeds"] == 2
    bandit = table["bandit-4gaussian", "fql"]
    # one evaluation after the start: the score is that one, never the untrained step-1 policy's -40
    assert bandit["metric"] == "episodic_return" and bandit["mean"] == pytest.approx(4.5)
    # the printed markdown table carries the same numbers, and so does final_scores.md
    printed = capsys.readouterr().out
    assert f"| {CUBE} | fql | success_rate | 0.500 | [" in printed
    assert f"| {CUBE} | fql --alpha 300 | success_rate | 0.800 | runs: 0.800 | 1: 0 | 40 | ? |" in printed  # no CI
    assert "| 3: 0, 1, 2 | 40 | ? |" in printed  # seeds and code (these folders recorded no commit)
    assert "note: bandit-4gaussian, fql: fewer than --last 3 evaluations after step 1 for seed(s) 0 (1)" in printed
    final_scores = printed.split("bandit.md:")[0]  # then the bandit's table
    table_lines = "\n".join(line for line in final_scores.splitlines() if line.startswith("|"))
    assert (tmp_path / "fig" / "final_scores.md").read_text().strip() == table_lines
    # aggregate: the IQM of the pooled finals, a CI around it
    agg = {(r["method"], r["metric"]): r for r in out["aggregate"]}  # "fql" on both tasks, never pooled across metrics
    assert agg["fql", "success_rate"]["iqm"] == pytest.approx(0.5)
    assert agg["fql", "episodic_return"]["iqm"] == pytest.approx(4.5)
    lo, hi = agg["fql", "success_rate"]["ci"]
    assert 0.4 <= lo <= 0.5 <= hi <= 0.6
    for name in (CUBE, "bandit-4gaussian", "aggregate"):
        png = tmp_path / "fig" / f"{name}.png"
        assert Image.open(png).size[0] > 300


def test_iqm_is_the_mean_of_the_middle_half_and_the_stratified_ci_resamples_within_tasks():
    assert plot.iqm(np.array([100.0, 1, 2, 3, 4, 5, 6, -50])) == pytest.approx(3.5)
    assert plot.iqm(np.arange(10.0)) == pytest.approx(np.mean([2, 3, 4, 5, 6, 7]))
    rng = np.random.default_rng(0)
    # every resample keeps the per-task counts: constant tasks give a CI of width 0
    # (12 scores: 3 ones, 5 twos, 4 threes; the IQM drops 3 at each end: mean of 2, 2, 2, 2, 2, 3)
    assert plot.stratified_bootstrap_ci([np.full(3, 1.0), np.full(5, 2.0), np.full(4, 3.0)], rng, 200) == (
        pytest.approx(13 / 6), pytest.approx(13 / 6))
    lo, hi = plot.stratified_bootstrap_ci([np.array([0.0, 1.0]), np.array([5.0, 6.0])], rng, 500)
    assert lo < hi and 0 <= lo and hi <= 6


def test_bad_input_gets_one_error_line(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="error: no run folder"):
        plot.main(plot.Args(folders=(str(tmp_path / "empty"),), out=str(tmp_path / "o")))
    with pytest.raises(SystemExit, match="error: --metric frac_left is not a column of .*eval.csv"):
        plot.main(plot.Args(folders=(str(runs),), out=str(tmp_path / "o"), metric="frac_left"))
    with pytest.raises(SystemExit, match="error: .*nowhere is not a folder"):
        plot.main(plot.Args(folders=(str(tmp_path / "nowhere"),), out=str(tmp_path / "o")))


def test_a_real_run_folder_is_read(tmp_path):
    fql.main(fql.Args(env_id="bandit-4gaussian", actor_hidden_dims=(8,), value_hidden_dims=(8,), batch_size=16,
                      offline_steps=20, eval_interval=5, device="cpu", runs_dir=str(tmp_path / "runs")))
    returns = [float(r["episodic_return"]) for r in csv.DictReader(open(f"{run_dir_of(tmp_path / 'runs')}/eval.csv"))]
    assert len(returns) == 5  # steps 1, 5, 10, 15, 20
    out = plot.main(plot.Args(folders=(str(tmp_path / "runs"),), out=str(tmp_path / "fig"), resamples=100))
    (row,) = out["table"]
    assert (row["task"], row["method"], row["metric"], row["seeds"], row["steps"]) == (
        "bandit-4gaussian", "fql", "episodic_return", 1, "20")
    assert row["mean"] == pytest.approx(np.mean(returns[-3:]))
    assert (tmp_path / "fig" / "bandit-4gaussian.png").stat().st_size > 0


def test_a_run_from_before_a_flag_existed_groups_with_the_runs_at_its_default(tmp_path):
    root = tmp_path / "runs"
    steps = [1, 10, 20]
    write_run(root, "old", fql, rows(steps, success_rate=[0, .2, .4]), env_id=CUBE, seed=0)
    old = json.loads((root / "old" / "args.json").read_text())
    del old["precision"]  # args.json written before --precision existed
    (root / "old" / "args.json").write_text(json.dumps(old))
    write_run(root, "new", fql, rows(steps, success_rate=[0, .4, .6]), env_id=CUBE, seed=1, precision="fp32")
    write_run(root, "bf16", fql, rows(steps, success_rate=[0, .1, .1]), env_id=CUBE, seed=0, precision="bf16")
    series, _, _, _ = plot.group_series(plot.read_runs((str(root),)), None)
    assert {m: sorted(s) for (_, m), s in series.items()} == {"fql": [0, 1], "fql --precision bf16": [0]}


def test_the_aggregate_never_pools_two_metrics(runs, tmp_path):
    write_run(runs, "bandit__driftql__0", driftql, rows([1, 100], episodic_return=[-40.0, 2.0]),
              env_id="bandit-4gaussian")
    record = json.loads((runs / "bandit__driftql__0" / "args.json").read_text())
    (runs / "bandit__driftql__0" / "args.json").write_text(json.dumps({**record, "run": {"commit": "abcdef123456"}}))
    out = plot.main(plot.Args(folders=(str(runs),), out=str(tmp_path / "fig"), resamples=50))
    assert [r["commits"] for r in out["table"] if r["method"] == "driftql"] == [["abcdef1"], ["?"]]  # bandit, cube
    driftql_rows = sorted((r["metric"], r["tasks"], r["iqm"]) for r in out["aggregate"] if r["method"] == "driftql")
    assert driftql_rows == [("episodic_return", 1, 2.0), ("success_rate", 1, pytest.approx(0.3))]


def test_the_aggregate_compares_methods_on_the_same_tasks_only(runs, tmp_path):
    # FQL (alpha 10) also on a second task, where it scores 1.0: DriftQL ran on the cube only
    for seed in range(3):
        write_run(runs, f"maze__fql__{seed}", fql, rows([1, 10, 20, 30], success_rate=[0, 1, 1, 1]), env_id=MAZE_ID,
                  seed=seed, alpha=10.0)
    out = plot.main(plot.Args(folders=(str(runs),), out=str(tmp_path / "fig"), resamples=50))
    panels = {}
    for r in out["aggregate"]:
        if r["metric"] == "success_rate":
            panels.setdefault(r["task_set"], {})[r["method"]] = r
    both = tuple(sorted((CUBE, MAZE_ID)))
    assert set(panels) == {both, (CUBE,)}
    assert set(panels[both]) == {"fql"}  # DriftQL has no maze runs: it is not set beside FQL's two-task score
    fql_both = panels[both]["fql"]
    assert fql_both["fewest_seeds"] == 3 and fql_both["runs"] == 6
    assert fql_both["iqm"] == pytest.approx(0.775)  # the IQM of 0.4, 0.5, 0.6, 1, 1, 1
    # on the cube alone both are there, FQL with its cube runs only (0.4, 0.6, 0.5)
    assert {"fql", "driftql"} <= set(panels[(CUBE,)])
    assert panels[(CUBE,)]["fql"]["iqm"] == pytest.approx(0.5) and panels[(CUBE,)]["fql"]["runs"] == 3
    assert panels[(CUBE,)]["driftql"]["iqm"] == pytest.approx(0.3)


def test_online_runs_get_a_row_with_the_switch_their_control_and_the_episodes_at_the_goal(tmp_path):
    root = tmp_path / "runs"
    for seed, (online, control) in enumerate([([0, .2, .4, .6, .8], [0, .2, .1, .1, .1]),
                                              ([0, 0, .4, 1.0, 1.0], [0, 0, .3, .2, .4])]):
        write_run(root, f"ctl{seed}", fql, rows([1, 10, 20, 30, 40], success_rate=control, bc_flow_success_rate=[0] * 5),
                  env_id=CUBE, seed=seed, offline_steps=40)
        write_run(root, f"o2o{seed}", fql, rows([1, 10, 20, 30, 40], success_rate=online,
                                                bc_flow_success_rate=[0, 0, 0, "", ""]),  # not evaluated online
                  env_id=CUBE, seed=seed, offline_steps=20, online_steps=20, balanced_sampling=True)
        with open(root / f"o2o{seed}" / "online.csv", "w") as f:
            f.write("step,episodic_return,episodic_length,success\n" + "".join(
                f"{21 + i},-5,5,{int(i < seed + 1)}\n" for i in range(3)))
    out = plot.main(plot.Args(folders=(str(root),), out=str(tmp_path / "fig"), resamples=50))
    (row,) = out["online"]
    assert row["row"]["method"] == "fql --balanced-sampling --online-steps 20"
    assert row["control"]["method"] == "fql"  # its flags at their defaults
    assert row["switch"] == [20] and row["at_switch"] == pytest.approx(0.4)  # seeds at step 20: 0.4, 0.4
    assert row["row"]["mean"] == pytest.approx(np.mean([.6, .8]))  # last 3 after step 1, averaged over seeds
    assert row["control"]["mean"] == pytest.approx(np.mean([.1, .3]))
    assert (row["goal"], row["episodes"]) == (3, 6)
    # the online runs' blank flow-BC cells are not evaluations: their flow-BC series ends at the switch
    bc = [r for r in out["table"] if r["method"] == "fql --balanced-sampling --online-steps 20: flow BC"]
    assert bc[0]["steps"] == "20" and bc[0]["mean"] == 0
    assert "| 3 of 6 |" in (tmp_path / "fig" / "online.md").read_text()


def test_bandit_runs_get_their_fractions_at_the_last_evaluation(runs, tmp_path):
    write_run(runs, "bandit__fql__1", fql, rows([1, 5000], episodic_return=[-40.0, 1.5], frac_right=[0, .7]),
              env_id="bandit-4gaussian", seed=1)
    out = plot.main(plot.Args(folders=(str(runs),), out=str(tmp_path / "fig"), resamples=50))
    (row,) = out["bandit"]  # the cube runs have no frac_* columns
    assert (row["method"], row["seeds"], row["step"]) == ("fql", [0, 1], 5000)
    assert row["frac_right"] == pytest.approx(0.6) and row["episodic_return"] == pytest.approx(3.0)
    assert "| bandit-4gaussian | fql | 2: 0, 1 | 5000 | 0.600 | 3.00 |" in (tmp_path / "fig" / "bandit.md").read_text()


def test_a_flag_in_a_label_is_written_as_typed():
    assert plot.fmt_flag("alpha", 50.0) == "--alpha 50"
    assert plot.fmt_flag("actor_ema_tau", 0.001) == "--actor-ema-tau 0.001"
    assert plot.fmt_flag("actor_hidden_dims", [64, 64]) == "--actor-hidden-dims 64 64"
    assert plot.fmt_flag("drift_temps", [0.2, 1.0]) == "--drift-temps 0.2 1"
    assert plot.fmt_flag("same_state_positives", False) == "--no-same-state-positives"
    assert plot.fmt_flag("actor_type", "best-of-n") == "--actor-type best-of-n"


def test_a_rows_ci_does_not_move_when_other_runs_join_the_folder(runs, tmp_path):
    """Each row draws its bootstrap from --seed and its own name: adding another method's seeds (here a third DriftQL
    seed, which gives DriftQL a CI of its own) leaves FQL's interval as it was."""
    ci = lambda: {(r["task"], r["method"]): r["ci"] for r in plot.main(plot.Args(  # noqa: E731
        folders=(str(runs),), out=str(tmp_path / "fig"), resamples=200))["table"]}
    before = ci()
    write_run(runs, "cube__driftql__2", driftql, rows([1, 10, 20, 30, 40], success_rate=[0, .1, .3, .1, .2],
              episodic_return=[-1] * 5), env_id=CUBE, seed=2)
    after = ci()
    assert np.isnan(before[CUBE, "driftql"][0]) and not np.isnan(after[CUBE, "driftql"][0])
    assert after[CUBE, "fql"] == before[CUBE, "fql"] and after[CUBE, "fql: flow BC"] == before[CUBE, "fql: flow BC"]
