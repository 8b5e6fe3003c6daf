"""Remembered (undecoded) links against the links bucket, for a full sync.

A warm start keeps the links of unchanged files as the bytes the bucket holds
(`catalog.RememberedLinks`). A full sync compares the catalog with the bucket: the
remembered users whose records the bucket still holds need no comparison, code by code,
so only the decoded users' codes and the keys nobody defines are diffed. A remembered user
whose records the bucket no longer holds is decoded, and diffed like the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from typing import cast

from trunk8_shared.codes import code_of_key
from trunk8_shared.snapshot import kv_keys

from .catalog import LinkCatalog, RememberedLinks


def still_published(links: RememberedLinks, published: Mapping[str, bytes]) -> bool:
    """Whether the bucket holds exactly these records for these codes (one byte compare)."""
    values = list(map(published.get, kv_keys(links.codes)))
    return None not in values and b",".join(cast(list[bytes], values)) == links.records


def decode_unpublished(catalog: LinkCatalog, published: Mapping[str, bytes]) -> int:
    """Decode each remembered user whose records the bucket no longer holds; how many."""
    remembered = catalog.remembered.items()
    stale = [owner for owner, links in remembered if not still_published(links, published)]
    for owner in stale:
        catalog.links_of(owner)
    return len(stale)


def codes_to_diff(catalog: LinkCatalog, published: Mapping[str, bytes]) -> list[str] | None:
    """The codes a full sync must compare when the remembered users are as published.

    The served records of decoded users, and the codes of keys nobody defines (to delete);
    None when every code must be compared: a key that is no code of ours (foreign), or no
    remembered user. Costs as much as the decoded users' links, plus one pass over the
    keys only when the bucket holds keys no user defines.
    """
    if not catalog.remembered:
        return None
    decoded = list(set(chain.from_iterable(catalog.links_by_user.values())))  # distinct
    present = sum(map(published.__contains__, kv_keys(decoded))) if decoded else 0
    remembered = len(catalog.owners) - len(decoded)  # only remembered users': all present
    codes = list(catalog.served)
    if len(published) == remembered + present:
        return codes  # no other key
    defined = set(kv_keys(list(catalog.owners)))
    for key in published.keys() - defined:
        code = code_of_key(key)
        if code is None:
            return None  # foreign: only a full diff removes it
        codes.append(code)
    return codes
