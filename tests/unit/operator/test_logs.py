"""The operator at rest logs nothing per poll or per tick; what changes, and what fails, is logged."""

from __future__ import annotations

import logging

import pytest
from limedb_operator import logs, reconcile
from limedb_operator.scaling import Step


@pytest.fixture
def restore_logging():
    names = ("httpx", "httpcore", "kopf.objects")
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names}
    yield
    for n, (level, filters) in saved.items():
        logging.getLogger(n).setLevel(level)
        logging.getLogger(n).filters[:] = filters


def test_status_polls_and_timer_ticks_are_not_logged_at_rest(restore_logging, caplog):
    logs.quiet_at_rest(verbose=False)
    with caplog.at_level(logging.INFO):
        logging.getLogger("httpx").info('HTTP Request: GET http://10.0.0.5:8484/admin/status "200"')
        kopf_log = logging.getLogger("kopf.objects")
        kopf_log.info("Timer 'converge' succeeded.")
        kopf_log.error("Timer 'converge' failed with an exception and will try again")
        logging.getLogger("httpx").warning("connection refused")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "Timer 'converge' failed with an exception and will try again",
        "connection refused",
    ]


def test_verbose_keeps_every_line(restore_logging, caplog):
    logs.quiet_at_rest(verbose=True)
    with caplog.at_level(logging.INFO):
        logging.getLogger("httpx").info("HTTP Request: GET /admin/status")
        logging.getLogger("kopf.objects").info("Timer 'converge' succeeded.")
    assert len(caplog.records) == 2


def test_a_repeated_step_is_debug_and_a_new_step_is_info(caplog):
    done = Step(kind="done", reason="Converged", message="3 nodes")
    join = Step(kind="join", reason="ScaleUp", message="lime-3 joins")
    with caplog.at_level(logging.DEBUG, logger=reconcile.log.name):
        for step in (done, done, done, join, join, done):
            reconcile._log_step("ns-logs", "lime", step)
    levels = [(r.levelname, r.getMessage().split(":")[1].strip()) for r in caplog.records]
    assert levels == [
        ("INFO", "done Converged"),
        ("DEBUG", "done Converged"),
        ("DEBUG", "done Converged"),
        ("INFO", "join ScaleUp"),
        ("DEBUG", "join ScaleUp"),
        ("INFO", "done Converged"),
    ]
