//! Model files: loading (memory-mapped, external data resolved beside the
//! model) and saving (external data planned, everything written to temporary
//! files in the destination folder and renamed into place only when all of it
//! was written, so a failure never leaves a partial output).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use super::encode::{to_proto, write_model};
use super::{decode, proto, OnnxError};
use crate::ir::{
    map_file, AttrValue, ExternalData, ExternalFiles, Graph, Model, Tensor, TensorData,
};

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
    let location = options
        .external_location
        .clone()
        .unwrap_or_else(|| format!("{file_name}.data"));

    // Tensors that were external keep their location and offset beside the
    // output, unless that file is one the input reads: then they move to the
    // output's own side file (renaming over the input's would change what the
    // input reads), in the order the model lists them, one copy per range.
    let mut sources: BTreeMap<(String, u64, u64), Source> = BTreeMap::new();
    for t in all_tensors(model) {
        if let TensorData::External(e) = &t.data {
            let key = (e.location.clone(), e.offset, e.length);
            if let std::collections::btree_map::Entry::Vacant(slot) = sources.entry(key) {
                slot.insert((e.bytes()?, e.path(), e));
            }
        }
    }
    // The files this save renames into place must not be ones the input reads.
    let side_target = dir.join(&location);
    for read in sources.values().filter_map(|(_, p, _)| p.as_ref()) {
        for target in [&side_target, &path.to_path_buf()] {
            if same_file(read, target) {
                return Err(OnnxError::Invalid(format!(
                    "writing {} would replace {}, which the input model reads its weights from; choose another output name or external location",
                    target.display(),
                    read.display()
                )));
            }
        }
    }
    // One walk in the model's order: tensors that were external get their
    // place in the new side file, and main-graph initializers the threshold
    // moves out are appended as they come, so the file is written front to back.
    let mut placed: BTreeMap<(String, u64, u64), u64> = BTreeMap::new();
    let threshold = options.external_threshold;
    rehome(&mut proto, &mut |t, main_initializer| {
        if t.data_location != Some(proto::tensor_proto::DataLocation::External as i32) {
            let big = t
                .raw_data
                .as_ref()
                .is_some_and(|raw| threshold.is_some_and(|th| raw.len() as u64 >= th));
            if main_initializer && big {
                let raw = t.raw_data.take().unwrap_or_default();
                let offset = side.append(&location, raw.clone(), None);
                t.data_location = Some(proto::tensor_proto::DataLocation::External as i32);
                t.external_data = external_entries(&location, offset, raw.len(), &[]);
            }
            return;
        }
        let field = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key.as_deref() == Some(k))
                .and_then(|e| e.value.clone())
        };
        let num = |k: &str| field(k).and_then(|v| v.trim().parse::<u64>().ok());
        let Some(loc) = field("location") else {
            return;
        };
        let offset = num("offset").unwrap_or(0);
        // Without a `length` entry the IR derived it from the dtype and shape.
        let key = match num("length") {
            Some(length) => (loc, offset, length),
            None => match sources.keys().find(|(l, o, _)| *l == loc && *o == offset) {
                Some(k) => k.clone(),
                None => return,
            },
        };
        let Some(&(ref bytes, ref read, from)) = sources.get(&key) else {
            return;
        };
        // Where writing the same location beside the output would not touch
        // what the input reads, the tensor keeps its location and offset (the
        // lossless round trip); otherwise it moves to the output's own file.
        let kept = dir.join(&key.0);
        if !read.as_ref().is_some_and(|r| same_file(r, &kept)) {
            side.add(&key.0, key.1, bytes.clone(), Some(from));
            return;
        }
        let new_offset = match placed.get(&key) {
            Some(&o) => o,
            None => {
                let o = side.append(&location, bytes.clone(), Some(from));
                placed.insert(key, o);
                o
            }
        };
        t.external_data = external_entries(&location, new_offset, bytes.len(), &t.external_data);
    });

    let mut report = SaveReport::default();
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
        // One sequential stream: chunks in offset order, gaps written as zeros.
        let mut f = BufWriter::with_capacity(1 << 20, tmp.file()?);
        let mut at = 0u64;
        for (offset, chunk) in chunks {
            let bytes = &chunk.bytes;
            let gap = offset.saturating_sub(at);
            std::io::copy(&mut std::io::repeat(0).take(gap), &mut f)
                .and_then(|_| write_chunk(&mut f, chunk))
                .map_err(|source| tmp.io_error(source))?;
            at = offset + bytes.len() as u64;
            report.external_bytes += bytes.len() as u64;
        }
        f.flush()
            .and_then(|_| f.get_ref().sync_data())
            .map_err(|source| tmp.io_error(source))?;
        drop(f);
        report.external_files.push(loc.clone());
        staged.push(tmp);
    }
    let tmp = Staged::create(path)?;
    let mut w = BufWriter::with_capacity(1 << 20, tmp.file()?);
    report.model_bytes = write_model(&proto, &mut w)
        .and_then(|n| w.flush().map(|_| n))
        .and_then(|n| w.get_ref().sync_data().map(|_| n))
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

/// An input tensor's bytes, the side file they come from and its entry.
type Source<'a> = (Bytes, Option<PathBuf>, &'a ExternalData);

/// True when both paths name one existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// `external_data` entries pointing at `location`, keeping any keys other
/// than location, offset and length (a checksum, for example).
fn external_entries(
    location: &str,
    offset: u64,
    length: usize,
    old: &[proto::StringStringEntryProto],
) -> Vec<proto::StringStringEntryProto> {
    let entry = |k: &str, v: String| proto::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    let mut out = vec![
        entry("location", location.to_string()),
        entry("offset", offset.to_string()),
        entry("length", length.to_string()),
    ];
    out.extend(
        old.iter()
            .filter(|e| !matches!(e.key.as_deref(), Some("location" | "offset" | "length")))
            .cloned(),
    );
    out
}

/// Calls `place` on every tensor of the model in order (main-graph
/// initializers flagged `true`; subgraphs, attributes, sparse tensors and
/// training graphs too). Nesting is bounded by the decoder's recursion limit.
fn rehome(proto: &mut proto::ModelProto, place: &mut impl FnMut(&mut proto::TensorProto, bool)) {
    fn graph(
        g: &mut proto::GraphProto,
        main: bool,
        place: &mut impl FnMut(&mut proto::TensorProto, bool),
    ) {
        for t in &mut g.initializer {
            place(t, main);
        }
        for s in &mut g.sparse_initializer {
            for t in s.values.iter_mut().chain(s.indices.iter_mut()) {
                place(t, false);
            }
        }
        for n in &mut g.node {
            for a in &mut n.attribute {
                for t in a.t.iter_mut().chain(a.tensors.iter_mut()) {
                    place(t, false);
                }
                for s in a
                    .sparse_tensor
                    .iter_mut()
                    .chain(a.sparse_tensors.iter_mut())
                {
                    for t in s.values.iter_mut().chain(s.indices.iter_mut()) {
                        place(t, false);
                    }
                }
                for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                    graph(sub, false, place);
                }
            }
        }
    }
    if let Some(g) = proto.graph.as_mut() {
        graph(g, true, place);
    }
    for t in &mut proto.training_info {
        for g in t.initialization.iter_mut().chain(t.algorithm.iter_mut()) {
            graph(g, false, place);
        }
    }
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
        let offset = side.append(location, raw.clone(), None);
        t.data_location = Some(proto::tensor_proto::DataLocation::External as i32);
        t.external_data = external_entries(location, offset, raw.len(), &[]);
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
                    AttrValue::SparseTensor(s) => {
                        out.extend(s.values.iter().chain(s.indices.iter()))
                    }
                    AttrValue::SparseTensors(v) => {
                        for s in v {
                            out.extend(s.values.iter().chain(s.indices.iter()));
                        }
                    }
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

/// Bytes to write to a side file, and the input's side file they are a map
/// of, if they are.
struct Chunk<'a> {
    bytes: Bytes,
    from: Option<&'a ExternalData>,
}

/// Writes one chunk at the file's position. Bytes of an input side file are
/// copied file to file by the kernel (`copy_file_range`: no page of the input
/// enters this process) and their mapped pages released; where the kernel
/// cannot (another file system, no support), or for bytes in memory, one
/// `write` straight from the slice (no intermediate buffer).
fn write_chunk(f: &mut BufWriter<File>, chunk: &Chunk) -> std::io::Result<()> {
    let bytes = &chunk.bytes;
    let mut done = 0usize;
    #[cfg(target_os = "linux")]
    if let Some((path, e)) = chunk.from.and_then(|e| Some((e.path()?, e))) {
        use std::os::unix::io::AsRawFd;
        f.flush()?;
        if let Ok(src) = File::open(&path) {
            let mut off_in = i64::try_from(e.offset).unwrap_or(i64::MAX);
            while done < bytes.len() {
                let want = (bytes.len() - done).min(1 << 30);
                // SAFETY: both descriptors are open for the call; `off_in` is
                // a valid i64 the kernel advances; a null out-offset means the
                // output's own file position, which the kernel advances.
                let n = unsafe {
                    libc::copy_file_range(
                        src.as_raw_fd(),
                        &mut off_in,
                        f.get_ref().as_raw_fd(),
                        std::ptr::null_mut(),
                        want,
                        0,
                    )
                };
                match usize::try_from(n) {
                    Ok(n) if n > 0 => done += n,
                    // 0 (end of file) or an error: write the rest from the map.
                    _ => break,
                }
            }
        }
    }
    f.write_all(&bytes[done..])?;
    if let Some(e) = chunk.from {
        e.release_pages();
    }
    Ok(())
}

/// Side-file contents to write: location -> (offset -> bytes).
#[derive(Default)]
struct SideFiles<'a> {
    files: BTreeMap<String, BTreeMap<u64, Chunk<'a>>>,
}

impl<'a> SideFiles<'a> {
    /// Places `bytes` at `offset` of `location` (a tensor keeping its place).
    fn add(&mut self, location: &str, offset: u64, bytes: Bytes, from: Option<&'a ExternalData>) {
        self.files
            .entry(location.to_string())
            .or_default()
            .insert(offset, Chunk { bytes, from });
    }

    /// Appends after everything already placed in `location`; large tensors
    /// start on a page boundary so runtimes can memory-map them.
    fn append(&mut self, location: &str, bytes: Bytes, from: Option<&'a ExternalData>) -> u64 {
        let file = self.files.entry(location.to_string()).or_default();
        let end = file
            .last_key_value()
            .map_or(0, |(o, c)| o + c.bytes.len() as u64);
        let align = if bytes.len() >= 1 << 20 { 4096 } else { 16 };
        let offset = end.div_ceil(align) * align;
        file.insert(offset, Chunk { bytes, from });
        offset
    }
}

/// A temporary file beside its destination, removed unless committed.
///
/// On Linux it is opened with `O_TMPFILE`: an inode with no name until
/// [`Staged::commit`] links it (under the temporary name, then renamed over
/// the target), so a run killed mid-write (SIGKILL included) leaves no file
/// at all. Where the file system lacks `O_TMPFILE`, a named temporary
/// `.NAME.whittle-PID.tmp` is used and removed on error.
struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    dir: PathBuf,
    /// The unnamed file, when `O_TMPFILE` worked.
    anon: std::cell::RefCell<Option<File>>,
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
            dir,
            anon: std::cell::RefCell::new(None),
            done: false,
        })
    }

    fn file(&self) -> Result<File, OnnxError> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            let anon = fs::OpenOptions::new()
                .write(true)
                .mode(0o644)
                .custom_flags(libc::O_TMPFILE)
                .open(&self.dir);
            if let Ok(f) = anon {
                let keep = f.try_clone().map_err(|source| self.io_error(source))?;
                *self.anon.borrow_mut() = Some(keep);
                return Ok(f);
            }
        }
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
        #[cfg(target_os = "linux")]
        if let Some(f) = self.anon.borrow_mut().take() {
            use std::os::unix::ffi::OsStrExt;
            use std::os::unix::io::AsRawFd;
            let proc_path = format!("/proc/self/fd/{}\0", f.as_raw_fd());
            let mut tmp = self.tmp.as_os_str().as_bytes().to_vec();
            tmp.push(0);
            let _ = fs::remove_file(&self.tmp);
            // SAFETY: both paths are NUL-terminated and outlive the call.
            let rc = unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    proc_path.as_ptr().cast(),
                    libc::AT_FDCWD,
                    tmp.as_ptr().cast(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            };
            if rc != 0 {
                return Err(self.io_error(std::io::Error::last_os_error()));
            }
        }
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
