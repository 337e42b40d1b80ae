//! The load a node reports in its heartbeat: CPU of its own process and egress, as rates between
//! two samples.

use std::time::Instant;

/// Turns growing counters (CPU ticks, bytes sent) into rates between calls.
#[derive(Debug)]
pub struct LoadSampler {
    at: Instant,
    bytes_out: u64,
    cpu_ticks: u64,
}

impl Default for LoadSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadSampler {
    /// A sampler starting now.
    pub fn new() -> Self {
        Self {
            at: Instant::now(),
            bytes_out: 0,
            cpu_ticks: process_cpu_ticks(),
        }
    }

    /// `(egress bit/s, CPU % of one core)` since the last call, given the bytes sent so far.
    pub fn sample(&mut self, bytes_out: u64) -> (u64, f32) {
        self.sample_at(Instant::now(), bytes_out, process_cpu_ticks())
    }

    /// [`LoadSampler::sample`] with the clock and the CPU ticks passed in.
    pub fn sample_at(&mut self, now: Instant, bytes_out: u64, cpu_ticks: u64) -> (u64, f32) {
        let elapsed = now
            .saturating_duration_since(self.at)
            .as_secs_f64()
            .max(0.001);
        let egress_bps = (bytes_out.saturating_sub(self.bytes_out) as f64 * 8.0 / elapsed) as u64;
        // /proc ticks are 1/100 s on Linux: ticks per second = percent of one core.
        let cpu = (cpu_ticks.saturating_sub(self.cpu_ticks) as f64 / elapsed) as f32;
        self.at = now;
        self.bytes_out = bytes_out;
        self.cpu_ticks = cpu_ticks;
        (egress_bps, cpu)
    }
}

/// utime + stime of this process in clock ticks (0 where /proc is unavailable).
pub fn process_cpu_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the state field here.
    get(11) + get(12)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_cpu_ticks() {
        let start = super::process_cpu_ticks();
        // Busy until the process has used a tick (10 ms) of CPU, however fast the machine.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut x = 0u64;
        while super::process_cpu_ticks() <= start && std::time::Instant::now() < deadline {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_add(i * i));
            }
        }
        assert!(super::process_cpu_ticks() > start, "cpu ticks did not move");
    }

    #[test]
    fn egress_and_cpu_are_rates_over_the_interval() {
        let mut s = super::LoadSampler::new();
        let t0 = s.at;
        let ticks = s.cpu_ticks;
        // 125,000 bytes and 5 ticks (50 ms of CPU) in 100 ms: 10 Mbit/s and 50 % of a core.
        let (bps, cpu) = s.sample_at(
            t0 + std::time::Duration::from_millis(100),
            125_000,
            ticks + 5,
        );
        assert_eq!(bps, 10_000_000);
        assert!((cpu - 50.0).abs() < 0.01, "{cpu}");
        let (bps, _) = s.sample_at(
            t0 + std::time::Duration::from_millis(1100),
            125_000,
            ticks + 5,
        );
        assert_eq!(bps, 0, "nothing sent since the last sample");
    }
}
