"""The synthetic tasks whose truth is known: the known-reward alignment task (a true reward with
several modes, `task.py`), the verifiable-reward arithmetic task (`arithmetic.py`), their SFT
reference (`reference.py`), exact sequence-level quantities by enumeration (`exact.py`) and the
reward–KL–diversity figures (`plots.py`). The data modules that serve them are
`kdlab.data.synthetic_preferences` (preference pairs) and `kdlab.data.task_prompts` (prompts)."""

from kdlab.synthetic.arithmetic import ArithmeticTask
from kdlab.synthetic.reference import sft_policy
from kdlab.synthetic.task import KnownRewardTask

__all__ = ["ArithmeticTask", "KnownRewardTask", "sft_policy"]
