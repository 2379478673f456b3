#!/usr/bin/env python3
"""A WebSocket client for trying the chat protocol by hand, Python's standard
library only (nothing to install).

    scripts/ws.py URL TOKEN [FRAME ...]

connects to URL (ws://host:port/chat/), authorizes with TOKEN (from
POST /api/login/), sends each FRAME (a JSON object) in order, each after the
answer to the one before (or --wait seconds of silence), and prints every frame the server sends, one JSON
document per line. It answers the server's pings, and ends after --wait
seconds (default 1) in which nothing arrives. For example:

    token=$(curl -s -H 'Content-Type: application/json' \\
      -d '{"username":"alice","password":"..."}' http://127.0.0.1:8000/api/login/ \\
      | python3 -c 'import sys, json; print(json.load(sys.stdin)["token"])')
    scripts/ws.py ws://127.0.0.1:8000/chat/ "$token" '{"type": "get_contacts", "data": {}}'

Exit status: 0, or 1 when authorization is refused or the connection fails.
"""

import argparse
import base64
import json
import os
import socket
import struct
import sys
import urllib.parse

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


class Socket:
    def __init__(self, url, timeout):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ws":
            raise SystemExit("only ws:// URLs (put TLS in front with nginx; see README)")
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        path = parts.path or "/"
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in status + " ":
            raise ConnectionError(f"upgrade refused: {status}")
        self.sock.settimeout(timeout)

    def _until(self, marker):
        while marker not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        self.buffer += chunk

    def _take(self, n):
        while len(self.buffer) < n:
            self._fill()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def send(self, opcode, payload):
        """One masked frame, as RFC 6455 requires of a client."""
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + body)

    def receive(self):
        """The next whole message: (opcode, payload); continuations joined."""
        opcode, payload = None, b""
        while True:
            first, second = self._take(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._take(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._take(8))[0]
            data = self._take(n)
            code = first & 0x0F
            if code >= 0x8:  # control frames come whole, even between fragments
                return code, data
            opcode = opcode or code
            payload += data
            if first & 0x80:
                return opcode, payload


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("frames", nargs="*", help="JSON frames to send, in order")
    parser.add_argument("--wait", type=float, default=1.0, help="seconds of silence that end it")
    args = parser.parse_args()
    frames = [json.loads(frame) for frame in args.frames]

    try:
        ws = Socket(args.url, args.wait)
    except (OSError, ConnectionError) as e:
        print(f"ws.py: {e}", file=sys.stderr)
        return 1

    def send(frame):
        ws.send(TEXT, json.dumps(frame).encode())

    def send_next():
        frame = frames.pop(0)
        send(frame)
        kind = frame.get("type")
        return "pong" if kind == "ping" else f"{kind}_response"

    send({"type": "authorization", "data": {"token": args.token}})
    # The type whose arrival lets the next frame go: a request's answer.
    waiting_for = "authorization_response"
    while True:
        try:
            opcode, payload = ws.receive()
        except socket.timeout:
            if not frames:
                return 0
            waiting_for = send_next()  # a frame nothing answers (typing)
            continue
        except (OSError, ConnectionError) as e:
            print(f"ws.py: {e}", file=sys.stderr)
            return 1
        if opcode == PING:
            ws.send(PONG, payload)
            continue
        if opcode == CLOSE:
            code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
            print(json.dumps({"close": code, "reason": payload[2:].decode(errors="replace")}))
            return 0
        if opcode != TEXT:
            continue
        print(payload.decode(), flush=True)
        frame = json.loads(payload)
        kind = frame.get("type")
        if kind == "authorization_response" and frame.get("data", {}).get("status") != "success":
            return 1
        if kind == waiting_for or (waiting_for and kind == "error"):
            waiting_for = send_next() if frames else None


if __name__ == "__main__":
    sys.exit(main())
