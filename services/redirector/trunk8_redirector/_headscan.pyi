"""Type stub of the compiled `_headscan.c`."""

MAX_HEADERS: int
MAX_FIELD: int

def common_link_request(data: bytes, pos: int, end: int) -> tuple[bytes, bytes] | None:
    """(method, path) of a common HTTP/1.1 link-request head data[pos:end], else None."""

class PreparedAnswers:
    """Whole answers to common GET requests by path, for one table version and Date line."""

    def __init__(self, outcomes: list[int], capacity: int) -> None: ...
    def __len__(self) -> int: ...
    def answer(self, data: bytes, version: int) -> bytes | tuple[bytes, bytes] | None:
        """The prepared response to `data` if it is one whole common GET head whose answer
        is kept for this table version; (method, path) of another common head; else None."""
    def keep(self, path: bytes, response: bytes, outcome: int, version: int) -> None:
        """Keep the response to GET /path, counted as `outcome`, for this table version."""
    def clear(self) -> None:
        """Drop every prepared answer."""
