"""Tiny Hugging Face files in the real formats, built offline: tokenizers trained on the fixture text,
GPT-2 / BERT models saved with `save_pretrained`, instruction jsonl and GLUE parquet files."""

import json
from pathlib import Path

import pandas as pd
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

INSTRUCTIONS = [
    {"instruction": "Name a prime number.", "context": "", "response": "Seven is a prime number."},
    {"instruction": "Summarise the text.", "context": "The cat sat on the mat all day.", "response": "A cat sat on a mat."},
    {"instruction": "Say hello politely.", "context": "", "response": "Hello, it is nice to meet you."},
    {"instruction": "What colour is the sky?", "context": "It is a clear day.", "response": "The sky is blue."},
    {"instruction": "Give an even number.", "context": "", "response": "Four is even."},
    {"instruction": "Translate to French: cat.", "context": "", "response": "Chat."},
]
SENTENCES = ["the film was great", "a dull and boring plot", "it rains in spring", "the river is wide",
             "dogs bark at night", "the play was not good", "a bright and happy song", "the sky is grey"]


def gpt2_tokenizer(directory: Path, text: list[str], vocab_size: int = 160) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `text`, EOS `<eos>`, saved in `directory`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(text, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")
    wrapped.save_pretrained(directory)
    return wrapped


def instruction_text() -> list[str]:
    return [value for row in INSTRUCTIONS for value in row.values()] + ["Below is an instruction ### Instruction: ### Input: ### Response:"]


def save_gpt2(directory: Path, tokenizer: PreTrainedTokenizerFast, n_layer: int, n_embd: int, extra_rows: int = 0, seed: int = 0) -> str:
    """A random GPT-2 over the tokenizer's vocabulary (+ `extra_rows` padded vocabulary rows), saved with the tokenizer."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer) + extra_rows, n_positions=128, n_layer=n_layer, n_embd=n_embd, n_head=2,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def write_instructions(directory: Path) -> dict[str, str]:
    """train/test jsonl files of Dolly's columns."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in (("train", INSTRUCTIONS[:4]), ("test", INSTRUCTIONS[4:])):
        files[split] = str(directory / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return files


def bert_tokenizer(directory: Path, sentences: list[str] = SENTENCES) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of the words of `sentences` with BERT's special tokens and [CLS] a [SEP] b [SEP] pairs (token type ids)."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({word for sentence in sentences for word in sentence.split()})
    tokenizer = Tokenizer(models.WordLevel({token: i for i, token in enumerate(special + words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                      sep_token="[SEP]", mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    wrapped.save_pretrained(directory)
    return wrapped


def save_bert(directory: Path, tokenizer: PreTrainedTokenizerFast, hidden_size: int = 16, num_hidden_layers: int = 2) -> str:
    """A random BERT encoder (2 layers of width 16: a stand-in for bert-base-uncased), saved with the tokenizer."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=2,
                        intermediate_size=2 * hidden_size, max_position_embeddings=64)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def write_glue_pairs(directory: Path) -> dict[str, str]:
    """GLUE sentence-pair parquet files (RTE/MRPC columns) for the train and validation splits."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [{"sentence1": SENTENCES[i], "sentence2": SENTENCES[(i + 1) % 8], "label": i % 2, "idx": i} for i in range(8)]
    files = {}
    for split, part in (("train", rows * 3), ("validation", rows)):
        files[split] = str(directory / f"{split}.parquet")
        pd.DataFrame(part).to_parquet(files[split])
    return files
