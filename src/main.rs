//! The `whittle` command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use whittle::ir::{self, Model};
use whittle::onnx::{self, SaveOptions};
use whittle::pipeline::Pipeline;
use whittle::{describe, inspect, manager, passes, report};

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
        /// Write the text dump of the model before the first pass and after
        /// every pass into this folder (00-input.txt, 01-<pass>.txt, ...).
        #[arg(long, value_name = "DIR")]
        dump_dir: Option<PathBuf>,
        /// Calibration data for passes that run the model (quantize): an .npz
        /// file (one array per input, first axis = samples) or a folder of
        /// .npz files (one sample each). Without it, seeded synthetic inputs.
        #[arg(long, value_name = "NPZ|DIR")]
        data: Option<PathBuf>,
        /// Pin a symbolic input dim (repeatable): --dim batch=1.
        #[arg(long = "dim", value_name = "NAME=VALUE", value_parser = parse_dim)]
        dims: Vec<(String, usize)>,
        /// Threads for passes that run the model (default: all cores).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        threads: Option<u32>,
    },
    /// List every pass with its options, types, defaults and meaning; with a
    /// NAME, print that pass's full documentation.
    Passes {
        /// A pass name.
        name: Option<String>,
    },
    /// Print the JSON Schema of the pipeline file (for editor completion and CI linting).
    Schema,
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
    /// Run two models on the same inputs in tract and compare every output
    /// (max/mean abs error, SQNR, cosine, top-1); exits non-zero when a gate
    /// fails, when tract cannot run a model, or when the signatures differ.
    Validate(ValidateArgs),
}

/// Arguments of `whittle validate`.
#[derive(clap::Args)]
struct ValidateArgs {
    /// The original model.
    original: PathBuf,
    /// The rewritten model.
    rewritten: PathBuf,
    /// Inputs: an .npz file (one array per input, first axis = samples) or a
    /// folder of .npz files (one sample each). Without it, seeded synthetic inputs.
    #[arg(long, value_name = "NPZ|DIR")]
    data: Option<PathBuf>,
    /// Use at most N samples (synthetic inputs: exactly N, default 8).
    #[arg(long, value_name = "N")]
    samples: Option<usize>,
    /// Pin a symbolic input dim (repeatable): --dim batch=1 --dim height=224.
    #[arg(long = "dim", value_name = "NAME=VALUE", value_parser = parse_dim)]
    dims: Vec<(String, usize)>,
    /// Gate: every output's SQNR must be at least DB.
    #[arg(long, value_name = "DB")]
    min_sqnr: Option<f64>,
    /// Gate: every output's cosine similarity must be at least C.
    #[arg(long, value_name = "C")]
    min_cosine: Option<f64>,
    /// Gate: every output's largest absolute error must be at most E.
    #[arg(long, value_name = "E")]
    max_abs: Option<f64>,
    /// Gate: class-score outputs must agree on the argmax for at least this share of rows (0..1).
    #[arg(long, value_name = "P")]
    min_top1: Option<f64>,
    /// Seed of the synthetic inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Threads running samples (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn parse_dim(s: &str) -> Result<(String, usize), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE (example: batch=1)"))?;
    match value.trim().parse::<usize>() {
        Ok(v) if v > 0 && !name.trim().is_empty() => Ok((name.trim().to_string(), v)),
        _ => Err(format!(
            "{s:?}: the value must be a positive integer (example: batch=1)"
        )),
    }
}

/// `whittle validate`: prints the table, writes the JSON, fails on a gate.
fn validate_models(a: ValidateArgs) -> Result<()> {
    use whittle::exec::{self, validate};
    let gates = validate::Gates {
        min_sqnr_db: a.min_sqnr,
        min_cosine: a.min_cosine,
        max_abs_error: a.max_abs,
        min_top1: a.min_top1,
    };
    if let Err((field, message)) = gates.check() {
        bail!("--{}: {message}", field.replace('_', "-"));
    }
    let (original, rewritten) = (load(&a.original)?, load(&a.rewritten)?);
    let (da, db) = (exec::folder_of(&a.original), exec::folder_of(&a.rewritten));
    let (la, lb) = (
        a.original.display().to_string(),
        a.rewritten.display().to_string(),
    );
    let subject = |label, model, dir| validate::Subject {
        label,
        model,
        bytes: None,
        dir: Some(dir),
    };
    let options = validate::ValidateOptions {
        data: a.data,
        samples: a.samples,
        dims: a.dims.into_iter().collect(),
        gates,
        synthetic: whittle::data::SyntheticSpec {
            seed: a.seed,
            ..Default::default()
        },
        threads: a.threads,
    };
    let report = validate::validate(
        subject(&la, &original, &da),
        subject(&lb, &rewritten, &db),
        &options,
    )?;
    print!("{}", report.render());
    if let Some(path) = &a.json {
        report::write_json(path, &report)?;
    }
    if let Some(message) = report.failure_message() {
        bail!("{message}");
    }
    Ok(())
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
        Command::Validate(args) => validate_models(args)?,
        Command::Passes { name: None } => print!("{}", describe::passes_overview()),
        Command::Passes { name: Some(name) } => match passes::find(&name) {
            Some(info) => print!("{}", describe::pass_doc(info)),
            None => {
                let names: Vec<&str> = passes::PASSES.iter().map(|p| p.name).collect();
                let hint = passes::closest(&name, &names)
                    .map(|c| format!("; did you mean {c:?}?"))
                    .unwrap_or_default();
                bail!(
                    "unknown pass {name:?}{hint} (valid passes: {})",
                    names.join(", ")
                );
            }
        },
        Command::Schema => println!(
            "{}",
            serde_json::to_string_pretty(&describe::pipeline_schema())?
        ),
        Command::Run {
            pipeline,
            input,
            output,
            external_data,
            report: report_path,
            dump_dir,
            data,
            dims,
            threads,
        } => {
            let started = Instant::now();
            let pipeline_dir = whittle::exec::folder_of(&pipeline);
            let pipeline = Pipeline::load(&pipeline)?;
            if same_file(&input, &output) {
                bail!(
                    "--output {} is the input file; whittle never modifies its input, choose another path",
                    output.display()
                );
            }
            let mut model = load(&input)?;
            let ctx = passes::PassContext {
                data,
                dims: dims.into_iter().collect(),
                model_dir: Some(whittle::exec::folder_of(&input)),
                threads: threads.map(|t| t as usize),
                progress: std::io::stderr().is_terminal(),
                pipeline_dir: Some(pipeline_dir.clone()),
                pipeline_input: None,
            };
            let runs = manager::run(&mut model, &pipeline, &ctx, dump_dir.as_deref())?;
            for r in &runs {
                eprintln!("{}", report::pass_line(r));
            }
            // Validate before anything is written: a failed gate leaves no output.
            let validation = match &pipeline.validate {
                Some(config) => {
                    let label = format!("{} (rewritten)", output.display());
                    let v = whittle::exec::validate::validate_rewrite(
                        &input,
                        &model,
                        &label,
                        config,
                        &pipeline_dir,
                    )?;
                    eprint!("{}", v.render());
                    if let Some(message) = v.failure_message() {
                        bail!("{message}; nothing was written");
                    }
                    Some(v)
                }
                None => None,
            };
            let options = SaveOptions {
                external_threshold: external_data,
                external_location: None,
            };
            let saved = onnx::save(&model, &output, &options)?;
            let run = report::RunReport {
                input: input.display().to_string(),
                output: output.display().to_string(),
                passes: runs,
                output_bytes: saved.model_bytes,
                external_bytes: saved.external_bytes,
                external_files: saved.external_files,
                seconds: started.elapsed().as_secs_f64(),
                validation,
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
