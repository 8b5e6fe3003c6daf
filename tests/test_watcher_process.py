"""`trunk8 up` runs the config-watcher in a child process: parsing never holds the server.

The serving process treats the child as one of its services: `/-/ready` waits for it,
`/-/rejected` and its metrics are answered through it, and a child that dies is started
again (hand edits are served again afterwards). Real processes, real files, real sockets.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import test_cli
from test_cli import Launch, _cmdline, append_link, free_port, get, location, up, wait_for

from trunk8.watcherproc import WATCHER_NICENESS

# The CLI tests' fixtures: a launcher that stops what it started, and a data directory.
launch = test_cli.launch
sample_dir = test_cli.sample_dir


def watcher_children(pid: int) -> list[int]:
    """Pids of the `run --target config-watcher` children of `pid`."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in map(int, children.read_text().split()):
            if "config-watcher" in _cmdline(child):
                found.append(child)
    return found


def niceness_above(pid: int, parent: int) -> set[int]:
    """How much nicer than `parent` each thread of `pid` runs."""
    ours = os.getpriority(os.PRIO_PROCESS, parent)
    threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    return {os.getpriority(os.PRIO_PROCESS, tid) - ours for tid in threads}


def test_up_runs_the_config_watcher_as_a_supervised_child(launch: Launch, sample_dir: Path) -> None:
    port = free_port()
    proc = up(launch, sample_dir, port)
    (child,) = watcher_children(proc.pid)
    # Loaded at our priority, lowered once ready (every thread, not just the main one).
    assert niceness_above(child, proc.pid) == {WATCHER_NICENESS}
    assert "TRUNK8_NATS_URL" not in " ".join(_cmdline(child))  # the token is not on a cmdline
    status, _, body = get(port, "/-/ready")
    assert status == 200 and json.loads(body)["services"]["config-watcher"] is True
    assert get(port, "/-/rejected")[0] == 200
    metrics = get(port, "/-/metrics")[2].decode()
    assert "trunk8_config_watcher_links " in metrics

    os.kill(child, signal.SIGKILL)
    wait_for(lambda: watcher_children(proc.pid) not in ([], [child]), 20, "restarted", proc)
    (restarted,) = watcher_children(proc.pid)
    assert niceness_above(restarted, proc.pid) == {WATCHER_NICENESS}  # nice from its start
    append_link(sample_dir, "bob", "after", "https://example.com/after")
    wait_for(
        lambda: location(port, "/after") == "https://example.com/after", 20, "edit served", proc
    )
    assert "Traceback" not in proc.stderr


def test_watcher_in_process_keeps_one_process(launch: Launch, sample_dir: Path) -> None:
    port = free_port()
    proc = up(launch, sample_dir, port, "--watcher-in-process")
    assert watcher_children(proc.pid) == []
    assert location(port, "/docs") == "https://example.com/docs"
