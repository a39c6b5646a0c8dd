#!/usr/bin/env python3
"""Stdlib-only health probes used by ``scripts/services`` (runs before any virtualenv exists).

``probe.py kafka HOST PORT`` sends a Kafka ApiVersions (v0) request and a Metadata (v4) request
and succeeds only when the broker answers both without error and lists at least one live broker
and a controller. ``probe.py redis HOST PORT`` sends ``PING`` and expects ``+PONG``.
With ``--credentials FILE`` (the services' ``credentials.env``) the probes log in first, as the
project's clients do: Kafka over TLS (``RISKMON_KAFKA__SSL_CAFILE``) with SASL/SCRAM-SHA-512
(``RISKMON_KAFKA__SASL_USERNAME``/``_PASSWORD``) when ``RISKMON_KAFKA__SECURITY_PROTOCOL=SASL_SSL``,
Redis with ``AUTH`` (``RISKMON_REDIS__USERNAME``/``_PASSWORD``) when a password is there.
Secrets are read from the file, never from the command line.
Exit status 0 when healthy, 1 otherwise (the reason on stderr with ``-v``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import sys
from typing import Any

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


def read_credentials(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines of a credentials file (``#`` comments and blank lines skipped)."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                out[key.strip()] = value.strip().strip("'\"")
    return out


def _kstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def _scram_sha512(sock: Any, username: str, password: str) -> None:
    """SaslHandshake v1 + SaslAuthenticate v0 with SCRAM-SHA-512 (RFC 5802), raising on refusal."""
    resp = _kafka_request(sock, 17, 1, 3, _kstr("SCRAM-SHA-512"))
    (err,) = struct.unpack(">h", resp[:2])
    if err != 0:
        raise ValueError(f"SaslHandshake error code {err} (SCRAM-SHA-512 not enabled?)")

    def authenticate(corr: int, payload: bytes) -> bytes:
        r = _kafka_request(sock, 36, 0, corr, struct.pack(">i", len(payload)) + payload)
        (code, mlen) = struct.unpack(">hh", r[:4])
        pos = 4 + max(mlen, 0)
        if code != 0:
            raise ValueError(f"SASL authentication failed ({code}): {r[4:pos].decode(errors='replace')}")
        (blen,) = struct.unpack(">i", r[pos : pos + 4])
        return r[pos + 4 : pos + 4 + blen]

    nonce = base64.b64encode(os.urandom(18)).decode()
    user = username.replace("=", "=3D").replace(",", "=2C")
    first_bare = f"n={user},r={nonce}"
    server_first = authenticate(4, ("n,," + first_bare).encode()).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    if not fields["r"].startswith(nonce):
        raise ValueError("SCRAM: server nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha512).digest()
    stored_key = hashlib.sha512(client_key).digest()
    final_bare = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.new(stored_key, auth_message, hashlib.sha512).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    server_final = authenticate(5, f"{final_bare},p={base64.b64encode(proof).decode()}".encode()).decode()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha512).digest()
    expected = base64.b64encode(hmac.new(server_key, auth_message, hashlib.sha512).digest()).decode()
    if server_final != f"v={expected}":
        raise ValueError("SCRAM: the broker's signature is wrong")


def _connect(host: str, port: int, cafile: str | None) -> Any:
    sock = socket.create_connection((host, port), timeout=TIMEOUT_S)
    sock.settimeout(TIMEOUT_S)
    if cafile:
        context = ssl.create_default_context(cafile=cafile)
        sock = context.wrap_socket(sock, server_hostname=host)
    return sock


def probe_kafka(host: str, port: int, credentials: dict[str, str] | None = None) -> str:
    """Return a one-line description of a healthy broker, raise otherwise.

    ``credentials``: the settings of a credentials file; with ``SASL_SSL`` the probe talks TLS and
    logs in with SCRAM-SHA-512 before asking for metadata.
    """
    creds = credentials or {}
    secure = creds.get("RISKMON_KAFKA__SECURITY_PROTOCOL", "PLAINTEXT").upper() == "SASL_SSL"
    with _connect(host, port, creds.get("RISKMON_KAFKA__SSL_CAFILE") if secure else None) as sock:
        # ApiVersions v0: empty body; response: error_code int16, [api_key, min, max]
        resp = _kafka_request(sock, 18, 0, 1, b"")
        (err, n_apis) = struct.unpack(">hi", resp[:6])
        if err != 0:
            raise ValueError(f"ApiVersions error code {err}")
        if secure:
            _scram_sha512(sock, creds["RISKMON_KAFKA__SASL_USERNAME"], creds["RISKMON_KAFKA__SASL_PASSWORD"])
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


def _resp(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for p in parts:
        b = p.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def probe_redis(host: str, port: int, credentials: dict[str, str] | None = None) -> str:
    """Return a one-line description of a healthy Redis, raise otherwise (``AUTH`` first when a password is given)."""
    creds = credentials or {}
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        sock.settimeout(TIMEOUT_S)
        if creds.get("RISKMON_REDIS__PASSWORD"):
            sock.sendall(_resp("AUTH", creds.get("RISKMON_REDIS__USERNAME") or "default", creds["RISKMON_REDIS__PASSWORD"]))
            line = sock.recv(256)
            if not line.startswith(b"+OK"):
                raise ValueError(f"AUTH refused: {line[:60]!r}")
        sock.sendall(b"PING\r\n")
        line = sock.recv(64)
        if not line.startswith(b"+PONG"):
            raise ValueError(f"unexpected reply {line[:40]!r}")
        return f"redis {host}:{port} PONG"


def main(argv: list[str]) -> int:
    verbose = "-v" in argv
    args = [a for a in argv if a != "-v"]
    creds: dict[str, str] = {}
    if "--credentials" in args:
        i = args.index("--credentials")
        path = args[i + 1] if i + 1 < len(args) else ""
        del args[i : i + 2]
        if path and os.path.isfile(path):
            creds = read_credentials(path)
    if len(args) != 3 or args[0] not in ("kafka", "redis"):
        print("usage: probe.py [-v] kafka|redis HOST PORT [--credentials FILE]", file=sys.stderr)
        return 2
    kind, host, port = args[0], args[1], int(args[2])
    try:
        info = probe_kafka(host, port, creds) if kind == "kafka" else probe_redis(host, port, creds)
    except (OSError, ValueError, KeyError, struct.error) as exc:
        if verbose:
            print(f"{kind} {host}:{port} not healthy: {exc}", file=sys.stderr)
        return 1
    if verbose:
        print(info)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
