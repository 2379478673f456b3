//! What the generator reads of other processes from `/proc`: CPU time
//! (the servers', the database's), resident memory, the kernel's socket
//! memory.

use std::collections::HashMap;
use std::time::Duration;

/// CPU time per delivered message, in µs (`None`: not measured, or nothing delivered).
pub(crate) fn per_delivery(cpu: Option<Duration>, delivered: u64) -> Option<f64> {
    cpu.filter(|_| delivered > 0)
        .map(|cpu| cpu.as_secs_f64() * 1e6 / delivered as f64)
}

/// The CPU time of all these processes together (`None` if there are none,
/// or one cannot be read).
pub(crate) fn servers_cpu_time(pids: &[u32]) -> Option<Duration> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| cpu_time(pid)).sum()
}

/// CPU time (user + system) the process has used so far.
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// The CPU time (user + system) each process named `name` (`/proc/*/comm`)
/// has used so far: a database server's processes, e.g. `postgres` (its
/// backends, WAL writer, checkpointer). `None` when there is none.
pub(crate) fn processes_cpu(name: &str) -> Option<HashMap<u32, Duration>> {
    let found: HashMap<u32, Duration> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            // A process may end between the listing and its reading: skipped.
            (comm.trim_end() == name).then(|| cpu_time(pid).map(|cpu| (pid, cpu)))?
        })
        .collect();
    (!found.is_empty()).then_some(found)
}

/// What the processes of `end` (`processes_cpu`) used since `start`: each
/// one's time since its reading in `start`, or since it began if it was
/// not there. A process that ended in between is not counted at all,
/// rather than taking its whole time off the others'.
pub(crate) fn cpu_since(start: &HashMap<u32, Duration>, end: &HashMap<u32, Duration>) -> Duration {
    end.iter()
        .map(|(pid, &cpu)| cpu.saturating_sub(start.get(pid).copied().unwrap_or_default()))
        .sum()
}

/// What the processes named `name` used since `start` (both read with
/// `processes_cpu`); `None` when either was not read.
pub(crate) fn processes_cpu_since(
    name: Option<&str>,
    start: Option<HashMap<u32, Duration>>,
) -> Option<Duration> {
    name.and_then(processes_cpu)
        .zip(start)
        .map(|(end, start)| cpu_since(&start, &end))
}

/// The machine's CPU time so far, in clock ticks: all of it, and what the
/// hypervisor took (`/proc/stat`'s `cpu` line). On a virtual machine whose
/// host is busy, a process is charged more CPU time for the same work
/// (BENCHMARKS.md, "A fortieth machine"), so a figure measured while the
/// host took much is not comparable with one measured while it took none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MachineTime {
    all: u64,
    stolen: u64,
}

impl MachineTime {
    pub(crate) fn now() -> Option<MachineTime> {
        MachineTime::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// From `/proc/stat`'s text: its first line is `cpu` followed by user,
    /// nice, system, idle, iowait, irq, softirq, steal, guest and
    /// guest_nice; a guest's time is already in user and nice.
    fn parse(stat: &str) -> Option<MachineTime> {
        let fields = stat.lines().next()?.strip_prefix("cpu ")?;
        let ticks: Vec<u64> = fields
            .split_whitespace()
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        Some(MachineTime {
            all: ticks.iter().sum(),
            stolen: *ticks.get(7)?,
        })
    }

    /// The share of the machine's time the hypervisor took since `start`,
    /// in per cent (`None` if either reading is missing, or no time passed).
    pub(crate) fn stolen_percent(
        start: Option<MachineTime>,
        end: Option<MachineTime>,
    ) -> Option<f64> {
        let (start, end) = start.zip(end)?;
        let all = end.all.checked_sub(start.all).filter(|&all| all > 0)?;
        Some(100.0 * end.stolen.saturating_sub(start.stolen) as f64 / all as f64)
    }
}

/// The kernel's memory for TCP sockets, all of them (`/proc/net/sockstat`,
/// `TCP: … mem N`, in pages): what RSS does not count.
pub(crate) fn tcp_socket_kib() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    let pages: u64 = words.next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().map(|p| pages * p / 1024)
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_since_counts_each_process_from_its_own_first_reading() {
        let s = Duration::from_secs;
        // 1 ran on, 2 ended, 3 began.
        let start = HashMap::from([(1, s(5)), (2, s(3))]);
        let end = HashMap::from([(1, s(6)), (3, s(2))]);
        assert_eq!(cpu_since(&start, &end), s(3));
        assert_eq!(cpu_since(&end, &end), Duration::ZERO);
    }

    #[test]
    fn the_share_stolen_is_the_steal_ticks_over_all_of_them() {
        let stat = |user: u64, steal: u64| {
            format!("cpu  {user} 0 100 800 0 0 0 {steal} 40 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
        };
        let start = MachineTime::parse(&stat(100, 0));
        assert_eq!(
            start,
            Some(MachineTime {
                all: 1000,
                stolen: 0
            }),
            "guest time is not counted twice"
        );
        let end = MachineTime::parse(&stat(200, 100));
        // 200 ticks passed, 100 of them stolen.
        assert_eq!(MachineTime::stolen_percent(start, end), Some(50.0));
        assert_eq!(
            MachineTime::stolen_percent(start, start),
            None,
            "no time passed"
        );
        assert_eq!(MachineTime::stolen_percent(None, end), None);
        assert_eq!(MachineTime::parse("intr 1 2 3\n"), None);
        assert!(MachineTime::now().is_some(), "Linux has /proc/stat");
    }

    #[test]
    fn processes_are_found_by_name() {
        let name = std::fs::read_to_string("/proc/self/comm").expect("Linux names every process");
        let found = processes_cpu(name.trim_end()).expect("this process has that name");
        assert!(found.contains_key(&std::process::id()), "{found:?}");
        assert_eq!(processes_cpu("no process is called this"), None);
    }
}
