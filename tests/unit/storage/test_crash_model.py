"""The engine agrees with a dict model through writes, flushes, compactions, range purges, reopens
and crashes.

The real engine runs over `CrashableMemFS`; a crash keeps only fsynced bytes (plus a random torn
prefix of each unsynced tail) and forgets unsynced directory changes. In `sync` mode every
acknowledged write must survive exactly; in `periodic` mode the recovered state must be the
model after some prefix of the writes that includes every write made before the last sync, so
no write is lost while a newer one survives. Background threads are off so each run is
deterministic: the rules `flush`, `compact` and `tick` (the periodic syncer firing) stand in
for them.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from limedb.hlc import pack
from limedb.storage import CrashableMemFS, Engine, EngineOptions

KEYS = st.sampled_from([b"%02d" % i for i in range(24)])
VALUES = st.binary(min_size=0, max_size=300)
PURGED = object()  # a history entry: the key's versions were purged (not even a tombstone)

OPTIONS = dict(
    memtable_bytes=2048,
    l0_compaction_trigger=2,
    level_base_bytes=8 * 1024,
    target_file_bytes=4 * 1024,
    block_bytes=256,
    compaction_rate_bytes_per_s=0,
    background_threads=False,
)


def _replay(state: dict, key: bytes, value: object) -> None:
    if value is PURGED:
        state.pop(key, None)
    else:
        state[key] = value


class EngineModel(RuleBasedStateMachine):
    durability = "sync"
    grace_s = 3600.0  # tombstones outlive the test: the model can compare them exactly

    @initialize(seed=st.integers(0, 2**16))
    def open(self, seed):
        self.fs = CrashableMemFS(seed)
        self.opts = EngineOptions(
            durability=self.durability, tombstone_grace_s=self.grace_s, **OPTIONS
        )
        self.engine = Engine.open("/db", self.opts, fs=self.fs)
        self.model: dict[bytes, bytes | None] = {}
        self.history: list[tuple[bytes, bytes | None]] = []
        self.durable_upto = 0  # writes in history[:durable_upto] must survive a crash

    def teardown(self):
        if hasattr(self, "engine"):
            self.engine.close()

    def _record(self, key, value):
        self.model[key] = value
        self.history.append((key, value))
        if self.durability == "sync":
            self.durable_upto = len(self.history)

    @rule(key=KEYS, value=VALUES)
    def put(self, key, value):
        assert self.engine.put(key, value)
        self._record(key, value)

    @rule(key=KEYS)
    def delete(self, key):
        assert self.engine.delete(key)
        self._record(key, None)

    @rule(key=KEYS, value=VALUES)
    def put_with_stale_timestamp_is_ignored(self, key, value):
        # A version is stored: a value, or a tombstone not yet collected.
        if self.model.get(key) is not None or (key in self.model and self.grace_s > 0):
            assert not self.engine.put(key, value, ts=pack(1))

    @rule(key=KEYS, value=VALUES)
    def put_with_future_timestamp_wins(self, key, value):
        v = self.engine.get_version(key)
        ts = (v.ts if v else pack(10**6)) + 1
        assert self.engine.put(key, value, ts=ts)
        self._record(key, value)

    @rule(a=KEYS, b=KEYS)
    def purge_range(self, a, b):
        lo, hi = min(a, b), max(a, b)
        self.engine.purge_range(lo, hi)
        for key in sorted(k for k in self.model if lo <= k < hi):
            del self.model[key]
            self.history.append((key, PURGED))
        self.durable_upto = len(self.history)  # a purge makes every earlier write durable

    @rule()
    def flush(self):
        self.engine.flush()
        self.durable_upto = len(self.history)

    @rule()
    def compact(self):
        self.engine.compact()
        self.durable_upto = len(self.history)

    @rule()
    def compact_levels(self):
        # The background compactor's work (leveled, not always at the bottom level), in-line.
        self.engine._compact_pending()

    @rule()
    def tick(self):
        self.engine.sync()
        self.durable_upto = len(self.history)

    @rule()
    def close_and_reopen(self):
        self.engine.close()
        self.durable_upto = len(self.history)
        self.engine = Engine.open("/db", self.opts, fs=self.fs)

    @rule(tear=st.booleans())
    def crash_and_recover(self, tear):
        self.fs = self.fs.crash(tear=tear)
        self.engine.close()  # the old engine writes into the frozen pre-crash filesystem
        self.engine = Engine.open("/db", self.opts, fs=self.fs)
        recovered = {
            k: None if v.tombstone else v.value
            for k, v in self.engine.iter_range(None, None, include_tombstones=True)
        }
        if self.grace_s == 0:  # collected tombstones and absent keys look the same
            recovered = {k: v for k, v in recovered.items() if v is not None}
        # Find the prefix of the history the recovered state corresponds to.
        state: dict[bytes, bytes | None] = {}
        for key, value in self.history[: self.durable_upto]:
            _replay(state, key, value)
        matches = []
        for n in range(self.durable_upto, len(self.history) + 1):
            if n > self.durable_upto:
                key, value = self.history[n - 1]
                _replay(state, key, value)
            if self.grace_s == 0:
                if {k: v for k, v in state.items() if v is not None} == recovered:
                    matches.append(n)
            elif state == recovered:
                matches.append(n)
        assert matches, (
            f"recovered state is not the model after any prefix >= {self.durable_upto} "
            f"of {len(self.history)} writes: lost an acknowledged write or kept a newer one"
        )
        n = matches[-1]
        event(
            f"crash lost {len(self.history) - n} unsynced writes"
            if n < len(self.history)
            else "crash lost nothing"
        )
        tables = sum(level["files"] for level in self.engine.stats()["levels"])
        event(f"tables after recovery: {min(tables, 5)}{'+' if tables >= 5 else ''}")
        self.history = self.history[:n]
        self.model = {}
        for key, value in self.history:
            _replay(self.model, key, value)
        self.durable_upto = n

    @rule(key=KEYS)
    def get_matches_model(self, key):
        assert self.engine.get(key) == self.model.get(key)

    @precondition(lambda self: hasattr(self, "engine"))
    @invariant()
    def scan_matches_model(self):
        live = sorted((k, v) for k, v in self.model.items() if v is not None)
        assert self.engine.scan(None, None) == live

    @rule(a=KEYS, b=KEYS, limit=st.one_of(st.none(), st.integers(1, 5)))
    def range_scan_matches_model(self, a, b, limit):
        lo, hi = min(a, b), max(a, b)
        live = sorted((k, v) for k, v in self.model.items() if v is not None and lo <= k < hi)
        assert self.engine.scan(lo, hi, limit) == (live if limit is None else live[:limit])


class PeriodicEngineModel(EngineModel):
    durability = "periodic"


class CollectingEngineModel(EngineModel):
    """Zero grace: compactions drop tombstones as soon as they reach the bottom level."""

    grace_s = 0.0


SETTINGS = settings(
    max_examples=80,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestSyncModeNeverLosesAnAcknowledgedWrite = EngineModel.TestCase
TestSyncModeNeverLosesAnAcknowledgedWrite.settings = SETTINGS
TestPeriodicModeLosesOnlyASuffixOfTheLastWindow = PeriodicEngineModel.TestCase
TestPeriodicModeLosesOnlyASuffixOfTheLastWindow.settings = SETTINGS
TestDroppingTombstonesNeverResurrectsAValue = CollectingEngineModel.TestCase
TestDroppingTombstonesNeverResurrectsAValue.settings = SETTINGS
