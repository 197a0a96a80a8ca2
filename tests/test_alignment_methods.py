"""The alignment methods of the on-policy regime (f-DPG, GRPO, DPH-RL, D2O), MiniLLM and SparsePO,
each trained end to end for two steps on tiny offline data through `kdlab.run`, and the bad inputs
that must stop a run with one clear line."""

from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from lm_files import gpt2_tokenizer, instruction_text, save_gpt2, write_instructions
from test_configs import compose_train

from kdlab.errors import ConfigError, DataError
from kdlab.rewards import Reward
from kdlab.run import run

# The synthetic experiments shrunk to seconds: a 1-layer SFT reference trained on 128 sequences.
TINY_SFT = ["dataset.sft.model.n_layer=1", "dataset.sft.model.n_embd=16", "dataset.sft.model.n_head=2",
            "dataset.sft.recipe.sequences=128", "dataset.sft.recipe.epochs=1"]
FDPG = ["experiment=fdpg_synthetic", *TINY_SFT, "dataset.datamodule.rows={train:4,val:2,test:2}", "dataset.batch_size=2",
        "module.samples_per_prompt=4", "module.eval_samples_per_prompt=4", "objective.calibration_samples=16"]
ARITHMETIC = ["experiment=dphrl_arithmetic", *TINY_SFT, "dataset.datamodule.rows={train:100,val:4,test:4}", "dataset.batch_size=4",
              "module.samples_per_prompt=2", "module.eval_samples_per_prompt=4"]
PREFERENCES = ["experiment=pref_synthetic", "dataset.datamodule.sft.recipe.sequences=128", "dataset.datamodule.sft.recipe.epochs=1",
               "dataset.datamodule.sft.model.n_layer=1", "dataset.datamodule.sft.model.n_embd=16", "dataset.datamodule.sft.model.n_head=2",
               "dataset.datamodule.pairs.train=8", "dataset.datamodule.pairs.val=4", "dataset.datamodule.pairs.test=4", "dataset.batch_size=2"]
CASES = {
    "fdpg-js": [*FDPG],
    "fdpg-fkl-pointwise": [*FDPG, "divergence=fkl", "objective.target=pointwise", "objective.beta=null", "objective.threshold=0.6"],
    "fdpg-tvd-distributional-online": [*FDPG, "divergence=tvd", "objective.target=distributional", "objective.beta=null",
                                       "objective.moment=0.6", "objective.proposal=online"],
    "grpo": [*ARITHMETIC, "method=grpo"],
    "dphrl-fkl": [*ARITHMETIC, "objective.presamples=2", "objective.pef_threshold=0.5"],
    "dphrl-js": [*ARITHMETIC, "divergence=js", "objective.presamples=2", "objective.pef_threshold=0.5"],
    "dphrl-rkl": [*ARITHMETIC, "divergence=rkl"],
    "d2o": [*PREFERENCES, "method=d2o", "reward=known_reward", "~module.samples", "module.samples_per_prompt=3", "module.max_new_tokens=8",
            "module.eval_samples_per_prompt=2"],
    "sparsepo-learned": [*PREFERENCES, "method=sparsepo", "objective.l1_reward=0.01", "objective.l1_kl=0.01", "module.samples=8"],
    "sparsepo-mapo": [*PREFERENCES, "method=sparsepo", "objective.mask=mapo", "module.samples=8"],
}
EXPECTED = {
    "fdpg": ("train/pseudo_reward", "train/log_z", "test/reward", "test/kl_ref", "test/true_js", "test/true_fkl", "test/exact_entropy"),
    "grpo": ("train/pg_loss", "train/reward", "test/pass@1", "test/pass@4", "test/exact_pass@16", "val/kl_ref"),
    "dphrl": ("train/pg_loss", "test/pass@4", "test/exact_pass@256"),
    "d2o": ("train/log_ratio/negative", "train/accuracy", "test/reward"),
    "sparsepo": ("train/rewards/margin", "test/accuracy", "test/kl_ref", "test/reward"),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of SFT references for the file (the first test that needs one trains it)."""
    return tmp_path_factory.mktemp("teachers")


def common(tmp_path: Path, cache: Path) -> list[str]:
    return ["trainer.max_steps=2", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "++trainer.val_check_interval=1.0", "trainer.check_val_every_n_epoch=1",
            "logger=csv", "~callbacks.progress_bar", f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}", f"paths.teacher_dir={cache}"]


@pytest.mark.parametrize("case", CASES)
def test_each_method_trains_two_steps_and_reports(case: str, tmp_path: Path, cache: Path) -> None:
    metrics = run(compose_train([*CASES[case], *common(tmp_path, cache)], tmp_path))
    for name in EXPECTED[case.split("-")[0]]:
        assert name in metrics and torch.isfinite(torch.tensor(metrics[name])), name
    assert (tmp_path / "policy" / "config.json").exists()
    if case.startswith("fdpg"):
        assert (tmp_path / "reward_kl.png").exists()


class NaNReward(Reward):
    def __call__(self, responses) -> torch.Tensor:
        return torch.full((len(responses),), float("nan"))


class TextReward(Reward):
    """A text reward (the share of the letter e), for data with a tokenizer."""

    reads_text = True

    def __call__(self, responses) -> torch.Tensor:
        return torch.tensor([text.count("e") / max(len(text), 1) for text in responses.texts()])


@pytest.mark.parametrize(("overrides", "error", "message"), [
    (["module.samples_per_prompt=0"], ConfigError, "module.samples_per_prompt"),
    (["reward=none"], ConfigError, "give a reward"),
    (["reward._target_=test_alignment_methods.NaNReward", "~reward.task"], DataError, "returned nan"),
    (["reward._target_=test_alignment_methods.TextReward", "~reward.task"], ConfigError, "scores text"),
    (["divergence=fkl", "objective.target=pointwise", "objective.beta=null", "objective.threshold=2.0"], DataError, "has no mass"),
    (["divergence=rkl", "objective.target=pointwise", "objective.beta=null", "objective.threshold=0.5"], ConfigError, "infinite"),
])
def test_bad_inputs_fail_with_one_clear_line(overrides: list[str], error: type, message: str, tmp_path: Path, cache: Path) -> None:
    """Before any training (an error raised while Hydra builds the module reaches the caller wrapped by Hydra)."""
    with pytest.raises((error, InstantiationException), match=message):
        run(compose_train([*FDPG, *overrides, *common(tmp_path, cache)], tmp_path))


# ---- MiniLLM in the LM distillation regime ----
@pytest.fixture(scope="module")
def lm_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("lm")
    tokenizer = gpt2_tokenizer(root / "tokenizer", instruction_text())
    return {"student": save_gpt2(root / "student", tokenizer, n_layer=1, n_embd=16),
            "teacher": save_gpt2(root / "teacher", tokenizer, n_layer=2, n_embd=32, extra_rows=7, seed=1),  # a padded vocabulary
            "data": write_instructions(root / "data")}


def minillm_overrides(files: dict, tmp_path: Path) -> list[str]:
    data = files["data"]
    return ["+method=minillm", "dataset=instructions_jsonl", "model=gpt2_xl_to_gpt2", f"model.teacher.name_or_path={files['teacher']}",
            f"model.student.name_or_path={files['student']}", f"dataset.datamodule.data_files={{train:{data['train']},test:{data['test']}}}",
            "dataset.datamodule.val_size=2", "dataset.batch_size=2", "dataset.datamodule.max_prompt_length=48", "dataset.datamodule.max_length=64",
            "module.source.max_new_tokens=6", "module.max_new_tokens=6", "module.generation_samples=2",
            "trainer.max_steps=2", "trainer.max_epochs=1", "logger=none", "~callbacks.progress_bar",
            f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}"]


def test_minillm_trains_two_steps_on_teacher_mixed_samples(lm_files: dict, tmp_path: Path) -> None:
    metrics = run(compose_train(minillm_overrides(lm_files, tmp_path), tmp_path))
    for name in ("train/pg_loss", "train/single_step_kl", "train/importance_weight", "train/generated", "val/nll", "test/rougeL"):
        assert name in metrics and torch.isfinite(torch.tensor(metrics[name])), name
    assert metrics["train/generated"] == 1.0


def test_minillm_refuses_the_datasets_responses(lm_files: dict, tmp_path: Path) -> None:
    overrides = [*minillm_overrides(lm_files, tmp_path), "module.source._target_=kdlab.modules.lm_sources.DatasetResponses",
                 "~module.source.teacher_weight", "~module.source.temperature", "~module.source.max_new_tokens"]
    with pytest.raises((ConfigError, InstantiationException), match="trains on student samples"):
        run(compose_train(overrides, tmp_path))
