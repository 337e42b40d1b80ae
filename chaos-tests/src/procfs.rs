//! What the benchmarks and abuse tests read of a process from `/proc` (Linux).

/// User + system CPU time of process `pid`, in clock ticks (0 if it is gone).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// Time CPU `cpu` spent idle (idle and iowait), in clock ticks (0 if there is no such CPU). On
/// a tickless kernel this is measured, not sampled: a window's length less it is the time the
/// CPU was busy, whatever ran there (kernel threads, interrupts, time stolen by a hypervisor).
pub fn cpu_idle_ticks(cpu: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu}");
    let Some(line) = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
    else {
        return 0;
    };
    // user nice system idle iowait ...
    line.split_whitespace()
        .skip(4)
        .take(2)
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .sum()
}

/// Time CPU `cpu` was runnable but a hypervisor ran something else (steal), in clock ticks (0
/// on bare metal or if there is no such CPU). Counted in a window's busy time by
/// [`cpu_idle_ticks`]'s complement; it is not time the CPU spent on anything of the guest's.
pub fn cpu_steal_ticks(cpu: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu}");
    stat.lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .and_then(|l| l.split_whitespace().nth(8)?.parse().ok())
        .unwrap_or(0)
}

/// Voluntary context switches of the threads of process `pid` so far (each one a thread that
/// slept and was woken later), 0 if it is gone: how often the process was woken. A thread that
/// exits takes its count with it: subtract with `saturating_sub`.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Resident memory of process `pid`, in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_is_read() {
        let me = std::process::id();
        assert!(super::rss_kib(me) > 0);
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        assert!(super::cpu_ticks(me) > 0);
        assert!(super::cpu_idle_ticks(0) > 0);
        assert_eq!(super::cpu_idle_ticks(usize::MAX), 0);
        assert_eq!(super::cpu_steal_ticks(usize::MAX), 0);
        // This test's thread slept at least once to be scheduled.
        assert!(super::context_switches(me) > 0);
        assert_eq!(super::context_switches(u32::MAX), 0);
    }
}
