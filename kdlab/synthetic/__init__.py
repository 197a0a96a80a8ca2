"""The known-reward alignment benchmark: a task with a true reward and several modes (`task.py`),
its SFT reference (`reference.py`), and the reward–KL–diversity figures (`plots.py`). The data
module that turns it into preference pairs is `kdlab.data.synthetic_preferences`."""

from kdlab.synthetic.reference import sft_policy
from kdlab.synthetic.task import KnownRewardTask

__all__ = ["KnownRewardTask", "sft_policy"]
