//! The ways a quantization range is chosen from a tensor's calibration
//! statistics ([`TensorStats`], gathered by `calib`).
//!
//! Every method picks a clipping threshold `t` on `|x|`; the range is then
//! `[max(min, -t), min(max, t)]`, widened to contain 0 (zero must be exactly
//! representable):
//! - `minmax`: `t = max|x|` (no clipping);
//! - `percentile`: the smallest bin edge below which `p`% of `|x|` lies;
//! - `entropy`: the threshold whose quantized histogram is closest to the
//!   clipped one in KL divergence (the TensorRT calibration idea);
//! - `mse`: the threshold minimising the expected squared error of
//!   quantize-dequantize (rounding error `s²/12` per value inside the range,
//!   the squared distance to the edge for clipped values).

use crate::passes::calib::stats::{Histogram, TensorStats};

/// How a range is chosen from a tensor's statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeMethod {
    /// The observed minimum and maximum.
    MinMax,
    /// Clip at the given percentile of `|x|` (e.g. 99.999).
    Percentile(f64),
    /// KL-divergence threshold search.
    Entropy,
    /// Least expected squared quantization error.
    Mse,
}

/// The integer grid a range is mapped to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// Smallest integer.
    pub qmin: i64,
    /// Largest integer.
    pub qmax: i64,
    /// Symmetric: zero point in the middle, range `[-a, a]`.
    pub symmetric: bool,
}

impl Grid {
    /// Scale and zero point for `[lo, hi]` (widened to contain 0). A range of
    /// width 0 gets scale 1, so that zeros stay zeros.
    pub fn params(&self, lo: f64, hi: f64) -> (f32, i64) {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let levels = (self.qmax - self.qmin) as f64;
        if self.symmetric {
            let a = lo.abs().max(hi.abs());
            let scale = if a > 0.0 { 2.0 * a / levels } else { 1.0 };
            let zp = ((self.qmin + self.qmax) as f64 / 2.0).round_ties_even() as i64;
            return (scale as f32, zp);
        }
        if hi - lo <= 0.0 {
            return (1.0, self.qmin.max(0).min(self.qmax));
        }
        let scale = (hi - lo) / levels;
        let zp = (self.qmin as f64 - lo / scale).round_ties_even() as i64;
        (scale as f32, zp.clamp(self.qmin, self.qmax))
    }
}

/// The range a method picks from a tensor's statistics.
pub trait Ranges {
    /// The range `method` picks for quantizing to `grid`. Needs a histogram
    /// for every method but `MinMax`.
    fn range(&self, method: RangeMethod, grid: &Grid) -> (f64, f64);
}

impl Ranges for TensorStats {
    fn range(&self, method: RangeMethod, grid: &Grid) -> (f64, f64) {
        if self.count == 0 {
            return (0.0, 0.0);
        }
        let (lo, hi) = (f64::from(self.min).min(0.0), f64::from(self.max).max(0.0));
        let t = match (method, &self.histogram) {
            (RangeMethod::MinMax, _) | (_, None) => return (lo, hi),
            (RangeMethod::Percentile(p), Some(h)) => percentile(h, p),
            // KL over a sparse histogram is noise: few values keep their range.
            (RangeMethod::Entropy, Some(h)) if self.count < 4 * h.counts().len() as u64 => {
                return (lo, hi)
            }
            (RangeMethod::Entropy, Some(h)) => entropy(h, levels_for_magnitude(lo, hi, grid)),
            (RangeMethod::Mse, Some(h)) => mse(h, lo, hi, grid),
        };
        let t = t.min(lo.abs().max(hi));
        (lo.max(-t), hi.min(t))
    }
}

/// How many grid levels cover `[0, t]`: all of them when the data is
/// one-sided and the grid asymmetric, half otherwise.
fn levels_for_magnitude(lo: f64, _hi: f64, grid: &Grid) -> usize {
    let levels = (grid.qmax - grid.qmin + 1) as usize;
    if lo >= 0.0 && !grid.symmetric {
        levels
    } else {
        levels / 2
    }
}

/// The smallest bin edge below which `p`% of the values lie.
fn percentile(h: &Histogram, p: f64) -> f64 {
    let total = h.total();
    let want = (total as f64 * p / 100.0).ceil() as u64;
    let mut seen = h.zeros();
    for (i, &c) in h.counts().iter().enumerate() {
        seen += c;
        if seen >= want {
            return (i + 1) as f64 * h.bin_width();
        }
    }
    h.top()
}

/// KL-divergence threshold search over bin edges (see the module doc).
fn entropy(h: &Histogram, levels: usize) -> f64 {
    let counts = h.counts();
    // Only the occupied part of the histogram matters.
    let used = counts.iter().rposition(|&c| c > 0).map_or(0, |i| i + 1);
    if used <= levels {
        return used as f64 * h.bin_width();
    }
    let mut best = (f64::INFINITY, used);
    let mut p = vec![0f64; used];
    let mut q = vec![0f64; used];
    for edge in levels..=used {
        // P: the histogram clipped at `edge`, outliers added to the last bin.
        for (dst, &c) in p.iter_mut().zip(&counts[..edge]) {
            *dst = c as f64;
        }
        p[edge - 1] += counts[edge..used].iter().sum::<u64>() as f64;
        // Q: P quantized to `levels` groups, each group's mass spread evenly
        // over its nonzero bins.
        q[..edge].iter_mut().for_each(|v| *v = 0.0);
        for g in 0..levels {
            let start = g * edge / levels;
            let end = ((g + 1) * edge / levels).max(start + 1).min(edge);
            // Q is built from the histogram without the outliers: clipping
            // shows up as P's spike in the last bin that Q lacks.
            let mass: f64 = counts[start..end].iter().map(|&c| c as f64).sum();
            let nonzero = (start..end).filter(|&i| counts[i] > 0).count();
            if nonzero > 0 {
                for i in start..end {
                    if counts[i] > 0 {
                        q[i] = mass / nonzero as f64;
                    }
                }
            }
        }
        let (ps, qs): (f64, f64) = (p[..edge].iter().sum(), q[..edge].iter().sum());
        let mut kl = 0.0;
        for i in 0..edge {
            if p[i] > 0.0 {
                let (pi, qi) = (p[i] / ps, q[i] / qs);
                kl += pi * (pi / qi.max(f64::MIN_POSITIVE)).ln();
            }
        }
        if kl < best.0 {
            best = (kl, edge);
        }
    }
    best.1 as f64 * h.bin_width()
}

/// The threshold with the least expected squared quantize-dequantize error.
fn mse(h: &Histogram, lo: f64, hi: f64, grid: &Grid) -> f64 {
    let counts = h.counts();
    let used = counts.iter().rposition(|&c| c > 0).map_or(0, |i| i + 1);
    let w = h.bin_width();
    if used == 0 {
        return 0.0;
    }
    let mut best = (f64::INFINITY, used);
    // Candidates from 1/64 of the occupied range up to all of it.
    for edge in (used / 64).max(1)..=used {
        let t = edge as f64 * w;
        let (s, _) = grid.params(lo.max(-t), hi.min(t));
        let s = f64::from(s);
        let mut err = 0.0;
        for (i, &c) in counts[..used].iter().enumerate() {
            if c == 0 {
                continue;
            }
            let center = (i as f64 + 0.5) * w;
            err += c as f64
                * if center <= t {
                    s * s / 12.0
                } else {
                    (center - t) * (center - t)
                };
        }
        if err < best.0 {
            best = (err, edge);
        }
    }
    best.1 as f64 * w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::calib::stats::tests::lcg;

    const U8: Grid = Grid {
        qmin: 0,
        qmax: 255,
        symmetric: false,
    };
    const I8_SYM: Grid = Grid {
        qmin: -127,
        qmax: 127,
        symmetric: true,
    };

    #[test]
    fn scale_and_zero_point_follow_the_onnxruntime_formulas() {
        let (s, zp) = U8.params(-1.0, 3.0);
        assert!((s - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(zp, 64);
        // A one-sided range gets zero point qmin: Relu folds exactly.
        assert_eq!(U8.params(0.0, 6.0).1, 0);
        let (s, zp) = I8_SYM.params(-0.5, 2.0);
        assert!((s - 2.0 / 127.0).abs() < 1e-7);
        assert_eq!(zp, 0);
        // The range always contains 0; an empty one gets scale 1.
        assert_eq!(U8.params(2.0, 2.0).1, 0);
        assert_eq!(U8.params(0.0, 0.0), (1.0, 0));
    }

    #[test]
    fn percentile_clips_rare_outliers_and_minmax_does_not() {
        let mut data = lcg(100_000, 3);
        data[17] = 50.0;
        let mut st = TensorStats::new(2048);
        st.add(&data);
        assert_eq!(st.range(RangeMethod::MinMax, &U8).1, 50.0);
        let (lo, hi) = st.range(RangeMethod::Percentile(99.99), &U8);
        assert!((1.0..2.5).contains(&hi), "{hi}");
        assert!((-2.5..-1.0).contains(&lo), "{lo}");
        // Entropy clips the lone outlier; mse weighs its squared clipping
        // error against the rounding error of 100k values and clips less.
        let (_, hi) = st.range(RangeMethod::Entropy, &I8_SYM);
        assert!(hi < 10.0, "entropy kept the outlier: {hi}");
        let (_, hi) = st.range(RangeMethod::Mse, &I8_SYM);
        assert!(hi < 50.0, "mse kept the whole range: {hi}");
    }

    #[test]
    fn mse_picks_a_lower_error_than_minmax_on_heavy_tails() {
        // Laplace-like data with a long tail.
        let data: Vec<f32> = lcg(50_000, 11)
            .iter()
            .map(|v| v.signum() * v.abs().powi(3) * 4.0)
            .collect();
        let mut st = TensorStats::new(2048);
        st.add(&data);
        let err = |(lo, hi): (f64, f64)| {
            let (s, zp) = I8_SYM.params(lo, hi);
            let s = f64::from(s);
            data.iter()
                .map(|&v| {
                    let q = ((f64::from(v) / s).round_ties_even() + zp as f64).clamp(-127.0, 127.0);
                    let d = (q - zp as f64) * s - f64::from(v);
                    d * d
                })
                .sum::<f64>()
        };
        let minmax = err(st.range(RangeMethod::MinMax, &I8_SYM));
        let mse = err(st.range(RangeMethod::Mse, &I8_SYM));
        assert!(mse < minmax, "mse {mse} vs minmax {minmax}");
    }

    #[test]
    fn entropy_is_not_fooled_by_the_zeros_of_a_relu() {
        // Half zeros, half a bell's positive side stretched to 8.
        let data: Vec<f32> = lcg(100_000, 5)
            .iter()
            .map(|v| if *v < 0.0 { 0.0 } else { v * 4.0 })
            .collect();
        let mut st = TensorStats::new(2048);
        st.add(&data);
        let (_, hi) = st.range(RangeMethod::Entropy, &U8);
        assert!(
            hi > 0.5 * f64::from(st.max),
            "clipped at {hi} of {}",
            st.max
        );
    }
}
