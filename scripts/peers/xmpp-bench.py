#!/usr/bin/env python3
"""Measures an XMPP server (ejabberd) the way chat-bench measures ours, over
plain c2s with SASL PLAIN; Python's standard library only. BENCHMARKS.md,
"Beside other servers of its kind", has the server's setup and the figures.

    xmpp-bench.py pairs --pairs 100 --rate 500 --duration 15 --server-pid PID
    xmpp-bench.py idle --users 2000 --cpu-seconds 30 --server-pid PID

The accounts are written straight into ejabberd's `users` table (plain
passwords; setup, not measured). Every connection binds a resource, fetches
its roster and sends presence, as a client does, and answers the server's
pings (XEP-0199).

pairs: the first of each pair sends `type='chat'` messages at --rate in
total to the second. Prints send->deliver p50/p99, loss, and the server's
and PostgreSQL's CPU per delivered message, first send to last delivery.
idle: RSS with half and with all connected, then CPU and pings answered
over --cpu-seconds.
"""
import argparse
import asyncio
import base64
import random
import re
import subprocess
import time

from procstat import Window, idle_cpu, memory_line, rss_kib, settle

HOST = "bench.local"
PASSWORD = "bench-password-1"
HEADER = (f"<?xml version='1.0'?><stream:stream to='{HOST}' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").encode()
BODY = re.compile(rb"<body>bench (\d+) (\d+)</body>")
PING = re.compile(rb"<iq([^>]*)><ping xmlns=['\"]urn:xmpp:ping['\"]/></iq>")
ATTR = re.compile(rb"(id|from)=['\"]([^'\"]*)['\"]")


def create_users(names, database):
    rows = "".join(f"{n}\t{PASSWORD}\n" for n in names)
    subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-c",
                    "COPY users(username, password) FROM STDIN"], input=rows, text=True, check=True)


class Conn:
    def __init__(self, name):
        self.name, self.buf, self.pings = name, b"", 0

    async def read_more(self, waiting_for):
        data = await self.reader.read(65536)
        if not data:
            raise RuntimeError(f"{self.name}: closed waiting for {waiting_for}: {self.buf[-300:]!r}")
        self.buf += data

    async def until(self, needle):
        while needle not in self.buf:
            await self.read_more(needle)
        i = self.buf.index(needle) + len(needle)
        seen, self.buf = self.buf[:i], self.buf[i:]
        return seen

    async def iq(self, ident):
        """Reads up to the end of the iq answering `ident`; returns its opening tag."""
        pattern = re.compile(rb"<iq[^>]*id=['\"]" + ident.encode() + rb"['\"][^>]*>")
        while not (m := pattern.search(self.buf)):
            await self.read_more(f"iq {ident}")
        tag, self.buf = m.group(0), self.buf[m.end():]
        if not tag.endswith(b"/>"):
            await self.until(b"</iq>")
        return tag

    async def open(self, port, sem):
        async with sem:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
            self.writer.write(HEADER)
            await self.until(b"</stream:features>")
            plain = base64.b64encode(f"\0{self.name}\0{PASSWORD}".encode()).decode()
            self.writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                              f"{plain}</auth>".encode())
            seen = await self.until(b">")
            if b"<success" not in seen:
                raise RuntimeError(f"auth {self.name}: {seen + self.buf[:200]!r}")
            self.writer.write(HEADER)
            await self.until(b"</stream:features>")
            self.writer.write(b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                              b"<resource>bench</resource></bind></iq>")
            await self.iq("bind")
            self.writer.write(b"<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
            await self.iq("roster")
            self.writer.write(b"<presence/>")

    async def receive(self, got):
        """Times every bench message and answers every ping, until the connection ends."""
        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            now = time.perf_counter_ns()
            self.buf += data
            last = 0
            for m in BODY.finditer(self.buf):
                got[int(m.group(1))] = (now - int(m.group(2))) / 1e6
                last = max(last, m.end())
            for m in PING.finditer(self.buf):
                attrs = dict(ATTR.findall(m.group(1)))
                self.writer.write(b"<iq type='result' id='" + attrs[b"id"] + b"' to='" + attrs[b"from"] + b"'/>")
                self.pings += 1
                last = max(last, m.end())
            self.buf = self.buf[last:] if last else self.buf[-4096:]


async def connect(args, conns):
    sem = asyncio.Semaphore(32)
    await asyncio.gather(*(c.open(args.port, sem) for c in conns))


async def pairs(args):
    conns = [Conn(f"b{random.randrange(1 << 30):x}u{i}") for i in range(args.pairs * 2)]
    create_users((c.name for c in conns), args.database)
    await connect(args, conns)
    got = {}
    readers = [asyncio.create_task(c.receive(got if i % 2 else {})) for i, c in enumerate(conns)]
    await settle(args.server_pid)
    total = args.rate * args.duration
    window = Window(args.server_pid)
    start = time.perf_counter()
    for seq in range(total):
        delay = start + seq / args.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pair = seq % args.pairs
        sender, to = conns[2 * pair], conns[2 * pair + 1].name
        sender.writer.write(f"<message to='{to}@{HOST}' type='chat' id='m{seq}'><body>bench {seq} "
                            f"{time.perf_counter_ns()}</body></message>".encode())
    sent_seconds = time.perf_counter() - start
    deadline = time.perf_counter() + 30
    while len(got) < total and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    window.report(args, total, sent_seconds, time.perf_counter() - start, got.values())
    for t in readers:
        t.cancel()


async def idle(args):
    conns = [Conn(f"i{random.randrange(1 << 30):x}u{i}") for i in range(args.users)]
    create_users((c.name for c in conns), args.database)
    await settle(args.server_pid)
    base = rss_kib(args.server_pid)
    half = len(conns) // 2
    await connect(args, conns[:half])
    readers = [asyncio.create_task(c.receive({})) for c in conns[:half]]
    await settle(args.server_pid)
    mid = rss_kib(args.server_pid)
    await connect(args, conns[half:])
    readers += [asyncio.create_task(c.receive({})) for c in conns[half:]]
    await settle(args.server_pid)
    print(memory_line(len(conns), base, mid, rss_kib(args.server_pid)))
    await idle_cpu(args.server_pid, args.cpu_seconds, lambda: sum(c.pings for c in conns), "pings")
    for t in readers:
        t.cancel()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("pairs", "idle"):
        s = sub.add_parser(name)
        s.add_argument("--port", type=int, default=5222)
        s.add_argument("--database", default="ejabberd", help="ejabberd's PostgreSQL database")
        s.add_argument("--server-pid", type=int, required=True)
        if name == "pairs":
            s.add_argument("--pairs", type=int, default=100)
            s.add_argument("--rate", type=int, default=500)
            s.add_argument("--duration", type=int, default=15)
        else:
            s.add_argument("--users", type=int, default=2000)
            s.add_argument("--cpu-seconds", type=int, default=30)
    args = p.parse_args()
    asyncio.run(pairs(args) if args.cmd == "pairs" else idle(args))


if __name__ == "__main__":
    main()
