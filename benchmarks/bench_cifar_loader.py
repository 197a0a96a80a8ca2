"""Throughput of the two CIFAR input paths on the CPU: torchvision transforms in a DataLoader versus
the on-device path (`dataset.on_device=true`: whole set as one tensor, crop + flip + normalise per
batch with tensor ops), on 50,000 random 32x32 images (the size of CIFAR's training set) made in memory.

    python benchmarks/bench_cifar_loader.py [--batches 300] [--out benchmarks/results/cifar_loader_cpu.json]

Images/s counts training batches (augmented, normalised, collated) delivered to the training loop.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from kdlab.data import CIFARDataModule


def datamodule(on_device: bool, num_workers: int, batch_size: int) -> CIFARDataModule:
    dm = CIFARDataModule("cifar100", root="unused", batch_size=batch_size, num_workers=num_workers, on_device=on_device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 100, (50_000,), generator=generator)
    dm.splits = {"train": (images, labels)}  # what setup() reads from the CIFAR files
    return dm


def images_per_second(dm: CIFARDataModule, batches: int) -> float:
    loader = iter(dm.train_dataloader())
    next(loader)  # worker start-up is not throughput
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        count += len(next(loader)["label"])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cifar_loader_cpu.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = {"dataloader_workers0": (False, 0), "dataloader_workers2": (False, 2), "on_device_cpu": (True, 0)}
    results = {}
    for name, (on_device, workers) in cases.items():
        results[name] = round(images_per_second(datamodule(on_device, workers, args.batch_size), args.batches))
        print(f"{name:22s} {results[name]:>9,d} images/s")
    record = {
        "images_per_second": results,
        "batch_size": args.batch_size,
        "batches_timed": args.batches,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "note": "shared 2-core machine; the DataLoader path with workers competes with the main process for cores",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
