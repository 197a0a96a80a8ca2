"""Tiny labelled text corpora in the real formats (csv, jsonl, parquet, a folder of class sub-folders), string labels."""

import json
from pathlib import Path

import pandas as pd

TOPICS = {
    "business": ["the market rose", "shares fell today", "the bank cut rates", "profits grew again"],
    "entertainment": ["the film was great", "a bright and happy song", "the play was not good", "a new album"],
    "politics": ["the vote was close", "the minister spoke", "a new law passed", "the party won"],
    "sport": ["the team won the cup", "a late goal", "the race was fast", "the match was close"],
    "tech": ["a new phone", "the chip is fast", "software update", "the network is down"],
}
CLASSES = sorted(TOPICS)  # the label mapping kdlab infers: sorted names


def corpus_rows(repeat: int = 3) -> list[dict[str, str]]:
    """`repeat` x 4 rows per class, `{"text", "topic"}`, classes interleaved."""
    return [{"text": text, "topic": topic} for _ in range(repeat) for i in range(4) for topic, texts in TOPICS.items() for text in texts[i:i + 1]]


def write_corpus(path: Path, rows: list[dict] | None = None) -> str:
    """`rows` (default `corpus_rows()`) written as the format of `path`'s extension: .csv, .jsonl or .parquet."""
    rows = corpus_rows() if rows is None else rows
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return str(path)


def write_text_folder(root: Path) -> str:
    """`root/<class>/<i>.txt`, one text per file (BBC News' layout)."""
    for topic, texts in TOPICS.items():
        (root / topic).mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(texts * 3):
            (root / topic / f"{i:03d}.txt").write_text(text + "\n")
    return str(root)
