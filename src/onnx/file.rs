//! Model files: loading (memory-mapped, external data resolved beside the
//! model) and saving (external data planned, everything written to temporary
//! files in the destination folder and renamed into place only when all of it
//! was written, so a failure never leaves a partial output).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use super::encode::{to_proto, write_model};
use super::{decode, proto, OnnxError};
use crate::ir::{map_file, AttrValue, ExternalFiles, Graph, Model, Tensor, TensorData};

/// Reads a model file. Tensor data stays in the memory map; external data is
/// resolved relative to the model's folder and checked (relative location,
/// inside the folder, byte range present) before this returns.
pub fn load(path: &Path) -> Result<Model, OnnxError> {
    let in_file = |source: OnnxError| OnnxError::File {
        path: path.to_path_buf(),
        error: Box::new(source),
    };
    let bytes = map_file(path).map_err(|error| OnnxError::Io {
        what: "cannot read",
        path: path.to_path_buf(),
        error,
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    decode(bytes, Some(ExternalFiles::new(dir))).map_err(in_file)
}

/// How [`save`] lays out tensor data.
#[derive(Clone, Debug, Default)]
pub struct SaveOptions {
    /// Move main-graph initializers of at least this many bytes to a side
    /// file. Tensors that were external stay external either way.
    pub external_threshold: Option<u64>,
    /// Side file for newly external tensors, relative to the output's folder
    /// (default: the output's file name plus `.data`).
    pub external_location: Option<String>,
}

/// What [`save`] wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SaveReport {
    /// Size of the model file.
    pub model_bytes: u64,
    /// Bytes of tensor data written to side files.
    pub external_bytes: u64,
    /// Side files written, relative to the output's folder.
    pub external_files: Vec<String>,
    /// True when tensors were moved out because the file would pass 2 GiB.
    pub externalized_for_size: bool,
}

/// Largest protobuf ONNX readers accept.
const PROTOBUF_LIMIT: usize = (1 << 31) - 1;
/// Tensors smaller than this stay inline when whittle must shrink a model below 2 GiB.
const MIN_AUTO_EXTERNAL: usize = 1024;

/// Writes `model` to `path` (and its external data beside it), atomically.
pub fn save(model: &Model, path: &Path, options: &SaveOptions) -> Result<SaveReport, OnnxError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| OnnxError::Invalid(format!("{} is not a file path", path.display())))?;
    let mut proto = to_proto(model);
    let mut side = SideFiles::default();

    // Tensors that already live in side files keep their location and offset.
    for t in all_tensors(model) {
        if let TensorData::External(e) = &t.data {
            side.add(&e.location, e.offset, e.bytes()?);
        }
    }

    // Tensors the options (or the 2 GiB limit) move out.
    let location = options
        .external_location
        .clone()
        .unwrap_or_else(|| format!("{file_name}.data"));
    let mut report = SaveReport::default();
    if let Some(threshold) = options.external_threshold {
        externalize(&mut proto, &mut side, &location, |len| {
            len as u64 >= threshold
        });
    }
    if proto.encoded_len() > PROTOBUF_LIMIT {
        report.externalized_for_size = true;
        externalize(&mut proto, &mut side, &location, |len| {
            len >= MIN_AUTO_EXTERNAL
        });
        if proto.encoded_len() > PROTOBUF_LIMIT {
            return Err(OnnxError::Invalid(format!(
                "the model is {} bytes even with every initializer of {MIN_AUTO_EXTERNAL}+ bytes stored externally; protobuf files cannot pass 2 GiB",
                proto.encoded_len()
            )));
        }
    }

    // Write everything to temporaries, then rename into place.
    let mut staged = Vec::new();
    for (loc, chunks) in &side.files {
        let target = dir.join(loc);
        let tmp = Staged::create(&target)?;
        let mut f = tmp.file()?;
        for (offset, bytes) in chunks {
            f.seek(SeekFrom::Start(*offset))
                .and_then(|_| f.write_all(bytes))
                .map_err(|source| tmp.io_error(source))?;
            report.external_bytes += bytes.len() as u64;
        }
        report.external_files.push(loc.clone());
        staged.push(tmp);
    }
    let tmp = Staged::create(path)?;
    let mut w = BufWriter::with_capacity(1 << 20, tmp.file()?);
    report.model_bytes = write_model(&proto, &mut w)
        .and_then(|n| w.flush().map(|_| n))
        .map_err(|source| tmp.io_error(source))?;
    drop(w);
    staged.push(tmp);
    // Side files first, the model last: a reader never sees a new model
    // pointing at old data.
    for s in staged {
        s.commit()?;
    }
    Ok(report)
}

/// Moves main-graph initializers that pass `keep_out` to `location`.
fn externalize(
    proto: &mut proto::ModelProto,
    side: &mut SideFiles,
    location: &str,
    keep_out: impl Fn(usize) -> bool,
) {
    let Some(g) = proto.graph.as_mut() else {
        return;
    };
    for t in &mut g.initializer {
        let Some(raw) = t.raw_data.as_ref() else {
            continue;
        };
        if !keep_out(raw.len()) {
            continue;
        }
        let raw = t.raw_data.take().unwrap_or_default();
        let offset = side.append(location, raw.clone());
        t.data_location = Some(proto::tensor_proto::DataLocation::External as i32);
        t.external_data = [
            ("location", location.to_string()),
            ("offset", offset.to_string()),
            ("length", raw.len().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| proto::StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        })
        .collect();
    }
}

/// Every tensor of the model, in subgraphs and attributes too.
fn all_tensors(model: &Model) -> Vec<&Tensor> {
    fn graph<'a>(g: &'a Graph, out: &mut Vec<&'a Tensor>) {
        out.extend(g.initializers());
        for s in &g.sparse_initializers {
            out.extend(s.values.iter().chain(s.indices.iter()));
        }
        for (_, n) in g.nodes() {
            for a in &n.attributes {
                match &a.value {
                    AttrValue::Tensor(t) => out.push(t),
                    AttrValue::Tensors(ts) => out.extend(ts),
                    _ => {}
                }
                for sub in a.graphs() {
                    graph(sub, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    graph(&model.graph, &mut out);
    for t in &model.training_info {
        for g in t.initialization.iter().chain(t.algorithm.iter()) {
            graph(g, &mut out);
        }
    }
    out
}

/// Side-file contents to write: location -> (offset -> bytes).
#[derive(Default)]
struct SideFiles {
    files: BTreeMap<String, BTreeMap<u64, Bytes>>,
}

impl SideFiles {
    fn add(&mut self, location: &str, offset: u64, bytes: Bytes) {
        self.files
            .entry(location.to_string())
            .or_default()
            .insert(offset, bytes);
    }

    /// Appends after everything already placed in `location`; large tensors
    /// start on a page boundary so runtimes can memory-map them.
    fn append(&mut self, location: &str, bytes: Bytes) -> u64 {
        let file = self.files.entry(location.to_string()).or_default();
        let end = file
            .iter()
            .map(|(o, b)| o + b.len() as u64)
            .max()
            .unwrap_or(0);
        let align = if bytes.len() >= 1 << 20 { 4096 } else { 16 };
        let offset = end.div_ceil(align) * align;
        file.insert(offset, bytes);
        offset
    }
}

/// A temporary file beside its destination, removed unless committed.
struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    done: bool,
}

impl Staged {
    fn create(target: &Path) -> Result<Staged, OnnxError> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(|error| OnnxError::Io {
            what: "cannot create folder",
            path: dir.clone(),
            error,
        })?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.whittle-{}.tmp", std::process::id()));
        Ok(Staged {
            tmp,
            target: target.to_path_buf(),
            done: false,
        })
    }

    fn file(&self) -> Result<File, OnnxError> {
        File::create(&self.tmp).map_err(|source| self.io_error(source))
    }

    fn io_error(&self, error: std::io::Error) -> OnnxError {
        OnnxError::Io {
            what: "cannot write",
            path: self.target.clone(),
            error,
        }
    }

    fn commit(mut self) -> Result<(), OnnxError> {
        fs::rename(&self.tmp, &self.target).map_err(|source| self.io_error(source))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
