"""Readiness probe of a SASL_SSL Kafka listener, for scripts/kafka.sh (stdlib only).

    KAFKA_PROBE_PASSWORD=... python3 probe_sasl.py HOST PORT TIMEOUT CAFILE USER

Exit 0 when the broker at HOST:PORT completes a TLS handshake (its certificate
checked against CAFILE, for HOST), a SCRAM-SHA-512 login as USER (the server's
signature checked too) and answers a Metadata request (v4, all topics) listing
at least one broker. Exit 1 otherwise; exit 3 when the broker refused the
login (a wrong password will not become right by waiting).

The password comes from the environment, not the command line, which every
local user can read. Kafka's own tools would do the same in a JVM that takes
seconds to start; this runs every 0.3 s while the broker starts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import socket
import ssl
import struct
import sys

CLIENT_ID = b"kafka.sh"
MECHANISM = "SCRAM-SHA-512"
#: Kafka error code of SaslAuthenticate when the login is refused.
SASL_AUTHENTICATION_FAILED = 58


class LoginRefused(Exception):
    """The broker refused the credentials."""


class Connection:
    """Kafka request/response framing over one TLS socket."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.correlation = 0

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def call(self, api_key: int, version: int, body: bytes) -> bytes:
        """Send one request (header v1), return the response body (header v0)."""
        self.correlation += 1
        header = struct.pack(
            ">hhih", api_key, version, self.correlation, len(CLIENT_ID)
        )
        request = header + CLIENT_ID + body
        self.sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", self._recv(4))
        response = self._recv(size)
        (correlation,) = struct.unpack_from(">i", response, 0)
        if correlation != self.correlation:
            raise EOFError("correlation id mismatch")
        return response[4:]


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _authenticate(conn: Connection, message: bytes) -> bytes:
    """One SaslAuthenticate (v1) round; the server's bytes."""
    body = conn.call(36, 1, struct.pack(">i", len(message)) + message)
    (error,) = struct.unpack_from(">h", body, 0)
    if error == SASL_AUTHENTICATION_FAILED:
        raise LoginRefused
    if error:
        raise EOFError(f"SaslAuthenticate error {error}")
    (text_len,) = struct.unpack_from(">h", body, 2)
    offset = 4 + max(text_len, 0)
    (size,) = struct.unpack_from(">i", body, offset)
    return body[offset + 4 : offset + 4 + size]


def scram_login(conn: Connection, user: str, password: str) -> None:
    """SCRAM-SHA-512 (RFC 5802) through SaslHandshake v1 and SaslAuthenticate."""
    body = conn.call(17, 1, _string(MECHANISM))
    (error,) = struct.unpack_from(">h", body, 0)
    if error:
        raise EOFError(f"SaslHandshake error {error}")
    name = user.replace("=", "=3D").replace(",", "=2C")
    nonce = base64.b64encode(secrets.token_bytes(24)).decode()
    first_bare = f"n={name},r={nonce}"
    server_first = _authenticate(conn, f"n,,{first_bare}".encode()).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    if not fields["r"].startswith(nonce):
        raise EOFError("server nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", "sha512")
    stored_key = hashlib.sha512(client_key).digest()
    final_bare = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.digest(stored_key, auth_message, "sha512")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = f"{final_bare},p={base64.b64encode(proof).decode()}"
    server_final = _authenticate(conn, final.encode()).decode()
    server_key = hmac.digest(salted, b"Server Key", "sha512")
    expected = base64.b64encode(hmac.digest(server_key, auth_message, "sha512"))
    if not hmac.compare_digest(server_final.encode(), b"v=" + expected):
        raise EOFError("the server's SCRAM signature does not match")


def main() -> int:
    host, port, timeout, cafile, user = sys.argv[1:6]
    password = os.environ.get("KAFKA_PROBE_PASSWORD", "")
    context = ssl.create_default_context(cafile=cafile)
    try:
        with socket.create_connection((host, int(port)), timeout=float(timeout)) as raw:
            with context.wrap_socket(raw, server_hostname=host) as sock:
                sock.settimeout(float(timeout))
                conn = Connection(sock)
                scram_login(conn, user, password)
                # Metadata v4: topics=null (all), allow_auto_topic_creation=false
                body = conn.call(3, 4, struct.pack(">ib", -1, 0))
        _throttle, brokers = struct.unpack_from(">ii", body, 0)
    except LoginRefused:
        return 3
    except (OSError, EOFError, struct.error, KeyError, ValueError):
        return 1
    return 0 if brokers >= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
