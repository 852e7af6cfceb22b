"""Where the tests find ``shared/data/bsds500-mini`` (a sibling of the checkout, as in CI)."""

from pathlib import Path

import pytest

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "bsds500-mini"
if not MINI.is_dir():  # a checkout somewhere else on the development machine
    MINI = Path("/work/shared/data/bsds500-mini")

needs_mini = pytest.mark.skipif(not MINI.is_dir(), reason="bsds500-mini not available")
