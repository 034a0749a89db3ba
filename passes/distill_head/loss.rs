//! The loss head: knowledge distillation, cross-entropy and feature terms
//! written with core ONNX ops only (LogSoftmax, Exp, Sub, Mul, ReduceSum,
//! ReduceMean, GatherElements, ...), for the model's default-domain opset.

use crate::ir::{Attribute, DataType, Graph, Node, Tensor};

use super::merge::constant_node;

/// Appends loss nodes to a graph; every name starts with `distill/`.
pub struct Head<'a> {
    /// The graph the head is built in.
    pub g: &'a mut Graph,
    /// The default-domain opset the nodes must be valid for.
    pub opset: i64,
    /// Nodes added.
    pub nodes: usize,
}

impl Head<'_> {
    fn fresh(&self, what: &str) -> String {
        self.g.unique_name(&format!("distill/{what}"))
    }

    /// One node of `op` reading `inputs`; returns its output.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<Attribute>, what: &str) -> String {
        let out = self.fresh(what);
        let mut n = Node::with_io(op, &out, inputs, &[&out]);
        n.attributes = attrs;
        self.g.add_node(n);
        self.nodes += 1;
        out
    }

    /// A node whose output is named `out` exactly (a graph output).
    pub fn op_named(&mut self, op: &str, inputs: &[&str], out: &str) {
        self.g
            .add_node(Node::with_io(op, &format!("distill/{out}"), inputs, &[out]));
        self.nodes += 1;
    }

    /// A float32 scalar constant (a Constant node, not an initializer: it is
    /// no parameter).
    pub fn scalar(&mut self, v: f32, what: &str) -> String {
        let out = self.fresh(what);
        self.g.add_node(constant_node(
            out.clone(),
            out.clone(),
            Tensor::from_f32(out.clone(), vec![], &[v]),
        ));
        self.nodes += 1;
        out
    }

    fn ints(&mut self, v: &[i64], what: &str) -> String {
        let out = self.fresh(what);
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = Tensor::from_raw(
            out.clone(),
            DataType::Int64,
            vec![v.len() as i64],
            raw.into(),
        );
        self.g.add_node(constant_node(out.clone(), out.clone(), t));
        self.nodes += 1;
        out
    }

    /// ReduceSum over `axes` (an attribute before opset 13, an input after).
    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool, what: &str) -> String {
        let keep = Attribute::int("keepdims", i64::from(keepdims));
        if self.opset >= 13 {
            let a = self.ints(axes, &format!("{what}_axes"));
            self.op("ReduceSum", &[x, &a], vec![keep], what)
        } else {
            self.op(
                "ReduceSum",
                &[x],
                vec![Attribute::ints("axes", axes.to_vec()), keep],
                what,
            )
        }
    }

    /// The mean of every element: a scalar.
    pub fn mean_all(&mut self, x: &str, what: &str) -> String {
        self.op(
            "ReduceMean",
            &[x],
            vec![Attribute::int("keepdims", 0)],
            what,
        )
    }

    /// Unsqueeze at `axis` (an attribute before opset 13, an input after).
    pub fn unsqueeze(&mut self, x: &str, axis: i64, what: &str) -> String {
        if self.opset >= 13 {
            let a = self.ints(&[axis], &format!("{what}_axes"));
            self.op("Unsqueeze", &[x, &a], vec![], what)
        } else {
            self.op(
                "Unsqueeze",
                &[x],
                vec![Attribute::ints("axes", vec![axis])],
                what,
            )
        }
    }

    /// `T² · mean over positions of KL(softmax(t/T) ‖ softmax(s/T))` along
    /// `axis`, a scalar. `tag` names the pair's nodes.
    pub fn kd(&mut self, s: &str, t: &str, temperature: f64, axis: i64, tag: &str) -> String {
        let temp = self.scalar(temperature as f32, &format!("{tag}/temperature"));
        let st = self.op("Div", &[s, &temp], vec![], &format!("{tag}/student_scaled"));
        let tt = self.op("Div", &[t, &temp], vec![], &format!("{tag}/teacher_scaled"));
        let ax = Attribute::int("axis", axis);
        let ls = self.op(
            "LogSoftmax",
            &[&st],
            vec![ax.clone()],
            &format!("{tag}/student_log_p"),
        );
        let lt = self.op(
            "LogSoftmax",
            &[&tt],
            vec![ax],
            &format!("{tag}/teacher_log_p"),
        );
        let pt = self.op("Exp", &[&lt], vec![], &format!("{tag}/teacher_p"));
        let d = self.op("Sub", &[&lt, &ls], vec![], &format!("{tag}/log_ratio"));
        let m = self.op("Mul", &[&pt, &d], vec![], &format!("{tag}/kl_terms"));
        let rows = self.reduce_sum(&m, &[axis], false, &format!("{tag}/kl_rows"));
        let kl = self.mean_all(&rows, &format!("{tag}/kl"));
        let t2 = self.scalar(
            (temperature * temperature) as f32,
            &format!("{tag}/t_squared"),
        );
        self.op("Mul", &[&kl, &t2], vec![], &format!("{tag}/kd"))
    }

    /// `mean over positions of −log softmax(s)[label]` along `axis`, a scalar.
    /// `labels` holds class indices (int64, or int32 cast here).
    pub fn cross_entropy(&mut self, s: &str, labels: &str, int32: bool, axis: i64) -> String {
        let ax = Attribute::int("axis", axis);
        let ls = self.op("LogSoftmax", &[s], vec![ax.clone()], "ce/log_p");
        let idx = if int32 {
            self.op(
                "Cast",
                &[labels],
                vec![Attribute::int("to", DataType::Int64.code() as i64)],
                "ce/labels_int64",
            )
        } else {
            labels.to_string()
        };
        let idx = self.unsqueeze(&idx, axis, "ce/index");
        let picked = self.op("GatherElements", &[&ls, &idx], vec![ax], "ce/log_p_label");
        let mean = self.mean_all(&picked, "ce/mean_log_p");
        self.op("Neg", &[&mean], vec![], "ce/ce")
    }

    /// `mean((p − t)²)` over every element, a scalar.
    pub fn mse(&mut self, p: &str, t: &str, tag: &str) -> String {
        let d = self.op("Sub", &[p, t], vec![], &format!("{tag}/diff"));
        let sq = self.op("Mul", &[&d, &d], vec![], &format!("{tag}/squared"));
        self.mean_all(&sq, &format!("{tag}/mse"))
    }

    /// `1 − mean over positions of cos(p, t)` along the last axis, with the
    /// norms' product clamped below at 1e-8 (as torch's `cosine_similarity`).
    pub fn cosine(&mut self, p: &str, t: &str, tag: &str) -> String {
        let pt = self.op("Mul", &[p, t], vec![], &format!("{tag}/pt"));
        let dot = self.reduce_sum(&pt, &[-1], false, &format!("{tag}/dot"));
        let pp = self.op("Mul", &[p, p], vec![], &format!("{tag}/pp"));
        let tt = self.op("Mul", &[t, t], vec![], &format!("{tag}/tt"));
        let np = self.reduce_sum(&pp, &[-1], false, &format!("{tag}/pp_sum"));
        let nt = self.reduce_sum(&tt, &[-1], false, &format!("{tag}/tt_sum"));
        let np = self.op("Sqrt", &[&np], vec![], &format!("{tag}/p_norm"));
        let nt = self.op("Sqrt", &[&nt], vec![], &format!("{tag}/t_norm"));
        let den = self.op("Mul", &[&np, &nt], vec![], &format!("{tag}/norms"));
        let eps = self.scalar(1e-8, &format!("{tag}/eps"));
        let den = self.op(
            "Max",
            &[&den, &eps],
            vec![],
            &format!("{tag}/norms_clamped"),
        );
        let cos = self.op("Div", &[&dot, &den], vec![], &format!("{tag}/cos"));
        let mean = self.mean_all(&cos, &format!("{tag}/mean_cos"));
        let one = self.scalar(1.0, &format!("{tag}/one"));
        self.op("Sub", &[&one, &mean], vec![], &format!("{tag}/cosine"))
    }

    /// The sum of `terms`, named `out`: a chain of Adds (onnxruntime-training
    /// has no gradient for Sum), an Identity for one term.
    pub fn sum_named(&mut self, terms: &[String], out: &str) {
        let Some((first, rest)) = terms.split_first() else {
            return;
        };
        let mut acc = first.clone();
        for (i, t) in rest.iter().enumerate() {
            if i + 1 == rest.len() {
                self.g.add_node(Node::with_io(
                    "Add",
                    &format!("distill/{out}"),
                    &[&acc, t],
                    &[out],
                ));
                self.nodes += 1;
                return;
            }
            acc = self.op("Add", &[&acc, t], vec![], &format!("{out}_partial"));
        }
        self.op_named("Identity", &[&acc], out);
    }

    /// `x · w` for a scalar weight.
    pub fn scaled(&mut self, x: &str, w: f64, what: &str) -> String {
        let c = self.scalar(w as f32, &format!("{what}_weight"));
        self.op("Mul", &[x, &c], vec![], what)
    }

    /// `x @ w + b` on the last axis.
    pub fn linear(&mut self, x: &str, w: &str, b: &str, tag: &str) -> String {
        let m = self.op("MatMul", &[x, w], vec![], &format!("{tag}/projected"));
        self.op("Add", &[&m, b], vec![], &format!("{tag}/projected_bias"))
    }
}
