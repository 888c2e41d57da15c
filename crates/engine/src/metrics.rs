//! Latency histograms in Prometheus' text format (cumulative buckets, `_sum`, `_count`), so
//! that a p99 can be read, not only a total.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds in seconds, from a cached chip (milliseconds) to a species-wide job (hours).
pub const BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, secs: f64) {
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn since(&self, start: std::time::Instant) {
        self.observe(start.elapsed().as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The series of one labelled histogram (`labels` like `stage="fetch"`), without the
    /// `# HELP` / `# TYPE` lines, which a family writes once.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// Per-stage latencies of the pipeline.
#[derive(Debug, Default)]
pub struct StageSeconds {
    /// One chip download, all attempts.
    pub fetch: Histogram,
    /// Decoding one chip.
    pub decode: Histogram,
    /// One extraction, waiting in the queue included.
    pub extract: Histogram,
    /// One matching job (a chunk of pairs), waiting included.
    pub matching: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_sum_counts() {
        let h = Histogram::default();
        for s in [0.0005, 0.02, 0.02, 7.0, 5000.0] {
            h.observe(s);
        }
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "stage=\"fetch\"");
        assert!(out.contains("x_seconds_bucket{stage=\"fetch\",le=\"0.001\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{stage=\"fetch\",le=\"0.025\"} 3\n"));
        assert!(out.contains("x_seconds_bucket{stage=\"fetch\",le=\"10\"} 4\n"));
        assert!(out.contains("x_seconds_bucket{stage=\"fetch\",le=\"3600\"} 4\n"));
        assert!(out.contains("x_seconds_bucket{stage=\"fetch\",le=\"+Inf\"} 5\n"));
        assert!(out.contains("x_seconds_count{stage=\"fetch\"} 5\n"));
    }
}
