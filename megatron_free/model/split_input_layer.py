"""A transformer layer whose queries and keys/values come from two different inputs.

The Free Transformer needs this twice (spec, steps 3 and 5):
  * the encoder block: queries from the learned vector zeta repeated over the sequence (which is
    also its residual stream), keys/values from X_{L/2}, without a causal mask;
  * decoder block L/2+1: queries (and the residual) from X_{L/2}, keys/values from X_{L/2} + R.

Both inputs go through the layer's input norm and QKV projection in ONE call, stacked along the
batch dimension: Q is taken from the first half, K and V from the second. That keeps the
parameters (and state-dict keys) of a plain megatron-core TransformerLayer, and with Transformer
Engine the fused LayerNormLinear runs once per step, as its FP8 amax bookkeeping assumes.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.transformer_layer import TransformerLayer


class SplitInputSelfAttention(SelfAttention):
    """SelfAttention over ``[query_source; kv_source]`` stacked along the batch dimension."""

    def get_query_key_value_tensors(self, hidden_states, key_value_states=None, output_gate=False, split_qkv=True):
        if output_gate or not split_qkv:
            raise NotImplementedError(
                "the Free Transformer's split-input attention supports neither gated attention "
                "nor fused single-QKV RoPE"
            )
        query, key, value = super().get_query_key_value_tensors(hidden_states, None)
        batch = query.shape[1] // 2
        return query[:, :batch], key[:, batch:], value[:, batch:]


class SplitInputTransformerLayer(TransformerLayer):
    """A pre-norm transformer layer: out = h + Attn(q=norm(h), kv=norm(kv_input)), then the MLP.

    ``split_input_forward`` names its inputs. ``forward`` is megatron's TransformerLayer call, for a layer
    that sits in a TransformerBlock: there the keys/values input arrives as megatron's ``context``
    argument, which the block threads through every layer call and activation-recompute checkpoint.
    """

    def split_input_forward(self, hidden_states, kv_input, attention_mask=None, rotary_pos_emb=None):
        """The layer's output for queries (and the residual) from ``hidden_states``, keys/values from
        ``kv_input`` (both [s, b, D])."""
        stacked = torch.cat([hidden_states, kv_input], dim=1)
        attention_output_with_bias = self.self_attention(
            self.input_layernorm(stacked),
            attention_mask=attention_mask,
            rotary_pos_emb=rotary_pos_emb,
        )
        with self.bias_dropout_add_exec_handler():
            hidden_states = self.self_attn_bda(self.training, self.config.bias_dropout_fusion)(
                attention_output_with_bias, hidden_states, self.hidden_dropout
            )
        return self._forward_mlp(hidden_states)

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        context=None,
        context_mask=None,
        rotary_pos_emb=None,
        inference_context=None,
        packed_seq_params=None,
        **kwargs,
    ):
        if context is None:
            raise ValueError(f"layer {self.layer_number} needs the keys/values input (context)")
        if inference_context is not None or packed_seq_params is not None:
            raise NotImplementedError("the split-input layer runs without megatron inference")
        return self.split_input_forward(hidden_states, context, attention_mask, rotary_pos_emb), context
