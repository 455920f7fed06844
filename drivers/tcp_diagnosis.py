"""Why a TCP connection cannot be made, in a technician's words and naming the setting to check.

Client libraries say only that a connect failed; the cause decides what to fix on site:
refused (the host is there, the port is wrong or its server is off), no answer (wrong
address, device off, firewall), no route (this gateway's own network settings), or a
host name that does not resolve. One plain socket connect, made only after a failure.
"""

from __future__ import annotations

import asyncio
import errno
import socket

_NO_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.EADDRNOTAVAIL})


async def why_no_connection(host: str, port: int, timeout_s: float, *, server: str) -> str:
    """The reason a connection to host:port fails now; `server` names what should listen."""
    where = f"{host}:{port}"
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return (f"no answer from {where} within {timeout_s} s: check `host` (is the device "
                "switched on and on this network?) and any firewall between")
    except ConnectionRefusedError:
        return (f"connection refused by {where}: the host is there but nothing listens on port "
                f"{port}: check `port` and that the device's {server} is enabled")
    except socket.gaierror as exc:
        return f"cannot resolve host name {host!r} ({exc.strerror}): check `host`"
    except OSError as exc:
        if exc.errno in _NO_ROUTE:
            return (f"no route to {where} ({exc.strerror}): check `host`, and this gateway's "
                    "own address, netmask and route: is the device on a network it reaches?")
        return f"cannot connect to {where}: {exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.close()
    return f"cannot connect to {where}, although a plain TCP connection succeeds now"
