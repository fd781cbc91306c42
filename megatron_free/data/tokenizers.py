"""Tokenizers: one small interface for preprocessing, training, HF export and generation.

Every tokenizer has `vocab_size`, `eod` (end-of-document id), `bos` and `pad` (None when absent),
`tokenize(text) -> list[int]` and `detokenize(ids) -> str`.

    tok = build_tokenizer("SentencePieceTokenizer", "tok.model")
    ids = tok.tokenize("To be, or not to be") + [tok.eod]

Type names follow Megatron-LM's --tokenizer-type where one exists. Our SentencePieceTokenizer is
a plain `SentencePieceProcessor.encode` with eod = the model's eos id, which is what Megatron-LM's
current SentencePieceTokenizer / GPTSentencePieceTokenizer / Llama2Tokenizer do (megatron-core's
sentencepiece library with legacy=False); the two Megatron aliases are accepted too.
Pure Python: this module imports neither torch nor megatron, so worker processes stay light.
"""

from __future__ import annotations

import dataclasses
import os

__all__ = [
    "Tokenizer",
    "SentencePieceTokenizer",
    "HuggingFaceTokenizer",
    "ByteTokenizer",
    "CharacterTokenizer",
    "TOKENIZER_TYPES",
    "build_tokenizer",
    "vocab_size_with_padding",
]


class Tokenizer:
    """The interface. Subclasses set vocab_size and eod (and bos / pad where the vocabulary has them)."""

    vocab_size: int
    eod: int
    bos: int | None = None
    pad: int | None = None

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    def detokenize(self, ids) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eod={self.eod}, bos={self.bos}, pad={self.pad})"


def _optional_id(value: int) -> int | None:
    """sentencepiece reports a missing special piece as -1."""
    return None if value is None or value < 0 else int(value)


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model: eod is the model's eos piece, bos/pad come from the model (None if absent)."""

    def __init__(self, model_path: str | os.PathLike | None = None, *, model_proto: bytes | None = None):
        import sentencepiece

        if (model_path is None) == (model_proto is None):
            raise ValueError("give exactly one of model_path and model_proto")
        if model_proto is None:
            if not os.path.isfile(model_path):
                raise FileNotFoundError(f"--tokenizer-model {model_path}: no such file")
            with open(model_path, "rb") as f:
                model_proto = f.read()
        self.model_path = None if model_path is None else os.fspath(model_path)
        self._processor = sentencepiece.SentencePieceProcessor()
        try:
            self._processor.LoadFromSerializedProto(model_proto)
        except RuntimeError as e:
            where = self.model_path or "<model_proto>"
            raise ValueError(f"--tokenizer-model {where}: not a sentencepiece model ({e})") from None
        self._model_proto = model_proto
        self.vocab_size = self._processor.vocab_size()
        eos = _optional_id(self._processor.eos_id())
        if eos is None:
            raise ValueError(
                f"--tokenizer-model {self.model_path}: the model has no eos piece to use as end-of-document "
                "(train it with eos_id >= 0, as tools/train_tokenizer.py does)"
            )
        self.eod = eos
        self.bos = _optional_id(self._processor.bos_id())
        self.pad = _optional_id(self._processor.pad_id())
        self.unk = _optional_id(self._processor.unk_id())

    def tokenize(self, text: str) -> list[int]:
        return self._processor.encode(text)

    def detokenize(self, ids) -> str:
        return self._processor.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._processor.id_to_piece(int(token_id))

    def __reduce__(self):
        # Pickle the model bytes, not the processor: worker processes need no access to the path.
        return (_sentencepiece_from_state, (self.model_path, self._model_proto))


def _sentencepiece_from_state(model_path, model_proto):
    tok = SentencePieceTokenizer(model_proto=model_proto)
    tok.model_path = model_path
    return tok


class HuggingFaceTokenizer(Tokenizer):
    """A local HuggingFace tokenizer folder through transformers.AutoTokenizer (no network access).

    As Megatron-LM's HuggingFaceTokenizer: tokenize() adds no special tokens (no BOS), vocab_size is
    len(tokenizer) (added tokens included), eod is the eos token.
    """

    def __init__(self, path: str | os.PathLike):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"--tokenizer-model {path}: not a local HuggingFace tokenizer folder")
        try:
            import transformers
        except ImportError:
            raise ImportError(
                "HuggingFaceTokenizer needs the transformers package: pip install 'megatron-free[hf]'"
            ) from None
        self.path = os.fspath(path)
        self._tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.vocab_size = len(self._tokenizer)
        if self._tokenizer.eos_token_id is None:
            raise ValueError(f"--tokenizer-model {path}: the tokenizer has no eos_token to use as end-of-document")
        self.eod = int(self._tokenizer.eos_token_id)
        self.bos = self._tokenizer.bos_token_id
        self.pad = self._tokenizer.pad_token_id

    def tokenize(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False)

    def detokenize(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids])


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: ids 0..255 are the bytes, 256 is eod. vocab_size 257. For tests and debugging."""

    vocab_size = 257
    eod = 256

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def detokenize(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")


class CharacterTokenizer(Tokenizer):
    """The toy task's alphabet (see data/toy.py), one id per character.

    ids: "_" = 0, "!" = 1, "A".."Z" = 2..27, ">" = 28, eod = 29. vocab_size 30.
    pad is the eod id: toy sequences all have the same length, so nothing is ever padded in practice.
    detokenize() drops eod ids.
    """

    ALPHABET = "_!" + "".join(chr(ord("A") + i) for i in range(26)) + ">"
    vocab_size = len(ALPHABET) + 1
    eod = len(ALPHABET)
    pad = len(ALPHABET)

    def __init__(self):
        self._ids = {c: i for i, c in enumerate(self.ALPHABET)}

    def tokenize(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as e:
            raise ValueError(f"CharacterTokenizer: character {e.args[0]!r} is not in {self.ALPHABET!r}") from None

    def detokenize(self, ids) -> str:
        return "".join(self.ALPHABET[int(i)] for i in ids if int(i) != self.eod)


# Megatron-LM names where they exist; Megatron-LM's three sentencepiece names all map to the same
# plain sentencepiece encode in megatron-core's tokenizer library.
TOKENIZER_TYPES = {
    "SentencePieceTokenizer": SentencePieceTokenizer,
    "GPTSentencePieceTokenizer": SentencePieceTokenizer,
    "Llama2Tokenizer": SentencePieceTokenizer,
    "HuggingFaceTokenizer": HuggingFaceTokenizer,
    "ByteTokenizer": ByteTokenizer,
    "CharacterTokenizer": CharacterTokenizer,
}
_NEEDS_MODEL = (SentencePieceTokenizer, HuggingFaceTokenizer)


def build_tokenizer(tokenizer_type: str, tokenizer_model: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer named by --tokenizer-type / --tokenizer-model. Errors name the flag and the value."""
    cls = TOKENIZER_TYPES.get(tokenizer_type)
    if cls is None:
        raise ValueError(f"--tokenizer-type {tokenizer_type}: expected one of {', '.join(TOKENIZER_TYPES)}")
    if cls in _NEEDS_MODEL:
        if tokenizer_model is None:
            raise ValueError(f"--tokenizer-type {tokenizer_type} needs --tokenizer-model")
        return cls(tokenizer_model)
    if tokenizer_model is not None:
        raise ValueError(f"--tokenizer-type {tokenizer_type} takes no --tokenizer-model (got {tokenizer_model})")
    return cls()


def vocab_size_with_padding(
    vocab_size: int, make_vocab_size_divisible_by: int = 128, tensor_model_parallel_size: int = 1
) -> int:
    """Megatron-LM's _vocab_size_with_padding: round up to a multiple of divisible_by * tp size."""
    if make_vocab_size_divisible_by < 1:
        raise ValueError(f"--make-vocab-size-divisible-by {make_vocab_size_divisible_by}: must be >= 1")
    if tensor_model_parallel_size < 1:
        raise ValueError(f"--tensor-model-parallel-size {tensor_model_parallel_size}: must be >= 1")
    multiple = make_vocab_size_divisible_by * tensor_model_parallel_size
    return -(-vocab_size // multiple) * multiple  # integer ceil: Megatron's math.ceil without floats


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """--tokenizer-type / --tokenizer-model (or, without a tokenizer, --vocab-size for mock data) and
    Megatron's vocabulary padding."""

    tokenizer_type: str | None = None
    tokenizer_model: str | None = None
    vocab_size: int | None = None
    make_vocab_size_divisible_by: int = 128

    def build(self, tensor_model_parallel_size: int = 1) -> tuple[Tokenizer | None, int, int]:
        """(the tokenizer or None, its vocabulary size, the padded vocabulary the model's embedding has)."""
        tokenizer = build_tokenizer(self.tokenizer_type, self.tokenizer_model) if self.tokenizer_type else None
        vocab = tokenizer.vocab_size if tokenizer is not None else self.vocab_size
        if vocab is None:
            raise ValueError("no vocabulary: give --tokenizer-type (and --tokenizer-model) or --vocab-size")
        return (
            tokenizer,
            vocab,
            vocab_size_with_padding(vocab, self.make_vocab_size_divisible_by, tensor_model_parallel_size),
        )
