"""Storage keys sort by ring token, and the token is LimeDB's XXH64 of the raw key."""

from limedb.cluster.keys import storage_key, token_of, token_prefix, user_key


def test_token_matches_limedb_reference_values():
    assert token_of(b"user:1") == 15692727345848811763
    assert token_of(b"key-42") == 10072885078639704606


def test_storage_keys_sort_by_token_and_round_trip():
    keys = [f"k{i}".encode() for i in range(200)]
    skeys = sorted(storage_key(k) for k in keys)
    assert [token_of(user_key(s)) for s in skeys] == sorted(token_of(k) for k in keys)
    assert {user_key(s) for s in skeys} == set(keys)
    assert token_prefix(token_of(b"key-42")) <= storage_key(b"key-42")
