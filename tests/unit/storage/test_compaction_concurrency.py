"""Background flushes and compactions never make a concurrent reader see a key vanish or regress.

A writer keeps overwriting 600 keys with increasing counters while readers get and scan; every
reader remembers the newest counter it saw per key and asserts it never sees an older one or a
missing key, while the engine flushes and compacts (small sizes, no rate limit) underneath.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

KEYS = [b"key%04d" % i for i in range(600)]


def _counter(value: bytes) -> int:
    return int(value.split(b":")[0])


# The default block cache holds everything (tables get cached whole); 64 KiB holds a table or two
# whole, so blocks and whole tables are evicted and cached again all the time.
@pytest.mark.parametrize("cache_bytes", [256 * 1024 * 1024, 64 * 1024], ids=["cached", "churn"])
def test_readers_never_see_a_key_vanish_or_go_back_in_time_during_compaction(
    open_engine, cache_bytes
):
    # durability "none": this test is about visibility during compaction, not about fsync
    e = open_engine(
        options=dict(
            durability="none",
            memtable_bytes=16 * 1024,
            l0_compaction_trigger=2,
            block_cache_bytes=cache_bytes,
        )
    )
    for k in KEYS:
        e.put(k, b"0:" + b"x" * 40)
    stop = threading.Event()
    errors: list[str] = []
    final = dict.fromkeys(KEYS, 0)

    def writer():
        r = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not errors:
            r += 1
            for k in KEYS:
                e.put(k, b"%d:" % r + b"x" * 40)
                final[k] = r
        stop.set()

    def getter(seed):
        rng = random.Random(seed)
        seen: dict[bytes, int] = {}
        while not stop.is_set():
            k = rng.choice(KEYS)
            v = e.get(k)
            if v is None:
                errors.append(f"{k!r} vanished")
                return
            c = _counter(v)
            if c < seen.get(k, 0):
                errors.append(f"{k!r} went back from {seen[k]} to {c}")
                return
            seen[k] = c

    def scanner():
        seen: dict[bytes, int] = {}
        while not stop.is_set():
            items = e.scan(None, None)
            if [k for k, _ in items] != KEYS:
                errors.append(f"scan returned {len(items)} keys, not {len(KEYS)}")
                return
            for k, v in items:
                c = _counter(v)
                if c < seen.get(k, 0):
                    errors.append(f"scan: {k!r} went back from {seen[k]} to {c}")
                    return
                seen[k] = c

    threads = [threading.Thread(target=writer), threading.Thread(target=scanner)]
    threads += [threading.Thread(target=getter, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    st = e.stats()
    assert st["flushes"] >= 3 and st["compactions"] >= 1, st
    assert {k: _counter(e.get(k)) for k in KEYS} == final
