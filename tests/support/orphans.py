"""Node processes that die with the pytest that started them.

A pytest killed (Ctrl-C twice, a CI timeout, kill -9) runs no fixture teardown, and the node
processes it started would run on, using CPU and ports, until someone finds them. A child made
with `die_with_parent()` as its preexec_fn asks Linux (prctl PR_SET_PDEATHSIG) for SIGKILL when
its parent goes. Linux ties that signal to the *thread* that forked the child, so it is armed
only for children started from the main thread (where pytest runs tests); a node started from a
worker thread, which may end before the test does, is left as it was.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent(then: Callable[[], None] | None = None) -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess.Popen: SIGKILL to the child when this process ends, then
    `then` (another preexec step) if given."""
    if threading.current_thread() is not threading.main_thread():
        return then
    parent = os.getpid()

    def setup() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)
        if then is not None:
            then()

    return setup
