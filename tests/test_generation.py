"""The shared sampler: `generate`'s draws exactly, the log-probability of every drawn token, the
teacher mixture, and a distribution that matches the model's by exact enumeration."""

import itertools

import pytest
import torch
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from kdlab.models.generation import sample_responses
from kdlab.models.hf import lm_forward
from kdlab.tokens import token_logps

PAD, EOS = 1, 2


def gpt2(seed: int, vocab: int = 20, layers: int = 2) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=32, n_layer=layers, n_embd=16, n_head=2,
                                      bos_token_id=0, eos_token_id=EOS)).eval()


def llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=32, bos_token_id=0, eos_token_id=EOS, pad_token_id=PAD)
    return LlamaForCausalLM(config).eval()


PROMPTS = torch.tensor([[0, 0, 5, 6], [3, 4, 5, 6], [0, 7, 8, 9]])
MASK = (torch.arange(4) >= torch.tensor([[2], [0], [1]])).long()  # left padding of 2, 0 and 1 tokens


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
def test_the_tokens_are_generates_for_the_same_seed(build) -> None:
    model = build(0)
    torch.manual_seed(3)
    ours = sample_responses(model, PROMPTS, MASK, 10, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(3)
    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD)
    theirs = model.generate(input_ids=PROMPTS, attention_mask=MASK, generation_config=config)[:, PROMPTS.shape[1]:]
    assert torch.equal(ours["responses"], theirs.masked_fill(~ours["response_mask"], PAD))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logps_are_the_teacher_forced_log_probabilities(temperature: float) -> None:
    model = gpt2(1)
    torch.manual_seed(0)
    out = sample_responses(model, PROMPTS, MASK, 8, eos_token_id=EOS, pad_token_id=PAD, temperature=temperature)
    logits = lm_forward(model, out["input_ids"], out["attention_mask"]) / temperature
    expected, mask = token_logps(logits, out["labels"])
    assert torch.allclose(out["sampling_logps"], expected, atol=1e-5)
    assert (out["sampling_logps"][~mask] == 0).all()
    # ordinary tensors: a later forward pass with gradient may use them
    lm_forward(gpt2(1).train(), out["input_ids"], out["attention_mask"]).sum().backward()


def test_mixture_logps_are_the_log_of_the_mixed_probabilities() -> None:
    policy, teacher, alpha = gpt2(1), gpt2(2, layers=1), 0.3
    torch.manual_seed(0)
    out = sample_responses(policy, PROMPTS, MASK, 8, eos_token_id=EOS, pad_token_id=PAD, mix=(teacher, alpha))
    log_q, mask = token_logps(lm_forward(policy, out["input_ids"], out["attention_mask"]).double(), out["labels"])
    log_p, _ = token_logps(lm_forward(teacher, out["input_ids"], out["attention_mask"]).double(), out["labels"])
    mixed = torch.log((1 - alpha) * log_q.exp() + alpha * log_p.exp())
    assert torch.allclose(out["sampling_logps"].double()[mask], mixed[mask], atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_the_sampled_distribution_is_the_models_by_enumeration(alpha: float) -> None:
    """Frequencies of the 9 sequences of 2 tokens over 3 tokens against their exact probabilities."""
    policy, teacher = gpt2(4, vocab=3, layers=1), gpt2(5, vocab=3, layers=1)
    sequences = torch.tensor(list(itertools.product(range(3), repeat=2)))
    prompt = torch.zeros(len(sequences), 1, dtype=torch.long)
    labels = torch.cat([torch.full_like(prompt, -100), sequences], dim=1)
    ids = torch.cat([prompt, sequences], dim=1)
    with torch.no_grad():
        log_q = token_logps(lm_forward(policy, ids, torch.ones_like(ids)).double(), labels)[0]
        log_p = token_logps(lm_forward(teacher, ids, torch.ones_like(ids)).double(), labels)[0]
    exact = ((1 - alpha) * log_q.exp() + alpha * log_p.exp()).prod(-1)  # per-token mixture, chained
    n = 40_000
    torch.manual_seed(0)
    out = sample_responses(policy, torch.zeros(n, 1, dtype=torch.long), torch.ones(n, 1, dtype=torch.long), 2,
                           mix=(teacher, alpha) if alpha else None)
    codes = out["responses"][:, 0] * 3 + out["responses"][:, 1]
    frequencies = torch.bincount(codes, minlength=9).double() / n
    # each frequency within 5 standard errors of its probability
    assert ((frequencies - exact).abs() <= 5 * (exact * (1 - exact) / n).sqrt() + 1e-9).all()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="pad_token_id"):
        sample_responses(gpt2(0), PROMPTS, MASK, 2, eos_token_id=EOS)
    with pytest.raises(ValueError, match="mixture weight"):
        sample_responses(gpt2(0), PROMPTS, MASK, 2, mix=(gpt2(1), 1.5))
