"""The C extensions (`_headscan`, `_packed`) against hostile callers: a clear error, never a crash.

Each case runs in a child interpreter with the debug allocator (`PYTHONMALLOC=debug`: freed
memory is overwritten, so a use after free crashes instead of reading stale bytes), under a
timeout, so a segfault or an endless loop fails the test instead of killing or stalling
pytest. The child prints what it saw; the test checks that line.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import textwrap
import tracemalloc
import weakref
from array import array

import pytest

from trunk8_redirector import _headscan, _packed

CHILD_TIMEOUT = 20


def run_child(code: str) -> str:
    """Run `code` in a child interpreter; its last output line (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "PYTHONMALLOC": "debug"},
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    return done.stdout.strip().splitlines()[-1]


def test_prepared_answers_never_initialised_raise_instead_of_crashing() -> None:
    seen = run_child("""
        from trunk8_redirector._headscan import PreparedAnswers
        bare = PreparedAnswers.__new__(PreparedAnswers)
        head = b"GET /a HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"
        print(len(bare), bare.answer(head, 0), bare.clear())
        try:
            bare.keep(b"a", b"r", 0, 0)
        except ValueError as error:
            print("refused:", error)
    """)
    assert seen == "refused: outcome out of the counters' range"


def test_a_counter_that_drops_the_answer_while_counted_leaves_no_dangling_answer() -> None:
    # The outcomes list is the stats' own: a counter is whatever is there. One whose `+`
    # clears the prepared answers freed the answer `answer` was about to return.
    seen = run_child("""
        from trunk8_redirector._headscan import PreparedAnswers
        class Counter:
            def __add__(self, other):
                prepared.clear()
                return 1
        prepared = PreparedAnswers([Counter()], 4)
        prepared.keep(b"a", b"x" * 64 + b"response", 0, 0)
        print(prepared.answer(b"GET /a HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n", 0)[-8:], len(prepared))
    """)
    assert seen == "b'response' 0"


def test_a_counters_list_that_shrinks_while_counted_raises_index_error() -> None:
    class Shrinking:
        def __add__(self, other: int) -> int:
            outcomes.clear()
            return 1

    outcomes: list[object] = [Shrinking()]
    prepared = _headscan.PreparedAnswers(outcomes, 4)  # type: ignore[arg-type]
    prepared.keep(b"a", b"response", 0, 0)
    with pytest.raises(IndexError):  # was SystemError: a result with an exception set
        prepared.answer(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 0)


def test_prepared_answers_in_a_reference_cycle_are_collected() -> None:
    class Version:
        """A table version that refers back to the answers (a cycle through them)."""

        prepared: object = None

    prepared = _headscan.PreparedAnswers([0], 4)
    version = Version()
    version.prepared = prepared
    prepared.keep(b"a", b"response", 0, version)  # type: ignore[arg-type]
    gone = weakref.ref(version)
    del prepared, version
    gc.collect()
    assert gone() is None


def test_index_records_refuses_codes_that_are_not_str() -> None:
    # A code's `__hash__` may run Python code: this one empties the list being indexed.
    seen = run_child("""
        from array import array
        from trunk8_redirector._packed import index_records
        class Code:
            def __hash__(self):
                codes.clear()
                return 1
        codes = [Code(), "b", "c"]
        slots = array("Q", [2**64 - 1]) * 8
        try:
            index_records(slots, b"a\\0\\0t\\nb\\0\\0t\\nc\\0\\0t\\n", 0, codes)
        except TypeError as error:
            print("refused:", error)
    """)
    assert seen == "refused: codes must be str"
    with pytest.raises(TypeError):
        _packed.index_records(array("Q", [2**64 - 1]) * 2, b"a\0\0t\n", 0, [None])  # type: ignore[list-item]


def test_index_records_into_full_slots_raises_instead_of_probing_forever() -> None:
    seen = run_child("""
        from array import array
        from trunk8_redirector._packed import index_records
        slots = array("Q", [0]) * 4  # every slot taken by another record (offset 0)
        try:
            index_records(slots, b"a\\0\\0t\\nbb\\0\\0t\\n", 0, ["a", "bb"])
        except ValueError as error:
            print("refused:", error)
    """)
    assert seen == "refused: no free slot: the slots are full"


def test_pack_records_refuses_columns_changed_while_packed() -> None:
    # A finalizer run by a collection in the middle of packing (the error of a lone
    # surrogate allocates) lengthens a target already measured: the buffer sized for the
    # old one must not be overrun.
    seen = run_child("""
        import gc
        from trunk8_redirector._packed import pack_records
        codes, targets = ["a", "b\\udcff"], ["t", "u"]
        class Grow:
            def __del__(self):
                targets[0] = "x" * 100_000
        gc.collect()
        gc.set_threshold(1)
        cycle = Grow()
        cycle.me = cycle
        del cycle
        try:
            print(len(pack_records(codes, None, targets)), targets[0] == "t")
        except RuntimeError as error:
            print("refused:", error)
    """)
    assert seen in ("refused: the columns changed while packed", "12 True")


def test_kept_records_keeps_its_blob_while_a_drop_key_runs_code() -> None:
    # A drop key whose hash matches a code's is compared with `==`: Python code, which
    # tries to shrink the bytearray being read. The buffer held by the call refuses that.
    blob = bytearray(b"a\0\0t\nb\0\0u\n")

    class Shrinker:
        def __hash__(self) -> int:
            return hash("a")

        def __eq__(self, other: object) -> bool:
            blob.clear()
            return False

    with pytest.raises(BufferError):
        _packed.kept_records(blob, 0, len(blob), {Shrinker(): None})
    assert len(blob) == 10


def test_error_paths_leak_nothing() -> None:
    """Every entry point, failing half of the time: traced memory stays flat."""
    head = b"GET /abc HTTP/1.1\r\nHost: x\r\n\r\n"
    blob, empty = b"a\0\0t\nb\0\0u\n\xed\xb3\xbf\0\0v\n", 2**64 - 1
    prepared = _headscan.PreparedAnswers([0, 0], 64)

    def call_each(i: int) -> None:
        bad = i & 1
        calls = (
            lambda: _headscan.common_link_request(head, 0, None if bad else len(head) - 4),
            lambda: prepared.answer(head, i & 2),
            lambda: prepared.keep(b"abc%d" % (i & 127), b"response", 9 if bad else 1, i & 2),
            lambda: _headscan.PreparedAnswers([0], 0 if bad else 2),
            lambda: _packed.pack_records(["a", "\udcff"], None, ["t", "u\n" if bad else "u"]),
            lambda: _packed.index_records(
                array("Q", [empty]) * 8, blob, 0, ["a", "b", 3 if bad else "\udcff"]
            ),
            lambda: _packed.index_records(array("Q", [0]) * 2, blob, 0, ["a"]),
            lambda: _packed.kept_records(blob, 0, len(blob) - bad, {"b": None}),
            lambda: _packed.reserve(-1 if bad else 64),
            lambda: _packed.release_pages(bytearray(64), 9 if bad else 0, 8),
            lambda: _packed.index_records(  # a fold's slots: room set aside, cast to 'Q'
                memoryview(_packed.reserve(64)).cast("Q") if bad else b"\0" * 64, blob, 0, []
            ),
        )
        for call in calls:
            with contextlib.suppress(TypeError, ValueError, BufferError):
                call()  # type: ignore[no-untyped-call]

    for i in range(2_000):  # caches and free lists warmed up
        call_each(i)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            call_each(i)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 16_384, grown  # a leak of one object per failed call is 160 kB or more
