"""Stable short hashes of configs (teacher cache keys, resume matching)."""

import hashlib
import json


def fingerprint(config: dict) -> str:
    """The first 16 hex digits of the SHA-256 of `config` as sorted JSON."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
