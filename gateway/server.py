"""Run the gateway under a production ASGI server: uvicorn (default, measured faster here) or Granian.

Both drain in-flight requests on SIGTERM/SIGINT before the app's shutdown flushes the usage meter.
Every worker runs with exactly the settings this process resolved (environment, ``--config`` file,
command-line flags, the embedded database's URL): they travel to the workers as one JSON document in
:data:`WORKER_SETTINGS_VARIABLE`, which is not a ``TENANTGATE_*`` name (those are settings) and, like the
environment it lives in, is readable only by this user. Logging is ours alone: neither server installs
its own handlers, so every line follows ``TENANTGATE_LOG_FORMAT`` with secrets redacted.
"""

from __future__ import annotations

import logging
import os

import msgspec

from gateway.fd_limit import raise_fd_limit
from gateway.settings import Settings, SettingsError

FACTORY = "gateway.asgi:create"
WORKER_SETTINGS_VARIABLE = "_TENANTGATE_WORKER_SETTINGS"
PROTOCOL = "gateway.http_protocol:BoundedHttpToolsProtocol"

log = logging.getLogger(__name__)


def serve(settings: Settings, database_url: str) -> None:
    """Serve until stopped, with ``settings`` (and ``database_url``) in every worker."""
    resolved = msgspec.structs.replace(settings, database_url=database_url)
    # Each connection costs a descriptor, and each proxied request one more toward its engine.
    raise_fd_limit(2 * settings.max_connections + 256)
    os.environ[WORKER_SETTINGS_VARIABLE] = msgspec.json.encode(resolved).decode()
    try:
        if settings.server == "uvicorn":
            _serve_uvicorn(resolved)
        else:
            _serve_granian(resolved)
    finally:
        os.environ.pop(WORKER_SETTINGS_VARIABLE, None)


class PortInUseError(Exception):
    """The gateway's address is taken; the message names the setting and the flag that change it."""


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` if ``host:port`` cannot be bound now (checked before slow start-up work)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind it
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): another process uses it;"
                " choose another port with TENANTGATE_PORT or --port (or the address with TENANTGATE_HOST / --host)"
            ) from None


def worker_settings() -> Settings | None:
    """In a worker: the settings ``serve`` resolved, or None when not started by ``serve``."""
    raw = os.environ.get(WORKER_SETTINGS_VARIABLE)
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw, type=Settings)
    except msgspec.ValidationError as exc:  # only if the variable was tampered with
        raise SettingsError(f"{WORKER_SETTINGS_VARIABLE}: not the settings `tenantgate serve` wrote") from exc


def _serve_granian(settings: Settings) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings

    # Granian (hyper) bounds the head by its read buffer (431 past it) and its read time; it has no
    # separate keep-alive timeout (the header timeout covers the wait for the next request) and no
    # connection cap.
    http1 = HTTP1Settings(
        header_read_timeout=max(1, int(settings.header_read_timeout * 1000)),
        max_buffer_size=max(8192, settings.max_header_bytes),
    )
    Granian(
        FACTORY,
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        loop=Loops.uvloop,
        http1_settings=http1,
        log_enabled=False,  # our JSON logging (configured by the CLI and each worker) takes Granian's records
        log_access=False,
        backlog=2048,
        workers_kill_timeout=int(settings.shutdown_timeout),
        respawn_failed_workers=True,
    ).serve()


def _serve_uvicorn(settings: Settings) -> None:
    import signal

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from gateway.http_protocol import BoundedConfig, ConnectionLimits

    # uvicorn re-raises the stop signal once it has drained; with SIGTERM's default action that would kill
    # this process before the embedded Postgres is stopped. Once uvicorn is done, a SIGTERM is handled.
    signal.signal(signal.SIGTERM, lambda *_: None)

    config = BoundedConfig(
        FACTORY,
        limits=ConnectionLimits(
            max_header_bytes=settings.max_header_bytes,
            header_read_timeout=settings.header_read_timeout,
            max_connections=settings.max_connections,
        ),
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=PROTOCOL,
        access_log=False,
        log_config=None,  # uvicorn's records go to the handler configure_logging installed
        lifespan="on",
        timeout_keep_alive=settings.keep_alive_timeout,  # declared int; a float works (call_later)
        # Declared int; a float works (asyncio.wait_for), and rounding down would cancel streams before the
        # shutdown watch ends them with an error event (at the timeout less a margin: gateway/services/shutdown.py).
        timeout_graceful_shutdown=settings.shutdown_timeout,
        log_level=settings.log_level,
    )
    # What uvicorn.run does with its own config: one server in this process, or a supervisor of workers.
    server = uvicorn.Server(config)
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            server.run()
    except KeyboardInterrupt:
        pass
    if config.workers == 1 and not server.started:
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE: the app or its lifespan failed (logged)
