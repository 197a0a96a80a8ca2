"""Forward+backward time and peak memory of kdlab's divergences beside naive PyTorch and peer implementations.

Every per-position divergence on logits [N, V] (the LM distillation case), fp32 and bf16, fwd+bwd:
    kdlab as called (`get(name)(s, t)`: the fused engine), kdlab's plain reference formula (`fn`, what
    every call ran before the engine), the naive eager PyTorch formula (log_softmax in fp32, then the
    textbook expression; no -inf handling) and, for gjsd/js, TRL's GKD `generalized_jsd_loss` and on
    CUDA Liger-Kernel's JSD (optional peers: a missing one is recorded as skipped). All contenders of
    one divergence run in this process, interleaved round-robin; the first call of each (kdlab's
    compilation) is reported apart from the median of the timed calls.
The batch-level Sinkhorn of SinKD has its own script, `benchmarks/bench_sinkhorn.py`.

Memory: peak of the bytes held by tensors allocated during the first forward+backward (torch's
profiler, `profile_memory=True`, allocation and free events summed in time order; on CUDA the growth of
`max_memory_allocated`), the gradient buffer included, beside the size of the logits' gradient. The
profiler runs during the first call only, which is why it is reported apart from the timed rounds.

    python benchmarks/bench_divergences.py     # CPU, 2048 x 32000, fp32 and bf16, writes results
    python benchmarks/bench_divergences.py --dtypes float32 --rows-out a.json   # one share of the rows only
    python benchmarks/bench_divergences.py --rows-in a.json b.json   # results from the shares (b's rows replace a's)
    python benchmarks/bench_divergences.py --device cuda        # 8192 x 128256 bf16, H100 bound at 3350 GB/s
"""

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from kdlab.divergences import REGISTRY, get, parameters

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
GPU_DEFAULTS = {"n": 8192, "vocab": 128256, "dtypes": ["bfloat16"]}
CPU_DEFAULTS = {"n": 2048, "vocab": 32000, "dtypes": ["float32", "bfloat16"]}
TARGETS = {"vs_plain": 3.0, "vs_naive": 2.0, "memory_vs_gradient": 1.25}

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    return F.kl_div(log_b, log_a, log_target=True, reduction="none").sum(-1)


def _log_mix(p: torch.Tensor, q: torch.Tensor, w: float) -> torch.Tensor:
    return (w * p + (1 - w) * q).log()


def _fdiv_js(lq: torch.Tensor, lp: torch.Tensor, q: torch.Tensor, p: torch.Tensor, k: dict) -> torch.Tensor:
    assert k["f"] == "js", "the naive fdiv formula is the default f = js"
    u = p / q
    return (q * (u * u.log() - (u + 1) * ((u + 1) / 2).log())).sum(-1)


# The textbook formula per position, from fp32 log-probabilities (lq, lp) and probabilities (q, p) of the
# student and the teacher, at the divergence's default parameters `k`: what one writes without kdlab.
NAIVE: dict[str, Callable[..., torch.Tensor]] = {
    "fkl": lambda lq, lp, q, p, k: _kl(lp, lq),
    "rkl": lambda lq, lp, q, p, k: _kl(lq, lp),
    "jeffreys": lambda lq, lp, q, p, k: ((p - q) * (lp - lq)).sum(-1),
    "js": lambda lq, lp, q, p, k: 0.5 * (_kl(lp, _log_mix(p, q, 0.5)) + _kl(lq, _log_mix(p, q, 0.5))),
    "gjsd": lambda lq, lp, q, p, k: k["beta"] * _kl(lp, _log_mix(p, q, k["beta"])) + (1 - k["beta"]) * _kl(lq, _log_mix(p, q, k["beta"])),
    "skl": lambda lq, lp, q, p, k: _kl(lp, _log_mix(p, q, k["alpha"])),
    "srkl": lambda lq, lp, q, p, k: _kl(lq, _log_mix(q, p, k["alpha"])),
    "tvd": lambda lq, lp, q, p, k: 0.5 * (p - q).abs().sum(-1),
    "hellinger": lambda lq, lp, q, p, k: 1 - (p * q).sqrt().sum(-1),
    "chi2": lambda lq, lp, q, p, k: ((p - q) ** 2 / q).sum(-1),
    "cs": lambda lq, lp, q, p, k: -((p * q).sum(-1) / ((p * p).sum(-1) * (q * q).sum(-1)).sqrt()).log(),
    "alpha": lambda lq, lp, q, p, k: (1 - (p ** k["alpha"] * q ** (1 - k["alpha"])).sum(-1)) / (k["alpha"] * (1 - k["alpha"])),
    "ab": lambda lq, lp, q, p, k: -(
        p ** k["alpha"] * q ** k["beta"]
        - k["alpha"] / (k["alpha"] + k["beta"]) * p ** (k["alpha"] + k["beta"])
        - k["beta"] / (k["alpha"] + k["beta"]) * q ** (k["alpha"] + k["beta"])
    ).sum(-1) / (k["alpha"] * k["beta"]),
    "fdiv": _fdiv_js,
}


def naive(name: str) -> Loss:
    """The naive formula of `name` at its default parameters, reduced by the mean over positions."""
    formula, params = NAIVE[name], parameters(name)

    def loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        lq, lp = F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1)
        return formula(lq, lp, lq.exp(), lp.exp(), params).mean()

    return loss


def _trl_gjsd(beta: float) -> Loss:
    from trl.experimental.gkd import GKDTrainer

    return lambda s, t: GKDTrainer.generalized_jsd_loss(s[None], t[None], beta=beta, reduction="sum") / s.shape[0]


def _liger_jsd(beta: float, device: str) -> Loss:
    if device != "cuda":
        raise ImportError("Liger-Kernel's JSD runs on CUDA only")
    from liger_kernel.transformers import LigerJSD

    jsd = LigerJSD(beta=beta)  # takes log-probabilities; the log_softmax is part of the timing
    return lambda s, t: jsd(F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1))


def contenders(name: str, device: str) -> dict[str, Callable[[], Loss]]:
    """Contender -> builder (raises ImportError when its peer is missing), all computing the same mean value."""
    kdlab = get(name)
    rows: dict[str, Callable[[], Loss]] = {
        "kdlab (fused)": lambda: kdlab,
        "kdlab plain formula (before)": lambda: lambda s, t: kdlab.fn(s, t, **kdlab.params),
        "naive eager PyTorch": lambda: naive(name),
    }
    if name in ("js", "gjsd"):
        beta = kdlab.params.get("beta", 0.5)
        rows[f"TRL generalized_jsd_loss({beta})"] = lambda: _trl_gjsd(beta)
        rows[f"Liger-Kernel LigerJSD({beta})"] = lambda: _liger_jsd(beta, device)
    return rows


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step(loss_fn: Loss, student: torch.Tensor, teacher: torch.Tensor, device: str) -> tuple[float, float]:
    """(seconds, value) of one forward+backward."""
    student.grad = None
    _sync(device)
    start = time.perf_counter()
    loss = loss_fn(student, teacher)
    loss.backward()
    _sync(device)
    return time.perf_counter() - start, loss.item()


def profiled_step(loss_fn: Loss, student: torch.Tensor, teacher: torch.Tensor, device: str) -> tuple[float, float, int]:
    """(seconds, value, peak bytes) of one forward+backward; the peak is of the bytes held by the tensors
    allocated during the step (the gradient included), from the profiler's memory events on the CPU."""
    student.grad = None  # freed before measuring: the previous contender's gradient is not this step's memory
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        seconds, value = step(loss_fn, student, teacher, device)
        return seconds, value, torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        seconds, value = step(loss_fn, student, teacher, device)
    events = sorted((e.start_ns(), e.nbytes()) for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]")
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return seconds, value, peak


def per_token(args: argparse.Namespace) -> list[dict]:
    """Every per-position divergence x dtype: all contenders interleaved, first call apart, then `repeats` rounds."""
    rows = []
    names = args.divergences or [name for name, fn in REGISTRY.items() if not fn.batch_level]
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        generator = torch.Generator(device=args.device).manual_seed(0)
        student = torch.randn(args.n, args.vocab, generator=generator, device=args.device).mul_(3).to(dtype).requires_grad_()
        teacher = torch.randn(args.n, args.vocab, generator=generator, device=args.device).mul_(3).to(dtype)
        gradient_bytes = student.numel() * student.element_size()
        for name in names:
            built, results = {}, {}
            for contender, build in contenders(name, args.device).items():
                try:
                    built[contender] = build()
                except ImportError as error:
                    results[contender] = {"skipped": f"not importable: {error}".splitlines()[0][:160]}
            for contender, loss_fn in built.items():
                first_s, value, peak = profiled_step(loss_fn, student, teacher, args.device)
                results[contender] = {"value": value, "time_s_first": first_s, "times_s": [], "peak_memory_bytes": peak}
            for _ in range(args.repeats):
                for contender, loss_fn in built.items():
                    results[contender]["times_s"].append(step(loss_fn, student, teacher, args.device)[0])
            for contender, result in results.items():
                if "times_s" in result:
                    result["time_s_median"] = statistics.median(result["times_s"])
                    result["memory_vs_gradient"] = result["peak_memory_bytes"] / gradient_bytes
                rows.append({"divergence": name, "dtype": dtype_name, "contender": contender, **result})
                print(json.dumps(rows[-1]), flush=True)
            student.grad = None
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Per divergence x dtype: kdlab's speed-up over its plain formula and over naive PyTorch, its memory, vs the targets."""
    by_case: dict[tuple[str, str], dict[str, dict]] = {}
    for row in rows:
        by_case.setdefault((row["divergence"], row["dtype"]), {})[row["contender"]] = row
    out = []
    for (name, dtype), case in by_case.items():
        fused, plain, eager = case["kdlab (fused)"], case["kdlab plain formula (before)"], case["naive eager PyTorch"]
        entry = {
            "divergence": name,
            "dtype": dtype,
            "fused_s": fused["time_s_median"],
            "compile_first_call_s": fused["time_s_first"],
            "vs_plain": plain["time_s_median"] / fused["time_s_median"],
            "vs_naive": eager["time_s_median"] / fused["time_s_median"],
            "memory_vs_gradient": fused["memory_vs_gradient"],
            "value_abs_diff_vs_plain": abs(fused["value"] - plain["value"]),
        }
        entry["meets"] = {
            "vs_plain": entry["vs_plain"] >= TARGETS["vs_plain"],
            "vs_naive": entry["vs_naive"] >= TARGETS["vs_naive"],
            "memory": entry["memory_vs_gradient"] <= TARGETS["memory_vs_gradient"],
        }
        out.append(entry)
    return out


def hbm_lower_bound_s(args: argparse.Namespace, dtype: str) -> float:
    """Read student and teacher logits once and write the student's gradient once, at peak bandwidth."""
    bytes_moved = 3 * args.n * args.vocab * torch.finfo(getattr(torch, dtype)).bits // 8
    return bytes_moved / (args.hbm_gbps * 1e9)


def markdown_per_token(result: dict) -> str:
    """`## Divergences`: the ratio table against the targets, then every contender."""
    setup = result["setup"]
    mark = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    lines = [
        "## Divergences",
        "",
        f"`python benchmarks/bench_divergences.py` on {setup['machine']}, torch {setup['torch']}, "
        f"device {setup['device']}; raw numbers in `benchmarks/results/divergences_{setup['device']}.json`. "
        f"1/5/15-min load average at start: {', '.join(f'{x:.1f}' for x in setup['load_average_at_start'])}; at the end: "
        f"{', '.join(f'{x:.1f}' for x in setup['load_average_at_end'])}"
        + (" (the machine was shared with other jobs, so absolute times are indicative; the ratios come from contenders "
           "interleaved in one process, and memory is not affected)." if setup["load_average_at_start"][0] > 1.5 else
           " (the machine was otherwise idle)."),
        "",
        f"### Every per-position divergence, forward + backward, logits [{setup['n']}, {setup['vocab']}]",
        "",
        f"Median of {setup['repeats']} interleaved rounds after a first call (the first call of kdlab compiles its "
        f"kernel: reported as \"first call\"). Targets: >= {TARGETS['vs_plain']:g}x faster than kdlab's plain formula "
        f"(what every call ran before the fused engine), >= {TARGETS['vs_naive']:g}x faster than the naive eager formula, "
        f"peak memory <= {TARGETS['memory_vs_gradient']:g}x the logits' gradient. Memory: {setup['memory']}.",
        "",
        "| divergence | dtype | kdlab fused (s) | first call (s) | × vs plain (≥ 3) | × vs naive (≥ 2) | memory / gradient (≤ 1.25) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["ratios"]:
        lines.append(
            f"| {r['divergence']} | {r['dtype']} | {r['fused_s']:.3f} | {r['compile_first_call_s']:.1f} | "
            f"{r['vs_plain']:.1f} ({mark(r['meets']['vs_plain'])}) | {r['vs_naive']:.1f} ({mark(r['meets']['vs_naive'])}) | "
            f"{r['memory_vs_gradient']:.2f} ({mark(r['meets']['memory'])}) |"
        )
    if setup.get("note"):
        lines += ["", setup["note"]]
    lines += ["", "Every contender (value = the mean over positions; peers at the same parameters):", "",
              "| divergence | dtype | contender | value | time (s) | peak memory (MiB) |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for row in result["per_token"]:
        if "skipped" in row:
            lines.append(f"| {row['divergence']} | {row['dtype']} | {row['contender']} | skipped: {row['skipped']} | | |")
        else:
            lines.append(
                f"| {row['divergence']} | {row['dtype']} | {row['contender']} | {row['value']:.4f} | {row['time_s_median']:.3f} | "
                f"{row['peak_memory_bytes'] / 2**20:.0f} |"
            )
    lines += ["", result["gpu_note"], ""]
    return "\n".join(lines)


def write_readme(section: str) -> None:
    """Replace this script's `## Divergences` section of the README, keeping the others."""
    text = README.read_text() if README.exists() else "# Benchmarks\n\nSpeed and memory of kdlab beside peer libraries; each section is written by its script.\n"
    start = text.find("## Divergences")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        end = len(text) if end < 0 else end + 1
        text = text[:start] + section + ("\n" if end < len(text) and not section.endswith("\n\n") else "") + text[end:]
    _atomic_write(README, text)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--n", type=int, help="positions N (default 2048 on CPU, 8192 on CUDA)")
    parser.add_argument("--vocab", type=int, help="vocabulary V (default 32000 on CPU, 128256 on CUDA)")
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), help="logits dtypes (float32 bfloat16 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--divergences", nargs="+", help="per-position divergences to run (default: every one in the registry)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds after the first call")
    parser.add_argument("--hbm-gbps", type=float, default=3350.0, help="peak HBM bandwidth for the lower bound (H100 SXM: 3350)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--note", default="", help="a paragraph on this run for the README (what was measured apart, what was missed)")
    parser.add_argument("--rows-out", type=Path, help="write the measured rows and their setup here, nothing else")
    parser.add_argument("--rows-in", type=Path, nargs="+", help="build the results from these --rows-out files instead of measuring")
    args = parser.parse_args()
    for key, value in (GPU_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.manual_seed(0)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    if args.device == "cuda":
        machine = f"{torch.cuda.get_device_name()} ({machine})"
    bounds = {dtype: hbm_lower_bound_s(args, dtype) for dtype in args.dtypes}
    setup = {
        "machine": machine,
        "torch": torch.__version__,
        "device": args.device,
        "n": args.n,
        "vocab": args.vocab,
        "dtypes": args.dtypes,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "kdlab_fused_env": {key: os.environ.get(key) for key in ("KDLAB_FUSED", "KDLAB_FUSED_MIN_NUMEL")},
        "load_average_at_start": os.getloadavg(),
        "memory": "growth of max allocated CUDA memory during one step"
        if args.device == "cuda"
        else "peak of the bytes held by tensors allocated during one step (torch profiler memory events), gradient included",
        "hbm_gbps": args.hbm_gbps,
        "hbm_lower_bound_s": bounds,
    }
    if args.rows_in:  # shares measured by separate processes (each interleaved within itself)
        shares = [json.loads(path.read_text()) for path in args.rows_in]
        setup = {**shares[0]["setup"], "dtypes": list(dict.fromkeys(d for share in shares for d in share["setup"]["dtypes"])),
                 "load_average_at_start": shares[0]["setup"]["load_average_at_start"],
                 "load_average_at_end": shares[-1]["setup"]["load_average_at_end"]}
        # a later share's row replaces an earlier one of the same divergence, dtype and contender (a re-measurement)
        keyed = {(row["divergence"], row["dtype"], row["contender"]): row for share in shares for row in share["rows"]}
        rows = list(keyed.values())
    else:
        rows = per_token(args)
        setup["load_average_at_end"] = os.getloadavg()
    setup["note"] = args.note
    if args.rows_out:
        _atomic_write(args.rows_out, json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
        return
    result = {
        "setup": setup,
        "per_token": rows,
        "ratios": ratios(rows),
        "gpu_note": (
            "HBM-bandwidth lower bound (read both logits, write one gradient, "
            + ", ".join(f"{dtype}: {1e3 * bound:.2f} ms" for dtype, bound in bounds.items()) + f" at {args.hbm_gbps:.0f} GB/s)."
            if args.device == "cuda"
            else "GPU part (8192 x 128256 bf16 beside Liger-Kernel's JSD and the HBM-bandwidth lower bound) not run: no GPU was "
            "lent to this task. Run `python benchmarks/bench_divergences.py --device cuda` on one."
        ),
    }
    section = markdown_per_token(result)
    if not args.no_write:
        _atomic_write(RESULTS / f"divergences_{args.device}.json", json.dumps(result, indent=2) + "\n")
        write_readme(section)
    print(section)


if __name__ == "__main__":
    main()
