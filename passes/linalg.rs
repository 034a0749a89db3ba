//! Dense linear algebra for the passes, in one place: Cholesky factors,
//! symmetric positive-definite solves, symmetric eigendecompositions and the
//! thin SVD. Everything goes through `faer` (pure Rust, no LAPACK); no other
//! file of the passes writes a factorization by hand.
//!
//! Matrices cross this boundary as row-major `f64` slices with their sizes,
//! so the passes never see faer's types. The kernels run sequentially: the
//! passes parallelise over layers and samples themselves, and a result never
//! depends on the number of threads.

use faer::{Mat, MatRef, Side};

/// A row-major `rows × cols` matrix as faer's column-major `Mat`.
fn to_mat(a: &[f64], rows: usize, cols: usize) -> Mat<f64> {
    debug_assert_eq!(a.len(), rows * cols);
    Mat::from_fn(rows, cols, |i, j| a[i * cols + j])
}

/// A faer matrix back to row-major.
fn from_mat(m: MatRef<'_, f64>) -> Vec<f64> {
    let (rows, cols) = (m.nrows(), m.ncols());
    let mut out = vec![0f64; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            out[i * cols + j] = m[(i, j)];
        }
    }
    out
}

/// The lower Cholesky factor `L` of the symmetric `n × n` matrix `a`
/// (`a = L Lᵀ`, only the lower triangle of `a` is read), row-major; `None`
/// when `a` is not positive definite or holds non-finite values.
pub fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    if a.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let m = to_mat(a, n, n);
    let llt = m.as_ref().llt(Side::Lower).ok()?;
    Some(from_mat(llt.L()))
}

/// Solves `a · x = b` for the symmetric positive-definite `n × n` matrix `a`
/// and the `n × m` right-hand side `b` (both row-major); `None` when `a` is
/// not positive definite.
pub fn solve_spd(a: &[f64], n: usize, b: &[f64], m: usize) -> Option<Vec<f64>> {
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return None;
    }
    let llt = to_mat(a, n, n).as_ref().llt(Side::Lower).ok()?;
    let mut x = to_mat(b, n, m);
    use faer::linalg::solvers::SolveCore;
    llt.solve_in_place_with_conj(faer::Conj::No, x.as_mut());
    Some(from_mat(x.as_ref()))
}

/// The inverse of the lower-triangular `n × n` matrix `l` (row-major).
pub fn lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    let lm = to_mat(l, n, n);
    let mut x = Mat::<f64>::identity(n, n);
    faer::linalg::triangular_solve::solve_lower_triangular_in_place(
        lm.as_ref(),
        x.as_mut(),
        faer::Par::Seq,
    );
    from_mat(x.as_ref())
}

/// The upper-triangular `U` with `Uᵀ U = a⁻¹` for the symmetric positive
/// definite `n × n` matrix `a` (row-major; `None` when it is not positive
/// definite): the factor GPTQ and SparseGPT walk column by column, `U_ii`
/// and row `i` of `U` giving the OBS update of the weights after `i`.
///
/// With `J` the order reversal and `J a J = L Lᵀ`, `a = R Rᵀ` for the upper
/// `R = J L J`, so `a⁻¹ = R⁻ᵀ R⁻¹` and `U = R⁻¹ = J L⁻¹ J`.
pub fn inverse_upper_cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut rev = vec![0f64; n * n];
    for r in 0..n {
        for c in 0..n {
            rev[r * n + c] = a[(n - 1 - r) * n + (n - 1 - c)];
        }
    }
    let li = lower_inverse(&cholesky(&rev, n)?, n);
    let mut u = vec![0f64; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = li[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    Some(u)
}

/// A thin singular value decomposition `a = U · diag(s) · Vᵀ` of a
/// `rows × cols` matrix, singular values in non-increasing order.
#[derive(Debug, Clone, PartialEq)]
pub struct Svd {
    /// `rows × k` left singular vectors, row-major (`k = min(rows, cols)`).
    pub u: Vec<f64>,
    /// The `k` singular values, largest first.
    pub s: Vec<f64>,
    /// `k × cols` right singular vectors transposed (`Vᵀ`), row-major.
    pub vt: Vec<f64>,
    /// Rows of `a`.
    pub rows: usize,
    /// Columns of `a`.
    pub cols: usize,
}

impl Svd {
    /// The number of singular values (`min(rows, cols)`).
    pub fn k(&self) -> usize {
        self.s.len()
    }
}

/// The thin SVD of the row-major `rows × cols` matrix `a`; `None` when it
/// holds non-finite values or the iteration does not converge.
pub fn svd(a: &[f64], rows: usize, cols: usize) -> Option<Svd> {
    if a.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let m = to_mat(a, rows, cols);
    let d = m.as_ref().thin_svd().ok()?;
    let k = rows.min(cols);
    let s: Vec<f64> = (0..k).map(|i| d.S()[i]).collect();
    let v = d.V();
    let mut vt = vec![0f64; k * cols];
    for i in 0..k {
        for j in 0..cols {
            vt[i * cols + j] = v[(j, i)];
        }
    }
    Some(Svd {
        u: from_mat(d.U()),
        s,
        vt,
        rows,
        cols,
    })
}

/// A truncated SVD keeping the `r` largest singular triplets of the row-major
/// `rows × cols` matrix `a`, by randomized subspace iteration (Halko,
/// Martinsson and Tropp 2011, algorithm 4.4): `Y = A Ω` for a Gaussian
/// `cols × (r + p)` test matrix `Ω` (oversampling `p = min(10, ...)`), `q`
/// power iterations re-orthonormalised by QR each half step, then the thin
/// SVD of the small `(r + p) × cols` matrix `Qᵀ A`. `Ω` comes from a fixed
/// seeded generator, so the result is deterministic. Cost `O(rows·cols·(r+p)·(2q+2))`
/// instead of the thin SVD's `O(rows·cols·min(rows, cols))`. Falls back to
/// [`svd`] (then truncated) when `r + p ≥ min(rows, cols)`. `None` when `a`
/// holds non-finite values or an SVD does not converge.
pub fn truncated_svd(
    a: &[f64],
    rows: usize,
    cols: usize,
    r: usize,
    power_iterations: usize,
) -> Option<Svd> {
    let k = rows.min(cols);
    let r = r.min(k);
    let l = r + 10.min(k - r);
    if l >= k || r == 0 {
        let mut d = svd(a, rows, cols)?;
        truncate(&mut d, r.max(1).min(k));
        return Some(d);
    }
    if a.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let am = to_mat(a, rows, cols);
    let mut rng = Gaussian::new(0x5eed_1234_abcd_0001);
    let omega = Mat::from_fn(cols, l, |_, _| rng.next());
    let orth = |m: Mat<f64>| m.as_ref().qr().compute_thin_Q();
    let mut q = orth(&am * &omega);
    for _ in 0..power_iterations {
        let z = orth(am.transpose() * &q);
        q = orth(&am * &z);
    }
    let b = q.transpose() * &am;
    let d = b.as_ref().thin_svd().ok()?;
    let u = &q * d.U();
    let s: Vec<f64> = (0..r).map(|i| d.S()[i]).collect();
    let v = d.V();
    let mut vt = vec![0f64; r * cols];
    for i in 0..r {
        for j in 0..cols {
            vt[i * cols + j] = v[(j, i)];
        }
    }
    let mut uo = vec![0f64; rows * r];
    for i in 0..rows {
        for j in 0..r {
            uo[i * r + j] = u[(i, j)];
        }
    }
    Some(Svd {
        u: uo,
        s,
        vt,
        rows,
        cols,
    })
}

/// Keeps the first `r` singular triplets of `d`.
pub fn truncate(d: &mut Svd, r: usize) {
    let k = d.k();
    if r >= k {
        return;
    }
    let mut u = Vec::with_capacity(d.rows * r);
    for i in 0..d.rows {
        u.extend_from_slice(&d.u[i * k..i * k + r]);
    }
    d.u = u;
    d.s.truncate(r);
    d.vt.truncate(r * d.cols);
}

/// Standard normal numbers from a fixed seed (SplitMix64 + Box–Muller): the
/// test matrices of [`truncated_svd`], identical on every machine.
struct Gaussian {
    state: u64,
    spare: Option<f64>,
}

impl Gaussian {
    fn new(seed: u64) -> Gaussian {
        Gaussian {
            state: seed,
            spare: None,
        }
    }

    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // (0, 1]: never 0, so the logarithm is finite.
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }
}

/// The eigendecomposition of the symmetric `n × n` matrix `a` (lower
/// triangle read): eigenvalues in non-decreasing order and the matching
/// eigenvectors as the columns of a row-major `n × n` matrix.
pub fn symmetric_eigen(a: &[f64], n: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    if a.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let m = to_mat(a, n, n);
    let e = m.as_ref().self_adjoint_eigen(Side::Lower).ok()?;
    let values: Vec<f64> = (0..n).map(|i| e.S()[i]).collect();
    Some((values, from_mat(e.U())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
        let mut c = vec![0f64; n * m];
        for i in 0..n {
            for p in 0..k {
                for j in 0..m {
                    c[i * m + j] += a[i * k + p] * b[p * m + j];
                }
            }
        }
        c
    }

    fn spd(n: usize) -> Vec<f64> {
        // B Bᵀ + I for a fixed B.
        let b: Vec<f64> = (0..n * n)
            .map(|i| ((i * 7 + 3) % 11) as f64 - 5.0)
            .collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|p| b[i * n + p] * b[j * n + p]).sum::<f64>();
            }
            a[i * n + i] += 1.0;
        }
        a
    }

    #[test]
    fn cholesky_reproduces_the_matrix() {
        let n = 5;
        let a = spd(n);
        let l = cholesky(&a, n).unwrap();
        let mut lt = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                lt[j * n + i] = l[i * n + j];
                if j > i {
                    assert_eq!(l[i * n + j], 0.0);
                }
            }
        }
        let back = matmul(&l, &lt, n, n, n);
        for (x, y) in back.iter().zip(&a) {
            assert!((x - y).abs() < 1e-9 * y.abs().max(1.0));
        }
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none(), "indefinite");
    }

    #[test]
    fn spd_solve_and_lower_inverse() {
        let n = 4;
        let a = spd(n);
        let b: Vec<f64> = (0..n * 2).map(|i| i as f64).collect();
        let x = solve_spd(&a, n, &b, 2).unwrap();
        let back = matmul(&a, &x, n, n, 2);
        for (p, q) in back.iter().zip(&b) {
            assert!((p - q).abs() < 1e-9);
        }
        let l = cholesky(&a, n).unwrap();
        let li = lower_inverse(&l, n);
        let eye = matmul(&l, &li, n, n, n);
        for i in 0..n {
            for j in 0..n {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((eye[i * n + j] - want).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn inverse_upper_cholesky_factors_the_inverse() {
        let n = 5;
        let a = spd(n);
        let u = inverse_upper_cholesky(&a, n).unwrap();
        // Uᵀ U a = I, U upper triangular.
        let mut ut = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                ut[j * n + i] = u[i * n + j];
                if j < i {
                    assert_eq!(u[i * n + j], 0.0);
                }
            }
        }
        let eye = matmul(&matmul(&ut, &u, n, n, n), &a, n, n, n);
        for i in 0..n {
            for j in 0..n {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((eye[i * n + j] - want).abs() < 1e-9, "{i},{j}");
            }
        }
        assert!(inverse_upper_cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
    }

    #[test]
    fn svd_reconstructs_and_sorts() {
        let (r, c) = (6, 4);
        let a: Vec<f64> = (0..r * c).map(|i| ((i * 5 + 1) % 9) as f64 - 4.0).collect();
        let d = svd(&a, r, c).unwrap();
        assert_eq!(d.k(), 4);
        assert!(d.s.windows(2).all(|w| w[0] >= w[1]));
        let mut us = d.u.clone();
        for i in 0..r {
            for k in 0..d.k() {
                us[i * d.k() + k] *= d.s[k];
            }
        }
        let back = matmul(&us, &d.vt, r, d.k(), c);
        for (x, y) in back.iter().zip(&a) {
            assert!((x - y).abs() < 1e-9);
        }
    }

    #[test]
    fn truncated_svd_matches_the_thin_svd_on_the_leading_triplets() {
        // A decaying spectrum: σ_i = 0.7^i, random-looking orthogonal-ish factors.
        let (rows, cols, r) = (60, 40, 8);
        let mut rng = Gaussian::new(7);
        let x: Vec<f64> = (0..rows * cols).map(|_| rng.next()).collect();
        let base = svd(&x, rows, cols).unwrap();
        let mut a = vec![0f64; rows * cols];
        for k in 0..base.k() {
            let sigma = 0.7f64.powi(k as i32);
            for i in 0..rows {
                for j in 0..cols {
                    a[i * cols + j] += base.u[i * base.k() + k] * sigma * base.vt[k * cols + j];
                }
            }
        }
        let full = svd(&a, rows, cols).unwrap();
        let t = truncated_svd(&a, rows, cols, r, 2).unwrap();
        assert_eq!((t.k(), t.u.len(), t.vt.len()), (r, rows * r, r * cols));
        for i in 0..r {
            assert!(
                (t.s[i] - full.s[i]).abs() < 1e-6 * full.s[0],
                "{i}: {} vs {}",
                t.s[i],
                full.s[i]
            );
        }
        // Deterministic.
        assert_eq!(t, truncated_svd(&a, rows, cols, r, 2).unwrap());
        // Falls back to the thin SVD when r + p covers the matrix.
        let small = truncated_svd(&a, rows, cols, 35, 2).unwrap();
        assert_eq!(small.k(), 35);
        assert_eq!(small.s[..], full.s[..35]);
    }

    #[test]
    fn symmetric_eigen_diagonalises() {
        let n = 3;
        let a = spd(n);
        let (w, v) = symmetric_eigen(&a, n).unwrap();
        assert!(w.windows(2).all(|p| p[0] <= p[1]));
        // A v_i = w_i v_i.
        for i in 0..n {
            let col: Vec<f64> = (0..n).map(|r| v[r * n + i]).collect();
            let av = matmul(&a, &col, n, n, 1);
            for r in 0..n {
                assert!((av[r] - w[i] * col[r]).abs() < 1e-8);
            }
        }
    }
}
