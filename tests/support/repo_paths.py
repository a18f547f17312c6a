"""Where the tests find the repository and the shared data, whichever folder of tests/ a test module sits in."""

import os
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent  # tests/support: the shared test helpers (on pytest's pythonpath)
ROOT = SUPPORT.parents[1]  # the repository
SHARED_DATA = Path(os.environ.get("SYNTHRAD_SHARED_DATA", ROOT.parent / "shared" / "data"))
NIH64 = SHARED_DATA / "nih-chestxray14-64"
