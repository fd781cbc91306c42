"""HuggingFace configuration of the Free Transformer (Fleuret 2025), copied into every exported folder.

Self-contained (imports only transformers), loaded with ``trust_remote_code=True``. Field names follow
LlamaConfig; the latent adds ``latent_bits`` (H: bits per token, C = 2^H codes), ``injection_layer``
(1-based index of the decoder block that receives Z, L/2+1 by default) and ``free_bits`` (kappa of the
training loss, in bits; informational here).
"""

try:  # transformers >= 5 renamed the base class (the old name stays as an alias for now)
    from transformers import PreTrainedConfig as _BaseConfig
except ImportError:  # transformers 4.x
    from transformers import PretrainedConfig as _BaseConfig


class FreeTransformerConfig(_BaseConfig):
    """Llama-style decoder (RMSNorm, SwiGLU, RoPE, GQA, no biases) plus the Free Transformer's latent."""

    model_type = "free_transformer"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the KV cache's names in 5.24+ and before

    def __init__(
        self,
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        head_dim=None,
        hidden_act="silu",
        max_position_embeddings=2048,
        initializer_range=0.02,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        use_cache=True,
        tie_word_embeddings=False,
        latent_bits=16,
        injection_layer=None,
        free_bits=0.5,
        default_latent_mode="posterior",
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        # Where a forward without latent_mode or codes takes Z: "posterior" (the prompt's Z from the
        # encoder) or "prior". Scoring a continuation in one forward (lm-eval loglikelihood tasks)
        # needs "prior": under "posterior" the non-causal encoder would see the continuation.
        if default_latent_mode not in ("posterior", "prior"):
            raise ValueError(f"default_latent_mode must be 'posterior' or 'prior', got {default_latent_mode!r}")
        self.default_latent_mode = default_latent_mode
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = float(rope_theta)
        self.use_cache = use_cache
        self.latent_bits = latent_bits
        self.injection_layer = injection_layer or num_hidden_layers // 2 + 1
        self.free_bits = free_bits
        if hidden_act != "silu":
            raise ValueError(f"hidden_act must be 'silu' (SwiGLU), got {hidden_act!r}")
        if num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if not 2 <= self.injection_layer <= num_hidden_layers:
            raise ValueError(
                f"injection_layer must be in [2, {num_hidden_layers}] for num_hidden_layers "
                f"{num_hidden_layers}, got {self.injection_layer}"
            )
        if not 1 <= latent_bits <= 24:
            raise ValueError(f"latent_bits must be in [1, 24], got {latent_bits}")
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def num_codes(self) -> int:
        return 2**self.latent_bits
