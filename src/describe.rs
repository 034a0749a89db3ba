//! What `whittle passes` and `whittle schema` print: pass documentation and
//! the pipeline file's JSON Schema, both generated from the registry and the
//! pass config structs (their doc comments, types and defaults), so the docs
//! cannot drift from the code.

use std::fmt::Write;

use serde_json::{json, Map, Value};

use crate::passes::{PassInfo, PASSES};

/// One option of a pass, flattened (`calibration.method`).
#[derive(Debug, Clone, PartialEq)]
pub struct OptionDoc {
    /// Dotted path inside the pass's options.
    pub path: String,
    /// Type, as a short string (`bool`, `number`, `list of string`, `"a" | "b"`).
    pub ty: String,
    /// Default value as YAML-ish text, or "" when there is none.
    pub default: String,
    /// The doc comment.
    pub doc: String,
}

/// The options of a pass, flattened in declaration order.
pub fn options(info: &PassInfo) -> Vec<OptionDoc> {
    let schema = inline_refs(&(info.schema)());
    let mut out = Vec::new();
    flatten("", &schema, None, &mut out);
    out
}

fn flatten(prefix: &str, schema: &Value, default: Option<&Value>, out: &mut Vec<OptionDoc>) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, prop) in props {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let own_default = prop
            .get("default")
            .or_else(|| default.and_then(|d| d.get(name)));
        if prop.get("properties").is_some() {
            flatten(&path, prop, own_default, out);
            continue;
        }
        // An optional section (`Option<Struct>`: anyOf [object, null]) gets
        // its own line, then its fields.
        let section = prop
            .get("anyOf")
            .and_then(Value::as_array)
            .and_then(|alts| alts.iter().find(|a| a.get("properties").is_some()));
        out.push(OptionDoc {
            path: path.clone(),
            ty: match section {
                Some(_) => "section (absent: off)".into(),
                None => type_name(prop),
            },
            default: own_default.map(short).unwrap_or_default(),
            doc: prop
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .replace('\n', " "),
        });
        if let Some(section) = section {
            flatten(&path, section, None, out);
        }
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

fn type_name(schema: &Value) -> String {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values.iter().map(short).collect::<Vec<_>>().join(" | ");
    }
    if let Some(alts) = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
    {
        return alts.iter().map(type_name).collect::<Vec<_>>().join(" | ");
    }
    if let Some(c) = schema.get("const") {
        return short(c);
    }
    match schema.get("type") {
        Some(Value::String(t)) if t == "array" => {
            let item = schema
                .get("items")
                .map(type_name)
                .unwrap_or_else(|| "value".into());
            format!("list of {item}")
        }
        Some(Value::String(t)) if t == "boolean" => "bool".into(),
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter(|t| t.as_str() != Some("null"))
            .map(short)
            .collect::<Vec<_>>()
            .join(" | "),
        _ => "value".into(),
    }
}

/// Replaces every `$ref` to `#/$defs/X` by the definition itself.
fn inline_refs(schema: &Value) -> Value {
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    fn walk(v: &Value, defs: &Value, depth: usize) -> Value {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    let name = r.trim_start_matches("#/$defs/");
                    if let (Some(def), true) = (defs.get(name), depth < 32) {
                        let mut merged = walk(def, defs, depth + 1);
                        // Keep sibling keywords (description, default) of the reference.
                        if let Value::Object(mm) = &mut merged {
                            for (k, val) in m {
                                if k != "$ref" {
                                    mm.insert(k.clone(), walk(val, defs, depth + 1));
                                }
                            }
                        }
                        return merged;
                    }
                }
                Value::Object(
                    m.iter()
                        .filter(|(k, _)| k.as_str() != "$defs" && k.as_str() != "$schema")
                        .map(|(k, val)| (k.clone(), walk(val, defs, depth)))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, defs, depth)).collect()),
            other => other.clone(),
        }
    }
    walk(schema, &defs, 0)
}

/// `whittle passes`: every pass, its options, types, defaults and meaning.
pub fn passes_overview() -> String {
    let mut out = String::new();
    for info in PASSES {
        let _ = writeln!(out, "{:<16} {}", info.name, info.summary);
        for o in options(info) {
            let default = if o.default.is_empty() {
                String::new()
            } else {
                format!(" = {}", o.default)
            };
            let _ = writeln!(out, "    {}: {}{default}", o.path, o.ty);
            let _ = writeln!(out, "        {}", o.doc);
        }
        out.push('\n');
    }
    out.push_str("`whittle passes NAME` prints the full documentation of one pass.\n");
    out
}

/// `whittle passes NAME`: the pass's full documentation and options.
pub fn pass_doc(info: &PassInfo) -> String {
    let mut out = String::new();
    for line in info.doc.lines().take_while(|l| l.starts_with("//!")) {
        let text = line.trim_start_matches("//!");
        let _ = writeln!(out, "{}", text.strip_prefix(' ').unwrap_or(text));
    }
    let opts = options(info);
    if !opts.is_empty() {
        let _ = writeln!(out, "\nOptions (all optional):");
        for o in opts {
            let default = if o.default.is_empty() {
                String::new()
            } else {
                format!(" (default {})", o.default)
            };
            let _ = writeln!(out, "  {}: {}{default}\n      {}", o.path, o.ty, o.doc);
        }
    }
    out
}

/// `whittle schema`: a JSON Schema of the pipeline file, for editors and CI linters.
pub fn pipeline_schema() -> Value {
    let mut entries: Vec<Value> = vec![json!({
        "description": "A pass with default options.",
        "enum": PASSES.iter().map(|p| p.name).collect::<Vec<_>>(),
    })];
    for info in PASSES {
        let mut options = inline_refs(&(info.schema)());
        if let Value::Object(m) = &mut options {
            m.remove("title");
            m.insert("description".into(), Value::String(info.summary.into()));
        }
        let mut props = Map::new();
        props.insert(
            info.name.into(),
            json!({ "anyOf": [options, { "type": "null" }] }),
        );
        entries.push(json!({
            "type": "object",
            "properties": props,
            "required": [info.name],
            "additionalProperties": false,
        }));
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "whittle pipeline",
        "type": "object",
        "required": ["version"],
        "additionalProperties": false,
        "properties": {
            "version": { "const": crate::pipeline::VERSION, "description": "Format version of the pipeline file." },
            "passes": {
                "type": "array",
                "description": "Passes in order: a name, or a one-key map name -> options.",
                "items": { "oneOf": entries },
            },
            "validate": {
                "description": "Validate the output against the input with tract before writing it.",
                "allOf": [inline_refs(&crate::exec::validate::ValidateConfig::schema())],
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_is_documented() {
        for info in PASSES {
            for o in options(info) {
                assert!(
                    !o.doc.is_empty(),
                    "{}: option {} has no doc comment",
                    info.name,
                    o.path
                );
                assert!(
                    !o.default.is_empty(),
                    "{}: option {} has no default",
                    info.name,
                    o.path
                );
            }
            assert!(
                pass_doc(info).lines().count() > 5,
                "{} has no //! doc",
                info.name
            );
        }
    }

    #[test]
    fn schema_lists_every_pass() {
        let s = pipeline_schema();
        let entries = s["properties"]["passes"]["items"]["oneOf"]
            .as_array()
            .unwrap();
        assert_eq!(entries.len(), PASSES.len() + 1);
        assert!(!s.to_string().contains("$ref"));
        assert!(s["properties"]["validate"]["allOf"][0]["properties"]["gates"].is_object());
    }
}
