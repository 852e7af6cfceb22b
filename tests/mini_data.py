"""Where the tests find the BSDS500 mini set, and the one ``needs_mini`` mark.

``$NDD_BSDS500_MINI`` when set, else ``shared/data/bsds500-mini`` beside the checkout
(``<repo>/../shared``, as in CI). No machine path: elsewhere the tests that need it are skipped.
"""

import os
from pathlib import Path

import pytest

#: environment variable naming the mini set's folder (the one holding ``BSDS500/``)
ENV_VAR = "NDD_BSDS500_MINI"

MINI = (Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR)
        else Path(__file__).resolve().parents[2] / "shared" / "data" / "bsds500-mini")

#: skip unless the mini set is there with what the tests read (its images, ground truth and gPb ucm2)
needs_mini = pytest.mark.skipif(
    not ((MINI / "BSDS500" / "data").is_dir() and (MINI / "BSDS500" / "ucm2" / "test").is_dir()),
    reason=f"bsds500-mini not found at {MINI} (set {ENV_VAR})",
)
