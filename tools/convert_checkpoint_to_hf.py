#!/usr/bin/env python3
"""Thin CLI: see megatron_free/convert/cli.py (console script megatron-free-convert-hf)."""

import sys

from megatron_free.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
