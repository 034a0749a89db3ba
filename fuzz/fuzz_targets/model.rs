//! Fuzz target: `whittle::fuzzing::model` on arbitrary bytes (see src/fuzzing.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = whittle::fuzzing::model(data);
});
