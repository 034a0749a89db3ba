//! Replays every file of the fuzz corpus (`fuzz/corpus/<target>/`) through
//! the same entry points the cargo-fuzz targets call (`whittle::fuzzing`),
//! on stable: no input may panic, and a refused input must say why.
//! Regression inputs for bugs the fuzzer found live in the corpus too.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

#[test]
fn every_corpus_file_returns_a_clean_result() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut failures = Vec::new();
    for (target, run) in whittle::fuzzing::TARGETS {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} has no seed files", dir.display());
        let (mut ok, mut refused) = (0, 0);
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            match catch_unwind(AssertUnwindSafe(|| run(&bytes))) {
                Ok(Ok(())) => ok += 1,
                Ok(Err(msg)) if !msg.trim().is_empty() => refused += 1,
                Ok(Err(_)) => failures.push(format!("{}: refused without a message", f.display())),
                Err(_) => failures.push(format!("{}: panicked", f.display())),
            }
        }
        eprintln!(
            "{target}: {} files, {ok} accepted, {refused} refused",
            files.len()
        );
        assert!(ok > 0, "{target}: no corpus file is accepted");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
