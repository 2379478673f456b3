#!/usr/bin/env python3
"""Logins at a fixed rate, whatever the answers' speed (an open loop: a
burst of logins as an attacker or a crowd sends them, not as many clients
that each wait for their answer), for `scripts/login-storm-bench.sh`.
Python's standard library only.

    scripts/login-storm.py URL RATE SECONDS [ACCOUNTS] [DELAY] [CONNECTIONS]

registers ACCOUNTS (default 40) accounts on the server at URL
(http://host:port; registration open), waits DELAY seconds (default 0),
then sends RATE logins a second for SECONDS, each to one of the accounts
in turn, with the right password, over CONNECTIONS keep-alive connections
(default 200: so many logins can be outstanding at once, so the server,
not this script, is where any queue forms). Prints one JSON line: logins
sent, the count of each answer's status, the answered logins' p50 and p99
(ms, from when each was due, so time queued behind slower answers counts),
and how long the sending took.
"""

import http.client
import json
import queue
import sys
import threading
import time
import urllib.parse

PASSWORD = "storm password of a fine length"


def post(connection, path, body):
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.status


def main():
    url = urllib.parse.urlsplit(sys.argv[1])
    rate, seconds = float(sys.argv[2]), float(sys.argv[3])
    accounts = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    delay = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    connections = int(sys.argv[6]) if len(sys.argv) > 6 else 200
    connect = lambda: http.client.HTTPConnection(url.hostname, url.port, timeout=60)

    setup = connect()
    for i in range(accounts):
        status = post(setup, "/api/register/",
                      {"username": f"storm{i}", "password": PASSWORD, "email": f"storm{i}@example.com"})
        if status not in (200, 201):
            sys.exit(f"registering storm{i}: HTTP {status}")
    time.sleep(delay)

    due = queue.Queue()
    lock = threading.Lock()
    statuses, waits = {}, []

    def sender():
        connection = connect()
        while (item := due.get()) is not None:
            when, i = item
            try:
                status = post(connection, "/api/login/", {"username": f"storm{i % accounts}", "password": PASSWORD})
            except (OSError, http.client.HTTPException) as error:
                status = type(error).__name__
                connection = connect()
            with lock:
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status == 200:
                    waits.append(time.monotonic() - when)

    senders = [threading.Thread(target=sender) for _ in range(connections)]
    for thread in senders:
        thread.start()
    start = time.monotonic()
    count = int(rate * seconds)
    for i in range(count):
        when = start + i / rate
        time.sleep(max(0.0, when - time.monotonic()))
        due.put((when, i))
    for _ in senders:
        due.put(None)
    for thread in senders:
        thread.join()
    waits.sort()
    percentile = lambda p: round(waits[min(len(waits) - 1, int(p * len(waits)))] * 1000, 1) if waits else None
    print(json.dumps({"logins": count, "statuses": statuses, "login_p50_ms": percentile(0.50),
                      "login_p99_ms": percentile(0.99), "seconds": round(time.monotonic() - start, 2)}))


if __name__ == "__main__":
    main()
