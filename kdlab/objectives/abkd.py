"""ABKD for classification: KD whose divergence is the α-β divergence (Wang et al., ICML 2025, arXiv 2505.04560;
official code ghwang-s/abkd `standard_classification`; docs/methods.md §1.7, §7.3)."""

from kdlab.objectives.base import OpenSlot
from kdlab.objectives.hinton_kd import HintonKD


class ABKD(HintonKD):
    """`L = ce_weight · CE(y, softmax(z_s)) + kd_weight · T² · D_AB^{(α,β)}(softmax(z_t/T) ‖ softmax(z_s/T))`.

    Hinton KD (`HintonKD`) whose divergence slot takes only `ab`, with any α, β
    (`divergence.alpha=… divergence.beta=…`). The code's loss is `γ · CE + b · D_AB` without a T² factor,
    so `kd_weight = b / T²` (its CIFAR-100 script: γ = 1, b = 32 or 64, T = 4, α = 0.8, β = 0.3).
    """

    divergence_slot = OpenSlot(("ab",))
