"""Join Megatron indexed datasets (.bin/.idx) into one, streaming: e.g. the shards of a sharded preprocessing run.

    python tools/merge_datasets.py --input 'data/web-*-of-00064_text_document' --output-prefix data/web_text_document

Same as the console script megatron-free-merge-datasets; the code is megatron_free/data/merge_datasets.py.
"""

import sys
from pathlib import Path

try:
    import megatron_free  # noqa: F401
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_free.data.merge_datasets import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
