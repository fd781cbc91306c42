"""Inference on megatron_free checkpoints: loading one for inference under any layout (checkpoint),
sampling from it (generate, with the megatron-free-generate command line), and the toy study (toy_study:
groups of samples with a shared or independent Z, and the measures of the paper's Figure 4)."""
