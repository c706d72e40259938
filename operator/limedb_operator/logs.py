"""The operator's log at rest: a line when something changes, not one per poll or tick."""

from __future__ import annotations

import logging

# Each tick polls /admin/status of up to 3 nodes through httpx, which logs every request at INFO,
# and kopf logs every successful timer run at INFO: 5 lines every 2 s with nothing happening
# (and aiohttp one per liveness probe).
_CHATTY = ("httpx", "httpcore", "aiohttp.access")


class _NoTimerSuccess(logging.Filter):
    """Drops kopf's "Timer 'converge' succeeded." (a failure is still logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Timer ") and message.endswith(" succeeded."))


def quiet_at_rest(verbose: bool) -> None:
    """Without --verbose: no per-request or per-tick INFO lines (warnings and errors stay)."""
    if verbose:
        return
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").addFilter(_NoTimerSuccess())
