"""Type stub of the compiled `_headscan.c`."""

MAX_HEADERS: int
MAX_FIELD: int

def common_link_request(data: bytes, pos: int, end: int) -> tuple[bytes, bytes] | None:
    """(method, path) of a common HTTP/1.1 link-request head data[pos:end], else None."""
