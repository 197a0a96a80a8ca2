"""Peak memory and time of kdlab's token-level KD loss from final hidden states: naive vs chunked vs fused.

The case: N = B·L response tokens, hidden size H, vocabulary V, student and teacher LM heads `[V, H]`;
one forward+backward of forward-KL distillation (`TokenKD`, kd_ratio 1) into the student's hidden
states and head. Contenders:

- `naive`: both models' logits `h W^T` in full, then the plain loss (fp32 log-softmaxes of `[N, V]`);
- `chunked`: both models' logits in full (what a `forward` returns), the loss through
  `kdlab.divergences.chunked` (`objective.chunk_size`): only the loss's fp32 temporaries are bounded;
- `fused`: `objective.fused=true`: logits made chunk by chunk from hidden states and heads inside the
  loss (activation checkpointing), never held in full for either model.

Memory. CPU: every contender runs in a fresh subprocess that first builds its inputs; the number is the
growth of the peak resident set size (`ru_maxrss`) during its first forward+backward (what the loss
needs beyond its inputs, gradient buffers included), with glibc's `MALLOC_MMAP_THRESHOLD_=65536` so that
freed buffers leave the resident set (glibc's adaptive threshold otherwise keeps freed chunk-sized
buffers resident and the peak counts them again). CUDA: `torch.cuda.max_memory_allocated` growth.

    python benchmarks/bench_lm_memory.py                    # CPU: N=2048, V=32000, H=512, fp32 -> results/lm_memory_cpu.json
    python benchmarks/bench_lm_memory.py --device cuda      # N=16384, V=128256, H=2048, bf16 -> results/lm_memory_cuda.json
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
from pathlib import Path

import torch

from kdlab.divergences import get
from kdlab.objectives.token_kd import TokenKD

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULTS = {
    "cpu": {"n": 2048, "vocab": 32000, "hidden": 512, "dtype": "float32", "chunk_size": 256},
    "cuda": {"n": 16384, "vocab": 128256, "hidden": 2048, "dtype": "bfloat16", "chunk_size": 2048},
}
CONTENDERS = ("naive", "chunked", "fused")


def inputs(n: int, vocab: int, hidden: int, dtype: torch.dtype, device: str) -> dict:
    generator = torch.Generator(device).manual_seed(0)
    make = lambda *shape, grad=False: torch.randn(*shape, generator=generator, device=device, dtype=dtype).mul_(0.05).requires_grad_(grad)  # noqa: E731
    labels = torch.randint(vocab, (1, n + 1), generator=generator, device=device)
    return {"hidden": make(1, n + 1, hidden, grad=True), "head": make(vocab, hidden, grad=True),
            "teacher_hidden": make(1, n + 1, hidden), "teacher_head": make(vocab, hidden), "labels": labels}


def step(contender: str, x: dict, chunk_size: int) -> float:
    """One forward+backward of forward-KL token distillation; returns the loss."""
    batch = {"labels": x["labels"]}
    if contender == "fused":
        objective = TokenKD(get("fkl"), kd_ratio=1.0, temperature=1.0, chunk_size=chunk_size, fused=True)
        outputs = {"hidden": x["hidden"], "head": (x["head"], None), "teacher_hidden": x["teacher_hidden"], "teacher_head": (x["teacher_head"], None)}
    else:
        objective = TokenKD(get("fkl"), kd_ratio=1.0, temperature=1.0, chunk_size=chunk_size if contender == "chunked" else None, fused=False)
        with torch.no_grad():
            teacher_logits = x["teacher_hidden"] @ x["teacher_head"].T
        outputs = {"logits": x["hidden"] @ x["head"].T, "teacher_logits": teacher_logits}
    loss, _ = objective(outputs, batch)
    loss.backward()
    x["hidden"].grad = x["head"].grad = None
    return float(loss)


def measure(contender: str, setup: dict, device: str, repeats: int) -> dict:
    """Run in this process (a fresh one per contender on CPU): peak growth of the first step, then timings."""
    x = inputs(setup["n"], setup["vocab"], setup["hidden"], getattr(torch, setup["dtype"]), device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    value = step(contender, x, setup["chunk_size"])
    sync()
    first = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(contender, x, setup["chunk_size"])
        sync()
        times.append(time.perf_counter() - start)
    return {"contender": contender, "loss": value, "peak_memory_mib": round((peak - before) / 2**20, 1),
            "time_s_first": round(first, 4), "time_s_median": round(statistics.median(times), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)  # internal: measure one contender
    for key, value in DEFAULTS["cpu"].items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value))
    args = parser.parse_args()
    setup = DEFAULTS[args.device] | {key: value for key in DEFAULTS["cpu"] if (value := getattr(args, key)) is not None}
    if args.worker:
        print(json.dumps(measure(args.worker, setup, args.device, args.repeats)))
        return
    rows = []
    for contender in CONTENDERS:  # a fresh process each: peak memory of one contender, not of the ones before it
        command = [sys.executable, __file__, "--device", args.device, "--repeats", str(args.repeats), "--worker", contender,
                   *(arg for key, value in setup.items() for arg in (f"--{key.replace('_', '-')}", str(value)))]
        env = os.environ | {"MALLOC_MMAP_THRESHOLD_": str(2**16)}  # glibc: large buffers mmapped, returned when freed
        rows.append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]))
        print(rows[-1])
    losses = [row["loss"] for row in rows]
    if max(losses) - min(losses) > 1e-3 * abs(losses[0]):
        raise AssertionError(f"contenders disagree on the loss: {losses}")
    record = {
        "setup": setup | {"device": args.device, "repeats": args.repeats, "torch": torch.__version__,
                          "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"
                          + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
                          "load_average_at_start": os.getloadavg(),
                          "memory": "growth of the peak RSS (ru_maxrss) of a fresh process holding the inputs, during its first step (MALLOC_MMAP_THRESHOLD_=65536)"
                          if args.device == "cpu" else "growth of torch.cuda.max_memory_allocated during the first step"},
        "results": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"lm_memory_{args.device}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
