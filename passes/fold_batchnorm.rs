//! `fold-batchnorm`: folds a BatchNormalization into the Conv, ConvTranspose
//! or Gemm that feeds it.
//!
//! ```text
//! before:  x ─ Conv(W, b) ─ t ─ BatchNormalization(γ, β, μ, σ²) ─ y
//! after:   x ─ Conv(W', b') ─ y
//! ```
//!
//! With `s = γ / sqrt(σ² + ε)` per output channel `c`:
//! `W'[c, ...] = W[c, ...] · s[c]` and `b'[c] = (b[c] − μ[c]) · s[c] + β[c]`
//! (`b = 0` when the Conv has no bias). For ConvTranspose the output channel
//! is axis 1 of W (per group); for Gemm it is the column of `B` (the row when
//! `transB = 1`), and `C' = (β_gemm · C − μ) · s + β` with `beta` set to 1.
//!
//! Constant nodes holding a tensor become initializers first (exporters such
//! as PaddlePaddle's write weights that way), so they fold like any weight.
//!
//! Preconditions, else the pair is left alone (and the report says why): the
//! BatchNormalization is in inference mode (one output), its scale, bias,
//! mean and variance are f32 initializers of one value per channel, the
//! producer's weight (and bias) are f32 initializers, and the producer's
//! output feeds nothing but the BatchNormalization and is not a graph output.
//! A weight shared with other nodes gets a new initializer; an unshared one
//! is replaced in place. The BatchNormalization's own parameters are removed
//! when nothing else reads them.
//!
//! Exactness: the same real-number function; the folded weights are computed
//! in f64 and rounded once to f32, so outputs differ from the original by
//! float rounding only (well above 80 dB SQNR).

use schemars::JsonSchema;
use serde::Deserialize;

use super::{parse_config, Config, Pass, PassError, PassInfo, PassReport};
use crate::ir::{AttrValue, Attribute, DataType, Graph, Model, NodeId, Tensor};

/// Registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "fold-batchnorm",
    summary: "fold BatchNormalization into the preceding Conv, ConvTranspose or Gemm",
    doc: include_str!("fold_batchnorm.rs"),
    schema: super::schema_of::<FoldBatchnorm>,
    build: |o| Ok(Box::new(parse_config::<FoldBatchnorm>(o)?)),
};

/// Options of `fold-batchnorm`.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FoldBatchnorm {
    /// Producer op types to fold into (any of Conv, ConvTranspose, Gemm).
    pub into: Vec<String>,
}

impl Default for FoldBatchnorm {
    fn default() -> Self {
        FoldBatchnorm {
            into: vec!["Conv".into(), "ConvTranspose".into(), "Gemm".into()],
        }
    }
}

impl Config for FoldBatchnorm {
    fn check(&self) -> Result<(), super::ConfigError> {
        for (i, op) in self.into.iter().enumerate() {
            if !matches!(op.as_str(), "Conv" | "ConvTranspose" | "Gemm") {
                return Err(super::ConfigError {
                    field: format!("into[{i}]"),
                    message: format!(
                        "cannot fold into {op:?}; choose among Conv, ConvTranspose, Gemm"
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Pass for FoldBatchnorm {
    fn run(&self, model: &mut Model, _ctx: &super::PassContext) -> Result<PassReport, PassError> {
        let mut report =
            PassReport::with_counters(&["folded", "nodes_removed", "initializers_changed"]);
        // Weights exported as Constant nodes fold like initializers.
        report.count(
            "constants_hoisted",
            super::hoist_constants(&mut model.graph) as i64,
        );
        fold_graph(&mut model.graph, self, &mut report)?;
        Ok(report)
    }
}

/// Folds every foldable BatchNormalization of `g` (and its subgraphs) with
/// the default options, counting into `report` (`folded`, `nodes_removed`,
/// warnings for pairs left alone). Used by `quantize` before planning.
pub fn fold_all(g: &mut Graph, report: &mut PassReport) -> Result<(), PassError> {
    fold_graph(g, &FoldBatchnorm::default(), report)
}

fn fold_graph(
    g: &mut Graph,
    cfg: &FoldBatchnorm,
    report: &mut PassReport,
) -> Result<(), PassError> {
    for bn in g.node_ids() {
        if !g.contains(bn)
            || g.node(bn).op_type() != "BatchNormalization"
            || !g.node(bn).domain().is_empty()
        {
            continue;
        }
        match plan(g, bn, cfg) {
            Ok(p) => {
                let (bn_name, producer_name) = (g.node(bn).label(), g.node(p.producer).label());
                apply(g, bn, p, report)?;
                report.count("folded", 1);
                report.count("nodes_removed", 1);
                report.details.push(serde_json::json!({
                    "batchnorm": bn_name,
                    "into": producer_name,
                }));
            }
            Err(Skip(Some(why))) => report
                .warnings
                .push(format!("{} not folded: {why}", g.node(bn).label())),
            Err(Skip(None)) => {}
        }
    }
    // Subgraphs.
    for id in g.node_ids() {
        if g.node(id).has_subgraphs() {
            g.update_node(id, |n| -> Result<(), PassError> {
                for a in &mut n.attributes {
                    for sub in a.graphs_mut() {
                        fold_graph(sub, cfg, report)?;
                    }
                }
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// Why a BatchNormalization stays: `None` when it simply has no foldable
/// producer (not worth a warning).
struct Skip(Option<String>);

fn skip(why: impl Into<String>) -> Skip {
    Skip(Some(why.into()))
}

struct Plan {
    producer: NodeId,
    /// Per-channel multiplier s and shift (β − μ·s).
    scale: Vec<f64>,
    mean: Vec<f64>,
    beta: Vec<f64>,
}

fn f32_values(g: &Graph, name: &str) -> Option<Vec<f32>> {
    let t = g.initializer(name)?;
    if t.dtype() != DataType::Float || g.is_input(name) {
        return None;
    }
    t.to_f32().ok()
}

fn plan(g: &Graph, bn: NodeId, cfg: &FoldBatchnorm) -> Result<Plan, Skip> {
    let n = g.node(bn);
    if n.outputs.iter().filter(|o| !o.is_empty()).count() != 1
        || n.attr_int("training_mode") == Some(1)
    {
        return Err(skip("it runs in training mode (more than one output)"));
    }
    if n.attr_int("spatial") == Some(0) {
        return Err(skip(
            "spatial=0 (per-activation statistics) is not supported",
        ));
    }
    let Some((producer, 0)) = g.producer(&n.inputs[0]) else {
        return Err(Skip(None));
    };
    let p = g.node(producer);
    if !cfg.into.iter().any(|op| op == p.op_type()) || !p.domain().is_empty() {
        return Err(Skip(None));
    }
    if g.uses(&n.inputs[0]).len() != 1 || g.is_output(&n.inputs[0]) {
        return Err(skip(format!("{}'s output has other consumers", p.label())));
    }
    if n.inputs.len() < 5 {
        return Err(skip("it has fewer than 5 inputs"));
    }
    let params: Option<Vec<Vec<f32>>> = n.inputs[1..5].iter().map(|v| f32_values(g, v)).collect();
    let Some(params) = params else {
        return Err(skip(
            "its scale, bias, mean and variance are not all f32 initializers",
        ));
    };
    let channels = params[0].len();
    if params.iter().any(|p| p.len() != channels) {
        return Err(skip("its parameters have different lengths"));
    }
    let eps = f64::from(n.attr_float("epsilon").unwrap_or(1e-5));
    let scale: Vec<f64> = params[0]
        .iter()
        .zip(&params[3])
        .map(|(&gamma, &var)| f64::from(gamma) / (f64::from(var) + eps).sqrt())
        .collect();
    if scale.iter().any(|s| !s.is_finite()) {
        return Err(skip("its variance + epsilon is not positive"));
    }
    let w = p.inputs.get(1).cloned().unwrap_or_default();
    let Some(wt) = g
        .initializer(&w)
        .filter(|t| t.dtype() == DataType::Float && !g.is_input(&w))
    else {
        return Err(skip(format!(
            "{}'s weight is not an f32 initializer",
            p.label()
        )));
    };
    let out_channels = match p.op_type() {
        "Conv" => wt.dims.first().copied(),
        "ConvTranspose" => wt
            .dims
            .get(1)
            .map(|&d| d * p.attr_int("group").unwrap_or(1)),
        _ => {
            if wt.dims.len() != 2 {
                None
            } else if p.attr_int("transB") == Some(1) {
                wt.dims.first().copied()
            } else {
                wt.dims.get(1).copied()
            }
        }
    };
    if out_channels != Some(channels as i64) {
        return Err(skip(format!(
            "{} has {out_channels:?} output channels but the BatchNormalization has {channels}",
            p.label()
        )));
    }
    if let Some(b) = p.inputs.get(2).filter(|b| !b.is_empty()) {
        if f32_values(g, b).is_none() {
            return Err(skip(format!(
                "{}'s bias is not an f32 initializer",
                p.label()
            )));
        }
    }
    Ok(Plan {
        producer,
        scale,
        mean: params[2].iter().map(|&v| f64::from(v)).collect(),
        beta: params[1].iter().map(|&v| f64::from(v)).collect(),
    })
}

fn apply(g: &mut Graph, bn: NodeId, p: Plan, report: &mut PassReport) -> Result<(), PassError> {
    let prod = g.node(p.producer).clone();
    let op = prod.op_type().to_string();
    let channels = p.scale.len();

    // Weight.
    let w_name = prod.inputs[1].clone();
    let w = g
        .initializer(&w_name)
        .cloned()
        .ok_or_else(|| PassError::Model(format!("{w_name} vanished")))?;
    let mut wv: Vec<f32> = w.to_f32()?;
    let channel_of: Box<dyn Fn(usize) -> usize> = match op.as_str() {
        "Conv" => {
            let per = wv.len() / channels.max(1);
            Box::new(move |i| i / per.max(1))
        }
        "ConvTranspose" => {
            // W: [C_in, C_out/group, k...]; output channel = group(i) * C_out/group + j.
            let group = prod.attr_int("group").unwrap_or(1).max(1) as usize;
            let cin = w.dims[0] as usize;
            let cout_g = w.dims[1] as usize;
            let k: usize = w.dims[2..].iter().map(|&d| d as usize).product();
            let cin_g = (cin / group).max(1);
            Box::new(move |i| {
                let ci = i / (cout_g * k);
                let j = (i / k) % cout_g;
                (ci / cin_g) * cout_g + j
            })
        }
        _ => {
            let cols = w.dims[1] as usize;
            if prod.attr_int("transB") == Some(1) {
                Box::new(move |i| i / cols)
            } else {
                Box::new(move |i| i % cols)
            }
        }
    };
    for (i, v) in wv.iter_mut().enumerate() {
        *v = (f64::from(*v) * p.scale[channel_of(i)]) as f32;
    }
    let new_w = fresh_or_same(g, &w_name, p.producer);
    let mut wt = Tensor::from_f32(&new_w, w.dims.clone(), &wv);
    wt.doc_string = w.doc_string.clone();
    g.replace_initializer(wt);
    report.count("initializers_changed", 1);

    // Bias (Conv/ConvTranspose input 2, Gemm input C).
    let old_bias = prod.inputs.get(2).filter(|b| !b.is_empty()).cloned();
    let gemm_beta = if op == "Gemm" {
        f64::from(prod.attr_float("beta").unwrap_or(1.0))
    } else {
        1.0
    };
    let (bias_dims, bias_vals): (Vec<i64>, Vec<f32>) = match &old_bias {
        Some(b) => {
            let t = g
                .initializer(b)
                .cloned()
                .ok_or_else(|| PassError::Model(format!("{b} vanished")))?;
            let vals = t.to_f32()?;
            let (rows, dims) = if op == "Gemm" && t.dims.len() == 2 {
                (t.dims[0].max(1) as usize, vec![t.dims[0], channels as i64])
            } else {
                (1, vec![channels as i64])
            };
            let cols_in = if t.dims.len() == 2 {
                t.dims[1].max(1) as usize
            } else {
                vals.len().max(1)
            };
            let mut out = Vec::with_capacity(rows * channels);
            for r in 0..rows {
                for c in 0..channels {
                    // Broadcast C: scalar, [N], [1,N], [M,1] or [M,N].
                    let v = if vals.len() == 1 {
                        vals[0]
                    } else {
                        vals[r * cols_in + if cols_in == 1 { 0 } else { c }]
                    };
                    let folded = (gemm_beta * f64::from(v) - p.mean[c]) * p.scale[c] + p.beta[c];
                    out.push(folded as f32);
                }
            }
            (dims, out)
        }
        None => (
            vec![channels as i64],
            (0..channels)
                .map(|c| (p.beta[c] - p.mean[c] * p.scale[c]) as f32)
                .collect(),
        ),
    };
    let bias_base = match w_name.strip_suffix("weight") {
        Some(stem) if !stem.is_empty() => format!("{stem}bias"),
        _ => format!("{w_name}_bias"),
    };
    let new_b = match &old_bias {
        Some(b) => fresh_or_same(g, b, p.producer),
        None => g.unique_name(&bias_base),
    };
    g.replace_initializer(Tensor::from_f32(&new_b, bias_dims, &bias_vals));
    report.count("initializers_changed", 1);

    // Rewire: the producer writes the BatchNormalization's output directly.
    let y = g.node(bn).outputs[0].clone();
    let params: Vec<String> = g.node(bn).inputs.iter().skip(1).cloned().collect();
    g.remove_node(bn);
    // Its scale, bias, mean and variance, unless something else reads them.
    for name in params {
        if g.initializer(&name).is_some()
            && g.uses(&name).is_empty()
            && !g.is_input(&name)
            && !g.is_output(&name)
            && !captured(g, &name)
        {
            g.remove_initializer(&name);
            report.count("initializers_removed", 1);
        }
    }
    g.update_node(p.producer, |n| {
        n.inputs[1] = new_w.clone();
        if n.inputs.len() < 3 {
            n.inputs.resize(3, String::new());
        }
        n.inputs[2] = new_b.clone();
        n.outputs[0] = y;
        if n.op_type() == "Gemm" && n.attr_float("beta").is_some_and(|b| b != 1.0) {
            n.set_attr(Attribute::new("beta", AttrValue::Float(1.0)));
        }
    });
    Ok(())
}

/// True when a subgraph of `g` reads `name` from the enclosing scope.
fn captured(g: &Graph, name: &str) -> bool {
    g.nodes().any(|(_, n)| {
        n.attributes
            .iter()
            .flat_map(|a| a.graphs())
            .any(|sub| sub.outer_references().contains(name))
    })
}

/// The initializer name to write: the same one when only `user` reads it,
/// else a new one (the old stays for its other readers).
fn fresh_or_same(g: &Graph, name: &str, user: NodeId) -> String {
    let uses = g.uses(name);
    if uses.iter().all(|u| u.node == user) && uses.len() == 1 && !g.is_output(name) {
        name.to_string()
    } else {
        g.unique_name(&format!("{name}_bnfold"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Node, TypeInfo, ValueInfo};

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Gemm [1,2] x [2,3] -> BN(3) -> y; returns the model.
    fn gemm_bn(trans_b: bool, with_c: bool) -> Model {
        let mut g = Graph::new("g");
        g.inputs.push(ValueInfo::new(
            "x",
            TypeInfo::tensor(DataType::Float, vec![]),
        ));
        g.outputs.push(ValueInfo::new(
            "y",
            TypeInfo::tensor(DataType::Float, vec![]),
        ));
        let b = if trans_b {
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        } else {
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        };
        let dims = if trans_b { vec![3, 2] } else { vec![2, 3] };
        g.add_initializer(Tensor::from_f32("B", dims, &b));
        let mut inputs = strs(&["x", "B"]);
        if with_c {
            g.add_initializer(Tensor::from_f32("C", vec![3], &[0.5, -1.0, 2.0]));
            inputs.push("C".into());
        }
        for (name, v) in [
            ("gamma", [2.0, 1.0, 0.5]),
            ("beta", [1.0, 0.0, -1.0]),
            ("mean", [0.5, 1.0, 1.5]),
            ("var", [4.0, 1.0, 0.25]),
        ] {
            g.add_initializer(Tensor::from_f32(name, vec![3], &v));
        }
        let mut gemm = Node::new("Gemm", "gemm", inputs, strs(&["t"]));
        if trans_b {
            gemm.set_attr(Attribute::int("transB", 1));
        }
        gemm.set_attr(Attribute::float("beta", 2.0));
        g.add_node(gemm);
        let mut bn = Node::new(
            "BatchNormalization",
            "bn",
            strs(&["t", "gamma", "beta", "mean", "var"]),
            strs(&["y"]),
        );
        bn.set_attr(Attribute::float("epsilon", 0.0));
        g.add_node(bn);
        Model::new(g, 17)
    }

    /// Reference: y = BN(2*C + x·B) for x = [1, 2].
    fn reference(with_c: bool) -> Vec<f64> {
        let xb = [1.0 + 8.0, 2.0 + 10.0, 3.0 + 12.0];
        let c = if with_c { [0.5, -1.0, 2.0] } else { [0.0; 3] };
        let (gamma, beta, mean, var) = (
            [2.0, 1.0, 0.5],
            [1.0, 0.0, -1.0],
            [0.5, 1.0, 1.5],
            [4.0, 1.0, 0.25],
        );
        (0..3)
            .map(|i| gamma[i] * (xb[i] + 2.0 * c[i] - mean[i]) / f64::sqrt(var[i]) + beta[i])
            .collect()
    }

    fn eval_folded(m: &Model) -> Vec<f64> {
        let g = &m.graph;
        let (id, _) = g.producer("y").unwrap();
        let n = g.node(id);
        assert_eq!(n.op_type(), "Gemm");
        let b = g.initializer(&n.inputs[1]).unwrap();
        let bv = b.to_f32().unwrap();
        let c = g.initializer(&n.inputs[2]).unwrap().to_f32().unwrap();
        let beta = f64::from(n.attr_float("beta").unwrap_or(1.0));
        let trans = n.attr_int("transB") == Some(1);
        (0..3)
            .map(|j| {
                let bij = |k: usize| f64::from(if trans { bv[j * 2 + k] } else { bv[k * 3 + j] });
                bij(0) + 2.0 * bij(1) + beta * f64::from(c[j])
            })
            .collect()
    }

    #[test]
    fn gemm_folds_exactly_for_every_layout() {
        for trans_b in [false, true] {
            for with_c in [false, true] {
                let mut m = gemm_bn(trans_b, with_c);
                let r = FoldBatchnorm::default()
                    .run(&mut m, &Default::default())
                    .unwrap();
                assert_eq!(r.counters["folded"], 1, "{trans_b} {with_c}");
                assert!(!m
                    .graph
                    .nodes()
                    .any(|(_, n)| n.op_type() == "BatchNormalization"));
                crate::ir::verify(&m).unwrap();
                for (a, b) in eval_folded(&m).iter().zip(reference(with_c)) {
                    assert!((a - b).abs() < 1e-5, "{trans_b} {with_c}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn shared_producer_output_is_not_folded() {
        let mut m = gemm_bn(false, true);
        m.graph.outputs.push(ValueInfo::new(
            "t",
            TypeInfo::tensor(DataType::Float, vec![]),
        ));
        let r = FoldBatchnorm::default()
            .run(&mut m, &Default::default())
            .unwrap();
        assert_eq!(r.counters["folded"], 0);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    }

    #[test]
    fn bad_into_is_rejected() {
        let err = parse_config::<FoldBatchnorm>(&serde_json::json!({"into": ["Conv", "Relu"]}))
            .unwrap_err();
        assert_eq!(err.field, "into[1]");
    }
}
