"""The Free Transformer (and its baseline) as a megatron-core GPTModel.

GPTModel gives the embedding, rotary embeddings, the pipeline-aware decoder block, the final norm,
the output layer and the vocabulary-parallel cross-entropy. We only choose the decoder's layer
specs: on the stage that holds block L/2+1 that block is a LatentInjectionLayer (which carries the
encoder, binary mapper and post-sampler); every other block is megatron's plain TransformerLayer,
so a baseline checkpoint's keys match the Free Transformer's decoder one for one.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from megatron_free.config import ConfigError, FreeTransformerConfig
from megatron_free.model.latent import FreeLatent, LatentControl, LatentInjectionLayer
from megatron_free.model.layer_specs import decoder_layer_spec, final_norm_spec, non_causal
from megatron_free.model.split_input_layer import SplitInputSelfAttention, SplitInputTransformerLayer


def _split_input(spec: ModuleSpec, layer_class) -> ModuleSpec:
    spec = copy.deepcopy(spec)
    spec.module = layer_class
    spec.submodules.self_attention.module = SplitInputSelfAttention
    return spec


def stage_layer_ranges(config: FreeTransformerConfig) -> list[tuple[int, int]]:
    """[first, last) 0-based decoder layer indices held by each pipeline stage."""
    ranges = []
    for pp_rank in range(config.pipeline_model_parallel_size):
        offset = get_transformer_layer_offset(config, pp_rank=pp_rank)
        ranges.append((offset, offset + get_num_layers_to_build(config, pp_rank=pp_rank)))
    return ranges


def validate_injection_boundary(config: FreeTransformerConfig) -> None:
    """The encoder reads X_{L/2}: with PP it must start a stage, so a single tensor crosses each
    stage boundary as megatron's schedules require."""
    if config.baseline or config.pipeline_model_parallel_size == 1:
        return
    starts = [first for first, _ in stage_layer_ranges(config)]
    if config.injection_layer - 1 not in starts:
        raise ConfigError(
            f"--injection-layer {config.injection_layer} must be the first layer of a pipeline "
            f"stage; with --pipeline-model-parallel-size {config.pipeline_model_parallel_size} "
            f"the stages start at layers {[s + 1 for s in starts]} (set "
            f"--decoder-first-pipeline-num-layers / --decoder-last-pipeline-num-layers to move "
            f"a boundary)"
        )


def decoder_block_spec(config: FreeTransformerConfig, transformer_impl: str) -> TransformerBlockSubmodules:
    """This pipeline stage's layer specs, with block L/2+1 carrying the latent."""
    layer = decoder_layer_spec(transformer_impl)
    offset = get_transformer_layer_offset(config)
    num_layers = get_num_layers_to_build(config)
    specs = [layer] * num_layers
    injection_index = config.injection_layer - 1 - offset
    if not config.baseline and 0 <= injection_index < num_layers:
        injected = _split_input(layer, LatentInjectionLayer)
        injected.params = {
            **injected.params,
            "encoder_spec": _split_input(non_causal(layer), SplitInputTransformerLayer),
        }
        specs[injection_index] = injected
    return TransformerBlockSubmodules(layer_specs=specs, layer_norm=final_norm_spec(transformer_impl))


def mask_vocabulary_padding(logits: torch.Tensor, first_id: int, vocab_size: int) -> torch.Tensor:
    """logits [..., n] of the ids first_id .. first_id + n - 1, with the ids >= vocab_size (the rows
    Megatron pads the vocabulary with, more of them under more TP) at -inf: they take no probability
    in the softmax, so losses and samples are the tokenizer's vocabulary's under any layout, and an
    export that drops the padding rows computes the same probabilities."""
    padding = torch.arange(first_id, first_id + logits.shape[-1], device=logits.device) >= vocab_size
    return logits.masked_fill(padding, float("-inf"))


def unwrap(model):
    """The FreeTransformerModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def latent_modules(model_chunks) -> list:
    """The latent of each (wrapped) chunk whose pipeline stage holds block L/2+1: the one way to
    reach it. Its side channel, read after forward calls: ``control`` (how the next calls get their
    Z), ``kl_report`` (KL statistics since the last report), ``sequence_log_q`` (each sample's
    log Q(Z|S) when recorded) and ``last_codes`` (the codes of the last call, [s, b])."""
    return [unwrap(chunk).latent for chunk in model_chunks if unwrap(chunk).latent is not None]


class FreeTransformerModel(GPTModel):
    """GPTModel whose block L/2+1 carries the Free Transformer's latent (absent for a baseline).

    forward(...) takes GPTModel's arguments plus ``latent_seeds`` ([b] int64, one seed per
    sample, required by the Free Transformer) and ``latent`` (a LatentControl: mode, given codes,
    KL gradient scale).

    ``vocab_size`` is the rows of the embedding and output layer (Megatron's padded vocabulary);
    ``unpadded_vocab_size`` the tokenizer's, whose ids alone get probability (None: every row's).
    """

    def __init__(
        self,
        config: FreeTransformerConfig,
        vocab_size: int,
        max_sequence_length: int,
        transformer_impl: str = "local",
        pre_process: Optional[bool] = None,
        post_process: Optional[bool] = None,
        share_embeddings_and_output_weights: bool = False,
        rotary_base: int = 10000,
        unpadded_vocab_size: Optional[int] = None,
    ):
        validate_injection_boundary(config)
        if unpadded_vocab_size is not None and not 0 < unpadded_vocab_size <= vocab_size:
            raise ConfigError(f"a vocabulary of {unpadded_vocab_size} does not fit {vocab_size} rows")
        if pre_process is None:
            pre_process = parallel_state.is_pipeline_first_stage()
        if post_process is None:
            post_process = parallel_state.is_pipeline_last_stage()
        super().__init__(
            config=config,
            transformer_layer_spec=decoder_block_spec(config, transformer_impl),
            vocab_size=vocab_size,
            max_sequence_length=max_sequence_length,
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=share_embeddings_and_output_weights,
            position_embedding_type="rope",
            rotary_base=rotary_base,
        )
        # A plain list, not an attribute: assigning the module would register it a second time
        # (and save its weights twice) beside its place in block L/2+1.
        self._latent = [m for m in self.modules() if isinstance(m, FreeLatent)]
        self.description = None  # what checkpoints say these weights are (set by from_description)
        if self.post_process and unpadded_vocab_size is not None and unpadded_vocab_size < vocab_size:
            # On the output layer itself, so the loss (vocabulary-parallel: each TP rank's slice) and
            # the logits returned for sampling (gathered or not) both leave the padding out.
            self.output_layer.register_forward_hook(self._mask_padding_hook(vocab_size, unpadded_vocab_size))

    @staticmethod
    def _mask_padding_hook(padded_vocab_size: int, vocab_size: int):
        def mask(module, inputs, output):
            logits, bias = output
            if logits.shape[-1] == padded_vocab_size:  # gathered over TP (or TP = 1)
                first_id = 0
            else:
                first_id = parallel_state.get_tensor_model_parallel_rank() * logits.shape[-1]
            return mask_vocabulary_padding(logits, first_id, vocab_size), bias

        return mask

    @classmethod
    def from_description(
        cls, description, config: FreeTransformerConfig, transformer_impl: str = "local", **kwargs
    ) -> "FreeTransformerModel":
        """This stage of the model a ModelDescription describes (config: from config.build_model_config)."""
        model = cls(
            config,
            vocab_size=description.padded_vocab_size,
            max_sequence_length=description.max_position_embeddings,
            transformer_impl=transformer_impl,
            share_embeddings_and_output_weights=description.tie_embeddings,
            rotary_base=description.rotary_base,
            unpadded_vocab_size=description.vocab_size,
            **kwargs,
        )
        model.description = description
        return model

    @property
    def latent(self) -> Optional[FreeLatent]:
        """The latent module if this pipeline stage holds block L/2+1, else None."""
        return self._latent[0] if self._latent else None

    def forward(
        self,
        input_ids,
        position_ids,
        attention_mask,
        labels=None,
        loss_mask=None,
        latent_seeds: Optional[torch.Tensor] = None,
        latent: Optional[LatentControl] = None,
        **kwargs,
    ):
        if self.latent is not None:
            self.latent.control = latent or LatentControl()
        if not self.config.baseline and latent_seeds is None:
            raise ValueError("the Free Transformer's forward needs latent_seeds (one per sample)")
        return super().forward(
            input_ids,
            position_ids,
            attention_mask,
            labels=labels,
            loss_mask=loss_mask,
            extra_block_kwargs={"context": latent_seeds},
            **kwargs,
        )
