//! Operator nodes.

use bytes::Bytes;

use super::attribute::{AttrValue, Attribute};
use super::types::KeyValue;

/// One operator application. Inputs and outputs are value names; "" marks an
/// omitted optional input or output.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The node's name (unique within a graph by convention, not by rule).
    pub name: Option<String>,
    /// The operator.
    pub op_type: Option<String>,
    /// The operator's domain ("" or absent: the default ONNX domain).
    pub domain: Option<String>,
    /// Selects one of several local functions sharing (domain, op_type).
    pub overload: Option<String>,
    /// Input value names, in operator order.
    pub inputs: Vec<String>,
    /// Output value names, in operator order.
    pub outputs: Vec<String>,
    /// Attributes in file order (dumps sort them).
    pub attributes: Vec<Attribute>,
    /// Free-form documentation.
    pub doc_string: Option<String>,
    /// Metadata entries.
    pub metadata_props: Vec<KeyValue>,
    /// Multi-device placements, kept as encoded `NodeDeviceConfigurationProto`
    /// messages: whittle carries them through unchanged.
    pub device_configurations: Vec<Bytes>,
}

impl Node {
    /// A node in the default domain.
    pub fn new(
        op_type: impl Into<String>,
        name: impl Into<String>,
        inputs: Vec<String>,
        outputs: Vec<String>,
    ) -> Node {
        Node {
            name: Some(name.into()),
            op_type: Some(op_type.into()),
            domain: None,
            overload: None,
            inputs,
            outputs,
            attributes: Vec::new(),
            doc_string: None,
            metadata_props: Vec::new(),
            device_configurations: Vec::new(),
        }
    }

    /// A node in the default domain from string slices (handy in passes and tests).
    pub fn with_io(op_type: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> Node {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Node::new(op_type, name, owned(inputs), owned(outputs))
    }

    /// The operator, or "" when absent.
    pub fn op_type(&self) -> &str {
        self.op_type.as_deref().unwrap_or("")
    }

    /// The name, or "" when absent.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The domain, or "" for the default ONNX domain.
    pub fn domain(&self) -> &str {
        match self.domain.as_deref() {
            Some("ai.onnx") | None => "",
            Some(d) => d,
        }
    }

    /// The attribute of this name.
    pub fn attr(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name() == name)
    }

    /// An integer attribute's value.
    pub fn attr_int(&self, name: &str) -> Option<i64> {
        match self.attr(name)?.value {
            AttrValue::Int(v) => Some(v),
            _ => None,
        }
    }

    /// A float attribute's value.
    pub fn attr_float(&self, name: &str) -> Option<f32> {
        match self.attr(name)?.value {
            AttrValue::Float(v) => Some(v),
            _ => None,
        }
    }

    /// A list-of-integers attribute's value.
    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        match &self.attr(name)?.value {
            AttrValue::Ints(v) => Some(v),
            _ => None,
        }
    }

    /// Sets an attribute, replacing one of the same name in place.
    pub fn set_attr(&mut self, attr: Attribute) {
        match self.attributes.iter_mut().find(|a| a.name() == attr.name()) {
            Some(slot) => *slot = attr,
            None => self.attributes.push(attr),
        }
    }

    /// A label for errors: `Conv "conv1"` (or `Conv #<index>` when unnamed).
    pub fn label(&self) -> String {
        match self.name.as_deref() {
            Some(n) if !n.is_empty() => format!("{} {n:?}", self.op_type()),
            _ => format!("{} (unnamed, outputs {:?})", self.op_type(), self.outputs),
        }
    }

    /// True when any attribute holds a subgraph.
    pub fn has_subgraphs(&self) -> bool {
        self.attributes.iter().any(|a| !a.graphs().is_empty())
    }
}
