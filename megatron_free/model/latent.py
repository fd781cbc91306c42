"""The Free Transformer's latent path: encoder, binary mapper, post-sampler and the injection layer.

Data flow on the stage that holds decoder block L/2+1 (spec, steps 3-5):

    X = X_{L/2}                                      [s, b, D] (sequence-sharded under SP)
    y = encoder(q = zeta repeated, kv = X)           non-causal SplitInputTransformerLayer
    o = readout(RMSNorm(y))                          [s, b, H] bit logits
    Z = codes from o (posterior) | uniform (prior) | given
    R = PostSampler(Z)                               a row gather, exact straight-through backward
    block L/2+1: q from X, kv from X + R             the KL rides on X + R into the backward

The latent lives inside decoder block L/2+1 (``LatentInjectionLayer``), so it is built on
whichever pipeline stage holds that block and its parameters sit beside the block's own.

Layout-independent sampling: codes are a stateless hash of the sample's ``latent_seed`` (derived from
the run seed and the sample's global index), the token's position and the bit (model/latent_rng.py),
computed on the logits' device without a host sync, so the same sample gets the same codes under any
TP/PP/DP layout, on CPU and GPU alike, and in the HuggingFace export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)
from megatron.core.transformer.module import MegatronModule

from megatron_free.config import FreeTransformerConfig
from megatron_free.model.binary_mapper import binary_mapper_post_sampler
from megatron_free.model.latent_rng import posterior_codes, prior_codes, sequence_positions
from megatron_free.model.losses import codes_log_prob, free_bits_kl, kl_per_token
from megatron_free.model.split_input_layer import SplitInputTransformerLayer

LATENT_MODES = ("posterior", "prior", "given")


@dataclass
class LatentControl:
    """How block L/2+1 gets its Z for the next forward calls (constant within a
    forward-backward call; per-sample randomness comes from the seeds tensor)."""

    mode: str = "posterior"
    codes: Optional[torch.Tensor] = None  # [b, s] int64, for mode "given"
    kl_loss_scale: float = 1.0  # gradient scale of the KL term (1 / num_microbatches, ...)
    record_log_q: bool = False  # posterior: keep each sample's log Q(Z|S) (importance-weighted validation)

    def __post_init__(self):
        if self.mode not in LATENT_MODES:
            raise ValueError(f"latent mode must be one of {LATENT_MODES}, got {self.mode!r}")
        if self.mode == "given" and self.codes is None:
            raise ValueError("latent mode 'given' needs codes")


class _AttachAuxLoss(torch.autograd.Function):
    """Returns ``activation`` unchanged; its backward also back-propagates ``aux_loss`` with
    gradient ``scale``. So a loss made on a middle pipeline stage reaches the backward under any
    pipeline schedule (megatron's MoE load-balancing loss uses the same device)."""

    @staticmethod
    def forward(ctx, activation, aux_loss, scale):
        ctx.save_for_backward(aux_loss)
        ctx.scale = scale
        return activation.view_as(activation)

    @staticmethod
    def backward(ctx, grad_output):
        (aux_loss,) = ctx.saved_tensors
        return grad_output, torch.full_like(aux_loss, ctx.scale), None


def _draw_posterior_codes(bit_logits: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """bit_logits [s, b, H] (the whole sequence) -> codes [s, b], on the logits' device."""
    seq_len, batch = bit_logits.shape[:2]
    seeds = seeds.to(bit_logits.device)
    codes = posterior_codes(bit_logits.transpose(0, 1), seeds, sequence_positions(batch, seq_len, bit_logits.device))
    return codes.t()


def _draw_prior_codes(seq_len: int, num_bits: int, seeds: torch.Tensor, device) -> torch.Tensor:
    seeds = seeds.to(device)
    return prior_codes(seeds, sequence_positions(seeds.shape[0], seq_len, device), num_bits).t()


class FreeLatent(MegatronModule):
    """Encoder + binary mapper + post-sampler. Returns R [s, b, D] (sharded like X under SP) and
    keeps the KL statistics of the last forward calls for the loss report."""

    def __init__(self, config: FreeTransformerConfig, encoder_spec):
        super().__init__(config=config)
        from megatron.core.transformer.spec_utils import build_module

        tp_size = parallel_state.get_tensor_model_parallel_world_size()  # divides num_codes (config.py)
        self.num_bits = config.latent_bits
        self.codes_per_rank = config.num_codes // tp_size
        self.code_offset = parallel_state.get_tensor_model_parallel_rank() * self.codes_per_rank
        dtype = config.params_dtype
        device = "cpu" if config.use_cpu_initialization else torch.cuda.current_device()

        self.zeta = torch.nn.Parameter(torch.zeros(config.hidden_size, dtype=dtype, device=device))
        self.encoder = build_module(encoder_spec, config=config, layer_number=1)
        self.readout_norm = torch.nn.RMSNorm(
            config.hidden_size, eps=config.layernorm_epsilon, device=device, dtype=dtype
        )
        self.readout = torch.nn.Linear(config.hidden_size, self.num_bits, bias=False, device=device, dtype=dtype)
        # C x D, rows sharded over TP ranks like a vocabulary-parallel embedding.
        self.post_sampler = torch.nn.Parameter(
            torch.zeros(self.codes_per_rank, config.hidden_size, dtype=dtype, device=device)
        )
        set_tensor_model_parallel_attributes(self.post_sampler, True, 0, 1)
        for param in (self.zeta, self.readout_norm.weight, self.readout.weight):
            # Replicated over TP but fed sequence-sharded inputs under SP: megatron all-reduces
            # the gradients of parameters marked like this (as it does for layer norms).
            param.sequence_parallel = config.sequence_parallel
        with torch.no_grad():
            self.zeta.normal_(0.0, config.init_method_std)
            self.readout.weight.normal_(0.0, config.init_method_std)
            self.post_sampler.normal_(0.0, config.init_method_std)

        self.control = LatentControl()
        self.last_codes = None
        self.sequence_log_q: list[torch.Tensor] = []  # one [b] per recorded forward call
        self.reset_kl_report()

    def reset_kl_report(self):
        """Sums over forward calls: [kl bits, hinged kl bits, fraction above kappa, calls]."""
        self.kl_report = torch.zeros(4, dtype=torch.float64)

    def bit_logits(self, hidden_states, rotary_pos_emb):
        """The encoder's bit logits o [s, b, H] for X (sequence-sharded under SP)."""
        queries = self.zeta.to(hidden_states.dtype).expand_as(hidden_states)
        encoded = self.encoder.split_input_forward(queries, kv_input=hidden_states, rotary_pos_emb=rotary_pos_emb)
        return self.readout(self.readout_norm(encoded))

    def forward(self, hidden_states, seeds: torch.Tensor, rotary_pos_emb=None):
        """Returns (R, kl_loss): R like ``hidden_states``; kl_loss a scalar or None."""
        sequence_parallel = self.config.sequence_parallel
        control = self.control
        kl_loss = None
        if control.mode == "posterior":
            logits = self.bit_logits(hidden_states, rotary_pos_emb).float()
            kl = free_bits_kl(kl_per_token(logits), self.config.free_bits_nats)
            self._record_kl(kl, sequence_parallel)
            kl_loss = kl.loss
            if sequence_parallel:
                # Each TP rank holds 1/tp of the tokens: its local mean counts 1/tp of the total.
                kl_loss = kl_loss / parallel_state.get_tensor_model_parallel_world_size()
            # Every TP rank needs every token's logits for its rows of the post-sampler; the
            # backward sums the ranks' partial [T, H] gradients (all-reduce or reduce-scatter).
            if sequence_parallel:
                logits = gather_from_sequence_parallel_region(logits, tensor_parallel_output_grad=True)
            else:
                logits = copy_to_tensor_model_parallel_region(logits)
            codes = _draw_posterior_codes(logits, seeds)
            if control.record_log_q:
                self.sequence_log_q.append(codes_log_prob(logits, codes).sum(0))  # [b]
        else:
            seq_len = hidden_states.shape[0] * (
                parallel_state.get_tensor_model_parallel_world_size() if sequence_parallel else 1
            )
            logits = None
            if control.mode == "prior":
                codes = _draw_prior_codes(seq_len, self.num_bits, seeds, hidden_states.device)
            else:
                codes = control.codes.t().to(hidden_states.device)
        self.last_codes = codes.detach()  # [s, b]: read by generation (the prompt's posterior Z)
        partial = binary_mapper_post_sampler(
            logits, codes, self.post_sampler, self.code_offset, self.config.mapper_chunk_size
        )
        if sequence_parallel:
            residual = reduce_scatter_to_sequence_parallel_region(partial)
        else:
            residual = reduce_from_tensor_model_parallel_region(partial)
        return residual.to(hidden_states.dtype), kl_loss

    def _record_kl(self, kl, sequence_parallel):
        values = torch.stack([kl.kl_bits, kl.hinged_kl_bits, kl.frac_above_kappa]).double()
        if sequence_parallel:
            # Each TP rank saw its own sequence shard: average the shards' statistics.
            torch.distributed.all_reduce(values, group=parallel_state.get_tensor_model_parallel_group())
            values = values / parallel_state.get_tensor_model_parallel_world_size()
        self.kl_report[:3] += values.cpu()
        self.kl_report[3] += 1

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        """Own keys, independent of the layer (and so of the pipeline layout) it sits in."""
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        state = self.encoder.sharded_state_dict(f"{prefix}encoder.", (), metadata)
        own = {
            "zeta": self.zeta,
            "readout_norm.weight": self.readout_norm.weight,
            "readout.weight": self.readout.weight,
            "post_sampler": self.post_sampler,
        }
        state.update(make_sharded_tensors_for_checkpoint(own, prefix, {"post_sampler": 0}, ()))
        return state


class LatentInjectionLayer(SplitInputTransformerLayer):
    """Decoder block L/2+1 with the latent inside: q from X, kv from X + R.

    Its own parameters are exactly a plain decoder layer's (a baseline checkpoint loads into
    them); the latent adds ``latent.*``. In the TransformerBlock, megatron's ``context`` argument,
    which the block threads through every layer call and every activation-recompute checkpoint,
    carries the per-sample latent seeds (so recomputation draws the same codes); the plain layers
    ignore it.
    """

    def __init__(self, config, submodules, layer_number=1, encoder_spec=None, **kwargs):
        super().__init__(config, submodules, layer_number=layer_number, **kwargs)
        self.latent = FreeLatent(config, encoder_spec)

    def forward(self, hidden_states, attention_mask=None, context=None, rotary_pos_emb=None, **kwargs):
        latent_seeds = context
        if latent_seeds is None:
            raise ValueError("the Free Transformer's forward needs latent_seeds")
        if kwargs.get("inference_context") is not None or kwargs.get("packed_seq_params") is not None:
            raise NotImplementedError("the split-input layer runs without megatron inference")
        residual_r, kl_loss = self.latent(hidden_states, latent_seeds, rotary_pos_emb)
        kv_input = hidden_states + residual_r
        if kl_loss is not None and torch.is_grad_enabled():
            kv_input = _AttachAuxLoss.apply(kv_input, kl_loss, self.latent.control.kl_loss_scale)
        output = self.split_input_forward(hidden_states, kv_input, attention_mask, rotary_pos_emb)
        return output, latent_seeds
