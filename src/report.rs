//! The run report: what `whittle run` did, written as JSON with `--report`.

use std::path::Path;

use serde::Serialize;

use crate::manager::PassRun;

/// One line for the terminal: `fold-batchnorm: folded=2 nodes_removed=2 (0.01s)`.
pub fn pass_line(run: &PassRun) -> String {
    let counters: Vec<String> = run
        .report
        .counters
        .iter()
        .filter(|(_, &v)| v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut line = format!(
        "{}: {} ({:.2}s)",
        run.name,
        if counters.is_empty() {
            "no change".to_string()
        } else {
            counters.join(" ")
        },
        run.seconds
    );
    for block in &run.report.summary {
        for l in block.lines() {
            line.push_str(&format!("\n  {l}"));
        }
    }
    for w in &run.report.warnings {
        line.push_str(&format!("\n  warning: {w}"));
    }
    line
}

/// What one `whittle run` did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The model read.
    pub input: String,
    /// The model written.
    pub output: String,
    /// One entry per pass run, in order.
    pub passes: Vec<PassRun>,
    /// Size of the written model file.
    pub output_bytes: u64,
    /// Bytes written to side files.
    pub external_bytes: u64,
    /// Side files written.
    pub external_files: Vec<String>,
    /// Wall time of the whole run.
    pub seconds: f64,
    /// The validation of the output against the input, when the pipeline
    /// has a `validate:` section (its table, gates and timing).
    pub validation: Option<crate::exec::validate::ValidationReport>,
}

/// Writes a report as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)? + "\n";
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.whittle-{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
