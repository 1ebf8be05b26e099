"""Compare finished runs on the test split, as a Markdown table.

    python -m train.compare runs/* [--output comparison.md]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = ("precision", "recall", "specificity", "f1", "roc_auc", "accuracy")


def comparison_table(folders: list[Path]) -> str:
    lines = [
        "| run | model | start | test precision | test recall | test specificity | test F1 | test ROC-AUC | test accuracy | threshold |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        config = json.loads((folder / "training_config.json").read_text())
        start = "ImageNet" if config.get("pretrained") or config.get("pretrained_file") else "scratch"
        values = " | ".join(f"{metrics['test'][k]:.3f}" for k in COLUMNS)
        lines.append(f"| {folder.name} | {config['model']} | {start} | {values} | {metrics['threshold']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.compare", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="output folders of `python -m train`")
    parser.add_argument("--output", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    unfinished = [str(f) for f in args.folders if not (f / "metrics.json").is_file()]
    if unfinished:
        print(f"error: not finished runs (no metrics.json): {', '.join(unfinished)}; train them or leave them out", file=sys.stderr)
        sys.exit(2)
    table = comparison_table(args.folders)
    print(table, end="")
    if args.output:
        args.output.write_text(table)


if __name__ == "__main__":
    main()
