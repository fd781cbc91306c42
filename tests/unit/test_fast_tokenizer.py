"""FastSentencePiece (megatron_free/data/fast_tokenizer.py) gives exactly sentencepiece's ids.

On real text (tinyshakespeare, the Python standard library's .py files) and on the hard cases:
special-token strings in the text, Unicode that normalization changes (combining marks, compatibility
characters, NEL, spaces of every kind), whitespace runs, very long lines, empty documents; for the
model shapes in use: Llama-2 style (identity, whitespace kept: tools/train_tokenizer.py's),
sentencepiece's defaults (nmt_nfkc, remove_extra_whitespaces), no dummy prefix, and user-defined
pieces. A unigram model falls back to sentencepiece, and says so.
"""

import io
import random
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from megatron_free.data.fast_tokenizer import FastSentencePiece
from megatron_free.data.tokenizers import SentencePieceTokenizer

SHAKESPEARE = Path(__file__).parents[2] / "data" / "tinyshakespeare.txt"

HARD_CASES = [
    # empty documents and whitespace only
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "\r\n",
    " \u3000 ",
    # whitespace runs, leading and trailing
    " a",
    "a ",
    "  a  b   c  ",
    "a\t\tb",
    "x" + " " * 5000 + "y",
    "\n" * 3000,
    "    def f():\n        return 1\n",
    # special-token strings: sentencepiece encodes their characters (gigatoken as-is took "<s>" as BOS)
    "<s>",
    "</s>",
    "<unk>",
    "<pad>",
    "<0x41>",
    "x<s>y",
    " <s> ",
    "<<s>>",
    "<s><s></s>",
    "re.compile(r'(?P<s>\\d+)')",
    # the user-defined pieces of one of the models below
    "call <tool> now",
    "foofoo bar",
    # sentencepiece's own whitespace symbol in the text
    "\u2581",
    "\u2581\u2581 x",
    "  \u2581",
    "a\u2581b",
    # Unicode that normalizers change or that byte fallback covers
    "e\u0301",
    "\u00e9",
    "\ufb01\u0301",
    "\u3000\u0301",
    "\u00a0\u0301",
    "s\u0301\u0301",
    "\u0340\u0340x",
    "\ufb01",
    "\uff21\uff22",
    "\u2460",
    "\u0085",
    "a\u0085b",
    "\u00a0",
    "\u2028",
    "\u200b",
    "\ufeffx",
    "\u200d",
    "\x00",
    "a\x00b",
    "\x7f",
    "\x1b[0m",
    "\U0001f600" * 3,
    "\U0001f3f3\ufe0f\u200d\U0001f308",
    "\u0645\u0631\u062d\u0628\u0627",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\U0010ffff",
    "\u1100\u1161\u11a8",
    "\U0001f1eb\U0001f1f7",
    "12345678901234567890",
    "\uff13\uff14\uff15",
]


def _train(**options) -> SentencePieceTokenizer:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    lines = [line for line in text.split("\n") if line.strip()][:6000]
    lines += ["naïve café ﬁ ① Ａ 日本語 😀 <s> x \u0301", "<tool> foo"] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=700,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
        **options,
    )
    return SentencePieceTokenizer(model_proto=model.getvalue())


MODELS = {
    "llama2-style": dict(
        model_type="bpe",
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
    ),
    "nmt_nfkc-defaults": dict(model_type="bpe"),
    "identity-strip": dict(model_type="bpe", normalization_rule_name="identity", remove_extra_whitespaces=True),
    "no-dummy-prefix": dict(
        model_type="bpe", normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False
    ),
    "user-defined": dict(model_type="bpe", user_defined_symbols=["<tool>", "foo"]),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def tokenizer(request):
    return _train(**MODELS[request.param])


def real_texts() -> list[str]:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[::4]
    code = []
    for path in stdlib:
        try:
            code.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            pass
    return text.split("\n\n")[:2000] + code + [text.replace("\n", " ")]  # the last: a 1 MB line


def random_mixtures(n: int = 2000) -> list[str]:
    """Short strings mixing the hard characters, where their interactions show."""
    alphabet = list("ab <>s/\n\t\x00é日😀▁\u3000\u00a0ﬁ\u0301\u0085\u0340") + [
        "<s>",
        "</s>",
        "<unk>",
        "<0x0A>",
        "foo",
        "<tool>",
        "  ",
    ]
    rng = random.Random(0)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def assert_same_ids(tokenizer, texts):
    fast = FastSentencePiece(tokenizer)
    assert fast.reason is None  # the fast path really ran
    ids, offsets = fast.encode_batch(texts)
    assert len(offsets) == len(texts) + 1
    expected = tokenizer._processor.encode(texts)
    mismatches = [repr(t[:60]) for i, t in enumerate(texts) if ids[offsets[i] : offsets[i + 1]].tolist() != expected[i]]
    assert mismatches == [], f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:5]}"


def test_same_ids_on_real_text(tokenizer):
    """Shakespeare's paragraphs, a quarter of the stdlib's top-level modules, and the whole play as one line."""
    assert_same_ids(tokenizer, real_texts())


def test_same_ids_on_hard_cases(tokenizer):
    assert_same_ids(tokenizer, HARD_CASES + [case * 3 for case in HARD_CASES] + random_mixtures())


def test_same_ids_on_every_character():
    """Every code point outside the surrogates, alone and between letters, under the normalizing model."""
    tokenizer = _train(**MODELS["nmt_nfkc-defaults"])
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    assert_same_ids(tokenizer, chars + [f"a{c}b" for c in chars[::7]] + [f"{c}{c}x" for c in chars[::5]])


def test_the_fixes_are_needed():
    """gigatoken's own loader differs from sentencepiece on these; FastSentencePiece does not."""
    import gigatoken

    tokenizer = _train(**MODELS["nmt_nfkc-defaults"])
    plain = gigatoken.Tokenizer.from_sentencepiece(tokenizer._model_proto)
    for text in ("x<s>y", "\ufb01\u0301", "\u0085a"):
        assert plain.encode(text).tolist() != tokenizer.tokenize(text), text
    assert_same_ids(tokenizer, ["x<s>y", "\ufb01\u0301", "\u0085a"])


def test_unigram_model_falls_back_to_sentencepiece():
    tokenizer = _train(model_type="unigram")
    fast = FastSentencePiece(tokenizer)
    assert "unigram" in fast.reason
    ids, offsets = fast.encode_batch(["To be, or not", "", "<s>"])
    assert [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(3)] == [
        tokenizer.tokenize(t) for t in ["To be, or not", "", "<s>"]
    ]


def test_lone_surrogate_raises_as_sentencepiece_does():
    """A JSON "\\ud800" escape: gigatoken refuses it, sentencepiece raises; the batch raises sentencepiece's error."""
    tokenizer = _train(**MODELS["llama2-style"])
    with pytest.raises(Exception) as expected:
        tokenizer.tokenize("x\ud800y")
    with pytest.raises(type(expected.value)):
        FastSentencePiece(tokenizer).encode_batch(["fine", "x\ud800y"])


def test_ids_fit_the_output_dtype():
    tokenizer = _train(**MODELS["llama2-style"])
    ids, _ = FastSentencePiece(tokenizer).encode_batch(real_texts()[:50])
    assert ids.dtype == np.uint32 and ids.max() < tokenizer.vocab_size
