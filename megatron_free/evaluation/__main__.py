"""lm-evaluation-harness's command line with the ``free_transformer`` model registered:

    megatron-free-lm-eval --model free_transformer --model_args pretrained=EXPORT --tasks TASKS ...
    python -m megatron_free.evaluation ...            (the same)

Every lm_eval flag works as in ``lm_eval`` (which finds no model outside its own package by name).
"""

import sys


def main() -> int:
    from lm_eval.__main__ import cli_evaluate
    from lm_eval.api.registry import model_registry

    # Registered lazily, as lm-eval registers its own models: --help imports neither torch nor the model.
    model_registry.register("free_transformer", target="megatron_free.evaluation.lm_eval_model:FreeTransformerLM")

    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
