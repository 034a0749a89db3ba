//! Compiles `proto/onnx.proto` into Rust types with protox (a pure-Rust protobuf
//! compiler) and prost-build, so building whittle needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["proto/onnx.proto"], ["proto"])?;
    prost_build::Config::new()
        // `bytes::Bytes` for every `bytes` field: decoding from a memory-mapped
        // file then slices tensor data out of the map instead of copying it.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
