use super::*;

fn dense(k: usize, n: usize, w: Vec<f64>) -> Layer {
    Layer {
        node: Graph::new("t").add_node(Node::with_io("MatMul", "l", &["x", "w"], &["y"])),
        label: "MatMul \"l\"".into(),
        kind: Kind::MatMul,
        weight: "w".into(),
        k,
        n,
        w,
        rule: RankRule::Global,
        positions: Some((2, 2)),
        min_saving: 0.0,
    }
}

fn spectrum_of(l: &Layer) -> Spectrum {
    let svd = linalg::svd(&l.w, l.k, l.n).unwrap();
    let total = l.w.iter().map(|v| v * v).sum();
    Spectrum {
        svd,
        total,
        whitening: None,
    }
}

/// A `k × n` matrix with singular values `s` (on a fixed orthonormal basis).
fn with_spectrum(k: usize, n: usize, s: &[f64]) -> Vec<f64> {
    let mut w = vec![0f64; k * n];
    for (i, &v) in s.iter().enumerate() {
        w[i * n + i] = v;
    }
    w
}

#[test]
fn energy_and_ratio_ranks() {
    let l = dense(10, 10, with_spectrum(10, 10, &[4.0, 2.0, 1.0, 0.5]));
    let s = spectrum_of(&l);
    // Σσ² = 16 + 4 + 1 + 0.25 = 21.25.
    assert_eq!(energy_rank(&s, 16.0 / 21.25), 1);
    assert_eq!(energy_rank(&s, 0.94), 2);
    assert_eq!(energy_rank(&s, 0.95), 3);
    assert_eq!(energy_rank(&s, 1.0), 4);
    assert!((s.dropped(2) - 1.25 / 21.25).abs() < 1e-12);
    // 10×10: break-even 5; ratio 0.5 keeps ≤ 50 weights → rank 2 (40).
    assert_eq!(ratio_rank(&l, 0.5, 1), 2);
    assert_eq!(ratio_rank(&l, 0.05, 1), 1);
    assert!(l.saves(4) && !l.saves(5));
    assert_eq!(l.max_saving_rank(), Some(4));
    // min_saving 0.5: at most 50 of the 100 weights (and MACs) → rank ≤ 2.
    let l = Layer {
        min_saving: 0.5,
        ..l
    };
    assert!(l.saves(2) && !l.saves(3));
    assert_eq!(l.max_saving_rank(), Some(2));
}

#[test]
fn greedy_allocation_cuts_the_cheapest_directions_first() {
    // Two 20×20 layers: one with a flat spectrum, one that is nearly rank 2.
    let flat = dense(20, 20, with_spectrum(20, 20, &[1.0; 20]));
    let steep = dense(20, 20, with_spectrum(20, 20, &[5.0, 4.0, 0.01, 0.01, 0.01]));
    let layers = vec![flat, steep];
    let spectra: Vec<Spectrum> = layers.iter().map(spectrum_of).collect();
    let a = allocate(&layers, &spectra, &[0, 1], &[1.0, 1.0], 0.6, false, 1);
    // 800 weights → at most 480: the steep layer falls to rank 2 (80), the
    // flat one pays the rest.
    assert!(a.reached && a.after <= 480, "{}", a.after);
    assert_eq!(a.ranks[1], Some(2));
    let r0 = a.ranks[0].map_or(20, |r| r);
    assert!(r0 >= 9, "{:?}", a.ranks);
    // Unreachable: rank 1 everywhere is 80 weights = 10%.
    let a = allocate(&layers, &spectra, &[0, 1], &[1.0, 1.0], 0.05, false, 1);
    assert!(!a.reached);
    assert_eq!(a.after, 80);
    // round_to keeps ranks on the grid.
    let a = allocate(&layers, &spectra, &[0, 1], &[1.0, 1.0], 0.6, false, 4);
    assert!(
        a.ranks.iter().flatten().all(|r| r % 4 == 0),
        "{:?}",
        a.ranks
    );
}

#[test]
fn configs_are_checked_with_their_paths() {
    let parse = |s: &str| parse_config::<LowRank>(&serde_json::from_str(s).unwrap());
    assert!(parse("{}").is_ok());
    assert_eq!(parse(r#"{"rank": 0}"#).unwrap_err().field, "rank");
    assert_eq!(parse(r#"{"round_to": 0}"#).unwrap_err().field, "round_to");
    assert_eq!(
        parse(r#"{"min_saving": 1.0}"#).unwrap_err().field,
        "min_saving"
    );
    assert_eq!(
        parse(r#"{"target": {"params": 1.5}}"#).unwrap_err().field,
        "target.params"
    );
    assert_eq!(
        parse(r#"{"overrides": {"a": {"rank": 2, "energy": 0.5}}}"#)
            .unwrap_err()
            .field,
        "overrides.a"
    );
    assert!(parse(r#"{"mode": "diagonal"}"#).is_err());
}

#[test]
fn factors_split_the_singular_values_evenly() {
    let l = dense(3, 2, vec![3.0, 0.0, 0.0, 2.0, 0.0, 0.0]);
    let s = spectrum_of(&l);
    let (a, b) = factors(&l, &s, 1);
    // σ₁ = 3: A = u₁√3, B = √3 v₁ᵀ.
    let na: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((na - 3f32.sqrt()).abs() < 1e-6 && (nb - 3f32.sqrt()).abs() < 1e-6);
    assert!((a[0] * b[0]).abs() - 3.0 < 1e-6);
}

#[test]
fn whitening_is_undone_by_the_first_factor() {
    // H = diag(4, 1, 0): rank-deficient, so it needs damping.
    let g = whiten::LayerGram {
        h: vec![4.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        positions: 1,
    };
    let w = whiten::whitening(&g, 3, 0.0).unwrap();
    assert!(w.damping > 0.0);
    let m = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let back = w.unwhiten(&w.whiten(&m, 2), 2);
    for (x, y) in back.iter().zip(&m) {
        assert!((x - y).abs() < 1e-6, "{back:?}");
    }
}

#[test]
fn gains_weight_the_allocation_towards_the_layer_the_output_feels() {
    // Two 20×20 layers with the same spectrum: alone, the allocation ties
    // (and breaks ties by order, cutting the first one first); with the
    // second one's errors reaching the output 100 times weaker, the first
    // keeps the larger rank. (σᵢ = 0.6ⁱ: each step costs more than the one
    // before, so the greedy steps are the optimal ones.)
    let s: Vec<f64> = (0..20).map(|i| 0.6f64.powi(i)).collect();
    let a = dense(20, 20, with_spectrum(20, 20, &s));
    let b = dense(20, 20, with_spectrum(20, 20, &s));
    let layers = vec![a, b];
    let spectra: Vec<Spectrum> = layers.iter().map(spectrum_of).collect();
    let even = allocate(&layers, &spectra, &[0, 1], &[1.0, 1.0], 0.5, false, 1);
    let [Some(e0), Some(e1)] = even.ranks[..] else {
        panic!("{:?}", even.ranks)
    };
    assert!(e0 <= e1 && e1 - e0 <= 1, "{:?}", even.ranks);
    let weighted = allocate(&layers, &spectra, &[0, 1], &[1.0, 0.01], 0.5, false, 1);
    let [Some(w0), Some(w1)] = weighted.ranks[..] else {
        panic!("{:?}", weighted.ranks)
    };
    assert!(w0 > w1 + 1, "{:?}", weighted.ranks);
    assert!(weighted.reached && weighted.after <= even.before / 2);
    // The other way round.
    let other = allocate(&layers, &spectra, &[0, 1], &[0.01, 1.0], 0.5, false, 1);
    assert!(other.ranks[1] > other.ranks[0], "{:?}", other.ranks);
}

/// x [8, 16] ─ MatMul(W) ─ a ─┐
///           └ MatMul(W) ─ b ─ Mul(0.1) ─ Add ─ y: equal layers, the second
/// one's output reaching `y` at a tenth of the amplitude.
fn two_branches() -> Model {
    use crate::ir::{Dim, TypeInfo, ValueInfo};
    let mut g = Graph::new("g");
    let t = |d: &[usize]| {
        TypeInfo::tensor(
            DataType::Float,
            d.iter().map(|&d| Dim::known(d as i64)).collect(),
        )
    };
    g.inputs.push(ValueInfo::new("x", t(&[8, 16])));
    g.outputs.push(ValueInfo::new("y", t(&[8, 16])));
    let s: Vec<f64> = (1..=16).rev().map(f64::from).collect();
    let w: Vec<f32> = with_spectrum(16, 16, &s)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    g.add_initializer(Tensor::from_f32("w1", vec![16, 16], &w));
    g.add_initializer(Tensor::from_f32("w2", vec![16, 16], &w));
    g.add_initializer(Tensor::from_f32("tenth", vec![1], &[0.1]));
    g.add_node(Node::with_io("MatMul", "near", &["x", "w1"], &["a"]));
    g.add_node(Node::with_io("MatMul", "far", &["x", "w2"], &["b"]));
    g.add_node(Node::with_io("Mul", "damp", &["b", "tenth"], &["c"]));
    g.add_node(Node::with_io("Add", "sum", &["a", "c"], &["y"]));
    Model::new(g, 17)
}

#[test]
fn measured_sensitivities_give_the_output_facing_layer_the_larger_rank() {
    let pass = LowRank {
        target: Some(Target {
            params: Some(0.5),
            ..Target::default()
        }),
        sensitivity: Some(true),
        ..LowRank::default()
    };
    let rank_of = |threads: usize| {
        let mut m = two_branches();
        let ctx = PassContext {
            threads: Some(threads),
            ..PassContext::default()
        };
        let report = pass.run(&mut m, &ctx).unwrap();
        let find = |name: &str| {
            report
                .details
                .iter()
                .find(|d| d["node"].as_str().is_some_and(|n| n.contains(name)))
                .cloned()
                .unwrap_or_else(|| panic!("{name}: {:#?}", report.details))
        };
        let (near, far) = (find("near"), find("far"));
        let gain = |d: &serde_json::Value| d["sensitivity"]["gain"].as_f64().unwrap();
        // Measured in tract: the far layer's errors reach y 100 times weaker.
        let ratio = gain(&near) / gain(&far);
        assert!((50.0..200.0).contains(&ratio), "{near:#} {far:#}");
        assert!(
            report.counters["sensitivity_runs"] == 3,
            "{:?}",
            report.counters
        );
        let rank = |d: &serde_json::Value| d["rank"].as_u64().unwrap_or(0);
        (rank(&near), rank(&far), report.details.clone())
    };
    let (near, far, details) = rank_of(1);
    assert!(near > far, "{details:#?}");
    assert_eq!(rank_of(2).2, details);
}

#[test]
fn moments_of_two_parts_merge_into_the_moments_of_all_rows() {
    // Part a: rows (1, 0) and (1, 2); part b: row (3, 1). E[x xᵀ] of each
    // part, weighted by its rows, gives that of all three rows.
    let mean = |rows: &[[f64; 2]]| {
        let mut h = vec![0f64; 4];
        for r in rows {
            for i in 0..2 {
                for j in 0..2 {
                    h[i * 2 + j] += r[i] * r[j] / rows.len() as f64;
                }
            }
        }
        h
    };
    let (ra, rb) = ([[1.0, 0.0], [1.0, 2.0]], [[3.0, 1.0]]);
    let id = crate::ir::Graph::new("t").add_node(crate::ir::Node::with_io("MatMul", "m", &[], &[]));
    let part = |h: Vec<f64>, positions| BTreeMap::from([(id, whiten::LayerGram { h, positions })]);
    let merged = whiten::merge(part(mean(&ra), 2), part(mean(&rb), 1));
    let all = mean(&[ra[0], ra[1], rb[0]]);
    let got = &merged[&id];
    assert_eq!(got.positions, 3);
    for (g, w) in got.h.iter().zip(&all) {
        assert!((g - w).abs() < 1e-12, "{:?} vs {all:?}", got.h);
    }
}
