"""sentencepiece's ids at gigatoken's speed: a batch encoder for preprocessing.

    fast = FastSentencePiece(SentencePieceTokenizer("tok.model"))
    fast.reason            # None, or one line saying why every document goes through sentencepiece
    ids, offsets = fast.encode_batch(texts)   # ids[offsets[i]:offsets[i + 1]] == sentencepiece's ids of texts[i]

gigatoken (PyPI, MIT; the tokenizer of Megatron-LM's tools/preprocess_data_fast.py) reimplements
sentencepiece BPE with byte fallback in Rust, 4-7x faster than sentencepiece per core. Its
sentencepiece loader is not exact as it stands, so the tokenizer is built from its tokenizer.json
with these changes, each checked against sentencepiece in tests/unit/test_fast_tokenizer.py:

- no added tokens: control pieces (<s>, </s>) are never matched in text by sentencepiece (gigatoken
  encoded a literal "<s>" as the BOS id and then restarted the dummy prefix after it), and
  user-defined pieces are matched by sentencepiece's own rules: a document that contains one goes to
  sentencepiece;
- no merge that yields a control, unknown or byte piece (sentencepiece never produces those by merging);
- a model with a normalization charsmap (nmt_nfkc, ...) or remove_extra_whitespaces: gigatoken's
  charsmap normalizer differs on combining marks and U+0085, and its Strip removes every Unicode
  space where sentencepiece removes ' ' and U+2581; so sentencepiece's own normalize() runs first and
  gigatoken gets the normalized text with no normalizer of its own (normalizing costs ~1/10 of
  sentencepiece's encode). Identity models without it (Llama-2 style, tools/train_tokenizer.py's)
  need only the dummy prefix and the space escape, which gigatoken does exactly.

What gigatoken cannot do at all (unigram models, no byte fallback, unused pieces, whitespace as
suffix) sets `reason` and every document goes through sentencepiece. A document gigatoken refuses
(a lone surrogate) goes through sentencepiece too, which then raises as it always did.
"""

from __future__ import annotations

import json

import numpy as np

from megatron_free.data.tokenizers import SentencePieceTokenizer


class FastSentencePiece:
    """Batch encoding with sentencepiece's ids; gigatoken where that is exact, sentencepiece otherwise."""

    def __init__(self, tokenizer: SentencePieceTokenizer):
        self.tokenizer = tokenizer
        self.reason: str | None = None
        self._gigatoken = None
        self._normalize_first = False  # sentencepiece normalizes, gigatoken only merges
        self._user_defined: tuple[str, ...] = ()
        try:
            import gigatoken
            from gigatoken._load.sentencepiece import sentencepiece_to_tokenizer_json
        except ImportError:
            self.reason = "gigatoken is not installed (pip install gigatoken)"
            return
        processor = self._processor = tokenizer._processor
        if any(processor.is_unused(i) for i in range(processor.vocab_size())):
            self.reason = "the model has unused pieces, which sentencepiece re-segments"
            return
        try:
            config = json.loads(sentencepiece_to_tokenizer_json(tokenizer._model_proto))
        except ValueError as e:  # e.g. "only BPE sentencepiece models are supported, got model_type 'unigram'"
            self.reason = str(e)
            return
        self._user_defined = tuple(t["content"] for t in config["added_tokens"] if not processor.is_control(t["id"]))
        config["added_tokens"] = []
        special = {
            processor.id_to_piece(i)
            for i in range(processor.vocab_size())
            if processor.is_control(i) or processor.is_unknown(i) or processor.is_byte(i)
        }
        model = config["model"]
        model["merges"] = [pair for pair in model["merges"] if pair[0] + pair[1] not in special]
        steps = config["normalizer"]["normalizers"]
        if any(step["type"] in ("Precompiled", "Strip") for step in steps):
            self._normalize_first = True
            config["normalizer"] = None
        self._gigatoken = gigatoken.Tokenizer.from_json(json.dumps(config, ensure_ascii=False))

    def _exact(self, text: str) -> bool:
        return not any(symbol in text for symbol in self._user_defined)

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids as uint32, offsets as int64 with len(texts) + 1 entries). Runs on the calling thread.

        Raises what sentencepiece raises for a text that it cannot encode."""
        return concatenate([self.encode(t) for t in texts])

    def encode(self, text: str):
        """sentencepiece's ids of one text (a uint32 array from gigatoken, or sentencepiece's list)."""
        if self._gigatoken is not None and self._exact(text):
            try:
                # one text per call: gigatoken's batch call builds an awkward array (and imports awkward) for nothing
                return self._gigatoken.encode(self._processor.normalize(text) if self._normalize_first else text)
            except (TypeError, ValueError, RuntimeError):  # a text gigatoken refuses (a lone surrogate)
                pass
        return self.tokenizer.tokenize(text)

    def __reduce__(self):
        # gigatoken's Rust object does not pickle; spawned worker processes rebuild it from the model.
        return (FastSentencePiece, (self.tokenizer,))


def concatenate(pieces) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate([np.asarray(p, dtype=np.uint32) for p in pieces]) if pieces else np.zeros(0, np.uint32)
    return ids, offsets
