"""Head-parse microbenchmark: the front's cost per request, by head size, without sockets.

Feeds one whole request head per call to `FastPathProtocol.data_received` (a transport
that drops what it is given), as a socket read would, and prints nanoseconds per
request of CPU time (the minimum over ``--rounds`` rounds, so other processes on a shared
machine matter less than in `bench/redirect.py`) for wrk's minimal head and for the
browser heads of ``redirect.py --browser-heads``, side by side: the front as built (the
compiled head scan, and the answers it prepares after a code's first request), the
compiled scan without prepared answers, and the careful Python path alone (the front
without `_headscan`).

Usage: ``.venv/bin/python bench/headparse.py [--requests N] [--rounds N]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from redirect import browser_heads

from trunk8_redirector import fastpath
from trunk8_redirector.stats import RedirectorStats
from trunk8_redirector.table import LinkTable
from trunk8_shared.records import LinkRecord

CODE = "c009999"
HOST = "Host: 127.0.0.1:8080\r\n"


class DropTransport:
    """Just enough of an asyncio transport for the front's hot path."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def heads() -> dict[str, list[bytes]]:
    """wrk's minimal head and the browser heads, for GET /CODE."""
    line = f"GET /{CODE} HTTP/1.1\r\n{HOST}"
    browser = [
        (line + "".join(f"{name}: {value}\r\n" for name, value in head.items()) + "\r\n").encode()
        for head in browser_heads()
    ]
    return {"minimal": [(line + "\r\n").encode()], "browser": browser}


@contextmanager
def without_prepared_answers() -> Iterator[None]:
    """The front with the compiled scan, but no answer prepared: each one built in Python."""
    compiled = fastpath.PreparedAnswers
    fastpath.PreparedAnswers = fastpath.NothingPrepared  # type: ignore[misc]
    try:
        yield
    finally:
        fastpath.PreparedAnswers = compiled  # type: ignore[misc]


@contextmanager
def careful_path_only() -> Iterator[None]:
    """The front as it is where `_headscan` is not compiled."""
    compiled = fastpath.common_link_request
    fastpath.common_link_request = lambda data, pos, end: None
    try:
        with without_prepared_answers():
            yield
    finally:
        fastpath.common_link_request = compiled


def ns_per_request(samples: list[bytes], requests: int, rounds: int) -> float:
    """CPU ns per `data_received` of one whole head, the best of `rounds`."""
    table = LinkTable()
    record = LinkRecord(code=CODE, owner="a", type="redirect", url="https://example.com/p")
    table.apply(CODE, msgspec.json.encode(record))
    protocol = fastpath.FastPathServer(table, RedirectorStats()).protocol()
    protocol.connection_made(DropTransport())  # type: ignore[arg-type]
    receive = protocol.data_received
    batch = (samples * (requests // len(samples) + 1))[:requests]
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time_ns()
        for head in batch:
            receive(head)
        best = min(best, (time.process_time_ns() - started) / requests)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000, help="per round (100000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the best counts (7)")
    args = parser.parse_args(argv)
    print(
        f"{'head':<8} {'bytes':>9} {'as built':>11} {'no prepared':>12} {'careful path':>13} "
        f"{'careful/built':>14}"
    )
    for kind, samples in heads().items():
        sizes = sorted(len(head) for head in samples)
        size = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
        built = ns_per_request(samples, args.requests, args.rounds)
        with without_prepared_answers():
            unprepared = ns_per_request(samples, args.requests, args.rounds)
        with careful_path_only():
            careful = ns_per_request(samples, args.requests, args.rounds)
        print(
            f"{kind:<8} {size:>9} {built:>8.0f} ns {unprepared:>9.0f} ns {careful:>10.0f} ns "
            f"{careful / built:>13.2f}x"
        )
    print("(CPU time per request, best of the rounds; each head is one read)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
