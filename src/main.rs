//! The `whittle` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use whittle::ir::{self, Model};
use whittle::onnx::{self, SaveOptions};
use whittle::pipeline::Pipeline;
use whittle::{inspect, report};

/// whittle: rewrite ONNX models for edge deployment, and prove they still compute the same thing.
#[derive(Parser)]
#[command(version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline of passes on a model and write the result.
    Run {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// The model to read (never modified).
        #[arg(long, short)]
        input: PathBuf,
        /// Where to write the rewritten model (written atomically).
        #[arg(long, short)]
        output: PathBuf,
        /// Store initializers of at least this size in a side file
        /// `<output>.data` (bytes; K, M, G suffixes are powers of 1024).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        external_data: Option<u64>,
        /// Write the run report as JSON to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Summarise a model: inputs/outputs, op histogram, parameters, bytes, opsets, MACs.
    Inspect {
        /// The model.
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the deterministic text form of a model (for snapshot tests and diffs).
    Dump {
        /// The model.
        model: PathBuf,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 1024, 64K, 1M)"))?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use K, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Loads a model and checks it with the IR verifier.
fn load(path: &Path) -> Result<Model> {
    let model = onnx::load(path)?;
    ir::verify(&model).map_err(|e| {
        let mut problems = e.problems.into_iter();
        let first = problems.next().unwrap_or_default();
        let more = problems.len();
        let tail = if more > 0 {
            format!(" (and {more} more problems)")
        } else {
            String::new()
        };
        anyhow::anyhow!("{}: invalid model: {first}{tail}", path.display())
    })?;
    Ok(model)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { model, json } => {
            let summary = inspect::summarize(&load(&model)?);
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", inspect::render(&summary));
            }
        }
        Command::Dump { model } => print!("{}", ir::dump(&load(&model)?)),
        Command::Run {
            pipeline,
            input,
            output,
            external_data,
            report: report_path,
        } => {
            let started = Instant::now();
            let pipeline = Pipeline::load(&pipeline)?;
            if same_file(&input, &output) {
                bail!(
                    "--output {} is the input file; whittle never modifies its input, choose another path",
                    output.display()
                );
            }
            let model = load(&input)?;
            if let Some(p) = pipeline.passes.first() {
                bail!(
                    "passes[0]: unknown pass {:?}; this build has no passes yet",
                    p.name
                );
            }
            let options = SaveOptions {
                external_threshold: external_data,
                external_location: None,
            };
            let saved = onnx::save(&model, &output, &options)
                .with_context(|| format!("cannot write {}", output.display()))?;
            let run = report::RunReport {
                input: input.display().to_string(),
                output: output.display().to_string(),
                passes: Vec::new(),
                output_bytes: saved.model_bytes,
                external_bytes: saved.external_bytes,
                external_files: saved.external_files,
                seconds: started.elapsed().as_secs_f64(),
            };
            eprintln!(
                "wrote {} ({} bytes{}) in {:.2}s",
                output.display(),
                run.output_bytes,
                if run.external_bytes > 0 {
                    format!(" + {} bytes of external data", run.external_bytes)
                } else {
                    String::new()
                },
                run.seconds
            );
            if let Some(path) = report_path {
                report::write_json(&path, &run)?;
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("lots").is_err());
    }
}
