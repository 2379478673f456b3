#!/usr/bin/env python3
"""How long a message takes to reach a reader who marks each one read, as
the web client does while a conversation is open (BENCHMARKS.md
"TCP_NODELAY on the clients' connections"). Python's standard library only.

    scripts/read-latency.py URL [MESSAGES] [GAP_MS ...]

registers two new users on the server at URL (http://host:port; registration
open), and for each GAP_MS (default 5 20 100): alice sends MESSAGES
(default 100) messages to bob, each GAP_MS after bob received the one
before; bob's session answers each with a `read` mark. Prints, per gap, the
send-to-receive time's p50, p90 and max, and how many took over 10 ms.
Both client sockets send without delay (TCP_NODELAY), so what is measured
is the server's side.
"""

import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.parse
import urllib.request


def post(base, path, body, token=None):
    request = urllib.request.Request(
        base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    if token:
        request.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)


class Socket:
    """A WebSocket: the handshake, masked text frames out, text frames in."""

    def __init__(self, host, port, token):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /chat?token={token} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        self.buf = self.buf.split(b"\r\n\r\n", 1)[1]
        while self.recv()["type"] != "authorization_response":
            pass

    def send(self, frame):
        data = json.dumps(frame).encode()
        mask = os.urandom(4)
        if len(data) < 126:
            head = bytes([0x81, 0x80 | len(data)])
        else:
            head = bytes([0x81, 0x80 | 126]) + struct.pack(">H", len(data))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _need(self, n):
        while len(self.buf) < n:
            self.buf += self.sock.recv(65536)

    def recv(self):
        while True:
            self._need(2)
            opcode, length, start = self.buf[0] & 0x0F, self.buf[1] & 0x7F, 2
            if length == 126:
                self._need(4)
                length, start = struct.unpack(">H", self.buf[2:4])[0], 4
            elif length == 127:
                self._need(10)
                length, start = struct.unpack(">Q", self.buf[2:10])[0], 10
            self._need(start + length)
            payload = self.buf[start : start + length]
            self.buf = self.buf[start + length :]
            if opcode == 0x1:
                return json.loads(payload)


def main():
    base = sys.argv[1].rstrip("/")
    messages = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    gaps = [float(g) for g in sys.argv[3:]] or [5, 20, 100]
    address = urllib.parse.urlsplit(base)
    tag = f"{os.getpid()}{int(time.time())}"
    password = "read-latency-password-1"
    alice = post(base, "/api/register/", {"username": "a" + tag, "password": password})["token"]
    bob = post(base, "/api/register/", {"username": "b" + tag, "password": password})["token"]
    pk = post(base, "/api/contacts/", {"username": "b" + tag}, alice)["pk"]
    a = Socket(address.hostname, address.port, alice)
    b = Socket(address.hostname, address.port, bob)
    for gap in gaps:
        times = []
        for i in range(messages):
            start = time.monotonic()
            a.send({"type": "message", "data": {"to": pk, "content": f"read-latency {i}"}})
            while True:
                frame = b.recv()
                if frame["type"] == "message":
                    break
            times.append((time.monotonic() - start) * 1000)
            b.send({"type": "read", "data": {"id": pk, "up_to": frame["data"]["data"]["id"]}})
            time.sleep(gap / 1000)
        times.sort()
        print(
            f"gap {gap:g} ms: p50 {times[len(times) // 2]:.2f} ms, p90 "
            f"{times[int(len(times) * 0.9)]:.2f} ms, max {times[-1]:.2f} ms, "
            f"{sum(t > 10 for t in times)} of {messages} over 10 ms"
        )


if __name__ == "__main__":
    main()
