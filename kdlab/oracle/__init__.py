"""The oracle → teacher → student protocol of "On Teacher Hacking in Language Model Distillation"
(Tiapkin et al. 2025): the oracle and teacher LMs (`lm.py`) and the proxy-vs-golden figures (`plots.py`).
The data module that samples the corpus is `kdlab.data.oracle`."""

from kdlab.oracle.lm import domain_teacher_lm, oracle_lm, reference_lm, teacher_lm

__all__ = ["domain_teacher_lm", "oracle_lm", "reference_lm", "teacher_lm"]
