"""Fixtures of the formula tests (test_prices.py, test_margin.py)."""

import pytest
from support import TESTBED

import jaxsim


@pytest.fixture(scope="module")
def rules():
    """BTCUSDT rules as loaded from configs (calm scenario)."""
    return jaxsim.load_scenario(TESTBED).rules
