"""The config-watchers' lease: exactly one active watcher, any number standing by.

The lease is one key of the `trunk8_lease` bucket, whose entries expire `ttl` seconds after
they were written (the bucket's max age). Every watcher runs `Lease.run`: a standby tries
to create the key every `poll` seconds, which succeeds for one of them once the key is gone
(expired after the active one died, or deleted when it stopped); the active one renews it
with revision-checked updates every third of the TTL. A renewal refused (the key is gone or
somebody else's) or not confirmed in time makes it stand by.

Validity is counted locally from when the last renewal was *sent*, so it runs out before
the key can expire on the server: a watcher that was paused (SIGSTOP, a partition) knows it
lost the lease before any standby can take it, and from then on refuses to write (`check`)
and answers `/-/ready` with a 503 (`ready`), even before its lease loop gives it up. Writes
that were already on their way are refused by NATS itself: each one expects the bucket's
last sequence, and a new active fences every bucket before it writes
(`trunk8_shared.buckets.fence_bucket`, see `publisher.BucketWriter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator

import msgspec
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from trunk8_shared.background import Backoff
from trunk8_shared.buckets import BUS_ERRORS, ensure_lease_bucket
from trunk8_shared.bus import Bus
from trunk8_shared.records import (
    LEASE_BUCKET,
    Event,
    LeaseAcquired,
    LeaseLost,
    event_subject,
    json_encoder,
)

log = logging.getLogger("trunk8.config_watcher")

LEASE_KEY = "active"
# A renewal every third of the TTL leaves two more tries before the lease runs out.
RENEWALS_PER_TTL = 3
# Share of the TTL this watcher counts as valid: the rest absorbs how late NATS stores
# a renewal after it was sent (the server's clock starts then, ours at sending).
VALID_SHARE = 0.9
# Longest pause between a standby's attempts to take the lease.
MAX_POLL = 1.0
RELEASE_TIMEOUT = 0.5
# NATS away or slow: retried, never a crash of the lease loop.
LEASE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *BUS_ERRORS)


class NotActiveError(Exception):
    """This watcher does not hold the lease (or no longer): it must not write."""


class LeaseValue(msgspec.Struct, frozen=True, kw_only=True):
    """What the lease key holds: who holds it and since when (for logs and `nats kv`)."""

    v: int = 1
    holder: str
    since: float = 0.0  # Unix time the holder took it


_value_decoder = msgspec.json.Decoder(LeaseValue)


def holder_name() -> str:
    """This process, as named in the lease: host, process id and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


class Lease:
    """This watcher's side of the lease: whether it is active, and the loop that decides."""

    def __init__(self, bus: Bus, ttl: float, replicas: int = 1, holder: str = "") -> None:
        self.bus = bus
        self.ttl = ttl  # the bucket's own TTL once bound (it may predate this setting)
        self.replicas = replicas
        self.holder = holder or holder_name()
        self.revision = 0  # of the lease key, while held
        self.valid_until = 0.0  # monotonic time after which this watcher must not write
        self.standing_by = False  # looked at the lease and does not hold it
        self.acquisitions = 0
        self.losses = 0
        self._active = asyncio.Event()
        self._inactive = asyncio.Event()
        self._inactive.set()
        self._listeners: list[Callable[[bool], None]] = []
        self._known_holder = ""

    @property
    def active(self) -> bool:
        """True from acquiring the lease until losing it (see `held` for writing)."""
        return self._active.is_set()

    def held(self) -> bool:
        """True while this watcher may write: active and within its local validity."""
        return self.active and time.monotonic() < self.valid_until

    def ready(self, published: bool) -> bool:
        """Readiness: a standby's once it looked at the lease; the holder's once its state
        is `published`, and only while its lease is valid locally, so a lease that ran out
        shows at once, not when the lease loop next runs and gives it up."""
        return published and self.held() if self.active else self.standing_by

    def check(self) -> None:
        """Raise NotActiveError unless this watcher may write now."""
        if not self.held():
            raise NotActiveError(f"{self.holder} does not hold the config-watcher lease")

    async def wait_active(self) -> None:
        """Return once this watcher is the active one."""
        await self._active.wait()

    async def wait_inactive(self) -> None:
        """Return once this watcher stands by."""
        await self._inactive.wait()

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(active)` after each acquisition and each loss."""
        self._listeners.append(listener)

    async def lose(self, reason: str) -> None:
        """Stand by from now on (nothing if already standing by), and say why."""
        if not self.active:
            return
        self._active.clear()
        self._inactive.set()
        self.standing_by = True
        self.losses += 1
        log.warning("config.lease_lost: %s stands by (%s)", self.holder, reason)
        self._changed(False)
        await self._emit(LeaseLost(holder=self.holder, reason=reason))

    async def _gain(self, revision: int, sent: float) -> None:
        self.revision = revision
        self.valid_until = sent + self.ttl * VALID_SHARE
        self._inactive.clear()
        self._active.set()
        self.standing_by = False
        self.acquisitions += 1
        log.info(
            "config.lease_acquired: %s is the active config-watcher (lease revision %d); "
            "reconciling before it publishes",
            self.holder, revision,
        )  # fmt: skip
        self._changed(True)
        await self._emit(LeaseAcquired(holder=self.holder, lease_revision=revision))

    def _changed(self, active: bool) -> None:
        for listener in list(self._listeners):
            listener(active)

    async def _emit(self, event: Event) -> None:
        with contextlib.suppress(*BUS_ERRORS):  # an event for taps: lost while NATS is away
            await self.bus.nc.publish(event_subject(event), json_encoder.encode(event))

    @property
    def poll(self) -> float:
        """Seconds between a standby's attempts."""
        return min(MAX_POLL, self.ttl / 4)

    def _value(self) -> bytes:
        return json_encoder.encode(LeaseValue(holder=self.holder, since=time.time()))

    async def run(self) -> None:
        """Take the lease when free and keep it while alive, until cancelled."""
        await self.bus.wait_connected()
        kv, ttl = await self._bind()
        if ttl and abs(ttl - self.ttl) > 0.01:
            log.warning(
                "the lease bucket %s has a TTL of %g s (the setting says %g s); using it",
                LEASE_BUCKET, ttl, self.ttl,
            )  # fmt: skip
            self.ttl = ttl
        while True:
            if self.active:
                await self._renew(kv)
            else:
                await self._try_to_acquire(kv)

    async def _bind(self) -> tuple[KeyValue, float | None]:
        """The lease bucket (created when missing) and its TTL; retried until it works.

        Says once per distinct problem why not (NATS busy, more replicas than nodes...):
        the watcher stays not ready meanwhile, it does not stop.
        """
        backoff = Backoff()
        reported = ""
        while True:
            try:
                kv = await ensure_lease_bucket(self.bus.js, self.ttl, self.replicas)
                return kv, (await kv.status()).ttl
            except LEASE_ERRORS as err:
                problem = f"{type(err).__name__}: {err}"
                if problem != reported:
                    reported = problem
                    log.warning(
                        "cannot use the lease bucket %s (%s); retrying", LEASE_BUCKET, problem
                    )
            await backoff.wait()

    async def _try_to_acquire(self, kv: KeyValue) -> None:
        sent = time.monotonic()
        revision: int | None
        try:
            try:
                revision = await asyncio.wait_for(kv.create(LEASE_KEY, self._value()), self.ttl)
            except KeyWrongLastSequenceError:  # held: by another watcher, or in our name
                revision = await self._take_own(kv)
        except LEASE_ERRORS as err:  # NATS away or slow: try again
            log.debug("lease not taken (%s: %s)", type(err).__name__, err)
            await asyncio.sleep(self.poll)
            return
        if revision is None:  # another watcher holds it
            self.standing_by = True
            await asyncio.sleep(self.poll)
            return
        self._known_holder = self.holder
        await self._gain(revision, sent)

    async def _take_own(self, kv: KeyValue) -> int | None:
        """Take over a lease held in this watcher's own name (its dead predecessor's).

        Otherwise None, and the holder is logged whenever it changes (not per attempt).
        """
        entry = await kv.get(LEASE_KEY)
        try:
            holder = _value_decoder.decode(entry.value or b"").holder
        except msgspec.DecodeError:
            holder = "?"
        if holder == self.holder:
            return await kv.update(LEASE_KEY, self._value(), last=entry.revision)
        if holder != self._known_holder:
            self._known_holder = holder
            log.info("standing by: %s is the active config-watcher", holder)
        return None

    async def _renew(self, kv: KeyValue) -> None:
        interval = self.ttl / RENEWALS_PER_TTL
        renew_at = self.valid_until - self.ttl * VALID_SHARE + interval
        delay = min(renew_at, self.valid_until) - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):  # woken early by a loss (a fenced write)
                await asyncio.wait_for(self._inactive.wait(), delay)
        if not self.active:
            return
        sent = time.monotonic()
        if sent >= self.valid_until:
            await self.lose("the lease ran out before it was renewed (paused, or NATS away)")
            return
        try:
            revision = await asyncio.wait_for(
                kv.update(LEASE_KEY, self._value(), last=self.revision), self.valid_until - sent
            )
        except KeyWrongLastSequenceError:
            await self.lose("renewal refused: the lease expired or another watcher took it")
            return
        except LEASE_ERRORS as err:
            if time.monotonic() >= self.valid_until:
                await self.lose(f"the lease ran out: not renewed ({type(err).__name__})")
            else:  # a few tries fit before it runs out
                await asyncio.sleep(min(interval / 4, max(0.0, self.valid_until - sent)))
            return
        if self.active:  # not lost (a fenced write) while the renewal was on its way
            self.revision = revision
            self.valid_until = sent + self.ttl * VALID_SHARE

    async def release(self) -> None:
        """Stand by and delete the lease key if still ours, so a standby takes over now."""
        if not self.active:
            return
        revision = self.revision
        await self.lose("stopping")
        if not self.bus.is_connected:  # it expires on its own
            return
        # A delete only if the key is still ours, sent without waiting for an answer:
        # stopping must not wait on a NATS that is going away too (`trunk8 up`'s).
        headers = {"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": str(revision)}
        with contextlib.suppress(*LEASE_ERRORS):
            await self.bus.nc.publish(f"$KV.{LEASE_BUCKET}.{LEASE_KEY}", b"", headers=headers)
            await self.bus.nc.flush(timeout=RELEASE_TIMEOUT)  # type: ignore[arg-type]

    def collect(self) -> Iterator[Metric]:
        """Prometheus collector protocol: active or not, and lease changes."""
        yield GaugeMetricFamily(
            "trunk8_config_watcher_active",
            "1 while this config-watcher holds the lease and publishes; 0 while it stands by.",
            value=1.0 if self.held() else 0.0,
        )
        changes = CounterMetricFamily(
            "trunk8_config_watcher_lease_changes",
            "Times this config-watcher acquired or lost the lease.",
            labels=["change"],
        )
        changes.add_metric(["acquired"], self.acquisitions)
        changes.add_metric(["lost"], self.losses)
        yield changes
