//! Request latencies of the load generator, split by outcome.

use hdrhistogram::Histogram;
use ledgerbus_codec::ResultCode;

/// Request latencies, in µs: all of them (the figures and the `.hgrm`), and split by
/// outcome, since a refusal can be decided faster or slower than an application.
#[derive(Clone)]
pub struct Latency {
    /// Every answered request.
    pub all: Histogram<u64>,
    /// Requests whose transfers were all accepted.
    pub accepted: Histogram<u64>,
    /// Requests with at least one transfer rejected by a rule.
    pub rejected: Histogram<u64>,
}

impl Latency {
    /// Empty histograms.
    pub fn new() -> Latency {
        Latency { all: new_histogram(), accepted: new_histogram(), rejected: new_histogram() }
    }

    /// Records one request's latency under its outcome.
    pub fn record(&mut self, micros: u64, results: &[Option<ResultCode>]) {
        let _ = self.all.record(micros);
        let refused = results.iter().any(|r| {
            matches!(r, Some(code) if !matches!(code, ResultCode::Ok | ResultCode::Exists | ResultCode::Busy))
        });
        let _ = if refused { self.rejected.record(micros) } else { self.accepted.record(micros) };
    }

    /// Adds another connection's latencies.
    pub fn add(&mut self, other: &Latency) {
        let _ = self.all.add(&other.all);
        let _ = self.accepted.add(&other.accepted);
        let _ = self.rejected.add(&other.rejected);
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}
