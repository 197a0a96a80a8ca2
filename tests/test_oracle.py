"""The oracle -> teacher -> student protocol: exact oracle, cached teacher, proxy and golden curves, the figure."""

from pathlib import Path

import pytest
import torch
from test_configs import compose_train

from kdlab.oracle import oracle_lm, teacher_lm
from kdlab.oracle.plots import FIGURE, multirun_teacher_hacking
from kdlab.run import run

ORACLE = dict(vocab_size=8, prompt_length=2, response_length=3, n_layer=1, n_embd=8, n_head=2, init_std=0.1, temperature=0.5, seed=0)
TEACHER = dict(n_layer=1, n_embd=8, n_head=2, sequences=32, epochs=1, batch_size=16, lr=1e-2)


def test_oracle_is_a_seeded_sharpened_gpt2() -> None:
    ids = torch.tensor([[0, 3, 5, 1]])
    sharp, again, flat = oracle_lm(ORACLE), oracle_lm(ORACLE), oracle_lm(ORACLE | {"temperature": 1.0})
    with torch.no_grad():
        torch.testing.assert_close(sharp(input_ids=ids).logits, again(input_ids=ids).logits)
        torch.testing.assert_close(sharp(input_ids=ids).logits, 2 * flat(input_ids=ids).logits)  # logits / 0.5
    assert not any(p.requires_grad for p in sharp.parameters())
    with pytest.raises(ValueError, match="exactly the keys"):
        oracle_lm({"vocab_size": 8})


def test_teacher_is_trained_once_and_cached(tmp_path: Path) -> None:
    first, second = teacher_lm(ORACLE, TEACHER, str(tmp_path)), teacher_lm(ORACLE, TEACHER, str(tmp_path))
    assert len(list(tmp_path.glob("oracle_teacher-*/metrics.json"))) == 1
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)


def oracle_overrides(tmp_path: Path) -> list[str]:
    spec = ",".join(f"{key}:{value}" for key, value in ORACLE.items())
    teacher = ",".join(f"{key}:{value}" for key, value in TEACHER.items())
    return [
        "experiment=teacher_hacking", f"dataset.datamodule.oracle={{{spec}}}", f"dataset.datamodule.teacher={{{teacher}}}",
        "dataset.datamodule.prompts={train:16,val:8,test:8}", "dataset.batch_size=8", "dataset.datamodule.batches_per_epoch=2",
        "module.sequence_samples=8", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", "logger=csv", "~callbacks.progress_bar",
        f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path.parent}",
    ]


@pytest.mark.parametrize("data", ["oracle", "oracle_online"])
def test_teacher_hacking_logs_proxy_and_golden_and_draws_them(data: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "sweep" / f"0-{data}"
    metrics = run(compose_train([*oracle_overrides(run_dir), f"dataset={data}"], run_dir))
    for name in ("val/proxy_fkl", "val/proxy_rkl", "val/golden_fkl", "val/golden_rkl", "val/teacher_golden_fkl", "val/oracle_fkl", "test/golden_fkl"):
        assert name in metrics and metrics[name] >= 0, name
    assert (run_dir / FIGURE).is_file()
    assert multirun_teacher_hacking(tmp_path / "sweep") == tmp_path / "sweep" / FIGURE
