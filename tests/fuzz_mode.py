"""Whether the long fuzzing suites explore new inputs on every run.

By default (CI) they replay Hypothesis's derandomized sequence, so a submission's CI
result does not depend on luck; ``COCKTAIL_FUZZ_EXPLORE=1 make test-long`` draws fresh
inputs each run, to find what the fixed sequence does not reach.
"""

from __future__ import annotations

import os

EXPLORE = os.environ.get("COCKTAIL_FUZZ_EXPLORE", "0") == "1"
