//! Constant tensors (initializers and attribute values) and where their bytes live.
//!
//! Tensor data is never copied on load: inline `raw_data` is a [`Bytes`] slice of
//! the memory-mapped model file, and external data is a slice of the
//! memory-mapped side file, mapped on first use. Cloning a tensor clones a
//! reference count, not the weights.
//!
//! A pass or the writer that is done with a mapped tensor's bytes calls
//! [`Tensor::release_pages`]: the pages leave the process's resident set (the
//! kernel's page cache keeps them; the next read maps them back in), so a
//! pass that reads every weight once does not end up holding all of them.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::dtype::DataType;
use super::types::KeyValue;
use super::IrError;

/// A dense tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The tensor's name (the value name, for initializers).
    pub name: Option<String>,
    /// Element type code as stored (see [`Tensor::dtype`]).
    pub data_type: Option<i32>,
    /// Dimensions.
    pub dims: Vec<i64>,
    /// Legacy chunking information, kept for the round trip.
    pub segment: Option<Segment>,
    /// Free-form documentation.
    pub doc_string: Option<String>,
    /// Metadata entries.
    pub metadata_props: Vec<KeyValue>,
    /// `data_location` as stored: `Some(1)` exactly when the data is external.
    pub data_location: Option<i32>,
    /// The elements.
    pub data: TensorData,
}

/// The legacy `TensorProto.Segment`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First element.
    pub begin: Option<i64>,
    /// One past the last element.
    pub end: Option<i64>,
}

/// Where and how a tensor's elements are stored.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Packed little-endian bytes (`raw_data`).
    Raw(Bytes),
    /// The typed repeated fields (`float_data`, `int64_data`, ...).
    Fields(TypedFields),
    /// Bytes in a file beside the model.
    External(ExternalData),
}

/// The typed repeated fields of a tensor. ONNX stores small integer types in
/// `int32_data` and float16/bfloat16 as their bit patterns there too.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypedFields {
    /// `float_data`.
    pub float_data: Vec<f32>,
    /// `int32_data`.
    pub int32_data: Vec<i32>,
    /// `string_data`.
    pub string_data: Vec<Bytes>,
    /// `int64_data`.
    pub int64_data: Vec<i64>,
    /// `double_data`.
    pub double_data: Vec<f64>,
    /// `uint64_data`.
    pub uint64_data: Vec<u64>,
}

/// A tensor whose bytes live in a side file.
#[derive(Clone, Debug)]
pub struct ExternalData {
    /// The `external_data` entries exactly as stored (location, offset, length, ...).
    pub entries: Vec<KeyValue>,
    /// Path relative to the model's folder.
    pub location: String,
    /// Byte offset in the file.
    pub offset: u64,
    /// Byte length.
    pub length: u64,
    files: Option<Arc<ExternalFiles>>,
}

impl PartialEq for ExternalData {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl ExternalData {
    /// The side file this tensor reads, resolved (canonical) when the model
    /// was loaded from a file.
    pub fn path(&self) -> Option<PathBuf> {
        self.files.as_ref()?.resolve(&self.location).ok()
    }

    /// Parses and checks the `external_data` entries of tensor `tensor`:
    /// the location must be relative and stay inside the model's folder,
    /// and, when `files` is given, the byte range must exist in the file.
    pub fn new(
        tensor: &str,
        entries: Vec<KeyValue>,
        expected_len: Option<u64>,
        files: Option<Arc<ExternalFiles>>,
    ) -> Result<ExternalData, IrError> {
        let bad = |reason: String| IrError::ExternalData {
            tensor: tensor.to_string(),
            reason,
        };
        let field = |key: &str| entries.iter().find(|e| e.key() == key).map(KeyValue::value);
        let location = field("location")
            .ok_or_else(|| bad("no `location` entry".into()))?
            .to_string();
        check_location(&location).map_err(bad)?;
        let number = |key: &str| -> Result<Option<u64>, IrError> {
            field(key)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| bad(format!("`{key}` is not a byte count: {v:?}")))
                })
                .transpose()
        };
        let offset = number("offset")?.unwrap_or(0);
        let length = match (number("length")?, expected_len) {
            (Some(len), _) => len,
            (None, Some(len)) => len,
            (None, None) => {
                return Err(bad(
                    "no `length` entry and the length cannot be derived from the dtype".into(),
                ))
            }
        };
        if let Some(files) = &files {
            let size = files.file_len(&location).map_err(bad)?;
            if offset.checked_add(length).is_none_or(|end| end > size) {
                return Err(bad(format!(
                    "bytes {offset}..{} lie beyond the end of {location} ({size} bytes)",
                    offset.saturating_add(length)
                )));
            }
        }
        Ok(ExternalData {
            entries,
            location,
            offset,
            length,
            files,
        })
    }

    /// Drops this tensor's pages of the side file from the process's
    /// resident set (see [`ExternalFiles::release`]). The bytes stay readable:
    /// the next access maps them back in from the page cache or the file.
    pub fn release_pages(&self) {
        if let Some(files) = &self.files {
            files.release(&self.location, self.offset, self.length);
        }
    }

    /// The bytes, read (memory-mapped) from the side file on first use.
    pub fn bytes(&self) -> Result<Bytes, IrError> {
        let files = self.files.as_ref().ok_or_else(|| IrError::ExternalData {
            tensor: self.location.clone(),
            reason: "the model was not loaded from a file, so its external data cannot be found"
                .into(),
        })?;
        let map = files
            .map(&self.location)
            .map_err(|reason| IrError::ExternalData {
                tensor: self.location.clone(),
                reason,
            })?;
        let start = usize::try_from(self.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(self.length).unwrap_or(usize::MAX));
        if end > map.len() {
            return Err(IrError::ExternalData {
                tensor: self.location.clone(),
                reason: format!("bytes {start}..{end} lie beyond the end of the file"),
            });
        }
        Ok(map.slice(start..end))
    }
}

/// Rejects external-data locations that are absolute or climb out of the
/// model's folder.
fn check_location(location: &str) -> Result<(), String> {
    let path = Path::new(location);
    if location.is_empty() {
        return Err("empty `location`".into());
    }
    if path.is_absolute() || location.starts_with('/') || location.starts_with('\\') {
        return Err(format!(
            "location {location:?} is absolute; it must be relative to the model's folder"
        ));
    }
    let mut depth = 0i32;
    for c in path.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("location {location:?} is absolute"))
            }
        }
        if depth < 0 {
            return Err(format!("location {location:?} escapes the model's folder"));
        }
    }
    Ok(())
}

/// A mapped side file: its bytes, and the map itself (to release pages).
type Mapped = (Bytes, Option<Arc<memmap2::Mmap>>);

/// The side files of one model, memory-mapped on first use and shared by
/// every tensor that lives in them.
#[derive(Debug)]
pub struct ExternalFiles {
    dir: PathBuf,
    maps: Mutex<BTreeMap<String, Mapped>>,
}

impl ExternalFiles {
    /// Side files resolved relative to `dir`, the model's folder.
    pub fn new(dir: impl Into<PathBuf>) -> Arc<ExternalFiles> {
        Arc::new(ExternalFiles {
            dir: dir.into(),
            maps: Mutex::new(BTreeMap::new()),
        })
    }

    /// The folder locations are relative to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn resolve(&self, location: &str) -> Result<PathBuf, String> {
        check_location(location)?;
        let path = self.dir.join(location);
        // A symlink inside the folder could still point outside of it.
        let real = path
            .canonicalize()
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let dir = self
            .dir
            .canonicalize()
            .map_err(|e| format!("cannot open {}: {e}", self.dir.display()))?;
        if !real.starts_with(&dir) {
            return Err(format!(
                "location {location:?} resolves outside the model's folder"
            ));
        }
        Ok(real)
    }

    fn file_len(&self, location: &str) -> Result<u64, String> {
        let path = self.resolve(location)?;
        std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| format!("cannot open {}: {e}", path.display()))
    }

    fn map(&self, location: &str) -> Result<Bytes, String> {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((b, _)) = maps.get(location) {
            return Ok(b.clone());
        }
        let path = self.resolve(location)?;
        let (bytes, map) =
            map_shared(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        maps.insert(location.to_string(), (bytes.clone(), map));
        Ok(bytes)
    }

    /// Drops the whole pages inside bytes `offset..offset + length` of side
    /// file `location` from the process's resident set (`madvise(MADV_DONTNEED)`
    /// on the read-only shared map: the kernel unmaps the pages, the page
    /// cache keeps them, and the next read faults them back in with the same
    /// contents). Pages shared with a neighbouring range stay. Does nothing
    /// when the file is not mapped yet.
    pub fn release(&self, location: &str, offset: u64, length: u64) {
        let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let Some((_, Some(map))) = maps.get(location) else {
            return;
        };
        let page = page_size();
        let (Ok(offset), Ok(length)) = (usize::try_from(offset), usize::try_from(length)) else {
            return;
        };
        let start = offset.div_ceil(page).saturating_mul(page);
        let end = (offset.saturating_add(length).min(map.len()) / page) * page;
        if end > start {
            // SAFETY: the map is read-only and shared (memmap2 maps read-only
            // files MAP_SHARED), so MADV_DONTNEED changes no byte a reader
            // sees: the pages are read back from the file on the next access.
            // No reference into the map is invalidated.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

/// The system's page size (4 KiB when it cannot be asked).
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// A shared read-only map seen as bytes.
struct SharedMap(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Memory-maps a file read-only and keeps a handle on the map for
/// [`ExternalFiles::release`] (`None` for an empty file).
fn map_shared(path: &Path) -> std::io::Result<Mapped> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok((Bytes::new(), None));
    }
    // SAFETY: as in `map_file`.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file)? });
    Ok((Bytes::from_owner(SharedMap(map.clone())), Some(map)))
}

/// Memory-maps a file read-only (empty files become empty buffers).
pub fn map_file(path: &Path) -> std::io::Result<Bytes> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only. whittle never writes to a file it has
    // mapped (outputs go to a temporary file that is renamed into place, which
    // leaves the mapped inode intact); another process truncating the file
    // while whittle runs is outside what any memory-mapping reader can guard.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    Ok(Bytes::from_owner(map))
}

impl Tensor {
    /// A tensor with packed little-endian data.
    pub fn from_raw(
        name: impl Into<String>,
        dtype: DataType,
        dims: Vec<i64>,
        raw: Bytes,
    ) -> Tensor {
        Tensor {
            name: Some(name.into()),
            data_type: Some(dtype.code()),
            dims,
            segment: None,
            doc_string: None,
            metadata_props: Vec::new(),
            data_location: None,
            data: TensorData::Raw(raw),
        }
    }

    /// A float32 tensor.
    pub fn from_f32(name: impl Into<String>, dims: Vec<i64>, values: &[f32]) -> Tensor {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_raw(name, DataType::Float, dims, Bytes::from(raw))
    }

    /// The name, or "" when absent.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The element type.
    pub fn dtype(&self) -> DataType {
        DataType::from_code(self.data_type.unwrap_or(0))
    }

    /// Number of elements implied by the dimensions (`None` on overflow or a
    /// negative dimension).
    pub fn num_elements(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |acc, &d| {
            u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
    }

    /// Drops the pages of this tensor's side-file bytes from the process's
    /// resident set once a reader is done with them ([`ExternalData::release_pages`]);
    /// nothing for tensors held in memory or in the model file.
    pub fn release_pages(&self) {
        if let TensorData::External(e) = &self.data {
            e.release_pages();
        }
    }

    /// True when the data lives in a side file.
    pub fn is_external(&self) -> bool {
        matches!(self.data, TensorData::External(_))
    }

    /// Size of the data in bytes as stored (packed size for typed fields).
    pub fn byte_len(&self) -> u64 {
        match &self.data {
            TensorData::Raw(b) => b.len() as u64,
            TensorData::External(e) => e.length,
            TensorData::Fields(f) => {
                if !f.string_data.is_empty() {
                    return f.string_data.iter().map(|s| s.len() as u64).sum();
                }
                self.num_elements()
                    .and_then(|n| self.dtype().packed_len(n))
                    .unwrap_or(0)
            }
        }
    }

    /// Replaces the data with packed little-endian bytes; clears any external
    /// location.
    pub fn set_raw(&mut self, raw: Bytes) {
        self.data = TensorData::Raw(raw);
        self.data_location = None;
    }

    /// The elements as packed little-endian bytes (`raw_data` layout).
    /// Zero-copy for inline raw data and external data.
    pub fn packed_bytes(&self) -> Result<Bytes, IrError> {
        match &self.data {
            TensorData::Raw(b) => Ok(b.clone()),
            TensorData::External(e) => e.bytes(),
            TensorData::Fields(f) => f.packed(self.dtype()).ok_or_else(|| IrError::Tensor {
                tensor: self.name().to_string(),
                reason: format!(
                    "cannot pack {} elements stored in typed fields",
                    self.dtype()
                ),
            }),
        }
    }

    /// The elements as f32, for float32 tensors.
    pub fn to_f32(&self) -> Result<Vec<f32>, IrError> {
        if self.dtype() != DataType::Float {
            return Err(IrError::Tensor {
                tensor: self.name().to_string(),
                reason: format!("expected f32 elements, found {}", self.dtype()),
            });
        }
        if let TensorData::Fields(f) = &self.data {
            return Ok(f.float_data.clone());
        }
        let bytes = self.packed_bytes()?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// The elements as i64, for int64 and int32 tensors (shapes, axes,
    /// indices).
    pub fn to_i64(&self) -> Result<Vec<i64>, IrError> {
        let bytes = self.packed_bytes()?;
        match self.dtype() {
            DataType::Int64 => Ok(bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()),
            DataType::Int32 => Ok(bytes
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect()),
            other => Err(IrError::Tensor {
                tensor: self.name().to_string(),
                reason: format!("expected int64 or int32 elements, found {other}"),
            }),
        }
    }

    /// A 64-bit FNV-1a checksum of the packed elements (of each string for
    /// string tensors), independent of how the data is stored.
    pub fn checksum(&self) -> Result<u64, IrError> {
        if let TensorData::Fields(f) = &self.data {
            if !f.string_data.is_empty() || self.dtype() == DataType::String {
                let mut h = Fnv::new();
                for s in &f.string_data {
                    h.write(&(s.len() as u64).to_le_bytes());
                    h.write(s);
                }
                return Ok(h.finish());
            }
        }
        let mut h = Fnv::new();
        h.write(&self.packed_bytes()?);
        Ok(h.finish())
    }
}

impl TypedFields {
    /// The elements packed as `raw_data` would hold them.
    fn packed(&self, dtype: DataType) -> Option<Bytes> {
        let mut out = Vec::new();
        match dtype {
            DataType::Float => out.extend(self.float_data.iter().flat_map(|v| v.to_le_bytes())),
            DataType::Double => out.extend(self.double_data.iter().flat_map(|v| v.to_le_bytes())),
            DataType::Int64 => out.extend(self.int64_data.iter().flat_map(|v| v.to_le_bytes())),
            DataType::Uint64 => out.extend(self.uint64_data.iter().flat_map(|v| v.to_le_bytes())),
            DataType::Uint32 => out.extend(
                self.uint64_data
                    .iter()
                    .flat_map(|&v| (v as u32).to_le_bytes()),
            ),
            DataType::Int32 => out.extend(self.int32_data.iter().flat_map(|v| v.to_le_bytes())),
            DataType::Complex64 => out.extend(self.float_data.iter().flat_map(|v| v.to_le_bytes())),
            DataType::Complex128 => {
                out.extend(self.double_data.iter().flat_map(|v| v.to_le_bytes()))
            }
            DataType::Int16 | DataType::Uint16 | DataType::Float16 | DataType::Bfloat16 => out
                .extend(
                    self.int32_data
                        .iter()
                        .flat_map(|&v| (v as u16).to_le_bytes()),
                ),
            DataType::Int8
            | DataType::Uint8
            | DataType::Bool
            | DataType::Float8e4m3fn
            | DataType::Float8e4m3fnuz
            | DataType::Float8e5m2
            | DataType::Float8e5m2fnuz
            | DataType::Float8e8m0 => out.extend(self.int32_data.iter().map(|&v| v as u8)),
            // Sub-byte types hold one packed byte per int32 element.
            DataType::Int4
            | DataType::Uint4
            | DataType::Float4e2m1
            | DataType::Int2
            | DataType::Uint2 => out.extend(self.int32_data.iter().map(|&v| v as u8)),
            _ => return None,
        }
        Some(Bytes::from(out))
    }
}

/// 64-bit FNV-1a: tiny, stable across platforms and versions.
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// A sparse tensor in coordinate form.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseTensor {
    /// The non-default elements (its name is the sparse tensor's name).
    pub values: Option<Tensor>,
    /// Their positions.
    pub indices: Option<Tensor>,
    /// The dense shape.
    pub dims: Vec<i64>,
}

impl SparseTensor {
    /// The name (of the values tensor), or "".
    pub fn name(&self) -> &str {
        self.values.as_ref().map_or("", Tensor::name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_that_escape_are_refused() {
        assert!(check_location("weights.bin").is_ok());
        assert!(check_location("sub/../weights.bin").is_ok());
        assert!(check_location("./weights.bin").is_ok());
        for bad in ["../../etc/passwd", "/etc/passwd", "sub/../../x", "", ".."] {
            assert!(check_location(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn checksum_does_not_depend_on_storage() {
        let raw = Tensor::from_f32("w", vec![2], &[1.0, -2.5]);
        let mut typed = raw.clone();
        typed.data = TensorData::Fields(TypedFields {
            float_data: vec![1.0, -2.5],
            ..TypedFields::default()
        });
        assert_eq!(raw.checksum().unwrap(), typed.checksum().unwrap());
        assert_eq!(typed.to_f32().unwrap(), vec![1.0, -2.5]);
        let other = Tensor::from_f32("w", vec![2], &[1.0, -2.0]);
        assert_ne!(raw.checksum().unwrap(), other.checksum().unwrap());
    }

    #[test]
    fn external_range_is_checked_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), [0u8; 16]).unwrap();
        let files = ExternalFiles::new(dir.path());
        let entries = |off: &str, len: &str| {
            vec![
                KeyValue::new("location", "w.bin"),
                KeyValue::new("offset", off),
                KeyValue::new("length", len),
            ]
        };
        let ok = ExternalData::new("t", entries("8", "8"), None, Some(files.clone())).unwrap();
        assert_eq!(ok.bytes().unwrap().len(), 8);
        let err = ExternalData::new("t", entries("8", "9"), None, Some(files.clone())).unwrap_err();
        assert!(err.to_string().contains("beyond the end"), "{err}");
        let missing = vec![KeyValue::new("location", "nope.bin")];
        let err = ExternalData::new("t", missing, Some(4), Some(files)).unwrap_err();
        assert!(err.to_string().contains("nope.bin"), "{err}");
    }
}
