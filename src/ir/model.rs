//! The model: a main graph plus opsets, functions, training information and metadata.

use bytes::Bytes;

use super::attribute::Attribute;
use super::graph::Graph;
use super::node::Node;
use super::types::{KeyValue, OpsetId, ValueInfo};

/// An ONNX model.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// File-format version.
    pub ir_version: Option<i64>,
    /// Operator sets the graph uses.
    pub opset_import: Vec<OpsetId>,
    /// Tool that wrote the model.
    pub producer_name: Option<String>,
    /// Its version.
    pub producer_version: Option<String>,
    /// Reverse-DNS namespace of the model.
    pub domain: Option<String>,
    /// The model's own version number.
    pub model_version: Option<i64>,
    /// Free-form documentation.
    pub doc_string: Option<String>,
    /// The main graph.
    pub graph: Graph,
    /// Metadata entries.
    pub metadata_props: Vec<KeyValue>,
    /// Training graphs and bindings.
    pub training_info: Vec<TrainingInfo>,
    /// Model-local functions.
    pub functions: Vec<Function>,
    /// Device configurations, kept as encoded `DeviceConfigurationProto`
    /// messages: whittle carries them through unchanged.
    pub configuration: Vec<Bytes>,
}

impl Model {
    /// A model around a graph, importing the default domain at `opset`.
    pub fn new(graph: Graph, opset: i64) -> Model {
        Model {
            ir_version: Some(8),
            opset_import: vec![OpsetId {
                domain: Some(String::new()),
                version: Some(opset),
            }],
            producer_name: Some("whittle".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            domain: None,
            model_version: None,
            doc_string: None,
            graph,
            metadata_props: Vec::new(),
            training_info: Vec::new(),
            functions: Vec::new(),
            configuration: Vec::new(),
        }
    }

    /// The version of `domain` the model imports ("" is the default domain).
    pub fn opset_version(&self, domain: &str) -> Option<i64> {
        let norm = |d: &str| if d == "ai.onnx" { "" } else { d }.to_string();
        self.opset_import
            .iter()
            .find(|o| norm(o.domain()) == norm(domain))
            .and_then(|o| o.version)
    }
}

/// Training information: an initialization graph, an algorithm graph, and
/// bindings that say which initializers they update.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TrainingInfo {
    /// Run once to initialize.
    pub initialization: Option<Graph>,
    /// One training step.
    pub algorithm: Option<Graph>,
    /// Initializer <- initialization output.
    pub initialization_binding: Vec<KeyValue>,
    /// Initializer <- algorithm output.
    pub update_binding: Vec<KeyValue>,
}

/// A model-local function that nodes call by (domain, name, overload).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Function {
    /// The function's name (the op_type callers use).
    pub name: Option<String>,
    /// Its domain.
    pub domain: Option<String>,
    /// Overload selector.
    pub overload: Option<String>,
    /// Formal inputs.
    pub inputs: Vec<String>,
    /// Formal outputs.
    pub outputs: Vec<String>,
    /// Attribute names without defaults.
    pub attribute: Vec<String>,
    /// Attributes with defaults.
    pub attribute_proto: Vec<Attribute>,
    /// The body, in order.
    pub nodes: Vec<Node>,
    /// Free-form documentation.
    pub doc_string: Option<String>,
    /// Operator sets the body uses.
    pub opset_import: Vec<OpsetId>,
    /// Types of values in the body.
    pub value_info: Vec<ValueInfo>,
    /// Metadata entries.
    pub metadata_props: Vec<KeyValue>,
}
