"""What a checkpoint's weights are: the model's description, written once into every checkpoint.

Resume checks, inference, the HuggingFace export and --init-from-baseline read it to rebuild the model
under any layout; nothing about how the run was launched (parallel sizes, precision, data) is in it.

Checkpoints written before the description existed carry the run's flags instead (``args``):
``ModelDescription.from_checkpoint_state`` reads either.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

FORMAT_VERSION = 1


class DescriptionError(ValueError):
    """A checkpoint's model description is missing or unusable; the message names the field."""


@dataclass(frozen=True)
class ModelDescription:
    """The architecture, vocabulary, tokenizer and latent of a Free Transformer (or its baseline)."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: Optional[int]
    """Per-head size; None = hidden_size / num_attention_heads."""
    max_position_embeddings: int
    rotary_base: int
    norm_epsilon: float
    tie_embeddings: bool

    vocab_size: int
    """The tokenizer's vocabulary (what an export keeps)."""
    padded_vocab_size: int
    """Rows of the embedding and output layer: vocab_size padded as Megatron does."""
    tokenizer_type: Optional[str]
    tokenizer_model: Optional[str]

    baseline: bool
    latent_bits: int
    free_bits: float
    """kappa, in bits per token."""
    injection_layer: int
    """1-based block that receives Z."""

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def to_state(self) -> dict:
        """The checkpoint's entry: plain Python values and a format version."""
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_state(cls, state: dict) -> "ModelDescription":
        version = state.get("format_version")
        if version != FORMAT_VERSION:
            raise DescriptionError(f"model description format {version!r}; this version reads {FORMAT_VERSION}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in state]
        if missing:
            raise DescriptionError(f"model description lacks {', '.join(missing)}")
        return cls(**{n: state[n] for n in names})

    @classmethod
    def from_checkpoint_state(cls, common: dict) -> "ModelDescription":
        """From a checkpoint's common state: its description, or the flags of an older checkpoint."""
        if "model_description" in common:
            return cls.from_state(common["model_description"])
        if "args" in common:
            return cls.from_run_flags(common["args"])
        raise DescriptionError("holds neither a model description nor run arguments (not a megatron_free checkpoint)")

    @classmethod
    def from_run_flags(cls, flags: dict[str, Any]) -> "ModelDescription":
        """From validated pretrain flags (vars(args)), as checkpoints before the description stored them."""
        try:
            return cls(
                num_layers=flags["num_layers"],
                hidden_size=flags["hidden_size"],
                ffn_hidden_size=flags["ffn_hidden_size"],
                num_attention_heads=flags["num_attention_heads"],
                num_query_groups=flags["num_query_groups"],
                kv_channels=flags.get("kv_channels"),
                max_position_embeddings=flags["max_position_embeddings"],
                rotary_base=flags["rotary_base"],
                norm_epsilon=flags["norm_epsilon"],
                tie_embeddings=not flags.get("untie_embeddings_and_output_weights", False),
                # Older checkpoints kept no tokenizer vocabulary: --vocab-size (mock data) or the padded one;
                # inference and the export take the tokenizer's own.
                vocab_size=flags.get("vocab_size") or flags["padded_vocab_size"],
                padded_vocab_size=flags["padded_vocab_size"],
                tokenizer_type=flags.get("tokenizer_type") or ("CharacterTokenizer" if flags.get("toy_data") else None),
                tokenizer_model=flags.get("tokenizer_model"),
                baseline=flags.get("baseline", False),
                latent_bits=flags["latent_bits"],
                free_bits=flags["free_bits"],
                injection_layer=flags["injection_layer"],
            )
        except KeyError as e:
            raise DescriptionError(f"run arguments lack {e.args[0]}") from None

    def shape_differences(self, other: "ModelDescription", fields=None) -> list[tuple[str, Any, Any]]:
        """(flag, mine, other's) for each field that shapes the weights and differs; kappa, the tokenizer
        and the vocabulary before padding may change between runs of the same weights."""
        return [
            (SHAPE_FLAGS[name], getattr(self, name), getattr(other, name))
            for name in (fields or SHAPE_FLAGS)
            if getattr(self, name) != getattr(other, name)
        ]


# The fields that decide the weights' shapes, as the flags that set them.
SHAPE_FLAGS = {
    "num_layers": "--num-layers",
    "hidden_size": "--hidden-size",
    "ffn_hidden_size": "--ffn-hidden-size",
    "num_attention_heads": "--num-attention-heads",
    "num_query_groups": "--num-query-groups",
    "kv_channels": "--kv-channels",
    "padded_vocab_size": "a padded vocabulary of",
    "tie_embeddings": "tied embeddings (no --untie-embeddings-and-output-weights)",
    "baseline": "--baseline",
    "latent_bits": "--latent-bits",
    "injection_layer": "--injection-layer",
}
