#!/usr/bin/env python3
"""Measures a Matrix homeserver (Synapse) the way chat-bench measures ours.
Needs aiohttp (pip). BENCHMARKS.md, "Beside other servers of its kind", has
the server's setup and the figures.

    matrix-bench.py pairs --pairs 20 --rate 20 --duration 15 --server-pid PID
    matrix-bench.py idle --users 2000 --cpu-seconds 30 --server-pid PID

pairs: users in pairs, each pair in a direct room; the first of each sends
`m.room.message` at --rate in total, the second receives it through its
/sync long-poll. Prints send->deliver p50/p99, loss, and the server's and
PostgreSQL's CPU per delivered message, first send to last delivery.

idle: users in pairs with a direct room, each holding a /sync long-poll
(30 s) after its initial sync, as a client left open does. Prints RSS with
half and with all of them syncing, then CPU and syncs answered over
--cpu-seconds.
"""
import argparse
import asyncio
import json
import random
import time

import aiohttp

from procstat import Window, idle_cpu, memory_line, rss_kib, settle

FILTER = json.dumps({"room": {"timeline": {"limit": 10}, "state": {"lazy_load_members": True}}})
API = "/_matrix/client/v3"


class User:
    def __init__(self, token, user_id):
        self.user_id, self.since, self.syncs = user_id, None, 0
        self.headers = {"Authorization": f"Bearer {token}"}


async def call(http, method, url, user=None, **kwargs):
    headers = user.headers if user else None
    async with http.request(method, url, headers=headers, **kwargs) as r:
        body = await r.json()
        if r.status != 200:
            raise RuntimeError(f"{method} {url}: {r.status} {body}")
        return body


async def register(http, url, name, sem):
    async with sem:
        body = {"username": name, "password": "bench-password-1", "auth": {"type": "m.login.dummy"}}
        d = await call(http, "POST", f"{url}{API}/register", json=body)
        return User(d["access_token"], d["user_id"])


async def direct_room(http, url, a, b, sem):
    async with sem:
        body = {"preset": "trusted_private_chat", "invite": [b.user_id], "is_direct": True}
        room = (await call(http, "POST", f"{url}{API}/createRoom", a, json=body))["room_id"]
        await call(http, "POST", f"{url}{API}/rooms/{room}/join", b, json={})
        return room


async def sync(http, url, user, timeout_ms):
    params = {"timeout": str(timeout_ms), "filter": FILTER}
    if user.since:
        params["since"] = user.since
    d = await call(http, "GET", f"{url}{API}/sync", user, params=params,
                   timeout=aiohttp.ClientTimeout(total=timeout_ms / 1000 + 60))
    user.since = d["next_batch"]
    user.syncs += 1
    return d


async def initial_sync(http, url, user, sem):
    async with sem:
        await sync(http, url, user, 0)


async def setup(http, url, users):
    """Registers the users, a direct room per pair, and each one's initial sync."""
    sem = asyncio.Semaphore(16)
    prefix = f"b{random.randrange(1 << 30):x}u"
    people = await asyncio.gather(*(register(http, url, f"{prefix}{i}", sem) for i in range(users)))
    rooms = await asyncio.gather(*(direct_room(http, url, people[i], people[i + 1], sem)
                                   for i in range(0, users - 1, 2)))
    await asyncio.gather(*(initial_sync(http, url, u, sem) for u in people))
    return people, rooms


async def sync_loop(http, url, user, got):
    """Long-polls as a client does; times every bench message from the other member."""
    while True:
        d = await sync(http, url, user, 30000)
        now = time.perf_counter_ns()
        for room in d.get("rooms", {}).get("join", {}).values():
            for ev in room.get("timeline", {}).get("events", []):
                body = ev.get("content", {}).get("body", "")
                if ev.get("type") == "m.room.message" and body.startswith("bench ") \
                        and ev.get("sender") != user.user_id:
                    _, seq, sent = body.split()
                    got[int(seq)] = (now - int(sent)) / 1e6


async def pairs(args, http):
    people, rooms = await setup(http, args.url, args.pairs * 2)
    got = {}
    loops = [asyncio.create_task(sync_loop(http, args.url, people[i + 1], got))
             for i in range(0, len(people), 2)]
    await settle(args.server_pid)
    total = args.rate * args.duration
    window = Window(args.server_pid)
    start = time.perf_counter()

    async def send(seq):
        pair = seq % args.pairs
        body = {"msgtype": "m.text", "body": f"bench {seq} {time.perf_counter_ns()}"}
        await call(http, "PUT", f"{args.url}{API}/rooms/{rooms[pair]}/send/m.room.message/t{seq}",
                   people[2 * pair], json=body)

    sends = []
    for seq in range(total):
        delay = start + seq / args.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sends.append(asyncio.create_task(send(seq)))
    await asyncio.gather(*sends)
    sent_seconds = time.perf_counter() - start
    deadline = time.perf_counter() + 30
    while len(got) < total and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    window.report(args, total, sent_seconds, time.perf_counter() - start, got.values())
    for t in loops:
        t.cancel()


async def idle(args, http):
    people, _ = await setup(http, args.url, args.users)
    await settle(args.server_pid)
    base = rss_kib(args.server_pid)
    half = len(people) // 2
    # Longer than a long-poll (30 s): the first syncs' answers (the other
    # member coming online) are over, and every user is waiting in one.
    loops = [asyncio.create_task(sync_loop(http, args.url, u, {})) for u in people[:half]]
    await asyncio.sleep(45)
    mid = rss_kib(args.server_pid)
    loops += [asyncio.create_task(sync_loop(http, args.url, u, {})) for u in people[half:]]
    await asyncio.sleep(45)
    print(memory_line(len(people), base, mid, rss_kib(args.server_pid)))
    await idle_cpu(args.server_pid, args.cpu_seconds, lambda: sum(u.syncs for u in people), "syncs")
    for t in loops:
        t.cancel()


async def run(args):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await (pairs(args, http) if args.cmd == "pairs" else idle(args, http))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("pairs", "idle"):
        s = sub.add_parser(name)
        s.add_argument("--url", default="http://127.0.0.1:8008")
        s.add_argument("--server-pid", type=int, required=True)
        if name == "pairs":
            s.add_argument("--pairs", type=int, default=20)
            s.add_argument("--rate", type=int, default=20)
            s.add_argument("--duration", type=int, default=15)
        else:
            s.add_argument("--users", type=int, default=2000)
            s.add_argument("--cpu-seconds", type=int, default=30)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
