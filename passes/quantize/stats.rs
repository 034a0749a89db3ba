//! Streaming statistics of one tensor over the calibration samples, and the
//! ways a quantization range is chosen from them.
//!
//! A tensor's statistics are its exact minimum and maximum and, when a
//! histogram method is asked for, a histogram of `|x|` over `[0, 2^k)` with a
//! fixed number of equal bins. When a larger value arrives, `k` grows and
//! adjacent bins are merged in pairs, which is exact; two histograms of any
//! `k` merge exactly the same way. So the statistics of a set of samples do
//! not depend on how the samples were split between threads or in which
//! order they arrived: calibration is deterministic.
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

/// A histogram of `|x|` over `[0, 2^exp)` with a fixed bin count; see the
/// module doc. Exact zeros are counted apart: zero is always on the grid, so
/// they carry no quantization error, and the spike they make after a Relu
/// would otherwise dominate the entropy search.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    counts: Vec<u64>,
    zeros: u64,
    /// `None` until a nonzero value arrives (zeros all land in bin 0 anyway).
    exp: Option<i32>,
}

impl Histogram {
    /// An empty histogram of `bins` bins (`bins` must be even and at least 2).
    pub fn new(bins: usize) -> Histogram {
        Histogram {
            counts: vec![0; bins],
            zeros: 0,
            exp: None,
        }
    }

    /// The upper end of the covered range, `2^exp` (0 when only zeros arrived).
    pub fn top(&self) -> f64 {
        self.exp.map_or(0.0, |e| 2f64.powi(e))
    }

    /// Bin counts.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Width of one bin.
    pub fn bin_width(&self) -> f64 {
        self.top() / self.counts.len() as f64
    }

    /// Grows the range to `[0, 2^exp)`, merging bins in pairs.
    fn grow_to(&mut self, exp: i32) {
        let Some(cur) = self.exp else {
            self.exp = Some(exp);
            return;
        };
        let n = self.counts.len();
        for _ in cur..exp {
            for i in 0..n / 2 {
                self.counts[i] = self.counts[2 * i] + self.counts[2 * i + 1];
            }
            self.counts[n / 2..].iter_mut().for_each(|c| *c = 0);
        }
        self.exp = Some(cur.max(exp));
    }

    /// Adds finite values whose largest magnitude is `max_abs`.
    pub fn add(&mut self, values: &[f32], max_abs: f32) {
        if max_abs > 0.0 {
            // The smallest power of two strictly above max_abs.
            let exp = (f64::from(max_abs)).log2().floor() as i32 + 1;
            if self.exp.is_none_or(|e| e < exp) {
                self.grow_to(exp);
            }
        }
        let n = self.counts.len();
        let per_unit = if self.top() > 0.0 {
            n as f64 / self.top()
        } else {
            0.0
        };
        for &v in values {
            if v == 0.0 {
                self.zeros += 1;
            } else if v.is_finite() {
                let bin = ((f64::from(v.abs()) * per_unit) as usize).min(n - 1);
                self.counts[bin] += 1;
            }
        }
    }

    /// Adds another histogram of the same bin count.
    pub fn merge(&mut self, other: &Histogram) {
        let mut other = other.clone();
        match (self.exp, other.exp) {
            (Some(a), Some(b)) if a < b => self.grow_to(b),
            (Some(a), Some(b)) if b < a => other.grow_to(a),
            (None, Some(b)) => self.exp = Some(b),
            _ => {}
        }
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
        self.zeros += other.zeros;
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.zeros
    }
}

/// Per-channel sums and largest magnitudes of a tensor along one axis. Sums
/// are kept per sample and added in sample order at the end, so the means do
/// not depend on how samples were spread over threads.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelSums {
    /// The channel axis; negative counts from the end.
    pub axis: i64,
    /// (sample index, per-channel sum of finite values, per-channel count).
    per_sample: Vec<(usize, Vec<f64>, Vec<u64>)>,
    /// Largest finite |x| per channel.
    absmax: Vec<f64>,
}

impl ChannelSums {
    /// No samples yet.
    pub fn new(axis: i64) -> ChannelSums {
        ChannelSums {
            axis,
            per_sample: Vec::new(),
            absmax: Vec::new(),
        }
    }

    /// Adds sample `sample`'s `values` of shape `shape`; a shape without the
    /// axis adds nothing.
    pub fn add(&mut self, sample: usize, values: &[f32], shape: &[usize]) {
        let rank = shape.len() as i64;
        let axis = if self.axis < 0 {
            rank + self.axis
        } else {
            self.axis
        };
        if axis < 0 || axis >= rank {
            return;
        }
        let axis = axis as usize;
        let channels = shape[axis];
        let inner: usize = shape[axis + 1..].iter().product();
        let (mut sums, mut counts) = (vec![0f64; channels], vec![0u64; channels]);
        if self.absmax.len() != channels {
            if !self.absmax.is_empty() {
                return;
            }
            self.absmax = vec![0.0; channels];
        }
        for (i, &v) in values.iter().enumerate() {
            if v.is_finite() {
                let c = (i / inner.max(1)) % channels.max(1);
                sums[c] += f64::from(v);
                counts[c] += 1;
                self.absmax[c] = self.absmax[c].max(f64::from(v.abs()));
            }
        }
        self.per_sample.push((sample, sums, counts));
    }

    /// Adds sums gathered elsewhere.
    pub fn merge(&mut self, other: &ChannelSums) {
        self.per_sample.extend(other.per_sample.iter().cloned());
        if self.absmax.is_empty() {
            self.absmax = other.absmax.clone();
        } else if self.absmax.len() == other.absmax.len() {
            for (a, b) in self.absmax.iter_mut().zip(&other.absmax) {
                *a = a.max(*b);
            }
        }
    }

    /// The largest |x| of every channel; empty when nothing was seen.
    pub fn absmax(&self) -> &[f64] {
        &self.absmax
    }

    /// The mean of every channel over all samples (0 for a channel never
    /// seen); `None` when no sample was seen or samples disagree on the
    /// channel count.
    pub fn means(&self) -> Option<Vec<f64>> {
        let mut order: Vec<&(usize, Vec<f64>, Vec<u64>)> = self.per_sample.iter().collect();
        order.sort_by_key(|(i, _, _)| *i);
        let channels = order.first()?.1.len();
        let (mut sums, mut counts) = (vec![0f64; channels], vec![0u64; channels]);
        for (_, s, n) in order {
            if s.len() != channels {
                return None;
            }
            for c in 0..channels {
                sums[c] += s[c];
                counts[c] += n[c];
            }
        }
        Some(
            sums.iter()
                .zip(&counts)
                .map(|(s, &n)| if n > 0 { s / n as f64 } else { 0.0 })
                .collect(),
        )
    }
}

/// Everything calibration keeps about one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorStats {
    /// Smallest finite value seen.
    pub min: f32,
    /// Largest finite value seen.
    pub max: f32,
    /// Values seen (finite ones).
    pub count: u64,
    /// NaN or infinite values seen (ignored by the range).
    pub non_finite: u64,
    /// Histogram of `|x|`, when a histogram method needs it.
    pub histogram: Option<Histogram>,
    /// Per-channel sums, when bias correction needs the channel means.
    pub channels: Option<ChannelSums>,
}

impl TensorStats {
    /// Empty statistics; `bins` > 0 keeps a histogram of that many bins.
    pub fn new(bins: usize) -> TensorStats {
        TensorStats {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            count: 0,
            non_finite: 0,
            histogram: (bins > 0).then(|| Histogram::new(bins)),
            channels: None,
        }
    }

    /// Adds one sample's values.
    pub fn add(&mut self, values: &[f32]) {
        let (mut lo, mut hi, mut bad) = (f32::INFINITY, f32::NEG_INFINITY, 0u64);
        for &v in values {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            } else {
                bad += 1;
            }
        }
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        self.non_finite += bad;
        self.count += values.len() as u64 - bad;
        if let Some(h) = &mut self.histogram {
            h.add(values, lo.abs().max(hi.abs()).max(0.0));
        }
    }

    /// Adds statistics gathered elsewhere.
    pub fn merge(&mut self, other: &TensorStats) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.count += other.count;
        self.non_finite += other.non_finite;
        if let (Some(a), Some(b)) = (&mut self.histogram, &other.histogram) {
            a.merge(b);
        }
        if let (Some(a), Some(b)) = (&mut self.channels, &other.channels) {
            a.merge(b);
        }
    }

    /// The range `method` picks for quantizing to `grid`. Needs a histogram
    /// for every method but `MinMax`.
    pub fn range(&self, method: RangeMethod, grid: &Grid) -> (f64, f64) {
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
    let mut seen = h.zeros;
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

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // A rough bell shape from the sum of four uniforms, in [-2, 2).
                (0..4)
                    .map(|k| ((x >> (16 * k)) & 0xffff) as f32 / 65536.0 - 0.5)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn statistics_do_not_depend_on_how_samples_are_split() {
        let data: Vec<f32> = lcg(10_000, 7)
            .into_iter()
            .enumerate()
            .map(|(i, v)| v * (1 + i / 2500) as f32)
            .collect();
        let mut whole = TensorStats::new(512);
        for chunk in data.chunks(1000) {
            whole.add(chunk);
        }
        // Two "threads", each taking every other chunk, in reverse order.
        let (mut a, mut b) = (TensorStats::new(512), TensorStats::new(512));
        for (i, chunk) in data.chunks(1000).enumerate().rev() {
            if i % 2 == 0 { &mut a } else { &mut b }.add(chunk);
        }
        b.merge(&a);
        assert_eq!(whole, b);
        assert_eq!(whole.count, 10_000);
    }

    #[test]
    fn histogram_growth_keeps_every_value() {
        let mut h = Histogram::new(8);
        h.add(&[0.1, 0.2, 0.0], 0.2);
        assert_eq!(h.top(), 0.25);
        h.add(&[3.0], 3.0);
        assert_eq!(h.top(), 4.0);
        assert_eq!(h.total(), 4);
        assert_eq!((h.zeros, h.counts()[0]), (1, 2));
        assert_eq!(h.counts()[6], 1);
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

    #[test]
    fn non_finite_values_are_counted_and_ignored() {
        let mut st = TensorStats::new(16);
        st.add(&[1.0, f32::NAN, -2.0, f32::INFINITY]);
        assert_eq!((st.min, st.max, st.count, st.non_finite), (-2.0, 1.0, 2, 2));
    }

    #[test]
    fn channel_means_do_not_depend_on_merge_order() {
        // Two samples of shape [1, 2, 2]: channel 0 then channel 1.
        let samples = [[1.0f32, 3.0, 10.0, 30.0], [0.1, 0.2, 0.3, f32::NAN]];
        let mut one = ChannelSums::new(1);
        for (i, s) in samples.iter().enumerate() {
            one.add(i, s, &[1, 2, 2]);
        }
        let (mut a, mut b) = (ChannelSums::new(1), ChannelSums::new(1));
        a.add(1, &samples[1], &[1, 2, 2]);
        b.add(0, &samples[0], &[1, 2, 2]);
        a.merge(&b);
        let means = one.means().unwrap();
        assert_eq!(a.means().unwrap(), means);
        // The NaN is skipped: channel 1 averages 10, 30 and 0.3.
        assert!((means[0] - 1.075).abs() < 1e-6 && (means[1] - 40.3 / 3.0).abs() < 1e-6);
        // A shape without the axis adds nothing.
        let mut c = ChannelSums::new(3);
        c.add(0, &samples[0], &[1, 2, 2]);
        assert_eq!(c.means(), None);
        // Largest magnitudes, along the last axis counted from the end.
        assert_eq!(a.absmax(), &[3.0, 30.0]);
        let mut last = ChannelSums::new(-1);
        last.add(0, &samples[0], &[1, 2, 2]);
        assert_eq!(last.absmax(), &[10.0, 30.0]);
    }
}
