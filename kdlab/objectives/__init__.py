"""Method objectives: `objective(outputs, batch) -> (loss, logs)`, built on `kdlab.divergences`.

`outputs["logits"]` are the trained model's logits (`[B, C]`); distillation regimes add
`outputs["teacher_logits"]`. `logs` maps term names to detached scalars (logged as `train/<name>`).
"""

from kdlab.objectives.cross_entropy import CrossEntropy
from kdlab.objectives.hinton_kd import HintonKD

__all__ = ["CrossEntropy", "HintonKD"]
