#!/usr/bin/env python3
"""Stdlib-only health probes used by ``scripts/services`` (runs before any virtualenv exists).

``probe.py kafka HOST PORT`` sends a Kafka ApiVersions (v0) request and a Metadata (v4) request
and succeeds only when the broker answers both without error and lists at least one live broker
and a controller. ``probe.py redis HOST PORT`` sends ``PING`` and expects ``+PONG``.
Exit status 0 when healthy, 1 otherwise (the reason on stderr with ``-v``).
"""

from __future__ import annotations

import socket
import struct
import sys

TIMEOUT_S = 2.0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
    return bytes(buf)


def _kafka_request(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    client_id = b"riskmon-probe"
    header = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    resp = _recv_exact(sock, size)
    (got_corr,) = struct.unpack(">i", resp[:4])
    if got_corr != corr:
        raise ValueError(f"correlation id {got_corr} != {corr}")
    return resp[4:]


def probe_kafka(host: str, port: int) -> str:
    """Return a one-line description of a healthy broker, raise otherwise."""
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        sock.settimeout(TIMEOUT_S)
        # ApiVersions v0: empty body; response: error_code int16, [api_key, min, max]
        resp = _kafka_request(sock, 18, 0, 1, b"")
        (err, n_apis) = struct.unpack(">hi", resp[:6])
        if err != 0:
            raise ValueError(f"ApiVersions error code {err}")
        # Metadata v4: topics = [] (none), allow_auto_topic_creation = false
        resp = _kafka_request(sock, 3, 4, 2, struct.pack(">ib", 0, 0))
        pos = 4  # throttle_time_ms
        (n_brokers,) = struct.unpack_from(">i", resp, pos)
        pos += 4
        for _ in range(n_brokers):
            pos += 4  # node_id
            (hlen,) = struct.unpack_from(">h", resp, pos)
            pos += 2 + hlen + 4  # host, port
            (rlen,) = struct.unpack_from(">h", resp, pos)
            pos += 2 + max(rlen, 0)  # rack (nullable)
        (clen,) = struct.unpack_from(">h", resp, pos)
        cluster_id = resp[pos + 2 : pos + 2 + clen].decode() if clen >= 0 else None
        pos += 2 + max(clen, 0)
        (controller_id,) = struct.unpack_from(">i", resp, pos)
        if n_brokers < 1 or controller_id < 0:
            raise ValueError(f"no live broker yet (brokers={n_brokers}, controller={controller_id})")
        return f"kafka {host}:{port} cluster={cluster_id} brokers={n_brokers} apis={n_apis}"


def probe_redis(host: str, port: int) -> str:
    """Return a one-line description of a healthy Redis, raise otherwise."""
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        sock.settimeout(TIMEOUT_S)
        sock.sendall(b"PING\r\n")
        line = sock.recv(64)
        if not line.startswith(b"+PONG"):
            raise ValueError(f"unexpected reply {line[:40]!r}")
        return f"redis {host}:{port} PONG"


def main(argv: list[str]) -> int:
    verbose = "-v" in argv
    args = [a for a in argv if a != "-v"]
    if len(args) != 3 or args[0] not in ("kafka", "redis"):
        print("usage: probe.py [-v] kafka|redis HOST PORT", file=sys.stderr)
        return 2
    kind, host, port = args[0], args[1], int(args[2])
    try:
        info = probe_kafka(host, port) if kind == "kafka" else probe_redis(host, port)
    except (OSError, ValueError, struct.error) as exc:
        if verbose:
            print(f"{kind} {host}:{port} not healthy: {exc}", file=sys.stderr)
        return 1
    if verbose:
        print(info)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
