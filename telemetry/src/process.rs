//! The standard `process_*` metrics every Prometheus client library exports (CPU
//! time, memory, file descriptors, threads, start time), read from `/proc/self` at
//! each scrape. Elsewhere than Linux they are simply absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Encodes the process metrics of the calling process on each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector {
    _private: (),
}

impl ProcessCollector {
    /// A collector for this process.
    pub fn new() -> ProcessCollector {
        ProcessCollector::default()
    }
}

/// One reading of `/proc/self`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Threads in the process.
    pub threads: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// File descriptors open now.
    pub open_fds: u64,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
}

impl ProcessSample {
    /// Reads the calling process's figures; `None` where `/proc` is not there or
    /// does not parse (never a panic: a scrape must not take a process down).
    pub fn read() -> Option<ProcessSample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = boot_time_seconds(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| max_open_files(&l));
        parse_stat(&stat, ticks_per_second(), page_size(), boot_time, open_fds, max_fds)
    }
}

/// Parses `/proc/self/stat` (see proc(5)). The command name, in parentheses, may
/// itself hold spaces and parentheses, so the fields are counted after its last `)`.
fn parse_stat(
    stat: &str,
    ticks_per_second: f64,
    page_size: u64,
    boot_time: f64,
    open_fds: u64,
    max_fds: Option<u64>,
) -> Option<ProcessSample> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields from the third (state) on; field N of proc(5) is index N - 3 here.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let (utime, stime) = (field(14)?, field(15)?);
    Some(ProcessSample {
        cpu_seconds: (utime + stime) as f64 / ticks_per_second,
        threads: field(20)?,
        start_time_seconds: boot_time + field(22)? as f64 / ticks_per_second,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)?.saturating_mul(page_size),
        open_fds,
        max_fds,
    })
}

/// `btime` of `/proc/stat`: when the machine booted, seconds since the epoch.
fn boot_time_seconds(proc_stat: &str) -> Option<f64> {
    proc_stat.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft "Max open files" limit of `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sample) = ProcessSample::read() else { return Ok(()) };
        let counter = ConstCounter::new(sample.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            counter.metric_type(),
        )?)?;
        let mut gauge = |name: &str, help: &str, value: f64| -> Result<(), std::fmt::Error> {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            sample.resident_bytes as f64,
        )?;
        gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", sample.virtual_bytes as f64)?;
        gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            sample.start_time_seconds,
        )?;
        gauge("process_open_fds", "Number of open file descriptors.", sample.open_fds as f64)?;
        if let Some(max) = sample.max_fds {
            gauge("process_max_fds", "Maximum number of open file descriptors.", max as f64)?;
        }
        gauge("process_threads", "Number of OS threads in the process.", sample.threads as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // A command name with a space and a parenthesis, as proc(5) allows.
        let stat = "4242 (we (ird) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 7 0 1000 \
                    104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let sample = parse_stat(stat, 100.0, 4096, 1_700_000_000.0, 12, Some(1024)).unwrap();
        assert_eq!(sample.cpu_seconds, 3.0);
        assert_eq!(sample.threads, 7);
        assert_eq!(sample.start_time_seconds, 1_700_000_010.0);
        assert_eq!(sample.virtual_bytes, 104_857_600);
        assert_eq!(sample.resident_bytes, 2560 * 4096);
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        for stat in ["", "12 (x", "12 (x) S 1 2", "12 (x) S a b c d e f g h i j k l m n o p q r s t u"] {
            assert_eq!(parse_stat(stat, 100.0, 4096, 0.0, 0, None), None, "{stat:?}");
        }
        assert_eq!(boot_time_seconds("cpu 1 2\nbtime 1700000000\n"), Some(1_700_000_000.0));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads() {
        let sample = ProcessSample::read().expect("/proc/self is readable on Linux");
        assert!(sample.threads >= 1 && sample.resident_bytes > 0 && sample.open_fds > 0, "{sample:?}");
    }
}
