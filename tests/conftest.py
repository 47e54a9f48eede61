"""Shared test settings."""

from pathlib import Path

# The engine tests' fixed market: static accounts, no background traders (loaded by path).
TESTBED = str(Path(__file__).resolve().parent / "configs" / "testbed.yaml")
