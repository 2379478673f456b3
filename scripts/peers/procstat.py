"""What the peer benchmarks read from /proc and how they report it: a
process's CPU time and RSS, every PostgreSQL backend's CPU time, and the
latency line, the same for every server measured (BENCHMARKS.md, "Beside
other servers of its kind")."""
import asyncio
import os

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid):
    """User + system CPU time of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def postgres_cpu():
    """CPU seconds of every process named `postgres` (the server and its backends)."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "postgres":
                        total += cpu_seconds(pid)
            except OSError:
                pass  # the process ended between the listing and the read
    return total


def rss_kib(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1024


async def settle(pid):
    """Waits until the server used under 5 % of a core for 3 s: the setup's
    background work (caches, presence, indexes) is not measured."""
    while True:
        before = cpu_seconds(pid)
        await asyncio.sleep(3)
        if cpu_seconds(pid) - before < 0.15:
            return


class Window:
    """The server's and PostgreSQL's CPU time from the first send to the last delivery."""

    def __init__(self, pid):
        self.pid, self.cpu, self.pg = pid, cpu_seconds(pid), postgres_cpu()

    def report(self, args, total, sent_seconds, elapsed, latencies):
        cpu, pg = cpu_seconds(self.pid) - self.cpu, postgres_cpu() - self.pg
        lat = sorted(latencies)
        n = len(lat)
        print(f"pairs {args.pairs}, {args.rate} msg/s for {args.duration} s: sent {total} "
              f"in {sent_seconds:.1f} s, delivered {n}, lost {total - n}")
        if n:
            print(f"throughput {n / elapsed:.0f} msg/s; p50 {lat[n // 2]:.2f} ms, "
                  f"p99 {lat[min(n - 1, n * 99 // 100)]:.2f} ms, max {lat[-1]:.2f} ms")
            print(f"server CPU {cpu:.2f} s = {cpu / n * 1e6:.0f} us per delivered message; "
                  f"PostgreSQL {pg:.2f} s = {pg / n * 1e6:.0f} us")


def memory_line(users, base, mid, full):
    half = users // 2
    return (f"users {users}: RSS {base / 1024:.1f} MiB before, {mid / 1024:.1f} MiB with {half} "
            f"connected, {full / 1024:.1f} MiB with all; {(full - base) / users:.2f} KiB per user, "
            f"slope {(full - mid) / (users - half):.2f} KiB")


async def idle_cpu(pid, seconds, answered, keepalive):
    """Prints the server's and PostgreSQL's CPU over `seconds` of idling, and
    how many keep-alives (`keepalive`: "syncs", "pings") were answered a
    second; `answered()` is their running count."""
    count, cpu, pg = answered(), cpu_seconds(pid), postgres_cpu()
    await asyncio.sleep(seconds)
    count, cpu, pg = answered() - count, cpu_seconds(pid) - cpu, postgres_cpu() - pg
    print(f"idle CPU {cpu / seconds * 100:.2f} % of a core (PostgreSQL {pg / seconds * 100:.2f} %) "
          f"over {seconds} s; {count / seconds:.1f} {keepalive} answered a second")
