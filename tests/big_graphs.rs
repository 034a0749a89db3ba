//! Long and deep graphs: no command may recurse along a chain of nodes.
//!
//! A 100,000-node chain built here (not a fixture) goes through every
//! read-only step on a thread with a 1 MiB stack — far less than a
//! recursion of that depth needs — and through the CLI (`dump`, `inspect`,
//! `run` with eliminate-dead). Nesting of subgraphs is bounded by the
//! decoder (protobuf's recursion limit), checked on a model nested deeper.

mod common;

use bytes::Bytes;
use whittle::ir::{
    dump, verify, AttrValue, Attribute, DataType, Graph, Model, Node, Tensor, TypeInfo, ValueInfo,
};
use whittle::{inspect, onnx, passes};

const CHAIN: usize = 100_000;

/// x -> Relu/Identity/Add chain -> y, with a dead Neg every 16 nodes; the
/// list holds the chain in reverse, so the topological sort has to work.
fn chain(n: usize) -> Model {
    let mut g = Graph::new("chain");
    let f = |name: &str| ValueInfo::new(name, TypeInfo::tensor(DataType::Float, vec![]));
    g.inputs.push(f("x"));
    g.outputs.push(f("y"));
    g.add_initializer(Tensor::from_f32("one", vec![1], &[1.0]));
    let mut nodes = Vec::with_capacity(n + n / 16);
    for i in 0..n {
        let x = if i == 0 {
            "x".to_string()
        } else {
            format!("v{}", i - 1)
        };
        let y = if i + 1 == n {
            "y".to_string()
        } else {
            format!("v{i}")
        };
        let node = match i % 3 {
            0 => Node::new("Relu", format!("n{i}"), vec![x.clone()], vec![y]),
            1 => Node::new("Identity", format!("n{i}"), vec![x.clone()], vec![y]),
            _ => Node::new(
                "Add",
                format!("n{i}"),
                vec![x.clone(), "one".into()],
                vec![y],
            ),
        };
        nodes.push(node);
        if i % 16 == 15 {
            nodes.push(Node::new(
                "Neg",
                format!("dead{i}"),
                vec![x],
                vec![format!("d{i}")],
            ));
        }
    }
    for node in nodes.into_iter().rev() {
        g.add_node(node);
    }
    Model::new(g, 17)
}

fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .expect("ran out of stack (or panicked) on a long chain")
}

#[test]
fn long_chain_goes_through_every_step_on_a_small_stack() {
    on_small_stack(|| {
        let m = chain(CHAIN);
        let total = m.graph.node_count();
        verify(&m).unwrap();
        let order = m.graph.topological_order().unwrap();
        assert_eq!(order.len(), total);
        assert_eq!(m.graph.node(order[0]).inputs[0], "x");
        let text = dump(&m);
        assert!(text.lines().count() > CHAIN);
        let summary = inspect::render(&inspect::summarize(&m));
        assert!(summary.contains("Relu"), "{summary}");
        let bytes = onnx::encode(&m);
        let mut back = onnx::decode(Bytes::from(bytes.clone()), None).unwrap();
        assert_eq!(onnx::encode(&back), bytes);
        let removed = passes::eliminate_dead::remove_dead_nodes(&mut back.graph);
        assert_eq!(removed, CHAIN / 16);
        verify(&back).unwrap();
    });
}

#[test]
fn long_chain_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("chain.onnx");
    std::fs::write(&model, onnx::encode(&chain(CHAIN))).unwrap();
    let m = model.to_str().unwrap();
    for args in [vec!["dump", m], vec!["inspect", m]] {
        let out = common::whittle(&args);
        assert!(out.status.success(), "{args:?}: {}", common::text(&out).1);
    }
    let pipeline = dir.path().join("dead.yaml");
    std::fs::write(&pipeline, "version: 1\npasses:\n  - eliminate-dead\n").unwrap();
    let out_model = dir.path().join("out.onnx");
    let out = common::whittle(&[
        "run",
        pipeline.to_str().unwrap(),
        "-i",
        m,
        "-o",
        out_model.to_str().unwrap(),
    ]);
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "{stderr}");
    // Every Identity but none of the chain's other nodes, and every dead Neg.
    let back = onnx::load(&out_model).unwrap();
    assert_eq!(back.graph.node_count(), CHAIN - CHAIN / 3, "{stdout}");
}

/// `depth` Ifs nested through their then_branch (each level is three
/// protobuf messages: graph, node, attribute).
fn nested(depth: usize) -> Model {
    let leaf = |name: &str| {
        let mut g = Graph::new(name);
        g.outputs.push(ValueInfo::new(
            "c",
            TypeInfo::tensor(DataType::Float, vec![]),
        ));
        let mut k = Node::new("Constant", "k", vec![], vec!["c".into()]);
        k.attributes.push(Attribute::new(
            "value",
            AttrValue::Tensor(Box::new(Tensor::from_f32("k", vec![], &[1.0]))),
        ));
        g.add_node(k);
        g
    };
    let mut inner = leaf("leaf");
    for level in (0..depth).rev() {
        let mut g = Graph::new(format!("g{level}"));
        g.outputs.push(ValueInfo::new(
            "c",
            TypeInfo::tensor(DataType::Float, vec![]),
        ));
        let mut node = Node::new(
            "If",
            format!("if{level}"),
            vec!["x".into()],
            vec!["c".into()],
        );
        node.attributes.push(Attribute::new(
            "then_branch",
            AttrValue::Graph(Box::new(inner)),
        ));
        node.attributes.push(Attribute::new(
            "else_branch",
            AttrValue::Graph(Box::new(leaf("e"))),
        ));
        g.add_node(node);
        inner = g;
    }
    let mut m = Model::new(inner, 17);
    m.graph.inputs.push(ValueInfo::new(
        "x",
        TypeInfo::tensor(DataType::Bool, vec![]),
    ));
    m
}

#[test]
fn nesting_is_bounded_by_the_decoder_and_what_it_accepts_fits_a_small_stack() {
    on_small_stack(|| {
        // Past protobuf's recursion limit (100 messages): refused, no overflow.
        let bytes = onnx::encode(&nested(40));
        let err = onnx::decode(Bytes::from(bytes), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not parse"), "{err}");
        // Just under it: every step recurses at most that deep.
        let bytes = onnx::encode(&nested(30));
        let m = onnx::decode(Bytes::from(bytes.clone()), None).unwrap();
        verify(&m).unwrap();
        assert!(dump(&m).contains("if29"));
        let _ = inspect::summarize(&m);
        assert_eq!(onnx::encode(&m), bytes);
    });
}
