//! Node selection for pass configs: which nodes a pass touches, by op type,
//! by exact name or by regular expression, with per-node overrides. One
//! YAML syntax for every pass:
//!
//! ```yaml
//! include_nodes: [conv1, { regex: "^backbone\\." }]   # only these (empty: all)
//! exclude_nodes: [{ regex: "head" }]                   # never these
//! ```
//!
//! A pass embeds `Vec<NodeMatch>` fields under the names it documents, then:
//! - in `Config::check`, [`check_patterns`] (a bad regex is an error naming
//!   `field[i].regex`) and, for op lists, [`check_ops`];
//! - at run time, [`check_names`] (an exact name that names no node is an
//!   error with the closest name; a regex that matches nothing is only a
//!   warning, since pipelines are shared between models), then a compiled
//!   [`Selection`] answers per node why it is left out, if it is;
//! - per-node (or per-tensor) override maps keyed by name are checked with
//!   [`check_keys`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ir::Graph;
use crate::passes::{closest, ConfigError, PassError};

/// Selects nodes by exact name or by regular expression.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum NodeMatch {
    /// A node name, matched exactly.
    Name(String),
    /// `{ regex: "..." }`: names the expression matches anywhere.
    Regex(RegexMatch),
}

/// A regular expression over node names.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegexMatch {
    /// The expression (Rust `regex` syntax; anchor with `^...$` to match whole names).
    pub regex: String,
}

impl NodeMatch {
    /// Whether this pattern matches `name` (a regex is compiled on each call:
    /// fine for a check per node; [`Matchers`] compiles a list once).
    pub fn matches(&self, name: &str) -> bool {
        Matcher::new(self).matches(name)
    }
}

/// One compiled pattern.
#[derive(Debug, Clone)]
enum Matcher {
    Name(String),
    Regex(regex::Regex),
}

impl Matcher {
    fn new(m: &NodeMatch) -> Matcher {
        match m {
            NodeMatch::Name(n) => Matcher::Name(n.clone()),
            // Checked by `check_patterns`; an unchecked bad one matches nothing.
            NodeMatch::Regex(r) => match regex::Regex::new(&r.regex) {
                Ok(re) => Matcher::Regex(re),
                Err(_) => Matcher::Name(String::new()),
            },
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::Name(n) => n == name,
            Matcher::Regex(r) => r.is_match(name),
        }
    }
}

/// A compiled list of [`NodeMatch`] patterns.
#[derive(Debug, Clone, Default)]
pub struct Matchers(Vec<Matcher>);

impl Matchers {
    /// Compiles `list` (checked beforehand by [`check_patterns`]).
    pub fn new(list: &[NodeMatch]) -> Matchers {
        Matchers(list.iter().map(Matcher::new).collect())
    }

    /// The index of the first pattern matching `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|m| m.matches(name))
    }

    /// Whether any pattern matches `name`.
    pub fn any(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// No patterns.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Compiled include/exclude lists, with the YAML names they came from (the
/// reasons name them).
#[derive(Debug, Clone)]
pub struct Selection {
    include: Matchers,
    exclude: Matchers,
    include_field: &'static str,
    exclude_field: &'static str,
}

impl Selection {
    /// From the `include_nodes` and `exclude_nodes` lists.
    pub fn new(include: &[NodeMatch], exclude: &[NodeMatch]) -> Selection {
        Selection::named(include, "include_nodes", exclude, "exclude_nodes")
    }

    /// From lists under other YAML names.
    pub fn named(
        include: &[NodeMatch],
        include_field: &'static str,
        exclude: &[NodeMatch],
        exclude_field: &'static str,
    ) -> Selection {
        Selection {
            include: Matchers::new(include),
            exclude: Matchers::new(exclude),
            include_field,
            exclude_field,
        }
    }

    /// Why node `name` is left out, if it is: excluded (first matching
    /// pattern named), or `include` is not empty and no pattern matches.
    pub fn rejects(&self, name: &str) -> Option<String> {
        if let Some(i) = self.exclude.position(name) {
            return Some(format!("excluded by {}[{i}]", self.exclude_field));
        }
        self.excluded_by_include(name)
    }

    /// Only the include side of [`Selection::rejects`] (for nodes a pass
    /// always lets through the include list, such as data movement).
    pub fn excluded_by_include(&self, name: &str) -> Option<String> {
        (!self.include.is_empty() && !self.include.any(name))
            .then(|| format!("not in {}", self.include_field))
    }

    /// Only the exclude side of [`Selection::rejects`].
    pub fn excluded(&self, name: &str) -> Option<String> {
        self.exclude
            .position(name)
            .map(|i| format!("excluded by {}[{i}]", self.exclude_field))
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every regex of `list` compiles; the error names `field[i].regex`.
pub fn check_patterns(list: &[NodeMatch], field: &str) -> Result<(), ConfigError> {
    for (i, m) in list.iter().enumerate() {
        if let NodeMatch::Regex(r) = m {
            regex::Regex::new(&r.regex).map_err(|e| ConfigError {
                field: format!("{field}[{i}].regex"),
                message: first_line(&e.to_string()),
            })?;
        }
    }
    Ok(())
}

/// Every op of `ops` is one the pass knows (`known`); the error names
/// `field[i]`, the closest known op and all of them: "whittle cannot
/// `verb` "Foo"; did you mean "Bar"? supported: ...".
pub fn check_ops(
    ops: &[String],
    known: &[&str],
    field: &str,
    verb: &str,
) -> Result<(), ConfigError> {
    for (i, op) in ops.iter().enumerate() {
        if !known.contains(&op.as_str()) {
            let hint = closest(op, known)
                .map(|c| format!("did you mean {c:?}? "))
                .unwrap_or_default();
            return Err(ConfigError {
                field: format!("{field}[{i}]"),
                message: format!(
                    "whittle cannot {verb} {op:?}; {hint}supported: {}",
                    known.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// Exact names in `list` must name a node of `g` (error with the closest
/// name); a regex matching no node adds a warning.
pub fn check_names(
    g: &Graph,
    list: &[NodeMatch],
    field: &str,
    warnings: &mut Vec<String>,
) -> Result<(), PassError> {
    let names: Vec<&str> = g.nodes().map(|(_, n)| n.name()).collect();
    for (i, m) in list.iter().enumerate() {
        match m {
            NodeMatch::Name(n) if !names.contains(&n.as_str()) => {
                let hint = closest(n, &names)
                    .map(|c| format!("; did you mean {c:?}?"))
                    .unwrap_or_default();
                return Err(PassError::Model(format!(
                    "{field}[{i}]: no node is named {n:?}{hint}"
                )));
            }
            NodeMatch::Regex(r) => {
                let m = Matcher::new(m);
                if !names.iter().any(|n| m.matches(n)) {
                    warnings.push(format!(
                        "{field}[{i}]: regex {:?} matches no node name",
                        r.regex
                    ));
                }
            }
            NodeMatch::Name(_) => {}
        }
    }
    Ok(())
}

/// Every key of an override map (`field.KEY`) is one of `valid`; the error
/// names the key, how many `what` there are, and the closest valid one.
pub fn check_keys<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    valid: &[&str],
    field: &str,
    what: &str,
) -> Result<(), PassError> {
    for name in keys {
        if !valid.contains(&name.as_str()) {
            let hint = closest(name, valid)
                .map(|c| format!("; did you mean {c:?}?"))
                .unwrap_or_default();
            return Err(PassError::Model(format!(
                "{field}.{name}: {name:?} is not one of the {} {what}{hint}",
                valid.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Node;

    fn parse(json: &str) -> Vec<NodeMatch> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn names_and_regexes_select_and_say_why_not() {
        let include = parse(r#"["conv1", { "regex": "^block" }]"#);
        let exclude = parse(r#"[{ "regex": "skip$" }]"#);
        let s = Selection::new(&include, &exclude);
        assert_eq!(s.rejects("conv1"), None);
        assert_eq!(s.rejects("block2.conv"), None);
        assert_eq!(
            s.rejects("block2.skip").as_deref(),
            Some("excluded by exclude_nodes[0]")
        );
        assert_eq!(s.rejects("head").as_deref(), Some("not in include_nodes"));
        let all = Selection::named(&[], "include", &[], "exclude");
        assert_eq!(all.rejects("anything"), None);
    }

    #[test]
    fn bad_patterns_names_and_keys_are_errors_naming_the_field() {
        let bad = parse(r#"["ok", { "regex": "(" }]"#);
        let e = check_patterns(&bad, "exclude_nodes").unwrap_err();
        assert_eq!(e.field, "exclude_nodes[1].regex");
        let e = check_ops(&["Comv".into()], &["Conv", "Gemm"], "ops", "prune").unwrap_err();
        assert_eq!(e.field, "ops[0]");
        assert!(
            e.message.contains("did you mean \"Conv\"") && e.message.contains("prune"),
            "{}",
            e.message
        );

        let mut g = Graph::new("g");
        g.add_node(Node::with_io("Relu", "relu1", &["x"], &["y"]));
        let mut warnings = Vec::new();
        let e =
            check_names(&g, &parse(r#"["relu2"]"#), "include_nodes", &mut warnings).unwrap_err();
        assert!(
            e.to_string()
                .contains("include_nodes[0]: no node is named \"relu2\"; did you mean \"relu1\"?"),
            "{e}"
        );
        check_names(
            &g,
            &parse(r#"[{ "regex": "conv" }]"#),
            "exclude_nodes",
            &mut warnings,
        )
        .unwrap();
        assert_eq!(
            warnings,
            vec!["exclude_nodes[0]: regex \"conv\" matches no node name"]
        );
        let e = check_keys(&["relu".to_string()], &["relu1"], "overrides", "nodes").unwrap_err();
        assert!(
            e.to_string().contains(
                "overrides.relu: \"relu\" is not one of the 1 nodes; did you mean \"relu1\"?"
            ),
            "{e}"
        );
    }
}
