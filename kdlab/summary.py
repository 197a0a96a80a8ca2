"""The short table a run ends with in the terminal."""

from pathlib import Path

from rich.console import Console
from rich.table import Table

# (metric key, label, format) in the order they are shown; missing metrics are skipped.
_ROWS = (
    ("test/teacher_acc", "teacher accuracy (test)", "{:.2%}"),
    ("test/acc", "{model} accuracy (test)", "{:.2%}"),
    ("test/agreement", "teacher-student top-1 agreement", "{:.2%}"),
    ("test/kl", "KL(teacher || student), test mean", "{:.4f}"),
    ("val/acc", "{model} accuracy (val, last epoch)", "{:.2%}"),
    ("test/accuracy", "preference accuracy (test pairs)", "{:.2%}"),
    ("test/reward", "true reward of policy samples (test)", "{:.4f}"),
    ("test/kl_ref", "KL(policy || reference) of samples (test)", "{:.4f}"),
    ("test/entropy", "entropy of policy samples (test, nats)", "{:.3f}"),
    ("test/teacher_ppl", "teacher perplexity (test responses)", "{:.3f}"),
    ("test/ppl", "student perplexity (test responses)", "{:.3f}"),
    ("test/fkl", "token KL(teacher || student), test mean", "{:.4f}"),
    ("test/rougeL", "ROUGE-L of student samples (test)", "{:.4f}"),
    ("test/proxy_fkl", "sequence KL(teacher || student), test prompts", "{:.4f}"),
    ("test/golden_fkl", "sequence KL(oracle || student), test prompts", "{:.4f}"),
    ("test/teacher_golden_fkl", "sequence KL(oracle || teacher), test prompts", "{:.4f}"),
)


def print_summary(run_name: str, metrics: dict[str, float], run_dir: Path, model: str = "student") -> None:
    """Print the run's headline metrics; `model` names what `test/acc` measured (the teacher of `+method=teacher`)."""
    table = Table(title=f"kdlab · {run_name}", show_header=False, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label, fmt in _ROWS:
        if key in metrics:
            table.add_row(label.format(model=model), fmt.format(metrics[key]))
    console = Console()
    console.print(table)
    print(f"run directory: {run_dir}")
