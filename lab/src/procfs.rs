//! What `/proc` says about a process: its name, memory and CPU time. Missing processes
//! and fields read as empty or zero.

/// The process's command name (`/proc/PID/comm`, at most 15 bytes).
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_owned())
}

/// A `kB` field of `/proc/PID/status`, like `VmRSS:` or `VmHWM:`.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory (KiB).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// User + system CPU time of a process so far (ms).
pub fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 * 1000.0 / hz
}

/// Sums a per-thread reading over the process's threads (threads that already exited
/// are not counted).
fn over_threads(pid: u32, read: impl Fn(&std::path::Path) -> Option<u64>) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| read(&t.path()))
        .sum()
}

/// CPU time of the process's threads so far, in nanoseconds (`schedstat`'s first field,
/// the scheduler's own account, not clock ticks).
pub fn cpu_ns(pid: u32) -> u64 {
    over_threads(pid, |t| {
        std::fs::read_to_string(t.join("schedstat"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Voluntary context switches of the process's threads: each time a thread went to
/// sleep waiting for something, so each is followed by one wake-up. Preemption by other
/// load (involuntary switches) is not counted.
pub fn voluntary_switches(pid: u32) -> u64 {
    over_threads(pid, |t| {
        std::fs::read_to_string(t.join("status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me) > 0);
        assert!(comm(me).is_some_and(|c| !c.is_empty()));
        let spin = std::time::Instant::now();
        // cpu_ns counts live threads only (this one spins), cpu_ms the whole process.
        // cpu_ms comes from clock ticks, which are sampled: it can lag the scheduler's
        // exact count by a tick or more, so spin until both have seen 10 ms.
        while (cpu_ns(me) < 10_000_000 || cpu_ms(me) < 10.0)
            && spin.elapsed() < std::time::Duration::from_secs(5)
        {}
        assert!(cpu_ns(me) >= 10_000_000, "{}", cpu_ns(me));
        assert!(cpu_ms(me) >= 10.0);
        let before = voluntary_switches(me);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(voluntary_switches(me) > before);
        assert_eq!((cpu_ns(u32::MAX), voluntary_switches(u32::MAX)), (0, 0));
        assert_eq!(status_kib(me, "NoSuchField:"), 0);
        assert_eq!(comm(u32::MAX), None);
    }
}
