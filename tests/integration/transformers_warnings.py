"""A fixture for the HF tests: a deprecation that transformers reports (through its logger, or as a
Python warning) fails the test, so that a renamed argument (5.24's ``cache`` for ``past_key_values``)
is caught by CI at once and not by users.

Use it with ``pytestmark = pytest.mark.usefixtures("no_transformers_deprecations")`` after importing it.
"""

from __future__ import annotations

import logging
import re
import warnings

import pytest

_DEPRECATION = re.compile(r"deprecat", re.IGNORECASE)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def no_transformers_deprecations():
    # transformers logs many warnings only once per process (an lru_cache on Logger.warning_once):
    # clear it, or a warning an earlier test triggered would pass unseen here.
    logging.Logger.warning_once.cache_clear()
    handler = _Records()
    logger = logging.getLogger("transformers")  # its handler sees the records whether or not they propagate
    logger.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    logger.removeHandler(handler)
    logged = [m for m in handler.messages if _DEPRECATION.search(m)]
    warned = [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
        for w in caught
        if "transformers" in w.filename and _DEPRECATION.search(str(w.message))
    ]
    assert not logged + warned, "transformers reports a deprecated use:\n" + "\n".join(logged + warned)
