//! Per-step limits: memory, CPU, wall-clock time, log bytes and (optionally) fuel.

use std::fmt;
use std::time::Duration;

use wasmtime::ResourceLimiter;

/// The limits one step runs under. Every field has a default and can be set per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory, summed over the component's memories.
    pub memory: u64,
    /// CPU time spent executing WebAssembly (measured by epoch ticks).
    pub cpu: Duration,
    /// Wall-clock time from instantiation to the end of `run`.
    pub timeout: Duration,
    /// Bytes of log (log interface, stdout and stderr together).
    pub log_bytes: u64,
    /// A deterministic instruction budget; only on a runtime built with fuel.
    pub fuel: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: 256 << 20,
            cpu: Duration::from_secs(600),
            timeout: Duration::from_secs(600),
            log_bytes: 10 << 20,
            fuel: None,
        }
    }
}

/// `256MiB`, `1G`, `512k`, `1048576` → bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size: write it like `256MiB`, `1G` or `65536`"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` in `{s}`: use B, KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size `{s}` is too large"))
}

/// `30s`, `5m`, `1h`, `250ms`, `90` (seconds) → duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 =
        num.parse().map_err(|_| format!("`{s}` is not a duration: write it like `30s`, `5m`, `1h` or `250ms`"))?;
    Ok(match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        other => return Err(format!("unknown duration unit `{other}` in `{s}`: use ms, s, m or h")),
    })
}

/// Human form of a byte count, as users write limits: `256 MiB`.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
            write!(f, "{} GiB", n >> 30)
        } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{} MiB", n >> 20)
        } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
            write!(f, "{} KiB", n >> 10)
        } else {
            write!(f, "{n} B")
        }
    }
}

/// Human form of a duration: `30s`, `1.5s`, `250ms`.
pub struct Secs(pub Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.as_millis() < 1000 {
            write!(f, "{}ms", d.as_millis())
        } else if d.subsec_millis() == 0 {
            write!(f, "{}s", d.as_secs())
        } else {
            write!(f, "{:.1}s", d.as_secs_f64())
        }
    }
}

/// Caps a store's total linear memory and remembers why growth was refused.
#[derive(Debug)]
pub struct MemoryLimiter {
    pub limit: u64,
    pub total: u64,
    pub peak: u64,
    pub exceeded: bool,
}

impl MemoryLimiter {
    pub fn new(limit: u64) -> Self {
        Self { limit, total: 0, peak: 0, exceeded: false }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let grown = self.total + (desired.saturating_sub(current)) as u64;
        if grown > self.limit {
            self.exceeded = true;
            return Ok(false);
        }
        self.total = grown;
        self.peak = self.peak.max(grown);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        16
    }
    fn tables(&self) -> usize {
        64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_as_users_write_them() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").unwrap_err().contains("unknown size unit"));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert_eq!(Bytes(256 << 20).to_string(), "256 MiB");
        assert_eq!(Secs(Duration::from_secs(30)).to_string(), "30s");
    }

    #[test]
    fn limiter_refuses_growth_past_the_total() {
        let mut l = MemoryLimiter::new(10 << 20);
        assert!(l.memory_growing(0, 8 << 20, None).unwrap());
        assert!(!l.memory_growing(8 << 20, 12 << 20, None).unwrap());
        assert!(l.exceeded);
        assert_eq!(l.peak, 8 << 20);
    }
}
