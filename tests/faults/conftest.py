"""Fixtures of the fault tests: a network lab per test (support.netns_fixtures)."""

from support.netns_fixtures import netlab, netns_ready  # noqa: F401 - fixtures
