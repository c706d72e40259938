"""The HTTP front end: LimeDB-compatible routes, native routes, probes and metrics."""

from limedb.api.app import attach_service, create_app

__all__ = ["attach_service", "create_app"]
