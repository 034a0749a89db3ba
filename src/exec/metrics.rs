//! How close one output is to another: max and mean absolute error, SQNR,
//! cosine similarity, top-1 agreement, and non-finite values.
//!
//! Each sample is compared on its own ([`compare`]) and the per-sample
//! statistics are merged in sample order, so the numbers never depend on how
//! many threads ran the samples. Positions where either side is NaN or
//! infinite are counted, never folded into the averages: the error metrics
//! cover the positions where both are finite, and a position where the two
//! sides disagree about being finite is a mismatch that fails validation.
//!
//! - SQNR (dB) = 10 log10( sum a^2 / sum (a - b)^2 ), `a` the reference;
//!   +inf when the outputs are identical.
//! - cosine = a.b / (|a| |b|), 1 when both are all zeros.
//! - top-1 agreement: for outputs that look like class scores (floats of
//!   rank 2 or 3 whose last axis has at least 2 entries), the share of rows
//!   (positions of the other axes) whose argmax over the last axis is the same.

use serde::{Serialize, Serializer};

use crate::data::Array;

/// Statistics of one output over one or more samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Elements compared (finite on both sides).
    pub compared: u64,
    /// Non-finite elements in the reference.
    pub nonfinite_a: u64,
    /// Non-finite elements in the candidate.
    pub nonfinite_b: u64,
    /// Positions where exactly one side is non-finite, or both are but differ.
    pub nonfinite_mismatch: u64,
    /// Largest absolute difference.
    pub max_abs: f64,
    /// Sum of absolute differences.
    pub sum_abs: f64,
    /// Sum of squared reference values.
    pub sum_a_sq: f64,
    /// Sum of squared candidate values.
    pub sum_b_sq: f64,
    /// Sum of squared differences.
    pub sum_noise_sq: f64,
    /// Sum of products.
    pub dot: f64,
    /// Rows compared for top-1 (0 when the output is not class scores).
    pub top1_rows: u64,
    /// Rows whose argmax agree.
    pub top1_agree: u64,
    /// Set when the two sides' shapes or types differ.
    pub mismatch: Option<String>,
}

/// True for outputs whose last axis plausibly holds class scores.
pub fn looks_like_scores(a: &Array) -> bool {
    a.dtype.is_float() && matches!(a.shape.len(), 2 | 3) && a.shape.last().is_some_and(|&n| n >= 2)
}

fn argmax(row: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// Compares one sample's output `b` against the reference `a`.
pub fn compare(a: &Array, b: &Array) -> Stats {
    let mut s = Stats::default();
    if a.shape != b.shape {
        s.mismatch = Some(format!("shape {:?} vs {:?}", a.shape, b.shape));
        return s;
    }
    if a.dtype != b.dtype {
        s.mismatch = Some(format!("type {} vs {}", a.dtype, b.dtype));
        return s;
    }
    let av = a.to_f64();
    let bv = b.to_f64();
    for (&x, &y) in av.iter().zip(&bv) {
        let (fx, fy) = (x.is_finite(), y.is_finite());
        if !fx {
            s.nonfinite_a += 1;
        }
        if !fy {
            s.nonfinite_b += 1;
        }
        if fx && fy {
            let d = (x - y).abs();
            s.compared += 1;
            s.max_abs = s.max_abs.max(d);
            s.sum_abs += d;
            s.sum_a_sq += x * x;
            s.sum_b_sq += y * y;
            s.sum_noise_sq += d * d;
            s.dot += x * y;
        } else {
            let same = (x.is_nan() && y.is_nan()) || x == y;
            if !same {
                s.nonfinite_mismatch += 1;
            }
        }
    }
    if looks_like_scores(a) {
        let n = *a.shape.last().unwrap_or(&1);
        for (ra, rb) in av.chunks_exact(n).zip(bv.chunks_exact(n)) {
            s.top1_rows += 1;
            if argmax(ra) == argmax(rb) {
                s.top1_agree += 1;
            }
        }
    }
    s
}

impl Stats {
    /// Adds another sample's statistics.
    pub fn merge(&mut self, o: &Stats) {
        self.compared += o.compared;
        self.nonfinite_a += o.nonfinite_a;
        self.nonfinite_b += o.nonfinite_b;
        self.nonfinite_mismatch += o.nonfinite_mismatch;
        self.max_abs = self.max_abs.max(o.max_abs);
        self.sum_abs += o.sum_abs;
        self.sum_a_sq += o.sum_a_sq;
        self.sum_b_sq += o.sum_b_sq;
        self.sum_noise_sq += o.sum_noise_sq;
        self.dot += o.dot;
        self.top1_rows += o.top1_rows;
        self.top1_agree += o.top1_agree;
        if self.mismatch.is_none() {
            self.mismatch.clone_from(&o.mismatch);
        }
    }

    /// Mean absolute error over compared elements.
    pub fn mean_abs(&self) -> f64 {
        if self.compared == 0 {
            0.0
        } else {
            self.sum_abs / self.compared as f64
        }
    }

    /// Signal-to-quantization-noise ratio in dB.
    pub fn sqnr_db(&self) -> f64 {
        if self.sum_noise_sq == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (self.sum_a_sq / self.sum_noise_sq).log10()
        }
    }

    /// Cosine similarity.
    pub fn cosine(&self) -> f64 {
        let norms = (self.sum_a_sq * self.sum_b_sq).sqrt();
        if self.sum_a_sq == 0.0 && self.sum_b_sq == 0.0 {
            1.0
        } else if norms == 0.0 {
            0.0
        } else {
            (self.dot / norms).clamp(-1.0, 1.0)
        }
    }

    /// Share of rows whose argmax agree, when the output is class scores.
    pub fn top1(&self) -> Option<f64> {
        (self.top1_rows > 0).then(|| self.top1_agree as f64 / self.top1_rows as f64)
    }
}

/// Writes non-finite numbers as the strings `"inf"`, `"-inf"`, `"nan"`:
/// JSON has no literal for them, and dropping them would hide exactly the
/// values a reader must see.
pub fn ser_f64<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else if v.is_nan() {
        s.serialize_str("nan")
    } else if *v > 0.0 {
        s.serialize_str("inf")
    } else {
        s.serialize_str("-inf")
    }
}

/// [`ser_f64`] for optional values.
pub fn ser_opt_f64<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => ser_f64(v, s),
        None => s.serialize_none(),
    }
}

/// A serialisable wrapper used in tables and reports.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Num(#[serde(serialize_with = "ser_f64")] pub f64);

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(shape: Vec<usize>, v: &[f32]) -> Array {
        Array::from_f32(shape, v)
    }

    #[test]
    fn identical_outputs_have_infinite_sqnr_and_unit_cosine() {
        let a = arr(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let s = compare(&a, &a);
        assert_eq!(s.sqnr_db(), f64::INFINITY);
        assert_eq!(s.cosine(), 1.0);
        assert_eq!((s.max_abs, s.top1()), (0.0, Some(1.0)));
    }

    #[test]
    fn metrics_follow_their_definitions() {
        let a = arr(vec![1, 4], &[1.0, 0.0, 0.0, 0.0]);
        let b = arr(vec![1, 4], &[0.9, 0.0, 0.0, 0.1]);
        let s = compare(&a, &b);
        assert!((s.max_abs - 0.1).abs() < 1e-6);
        assert!((s.mean_abs() - 0.05).abs() < 1e-6);
        // signal 1, noise 0.01 + 0.01 = 0.02 -> 10 log10(50) = 16.99 dB.
        assert!((s.sqnr_db() - 16.9897).abs() < 1e-3, "{}", s.sqnr_db());
        assert!((s.cosine() - 0.9 / (0.82f64).sqrt()).abs() < 1e-6);
        // Argmax stays at 0.
        assert_eq!(s.top1(), Some(1.0));
        let flipped = arr(vec![1, 4], &[0.1, 0.0, 0.0, 0.9]);
        assert_eq!(compare(&a, &flipped).top1(), Some(0.0));
        // Rank 4 feature maps are not class scores.
        assert_eq!(
            compare(
                &arr(vec![1, 1, 2, 2], &[0.0; 4]),
                &arr(vec![1, 1, 2, 2], &[0.0; 4])
            )
            .top1(),
            None
        );
    }

    #[test]
    fn non_finite_values_are_counted_not_averaged() {
        let a = arr(vec![4], &[1.0, f32::NAN, f32::INFINITY, 2.0]);
        let b = arr(vec![4], &[1.0, f32::NAN, 5.0, f32::NAN]);
        let s = compare(&a, &b);
        assert_eq!(
            (s.nonfinite_a, s.nonfinite_b, s.nonfinite_mismatch),
            (2, 2, 2)
        );
        assert_eq!(s.compared, 1);
        assert!(s.max_abs.is_finite());
    }

    #[test]
    fn shape_mismatch_is_reported() {
        let s = compare(&arr(vec![2], &[0.0; 2]), &arr(vec![3], &[0.0; 3]));
        assert!(s.mismatch.unwrap().contains("[2] vs [3]"));
    }

    #[test]
    fn merging_is_the_same_as_comparing_everything() {
        let a1 = arr(vec![1, 2], &[1.0, 2.0]);
        let b1 = arr(vec![1, 2], &[1.5, 2.0]);
        let a2 = arr(vec![1, 2], &[3.0, -1.0]);
        let b2 = arr(vec![1, 2], &[3.0, -2.0]);
        let mut m = compare(&a1, &b1);
        m.merge(&compare(&a2, &b2));
        let all = compare(
            &arr(vec![2, 2], &[1.0, 2.0, 3.0, -1.0]),
            &arr(vec![2, 2], &[1.5, 2.0, 3.0, -2.0]),
        );
        assert_eq!(m, all);
    }

    #[test]
    fn non_finite_numbers_serialise_as_strings() {
        let v = serde_json::to_string(&[Num(f64::INFINITY), Num(f64::NAN), Num(1.5)]).unwrap();
        assert_eq!(v, r#"["inf","nan",1.5]"#);
    }
}
