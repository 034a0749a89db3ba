//! The k-th smallest of a stream of keys without gathering them: a radix
//! selection over 16-bit digits, one histogram per pass over the stream
//! (65,536 counters), finished by gathering the few candidates left once they
//! number at most [`GATHER`]. Memory is the histogram, never a copy of the
//! keys; a stream of `n` keys is read at most five times.
//!
//! Keys are `u64` in the order [`f64::total_cmp`] gives ([`order_key`]), so the
//! selection picks exactly what sorting the scores would.

/// Candidates left after which the rest is selected in memory.
pub const GATHER: usize = 1 << 16;

/// A `u64` whose unsigned order is `f64::total_cmp`'s order of `x` (equal keys
/// exactly when the bits are equal).
pub fn order_key(x: f64) -> u64 {
    let b = x.to_bits();
    // Negative numbers (sign set) reverse; positive ones go above them.
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

/// The key of rank `k` (0-based: `k` keys are smaller or equal and earlier)
/// among the keys `stream` delivers. `stream` is called once per pass and must
/// deliver the same keys each time; it returns an error to stop. `None` when
/// the stream holds at most `k` keys.
pub fn kth_key<E>(
    k: usize,
    mut stream: impl FnMut(&mut dyn FnMut(u64)) -> Result<(), E>,
) -> Result<Option<u64>, E> {
    let mut rank = k;
    let mut prefix = 0u64;
    let mut hist = vec![0usize; 1 << 16];
    for level in 0..4u32 {
        let shift = 48 - 16 * level;
        // The bits above this digit, fixed by the levels before.
        let high = if level == 0 {
            0
        } else {
            u64::MAX << (shift + 16)
        };
        hist.iter_mut().for_each(|h| *h = 0);
        stream(&mut |key| {
            if key & high == prefix {
                hist[((key >> shift) & 0xffff) as usize] += 1;
            }
        })?;
        let mut digit = 0;
        loop {
            match hist.get(digit) {
                None => return Ok(None),
                Some(&c) if c <= rank => {
                    rank -= c;
                    digit += 1;
                }
                Some(_) => break,
            }
        }
        prefix |= (digit as u64) << shift;
        let left = hist[digit];
        if shift > 0 && left <= GATHER {
            let mask = u64::MAX << shift;
            let mut cand = Vec::with_capacity(left);
            stream(&mut |key| {
                if key & mask == prefix {
                    cand.push(key);
                }
            })?;
            if rank >= cand.len() {
                // The stream changed between passes.
                return Ok(None);
            }
            let (_, &mut key, _) = cand.select_nth_unstable(rank);
            return Ok(Some(key));
        }
    }
    Ok(Some(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 11
        }
    }

    fn select(keys: &[u64], k: usize) -> Option<u64> {
        kth_key(k, |f: &mut dyn FnMut(u64)| {
            keys.iter().for_each(|&x| f(x));
            Ok::<(), ()>(())
        })
        .unwrap()
    }

    #[test]
    fn order_key_follows_total_cmp() {
        let xs = [
            f64::NEG_INFINITY,
            -1e300,
            -1.0,
            -f64::MIN_POSITIVE,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            1e-300,
            0.5,
            1.0,
            f64::INFINITY,
            f64::NAN,
            -f64::NAN,
        ];
        for a in xs {
            for b in xs {
                assert_eq!(
                    order_key(a).cmp(&order_key(b)),
                    a.total_cmp(&b),
                    "{a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn kth_is_what_a_sort_gives() {
        let mut next = lcg(5);
        // Spread keys, clustered keys (deep radix levels), many ties, all equal.
        let sets: Vec<Vec<u64>> = vec![
            (0..5000).map(|_| next()).collect(),
            (0..200_000)
                .map(|_| 0xabcd_0000_0000 + next() % 70_000)
                .collect(),
            (0..100_000).map(|_| next() % 7).collect(),
            vec![42; 300],
            (0..3000)
                .map(|_| order_key((next() % 1000) as f64 / 7.0 - 50.0))
                .collect(),
            vec![9],
        ];
        for keys in sets {
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            let n = keys.len();
            for k in [0, 1, n / 3, n / 2, n - 1].into_iter().filter(|&k| k < n) {
                assert_eq!(select(&keys, k), Some(sorted[k]), "n {n} k {k}");
            }
            assert_eq!(select(&keys, n), None);
        }
    }
}
