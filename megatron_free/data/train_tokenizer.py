"""Train a sentencepiece tokenizer with LLM-style defaults, reproducibly from a seed.

Run:
    megatron-free-train-tokenizer --input data/tinyshakespeare.txt --input-format text-files \
        --model-prefix /tmp/shakespeare --vocab-size 2048
    python tools/train_tokenizer.py ...            (same flags)

Writes {model_prefix}.model (load it with --tokenizer-type SentencePieceTokenizer --tokenizer-model
{model_prefix}.model) and {model_prefix}.vocab (piece and score per line, for reading).

Defaults follow Llama-2's tokenizer: BPE, byte_fallback (no unknown characters), split_digits,
identity normalization, whitespace kept as is (code indentation survives), unk/bos/eos = 0/1/2 and
no pad piece. sentencepiece learns from lines, so documents are split into lines and newlines are
encoded through byte fallback (<0x0A>). The sentence sample and sentencepiece's own randomness are
seeded by --seed; with the same inputs, flags and seed the .model bytes are identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import time

from megatron_free.data.sources import INPUT_FORMATS, InputError, iter_documents


@dataclasses.dataclass
class TokenizerTrainingConfig:
    inputs: list[str]
    model_prefix: str
    vocab_size: int
    input_format: str = "jsonl"
    json_key: str = "text"
    model_type: str = "bpe"
    seed: int = 0
    character_coverage: float = 0.9995
    input_sentence_size: int = 10_000_000  # lines sampled (seeded) when the corpus has more; 0: all
    max_sentence_length: int = 16384  # bytes; longer lines are dropped by sentencepiece
    num_threads: int = 8  # fixed by default: the count is stored in the model, so bytes stay machine-independent
    skip_bad_lines: bool = False

    def __post_init__(self):
        if isinstance(self.inputs, (str, os.PathLike)):
            self.inputs = [self.inputs]
        self.inputs = [os.fspath(p) for p in self.inputs]
        if self.input_format not in INPUT_FORMATS:
            raise InputError(f"--input-format {self.input_format}: expected one of {', '.join(INPUT_FORMATS)}")
        if self.model_type not in ("bpe", "unigram"):
            raise InputError(f"--model-type {self.model_type}: expected bpe or unigram")
        if self.vocab_size < 260:  # 256 byte pieces + unk/bos/eos, and at least one merge
            raise InputError(f"--vocab-size {self.vocab_size}: must be >= 260 with byte fallback")
        if not 0 < self.character_coverage <= 1:
            raise InputError(f"--character-coverage {self.character_coverage}: must be in (0, 1]")
        if self.num_threads < 1:
            raise InputError(f"--num-threads {self.num_threads}: must be >= 1")


def _lines(config: TokenizerTrainingConfig, stats: dict):
    """Non-blank lines of every document. A bad input line ends the stream and is kept in stats["error"]:
    an exception raised inside sentencepiece's C++ trainer would not come back as itself."""
    try:
        for text in iter_documents(config.inputs, config.input_format, config.json_key, config.skip_bad_lines):
            stats["documents"] += 1
            for line in text.split("\n"):
                if line.strip():
                    stats["lines"] += 1
                    yield line
    except InputError as e:
        stats["error"] = e


def train_tokenizer(config: TokenizerTrainingConfig, log=sys.stderr) -> str:
    """Train and write {model_prefix}.model / .vocab atomically; returns the .model path."""
    import sentencepiece as spm

    from megatron_free.data.tokenizers import SentencePieceTokenizer

    start = time.monotonic()
    stats = {"documents": 0, "lines": 0, "error": None}
    model = io.BytesIO()
    spm.set_random_generator_seed(config.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(config, stats),
            model_writer=model,
            vocab_size=config.vocab_size,
            model_type=config.model_type,
            character_coverage=config.character_coverage,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            add_dummy_prefix=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            input_sentence_size=config.input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=config.max_sentence_length,
            num_threads=config.num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:  # e.g. "Vocabulary size too high": one line, naming the flag
        if stats["error"] is not None:
            raise stats["error"] from None
        message = " ".join(str(e).split())
        raise InputError(f"--vocab-size {config.vocab_size}: sentencepiece failed: {message}") from None
    if stats["error"] is not None:
        raise stats["error"]
    if stats["lines"] == 0:
        raise InputError(f"{', '.join(config.inputs)}: empty input: no text to train on")

    model_path = config.model_prefix + ".model"
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    tokenizer = SentencePieceTokenizer(model_proto=model.getvalue())  # check that it loads before writing
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n" for i in range(processor.vocab_size()))
    for path, data in ((config.model_prefix + ".vocab", vocab.encode("utf-8")), (model_path, model.getvalue())):
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    if log is not None:
        log.write(
            f"[train-tokenizer] {model_path}: vocab {tokenizer.vocab_size}, eod {tokenizer.eod}, bos {tokenizer.bos}, "
            f"from {stats['documents']:,} documents / {stats['lines']:,} lines in {time.monotonic() - start:.1f} s\n"
        )
    return model_path


def build_parser() -> argparse.ArgumentParser:
    d = TokenizerTrainingConfig
    p = argparse.ArgumentParser(
        prog="megatron-free-train-tokenizer",
        description="Train a sentencepiece tokenizer (BPE, byte fallback, split digits).",
    )
    p.add_argument("--input", nargs="+", required=True, help="files or globs ('**' recursive); .gz is read as gzip")
    p.add_argument(
        "--input-format",
        choices=INPUT_FORMATS,
        default=d.input_format,
        help="as in megatron-free-preprocess (default: jsonl)",
    )
    p.add_argument("--json-key", default=d.json_key, help="JSON key holding the text (default: text)")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip malformed lines instead of stopping")
    p.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    p.add_argument(
        "--vocab-size",
        type=int,
        required=True,
        help="pieces in the vocabulary, the 256 byte pieces and unk/bos/eos included (>= 260)",
    )
    p.add_argument(
        "--model-type",
        choices=("bpe", "unigram"),
        default=d.model_type,
        help="sentencepiece's algorithm (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of the line sample and of sentencepiece's randomness (default: %(default)s)",
    )
    p.add_argument(
        "--character-coverage",
        type=float,
        default=d.character_coverage,
        help="share of the characters covered by pieces of their own; the rarest others go "
        "through byte fallback (default: %(default)s)",
    )
    p.add_argument(
        "--input-sentence-size",
        type=int,
        default=d.input_sentence_size,
        help="lines sampled (seeded) when the corpus has more; 0: all (default: %(default)s)",
    )
    p.add_argument(
        "--max-sentence-length",
        type=int,
        default=d.max_sentence_length,
        help="longest line used, in bytes (default: %(default)s)",
    )
    p.add_argument(
        "--num-threads", type=int, default=d.num_threads, help="sentencepiece's trainer threads (default: %(default)s)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = TokenizerTrainingConfig(
            inputs=args.input,
            model_prefix=args.model_prefix,
            vocab_size=args.vocab_size,
            input_format=args.input_format,
            json_key=args.json_key,
            model_type=args.model_type,
            seed=args.seed,
            character_coverage=args.character_coverage,
            input_sentence_size=args.input_sentence_size,
            max_sentence_length=args.max_sentence_length,
            num_threads=args.num_threads,
            skip_bad_lines=args.skip_bad_lines,
        )
        train_tokenizer(config)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
