"""The adapter directory waits for its LISTEN connection's socket with one reader, not psycopg's 100 ms polling."""

from __future__ import annotations

import asyncio
import socket

from adapters.directory import _readable


async def test_a_quiet_socket_is_not_readable_within_the_timeout() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert await _readable(left.fileno(), 0.01) is False
        # the reader is gone: the fd can be waited on again (add_reader would replace, remove_reader is per fd)
        assert await _readable(left.fileno(), 0.01) is False


async def test_data_arriving_while_waiting_makes_it_readable() -> None:
    left, right = socket.socketpair()
    with left, right:
        loop = asyncio.get_running_loop()
        loop.call_soon(right.send, b"x")
        assert await _readable(left.fileno(), 30.0) is True
        assert left.recv(1) == b"x"


async def test_a_closed_peer_makes_it_readable() -> None:
    left, right = socket.socketpair()
    with left:
        right.close()
        assert await _readable(left.fileno(), 30.0) is True
