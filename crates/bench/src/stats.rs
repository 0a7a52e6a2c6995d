//! Percentiles of measured samples.

use std::time::Duration;

pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn millis(samples: &[Duration]) -> Vec<f64> {
    samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect()
}

/// `p50 X ms, p99 Y ms` of durations.
pub fn summary(samples: &[Duration]) -> String {
    let ms = millis(samples);
    format!(
        "p50 {:7.1} ms   p99 {:7.1} ms   (n={})",
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.len()
    )
}
