"""Fixtures of the nemesis campaigns: a network lab per campaign (support.netns_fixtures)."""

from support.netns_fixtures import netlab, netns_ready  # noqa: F401 - fixtures
