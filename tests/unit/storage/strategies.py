"""Hypothesis strategies for the storage tests: internal records of every kind."""

from __future__ import annotations

from hypothesis import strategies as st
from limedb.storage.record import EXPIRES, TOMBSTONE

timestamps = st.integers(0, 2**64 - 1)


def records(max_value: int = 60) -> st.SearchStrategy:
    """`(ts, value, flags, expires_at_ms)`: a value, a tombstone, or a value with an expiry."""
    return st.one_of(
        st.tuples(timestamps, st.binary(max_size=max_value), st.just(0), st.just(0)),
        st.tuples(timestamps, st.just(b""), st.just(TOMBSTONE), st.just(0)),
        st.tuples(
            timestamps, st.binary(max_size=max_value), st.just(EXPIRES), st.integers(1, 2**64 - 1)
        ),
    )
