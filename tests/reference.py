"""Where the reference data written by Trunk8 0.7.0 itself lives for the tests.

The reference folder (`shared/`) lies beside the checkout, in development and in CI alike;
`/work/shared` is where this workplace lays it when the checkout is elsewhere.
"""

from __future__ import annotations

from pathlib import Path

_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "trunk8-0.7.0",
    Path("/work/shared/fixtures/trunk8-0.7.0"),
)

# Trunk8 0.7.0's own data directory and backups (passwords in its README).
TRUNK8_FIXTURE = next((path for path in _CANDIDATES if path.is_dir()), _CANDIDATES[0])
