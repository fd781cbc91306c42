"""lm-evaluation-harness's command line with the ``free_transformer`` model registered:

    megatron-free-lm-eval --model free_transformer --model_args pretrained=EXPORT --tasks TASKS ...
    python -m megatron_free.evaluation ...            (the same)

Every lm_eval flag works as in ``lm_eval`` (which finds no model outside its own package by name).
"""

import sys


def main() -> int:
    import megatron_free.evaluation.lm_eval_model  # noqa: F401 - registers "free_transformer"
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
