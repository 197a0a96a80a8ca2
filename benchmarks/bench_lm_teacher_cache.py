"""The LM teacher-output cache: epoch time with and without it, and the error of truncating the teacher at k.

    python benchmarks/bench_lm_teacher_cache.py [--repeats 2] [--epochs 2] [--out benchmarks/results/lm_teacher_cache_cpu.json]

The pair, built here offline: a byte-level BPE tokenizer (V = 2048) trained on synthetic instruction data
(templated sentences over a small lexicon; 96 training rows, responses of 3-6 sentences), a GPT-2-like
teacher (4 layers, width 256) fine-tuned on those responses for `--teacher-steps` steps (peaked, if far
less than a trained LM: a random teacher is near-uniform and would make every k look bad),
and a random GPT-2-like student (1 layer, width 64).

Epoch time: `kdlab.run.run` of `+method=lmkd` (fkl, T = 1, batch 8) for `--epochs` epochs, training only
(`trainer.limit_val_batches=0`), plain (the teacher runs every step) and with `module.teacher_top_k=32`
(the teacher's top-32 log-probabilities read from the cache), alternating, `--repeats` times each; per run
the median training-epoch time (`on_train_epoch_start` to `on_train_epoch_end`), then the median over
runs. The first cached run builds the entry (its build time is reported apart); the others read it. The
divergence change: test/fkl, test/rkl and test/nll (full vocabulary, the real teacher, the 16 test rows)
of the students the last run of each variant trained.

Truncation error: on every response token of the training split, with the teacher above and the
student at initialisation and after the cached training: the full-vocabulary fkl/rkl/js against the same
divergence on the teacher's top-k plus one tail bin (`kdlab.objectives.tail_bin`), k in {8, 32, 128},
and the teacher's kept mass Σ_S p. All in one process.
"""

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import open_dict  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: E402

from kdlab.data.instructions import InstructionDataModule  # noqa: E402
from kdlab.divergences import get  # noqa: E402
from kdlab.lm_teacher_outputs import training_batches  # noqa: E402
from kdlab.models.hf import causal_lm, lm_forward  # noqa: E402
from kdlab.objectives.tail_bin import tail_bin_divergence, top_k_log_probs  # noqa: E402
from kdlab.run import run  # noqa: E402
from kdlab.tokens import mean_nll, scored  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NOUNS = "cat dog river mountain city garden teacher student engine forest window market song letter bridge".split()
ADJECTIVES = "quiet bright old small happy dark green tall strange gentle".split()
VERBS = "sees follows paints finds builds crosses remembers opens carries".split()
DIVERGENCES = ("fkl", "rkl", "js")
KS = (8, 32, 128)
CACHED_K = 32
TRAIN_ROWS = 96


def sentence(rng: random.Random) -> str:
    return f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)}."


def write_pair(root: Path, teacher_steps: int) -> dict[str, str]:
    """Data files, tokenizer, a fine-tuned teacher and a random student under `root`."""
    rng = random.Random(0)
    rows = {split: [{"instruction": f"Tell a story about the {rng.choice(NOUNS)}.", "context": "",
                     "response": " ".join(sentence(rng) for _ in range(rng.randint(3, 6)))} for _ in range(size)]
            for split, size in (("train", TRAIN_ROWS + 16), ("test", 16))}
    files = {}
    for split, part in rows.items():
        files[split] = str(root / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(row) + "\n" for row in part))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = [row[key] for part in rows.values() for row in part for key in ("instruction", "response")] + [
        "Below is an instruction that describes a task. ### Instruction: ### Response:"]
    bpe.train_from_iterator(text, trainers.BpeTrainer(vocab_size=2048, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    paths = {"train": files["train"], "test": files["test"]}
    for role, (layers, width, seed) in {"teacher": (4, 256, 1), "student": (1, 64, 0)}.items():
        torch.manual_seed(seed)
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_layer=layers, n_embd=width, n_head=4,
                            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
        paths[role] = str(root / role)
        GPT2LMHeadModel(config).save_pretrained(paths[role])
        tokenizer.save_pretrained(paths[role])
    fine_tune(paths, teacher_steps)
    return paths


def datamodule(paths: dict[str, str]) -> InstructionDataModule:
    data = InstructionDataModule("json", paths["student"], data_files={"train": paths["train"], "test": paths["test"]},
                                 splits={"test": "test"}, val_size=16, max_prompt_length=32, max_length=128, batch_size=8)
    data.setup("fit")
    return data


def fine_tune(paths: dict[str, str], steps: int) -> None:
    """SFT of the teacher on the training responses (AdamW 3e-3, batch 8), saved in place."""
    model, batches = causal_lm(paths["teacher"]), training_batches(datamodule(paths))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = batches[step % len(batches)]
        loss = mean_nll(lm_forward(model, batch["input_ids"], batch["attention_mask"]), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"teacher fine-tuned {steps} steps, train NLL {loss.item():.3f}")
    model.save_pretrained(paths["teacher"])


class EpochClock(L.Callback):
    """Training-epoch times of every run in this process (`seconds`, cleared by the caller)."""

    seconds: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        EpochClock.seconds.append(time.perf_counter() - self.start)


def job(paths: dict[str, str], root: Path, name: str, epochs: int, *extra: str) -> tuple[dict, float]:
    """`kdlab train +method=lmkd ...` in this process; its metrics (with results.json's `teacher_outputs`) and wall time."""
    run_dir = root / name
    overrides = ["method=lmkd", "dataset=instructions_jsonl", "model=gpt2_xl_to_gpt2", f"model.teacher.name_or_path={paths['teacher']}",
                 f"model.student.name_or_path={paths['student']}", f"dataset.datamodule.data_files={{train:{paths['train']},test:{paths['test']}}}",
                 "dataset.datamodule.val_size=16", "dataset.datamodule.max_prompt_length=32", "dataset.datamodule.max_length=128",
                 f"trainer.max_epochs={epochs}", "logger=none", "~callbacks.progress_bar", "module.generation_samples=0",
                 "+callbacks.epoch_clock._target_=__main__.EpochClock", f"paths.log_dir={root}", f"paths.output_dir={run_dir}", f"hydra.run.dir={run_dir}",
                 f"module.teacher_outputs_dir={root / 'cache'}", *extra]
    GlobalHydra.instance().clear()
    with initialize_config_module("kdlab.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    started = time.perf_counter()
    metrics = run(cfg)
    record = json.loads((run_dir / "results.json").read_text())["teacher_outputs"]
    return metrics | {"teacher_outputs": record, "student": str(run_dir / "student")}, time.perf_counter() - started


@torch.no_grad()
def truncation_errors(paths: dict[str, str], student_path: str) -> list[dict]:
    """Mean full-vocabulary D and mean top-k + tail-bin D over the training split's response tokens, per (divergence, k)."""
    data, teacher, student = datamodule(paths), causal_lm(paths["teacher"]).eval(), causal_lm(student_path).eval()
    t_rows, s_rows = [], []
    for batch in training_batches(data):
        mask = scored(batch["labels"][:, 1:])
        t_rows.append(lm_forward(teacher, batch["input_ids"], batch["attention_mask"])[:, :-1][mask])
        s_rows.append(lm_forward(student, batch["input_ids"], batch["attention_mask"])[:, :-1][mask])
    teacher_logits, student_logits = torch.cat(t_rows).double(), torch.cat(s_rows).double()
    rows = []
    for name in DIVERGENCES:
        full = get(name)(student_logits, teacher_logits, reduction="none").mean().item()
        for k in KS:
            ids, logps, tail = top_k_log_probs(teacher_logits, k, 1.0)
            kept = tail_bin_divergence(get(name), student_logits, ids, logps, tail, 1.0, chunk_size=1024).mean().item()
            rows.append({"divergence": name, "k": k, "full": full, "top_k_tail": kept, "gap": full - kept, "relative_gap": (full - kept) / full,
                         "teacher_mass_kept": logps.exp().sum(-1).mean().item(), "tokens": len(ids)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--teacher-steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=RESULTS / "lm_teacher_cache_cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        paths = write_pair(root, args.teacher_steps)
        variants = {"plain": [], f"cached_top{CACHED_K}": []}
        builds, records, quality, students = [], {}, {}, {}
        for repeat in range(args.repeats):
            for variant, extra in (("plain", []), (f"cached_top{CACHED_K}", [f"module.teacher_top_k={CACHED_K}"])):
                EpochClock.seconds.clear()
                metrics, wall = job(paths, root, f"{variant}-{repeat}", args.epochs, "trainer.limit_val_batches=0", *extra)
                variants[variant].append(statistics.median(EpochClock.seconds))
                record = metrics["teacher_outputs"]
                if record is not None and record["source"] == "built":
                    builds.append(wall - sum(EpochClock.seconds))
                records[variant] = record
                quality[variant] = {name: metrics[name] for name in ("test/fkl", "test/rkl", "test/nll", "test/teacher_nll")}
                students[variant] = metrics["student"]
                print(f"{variant} run {repeat}: epochs {[round(s, 2) for s in EpochClock.seconds]} s, wall {wall:.1f} s")
        entry = Path(records[f"cached_top{CACHED_K}"]["path"])
        truncation = {"student at initialisation": truncation_errors(paths, paths["student"]),
                      f"student after cached training ({args.epochs} epochs)": truncation_errors(paths, students[f"cached_top{CACHED_K}"])}
        entry_bytes = sum(file.stat().st_size for file in entry.iterdir())
    medians = {variant: statistics.median(times) for variant, times in variants.items()}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "setting": {"epochs": args.epochs, "repeats": args.repeats, "teacher": "GPT-2-like 4 layers x 256", "student": "GPT-2-like 1 layer x 64",
                    "vocab": 2048, "train_examples": records[f"cached_top{CACHED_K}"]["examples"],
                    "response_tokens": records[f"cached_top{CACHED_K}"]["tokens"], "batch_size": 8, "divergence": "fkl", "cached_k": CACHED_K},
        "epoch_seconds": variants, "median_epoch_seconds": medians,
        "speedup": medians["plain"] / medians[f"cached_top{CACHED_K}"],
        "cache_build_seconds": builds, "cache_entry_bytes": entry_bytes,
        "quality_after_training": quality, "truncation": truncation,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("median_epoch_seconds", "speedup", "cache_build_seconds", "quality_after_training")}, indent=2))
    for student, rows in truncation.items():
        print(f"\n{student}\n| divergence | k | teacher mass kept | full D | top-k + tail D | gap (relative) |")
        for row in rows:
            print(f"| {row['divergence']} | {row['k']} | {row['teacher_mass_kept']:.4f} | {row['full']:.4f} | {row['top_k_tail']:.4f} | "
                  f"{row['gap']:.4f} ({100 * row['relative_gap']:.2f}%) |")


if __name__ == "__main__":
    main()
