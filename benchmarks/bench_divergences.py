"""Forward+backward time and peak memory of kdlab's divergences beside peer implementations.

(a) Per-token divergence on logits [N, V] (the LM distillation case): kdlab plain and chunked vs a naive
    `F.kl_div` loss, TRL's GKD `generalized_jsd_loss`, torchtune's chunked forward KL and, on CUDA,
    Liger-Kernel's JSD (each optional: missing peers are recorded as skipped).
(b) The batch-level Sinkhorn distance of SinKD for B x C logits vs POT (`ot.sinkhorn2`, log-domain,
    torch backend) and geomloss (`SamplesLoss("sinkhorn")`, a different quantity: time only).

Memory. CUDA: `torch.cuda.max_memory_allocated` growth during one forward+backward. CPU: every
contender of (a) runs in a fresh subprocess that first builds its inputs; the number is the growth of
the peak resident set size (`ru_maxrss`) during its first forward+backward, i.e. what the loss needs
beyond its inputs (gradient buffer included). (b) reports time only (its tensors are small).

    python benchmarks/bench_divergences.py                      # CPU, 4096 x 32000 fp32, writes results
    python benchmarks/bench_divergences.py --device cuda        # 16384 x 128256 bf16, H100 bound at 3350 GB/s
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from kdlab.divergences import chunked, get

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
GPU_DEFAULTS = {"n": 16384, "vocab": 128256, "dtype": "bfloat16", "chunk_size": 1024}
CPU_DEFAULTS = {"n": 4096, "vocab": 32000, "dtype": "float32", "chunk_size": 256}

# name -> (quantity, builder); a builder returns loss(student, teacher) or raises ImportError when its peer is missing.
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _trl_gjsd(beta: float) -> Loss:
    from trl.experimental.gkd import GKDTrainer

    return lambda s, t: GKDTrainer.generalized_jsd_loss(s[None], t[None], beta=beta, reduction="sum") / s.shape[0]


def _torchtune_chunked_fkl(n: int, chunk_size: int) -> Loss:
    from torchtune.modules.loss import ForwardKLWithChunkedOutputLoss

    chunks = max(1, n // chunk_size)
    loss = ForwardKLWithChunkedOutputLoss(num_output_chunks=chunks)
    return lambda s, t: loss(list(s[None].chunk(chunks, dim=1)), list(t[None].chunk(chunks, dim=1)), torch.zeros(1, n, dtype=torch.long, device=s.device))


def _liger_jsd(beta: float) -> Loss:
    from liger_kernel.transformers import LigerJSD

    jsd = LigerJSD(beta=beta)  # takes log-probabilities; the log_softmax is part of the timing
    return lambda s, t: jsd(F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1))


def contenders(n: int, chunk_size: int) -> dict[str, tuple[str, Callable[[], Loss]]]:
    return {
        "kdlab fkl": ("KL(p||q)", lambda: get("fkl")),
        f"kdlab fkl chunked({chunk_size})": ("KL(p||q)", lambda: chunked(get("fkl"), chunk_size)),
        "naive F.kl_div (fp32 log_softmax)": (
            "KL(p||q)",
            lambda: lambda s, t: F.kl_div(F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1), log_target=True, reduction="batchmean"),
        ),
        "torchtune ForwardKLWithChunkedOutputLoss": ("-sum p log q", lambda: _torchtune_chunked_fkl(n, chunk_size)),
        "kdlab gjsd(0.5)": ("GJSD_0.5", lambda: get("gjsd", beta=0.5)),
        f"kdlab gjsd(0.5) chunked({chunk_size})": ("GJSD_0.5", lambda: chunked(get("gjsd", beta=0.5), chunk_size)),
        "TRL GKD generalized_jsd_loss(0.5)": ("GJSD_0.5", lambda: _trl_gjsd(0.5)),
        "Liger-Kernel LigerJSD(0.5) (CUDA)": ("GJSD_0.5", lambda: _liger_jsd(0.5)),
    }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(name: str, args: argparse.Namespace) -> dict:
    """One contender in this process: peak memory growth of the first step, median time of the rest."""
    quantity, build = contenders(args.n, args.chunk_size)[name]
    try:
        loss_fn = build()
    except ImportError as error:
        return {"contender": name, "quantity": quantity, "skipped": f"not importable: {error}".splitlines()[0][:160]}
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator(device=args.device).manual_seed(0)
    student = torch.randn(args.n, args.vocab, generator=generator, device=args.device).mul_(3).to(dtype).requires_grad_()
    teacher = torch.randn(args.n, args.vocab, generator=generator, device=args.device).mul_(3).to(dtype)
    times, value, peak = [], None, None
    for step in range(1 + args.repeats):
        student.grad = None
        _sync(args.device)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        start = time.perf_counter()
        loss = loss_fn(student, teacher)
        loss.backward()
        _sync(args.device)
        times.append(time.perf_counter() - start)
        if step == 0:
            value = loss.item()
            if args.device == "cuda":
                peak = torch.cuda.max_memory_allocated() - base
            else:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "contender": name,
        "quantity": quantity,
        "value": value,
        "time_s_median": statistics.median(times[1:] or times),
        "time_s_first": times[0],
        "peak_memory_mib": peak / 2**20,
    }


def per_token(args: argparse.Namespace) -> list[dict]:
    rows = []
    for name in contenders(args.n, args.chunk_size):
        if "CUDA" in name and args.device != "cuda":
            rows.append({"contender": name, "quantity": contenders(args.n, args.chunk_size)[name][0], "skipped": "CUDA only"})
            continue
        command = [sys.executable, __file__, "--worker", name, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            rows.append({"contender": name, "skipped": f"failed: {done.stderr.strip().splitlines()[-1][:160]}"})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    return rows


def sinkhorn_rows(args: argparse.Namespace) -> list[dict]:
    """SinKD's batch-wise Sinkhorn: softmax(z / 2), L1 cost, eps = 0.1, 20 iterations, forward+backward."""
    epsilon, n_iters, tau = 0.1, 20, 2.0
    peers: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "kdlab sinkhorn (log domain)": get("sinkhorn", epsilon=epsilon, n_iters=n_iters),
        "kdlab sinkhorn (plain domain)": get("sinkhorn", epsilon=epsilon, n_iters=n_iters, domain="plain"),
    }
    try:
        import ot

        def pot(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            q, p = (s / tau).softmax(-1), (t / tau).softmax(-1)
            uniform = torch.full((s.shape[0],), 1 / s.shape[0], device=s.device)
            return ot.sinkhorn2(uniform, uniform, torch.cdist(q, p, p=1), epsilon, method="sinkhorn_log", numItermax=n_iters, stopThr=0.0)

        peers["POT ot.sinkhorn2 (sinkhorn_log, torch)"] = pot
    except ImportError:
        pass
    try:
        from geomloss import SamplesLoss

        samples_loss = SamplesLoss("sinkhorn", p=1, blur=epsilon, backend="tensorized")
        peers["geomloss SamplesLoss('sinkhorn') [different quantity]"] = lambda s, t: samples_loss((s / tau).softmax(-1), (t / tau).softmax(-1))
    except ImportError:
        pass
    rows = []
    for batch, classes in ((64, 100), (64, 1000), (256, 100), (256, 1000)):
        generator = torch.Generator(device=args.device).manual_seed(0)
        student = torch.randn(batch, classes, generator=generator, device=args.device).mul_(3).requires_grad_()
        teacher = torch.randn(batch, classes, generator=generator, device=args.device).mul_(3)
        for name, fn in peers.items():
            kwargs = {"temperature": tau} if name.startswith("kdlab") else {}
            times = []
            for _ in range(1 + args.sinkhorn_repeats):
                student.grad = None
                _sync(args.device)
                start = time.perf_counter()
                value = fn(student, teacher, **kwargs)
                value.backward()
                _sync(args.device)
                times.append(time.perf_counter() - start)
            rows.append({"contender": name, "B": batch, "C": classes, "value": value.item(), "time_s_median": statistics.median(times[1:])})
            print(rows[-1], flush=True)
    return rows


def hbm_lower_bound_s(args: argparse.Namespace) -> float:
    """Read student and teacher logits once and write the student's gradient once, at peak bandwidth."""
    bytes_moved = 3 * args.n * args.vocab * torch.finfo(getattr(torch, args.dtype)).bits // 8
    return bytes_moved / (args.hbm_gbps * 1e9)


def markdown(result: dict) -> str:
    setup = result["setup"]
    lines = [
        "## Divergences",
        "",
        f"`python benchmarks/bench_divergences.py` on {setup['machine']}, torch {setup['torch']}, "
        f"device {setup['device']}; raw numbers in `benchmarks/results/divergences_{setup['device']}.json`. "
        f"The machine was shared with other jobs (1/5/15-min load average at start: "
        f"{', '.join(f'{x:.1f}' for x in setup['load_average_at_start'])}), so times are indicative; memory is not affected.",
        "",
        f"### (a) Per-token divergence, forward + backward, logits [{setup['n']}, {setup['vocab']}] {setup['dtype']}",
        "",
        f"Median of {setup['repeats']} timed steps after a first one. Peak memory: {setup['memory']}",
        "",
        "| contender | quantity | value | time (s) | peak memory (MiB) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in result["per_token"]:
        if "skipped" in row:
            lines.append(f"| {row['contender']} | {row.get('quantity', '')} | skipped: {row['skipped']} | | |")
        else:
            lines.append(
                f"| {row['contender']} | {row['quantity']} | {row['value']:.4f} | {row['time_s_median']:.2f} | {row['peak_memory_mib']:.0f} |"
            )
    lines += [
        "",
        "### (b) Batch-level Sinkhorn (SinKD: softmax(z/2), L1 cost, eps = 0.1, 20 iterations), forward + backward",
        "",
        f"Median of {setup['sinkhorn_repeats']} timed steps, time only. POT computes the same <P, C> with marginals 1/B (kdlab's \"mean\"; SinKD's code value is B times it); "
        "geomloss's `SamplesLoss('sinkhorn')` is the debiased Sinkhorn "
        "divergence with eps-scaling, a different quantity.",
        "",
        "| contender | B | C | value | time (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['contender']} | {r['B']} | {r['C']} | {r['value']:.4f} | {1e3 * r['time_s_median']:.1f} |" for r in result["sinkhorn"]]
    lines += ["", result["gpu_note"], ""]
    return "\n".join(lines)


def write_readme(section: str) -> None:
    """Replace (or append) this script's `## Divergences` section, keeping the other sections."""
    text = README.read_text() if README.exists() else "# Benchmarks\n\nSpeed and memory of kdlab beside peer libraries; each section is written by its script.\n"
    start = text.find("## Divergences")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + ("" if end < 0 else text[end:])
    _atomic_write(README, text)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--n", type=int, help="positions N (default 4096 on CPU, 16384 on CUDA)")
    parser.add_argument("--vocab", type=int, help="vocabulary V (default 32000 on CPU, 128256 on CUDA)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="logits dtype (float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--chunk-size", type=int, help="positions per chunk (256 on CPU, 1024 on CUDA)")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after the first")
    parser.add_argument("--sinkhorn-repeats", type=int, default=10, help="timed Sinkhorn steps after the first")
    parser.add_argument("--hbm-gbps", type=float, default=3350.0, help="peak HBM bandwidth for the lower bound (H100 SXM: 3350)")
    parser.add_argument("--skip-sinkhorn", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for key, value in (GPU_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.worker:
        print(json.dumps(measure(args.worker, args)))
        return
    torch.manual_seed(0)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    if args.device == "cuda":
        machine = f"{torch.cuda.get_device_name()} ({machine})"
    bound = hbm_lower_bound_s(args)
    print(f"HBM lower bound for one forward+backward at {args.hbm_gbps:.0f} GB/s: {1e3 * bound:.2f} ms", flush=True)
    result = {
        "setup": {
            "machine": machine,
            "torch": torch.__version__,
            "device": args.device,
            "n": args.n,
            "vocab": args.vocab,
            "dtype": args.dtype,
            "chunk_size": args.chunk_size,
            "repeats": args.repeats,
            "sinkhorn_repeats": args.sinkhorn_repeats,
            "load_average_at_start": os.getloadavg(),
            "memory": "growth of max allocated CUDA memory during the first step"
            if args.device == "cuda"
            else "growth of the peak RSS (ru_maxrss) of a fresh process that already holds the inputs, during its first step",
            "hbm_gbps": args.hbm_gbps,
            "hbm_lower_bound_s": bound,
        },
        "per_token": per_token(args),
        "sinkhorn": [] if args.skip_sinkhorn else sinkhorn_rows(args),
        "gpu_note": (
            f"HBM-bandwidth lower bound (read both logits, write one gradient, {args.hbm_gbps:.0f} GB/s): {1e3 * bound:.2f} ms."
            if args.device == "cuda"
            else "GPU part (16384 x 128256 bf16 with Liger-Kernel and the HBM-bandwidth lower bound) not run: no GPU was lent "
            "to this task. Run `python benchmarks/bench_divergences.py --device cuda [--hbm-gbps 3350]` on one."
        ),
    }
    if not args.no_write:
        _atomic_write(RESULTS / f"divergences_{args.device}.json", json.dumps(result, indent=2) + "\n")
        write_readme(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
