"""Method objectives: `objective(outputs, batch) -> (loss, logs)`, built on `kdlab.divergences`.

`outputs["logits"]` are the trained model's logits (`[B, C]`); distillation regimes add
`outputs["teacher_logits"]`; in training `outputs["progress"]` is a `Progress(epoch, max_epochs)`.
An objective with `needs_features = True` also gets `outputs["features"]` (and
`outputs["teacher_features"]`), and one with a `prepare(module)` method is prepared once when
fitting starts (see `kdlab.modules.base.ClassifierModule`). `logs` maps term names to detached
scalars (logged as `train/<name>`).
"""

from kdlab.objectives.bdkd import BDKD
from kdlab.objectives.cross_entropy import CrossEntropy
from kdlab.objectives.dhkd import DHKD
from kdlab.objectives.dkd import DKD
from kdlab.objectives.hinton_kd import HintonKD
from kdlab.objectives.nd import ND
from kdlab.objectives.nkd import NKD
from kdlab.objectives.progress import Progress
from kdlab.objectives.preference import DPO, IPO, SFT, PreferenceObjective
from kdlab.objectives.pskd import PSKD
from kdlab.objectives.sinkd import SinKD
from kdlab.objectives.tdpo import TDPO
from kdlab.objectives.token_kd import TokenKD
from kdlab.objectives.uskd import USKD

__all__ = ["BDKD", "DHKD", "DKD", "DPO", "IPO", "ND", "NKD", "PSKD", "SFT", "TDPO", "USKD", "PreferenceObjective", "CrossEntropy", "HintonKD", "Progress", "SinKD", "TokenKD"]
