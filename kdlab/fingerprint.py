"""Stable short hashes: of configs (teacher cache keys, resume matching) and of seeds derived from a run's seed."""

import hashlib
import json


def fingerprint(config: dict) -> str:
    """The first 16 hex digits of the SHA-256 of `config` as sorted JSON."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def derived_seed(*parts: int | str) -> int:
    """A seed in `[0, 2**32)` that depends on every one of `parts` (e.g. the run's seed, "train", the
    epoch and the step): the first 4 bytes of the BLAKE2b hash of their text, the same in every process
    and Python session (unlike `hash()`). 32 bits: what numpy's `seed` accepts."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def weights_fingerprint(model) -> str:
    """The first 16 hex digits of the SHA-256 of a torch module's state dict: every tensor's name,
    dtype, shape and bytes (in the state dict's order), so that other weights under the same name differ."""
    import torch  # here: hashing configs needs no torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
