//! SVD speed of `passes/linalg.rs` (faer, f64, sequential) beside numpy's
//! LAPACK (`numpy.linalg.svd`, f32, OpenBLAS on 1 thread) on the same
//! seeded matrices, in one run (issue 15, must-show 3).
//!
//! Run with `cargo bench --bench svd`. For 768×3072 and 4096×4096 weights
//! (uniform in [-1, 1), f32 values) it times
//!
//! - the thin SVD (`linalg::svd`) against `numpy.linalg.svd(full_matrices=False)`;
//! - the truncated SVD at r = 256 (`linalg::truncated_svd`: randomized
//!   subspace iteration, 10 oversamples, 2 power iterations) against the same
//!   algorithm written in numpy (`Q = qr(A Ω)`, power steps, `svd(Qᵀ A)`),
//!   and reports the largest relative error of its 256 singular values
//!   against the thin SVD's;
//!
//! and prints a markdown table with the ratio (numpy time / faer time: > 1
//! means faer is faster). The numpy side runs in a child process
//! (`$WHITTLE_BENCH_PYTHON`, default `.venv-export/bin/python`) with
//! OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from its environment
//! (they slow a current OpenBLAS; see /work/.library/env/README.md) and
//! OPENBLAS_NUM_THREADS=1; it prints the BLAS it ran (threadpoolctl).
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it only checks a
//! 96×64 case and prints no timings.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use whittle::passes::linalg;

const RANK: usize = 256;

fn matrix(rows: usize, cols: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..rows * cols)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 24) as f32;
            f64::from(2.0 * u - 1.0)
        })
        .collect()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench {
        let a = matrix(96, 64, 1);
        let full = linalg::svd(&a, 96, 64).expect("svd");
        let t = linalg::truncated_svd(&a, 96, 64, 8, 2).expect("truncated");
        assert_eq!(t.k(), 8);
        assert!(t.s[0] <= full.s[0] * 1.000001);
        println!("svd bench: smoke test ok (run `cargo bench --bench svd` for timings)");
        return;
    }
    let dir = tempfile_dir();
    let mut rows_out = Vec::new();
    for &(rows, cols) in &[(768usize, 3072usize), (4096, 4096)] {
        let a = matrix(rows, cols, (rows * 31 + cols) as u64);
        let npy = dir.join(format!("a_{rows}x{cols}.npy"));
        write_npy_f32(&npy, &a, rows, cols);
        let t0 = Instant::now();
        let full = linalg::svd(&a, rows, cols).expect("svd");
        let faer_full = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let tr = linalg::truncated_svd(&a, rows, cols, RANK, 2).expect("truncated svd");
        let faer_trunc = t0.elapsed().as_secs_f64();
        let err =
            tr.s.iter()
                .zip(&full.s)
                .map(|(x, y)| ((x - y) / y).abs())
                .fold(0.0, f64::max);
        let (np_full, np_trunc, np_err, blas) = numpy(&npy, RANK);
        rows_out.push((
            rows, cols, faer_full, np_full, faer_trunc, np_trunc, err, np_err, blas,
        ));
    }
    println!("| matrix | method | whittle (faer f64, 1 thread) s | numpy (LAPACK f32, 1 thread) s | numpy / whittle | σ rel. error vs thin SVD (whittle / numpy) |");
    println!("|---|---|---|---|---|---|");
    for (r, c, ff, nf, ft, nt, e, ne, _) in &rows_out {
        println!(
            "| {r}×{c} | thin SVD (full) | {ff:.2} | {nf:.2} | {:.2} | – |",
            nf / ff
        );
        println!(
            "| {r}×{c} | truncated r={RANK} (randomized, q=2) | {ft:.2} | {nt:.2} | {:.2} | {e:.1e} / {ne:.1e} |",
            nt / ft
        );
    }
    if let Some(b) = rows_out.first().map(|r| &r.8) {
        println!("\nnumpy BLAS: {b}");
    }
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("whittle-svd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn write_npy_f32(path: &PathBuf, a: &[f64], rows: usize, cols: usize) {
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let mut h = header.into_bytes();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut f = std::fs::File::create(path).expect("npy");
    f.write_all(b"\x93NUMPY\x01\x00").unwrap();
    f.write_all(&(h.len() as u16).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    let mut bytes = Vec::with_capacity(a.len() * 4);
    for &v in a {
        bytes.extend_from_slice(&(v as f32).to_le_bytes());
    }
    f.write_all(&bytes).unwrap();
}

const NUMPY: &str = r#"
import sys, time
import numpy as np
a = np.load(sys.argv[1]); r = int(sys.argv[2])
try:
    from threadpoolctl import threadpool_info
    blas = "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} threads={i.get('num_threads')}" for i in threadpool_info())
except Exception as e:
    blas = f"threadpoolctl unavailable ({e})"
t = time.perf_counter(); s_full = np.linalg.svd(a, full_matrices=False, compute_uv=True)[1]; full = time.perf_counter() - t
rng = np.random.default_rng(0)
t = time.perf_counter()
omega = rng.standard_normal((a.shape[1], r + 10)).astype(np.float32)
q, _ = np.linalg.qr(a @ omega)
for _ in range(2):
    z, _ = np.linalg.qr(a.T @ q)
    q, _ = np.linalg.qr(a @ z)
_, s, _ = np.linalg.svd(q.T @ a, full_matrices=False)
trunc = time.perf_counter() - t
err = float(np.max(np.abs(s[:r] - s_full[:r]) / s_full[:r]))
print(full, trunc, err, blas, sep="\t")
"#;

fn numpy(npy: &PathBuf, r: usize) -> (f64, f64, f64, String) {
    let python =
        std::env::var("WHITTLE_BENCH_PYTHON").unwrap_or_else(|_| ".venv-export/bin/python".into());
    let out = Command::new(&python)
        .args(["-c", NUMPY])
        .arg(npy)
        .arg(r.to_string())
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let f: Vec<&str> = text.trim().split('\t').collect();
    if !out.status.success() || f.len() != 4 {
        panic!(
            "numpy failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (
        f[0].parse().unwrap(),
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
        f[3].to_string(),
    )
}
