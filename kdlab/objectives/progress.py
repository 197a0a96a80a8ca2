"""Where training stands: what schedule-driven objectives (DKD/ND warm-up, PS-KD) read from `outputs["progress"]`."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """`epoch` counts from 0 (Lightning's `current_epoch`); `max_epochs` is the run's length in epochs
    (`trainer.max_epochs`; -1 or None when the run is bounded by steps only)."""

    epoch: int
    max_epochs: int | None

    def fraction_done(self) -> float:
        """`(epoch + 1) / max_epochs`: reaches 1 in the last epoch (PS-KD's schedule). Raises ValueError
        when the run has no epoch budget, because the schedule is then undefined."""
        if self.max_epochs is None or self.max_epochs <= 0:
            raise ValueError(
                f"this objective's schedule needs a finite trainer.max_epochs, got {self.max_epochs}"
            )
        return (self.epoch + 1) / self.max_epochs
