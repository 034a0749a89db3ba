//! The pipeline file: the YAML contract that names the passes to run.
//!
//! ```yaml
//! version: 1
//! passes:            # ordered; each item is a pass name, or a one-key map name -> options
//!   - eliminate-dead
//!   - quantize: { ... }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The pipeline format version this build reads.
pub const VERSION: u32 = 1;

/// A parsed pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Format version (always [`VERSION`] once parsed).
    pub version: u32,
    /// The passes, in order.
    pub passes: Vec<PassSpec>,
}

/// One entry of `passes:`: a pass name and its raw options.
#[derive(Debug, Clone, PartialEq)]
pub struct PassSpec {
    /// The pass's registered name.
    pub name: String,
    /// Its options as written (an empty map when only the name was given).
    pub options: serde_json::Value,
}

/// Errors in a pipeline file.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The YAML is malformed or does not have the pipeline's shape.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is present and well-formed but not acceptable.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The YAML path of the offending value (`passes[2].quantize`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    version: u32,
    #[serde(default)]
    passes: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawEntry {
    Name(String),
    WithOptions(BTreeMap<String, serde_json::Value>),
}

impl Pipeline {
    /// Reads and parses a pipeline file.
    pub fn load(path: &Path) -> Result<Pipeline, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Pipeline::parse(&text, path)
    }

    /// Parses pipeline text; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Pipeline, PipelineError> {
        let syntax = |message: String| PipelineError::Syntax {
            path: path.to_path_buf(),
            message,
        };
        let invalid = |field: String, message: String| PipelineError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        if let Some((line, _)) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.trim_start_matches(' ').starts_with('\t'))
        {
            return Err(syntax(format!(
                "line {}: a tab indents this line; YAML indentation must use spaces",
                line + 1
            )));
        }
        let raw: RawPipeline = serde_saphyr::from_str(text).map_err(|e| syntax(e.to_string()))?;
        if raw.version != VERSION {
            return Err(invalid(
                "version".into(),
                format!(
                    "version {} is not supported; this whittle reads version {VERSION}",
                    raw.version
                ),
            ));
        }
        let mut passes = Vec::with_capacity(raw.passes.len());
        for (i, entry) in raw.passes.into_iter().enumerate() {
            let spec = match entry {
                RawEntry::Name(name) => PassSpec {
                    name,
                    options: serde_json::Value::Object(Default::default()),
                },
                RawEntry::WithOptions(map) => {
                    if map.len() != 1 {
                        return Err(invalid(
                            format!("passes[{i}]"),
                            format!(
                                "a pass entry is a name or a one-key map `name: {{options}}`; this one has {} keys",
                                map.len()
                            ),
                        ));
                    }
                    let (name, options) = map.into_iter().next().unwrap_or_default();
                    let options = match options {
                        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
                        o => o,
                    };
                    PassSpec { name, options }
                }
            };
            passes.push(spec);
        }
        Ok(Pipeline {
            version: raw.version,
            passes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Pipeline, PipelineError> {
        Pipeline::parse(text, Path::new("p.yaml"))
    }

    #[test]
    fn names_and_one_key_maps_are_entries() {
        let p = parse("version: 1\npasses:\n  - eliminate-dead\n  - quantize: { a: 1 }\n").unwrap();
        assert_eq!(p.passes[0].name, "eliminate-dead");
        assert_eq!(p.passes[1].name, "quantize");
        assert_eq!(p.passes[1].options["a"], 1);
        assert!(parse("version: 1\npasses: []\n").unwrap().passes.is_empty());
    }

    #[test]
    fn shape_errors_are_reported() {
        let err = parse("passes: []\n").unwrap_err().to_string();
        assert!(err.contains("version"), "{err}");
        let err = parse("version: 2\npasses: []\n").unwrap_err().to_string();
        assert!(err.contains("version 2 is not supported"), "{err}");
        let err = parse("version: 1\npasses:\n\t- x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("tab"), "{err}");
        let err = parse("version: 1\nversion: 1\npasses: []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") || err.contains("duplicate"), "{err}");
        let err = parse("version: 1\npases: []\n").unwrap_err().to_string();
        assert!(err.contains("pases"), "{err}");
        let err = parse("version: 1\npasses:\n  - {a: 1, b: 2}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("passes[0]"), "{err}");
    }
}
