"""Type stub of the compiled `_packed.c`."""

from array import array

def pack_records(codes: list[str], metas: list[str] | None, targets: list[str]) -> bytes:
    """The records `code NUL meta NUL target LF` of the columns (metas None: all empty)."""

def index_records(slots: array[int], blob: bytes | bytearray, start: int, codes: list[str]) -> int:
    """Place the records from blob[start] (one per code) in the slots; returns how many
    replaced a record of the same code."""

def kept_records(
    blob: bytes | bytearray, start: int, stop: int, drop: dict[str, object]
) -> tuple[list[str], bytes]:
    """(codes, bytes) of the records in blob[start:stop] whose code is not a key of drop."""

def reserve(size: int) -> bytearray:
    """A bytearray of `size` bytes, not initialised (write before reading)."""

def release_pages(blob: bytes | bytearray, start: int, stop: int) -> None:
    """Hand the whole pages of blob[start:stop] back to the kernel (they read as zeros)."""
