//! Streaming statistics of one tensor over the calibration samples: exact
//! minimum and maximum, a mergeable histogram of `|x|`, and per-channel sums
//! and largest magnitudes. Any pass that observes tensors through
//! [`super::observe`] gets them; quantize chooses its ranges from them.
//!
//! The histogram covers `[0, 2^k)` with a fixed number of equal bins. When a
//! larger value arrives, `k` grows and adjacent bins are merged in pairs,
//! which is exact; two histograms of any `k` merge exactly the same way. So
//! the statistics of a set of samples do not depend on how the samples were
//! split between threads or in which order they arrived: calibration is
//! deterministic.

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

    /// Exact zeros seen (counted apart from the bins).
    pub fn zeros(&self) -> u64 {
        self.zeros
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

    /// Values counted (zeros included).
    pub fn total(&self) -> u64 {
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
    /// Per-channel sums and largest magnitudes, when asked for (channel means, absmax).
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Seeded bell-shaped test data in [-2, 2).
    pub(crate) fn lcg(n: usize, seed: u64) -> Vec<f32> {
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
        assert_eq!((h.zeros(), h.counts()[0]), (1, 2));
        assert_eq!(h.counts()[6], 1);
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
