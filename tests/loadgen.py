"""A bounded HTTP load for fault tests: paced keep-alive requests, every outcome counted.

`Load` runs `connections` client connections that together send about `rate` requests a
second, `budget` at most, each answer awaited `timeout` seconds at most, and checks each
answer against what the test expects of its path. A request whose answer is missing,
late, cut or wrong counts as failed, with why. A connection the server refuses is counted
as *refused* (the request was never accepted): behind nginx that is a failure too, against
a lone process that is stopping it is the expected end. Keep-alive connections are reused
until the server answers `Connection: close` or closes them, as a browser or nginx would.
`phase(name)` splits the counts, so one load can run across several faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from conftest import wait_until
from rawhttp import Response, read_response, req

Check = Callable[[Response], bool]


def redirect_to(location: str) -> Check:
    """A check: the answer is a 302 to `location`."""
    return lambda response: response.status == 302 and response.header("Location") == location


@dataclass
class PhaseCounts:
    """What happened to the requests sent during one phase of a load."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    refused: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def percentile(self, fraction: float) -> float:
        """A latency percentile in milliseconds (0 without answers)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def summary(self) -> str:
        """One line: counts and latency percentiles."""
        return (
            f"sent {self.sent}, ok {self.ok}, failed {self.failed}, refused {self.refused}, "
            f"p50 {self.percentile(0.5):.1f} ms, p99 {self.percentile(0.99):.1f} ms, "
            f"max {self.percentile(1.0):.1f} ms"
        )


class Load:
    """Paced requests over keep-alive connections to host:port, until stopped or spent."""

    def __init__(
        self,
        port: int,
        targets: Sequence[tuple[str, Check]],
        *,
        rate: float = 150.0,
        connections: int = 6,
        budget: int = 20_000,
        timeout: float = 5.0,
        stop_when_refused: bool = False,
        first_phase: str = "start",
    ) -> None:
        self.port = port
        self.targets = list(targets)
        self.interval = connections / rate  # per connection, so all together make `rate`
        self.connections = connections
        self.budget = budget
        self.timeout = timeout
        self.stop_when_refused = stop_when_refused
        self.phases: dict[str, PhaseCounts] = {first_phase: PhaseCounts()}
        self.current = self.phases[first_phase]
        self._sent = 0
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def total(self) -> PhaseCounts:
        """The counts of every phase added up."""
        total = PhaseCounts()
        for counts in self.phases.values():
            total.sent += counts.sent
            total.ok += counts.ok
            total.failed += counts.failed
            total.refused += counts.refused
            total.latencies += counts.latencies
            total.failures += counts.failures
        return total

    def phase(self, name: str) -> PhaseCounts:
        """Count the requests sent from now on under `name`; returns its counts."""
        self.current = self.phases.setdefault(name, PhaseCounts())
        return self.current

    def start(self) -> None:
        """Start the connections (in the running loop)."""
        self._workers = [
            asyncio.create_task(self._connection(n), name=f"load-{n}")
            for n in range(self.connections)
        ]

    async def stop(self) -> PhaseCounts:
        """Let the requests under way end (each bounded by its timeout); the total counts."""
        self._stopping = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._workers), self.timeout + 2)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        return self.total

    async def until_sent(self, more: int, timeout: float = 30.0) -> None:
        """Wait until `more` further requests have been sent (or the load has ended)."""
        goal = self._sent + more

        async def sent() -> bool:
            return self._sent >= goal or self._ended()

        await wait_until(sent, timeout=timeout)

    def _ended(self) -> bool:
        return self._stopping or all(worker.done() for worker in self._workers)

    async def _connection(self, number: int) -> None:
        loop = asyncio.get_running_loop()
        first = number % len(self.targets)  # each connection starts at another target
        targets = itertools.cycle(self.targets[first:] + self.targets[:first])
        due = loop.time() + self.interval * number / self.connections  # spread the starts
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        fresh = False
        try:
            while not self._stopping and self._sent < self.budget:
                await asyncio.sleep(max(0.0, due - loop.time()))
                due = max(due + self.interval, loop.time() - self.interval)
                if stream is None:
                    try:
                        stream = await asyncio.wait_for(
                            asyncio.open_connection("127.0.0.1", self.port), self.timeout
                        )
                    except (ConnectionRefusedError, TimeoutError) as err:
                        self._sent += 1  # an attempt spends the budget, but sends nothing
                        self.current.refused += 1
                        self.current.failures.append(f"connect: {err!r}")
                        if self.stop_when_refused:
                            return
                        continue
                    fresh = True
                path, check = next(targets)
                stream = await self._request(stream, path, check, fresh)
                fresh = False
        finally:
            if stream is not None:
                stream[1].close()

    async def _request(
        self,
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        path: str,
        check: Check,
        fresh: bool,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """One request (`fresh`: the first of its connection); the connection to reuse, or
        None when it is closed."""
        reader, writer = stream
        counts = self.current
        self._sent += 1
        counts.sent += 1
        started = time.perf_counter()
        try:
            writer.write(req(path))
            # read_response's own limit is longer: this one counts a late answer as failed.
            response = await asyncio.wait_for(
                read_response(reader, timeout=self.timeout + 5), self.timeout
            )
        except (OSError, TimeoutError, AssertionError, asyncio.IncompleteReadError) as err:
            counts.failed += 1
            connection = "new" if fresh else "reused"
            counts.failures.append(f"{path} on a {connection} connection: {err!r}")
            writer.close()
            return None
        counts.latencies.append(time.perf_counter() - started)
        if check(response):
            counts.ok += 1
        else:
            counts.failed += 1
            counts.failures.append(f"{path}: {response.status} {response.headers}")
        if "close" in response.connection_tokens:
            writer.close()
            return None
        return stream
