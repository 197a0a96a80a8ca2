"""Forward+backward time of kdlab's batch-level Sinkhorn (SinKD) beside POT and geomloss, all in one process.

SinKD's setting: logits [B, C] -> softmax(z / 2), L1 cost between the B student and B teacher rows,
eps = 0.1, 20 Sinkhorn iterations, the gradient through the unrolled iterations, <P, C> with marginals
1/B (kdlab reduction "mean"). Contenders, interleaved step by step (median of `--repeats` steps after
one untimed step each, which for kdlab's default includes compiling the L1 kernel once per process):
- kdlab default (log domain) and plain domain (both take the matrix-vector iterations here);
- kdlab's eager path: torch.cdist and the log-domain loop differentiated by autograd (the code before
  the fast path, and what kdlab still runs for kernels beyond `max_kernel_range`);
- POT `ot.sinkhorn2(..., method="sinkhorn_log")` and `method="sinkhorn"` (torch backend, autodiff through
  its iterations), given the same torch.cdist cost;
- geomloss `SamplesLoss("sinkhorn", p=1)`: the debiased divergence with eps-scaling, a different quantity
  (time only).
Equal value: each contender's value and student-logit gradient against kdlab's eager path in float64.
Wall time and process CPU time are both recorded: the machine is shared, and CPU time is what a
preempted step still measures correctly. Each thread count (`--threads`) is a separate pass.

    python benchmarks/bench_sinkhorn.py                 # CPU, writes benchmarks/results/sinkhorn_cpu.json
    python benchmarks/bench_sinkhorn.py --no-write      # print only
"""

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from kdlab.divergences import get

RESULTS = Path(__file__).resolve().parent / "results"
EPSILON, N_ITERS, TAU = 0.1, 20, 2.0
SIZES = ((64, 100), (64, 1000), (256, 100), (256, 1000))
REFERENCE = "POT sinkhorn2 (sinkhorn_log)"

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
sinkhorn_module = importlib.import_module("kdlab.divergences.sinkhorn")


@contextlib.contextmanager
def eager_path() -> Iterator[None]:
    """kdlab without its fast parts: torch.cdist for the cost, the domain loop for the iterations."""
    saved = sinkhorn_module.COMPILE_MIN_NUMEL, sinkhorn_module.max_kernel_range
    sinkhorn_module.COMPILE_MIN_NUMEL, sinkhorn_module.max_kernel_range = math.inf, lambda dtype: -math.inf
    try:
        yield
    finally:
        sinkhorn_module.COMPILE_MIN_NUMEL, sinkhorn_module.max_kernel_range = saved


def kdlab_eager(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with eager_path():
        return get("sinkhorn", epsilon=EPSILON, n_iters=N_ITERS)(s, t, temperature=TAU)


def pot(method: str) -> Loss:
    import ot

    def loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        q, p = (s / TAU).softmax(-1), (t / TAU).softmax(-1)
        uniform = torch.full((s.shape[0],), 1 / s.shape[0], dtype=s.dtype)
        return ot.sinkhorn2(uniform, uniform, torch.cdist(q, p, p=1), EPSILON, method=method, numItermax=N_ITERS, stopThr=0.0)

    return loss


def geomloss() -> Loss:
    from geomloss import SamplesLoss

    samples_loss = SamplesLoss("sinkhorn", p=1, blur=EPSILON, backend="tensorized")
    return lambda s, t: samples_loss((s / TAU).softmax(-1), (t / TAU).softmax(-1))


def contenders() -> dict[str, tuple[str, Callable[[], Loss]]]:
    """name -> (quantity, builder); a builder raises ImportError when its library is missing."""
    kdlab = {domain: get("sinkhorn", epsilon=EPSILON, n_iters=N_ITERS, domain=domain) for domain in ("log", "plain")}
    return {
        "kdlab sinkhorn (default, log domain)": ("<P, C>", lambda: lambda s, t: kdlab["log"](s, t, temperature=TAU)),
        "kdlab sinkhorn (plain domain)": ("<P, C>", lambda: lambda s, t: kdlab["plain"](s, t, temperature=TAU)),
        "kdlab eager path (torch.cdist, autograd loop)": ("<P, C>", lambda: kdlab_eager),
        REFERENCE: ("<P, C>", lambda: pot("sinkhorn_log")),
        "POT sinkhorn2 (sinkhorn, plain)": ("<P, C>", lambda: pot("sinkhorn")),
        "geomloss SamplesLoss('sinkhorn', p=1)": ("debiased S_eps, different quantity", geomloss),
    }


def inputs(batch: int, classes: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(batch, classes, generator=generator).mul_(3).to(dtype).requires_grad_()
    return student, torch.randn(batch, classes, generator=generator).mul_(3).to(dtype)


def step(loss_fn: Loss, student: torch.Tensor, teacher: torch.Tensor) -> tuple[float, float, float]:
    """One forward+backward: (wall seconds, process CPU seconds, value)."""
    student.grad = None
    wall, cpu = time.perf_counter(), time.process_time()
    loss = loss_fn(student, teacher)
    loss.backward()
    return time.perf_counter() - wall, time.process_time() - cpu, loss.item()


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


def measure_size(losses: dict[str, Loss], batch: int, classes: int, repeats: int) -> list[dict]:
    """Every contender at one size: deviation from the float64 eager path, then interleaved timed steps."""
    exact_student, exact_teacher = inputs(batch, classes, torch.float64)
    exact = kdlab_eager(exact_student, exact_teacher)
    (exact_grad,) = torch.autograd.grad(exact, exact_student)
    student, teacher = inputs(batch, classes, torch.float32)
    rows = {}
    for name, loss_fn in losses.items():
        wall, _, value = step(loss_fn, student, teacher)  # untimed: warm-up (and the one compilation)
        rows[name] = {"B": batch, "C": classes, "contender": name, "value": value, "first_step_ms": 1e3 * wall,
                      "value_rel_diff": abs(value - exact.item()) / exact.item(), "grad_rel_diff": relative(student.grad, exact_grad),
                      "wall": [], "cpu": []}
    for _ in range(repeats):
        for name, loss_fn in losses.items():
            wall, cpu, _ = step(loss_fn, student, teacher)
            rows[name]["wall"].append(1e3 * wall)
            rows[name]["cpu"].append(1e3 * cpu)
    for row in rows.values():
        row["wall_ms_median"], row["cpu_ms_median"] = statistics.median(row.pop("wall")), statistics.median(row.pop("cpu"))
    for row in rows.values():
        if REFERENCE in rows:
            row["speedup_wall_vs_pot_log"] = rows[REFERENCE]["wall_ms_median"] / row["wall_ms_median"]
            row["speedup_cpu_vs_pot_log"] = rows[REFERENCE]["cpu_ms_median"] / row["cpu_ms_median"]
        print(json.dumps(row), flush=True)
    return list(rows.values())


def markdown(result: dict) -> str:
    setup = result["setup"]
    lines = []
    for run in result["runs"]:
        load = ", ".join(f"{x:.1f}" for x in run["load_average_at_start"])
        lines += [
            f"{run['threads']} thread(s) (load average at start {load}; median of {setup['repeats']} interleaved steps):",
            "",
            "| contender | B | C | value | value rel. diff | grad rel. diff | wall (ms) | CPU (ms) | x POT log, wall | x POT log, CPU |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in run["rows"]:
            if "skipped" in row:
                lines.append(f"| {row['contender']} | | | skipped: {row['skipped']} | | | | | | |")
                continue
            diffs = "| |" if row["contender"].startswith("geomloss") else f"| {row['value_rel_diff']:.0e} | {row['grad_rel_diff']:.0e} |"
            lines.append(
                f"| {row['contender']} | {row['B']} | {row['C']} | {row['value']:.4f} {diffs} {row['wall_ms_median']:.1f} | "
                f"{row['cpu_ms_median']:.1f} | {row.get('speedup_wall_vs_pot_log', math.nan):.2f} | {row.get('speedup_cpu_vs_pot_log', math.nan):.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per contender and size (medians)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts, one pass each")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    losses, skipped = {}, []
    for name, (quantity, build) in contenders().items():
        try:
            losses[name] = build()
        except ImportError as error:
            skipped.append({"contender": name, "quantity": quantity, "skipped": f"not importable: {error}".splitlines()[0][:160]})
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        start = os.getloadavg()
        rows = [row for batch, classes in SIZES for row in measure_size(losses, batch, classes, args.repeats)]
        runs.append({"threads": threads, "load_average_at_start": start, "load_average_at_end": os.getloadavg(), "rows": rows + skipped})
    result = {
        "setup": {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
            "torch": torch.__version__,
            "peers": {name: _version(name) for name in ("ot", "geomloss")},
            "epsilon": EPSILON,
            "n_iters": N_ITERS,
            "temperature": TAU,
            "repeats": args.repeats,
            "quantities": {name: quantity for name, (quantity, _) in contenders().items()},
            "diffs": "relative to kdlab's eager path in float64: |value - exact| / exact, ||grad - exact|| / ||exact|| (student logits)",
        },
        "runs": runs,
    }
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "sinkhorn_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
