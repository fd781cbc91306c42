"""Evaluation: the Free Transformer for lm-evaluation-harness (lm_eval_model), on a HuggingFace export."""
