"""Parameter and FLOP counts of the Free Transformer and its baseline (dense matmul FLOPs, as
Megatron counts them: attention scores over the full sequence, 2 FLOPs per multiply-add)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_free.model.description import ModelDescription


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int
    seq_length: int
    tied_embeddings: bool
    baseline: bool
    latent_bits: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_size(self) -> int:
        return self.num_query_groups * self.head_dim


def block_parameters(s: ModelShape) -> dict:
    """One transformer block: 'sharded' over tensor-parallel ranks (QKV, attention output,
    SwiGLU gate/up/down) and 'replicated' on every TP rank (the two RMSNorm weights)."""
    d = s.hidden_size
    attention = d * (d + 2 * s.kv_size) + d * d
    mlp = 3 * d * s.ffn_hidden_size  # SwiGLU: gate, up, down
    return {"sharded": attention + mlp, "replicated": 2 * d}


def latent_parameter_parts(s: ModelShape) -> dict:
    """The latent path by part (all zero for a baseline): 'encoder' (its transformer block and
    the learned query zeta), 'readout' (RMSNorm and the D -> H linear) and 'post_sampler' (the
    C x D matrix)."""
    if s.baseline:
        return {"encoder": 0, "readout": 0, "post_sampler": 0}
    block = block_parameters(s)
    d = s.hidden_size
    return {
        "encoder": block["sharded"] + block["replicated"] + d,
        "readout": d + d * s.latent_bits,
        "post_sampler": 2**s.latent_bits * d,
    }


def latent_parameters(s: ModelShape) -> dict:
    """The latent path (all zero for a baseline) by how it is held: 'sharded' (the encoder
    block's TP-sharded weights), 'replicated' (its norms, zeta, readout norm, D->H readout) and
    'post_sampler' (the C x D matrix, rows sharded over TP ranks)."""
    parts = latent_parameter_parts(s)
    sharded = 0 if s.baseline else block_parameters(s)["sharded"]
    return {
        "sharded": sharded,
        "replicated": parts["encoder"] + parts["readout"] - sharded,
        "post_sampler": parts["post_sampler"],
    }


def parameter_counts(s: ModelShape) -> dict:
    """Parameters by part; 'total' counts tied embeddings once and the post-sampler in full."""
    d = s.hidden_size
    block = block_parameters(s)
    latent = latent_parameters(s)
    embedding = s.vocab_size * d
    output = 0 if s.tied_embeddings else s.vocab_size * d
    decoder = s.num_layers * (block["sharded"] + block["replicated"]) + d  # + the final norm
    counts = {
        "embedding": embedding,
        "output_layer": output,
        "decoder": decoder,
        # encoder block + zeta + readout norm and D->H readout; the C x D post-sampler apart.
        "encoder": latent["sharded"] + latent["replicated"],
        "post_sampler": latent["post_sampler"],
    }
    counts["total"] = sum(counts.values())
    return counts


def _layer_forward_flops_per_token(s: ModelShape) -> int:
    d, t = s.hidden_size, s.seq_length
    qkv_and_out = 2 * d * (d + 2 * s.kv_size) + 2 * d * d
    scores_and_values = 2 * 2 * t * d
    mlp = 2 * 3 * d * s.ffn_hidden_size
    return qkv_and_out + scores_and_values + mlp


def training_flops_per_token(s: ModelShape) -> dict:
    """Training FLOPs per token: 3x the forward (forward + backward), plus the binary mapper's
    backward, a T x C x D product (2 C D per token; its forward is a gather)."""
    forward = s.num_layers * _layer_forward_flops_per_token(s) + 2 * s.hidden_size * s.vocab_size
    latent_forward = mapper_backward = 0
    if not s.baseline:
        latent_forward = _layer_forward_flops_per_token(s) + 2 * s.hidden_size * s.latent_bits
        mapper_backward = 2 * 2**s.latent_bits * s.hidden_size
    total = 3 * (forward + latent_forward) + mapper_backward
    return {"decoder": 3 * forward, "encoder": 3 * latent_forward, "mapper_backward": mapper_backward, "total": total}


def model_shape(description: ModelDescription, seq_length: int) -> ModelShape:
    """The shape of the model a description gives (its padded vocabulary: the rows that are computed)."""
    return ModelShape(
        num_layers=description.num_layers,
        hidden_size=description.hidden_size,
        ffn_hidden_size=description.ffn_hidden_size,
        num_attention_heads=description.num_attention_heads,
        num_query_groups=description.num_query_groups,
        vocab_size=description.padded_vocab_size,
        seq_length=seq_length,
        tied_embeddings=description.tie_embeddings,
        baseline=description.baseline,
        latent_bits=description.latent_bits,
    )
