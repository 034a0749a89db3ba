//! The pipeline file: the YAML contract that names the passes to run.
//!
//! ```yaml
//! version: 1
//! passes:            # ordered; each item is a pass name, or a one-key map name -> options
//!   - eliminate-dead
//!   - quantize: { ... }
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::passes;

/// The pipeline format version this build reads.
pub const VERSION: u32 = 1;

/// A parsed pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Format version (always [`VERSION`] once parsed).
    pub version: u32,
    /// The passes, in order.
    pub passes: Vec<PassSpec>,
    /// The optional `validate:` section: when present, `whittle run` runs the
    /// input and the output in tract and writes nothing if a gate fails.
    pub validate: Option<crate::exec::validate::ValidateConfig>,
}

/// One entry of `passes:`: a pass name and its raw options.
#[derive(Debug, Clone, PartialEq)]
pub struct PassSpec {
    /// The pass's registered name.
    pub name: String,
    /// Its options as written (an empty map when only the name was given).
    pub options: serde_json::Value,
    /// Line of the entry in the pipeline file (1-based; 0 when unknown).
    pub line: u64,
}

impl PassSpec {
    /// Builds the pass, checking its name and options. Errors carry the YAML
    /// path (`passes[2].quantize.calibration.method`) relative to the pipeline.
    pub fn build(&self, index: usize) -> Result<Box<dyn passes::Pass>, (String, String)> {
        let here = format!("passes[{index}]");
        let Some(info) = passes::find(&self.name) else {
            let names: Vec<&str> = passes::PASSES.iter().map(|p| p.name).collect();
            let hint = passes::closest(&self.name, &names)
                .map(|c| format!("; did you mean {c:?}?"))
                .unwrap_or_default();
            return Err((
                here,
                format!(
                    "unknown pass {:?}{hint} (valid passes: {})",
                    self.name,
                    names.join(", ")
                ),
            ));
        };
        (info.build)(&self.options).map_err(|e| {
            let field = if e.field.is_empty() {
                format!("{here}.{}", self.name)
            } else {
                format!("{here}.{}.{}", self.name, e.field)
            };
            (field, e.message)
        })
    }
}

/// Errors in a pipeline file.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
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
    #[error("{path}:{}{field}: {message}", if *line > 0 { format!("{line}: ") } else { " ".into() })]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line of the offending entry (1-based; 0 when unknown).
        line: u64,
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
    passes: Vec<Spanned<serde_json::Value>>,
    #[serde(default)]
    validate: Option<Spanned<crate::exec::validate::ValidateConfig>>,
}

impl Pipeline {
    /// Reads and parses a pipeline file.
    pub fn load(path: &Path) -> Result<Pipeline, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|error| PipelineError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Pipeline::parse(&text, path)
    }

    /// Parses pipeline text; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Pipeline, PipelineError> {
        let syntax = |message: String| PipelineError::Syntax {
            path: path.to_path_buf(),
            message,
        };
        let invalid = |line: u64, field: String, message: String| PipelineError::Invalid {
            path: path.to_path_buf(),
            line,
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
        let raw: RawPipeline =
            serde_saphyr::from_str(text).map_err(|e| syntax(yaml_message(&e)))?;
        if raw.version != VERSION {
            return Err(invalid(
                0,
                "version".into(),
                format!(
                    "version {} is not supported; this whittle reads version {VERSION}",
                    raw.version
                ),
            ));
        }
        let mut passes = Vec::with_capacity(raw.passes.len());
        for (i, entry) in raw.passes.into_iter().enumerate() {
            let line = entry.referenced.line();
            let (name, options) = match entry.value {
                serde_json::Value::String(name) => (name, serde_json::Value::Null),
                serde_json::Value::Object(map) if map.len() == 1 => {
                    map.into_iter().next().unwrap_or_default()
                }
                other => {
                    return Err(invalid(
                        line,
                        format!("passes[{i}]"),
                        format!(
                            "a pass entry is a name or a one-key map `name: {{options}}`, not {}",
                            describe(&other)
                        ),
                    ))
                }
            };
            let options = match options {
                serde_json::Value::Null => serde_json::Value::Object(Default::default()),
                o => o,
            };
            let spec = PassSpec {
                name,
                options,
                line,
            };
            spec.build(i)
                .map_err(|(field, message)| invalid(line, field, message))?;
            passes.push(spec);
        }
        if let Some(v) = &raw.validate {
            v.value.check().map_err(|(field, message)| {
                invalid(v.referenced.line(), format!("validate.{field}"), message)
            })?;
        }
        Ok(Pipeline {
            version: raw.version,
            passes,
            validate: raw.validate.map(|v| v.value),
        })
    }
}

/// The parser's message on one line: "line 4 column 1: duplicate mapping key: passes".
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // The parser suggests one of its own API options; that means nothing to a user.
    let message = first
        .split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(first);
    match e.location() {
        Some(at) if !message.contains("line ") => {
            format!("line {} column {}: {message}", at.line(), at.column())
        }
        _ => message.to_string(),
    }
}

fn describe(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => format!("a map with {} keys", m.len()),
        serde_json::Value::Array(_) => "a list".into(),
        serde_json::Value::Null => "an empty value".into(),
        other => format!("the value {other}"),
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
        let p = parse(
            "version: 1\npasses:\n  - eliminate-dead\n  - fold-batchnorm: { into: [Conv] }\n",
        )
        .unwrap();
        assert_eq!(p.passes[0].name, "eliminate-dead");
        assert_eq!((p.passes[0].line, p.passes[1].line), (3, 4));
        assert_eq!(p.passes[1].name, "fold-batchnorm");
        assert_eq!(p.passes[1].options["into"][0], "Conv");
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
