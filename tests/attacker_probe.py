"""An attacker's probe against every listening port of a platform, run as another local user.

Usage: ``python attacker_probe.py ARGS_JSON`` where the JSON names the ports, the bucket and key of a
locked object, the anchor bucket, a marker the object's bytes contain, and optionally ``uid``/``gid``
to drop to first and ``cert``/``key`` for the control run (the platform's own client certificate).
Prints one JSON document: every attempt that got a 2xx answer, every body that leaked the marker or
a bucket name, and every port that spoke HTTP/2 or gRPC to us.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - loaded before privileges drop: nobody cannot read the stdlib later
import http.client
import json
import os
import socket
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _context(cert: str | None, key: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # an attacker does not care who answers
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def _requests(a: dict) -> list[tuple[str, str, bytes | None]]:
    b, k, ab, forged, v = a["bucket"], a["key"], a["anchor_bucket"], a["forged"], a["version"]
    return [
        ("GET", "/", None), ("GET", "/buckets/", None), ("GET", f"/buckets/{b}/", None),
        ("GET", f"/buckets/{b}/{k}", None), ("PUT", f"/buckets/{ab}/{forged}", b"{}"),
        ("DELETE", f"/buckets/{b}/{k}", None), ("GET", f"/{b}/{k}", None), ("PUT", f"/{ab}/{forged}", b"{}"),
        ("DELETE", f"/{b}/{k}?versionId={v}", None), ("GET", "/dir/assign", None), ("GET", "/dir/status", None),
        ("GET", "/vol/status", None), ("GET", "/cluster/status", None),
    ]


def http_attempts(a: dict, port: int, tls: bool, cert=None, key=None) -> list[dict]:
    hits = []
    for method, path, body in _requests(a):
        try:
            if tls:
                c = http.client.HTTPSConnection("127.0.0.1", port, timeout=3, context=_context(cert, key))
            else:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
            c.request(method, path, body=body)
            r = c.getresponse()
            data = r.read(65536)
            c.close()
        except (OSError, http.client.HTTPException):
            continue
        # The object's bytes, or a listing naming the bucket (an error echoing the path we sent is no leak).
        leaked = a["marker"].encode() in data or (a["bucket"] not in path and a["bucket"].encode() in data)
        if leaked or (method != "GET" and 200 <= r.status < 300):
            hits.append({"port": port, "tls": tls, "method": method, "path": path, "status": r.status,
                         "leaked": leaked})
    return hits


def speaks_h2(port: int, tls: bool, cert=None, key=None) -> bool:
    """Whether the port answers an HTTP/2 preface with a SETTINGS frame (a gRPC server would)."""
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=3)
        s = _context(cert, key).wrap_socket(raw) if tls else raw
        if tls:
            s.context.set_alpn_protocols(["h2"])
        s.sendall(H2_PREFACE)
        data = s.recv(64)
        s.close()
    except (OSError, ssl.SSLError):
        return False
    return len(data) >= 9 and data[3] == 0x04  # frame type SETTINGS


def grpc_lists(port: int, cert=None, key=None, ca=None) -> bool:
    """A filer ListEntries call on /buckets over plain gRPC (or with the given client certificate)."""
    target = f"127.0.0.1:{port}"
    if cert:
        creds = grpc.ssl_channel_credentials(open(ca, "rb").read(), open(key, "rb").read(), open(cert, "rb").read())
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    call = channel.unary_stream("/filer_pb.SeaweedFiler/ListEntries",
                                request_serializer=lambda x: x, response_deserializer=lambda x: x)
    try:
        return any(True for _ in call(b"\n\x08/buckets", timeout=2))
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def unix_sockets_open() -> list[str]:
    opened = []
    for name in sorted(os.listdir("/tmp")):
        if name.startswith("seaweedfs-") and name.endswith(".sock"):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(os.path.join("/tmp", name))
                opened.append(name)
            except OSError:
                pass
            finally:
                s.close()
    return opened


def main() -> None:
    a = json.loads(sys.argv[1])
    if "gid" in a:
        # Everything lazily imported is loaded now, against a closed port: once we are nobody, the
        # interpreter's own library (under root's home here) cannot be read any more.
        for tls in (False, True):
            http_attempts(a, 1, tls)
            speaks_h2(1, tls)
        grpc_lists(1)
        unix_sockets_open()
        os.setgroups([])
        os.setgid(a["gid"])
        os.setuid(a["uid"])
    cert, key = a.get("cert"), a.get("key")
    out = {"http": [], "h2": [], "grpc": [], "unix": unix_sockets_open() if "uid" in a else []}

    def one(port: int) -> dict:
        found = {"http": [], "h2": [], "grpc": []}
        for tls in (False, True):
            found["http"] += http_attempts(a, port, tls, cert if tls else None, key if tls else None)
            if speaks_h2(port, tls, cert if tls else None, key if tls else None):
                found["h2"].append({"port": port, "tls": tls})
        if grpc_lists(port, cert, key, a.get("ca")):
            found["grpc"].append(port)
        return found

    with ThreadPoolExecutor(max_workers=16) as pool:
        for found in pool.map(one, a["ports"]):
            for k, v in found.items():
                out[k] += v
    print(json.dumps(out))


if __name__ == "__main__":
    main()
