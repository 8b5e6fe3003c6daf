"""`trunk8 up | run | serve | tap`: start the system, one service, or watch its events.

- `up`: the all-in-one shape. An embedded nats-server (unless a NATS URL is given) and
  every service in this process, on one public port.
- `run --target NAME` (or `serve NAME`): one service, or `all`, against a NATS URL.
- `tap [SUBJECT]`: print the events on the bus as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

import uvloop

from trunk8_config_watcher.errors import ConfigLoadError
from trunk8_shared.background import setup_supervision
from trunk8_shared.datadir import DataDir
from trunk8_shared.logs import setup_logging
from trunk8_shared.settings import Settings, SettingsError, environment, settings_from

from .embedded_nats import NATS_URL_FILE, EmbeddedNats, start_for
from .errors import ServiceFailed, StartupError
from .server import HttpServer, bind, drain_period
from .tap import DEFAULT_SUBJECT, tap
from .targets import TARGETS, build_app
from .watcherproc import WatcherLink, WatcherProcess
from .workers import serve_workers, worker_count

log = logging.getLogger("trunk8")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trunk8", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(command: argparse.ArgumentParser) -> None:
        command.add_argument("--data", help="data directory (TRUNK8_DATA_DIR, default ./data)")
        command.add_argument("--nats", help="NATS URL (TRUNK8_NATS_URL)")

    def listening(command: argparse.ArgumentParser) -> None:
        command.add_argument("--host", help="address to listen on (TRUNK8_HOST, default 127.0.0.1)")
        command.add_argument(
            "--port", type=int, help="port to listen on (TRUNK8_PORT, default 5001)"
        )
        command.add_argument(
            "--workers",
            default="1",
            help="serving processes sharing the port (SO_REUSEPORT): a number or 'auto' "
            "(one per core); default 1",
        )

    def worker(command: argparse.ArgumentParser) -> None:
        # Set by a `--workers` parent for its children (`trunk8.workers`), not by people.
        command.add_argument("--worker", type=int, help=argparse.SUPPRESS)
        command.add_argument("--watcher-port", type=int, help=argparse.SUPPRESS)

    up = commands.add_parser("up", help="start the whole system (embedded NATS unless --nats)")
    common(up)
    listening(up)
    up.add_argument(
        "--watcher-in-process",
        action="store_true",
        help="run the config-watcher in the serving process (default: a child process)",
    )

    run = commands.add_parser("run", help="run one service, or all, against a NATS server")
    run.add_argument("--target", choices=TARGETS, default="all")
    common(run)
    listening(run)
    worker(run)

    serve = commands.add_parser("serve", help="run one service (same as run --target)")
    serve.add_argument("target", choices=TARGETS)
    common(serve)
    listening(serve)
    worker(serve)

    tap_cmd = commands.add_parser("tap", help="print bus events as JSON lines")
    tap_cmd.add_argument("subject", nargs="?", default=DEFAULT_SUBJECT)
    common(tap_cmd)
    return parser


async def _serve(
    target: str,
    settings: Settings,
    embedded: EmbeddedNats | None,
    watcher_process: bool = False,
    all_in_one: bool = False,
    worker: int | None = None,
    watcher_port: int | None = None,
) -> None:
    """Run until SIGINT/SIGTERM, drain, then stop the services and the embedded server.

    As a worker of a `--workers` group (`worker` is its number), the port is shared with
    the others, and for `up` the config-watcher is the parent's child on `watcher_port`.

    The drain (`trunk8.server.drain_period`) keeps serving while `/-/ready` answers 503; a
    second signal ends it. The embedded server and the services' background tasks are
    supervised; if one cannot be kept running, everything stops at once and the reason is
    raised (exit status 1), so a process manager can restart the whole.
    """
    sock = bind(settings.host, settings.port, shared=worker is not None)
    stop = asyncio.Event()
    supervisor: asyncio.Task[None] | None = None
    child: WatcherProcess | None = None
    try:
        if embedded is not None:
            settings = await start_for(embedded, settings)
            supervisor = asyncio.create_task(embedded.supervise(), name="nats-supervisor")
            supervisor.add_done_callback(lambda _: stop.set())  # it ends only when it gives up
        watcher: WatcherLink | None = None
        if watcher_port is not None:
            watcher = WatcherLink(watcher_port)
        elif watcher_process:
            # Before our services are imported and set up: the child's first load (the
            # longer of the two at a warm restart) starts beside theirs, not after.
            watcher = child = WatcherProcess(settings)
            await child.spawn()
        app = build_app(target, settings, watcher)
        supervision = setup_supervision(app)
        watchdog = asyncio.create_task(_stop_when_set(supervision.gave_up, stop))
        name = None if worker is None else f"{worker}/{os.getpid()}"
        server = HttpServer(app, settings, sock, worker=name)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await server.start(until_ready=None if worker is None else stop)
            as_worker = "" if worker is None else f" (worker {worker})"
            log.info(
                "trunk8 %s%s serving on http://%s:%d", target, as_worker, settings.host, server.port
            )
            await stop.wait()
            drain = drain_period(settings, target, all_in_one)
            failed = supervision.failed or (supervisor is not None and supervisor.done())
            if drain and not failed:
                log.info(
                    "draining for %g s: /-/ready answers 503, connections close after their "
                    "next answer (signal again to stop now)",
                    drain,
                )
                stop.clear()  # set again by a second signal, or a failure, ending the drain
                await server.drain(drain, stop)
            log.info("stopping")
        finally:
            watchdog.cancel()
            await server.stop()
        if supervision.failed:
            raise ServiceFailed(supervision.failure)
    finally:
        sock.close()
        if child is not None:
            await child.stop()  # stopped with the application; here if it never started
        if supervisor is not None:
            supervisor.cancel()  # before stop(), so no restart races it
            await asyncio.wait([supervisor])
        if embedded is not None:
            await embedded.stop()
    if supervisor is not None and not supervisor.cancelled():
        supervisor.result()  # raises why the embedded server could not be kept running


def _check_workers(args: argparse.Namespace, target: str) -> None:
    """Refuse `--workers` for what must run once per data directory."""
    if args.command == "up" and args.watcher_in_process:
        raise SettingsError(
            "--workers runs the config-watcher as a child: drop --watcher-in-process"
        )
    if args.command != "up" and target in ("config-watcher", "all"):
        raise SettingsError(
            f"--workers cannot run {target!r}: one config-watcher is active per data "
            "directory and it serves no public port (standbys are separate processes; "
            "for every service with N workers: trunk8 up --workers N)"
        )


async def _stop_when_set(event: asyncio.Event, stop: asyncio.Event) -> None:
    await event.wait()
    stop.set()


def _tap_url(args: argparse.Namespace, settings: Settings, env: dict[str, str]) -> str:
    """--nats, TRUNK8_NATS_URL, the URL file of a local `trunk8 up`, or the default."""
    if args.nats or env.get("TRUNK8_NATS_URL"):
        return settings.nats_url
    url_file = DataDir(settings.data_path).state_dir / NATS_URL_FILE
    if url_file.is_file():
        return url_file.read_text().strip()
    return settings.nats_url


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `trunk8` command."""
    args = _parser().parse_args(argv)
    env = environment()
    try:
        settings = settings_from(
            env,
            data_dir=args.data,
            nats_url=args.nats,
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
        )
    except SettingsError as err:
        print(f"trunk8: {err}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        if args.command == "tap":
            return uvloop.run(tap(_tap_url(args, settings, env), args.subject))
        target = "all" if args.command == "up" else args.target
        workers = worker_count(args.workers)
        if workers > 1:
            _check_workers(args, target)
        embedded = None
        if args.command == "up" and not (args.nats or env.get("TRUNK8_NATS_URL")):
            store = DataDir(settings.data_path).state_dir / "nats"
            embedded = EmbeddedNats(store, binary=settings.nats_server)
        separate = args.command == "up" and not args.watcher_in_process
        all_in_one = args.command == "up"
        if workers > 1:
            uvloop.run(serve_workers(target, settings, workers, embedded, all_in_one))
        else:
            worker = getattr(args, "worker", None)
            watcher_port = getattr(args, "watcher_port", None)
            uvloop.run(
                _serve(target, settings, embedded, separate, all_in_one, worker, watcher_port)
            )
    except SettingsError as err:  # also a service's own settings, read when its app is built
        print(f"trunk8: {err}", file=sys.stderr)
        return 2
    except (StartupError, ServiceFailed, ConfigLoadError) as err:
        print(f"trunk8: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. a data directory that is a file, or not writable
        print(f"trunk8: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
