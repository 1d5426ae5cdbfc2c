"""Learning curves and final scores from run folders: the folders the five scripts write, each with eval.csv and
args.json.

Runs are grouped by script, task (--env-id) and flags; a group is named by the flags that tell it from the script's
other groups on the task where it sets them away from their default ("fql --horizon 5"). The seed and the bookkeeping
flags (BOOKKEEPING: run folder, experiment name, --resume, device, logging, evaluation schedule, step budget) are set
aside, and the folders of one seed (a run and its --resume continuations) are joined in step order. When a run also
evaluated the flow-BC baseline (--eval-bc-flow), that baseline is a method of its own, "<script>: flow BC".
- One PNG per task: the mean over seeds at every evaluation step, with a 95 % bootstrap band where 3 or more seeds
  have it.
- A markdown table of final scores (printed and written to final_scores.md): the final score of a run is the mean of
  its last 3 evaluations after step 1; the table gives the mean over seeds, its 95 % bootstrap CI from 3 or more
  seeds (else each run's score) and the number of seeds.
- aggregate.png: one panel per metric and set of tasks, holding the methods that ran on all those tasks (a method
  with more tasks is also shown on fewer, so methods are only compared on the same tasks): per method, the
  interquartile mean (IQM) of its runs' final scores on those tasks, with a 95 % stratified bootstrap CI (seeds
  resampled within each task; drawn where each task has 3 or more seeds), the protocol of Agarwal et al., "Deep RL
  at the Edge of the Statistical Precipice" (NeurIPS 2021). Their rliable package (1.2.0) does not import next to
  pandas 3 (its arch dependency breaks) and does not run with arch 8, so the IQM and the bootstrap are written out
  below.
- online.md, for offline-to-online runs (run folders with online.csv): per group, the switch, the success there, the
  final score, that of its offline control (the same flags apart from the online-only ones) and the online episodes
  that reached the goal.
- bandit.md, for the toy bandit's runs: each mode's fraction of the samples at the last evaluation, mean over seeds.
The metric is success_rate on OGBench tasks, else normalized_score where the run logged it, else episodic_return
(--metric picks another eval.csv column).

    python plot.py runs
    python plot.py runs /data/more_runs --out figures --metric episodic_return
"""
import csv
import dataclasses
import importlib
import json
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import tyro


@dataclass
class Args:
    folders: tyro.conf.Positional[tuple[str, ...]] = ("runs",)
    """folders searched at any depth for run folders (a folder with eval.csv and args.json)"""
    out: str = "plots"
    """folder for <task>.png, aggregate.png and final_scores.md"""
    metric: Optional[str] = None
    """eval.csv column to show; default: success_rate on OGBench, else normalized_score where logged, else
    episodic_return"""
    last: int = 3
    """the final score of a run is the mean of its last this many evaluations"""
    resamples: int = 2000
    """bootstrap resamples of every confidence interval"""
    seed: int = 0
    """seed of the bootstrap"""


# flags that do not change what a run trains or measures: set aside when runs are grouped
BOOKKEEPING = {"script", "run", "env_id", "seed", "exp_name", "runs_dir", "resume", "device", "torch_deterministic",
               "track", "compile", "wandb_project_name", "wandb_entity", "save_model", "save_interval", "log_interval",
               "eval_interval", "offline_steps", "eval_bc_flow"}


# ---------------------------------------------------------------------------------------------------- reading
def read_runs(folders: tuple) -> list:
    """Every run folder under `folders`: its folder, args.json as a dict and eval.csv as {column: [values]}."""
    runs = []
    for folder in folders:
        if not Path(folder).is_dir():
            raise SystemExit(f"error: {folder} is not a folder; pass folders that hold run folders (e.g. runs)")
        for f in sorted(Path(folder).rglob("eval.csv")):
            if not (f.parent / "args.json").exists():
                continue
            try:
                rows = list(csv.DictReader(open(f, newline="")))
                number = lambda v: float(v) if v not in ("", None) else np.nan  # noqa: E731
                cols = {k: np.array([number(r[k]) for r in rows]) for k in rows[0]} if rows else {}
            except (UnicodeDecodeError, csv.Error, ValueError, TypeError) as e:
                raise SystemExit(f"error: {f} is not an eval.csv of numbers ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:80]}); remove it or the run folder") from None
            if "step" not in cols:  # empty, or a header only: a run that has not evaluated yet
                print(f"note: skipped {f}: no evaluation rows yet")
                continue
            try:
                flags = json.loads((f.parent / "args.json").read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SystemExit(f"error: {f.parent / 'args.json'} is not JSON ({type(e).__name__}); restore it from "
                                 "the run's command or remove the run folder") from None
            runs.append(dict(dir=f.parent, args=flags, cols=cols))
    if not runs:
        raise SystemExit(f"error: no run folder (eval.csv next to args.json) under {', '.join(folders)}")
    return runs


def task_metric(runs: list, override: Optional[str]) -> str:
    """The column shown for one task's runs (see the module docstring); every run must have it."""
    have = lambda m: all(m in r["cols"] for r in runs)  # noqa: E731
    if override is not None:
        missing = [str(r["dir"]) for r in runs if override not in r["cols"]]
        if missing:
            raise SystemExit(f"error: --metric {override} is not a column of {missing[0]}/eval.csv "
                             f"(it has {', '.join(runs[0]['cols'])})")
        return override
    if "singletask" in runs[0]["args"]["env_id"] and have("success_rate"):
        return "success_rate"
    return "normalized_score" if have("normalized_score") else "episodic_return"


def script_defaults(script: str) -> dict:
    """The flag defaults of a script next to plot.py, as args.json writes them ({} for a script that is not here).
    A run folder written before a flag existed lacks it; it ran as that flag's default (each new flag defaults to the
    behaviour before it), so the default fills it in and such a run groups with the runs that pass the default."""
    try:
        return json.loads(json.dumps(dataclasses.asdict(importlib.import_module(script).Args())))
    except (ImportError, AttributeError, TypeError):
        return {}


def group_series(runs: list, override: Optional[str]) -> tuple:
    """-> series {(task, method): {seed: {step: value}}}, the metric of each task, the commits of each (task,
    method) (`run.commit` of args.json, short; '?' for a run folder that did not record it) and the run folders of
    each (task, method). The method is the script, plus the flags that differ between that script's groups on the task
    (the seed and BOOKKEEPING aside) where the group sets them away from the script's default: the flags one types."""
    by_task = defaultdict(list)
    for r in runs:
        by_task[r["args"]["env_id"]].append(r)
    series, metrics, commits = defaultdict(lambda: defaultdict(dict)), {}, defaultdict(set)
    members = defaultdict(list)  # (task, method) -> its run folders, each with its flags (the seed and BOOKKEEPING aside)
    for task, task_runs in by_task.items():
        metric = metrics[task] = task_metric(task_runs, override)
        flags = {id(r): {k: v for k, v in {**script_defaults(r["args"]["script"]), **r["args"]}.items()
                         if k not in BOOKKEEPING} for r in task_runs}
        for script in sorted({r["args"]["script"] for r in task_runs}):
            mine = [r for r in task_runs if r["args"]["script"] == script]
            varying = sorted(k for k in set().union(*(flags[id(r)] for r in mine))
                             if len({json.dumps(flags[id(r)].get(k)) for r in mine}) > 1)
            default = script_defaults(script)  # a label names the varying flags a run sets away from the default
            # a run and its --resume continuations: the later folder wins where their steps overlap
            for r in sorted(mine, key=lambda r: (r["cols"]["step"][0], str(r["dir"]))):
                method = " ".join([script] + [fmt_flag(k, flags[id(r)].get(k)) for k in varying
                                              if k not in default or flags[id(r)].get(k) != default[k]])
                members[task, method].append({**r, "flags": flags[id(r)]})
                for name, col in ((method, metric), (f"{method}: flow BC", f"bc_flow_{metric}")):
                    if col in r["cols"] and not np.isnan(r["cols"][col]).all():  # blank: not evaluated there
                        keep = ~np.isnan(r["cols"][col])
                        series[task, name][r["args"]["seed"]].update(zip(r["cols"]["step"][keep].astype(int).tolist(),
                                                                        r["cols"][col][keep].tolist()))
                        commits[task, name].add((r["args"].get("run") or {}).get("commit") or "?")
    return series, metrics, commits, members


def fmt_flag(name: str, value) -> str:
    """A flag as it is typed: --alpha 10, --actor-hidden-dims 64 64, --same-state-positives / --no-same-..."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    def text(v):  # 50.0 -> 50, 0.001 -> 0.001: as typed
        return f"{v:g}" if isinstance(v, float) else str(v)
    return f"{flag} {' '.join(map(text, value if isinstance(value, list) else [value]))}"


# ---------------------------------------------------------------------------------------------------- statistics
def rng_of(seed: int, *key: str) -> np.random.Generator:
    """The bootstrap's generator for one row or curve: from --seed and the row's own name, so a row's interval does
    not move when other runs join the folder."""
    return np.random.default_rng([seed, zlib.crc32("|".join(key).encode())])


def bootstrap_ci(x: np.ndarray, rng: np.random.Generator, resamples: int) -> tuple:
    """95 % percentile-bootstrap CI of the mean of x (seeds resampled with replacement); NaN with fewer than 3 seeds,
    from which no interval is claimed."""
    x = np.asarray(x, dtype=float)
    if len(x) < 3:
        return float("nan"), float("nan")
    means = x[rng.integers(len(x), size=(resamples, len(x)))].mean(1)
    return tuple(np.percentile(means, [2.5, 97.5]))


def iqm(x: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle half, int(n / 4) scores cut at each end (scipy's trim_mean 0.25)."""
    x = np.sort(np.ravel(x))
    k = int(0.25 * len(x))
    return float(x[k:len(x) - k].mean())


def stratified_bootstrap_ci(per_task: list, rng: np.random.Generator, resamples: int) -> tuple:
    """95 % CI of the IQM of the pooled scores, resampling the runs with replacement within each task (stratified)."""
    stats = [iqm(np.concatenate([x[rng.integers(len(x), size=len(x))] for x in per_task])) for _ in range(resamples)]
    return tuple(np.percentile(stats, [2.5, 97.5]))


def final_score(by_step: dict, last: int) -> float:
    """Mean of the last `last` evaluations of one seed after its start: the step-1 evaluation (the untrained policy)
    never counts. NaN for a run with no evaluation after step 1."""
    after = [s for s in sorted(by_step) if s > 1][-last:]
    return float(np.mean([by_step[s] for s in after])) if after else float("nan")


# flags that only the online phase reads: an online run and its offline control differ in these alone
ONLINE_ONLY = {"online_steps", "buffer_size", "start_training", "balanced_sampling", "fix_bc_flow_online"}


def online_table(table: list, series: dict, members: dict) -> list:
    """One row per group of offline-to-online runs (run folders with online.csv): the success at the switch (the
    evaluation at its --offline-steps), the final score, the offline control (the group with the same flags apart
    from ONLINE_ONLY, trained offline only) and the online episodes that reached the goal, summed over seeds."""
    rows = {(r["task"], r["method"]): r for r in table}
    out = []
    for (task, method), runs in sorted(members.items()):
        online = [r for r in runs if (r["dir"] / "online.csv").exists() and r["flags"].get("online_steps")]
        if not online or (task, method) not in rows:
            continue
        base = lambda f: {k: v for k, v in f.items() if k not in ONLINE_ONLY}  # noqa: E731
        controls = [m for (t, m), rs in members.items() if t == task and (t, m) in rows and m != method
                    and all(base(r["flags"]) == base(online[0]["flags"]) and not r["flags"].get("online_steps")
                            for r in rs)]
        switch = sorted({int(r["args"]["offline_steps"]) for r in online})
        at_switch = [s.get(switch[0]) for s in series[task, method].values()]
        episodes = [dict(r2) for r in online for r2 in csv.DictReader(open(r["dir"] / "online.csv", newline=""))]
        goal = sum(float(e.get("success") or 0) > 0 for e in episodes)
        out.append(dict(row=rows[task, method], switch=switch, control=rows[task, controls[0]] if controls else None,
                        at_switch=float(np.mean([x for x in at_switch if x is not None])) if any(
                            x is not None for x in at_switch) else float("nan"), goal=goal, episodes=len(episodes)))
    return out


def bandit_table(members: dict) -> list:
    """The bandit's runs (eval.csv with frac_* columns): per method, each mode's fraction of the samples at the last
    evaluation, averaged over seeds, with the number of seeds."""
    out = []
    for (task, method), runs in sorted(members.items()):
        last = {}
        for r in sorted(runs, key=lambda r: r["cols"]["step"][-1]):  # a continuation's later rows win
            if "frac_right" in r["cols"]:
                last[r["args"]["seed"]] = {k: float(v[-1]) for k, v in r["cols"].items() if k.startswith("frac_")
                                           or k in ("step", "episodic_return")}
        if last:
            cols = list(next(iter(last.values())))
            out.append(dict(task=task, method=method, seeds=sorted(last),
                            **{k: float(np.mean([v[k] for v in last.values()])) for k in cols}))
    return out


# ---------------------------------------------------------------------------------------------------- figures
def plot_task(path: Path, task: str, metric: str, curves: dict, seed: int, resamples: int) -> None:
    """Mean over seeds at every step logged by any seed, with the 95 % bootstrap band where 3 or more seeds have it."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.6, 4.2))
    for i, (method, seeds) in enumerate(curves.items()):  # past 10 curves the colours repeat, dashed
        steps = sorted(set().union(*seeds.values()))
        vals = [np.array([s[t] for s in seeds.values() if t in s]) for t in steps]
        mean = np.array([v.mean() for v in vals])
        rng = rng_of(seed, task, method, "curve")
        band = np.array([bootstrap_ci(v, rng, resamples) for v in vals])
        (line,) = ax.plot(steps, mean, f"C{i % 10}{'-' if i < 10 else '--'}",
                          label=f"{method} ({len(seeds)} seed{'s' * (len(seeds) > 1)})")
        ax.fill_between(steps, band[:, 0], band[:, 1], color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set(title=task, xlabel="gradient step", ylabel=metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes, off the curves
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_aggregate(path: Path, rows: list, ntasks: int) -> None:
    """One panel per metric and set of tasks (a success rate and a return never share an axis, and methods are
    compared on the same tasks only): per method, the IQM of its final scores with the 95 % stratified bootstrap CI.
    Long method and task names wrap; nothing is cut off."""
    import textwrap

    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["metric"], r["task_set"]) for r in rows))
    sizes = [sum((r["metric"], r["task_set"]) == k for r in rows) for k in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.2, 0.6 * sum(sizes) + 1.6 * len(panels)), squeeze=False,
                             gridspec_kw=dict(height_ratios=sizes))
    for ax, (metric, task_set) in zip(axes[:, 0], panels):
        mine = [r for r in rows if (r["metric"], r["task_set"]) == (metric, task_set)]
        for i, r in enumerate(mine):  # no interval where a task has fewer than 3 seeds
            err = [[r["iqm"] - r["ci"][0]], [r["ci"][1] - r["iqm"]]] if r["fewest_seeds"] >= 3 else None
            ax.errorbar(r["iqm"], i, xerr=err, fmt="o", capsize=4)
        ax.set_yticks(range(len(mine)), [textwrap.fill(f"{r['method']} ({r['runs']} run{'s' * (r['runs'] > 1)})", 45)
                                         for r in mine], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(textwrap.fill(f"{len(task_set)} task{'s' * (len(task_set) > 1)}: {', '.join(task_set)}", 80),
                     fontsize=8)
        ax.set_xlabel(f"IQM of the final {metric} (95 % stratified bootstrap CI)", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"Aggregate over {ntasks} task{'s' * (ntasks > 1)}, methods compared on the same tasks", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- main
def main(args: Args) -> dict:
    """Writes the PNGs and final_scores.md under args.out, prints the table; returns the table rows and the
    aggregate rows (numbers, for tests)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    if args.last < 1:
        raise SystemExit(f"error: --last {args.last}: the final score needs at least 1 evaluation")
    if args.resamples < 1:
        raise SystemExit(f"error: --resamples {args.resamples}: the bootstrap needs at least 1 resample")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as e:
        raise SystemExit(f"error: --out {out} cannot be written ({e.strerror}); pass a folder you can write") from None
    series, metrics, commits, members = group_series(read_runs(args.folders), args.metric)
    table = []
    for task in sorted(metrics):
        curves = {m: seeds for (t, m), seeds in sorted(series.items()) if t == task}
        plot_task(out / f"{task.replace('/', '-')}.png", task, metrics[task], curves, args.seed, args.resamples)
        for method, seeds in curves.items():
            counts = {seed: sum(t > 1 for t in s) for seed, s in sorted(seeds.items())}  # evaluations after step 1
            short = {seed: n for seed, n in counts.items() if n < args.last}
            if short:
                print(f"note: {task}, {method}: fewer than --last {args.last} evaluations after step 1 for seed(s) "
                      + ", ".join(f"{seed} ({n})" for seed, n in short.items()) + "; their score uses what there is")
            finals = np.array([final_score(s, args.last) for _, s in sorted(seeds.items())])
            last_steps = sorted({max(s) for s in seeds.values()})
            table.append(dict(task=task, method=method, metric=metrics[task], mean=float(finals.mean()),
                              ci=bootstrap_ci(finals, rng_of(args.seed, task, method), args.resamples),
                              seeds=len(finals), finals=finals,
                              seed_ids=sorted(seeds), commits=sorted(c[:7] for c in commits[task, method]),
                              steps=f"{last_steps[0]}" + (f"-{last_steps[-1]}" if len(last_steps) > 1 else "")))
    aggregate = []  # one comparison per metric and set of tasks: a method enters it if it ran on all those tasks
    tasks_of = defaultdict(set)
    for r in table:
        tasks_of[r["method"], r["metric"]].add(r["task"])
    for metric, task_set in sorted({(metric, tuple(sorted(tasks))) for (_, metric), tasks in tasks_of.items()},
                                   key=lambda k: (k[0], -len(k[1]), k[1])):  # never pool two metrics
        for method in sorted(m for (m, mt), tasks in tasks_of.items() if mt == metric and tasks >= set(task_set)):
            per_task = [r["finals"] for r in table if (r["method"], r["metric"]) == (method, metric)
                        and r["task"] in task_set]
            ci = stratified_bootstrap_ci(per_task, rng_of(args.seed, method, metric, *task_set), args.resamples)
            aggregate.append(dict(method=method, metric=metric, task_set=task_set, tasks=len(task_set),
                                  iqm=iqm(np.concatenate(per_task)), runs=sum(map(len, per_task)), ci=ci,
                                  fewest_seeds=min(map(len, per_task))))
    plot_aggregate(out / "aggregate.png", aggregate, len(metrics))
    fmt = lambda x: "–" if np.isnan(x) else f"{x:.3f}"  # noqa: E731
    spread = lambda r: f"[{fmt(r['ci'][0])}, {fmt(r['ci'][1])}]" if r["seeds"] >= 3 else \
        "runs: " + ", ".join(map(fmt, r["finals"]))  # noqa: E731  (no interval from fewer than 3 seeds)
    lines = [f"| task | method | metric | final score (mean of the last {args.last} evaluations after step 1) | "
             "95 % CI (3+ seeds), else the runs | seeds (n: ids) | steps | code |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['method']} | {r['metric']} | {fmt(r['mean'])} | {spread(r)} | {r['seeds']}: "
              f"{', '.join(map(str, r['seed_ids']))} | {r['steps']} | {' '.join(r['commits'])} |" for r in table]
    text = "\n".join(lines)
    (out / "final_scores.md").write_text(text + "\n")
    print(text)
    online = online_table(table, series, members)
    if online:  # offline-to-online runs: online.md beside final_scores.md
        score = lambda r: f"{fmt(r['mean'])} ({spread(r)}; n = {r['seeds']})" if r else "no control"  # noqa: E731
        lines = ["| task | method | seeds (n: ids) | switch (step) | at the switch | online, final score | offline "
                 "control, final score | online episodes at the goal | code |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {o['row']['task']} | {o['row']['method']} | {o['row']['seeds']}: "
                  f"{', '.join(map(str, o['row']['seed_ids']))} | {', '.join(map(str, o['switch']))} | "
                  f"{fmt(o['at_switch'])} | {score(o['row'])} | {score(o['control'])} | {o['goal']} of "
                  f"{o['episodes']} | {' '.join(o['row']['commits'])} |" for o in online]
        (out / "online.md").write_text("\n".join(lines) + "\n")
        print(f"{out}/online.md:\n" + "\n".join(lines))
    bandit = bandit_table(members)
    if bandit:  # the toy bandit: where the samples went, bandit.md beside final_scores.md
        modes = [k for k in bandit[0] if k.startswith("frac_")]
        lines = [f"| task | method | seeds (n: ids) | step | {' | '.join(modes)} | mean reward |",
                 "|---|---|---|---|" + "---|" * len(modes) + "---|"]
        lines += [f"| {b['task']} | {b['method']} | {len(b['seeds'])}: {', '.join(map(str, b['seeds']))} | "
                  f"{int(b['step'])} | " + " | ".join(f"{b[m]:.3f}" for m in modes) + f" | {b['episodic_return']:.2f} |"
                  for b in bandit]
        (out / "bandit.md").write_text("\n".join(lines) + "\n")
        print(f"{out}/bandit.md:\n" + "\n".join(lines))
    print(f"figures: {out}/<task>.png, {out}/aggregate.png")
    return dict(table=table, aggregate=aggregate, online=online, bandit=bandit)


if __name__ == "__main__":
    main(tyro.cli(Args))
