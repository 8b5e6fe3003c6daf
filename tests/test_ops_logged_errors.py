"""The suite's guard: a test fails on a logged traceback unless it declares it.

Runs a small test file with the project's `conftest.py` in a pytest child process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

INNER_TESTS = """
import logging

import pytest

log = logging.getLogger("trunk8.inner")


def test_traceback_fails():
    try:
        raise RuntimeError("kaboom")
    except RuntimeError:
        log.exception("handler crashed")


def test_plain_error_line_passes():
    log.error("rejected users/bob/links.toml: bad TOML")


def test_critical_fails():
    log.critical("giving up")


@pytest.mark.allow_logged_errors(r"trunk8\\.inner: handler crashed")
def test_declared_by_message_passes():
    try:
        raise RuntimeError("kaboom")
    except RuntimeError:
        log.exception("handler crashed")


@pytest.mark.allow_logged_errors(types=[KeyError])
def test_declared_by_type_passes():
    try:
        raise KeyError("x")
    except KeyError:
        log.exception("lookup failed")


@pytest.mark.allow_logged_errors(types=[KeyError])
def test_other_type_still_fails():
    try:
        raise ValueError("x")
    except ValueError:
        log.exception("parse failed")
"""


def test_logged_tracebacks_fail_unless_declared(tmp_path: Path) -> None:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    )
    # conftest.py imports its helper modules from the tests folder.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    outcomes: dict[str, str] = {}  # a test that passes, then fails at teardown: ERROR
    for line in result.stdout.splitlines():
        found = re.match(r"(PASSED|FAILED|ERROR) test_inner\.py::(\w+)", line)
        if found and outcomes.get(found[2]) != "ERROR":
            outcomes[found[2]] = found[1]
    assert outcomes == {
        "test_traceback_fails": "ERROR",
        "test_plain_error_line_passes": "PASSED",
        "test_critical_fails": "ERROR",
        "test_declared_by_message_passes": "PASSED",
        "test_declared_by_type_passes": "PASSED",
        "test_other_type_still_fails": "ERROR",
    }, result.stdout
    assert "trunk8.inner: handler crashed (RuntimeError('kaboom'))" in result.stdout
