//! The rewrite passes: one file per pass, named after its YAML name, and the
//! one registry that lists them ([`PASSES`]).
//!
//! A pass edits a [`Model`] through the IR API only and returns a
//! [`PassReport`] of what it did, counted, never inferred. Its options are a
//! typed config struct (`deny_unknown_fields`, defaults, a doc comment per
//! field); the doc comments become `whittle passes` and `whittle schema`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ir::Model;

pub mod calib;
pub mod eliminate_dead;
mod fold_batchnorm;
pub mod linalg;
mod prune;
mod quantize;
mod specialize;

/// A rewrite pass with its options already checked.
pub trait Pass {
    /// Rewrites the model. `ctx` carries what the command line gave besides
    /// the model (calibration data, threads); most passes ignore it.
    fn run(&self, model: &mut Model, ctx: &PassContext) -> Result<PassReport, PassError>;
}

/// What a pass may use besides the model and its options.
#[derive(Debug, Clone, Default)]
pub struct PassContext {
    /// Calibration data (`whittle run --data`): an `.npz` file (one array per
    /// input, first axis = samples) or a folder of `.npz` files.
    pub data: Option<PathBuf>,
    /// Values for symbolic input dims (`--dim batch=1`).
    pub dims: BTreeMap<String, usize>,
    /// The folder the model's external data is relative to.
    pub model_dir: Option<PathBuf>,
    /// Threads for work that runs the model (`None`: the machine's cores).
    pub threads: Option<usize>,
    /// Draw progress bars on stderr (it is a terminal).
    pub progress: bool,
}

/// What a pass did: named counters and per-node details, in a stable order.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PassReport {
    /// Counters such as `nodes_removed`, `initializers_changed`, `bytes_saved`.
    pub counters: BTreeMap<String, i64>,
    /// One entry per rewritten node or choice made, in graph order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<serde_json::Value>,
    /// Things the user should know (skipped nodes and why).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Text blocks `whittle run` prints under the pass's line (tables).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub summary: Vec<String>,
}

impl PassReport {
    /// Adds `n` to a counter (creating it at 0).
    pub fn count(&mut self, counter: &str, n: i64) {
        *self.counters.entry(counter.to_string()).or_default() += n;
    }

    /// Sets every named counter to 0 first, so reports list them even when nothing happened.
    pub fn with_counters(names: &[&str]) -> PassReport {
        let mut r = PassReport::default();
        for n in names {
            r.counters.insert((*n).to_string(), 0);
        }
        r
    }

    /// Adds another report's counters, details and warnings to this one.
    pub fn merge(&mut self, other: PassReport) {
        for (k, v) in other.counters {
            *self.counters.entry(k).or_default() += v;
        }
        self.details.extend(other.details);
        self.warnings.extend(other.warnings);
        self.summary.extend(other.summary);
    }
}

/// A pass failed on this model.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// A node cannot be rewritten as asked.
    #[error("node {node}: {message}")]
    Node {
        /// The node's label (`Conv "conv1"`).
        node: String,
        /// What is wrong.
        message: String,
    },
    /// Something else about the model.
    #[error("{0}")]
    Model(String),
    /// An IR operation failed.
    #[error(transparent)]
    Ir(#[from] crate::ir::IrError),
}

/// A bad option in a pass's config.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// Path of the option inside the pass's options (`calibration.method`), or "".
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Turns Constant nodes holding a tensor into initializers, so that weights
/// exporters emit as Constant nodes (PaddlePaddle, some PyTorch exports) are
/// quantized and folded as weights rather than treated as activations. Exact.
/// Returns how many were hoisted.
pub fn hoist_constants(g: &mut crate::ir::Graph) -> usize {
    let constants: Vec<_> = g
        .nodes()
        .filter(|(_, n)| n.op_type() == "Constant" && n.domain().is_empty() && n.outputs.len() == 1)
        .filter_map(|(id, n)| match n.attributes.as_slice() {
            [a] if a.name() == "value" => match &a.value {
                crate::ir::AttrValue::Tensor(t) => Some((id, n.outputs[0].clone(), t.clone())),
                _ => None,
            },
            _ => None,
        })
        .filter(|(_, out, _)| !g.is_output(out))
        .collect();
    let count = constants.len();
    for (id, out, t) in constants {
        g.remove_node(id);
        let mut t = *t;
        t.name = Some(out);
        g.add_initializer(t);
    }
    count
}

/// A registered pass.
pub struct PassInfo {
    /// Its YAML name (kebab-case).
    pub name: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// The full documentation (the pass file's `//!` doc).
    pub doc: &'static str,
    /// The JSON Schema of its options.
    pub schema: fn() -> serde_json::Value,
    /// Parses and checks options into a runnable pass.
    pub build: fn(&serde_json::Value) -> Result<Box<dyn Pass>, ConfigError>,
}

/// Every pass, in the order `whittle passes` lists them.
pub static PASSES: &[PassInfo] = &[
    eliminate_dead::INFO,
    fold_batchnorm::INFO,
    prune::INFO,
    quantize::INFO,
    specialize::INFO,
];

/// The pass registered under `name`.
pub fn find(name: &str) -> Option<&'static PassInfo> {
    PASSES.iter().find(|p| p.name == name)
}

/// The registered name closest to `name`, if any is close enough to be a typo.
pub fn closest(name: &str, candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(name.len()) / 3).max(2))
        .min()
        .map(|(_, c)| c.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A pass config: parsed strictly from the YAML options, then checked for
/// ranges and cross-field rules.
pub trait Config: DeserializeOwned + JsonSchema + Default {
    /// Checks values serde cannot (ranges, combinations).
    fn check(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Parses options into a config, naming the path of the first bad field and,
/// for an unknown field, the closest valid one.
pub fn parse_config<C: Config>(options: &serde_json::Value) -> Result<C, ConfigError> {
    let config: C = serde_path_to_error::deserialize(options).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        let inner = e.into_inner().to_string();
        ConfigError {
            message: with_suggestion(&inner),
            field,
        }
    })?;
    config.check()?;
    Ok(config)
}

/// serde says "unknown field `x`, expected one of `a`, `b`": add the closest.
fn with_suggestion(message: &str) -> String {
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let is_unknown = message.starts_with("unknown field") || message.starts_with("unknown variant");
    if let (true, Some((bad, valid))) = (is_unknown, quoted.split_first()) {
        if let Some(best) = closest(bad, valid) {
            return format!("{message}; did you mean `{best}`?");
        }
    }
    message.to_string()
}

/// The JSON Schema of a config type.
pub fn schema_of<C: JsonSchema>() -> serde_json::Value {
    schemars::schema_for!(C).to_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_kebab_case_and_sorted() {
        let names: Vec<&str> = PASSES.iter().map(|p| p.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted);
        for n in names {
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{n}");
        }
    }

    #[test]
    fn typos_find_their_pass() {
        let names: Vec<&str> = PASSES.iter().map(|p| p.name).collect();
        assert_eq!(
            closest("fold-batchnrom", &names).as_deref(),
            Some("fold-batchnorm")
        );
        assert_eq!(
            closest("eliminate_dead", &names).as_deref(),
            Some("eliminate-dead")
        );
        assert_eq!(closest("quux", &names), None);
    }

    #[test]
    fn unknown_options_get_a_suggestion() {
        let m =
            with_suggestion("unknown field `remove_identiy`, expected `remove_identity` or `x`");
        assert!(m.ends_with("did you mean `remove_identity`?"), "{m}");
    }
}
