"""Child processes of `trunk8 up`: made to die with their parent, stopped with a grace time.

The embedded nats-server and the config-watcher child are both started in a session of
their own (Ctrl-C reaches only us, and we stop them in order) with `die_with_parent_fn()`
as their `preexec_fn`, and stopped by `terminate`: SIGTERM, then SIGKILL if the grace time
runs out.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


@functools.cache
def die_with_parent_fn() -> Callable[[], None] | None:
    """The child setup that makes a child receive SIGTERM when its parent dies.

    `prctl` is looked up here, in the parent, once: loading a library between fork and exec
    (in `preexec_fn`) can deadlock when another thread held the loader's or malloc's lock at
    the fork. The returned function only calls the resolved C function. None off Linux.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    option, signum = ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGTERM)

    def die_with_parent() -> None:
        prctl(option, signum)

    return die_with_parent


async def terminate(process: asyncio.subprocess.Process | None, grace: float) -> None:
    """SIGTERM a running child and wait; SIGKILL it if it has not exited after `grace` s."""
    if process is None or process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        process.kill()
        await process.wait()
