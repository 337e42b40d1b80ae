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
        let elapsed = self.at.elapsed().as_secs_f64().max(0.001);
        let ticks = process_cpu_ticks();
        let egress_bps = (bytes_out.saturating_sub(self.bytes_out) as f64 * 8.0 / elapsed) as u64;
        // /proc ticks are 1/100 s on Linux: ticks per second = percent of one core.
        let cpu = (ticks.saturating_sub(self.cpu_ticks) as f64 / elapsed) as f32;
        self.at = Instant::now();
        self.bytes_out = bytes_out;
        self.cpu_ticks = ticks;
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
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(super::process_cpu_ticks() > start, "cpu ticks did not move");
    }

    #[test]
    fn egress_is_a_rate() {
        let mut s = super::LoadSampler::new();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (bps, _) = s.sample(125_000);
        assert!((5_000_000..=10_000_000).contains(&bps), "{bps}");
    }
}
