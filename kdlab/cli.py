"""The `kdlab` command: `kdlab train [HYDRA OVERRIDES]`, `kdlab list [WHAT]`, `kdlab report PATH...`,
`kdlab eval RUN_DIR [KEY=VALUE...]`, `kdlab export RUN_DIR --format FORMAT`."""

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kdlab.conf import CONF_DIR

_GROUPS = {"methods": "method", "models": "model", "datasets": "dataset"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from kdlab import train

        # Hydra reads sys.argv. Naming the module file as the program also lets Lightning's DDP
        # launcher restart this same command in its worker processes.
        sys.argv = [train.__file__, *argv[1:]]
        train.main()
        return
    parser = argparse.ArgumentParser(prog="kdlab", description="Experiments on the choice of divergence in KD.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="train and evaluate (Hydra overrides follow; see `kdlab train --help`)")
    listing = commands.add_parser("list", help="print the registries of methods, divergences, models, datasets")
    listing.add_argument("what", nargs="?", choices=[*_GROUPS, "divergences"], help="one registry (default: all)")
    report = commands.add_parser("report", help="tables and plots of the runs under run or multirun directories")
    report.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="run or multirun directories")
    report.add_argument("--out", type=Path, help="output directory (default: <first PATH>/report)")
    report.add_argument("--metric", default="test/acc", help="the metric in the table (default: test/acc)")
    report.add_argument("--rows", default="method", help="run field or config path for rows (default: method)")
    report.add_argument("--cols", default="divergence", help="run field or config path for columns (default: divergence)")
    report.add_argument("--curves", help="comma-separated CSV metrics to plot per epoch (default: val/<metric>,train/loss)")
    report.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="count only runs whose field or config path KEY equals VALUE (repeatable), "
                             "e.g. --where trainer.max_epochs=30")
    evaluation = commands.add_parser("eval", help="evaluate a finished run's model again; appends to <RUN_DIR>/eval.json")
    evaluation.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory kdlab train printed")
    evaluation.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                            help="split=test|val (default test), and overrides of the run's config: dataset=NAME, dataset.datamodule.KEY=VALUE, ...")
    export = commands.add_parser("export", help="write a finished run's model for use outside kdlab")
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory kdlab train printed")
    export.add_argument("--format", required=True, help="hf (save_pretrained directory), state_dict (safetensors + model.json) "
                                                        "or torchscript (a traced vision model)")
    export.add_argument("--out", type=Path, help="output directory, new or empty (default: <RUN_DIR>/export/<model>-<format>)")
    export.add_argument("--model", default="student", help="student (default: the model the run trained) or teacher")
    args = parser.parse_args(argv)
    if args.command == "list":
        print_registries([args.what] if args.what else [*_GROUPS, "divergences"])
    elif args.command == "report":
        from kdlab.report import print_report, write_report

        curves = args.curves.split(",") if args.curves else None
        try:
            result = write_report(args.paths, args.out, args.metric, args.rows, args.cols, curves, args.where)
        except ValueError as error:
            report.error(str(error))
        print_report(result, args.rows)
    elif args.command in ("eval", "export"):
        run_saved(args)


def run_saved(args: argparse.Namespace) -> None:
    """`kdlab eval` or `kdlab export`; a kdlab error is its one line and exit status 1 (`kdlab.train`'s)."""
    from kdlab.errors import KdlabError
    from kdlab.train import _exit

    try:
        if args.command == "eval":
            from kdlab.evaluate import evaluate
            from kdlab.summary import print_summary

            entry, path = evaluate(args.run_dir, args.overrides)
            print_summary(f"eval {entry['split']} · {entry['dataset']['preset']}", entry["metrics"], args.run_dir)
            print(f"recorded in {path}")
        else:
            from kdlab.export import export

            print(f"exported to {export(args.run_dir, args.format, args.out, args.model)}")
    except KdlabError as error:
        _exit(error)


def print_registries(names: list[str]) -> None:
    console = Console()
    for name in names:
        table = Table(title=name, title_justify="left")
        if name == "divergences":
            from kdlab.divergences import describe

            for column in ("name", "parameters", "formula"):
                table.add_column(column)
            for row in describe():
                table.add_row(*row)
        elif name == "methods":
            from kdlab.methods import catalogue

            for column in ("name", "divergence", "description"):
                table.add_column(column)
            for method in catalogue():
                table.add_row(method.name, method.slot.describe(), config_description(CONF_DIR / "method" / f"{method.name}.yaml"))
        else:
            table.add_column("name")
            table.add_column("description")
            for path in sorted((CONF_DIR / _GROUPS[name]).glob("*.yaml")):
                table.add_row(path.stem, config_description(path))
        console.print(table)


def config_description(path: Path) -> str:
    """The first comment line of a config file that is not a `# @package` directive."""
    for line in path.read_text().splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").strip()
    return ""


if __name__ == "__main__":
    main()
