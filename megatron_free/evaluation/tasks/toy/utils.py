"""The toy tasks' data and metrics for lm-evaluation-harness (loaded through the YAMLs beside this file).

toy_eval.jsonl: 64 samples of the paper's toy task, generate_toy_sample((2026, i)) from
megatron_free/data/toy.py, each with a context that ends at the first letter of its target and four
7-character continuations (the true one; the target's letter replaced by two other letters; by "_").
"""

import json
from pathlib import Path

import datasets

from megatron_free.data.toy import parse_toy_sample

DATA = Path(__file__).with_name("toy_eval.jsonl")


def toy_dataset(**kwargs):
    """The 64 documents as the harness's test split (read from the repository, no download)."""
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def well_formed(doc, results):
    """1 when prompt + generation is a well-formed toy sequence (the toy study's rule)."""
    return {"well_formed": float(parse_toy_sample(doc["prompt"] + results[0]) is not None)}
