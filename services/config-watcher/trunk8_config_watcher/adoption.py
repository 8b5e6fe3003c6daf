"""Adopting published links: a links file rejected since start keeps what NATS holds.

Such a file has no last good state in this process; the bucket still has the one a
previous run published, and that stays served until the file is fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from trunk8_shared.records import LinkRecord

from .catalog import LinkCatalog

log = logging.getLogger("trunk8.config_watcher")


def adopt_published(
    catalog: LinkCatalog, rejected: Callable[[str], bool], published: Iterable[LinkRecord]
) -> None:
    """Give each listed owner without links and with a rejected file its published links."""
    orphans = {owner for owner in catalog.users if not catalog.has_links(owner) and rejected(owner)}
    if not orphans:
        return
    adopted: dict[str, dict[str, LinkRecord]] = {owner: {} for owner in orphans}
    for record in published:
        if record.owner in adopted:
            adopted[record.owner][record.code] = record
    for owner, links in adopted.items():
        log.info("serving the %d published links of %s until its file is fixed", len(links), owner)
        catalog.resolve(catalog.set_links(owner, links))
