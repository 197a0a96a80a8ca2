"""Preference data through HF `datasets` from tiny local files in the real formats, with a tiny offline tokenizer."""

import json
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from conftest import kdlab
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from kdlab.data.preference import PreferenceDataModule, parse_pair
from kdlab.modules import PolicyModule
from kdlab.objectives.preference import DPO

ROWS = [
    {"prompt": "Is the sky blue?", "chosen": " Yes, on a clear day.", "rejected": " No."},
    {"prompt": "Name a prime.", "chosen": " Seven.", "rejected": " Nine, which is not one."},
    {"prompt": "Say hi.", "chosen": " Hi there!", "rejected": " Go away."},
    {"prompt": "Two plus two?", "chosen": " Four.", "rejected": " Five."},
]
HH = [
    {"chosen": "\n\nHuman: hello\n\nAssistant: hi\n\nHuman: how are you?\n\nAssistant: fine, thanks.",
     "rejected": "\n\nHuman: hello\n\nAssistant: hi\n\nHuman: how are you?\n\nAssistant: go away."},
    {"chosen": "\n\nHuman: a joke?\n\nAssistant: a pun.", "rejected": "\n\nHuman: a joke?\n\nAssistant: no."},
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A byte-level BPE tokenizer (200 tokens) trained here on the test text, saved with save_pretrained."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = [value for row in ROWS + HH for value in row.values()]
    tokenizer.train_from_iterator(text, trainers.BpeTrainer(vocab_size=200, special_tokens=["<eos>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>").save_pretrained(path)
    return str(path)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def jsonl_module(tmp_path: Path, tokenizer: str, rows: list[dict], **kwargs) -> PreferenceDataModule:
    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", rows) for split in ("train", "test")}
    return PreferenceDataModule("json", tokenizer, data_files=files, splits={"val": "test"}, batch_size=2, **kwargs)


def test_batches_score_response_tokens_only(tmp_path: Path, tokenizer_dir: str) -> None:
    data = jsonl_module(tmp_path, tokenizer_dir, ROWS)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    tokenizer = data.tokenizer
    assert batch["input_ids"].shape == batch["labels"].shape == (4, batch["input_ids"].shape[1])
    for row, (pair, key) in enumerate([(0, "chosen"), (1, "chosen"), (0, "rejected"), (1, "rejected")]):
        prompt = tokenizer(ROWS[pair]["prompt"], add_special_tokens=False)["input_ids"]
        response = tokenizer(ROWS[pair][key], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        scored = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert scored == response
        assert batch["input_ids"][row, : len(prompt)].tolist() == prompt
        assert batch["attention_mask"][row].sum() == len(prompt) + len(response)
    assert batch["index"].tolist() == [0, 1]


def test_hh_conversations_are_split_at_the_last_assistant_turn(tmp_path: Path, tokenizer_dir: str) -> None:
    prompt, chosen, rejected = parse_pair(HH[0], "hh", {"chosen": "chosen", "rejected": "rejected"})
    assert prompt.endswith("how are you?\n\nAssistant:") and chosen == " fine, thanks." and rejected == " go away."
    for split in ("train", "test"):
        pd.DataFrame(HH * 3).to_parquet(tmp_path / f"{split}.parquet")
    data = PreferenceDataModule("parquet", tokenizer_dir, layout="hh", batch_size=2, val_fraction=0.34,
                                data_files={split: str(tmp_path / f"{split}.parquet") for split in ("train", "test")})
    data.setup("fit")
    assert len(data.pairs["train"]) + len(data.pairs["val"]) == 6 and len(data.pairs["test"]) == 6


def test_missing_column_is_a_clear_error(tmp_path: Path, tokenizer_dir: str) -> None:
    data = jsonl_module(tmp_path, tokenizer_dir, [{"prompt": r["prompt"], "chosen": r["chosen"]} for r in ROWS])
    with pytest.raises(ValueError, match="no column 'rejected'"):
        data.setup("fit")
    renamed = jsonl_module(tmp_path, tokenizer_dir, [{"q": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in ROWS],
                           columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    renamed.setup("fit")
    assert len(renamed.pairs["train"]) == 4


@pytest.mark.parametrize("bad, reason", [({"chosen": "   "}, "empty response"), ({"rejected": ROWS[1]["chosen"]}, "chosen = rejected")])
def test_bad_pairs_raise_or_are_counted_and_skipped(bad: dict, reason: str, tmp_path: Path, tokenizer_dir: str) -> None:
    rows = [ROWS[0], ROWS[1] | bad, *ROWS[2:]]
    with pytest.raises(ValueError, match=f"row 1: {reason}"):
        jsonl_module(tmp_path, tokenizer_dir, rows).setup("fit")
    data = jsonl_module(tmp_path, tokenizer_dir, rows, on_bad_pair="skip")
    data.setup("fit")
    assert data.skipped == {"train": 1, "val": 1, "test": 1} and len(data.pairs["train"]) == 3


def test_dpo_trains_on_the_files_and_samples_until_eos(tmp_path: Path, tokenizer_dir: str) -> None:
    L.seed_everything(0)
    data = jsonl_module(tmp_path, tokenizer_dir, ROWS, max_prompt_length=16, max_length=32)
    data.setup("fit")
    policy = GPT2LMHeadModel(GPT2Config(vocab_size=data.vocab_size, n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                        eos_token_id=data.eos_token_id))
    PolicyModule.check_models(data, None, policy, None, DPO(beta=0.1))
    module = PolicyModule(policy, DPO(beta=0.1), lambda params: torch.optim.Adam(params, lr=1e-2), reference_soup=None, soup_weights=None,
                          cache_reference=True, samples=6, max_new_tokens=5, disable_dropout=True)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert 1 <= trainer.callback_metrics["val/length"] <= 5 and "val/kl_ref" in trainer.callback_metrics


def test_dpo_from_the_command_line_on_a_saved_policy_and_jsonl_files(tmp_path: Path, tokenizer_dir: str) -> None:
    """The user's path: `model=hf_policy` loads a policy with `from_pretrained` from a local directory."""
    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", ROWS) for split in ("train", "test")}
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    policy_dir = tmp_path / "policy"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                               bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)).save_pretrained(policy_dir)
    outputs = tmp_path / "outputs"
    kdlab("train", "+method=dpo", "dataset=preferences_jsonl", "model=hf_policy", "logger=none",
          f"model.student.name_or_path={policy_dir}", f"dataset.datamodule.tokenizer={tokenizer_dir}",
          f"dataset.datamodule.data_files={{train:'{files['train']}',test:'{files['test']}'}}",
          "dataset.batch_size=2", "dataset.datamodule.max_prompt_length=16", "dataset.datamodule.max_length=32",
          "trainer.max_steps=2", "module.samples=4", "module.max_new_tokens=4", outputs=outputs)
    (results,) = [json.loads(p.read_text()) for p in outputs.rglob("results.json")]
    assert results["status"] == "completed" and results["method"] == "dpo"
    assert 0.0 <= results["metrics"]["test/accuracy"] <= 1.0
