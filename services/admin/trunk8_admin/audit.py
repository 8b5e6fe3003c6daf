"""The audit trail of admin actions: a log line and an `audit.action` event for each.

Switching to a user and back, and every change made while switched (T8-032), name both
the signed-in admin and the account acted as; account changes (register, delete,
password) are recorded too. The log line is written first and always; the event is
published on `trunk8.events.audit.action` when NATS is there (a trail must not make an
action fail, so a publish error is logged, not raised).
"""

from __future__ import annotations

import logging

from trunk8_shared.bus import Bus
from trunk8_shared.records import AuditAction, event_subject, json_encoder

log = logging.getLogger("trunk8.admin.audit")


class AuditTrail:
    """Records admin actions in the log and on the bus."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def record(
        self,
        admin: str,
        action: str,
        *,
        client: str = "",
        user: str = "",
        target: str = "",
        detail: str = "",
    ) -> None:
        """Log and publish one action; `user` is the account acted as ("" when not switched).

        `client` is the address the request came from (past trusted proxies).
        """
        event = AuditAction(
            admin=admin, user=user, action=action, target=target, detail=detail, client=client
        )
        acting = f" as {user}" if user else ""
        log.info(
            "audit: %s%s %s%s%s%s",
            admin,
            acting,
            action,
            f" {target}" if target else "",
            f" ({detail})" if detail else "",
            f" from {client}" if client else "",
        )
        if not self.bus.is_connected:
            log.warning("audit event not published (NATS unreachable): %s %s", admin, action)
            return
        try:
            await self.bus.nc.publish(event_subject(event), json_encoder.encode(event))
        except Exception as err:  # a lost connection must not undo the action itself
            log.warning("audit event not published (%s): %s %s", err, admin, action)
