//! Small statistics for the benchmark: medians, percentiles and spreads of samples.

use serde_json::{Value, json};

/// The `p` quantile (0..=1) of `v` (nearest rank on the sorted samples); NaN when empty.
pub fn pct(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

pub fn median(v: &[f64]) -> f64 {
    pct(v, 0.5)
}

/// Median, extremes and quartiles of `v`, with the samples themselves.
pub fn spread(v: &[f64]) -> Value {
    json!({
        "n": v.len(),
        "median": num(median(v)),
        "min": num(pct(v, 0.0)),
        "p25": num(pct(v, 0.25)),
        "p75": num(pct(v, 0.75)),
        "max": num(pct(v, 1.0)),
        "samples": v.iter().map(|x| num(*x)).collect::<Vec<_>>(),
    })
}

/// Latency percentiles (ms) of repair trials.
pub fn latency(ms: &[f64], missed: usize) -> Value {
    json!({
        "trials": ms.len(),
        "missed": missed,
        "p50": num(pct(ms, 0.5)),
        "p90": num(pct(ms, 0.9)),
        "p99": num(pct(ms, 0.99)),
        "max": num(pct(ms, 1.0)),
    })
}

/// Per-pair ratios `a[i] / b[i]`.
pub fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter(|(_, b)| **b > 0.0)
        .map(|(a, b)| a / b)
        .collect()
}

/// A finite number as JSON, else null; rounded to a microsecond-ish precision.
pub fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}
