"""Write a HuggingFace folder (config, weights, modeling code, tokenizer) from a megatron_free model.

    from megatron_free.convert.export import export_hf
    export_hf(model.state_dict(), model.config, "out/hf", vocab_size=tokenizer.vocab_size,
              tokenizer=tokenizer, max_position_embeddings=args.seq_length, rope_theta=args.rotary_base)
    AutoModelForCausalLM.from_pretrained("out/hf", trust_remote_code=True)   # Free Transformer
    AutoModelForCausalLM.from_pretrained("out/hf")                           # a baseline: plain Llama

The state dict is a whole TP1/PP1 model's (a CLI loads the checkpoint into such a model first).
The folder is written into a temporary folder beside ``out_dir`` and renamed into place, so a reader
never sees a half-written export. Contents: config.json (with ``auto_map`` unless baseline), the two
modeling files (Free Transformer only), model-0000i-of-0000n.safetensors + model.safetensors.index.json,
generation_config.json, and the tokenizer (for sentencepiece: tokenizer.model, tokenizer.json,
tokenizer_config.json).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from megatron_free.convert.hf_mapping import hf_config_from, megatron_to_hf

__all__ = ["export_hf", "parse_size", "MODELING_FILES"]

MODELING_DIR = Path(__file__).parent / "hf_modeling"
LATENT_RNG = Path(__file__).parents[1] / "model" / "latent_rng.py"
MODELING_FILES = ("configuration_free_transformer.py", "modeling_free_transformer.py")
# What the tokenizer returns, all the model takes: no token_type_ids (which generate() of 4.x refuses).
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)?\s*$", re.IGNORECASE)
_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes from 5_000_000_000, "5GB" (10^9) or "4GiB" (2^30)."""
    if isinstance(size, int):
        value = size
    else:
        match = _SIZE.match(size)
        if not match:
            raise ValueError(f"max_shard_size {size!r}: expected bytes or a size like '5GB' / '4GiB'")
        value = int(float(match.group(1)) * _UNITS.get((match.group(2) or "B").upper(), 1))
    if value < 1:
        raise ValueError(f"max_shard_size {size!r} must be positive")
    return value


def _shards(tensors: dict, max_bytes: int) -> list[dict]:
    """Tensors in key order, a new shard whenever the next tensor would exceed max_bytes (a tensor
    larger than max_bytes gets a shard of its own)."""
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensors[name]
        size += nbytes
    if current:
        shards.append(current)
    return shards


def _write_weights(tensors: dict, folder: str, max_shard_size: int) -> None:
    from safetensors.torch import save_file

    shards = _shards(tensors, max_shard_size)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(folder, filename), metadata={"format": "pt"})
        for name, tensor in shard.items():
            weight_map[name] = filename
            total += tensor.numel() * tensor.element_size()
    _write_json(
        os.path.join(folder, "model.safetensors.index.json"),
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )


def _give_default_modes(folder: str) -> None:
    """The modes a plain open() / mkdir() gives under the umask (typically 0644 / 0755), for the folder
    and everything in it: safetensors writes its files 0600 and mkdtemp makes the folder 0700."""
    umask = os.umask(0o077)  # the umask can only be read by setting it
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
    os.chmod(folder, 0o777 & ~umask)


def _write_json(path: str, content: dict) -> None:
    with open(path, "w") as f:
        json.dump(content, f, indent=2, sort_keys=True)
        f.write("\n")


def _token_ids(tokenizer) -> dict:
    """bos/eos/pad ids of a megatron_free tokenizer (eos is its end-of-document id)."""
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        return {}
    return {"bos_token_id": tokenizer.bos, "eos_token_id": tokenizer.eod, "pad_token_id": tokenizer.pad}


def _sentencepiece_tokenizer_json(model_proto: bytes):
    """A `tokenizers` Tokenizer that encodes exactly as sentencepiece does, or None when the model's
    normalization is not one we mirror (the project's trainer: identity, whitespace kept)."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    norm = proto.normalizer_spec
    unigram_or_bpe = proto.trainer_spec.model_type in (1, 2)
    if norm.name != "identity" or norm.remove_extra_whitespaces or not unigram_or_bpe:
        return None
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    unk_id = proto.trainer_spec.unk_id
    byte_fallback = proto.trainer_spec.byte_fallback
    if proto.trainer_spec.model_type == 2:  # BPE: merges ranked by the merged piece's id, as sentencepiece
        vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
        merges = sorted(
            (rank, vocab[piece[:i]], vocab[piece[i:]], piece[:i], piece[i:])
            for piece, rank in vocab.items()
            for i in range(1, len(piece))
            if piece[:i] in vocab and piece[i:] in vocab
        )
        model = models.BPE(
            vocab=vocab,
            merges=[(m[3], m[4]) for m in merges],
            unk_token=pieces[unk_id][0],
            fuse_unk=True,
            byte_fallback=byte_fallback,
        )
    else:  # unigram
        model = models.Unigram([(piece, score) for piece, score, _ in pieces], unk_id, byte_fallback)
    tokenizer = Tokenizer(model)
    steps = [normalizers.Prepend("\u2581")] if norm.add_dummy_prefix else []
    tokenizer.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "\u2581")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if norm.add_dummy_prefix else [])
    )
    # unknown (2) and control (3) pieces: bos/eos/unk/pad, matched only as whole special tokens.
    tokenizer.add_special_tokens(
        [AddedToken(piece, special=True, normalized=False) for piece, _, kind in pieces if kind in (2, 3)]
    )
    return tokenizer


def _character_tokenizer_json(tokenizer):
    """The toy task's CharacterTokenizer as a `tokenizers` Tokenizer: one id per character, eod as
    the special token "</s>"."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: i for i, char in enumerate(tokenizer.ALPHABET)}
    vocab["</s>"] = tokenizer.eod
    fast = Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    fast.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    fast.decoder = decoders.Fuse()
    fast.add_special_tokens([AddedToken("</s>", special=True, normalized=False)])
    return fast


def _write_character_tokenizer(tokenizer, folder: str, max_position_embeddings: int) -> dict:
    _character_tokenizer_json(tokenizer).save(os.path.join(folder, "tokenizer.json"))
    special = {"eos_token": "</s>", "pad_token": "</s>"}
    _write_json(
        os.path.join(folder, "tokenizer_config.json"),
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            "model_input_names": MODEL_INPUT_NAMES,
            "model_max_length": int(max_position_embeddings),
            **special,
        },
    )
    _write_json(os.path.join(folder, "special_tokens_map.json"), special)
    return _token_ids(tokenizer)


def _write_tokenizer(tokenizer, folder: str, max_position_embeddings: int, vocab_size: int) -> dict:
    """Writes the tokenizer files; returns its bos/eos/pad ids.

    ``tokenizer``: a sentencepiece model path or a megatron_free SentencePieceTokenizer, a
    megatron_free HuggingFaceTokenizer (its files are copied through save_pretrained), or the toy
    task's CharacterTokenizer.

    A sentencepiece model is written as tokenizer.model plus a tokenizer.json that mirrors plain
    ``SentencePieceProcessor.encode`` (what preprocessing used: no BOS/EOS added, literal "</s>" text not
    parsed as a special token), loaded as PreTrainedTokenizerFast. Not as LlamaTokenizer: transformers 5
    rebuilds LlamaTokenizer's pipeline itself and encodes leading spaces differently from sentencepiece.
    A model whose normalization tokenizer.json does not mirror falls back to LlamaTokenizer (a warning).
    """
    from megatron_free.data.tokenizers import (
        CharacterTokenizer,
        HuggingFaceTokenizer,
        SentencePieceTokenizer,
    )

    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = SentencePieceTokenizer(tokenizer)
    if isinstance(tokenizer, CharacterTokenizer):
        return _write_character_tokenizer(tokenizer, folder, max_position_embeddings)
    if not isinstance(tokenizer, (SentencePieceTokenizer, HuggingFaceTokenizer)):
        raise TypeError(
            f"tokenizer {tokenizer!r}: HF export writes sentencepiece, HuggingFace and the toy character "
            "tokenizers only "
            "(pass tokenizer=None and the token ids for others)"
        )
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than vocab_size {vocab_size}")
    if isinstance(tokenizer, HuggingFaceTokenizer):
        tokenizer._tokenizer.save_pretrained(folder)
        return _token_ids(tokenizer)
    with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
        f.write(tokenizer._model_proto)
    piece = tokenizer.id_to_piece
    special = {
        "bos_token": None if tokenizer.bos is None else piece(tokenizer.bos),
        "eos_token": piece(tokenizer.eod),
        "unk_token": None if tokenizer.unk is None else piece(tokenizer.unk),
        "pad_token": None if tokenizer.pad is None else piece(tokenizer.pad),
    }
    fast = _sentencepiece_tokenizer_json(tokenizer._model_proto)
    if fast is not None:
        fast.save(os.path.join(folder, "tokenizer.json"))
        tokenizer_class = "PreTrainedTokenizerFast"
    else:
        warnings.warn(
            f"{tokenizer.model_path}: its normalization is not mirrored in tokenizer.json; written as "
            "LlamaTokenizer, whose encoding may differ from sentencepiece's in edge cases"
        )
        tokenizer_class = "LlamaTokenizer"
    _write_json(
        os.path.join(folder, "tokenizer_config.json"),
        {
            "tokenizer_class": tokenizer_class,
            # Preprocessing encoded documents as plain sentencepiece pieces and appended eod itself.
            "add_bos_token": False,
            "add_eos_token": False,
            "split_special_tokens": True,
            "legacy": True,
            "clean_up_tokenization_spaces": False,
            "model_input_names": MODEL_INPUT_NAMES,
            "model_max_length": int(max_position_embeddings),
            **{k: v for k, v in special.items() if v is not None},
        },
    )
    _write_json(os.path.join(folder, "special_tokens_map.json"), {k: v for k, v in special.items() if v is not None})
    return _token_ids(tokenizer)


def export_hf(
    model_state_dict: dict,
    megatron_config,
    out_dir: str | os.PathLike,
    vocab_size: int,
    tokenizer=None,
    max_shard_size: int | str = "5GB",
    *,
    max_position_embeddings: int = 4096,
    rope_theta: float = 10000.0,
    dtype: torch.dtype | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    overwrite: bool = False,
) -> str:
    """Writes the HF folder ``out_dir`` atomically; returns its path.

    ``vocab_size``: the tokenizer's true vocabulary (Megatron's padding rows are dropped).
    ``tokenizer``: None, a sentencepiece model path, or a megatron_free tokenizer; its bos/eos/pad ids
    fill the configs unless given explicitly. ``dtype``: cast floating tensors (e.g. torch.bfloat16);
    None keeps the checkpoint's. ``rope_theta``: the model's --rotary-base.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists (pass overwrite=True to replace it)")
    max_bytes = parse_size(max_shard_size)
    tensors = megatron_to_hf(model_state_dict, megatron_config, vocab_size=vocab_size)
    tensors = {
        name: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).detach().cpu().contiguous()
        for name, t in tensors.items()
    }
    tied = "lm_head.weight" not in tensors
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        ids = {}
        if tokenizer is not None:
            ids = _write_tokenizer(tokenizer, tmp, max_position_embeddings, vocab_size)
        explicit = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
        ids.update({k: v for k, v in explicit.items() if v is not None})
        config = hf_config_from(
            megatron_config,
            vocab_size,
            max_position_embeddings,
            tied,
            rope_theta=rope_theta,
            dtype=next(iter(tensors.values())).dtype,
            **ids,
        )
        _write_json(os.path.join(tmp, "config.json"), config)
        if not megatron_config.baseline:
            for name in MODELING_FILES:
                shutil.copyfile(MODELING_DIR / name, os.path.join(tmp, name))
            # The one latent RNG (training's), imported by the modeling code as .latent_rng.
            shutil.copyfile(LATENT_RNG, os.path.join(tmp, "latent_rng.py"))
        _write_json(
            os.path.join(tmp, "generation_config.json"),
            {"_from_model_config": True, **{k: ids.get(k) for k in explicit}},
        )
        _write_weights(tensors, tmp, max_bytes)
        _give_default_modes(tmp)
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "export"))
            os.rename(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
