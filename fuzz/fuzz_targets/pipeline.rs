//! Fuzz target: `whittle::fuzzing::pipeline` on arbitrary bytes (see src/fuzzing.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = whittle::fuzzing::pipeline(data);
});
