"""LightningModules, one per training regime, on one skeleton (`kdlab.modules.base.TrainingModule`).
They own optimisation and logging, never the mathematics of a loss (that is the objective's) or of
a divergence (that is `kdlab.divergences`')."""

import warnings

from kdlab.modules.base import NonFiniteLossError, TrainingModule
from kdlab.modules.distill import DistillModule
from kdlab.modules.lm_distill import LMDistillModule
from kdlab.modules.on_policy import OnPolicyModule
from kdlab.modules.online import OnlineDistillModule
from kdlab.modules.policy import PolicyModule
from kdlab.modules.teacher import TeacherModule

__all__ = ["DistillModule", "LMDistillModule", "NonFiniteLossError", "OnPolicyModule", "OnlineDistillModule", "PolicyModule", "TeacherModule", "TrainingModule"]

# Frozen teachers and references stay in eval mode on purpose; Lightning warns about every module
# in eval mode when fitting starts.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
