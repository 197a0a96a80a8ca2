"""Batch-weighted running means of the training step's values, kept on their device between log rows."""

import torch

Value = torch.Tensor | float


class RunningMeans:
    """For each name, `sum_i w_i x_i / sum_i w_i` over the steps `add`ed since the last `pop()`.

    A step adds its scalars (0-dim tensors or floats) with its weight `w` (its batch size); the sums
    stay where the values are (tensors on their device, no host synchronisation), so a training loop
    can read the means only on the steps it logs. A name absent from some steps is averaged over the
    steps that gave it.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Value] = {}
        self.weights: dict[str, int] = {}

    def add(self, values: dict[str, Value], weight: int) -> None:
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.detach()
            self.sums[name] = self.sums.get(name, 0.0) + value * weight
            self.weights[name] = self.weights.get(name, 0) + weight

    def means(self) -> dict[str, Value]:
        return {name: total / self.weights[name] for name, total in self.sums.items()}

    def pop(self) -> dict[str, Value]:
        """The means, and start again from nothing."""
        means = self.means()
        self.sums, self.weights = {}, {}
        return means

    def state_dict(self) -> dict[str, dict]:
        return {"sums": dict(self.sums), "weights": dict(self.weights)}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        self.sums, self.weights = dict(state["sums"]), dict(state["weights"])
