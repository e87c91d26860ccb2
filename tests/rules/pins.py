"""What the PIN tests (test_pin.py, test_pin_allocation.py) share: fixed bucket keys, the
strategy of any valid key, and the packaged prefix table."""

from __future__ import annotations

from hypothesis import strategies as st

from registry.rules.pin import PrefixTable

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
keys = st.binary(min_size=16, max_size=64)

TABLE = PrefixTable.load_default()
