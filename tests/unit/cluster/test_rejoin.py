"""A node on an empty data dir under an identity the ring lists, and heard before, is replaced;
a late founder of a new cluster, a node with data, or an opted-out one starts as before."""

import asyncio
import time

from limedb.cluster.gossip import start_generation
from limedb.cluster.heard import HeardStore
from limedb.cluster.membership import Membership
from limedb.cluster.rejoin import (
    SeedAnswer,
    StartMode,
    decide,
    decode_question,
    encode_question,
    heard_before,
    needs_proposal,
    no_longer_a_member,
    replaced,
)
from limedb.cluster.replace_pending import PendingReplace
from limedb.cluster.ring.placement import Ring
from limedb.cluster.ring.record import RingRecord
from limedb.cluster.transitions import Change, propose

A, B, C = "http://a:1", "http://b:1", "http://c:1"
RING = Ring({A: A, B: B, C: C}, vnodes=8)
RECORD = RingRecord(RING, 3)


def start(node=C, *, record=RECORD, heard=(True,), local_record=False, data=False, auto=True):
    answers = [SeedAnswer(record, h) for h in heard]
    return decide(
        node,
        has_local_record=local_record,
        has_local_data=data,
        answers=answers,
        auto_replace=auto,
    )


def test_a_listed_member_heard_before_that_lost_its_data_is_replaced():
    assert start() is StartMode.REPLACE
    assert start(heard=(False, True)) is StartMode.REPLACE


def test_a_late_founder_nobody_heard_before_starts_fresh():
    assert start(heard=(False, False)) is StartMode.FRESH


def test_a_node_the_ring_does_not_list_or_without_answers_starts_fresh():
    assert start("http://d:1") is StartMode.FRESH
    assert start(heard=()) is StartMode.FRESH
    assert start(record=None) is StartMode.FRESH


def test_local_data_or_ring_record_resumes_and_the_opt_out_starts_fresh():
    assert start(local_record=True) is StartMode.RESUME
    assert start(data=True) is StartMode.RESUME
    assert start(auto=False) is StartMode.FRESH


def test_with_replication_factor_1_there_is_nothing_to_replace_from():
    assert start(record=RingRecord(RING, 1)) is StartMode.FRESH


def test_the_newest_seed_record_decides():
    later = RingRecord(RING.without_member(C), 2)
    answers = [SeedAnswer(RECORD, True), SeedAnswer(later, True)]
    mode = decide(C, has_local_record=False, has_local_data=False, answers=answers)
    assert mode is StartMode.FRESH  # it left the ring since: nothing to replace


def test_heard_before_means_an_earlier_generation():
    assert heard_before(100, 200)
    assert not heard_before(200, 200)  # a seed that heard only this run
    assert not heard_before(None, 200)


def test_answers_and_questions_round_trip():
    answer = SeedAnswer.from_wire(SeedAnswer(RECORD, True).to_wire())
    assert answer.record == RECORD and answer.heard_before
    assert SeedAnswer.from_wire(SeedAnswer(None, False).to_wire()) == SeedAnswer(None, False)
    assert decode_question(encode_question(C, 7)) == (C, 7)


def test_replaced_once_its_own_replace_has_committed():
    t = propose(RING, 3, Change.replace(C, C, C), now_ms=1)
    assert needs_proposal(RECORD)
    running = RECORD.with_transition(t)
    assert not needs_proposal(running)
    assert not replaced(running, C, earlier=set())
    streaming = t.begin_streaming(2)
    assert not replaced(RECORD.with_transition(streaming), C, earlier=set())
    for target, indexes in streaming.streams().items():
        streaming = streaming.record_progress(
            target, index=len(indexes), cursor=None, keys=0, nbytes=0, now_ms=3
        )
    committed = RECORD.with_transition(streaming.commit(4))
    assert replaced(committed, C, earlier=set())
    # The same transition seen before this run (an earlier replace of this node) is not it.
    assert not replaced(committed, C, earlier={t.id})
    rolled_back = RECORD.with_transition(t.roll_back("a source died", 5))
    assert not replaced(rolled_back, C, earlier=set())
    assert needs_proposal(rolled_back)


def test_a_seed_remembers_the_generation_it_first_heard_a_node_at():
    seed = Membership(A, A, RING, generation=50)
    assert seed.first_generation(C) is None

    def heartbeat(generation: int, version: int) -> None:
        state = {"generation": generation, "version": version, "advertise_url": C}
        seed.gossip.apply({C: state})

    heartbeat(100, 1)
    heartbeat(100, 2)
    heartbeat(200, 1)  # C restarted: its new run does not hide the earlier one
    assert seed.first_generation(C) == 100
    assert heard_before(seed.first_generation(C), 200)


def test_a_node_back_within_the_second_it_first_started_in_was_heard_before():
    # CI, stop 26: c started, was heard, was killed and back on an empty disk within one
    # second; with generations in seconds both runs had the same one and the seeds answered
    # "not heard before", so the member was never replaced.
    first_run = start_generation(now_ns=1_700_000_000_100_000_000)
    second_run = start_generation(now_ns=1_700_000_000_900_000_000)  # 0.8 s later
    seed = Membership(A, A, RING, generation=50)
    seed.gossip.apply({C: {"generation": first_run, "version": 3, "advertise_url": C}})
    assert heard_before(seed.first_generation(C), second_run)
    # And a process started now outranks one started a second ago.
    assert start_generation() > start_generation(now_ns=time.time_ns() - 1_000_000_000)


def heard_by(store: HeardStore, *states: tuple[int, int]) -> Membership:
    """A seed whose earlier runs' hearing comes from `store`, hearing C's `states` now."""
    seed = Membership(A, A, RING, generation=50, **store.membership_hooks())
    for generation, version in states:
        seed.gossip.apply({C: {"generation": generation, "version": version, "advertise_url": C}})
    return seed


def test_a_seed_that_restarted_still_knows_it_heard_a_member_before(tmp_path):
    store = HeardStore(tmp_path)
    # Only once written does a restart keep it (the write is off the event loop).
    asyncio.run(_heard_and_saved(store, (100, 1), (100, 2)))
    again = HeardStore(tmp_path)
    seed = heard_by(again)  # a new run of the seed that has not heard C
    assert seed.first_generation(C) == 100
    assert heard_before(seed.first_generation(C), 200)
    # Hearing C's new run keeps the older generation, and rewrites nothing.
    seed.gossip.apply({C: {"generation": 200, "version": 1, "advertise_url": C}})
    assert seed.first_generation(C) == 100


async def _heard_and_saved(store: HeardStore, *states: tuple[int, int]) -> Membership:
    seed = heard_by(store, *states)
    await store.flush()
    return seed


def test_a_seed_that_heard_only_the_asking_run_has_not_heard_it_before(tmp_path):
    # A late founder: the seed's gossip reached it (its RPC port is up) before it asked.
    store = HeardStore(tmp_path)
    asyncio.run(_heard_and_saved(store, (200, 0)))
    seed = heard_by(HeardStore(tmp_path))
    assert seed.first_generation(C) == 200
    assert not heard_before(seed.first_generation(C), 200)


def test_an_unreadable_heard_file_is_forgotten_and_replaced(tmp_path):
    (tmp_path / "heard.json").write_bytes(b'{"first_generation": {"x": "soon"}}')
    store = HeardStore(tmp_path)
    assert store.load() == {}
    asyncio.run(_heard_and_saved(store, (100, 1)))
    assert HeardStore(tmp_path).load() == {C: 100}


def test_a_failed_write_never_reaches_gossip_and_is_retried_with_the_next_node(tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_bytes(b"")  # the data dir is a file: every save fails
    store = HeardStore(blocked)
    seed = asyncio.run(_heard_and_saved(store, (100, 1)))
    assert seed.first_generation(C) == 100  # gossip went on
    blocked.unlink()
    blocked.mkdir()

    async def hear_b() -> None:
        seed.gossip.apply({B: {"generation": 7, "version": 1, "advertise_url": B}})
        await store.flush()

    asyncio.run(hear_b())
    assert HeardStore(blocked).load() == {B: 7, C: 100}


def test_a_pending_self_replace_goes_on_whatever_the_data_dir_holds_by_now():
    # The record it adopted and the writes it took while waiting look like a used data dir.
    for local_record, data in ((True, True), (True, False), (False, False)):
        mode = decide(
            C,
            has_local_record=local_record,
            has_local_data=data,
            answers=(),
            replace_pending=True,
        )
        assert mode is StartMode.REPLACE
    assert start(local_record=True, data=True) is StartMode.RESUME  # nothing pending


def test_the_pending_self_replace_is_kept_until_cleared(tmp_path):
    pending = PendingReplace(tmp_path)
    assert pending.load() is None
    pending.save(frozenset({"t-1", "t-0"}))
    assert PendingReplace(tmp_path).load() == {"t-0", "t-1"}
    pending.clear()
    pending.clear()  # twice is fine
    assert PendingReplace(tmp_path).load() is None


def test_a_self_replace_of_a_node_removed_meanwhile_is_not_waited_for():
    assert not no_longer_a_member(RECORD, C)
    assert not no_longer_a_member(None, C)
    removed = RingRecord(RING.without_member(C), 2)
    assert no_longer_a_member(removed, C)
    # While a transition runs the removal may still roll back: wait.
    t = propose(removed.ring, 3, Change.join(C, C), now_ms=1)
    assert not no_longer_a_member(removed.with_transition(t), C)
