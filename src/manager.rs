//! The pass manager: runs a pipeline's passes in order over a model, cleans
//! dead nodes after each, verifies the IR after each, and names the pass (and
//! its index in the pipeline) in every error.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::ir::{self, Model};
use crate::passes::{eliminate_dead::remove_dead_nodes, PassContext, PassReport};
use crate::pipeline::Pipeline;

/// What one pass did.
#[derive(Debug, Clone, Serialize)]
pub struct PassRun {
    /// Position in the pipeline.
    pub index: usize,
    /// The pass's name.
    pub name: String,
    /// Its report.
    pub report: PassReport,
    /// Nodes the manager removed after the pass because nothing read them.
    pub dead_nodes_cleaned: usize,
    /// Wall time of the pass, verification included.
    pub seconds: f64,
}

/// A pipeline failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// A pass failed, or left a graph the verifier rejects.
    #[error("passes[{index}] ({name}): {message}")]
    Pass {
        /// Position in the pipeline.
        index: usize,
        /// The pass's name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// A dump could not be written.
    #[error("cannot write {path}: {error}")]
    Dump {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}

/// Runs every pass of `pipeline` on `model`; `ctx` is handed to every pass.
/// With `dump_dir`, writes the text dump of the input (`00-input.txt`) and
/// after every pass (`01-<name>.txt`, ...).
pub fn run(
    model: &mut Model,
    pipeline: &Pipeline,
    ctx: &PassContext,
    dump_dir: Option<&Path>,
) -> Result<Vec<PassRun>, ManagerError> {
    let write_dump = |file: String, model: &Model| -> Result<(), ManagerError> {
        let Some(dir) = dump_dir else {
            return Ok(());
        };
        let path = dir.join(file);
        std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&path, ir::dump(model)))
            .map_err(|error| ManagerError::Dump { path, error })
    };
    write_dump("00-input.txt".into(), model)?;
    let mut passes = Vec::with_capacity(pipeline.passes.len());
    for (index, spec) in pipeline.passes.iter().enumerate() {
        let pass = spec.build(index).map_err(|(field, m)| ManagerError::Pass {
            index,
            name: spec.name.clone(),
            message: format!("{field}: {m}"),
        })?;
        passes.push(pass);
    }
    // The pipeline's input, kept for passes that read it (tensors share bytes).
    let mut ctx = ctx.clone();
    if ctx.pipeline_input.is_none() && passes.iter().any(|p| p.needs_pipeline_input()) {
        ctx.pipeline_input = Some(std::sync::Arc::new(model.clone()));
    }
    let mut runs = Vec::with_capacity(pipeline.passes.len());
    for ((index, spec), pass) in pipeline.passes.iter().enumerate().zip(passes) {
        let fail = |message: String| ManagerError::Pass {
            index,
            name: spec.name.clone(),
            message,
        };
        let started = Instant::now();
        let report = pass.run(model, &ctx).map_err(|e| fail(e.to_string()))?;
        let dead_nodes_cleaned = remove_dead_nodes(&mut model.graph);
        ir::verify(model).map_err(|e| {
            fail(format!(
                "the pass left an invalid graph: {}",
                e.problems.join("; ")
            ))
        })?;
        runs.push(PassRun {
            index,
            name: spec.name.clone(),
            report,
            dead_nodes_cleaned,
            seconds: started.elapsed().as_secs_f64(),
        });
        write_dump(format!("{:02}-{}.txt", index + 1, spec.name), model)?;
    }
    Ok(runs)
}
