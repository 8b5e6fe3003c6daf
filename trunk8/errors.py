"""Errors the `trunk8` command reports to the person who started it, as one line each.

`StartupError`: the system cannot start (a port in use, no nats-server binary).
`ServiceFailed`: a running part could not be kept running (the embedded NATS server, a
background task that kept dying). Both end the command with exit status 1.
"""

from __future__ import annotations


class StartupError(Exception):
    """The server cannot start; the message is meant for the person who started it."""


class ServiceFailed(Exception):
    """A part of the running system could not be kept running; the message says which."""
