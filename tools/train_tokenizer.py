"""Train a sentencepiece tokenizer (BPE, byte fallback, split digits), reproducibly from --seed.

    python tools/train_tokenizer.py --input data/tinyshakespeare.txt --input-format text-files \
        --model-prefix /tmp/shakespeare --vocab-size 2048

Same as the console script megatron-free-train-tokenizer; the code is megatron_free/data/train_tokenizer.py.
"""

import sys
from pathlib import Path

try:
    import megatron_free  # noqa: F401
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_free.data.train_tokenizer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
