"""Which process of a multi-process run this is, before torch.distributed is initialised."""

import os

# Lightning's launcher and torchrun set LOCAL_RANK/RANK; srun (hardware=slurm) starts every task of a
# multi-task job itself, and only SLURM_PROCID tells the rank then.
_RANK_VARIABLES = ("LOCAL_RANK", "RANK", "SLURM_PROCID")


def is_worker_process() -> bool:
    """True in the non-zero-rank processes (DDP workers), which must not write shared files."""
    return any(int(os.environ.get(name, "0")) > 0 for name in _RANK_VARIABLES)
