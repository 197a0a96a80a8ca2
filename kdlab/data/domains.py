"""Training data drawn from N domains with weights that can change during training (DDK's
domain-knowledge-guided sampling, docs/methods.md §7.8).

`DomainWeightedSampler` yields indices of a dataset whose item i belongs to domain `domain_of[i]`:
each draw picks a domain d with probability `weights()[d]` (read at every draw, so a new mixture
applies from the next batch the loader builds), then the next item of d's own shuffled order (each
domain is cycled through without replacement and reshuffled when it runs out). An epoch is
`len(domain_of)` draws. The random numbers come from a generator seeded from torch's global RNG when
iteration starts, so a seeded run draws the same sequence.

A datamodule is multi-domain when it has `domains` (the names, in tag order), `domain_weights` (the
current mixture, `[N]`, summing to one), `set_domain_weights(weights)` and `domain_loader(split, d)`
(the held-out rows of one domain); `DomainMixture` gives the weights part.
"""

from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler

from kdlab.errors import ConfigError


class DomainWeightedSampler(Sampler[int]):
    """Indices drawn domain by domain with the current `weights()` (see the module docstring)."""

    def __init__(self, domain_of: Tensor, weights: Callable[[], Tensor]) -> None:
        super().__init__()
        self.domain_of, self.weights = domain_of, weights
        self.members = [torch.nonzero(domain_of == d).flatten() for d in range(int(domain_of.max()) + 1)]
        if any(len(rows) == 0 for rows in self.members):
            raise ValueError("every domain needs at least one training item")

    def __len__(self) -> int:
        return len(self.domain_of)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        orders = [rows[torch.randperm(len(rows), generator=generator)] for rows in self.members]
        positions = [0] * len(self.members)
        for _ in range(len(self)):
            d = int(torch.multinomial(self.weights(), 1, generator=generator))
            if positions[d] == len(orders[d]):
                orders[d], positions[d] = self.members[d][torch.randperm(len(self.members[d]), generator=generator)], 0
            yield int(orders[d][positions[d]])
            positions[d] += 1


class DomainMixture:
    """The sampling mixture of a multi-domain datamodule: uniform until `set_domain_weights` changes it."""

    domains: list[str]

    def init_weights(self, domains: list[str]) -> None:
        self.domains = list(domains)
        self.domain_weights = torch.full((len(domains),), 1 / len(domains), dtype=torch.float64)

    def set_domain_weights(self, weights: Tensor) -> None:
        """The mixture the following training batches are drawn with: `[N]` non-negative, summing to one."""
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (len(self.domains),) or (weights < 0).any() or abs(float(weights.sum()) - 1) > 1e-6:
            raise ConfigError(f"domain weights must be {len(self.domains)} non-negative numbers summing to one, got {weights.tolist()}")
        self.domain_weights = weights
