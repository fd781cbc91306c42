"""Unit tests for megatron_free/data/tokenizers.py and megatron_free/data/train_tokenizer.py."""

import pickle
import warnings
from pathlib import Path

import pytest

from megatron_free.data.preprocess import InputError
from megatron_free.data.tokenizers import (
    ByteTokenizer,
    CharacterTokenizer,
    HuggingFaceTokenizer,
    SentencePieceTokenizer,
    build_tokenizer,
    vocab_size_with_padding,
)
from megatron_free.data.train_tokenizer import TokenizerTrainingConfig, train_tokenizer
from megatron_free.data.train_tokenizer import main as train_main

SHAKESPEARE = Path(__file__).parents[2] / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def shakespeare_model(tmp_path_factory):
    """A 512-piece BPE model trained on tinyshakespeare (under a second)."""
    prefix = tmp_path_factory.mktemp("tok") / "shakespeare"
    config = TokenizerTrainingConfig(
        inputs=[str(SHAKESPEARE)], model_prefix=str(prefix), vocab_size=512, input_format="text-files", seed=7
    )
    return Path(train_tokenizer(config, log=None))


def test_byte_tokenizer_round_trip():
    """ByteTokenizer: UTF-8 bytes, eod 256, eod dropped by detokenize."""
    tok = ByteTokenizer()
    text = "To be, or not — été 日本\n"
    ids = tok.tokenize(text)
    assert ids == list(text.encode("utf-8"))
    assert (tok.vocab_size, tok.eod, tok.bos, tok.pad) == (257, 256, None, None)
    assert tok.detokenize(ids + [tok.eod]) == text


def test_character_tokenizer_alphabet():
    """CharacterTokenizer: the documented toy alphabet and ids, eod == pad, unknown characters rejected."""
    tok = CharacterTokenizer()
    assert tok.ALPHABET == "_!ABCDEFGHIJKLMNOPQRSTUVWXYZ>"
    assert (tok.vocab_size, tok.eod, tok.pad) == (30, 29, 29)
    assert tok.tokenize("_!AZ>") == [0, 1, 2, 27, 28]
    assert tok.detokenize(tok.tokenize("K>__KKKK!") + [tok.eod]) == "K>__KKKK!"
    with pytest.raises(ValueError, match="'a'"):
        tok.tokenize("a")


def test_build_tokenizer_errors_name_the_flag(tmp_path):
    """build_tokenizer: unknown type, missing model file, stray model: one-line errors naming the flags."""
    assert isinstance(build_tokenizer("ByteTokenizer"), ByteTokenizer)
    assert isinstance(build_tokenizer("CharacterTokenizer", None), CharacterTokenizer)
    with pytest.raises(ValueError, match="--tokenizer-type NoSuch"):
        build_tokenizer("NoSuch", None)
    missing = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match=f"--tokenizer-model {missing}"):
        build_tokenizer("SentencePieceTokenizer", str(missing))
    with pytest.raises(ValueError, match="needs --tokenizer-model"):
        build_tokenizer("SentencePieceTokenizer", None)
    with pytest.raises(ValueError, match="takes no --tokenizer-model"):
        build_tokenizer("ByteTokenizer", "x.model")
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        build_tokenizer("SentencePieceTokenizer", str(garbage))


def test_huggingface_tokenizer_errors(tmp_path):
    """HuggingFaceTokenizer: a missing folder names the flag; without transformers the error says what to install."""
    with pytest.raises(FileNotFoundError, match="--tokenizer-model"):
        HuggingFaceTokenizer(tmp_path / "missing")
    try:
        import transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="transformers"):
            HuggingFaceTokenizer(tmp_path)


def test_huggingface_tokenizer_matches_megatron_core(tmp_path):
    """A local HF tokenizer folder: ids, eod and vocab size as megatron-core's HuggingFaceTokenizer; usable by
    preprocess."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install '.[hf]')")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train(
        [str(SHAKESPEARE)],
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>", "<|bos|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|bos|>"
    ).save_pretrained(tmp_path / "hf")
    tok = build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "hf"))
    assert (tok.vocab_size, tok.eod, tok.bos) == (400, 0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.tokenizers import MegatronTokenizer
    # use_fast: megatron-core's default (slow) tokenizer cannot be built from a tokenizer.json-only folder
    # by transformers 4.x (AutoTokenizer returns False); ours is the fast one too.
    reference = MegatronTokenizer.from_pretrained(
        tokenizer_path=str(tmp_path / "hf"), metadata_path={"library": "huggingface"}, use_fast=True
    )
    text = SHAKESPEARE.read_text(encoding="utf-8")[:5000] + " é 日本\n"
    assert tok.tokenize(text) == reference.tokenize(text)
    assert (tok.eod, tok.vocab_size) == (reference.eod, reference.vocab_size)
    assert tok.detokenize(tok.tokenize(text)) == text

    from megatron_free.data.preprocess import PreprocessConfig, preprocess

    (tmp_path / "lines.txt").write_text(text, encoding="utf-8")
    summary = preprocess(
        PreprocessConfig(
            inputs=[str(tmp_path / "lines.txt")],
            output_prefix=str(tmp_path / "out"),
            tokenizer_type="HuggingFaceTokenizer",
            tokenizer_model=str(tmp_path / "hf"),
            input_format="text-lines",
            append_eod=True,
            workers=2,
        ),
        log=None,
    )
    assert summary.documents == sum(1 for line in text.split("\n") if line.strip()) and summary.skipped == 0


@pytest.mark.parametrize(
    "vocab,divisible,tp,expected",
    [
        (50257, 128, 1, 50304),
        (50257, 128, 8, 51200),
        (512, 128, 1, 512),
        (30, 128, 2, 256),
        (131072, 128, 4, 131072),
        (32000, 64, 3, 32064),
    ],
)
def test_vocab_size_with_padding(vocab, divisible, tp, expected):
    """vocab_size_with_padding matches Megatron-LM's int(math.ceil(v / m) * m)."""
    import math

    assert vocab_size_with_padding(vocab, divisible, tp) == expected
    assert expected == int(math.ceil(vocab / (divisible * tp)) * (divisible * tp))


def test_sentencepiece_matches_megatron_core(shakespeare_model):
    """SentencePieceTokenizer gives megatron-core's sentencepiece ids and eod, round-trips text, pickles."""
    tok = build_tokenizer("SentencePieceTokenizer", str(shakespeare_model))
    assert (tok.vocab_size, tok.eod, tok.bos, tok.pad) == (512, 2, 1, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.tokenizers import MegatronTokenizer
    reference = MegatronTokenizer.from_pretrained(
        tokenizer_path=str(shakespeare_model), metadata_path={"library": "sentencepiece"}
    )
    text = SHAKESPEARE.read_text(encoding="utf-8")[:20000] + "\n  digits 0123 and é 日本\t"
    assert tok.tokenize(text) == reference.tokenize(text)
    assert tok.eod == reference.eod and tok.vocab_size == reference.vocab_size
    assert tok.detokenize(tok.tokenize(text)) == text  # identity normalization + byte fallback: exact
    assert pickle.loads(pickle.dumps(tok)).tokenize(text) == tok.tokenize(text)


def test_train_tokenizer_is_reproducible(tmp_path, shakespeare_model):
    """train_tokenizer: same inputs and seed give the same .model bytes; byte fallback and split digits are on."""
    config = TokenizerTrainingConfig(
        inputs=[str(SHAKESPEARE)],
        model_prefix=str(tmp_path / "again"),
        vocab_size=512,
        input_format="text-files",
        seed=7,
    )
    again = Path(train_tokenizer(config, log=None))
    assert again.read_bytes() == shakespeare_model.read_bytes()
    assert (tmp_path / "again.vocab").read_text(encoding="utf-8").splitlines()[:3] == ["<unk>\t0", "<s>\t0", "</s>\t0"]
    tok = SentencePieceTokenizer(again)
    assert tok.id_to_piece(tok.tokenize("日")[-1]) == "<0xA5>"  # unseen character: byte fallback


def test_train_tokenizer_splits_digits(tmp_path):
    """train_tokenizer on JSONL: frequent numbers are still split into single digits."""
    corpus = tmp_path / "numbers.jsonl"
    corpus.write_text("".join(f'{{"text": "in 1984 and 2048 we saw {i % 7} cats"}}\n' for i in range(500)))
    config = TokenizerTrainingConfig(inputs=[str(corpus)], model_prefix=str(tmp_path / "n"), vocab_size=300)
    tok = SentencePieceTokenizer(train_tokenizer(config, log=None))
    assert [tok.id_to_piece(i) for i in tok.tokenize("1984")][-4:] == ["1", "9", "8", "4"]
    assert "▁cats" in [tok.id_to_piece(i) for i in tok.tokenize(" cats")]


def test_train_tokenizer_cli_errors(tmp_path, capsys):
    """train_tokenizer CLI: bad lines and impossible vocab sizes are one-line errors with exit code 2."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hello there"}\n{"txt": "x"}\n', encoding="utf-8")
    assert train_main(["--input", str(bad), "--model-prefix", str(tmp_path / "m"), "--vocab-size", "300"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}:2: missing key 'text'"
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "hello there"}\n', encoding="utf-8")
    assert train_main(["--input", str(good), "--model-prefix", str(tmp_path / "m"), "--vocab-size", "5000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --vocab-size 5000:") and "\n" not in err
    assert not list(tmp_path.glob("m.*"))
    with pytest.raises(InputError, match="--vocab-size 100"):
        TokenizerTrainingConfig(inputs=[str(good)], model_prefix="x", vocab_size=100)
