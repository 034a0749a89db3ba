//! Calibration-speed benchmark (issue 3): how many samples per second whittle
//! pushes through tract, with 1 and 2 threads, on two generated models.
//!
//! Run with `cargo bench --bench exec`. The bench
//!
//! 1. builds, from a fixed seed and with whittle's own IR API, a ~10 MB conv
//!    net (six 3x3 Conv+Relu layers, 3 -> 256 channels, 96x96 input, global
//!    average pool, a 512 -> 1000 Gemm) and a small transformer encoder (two
//!    layers, sequence 64, width 128, 4 heads, FFN 512, LayerNormalization,
//!    Erf-GELU);
//! 2. loads each into tract from the bytes whittle encodes (`Runner::from_model`,
//!    as validation does), makes seeded synthetic samples, and runs one
//!    warm-up pass (which also types and optimises the plan);
//! 3. times `exec::run_samples` over all samples with 1 and then 2 threads,
//!    [`RUNS`] times each, and prints a markdown table of the best run.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it only runs two
//! samples through each model as a smoke test and prints no timings.

use std::collections::BTreeMap;
use std::error::Error;
use std::time::Instant;

use whittle::data::{self, InputSpec, SyntheticSpec};
use whittle::exec::{self, Runner};
use whittle::ir::{Attribute, DataType, Dim, Graph, Model, Node, Tensor, TypeInfo, ValueInfo};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Timed runs per (model, threads); the table shows the fastest.
const RUNS: usize = 5;
const SEED: u64 = 0x5EED_0003;

/// SplitMix64 weights, uniform in [-scale, scale).
struct Weights(u64);

impl Weights {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn tensor(&mut self, g: &mut Graph, name: &str, dims: Vec<i64>, scale: f32) -> String {
        let n: i64 = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.next() * scale).collect();
        g.add_initializer(Tensor::from_f32(name, dims, &v));
        name.to_string()
    }
}

fn node(g: &mut Graph, op: &str, name: &str, inputs: &[&str], attrs: Vec<Attribute>) -> String {
    let mut n = Node::new(
        op,
        name,
        inputs.iter().map(|s| s.to_string()).collect(),
        vec![name.to_string()],
    );
    n.attributes = attrs;
    g.add_node(n);
    name.to_string()
}

fn i64s(g: &mut Graph, name: &str, v: &[i64]) -> String {
    let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    g.add_initializer(Tensor::from_raw(
        name,
        DataType::Int64,
        vec![v.len() as i64],
        raw.into(),
    ));
    name.to_string()
}

fn scalar(g: &mut Graph, name: &str, v: f32) -> String {
    g.add_initializer(Tensor::from_f32(name, vec![], &[v]));
    name.to_string()
}

fn io(name: &str, dims: &[i64]) -> ValueInfo {
    ValueInfo::new(
        name,
        TypeInfo::tensor(
            DataType::Float,
            dims.iter()
                .map(|&d| {
                    if d < 0 {
                        Dim::symbol("batch")
                    } else {
                        Dim::known(d)
                    }
                })
                .collect(),
        ),
    )
}

/// Six 3x3 Conv+Relu layers, global average pool, Gemm to 1000 classes.
fn conv_net() -> Model {
    let mut w = Weights(SEED);
    let mut g = Graph::new("convnet");
    g.inputs.push(io("x", &[-1, 3, 96, 96]));
    g.outputs.push(io("logits", &[-1, 1000]));
    let layers = [
        (3, 32, 2),
        (32, 64, 1),
        (64, 128, 2),
        (128, 256, 1),
        (256, 256, 2),
        (256, 512, 1),
    ];
    let mut x = "x".to_string();
    for (i, (cin, cout, stride)) in layers.into_iter().enumerate() {
        let scale = (2.0 / (cin as f32 * 9.0)).sqrt();
        let wt = w.tensor(
            &mut g,
            &format!("conv{i}.weight"),
            vec![cout, cin, 3, 3],
            scale,
        );
        let b = w.tensor(&mut g, &format!("conv{i}.bias"), vec![cout], 0.1);
        let c = node(
            &mut g,
            "Conv",
            &format!("conv{i}"),
            &[&x, &wt, &b],
            vec![
                Attribute::ints("kernel_shape", vec![3, 3]),
                Attribute::ints("pads", vec![1, 1, 1, 1]),
                Attribute::ints("strides", vec![stride, stride]),
            ],
        );
        x = node(&mut g, "Relu", &format!("relu{i}"), &[&c], vec![]);
    }
    let p = node(&mut g, "GlobalAveragePool", "pool", &[&x], vec![]);
    let f = node(
        &mut g,
        "Flatten",
        "flatten",
        &[&p],
        vec![Attribute::int("axis", 1)],
    );
    let fw = w.tensor(&mut g, "fc.weight", vec![1000, 512], 0.05);
    let fb = w.tensor(&mut g, "fc.bias", vec![1000], 0.1);
    let mut gemm = Node::new("Gemm", "fc", vec![f, fw, fb], vec!["logits".into()]);
    gemm.attributes = vec![Attribute::int("transB", 1)];
    g.add_node(gemm);
    Model::new(g, 17)
}

/// Two post-norm encoder layers: multi-head self-attention and a GELU FFN.
fn transformer() -> Model {
    const S: i64 = 64;
    const D: i64 = 128;
    const H: i64 = 4;
    const F: i64 = 512;
    let mut w = Weights(SEED + 1);
    let mut g = Graph::new("encoder");
    g.inputs.push(io("x", &[-1, S, D]));
    g.outputs.push(io("y", &[-1, S, D]));
    let heads = i64s(&mut g, "shape.heads", &[0, S, H, D / H]);
    let merge = i64s(&mut g, "shape.merge", &[0, S, D]);
    let inv_sqrt_dk = scalar(&mut g, "inv_sqrt_dk", 1.0 / ((D / H) as f32).sqrt());
    let inv_sqrt2 = scalar(&mut g, "inv_sqrt2", std::f32::consts::FRAC_1_SQRT_2);
    let one = scalar(&mut g, "one", 1.0);
    let half = scalar(&mut g, "half", 0.5);
    let mut x = "x".to_string();
    for l in 0..2 {
        let p = |s: &str| format!("l{l}.{s}");
        let linear = |w: &mut Weights, g: &mut Graph, name: &str, input: &str, k: i64, n: i64| {
            let wt = w.tensor(
                g,
                &p(&format!("{name}.weight")),
                vec![k, n],
                (1.0 / k as f32).sqrt(),
            );
            let b = w.tensor(g, &p(&format!("{name}.bias")), vec![n], 0.02);
            let m = node(
                g,
                "MatMul",
                &p(&format!("{name}.mm")),
                &[input, &wt],
                vec![],
            );
            node(g, "Add", &p(name), &[&m, &b], vec![])
        };
        let split = |g: &mut Graph, name: &str, input: &str, perm: Vec<i64>| {
            let r = node(
                g,
                "Reshape",
                &p(&format!("{name}.r")),
                &[input, &heads],
                vec![],
            );
            node(
                g,
                "Transpose",
                &p(name),
                &[&r],
                vec![Attribute::ints("perm", perm)],
            )
        };
        let q = linear(&mut w, &mut g, "q", &x, D, D);
        let k = linear(&mut w, &mut g, "k", &x, D, D);
        let v = linear(&mut w, &mut g, "v", &x, D, D);
        let q = split(&mut g, "qh", &q, vec![0, 2, 1, 3]);
        let k = split(&mut g, "kh", &k, vec![0, 2, 3, 1]);
        let v = split(&mut g, "vh", &v, vec![0, 2, 1, 3]);
        let s = node(&mut g, "MatMul", &p("scores"), &[&q, &k], vec![]);
        let s = node(&mut g, "Mul", &p("scaled"), &[&s, &inv_sqrt_dk], vec![]);
        let a = node(
            &mut g,
            "Softmax",
            &p("attn"),
            &[&s],
            vec![Attribute::int("axis", -1)],
        );
        let c = node(&mut g, "MatMul", &p("ctx"), &[&a, &v], vec![]);
        let c = node(
            &mut g,
            "Transpose",
            &p("ctx.t"),
            &[&c],
            vec![Attribute::ints("perm", vec![0, 2, 1, 3])],
        );
        let c = node(&mut g, "Reshape", &p("ctx.r"), &[&c, &merge], vec![]);
        let o = linear(&mut w, &mut g, "o", &c, D, D);
        let r = node(&mut g, "Add", &p("res1"), &[&x, &o], vec![]);
        let (ga, be) = (
            w.tensor(&mut g, &p("ln1.gamma"), vec![D], 0.1),
            w.tensor(&mut g, &p("ln1.beta"), vec![D], 0.1),
        );
        let n1 = node(
            &mut g,
            "LayerNormalization",
            &p("ln1"),
            &[&r, &ga, &be],
            vec![Attribute::int("axis", -1)],
        );
        let h = linear(&mut w, &mut g, "ffn1", &n1, D, F);
        // GELU(h) = 0.5 h (1 + erf(h / sqrt 2))
        let e = node(&mut g, "Mul", &p("gelu.div"), &[&h, &inv_sqrt2], vec![]);
        let e = node(&mut g, "Erf", &p("gelu.erf"), &[&e], vec![]);
        let e = node(&mut g, "Add", &p("gelu.add"), &[&e, &one], vec![]);
        let e = node(&mut g, "Mul", &p("gelu.mul"), &[&h, &e], vec![]);
        let e = node(&mut g, "Mul", &p("gelu"), &[&e, &half], vec![]);
        let f = linear(&mut w, &mut g, "ffn2", &e, F, D);
        let r = node(&mut g, "Add", &p("res2"), &[&n1, &f], vec![]);
        let (ga, be) = (
            w.tensor(&mut g, &p("ln2.gamma"), vec![D], 0.1),
            w.tensor(&mut g, &p("ln2.beta"), vec![D], 0.1),
        );
        x = node(
            &mut g,
            "LayerNormalization",
            &p("ln2"),
            &[&r, &ga, &be],
            vec![Attribute::int("axis", -1)],
        );
    }
    // The last node writes the graph output.
    let last = *g.node_ids().last().expect("the encoder has nodes");
    g.update_node(last, |n| n.outputs = vec!["y".into()]);
    Model::new(g, 17)
}

fn weight_bytes(m: &Model) -> u64 {
    m.graph.initializers().iter().map(|t| t.byte_len()).sum()
}

fn cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The 1-minute load average: the machine may be shared.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn main() -> Result<()> {
    let timed = std::env::args().any(|a| a == "--bench");
    let models = [
        ("conv net", conv_net(), 64usize),
        ("transformer encoder", transformer(), 512usize),
    ];
    if timed {
        println!(
            "machine: {}, {} cores, load average {} at start; tract-onnx 0.23.9; batch 1 per sample; best of {RUNS} runs\n",
            cpu(),
            exec::default_threads(),
            load()
        );
        println!("| model | weights | input | samples | threads | seconds | samples/s |");
        println!("|---|---|---|---|---|---|---|");
    }
    for (name, model, count) in models {
        let runner = Runner::from_model(name, &model, None)?;
        let inputs = InputSpec::of_graph(&model.graph)?;
        let dims = BTreeMap::from([("batch".to_string(), 1)]);
        let spec = SyntheticSpec {
            seed: SEED,
            ..SyntheticSpec::default()
        };
        let count = if timed { count } else { 2 };
        let samples = data::synthetic(&inputs, &dims, count, &spec)?.samples;
        // Warm-up: types and optimises the plan, touches the weights.
        let first = exec::run_samples(&runner, &samples[..1], 1)?;
        if first[0][0].to_f64().iter().any(|v| !v.is_finite()) {
            return Err(format!("{name}: non-finite outputs").into());
        }
        for threads in [1, 2] {
            let mut best = f64::INFINITY;
            for _ in 0..if timed { RUNS } else { 1 } {
                let t = Instant::now();
                let out = exec::run_samples(&runner, &samples, threads)?;
                best = best.min(t.elapsed().as_secs_f64());
                // Threads must not change the numbers.
                if out[0] != first[0] {
                    return Err(format!("{name}: outputs depend on the thread count").into());
                }
            }
            if timed {
                println!(
                    "| {name} | {:.1} MB | {} | {count} | {threads} | {best:.3} | {:.1} |",
                    weight_bytes(&model) as f64 / 1e6,
                    inputs[0]
                        .to_string()
                        .replace("x: ", "")
                        .replace("batch", "1"),
                    count as f64 / best
                );
            }
        }
        if !timed {
            println!("{name}: smoke run of {count} samples at 1 and 2 threads ok");
        }
    }
    if timed {
        println!("\nload average {} at the end", load());
    }
    Ok(())
}
