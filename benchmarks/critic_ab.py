"""The critic ensemble's forward as it is (hidden layers member by member, output layer batched) against the fully
batched form it replaced (one batched matmul per layer, the members' LayerNorm outputs stacked at every layer), side
by side in one process: both give the same values bit for bit (checked here), so only the time differs.

Each form's time is the median of the CPU time of this thread (less noisy than the wall clock on a shared machine),
the two forms interleaved call by call: the critic's no-grad forward on the 4,096 rows DFP ranks per step (batch 256
x 16 candidates), its forward and backward on a batch of 256, and each named script's whole eager fp32 update at the
paper's sizes (benchmark.py's setup).

    python benchmarks/critic_ab.py --algos dfp qam --reps 10 --threads 1
"""
import argparse
import importlib
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import benchmark  # noqa: E402


def stacked_forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """The previous Critic.forward: every layer batched over the members, their LayerNorm outputs stacked."""
    x = torch.cat([obs, action], -1)
    h = x.reshape(-1, x.shape[-1]).expand(len(self.weights[0]), -1, -1)
    for l, (w, b) in enumerate(zip(self.weights, self.biases)):
        h = torch.baddbmm(b, h, w)
        if l < len(self.weights) - 1:
            h = nn.functional.gelu(h, approximate="tanh")
            if len(self.norm_weights):
                h = torch.stack([nn.functional.layer_norm(m.float(), m.shape[-1:], w, b, eps=1e-6) for m, w, b
                                 in zip(h, self.norm_weights[l].flatten(1), self.norm_biases[l].flatten(1))])
    return h.float().reshape(len(self.weights[0]), *x.shape[:-1])


def timed(fn) -> float:
    t = time.thread_time()
    fn()
    return time.thread_time() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", nargs="*", default=["dfp"], help="scripts whose whole update is timed too")
    p.add_argument("--reps", type=int, default=10, help="timed calls of each form (after one untimed)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    import dfp
    forms = {"stacked (before)": stacked_forward, "member by member (now)": dfp.Critic.forward}
    torch.manual_seed(0)
    critic = dfp.Critic(29, 8, (512,) * 4, True, 2)
    with torch.no_grad():  # LayerNorm scales and offsets away from 1 and 0
        for prm in critic.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    obs, act = torch.randn(4096, 29), torch.rand(4096, 8) * 2 - 1

    def no_grad(f):
        with torch.no_grad():
            return f(critic, obs, act)

    def with_grad(f):
        critic.zero_grad()
        q = f(critic, obs[:256], act[:256])
        (q * torch.linspace(-1, 1, q.numel()).view_as(q)).sum().backward()
        return torch.cat([q.detach().flatten()] + [prm.grad.flatten() for prm in critic.parameters()])

    (a_no, b_no), (a_gr, b_gr) = [[g(f) for f in forms.values()] for g in (no_grad, with_grad)]
    same = torch.equal(a_no, b_no) and torch.equal(a_gr, b_gr)
    tasks = {"critic no-grad forward, 4,096 rows": no_grad, "critic forward + backward, 256 rows": with_grad}
    times = {task: {name: [] for name in forms} for task in tasks}
    for _ in range(a.reps + 1):
        for task, g in tasks.items():
            for name, f in forms.items():
                times[task][name].append(timed(lambda: g(f)))
    bargs, data = benchmark.Args(device="cpu"), benchmark.synthetic_data(29, 8, torch.device("cpu"))
    for algo in a.algos:
        mod = importlib.import_module(algo)
        setups = {}
        for name in forms:
            torch.manual_seed(0)
            setups[name] = benchmark.setup(mod, bargs, torch.device("cpu"), "fp32", False)
        task = f"{algo} update (eager fp32, 4 x 512, batch 256)"
        times[task] = {name: [] for name in forms}
        for _ in range(a.reps + 1):
            batch = benchmark.sample(data, setups[next(iter(forms))][0])
            for name, f in forms.items():
                mod.Critic.forward = f
                margs, nets, opt, _, _ = setups[name]
                times[task][name].append(timed(lambda: mod.update(nets, opt, batch, margs)))
        mod.Critic.forward = forms["member by member (now)"]
    print(f"{benchmark.cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, {a.threads} thread(s), load "
          f"average {os.getloadavg()[0]:.1f}; the two forms give the same values and gradients bit for bit: {same}")
    print("| ms, median of " + str(a.reps) + " (min-max) | " + " | ".join(forms) + " | now / before |")
    print("|---|---|---|---|")
    for task, by_form in times.items():
        med = [statistics.median(t[1:]) * 1000 for t in by_form.values()]
        cells = [f"{m:.1f} ({min(t[1:]) * 1000:.0f}-{max(t[1:]) * 1000:.0f})" for m, t in zip(med, by_form.values())]
        print(f"| {task} | " + " | ".join(cells) + f" | {med[1] / med[0]:.3f} |")


if __name__ == "__main__":
    main()
