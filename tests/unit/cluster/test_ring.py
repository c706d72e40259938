"""The ring places keys exactly as LimeDB does and walks replicas clockwise over distinct nodes."""

import random

import pytest
import xxhash
from limedb.cluster.ring.placement import TOKEN_SPACE, Ring, TokenRange, key_token, vnode_tokens

URLS = ["http://node1:8484", "http://node2:8484", "http://node3:8484"]


def reference_owner(urls: list[str], vnodes: int, key: bytes) -> str:
    """LimeDB's rule written out the slow way: the smallest token >= the key's, else wrap."""
    placed = {
        xxhash.xxh64_intdigest(f"{u}:{i}".encode()): u for u in urls for i in range(max(vnodes, 1))
    }
    h = xxhash.xxh64_intdigest(key)
    at_or_after = [t for t in placed if t >= h]
    return placed[min(at_or_after) if at_or_after else min(placed)]


def reference_replicas(urls: list[str], vnodes: int, key: bytes, rf: int) -> list[str]:
    placed = sorted(
        (xxhash.xxh64_intdigest(f"{u}:{i}".encode()), u) for u in urls for i in range(vnodes)
    )
    h = xxhash.xxh64_intdigest(key)
    start = next((i for i, (t, _) in enumerate(placed) if t >= h), 0)
    out: list[str] = []
    for j in range(len(placed)):
        u = placed[(start + j) % len(placed)][1]
        if u not in out:
            out.append(u)
        if len(out) == rf:
            break
    return out


def test_vnode_and_key_tokens_match_limedb_reference_values():
    assert vnode_tokens("http://node1:8484", 256)[0] == 9756501404023617926
    assert vnode_tokens("http://node1:8484", 0) == [9756501404023617926]
    assert key_token(b"user:1") == 15692727345848811763
    assert key_token("key-42") == 10072885078639704606


@pytest.mark.parametrize("vnodes", [0, 1, 16, 256])
def test_owner_matches_limedb_placement_when_node_id_is_the_url(vnodes):
    ring = Ring(URLS, vnodes=vnodes)
    keys = [b"user:1", b"key-42", b""] + [f"k{i}".encode() for i in range(300)]
    for key in keys:
        expected = reference_owner(URLS, vnodes, key)
        assert ring.owner(key) == expected
        assert ring.owner_url(key) == expected
        assert ring.owner(key_token(key)) == expected


def test_a_key_exactly_on_a_vnode_token_belongs_to_that_vnode_and_past_the_last_wraps():
    ring = Ring(URLS, vnodes=4)
    for token, node_id in zip(ring.tokens, [r.node_id for r in ring.ranges()], strict=True):
        assert ring.owner(token) == node_id
    smallest_owner = ring.ranges()[0].node_id
    assert ring.owner(ring.tokens[-1] + 1) == smallest_owner
    assert ring.owner(TOKEN_SPACE - 1) == smallest_owner
    assert ring.owner(0) == smallest_owner


def test_string_keys_hash_as_their_utf8_bytes():
    ring = Ring(URLS)
    for key in ["user:1", "ключ", "a b?c#d%e"]:
        assert ring.owner(key) == ring.owner(key.encode())


def test_replicas_walk_clockwise_over_distinct_nodes_owner_first():
    urls = [f"http://10.0.0.{i}:8484" for i in range(1, 7)]
    ring = Ring(urls, vnodes=32)
    for i in range(300):
        key = f"key-{i}".encode()
        for rf in (1, 2, 3, 5):
            got = ring.replicas(key, rf)
            assert list(got) == reference_replicas(urls, 32, key, rf)
            assert got[0] == ring.owner(key)
            assert len(set(got)) == rf


def test_replication_factor_is_capped_at_the_cluster_size():
    ring = Ring(URLS[:2], vnodes=8)
    assert sorted(ring.replicas(b"x", 3)) == sorted(URLS[:2])
    assert ring.replicas(b"x", 1) == (ring.owner(b"x"),)
    with pytest.raises(ValueError):
        ring.replicas(b"x", 0)


def test_members_map_stable_ids_to_urls_that_placement_does_not_depend_on():
    a = Ring({"node-0": "http://127.0.0.1:8484", "node-1": "http://127.0.0.2:8484"}, vnodes=8)
    b = Ring({"node-0": "http://10.1.1.1:9000", "node-1": "http://10.1.1.2:9000"}, vnodes=8)
    for i in range(200):
        key = f"k{i}".encode()
        assert a.owner(key) == b.owner(key)
    assert a.replica_urls(b"k1", 2)[0] == a.url_of(a.owner(b"k1"))
    assert a.node_id_of_url("http://127.0.0.2:8484") == "node-1"
    assert a.node_id_of_url("http://nowhere") is None


@pytest.mark.parametrize("vnodes", [0, 3, 256])
def test_ranges_cover_the_token_space_exactly_once_and_agree_with_owner(vnodes):
    ring = Ring(URLS, vnodes=vnodes)
    ranges = ring.ranges()
    assert len(ranges) == len(URLS) * max(vnodes, 1)
    assert sum(r.size for r in ranges) == TOKEN_SPACE
    for prev, cur in zip(ranges, ranges[1:] + ranges[:1], strict=True):
        assert cur.start == (prev.end + 1) % TOKEN_SPACE
    rng = random.Random(7)
    for _ in range(500):
        token = rng.randrange(TOKEN_SPACE)
        containing = [r for r in ranges if token in r]
        assert len(containing) == 1
        assert containing[0].node_id == ring.owner(token)


def test_a_single_token_ring_owns_everything_in_one_wrapping_range():
    ring = Ring(["http://solo:8484"], vnodes=0)
    (only,) = ring.ranges()
    assert only.size == TOKEN_SPACE
    assert 0 in only and TOKEN_SPACE - 1 in only and only.end in only
    assert ring.token_share() == {"http://solo:8484": 1.0}


def test_token_share_sums_to_one_and_vnodes_even_it_out():
    share = Ring(URLS, vnodes=256).token_share()
    assert sum(share.values()) == pytest.approx(1.0)
    assert all(0.2 < s < 0.47 for s in share.values())


def test_replica_ranges_hold_rf_copies_of_every_token():
    urls = [f"n{i}" for i in range(5)]
    ring = Ring(urls, vnodes=16)
    total = sum(r.size for u in urls for r in ring.replica_ranges(u, 3))
    assert total == 3 * TOKEN_SPACE
    assert ring.ranges_of("n0") == [r for r in ring.ranges() if r.node_id == "n0"]


def test_membership_changes_make_a_new_ring_with_the_next_epoch():
    ring = Ring(URLS, vnodes=8, epoch=4)
    grown = ring.with_member("http://node4:8484", "http://node4:8484")
    assert grown.epoch == 5 and len(grown) == 4 and len(ring) == 3
    shrunk = grown.without_member("http://node1:8484")
    assert shrunk.epoch == 6 and "http://node1:8484" not in shrunk
    assert shrunk.newer_than(grown) and not grown.newer_than(shrunk)
    assert not ring.newer_than(ring)


def test_two_different_rings_of_one_epoch_are_ordered_the_same_way_everywhere():
    a = Ring(URLS[:2], vnodes=8, epoch=3)
    b = Ring(URLS[1:], vnodes=8, epoch=3)
    assert a.newer_than(b) != b.newer_than(a)
    # Nodes bootstrapped from partial static member lists settle on the largest list.
    everyone = Ring(URLS, vnodes=8, epoch=3)
    assert everyone.newer_than(a) and everyone.newer_than(b)
    assert not a.newer_than(everyone)


def test_record_round_trips_and_rejects_garbage():
    ring = Ring({"a": "http://a", "b": "http://b"}, vnodes=4, epoch=9)
    assert Ring.from_record(ring.to_record()) == ring
    assert Ring.from_record(ring.to_record()).owner(b"q") == ring.owner(b"q")
    for bad in [
        {},
        {"epoch": 1, "vnodes": 4},
        {"epoch": "x", "vnodes": 4, "members": {}},
        {"epoch": 1, "vnodes": 4, "members": ["a"]},
    ]:
        with pytest.raises(ValueError):
            Ring.from_record(bad)


def test_an_empty_ring_refuses_lookups_and_bad_tokens_are_rejected():
    with pytest.raises(LookupError):
        Ring([]).owner(b"k")
    with pytest.raises(ValueError):
        Ring(URLS).owner(-1)
    with pytest.raises(ValueError):
        Ring(URLS).owner(TOKEN_SPACE)


def test_token_range_containment_handles_wrap():
    wrap = TokenRange(start=TOKEN_SPACE - 10, end=5, node_id="x")
    assert wrap.size == 16
    assert TOKEN_SPACE - 1 in wrap and 0 in wrap and 5 in wrap and 6 not in wrap


def test_adding_a_node_moves_keys_only_to_the_new_node_and_about_a_fair_share():
    ring = Ring(URLS, vnodes=64)
    grown = ring.with_member("http://node4:8484", "http://node4:8484")
    keys = [f"user:{i}".encode() for i in range(4000)]
    moved = [k for k in keys if ring.owner(k) != grown.owner(k)]
    assert all(grown.owner(k) == "http://node4:8484" for k in moved)
    assert 0.15 < len(moved) / len(keys) < 0.35


def test_removing_a_node_keeps_every_surviving_replica_in_place():
    nodes = [f"http://10.0.0.{i}:8484" for i in range(1, 7)]
    gone = nodes[1]
    ring = Ring(nodes, vnodes=64)
    shrunk = ring.without_member(gone)
    touched = 0
    for i in range(2000):
        key = f"k{i}".encode()
        before, after = ring.replicas(key, 3), shrunk.replicas(key, 3)
        if gone not in before:
            assert after == before
            continue
        touched += 1
        survivors = [n for n in before if n != gone]
        # Survivors keep their copies in the same order; one new replica joins the set.
        assert [n for n in after if n in survivors] == survivors
        assert len(set(after) - set(before)) == 1
    assert touched > 0
