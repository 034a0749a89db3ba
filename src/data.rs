//! Calibration and evaluation data: numpy `.npz` / `.npy` files, the samples
//! they hold for a model's inputs, and seeded synthetic inputs.
//!
//! Layouts read:
//! - one `.npz` file holding one array per model input, named after the
//!   input, the first axis indexing samples (`[samples, ...input shape]`);
//! - a folder of `.npz` files, one sample each (arrays of the input's shape),
//!   taken in file-name order.
//!
//! Every array is checked against the model's inputs (name, dtype, rank,
//! fixed dims, and one consistent value per symbolic dim) with errors that
//! name the file, the array and the dimension.
//!
//! The `.npy` reader is written here rather than taken from a crate: the
//! format is a magic string, a Python-literal header and packed elements,
//! and a crate would bring an `ndarray` that may not match tract's.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ir::{DataType, DimValue, Graph, Tensor};

/// A dense array of packed little-endian elements (the `raw_data` layout),
/// in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// Element type.
    pub dtype: DataType,
    /// Dimensions (empty for a scalar).
    pub shape: Vec<usize>,
    /// `shape.product() * dtype size` bytes; bools are 0 or 1.
    pub data: Vec<u8>,
}

/// Errors reading data files or matching them to a model.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The file is not a readable `.npz` / `.npy`.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The data does not fit the model's inputs.
    #[error("{path}: {reason}")]
    Mismatch {
        /// The data file (or folder).
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// Synthetic inputs cannot be made.
    #[error("synthetic inputs: {0}")]
    Synthetic(String),
}

/// Bytes per element of the types an [`Array`] can hold.
pub fn element_size(dtype: DataType) -> Option<usize> {
    match dtype {
        DataType::Bool | DataType::Int8 | DataType::Uint8 => Some(1),
        DataType::Int16 | DataType::Uint16 | DataType::Float16 | DataType::Bfloat16 => Some(2),
        DataType::Int32 | DataType::Uint32 | DataType::Float => Some(4),
        DataType::Int64 | DataType::Uint64 | DataType::Double => Some(8),
        _ => None,
    }
}

impl Array {
    /// An array after checking that `data` has the size `shape` and `dtype` imply.
    pub fn new(dtype: DataType, shape: Vec<usize>, data: Vec<u8>) -> Result<Array, String> {
        let size =
            element_size(dtype).ok_or_else(|| format!("{dtype} arrays are not supported"))?;
        let want = shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("shape {shape:?} is too large"))?;
        if data.len() != want {
            return Err(format!(
                "{} bytes of data for a {dtype} array of shape {shape:?} ({want} bytes expected)",
                data.len()
            ));
        }
        let mut data = data;
        if dtype == DataType::Bool {
            for b in &mut data {
                *b = u8::from(*b != 0);
            }
        }
        Ok(Array { dtype, shape, data })
    }

    /// A float32 array.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Array {
        Array {
            dtype: DataType::Float,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The elements of a dense IR tensor (strings are refused).
    pub fn from_tensor(t: &Tensor) -> Result<Array, String> {
        let shape = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = t.packed_bytes().map_err(|e| e.to_string())?;
        Array::new(t.dtype(), shape, bytes.to_vec())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as f64 (bools as 0/1, float16/bfloat16 widened).
    pub fn to_f64(&self) -> Vec<f64> {
        let d = &self.data;
        macro_rules! conv {
            ($t:ty, $n:expr) => {
                d.chunks_exact($n)
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $n])) as f64)
                    .collect()
            };
        }
        match self.dtype {
            DataType::Float => conv!(f32, 4),
            DataType::Double => conv!(f64, 8),
            DataType::Int8 => d.iter().map(|&b| f64::from(b as i8)).collect(),
            DataType::Uint8 | DataType::Bool => d.iter().map(|&b| f64::from(b)).collect(),
            DataType::Int16 => conv!(i16, 2),
            DataType::Uint16 => conv!(u16, 2),
            DataType::Int32 => conv!(i32, 4),
            DataType::Uint32 => conv!(u32, 4),
            DataType::Int64 => conv!(i64, 8),
            DataType::Uint64 => conv!(u64, 8),
            DataType::Float16 => d
                .chunks_exact(2)
                .map(|c| f64::from(f16_to_f32(u16::from_le_bytes([c[0], c[1]]))))
                .collect(),
            DataType::Bfloat16 => d
                .chunks_exact(2)
                .map(|c| {
                    f64::from(f32::from_bits(
                        u32::from(u16::from_le_bytes([c[0], c[1]])) << 16,
                    ))
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Element `index` along the first axis, without that axis.
    pub fn index_first_axis(&self, index: usize) -> Array {
        let inner: usize = self.shape.iter().skip(1).product();
        let size = element_size(self.dtype).unwrap_or(1) * inner;
        Array {
            dtype: self.dtype,
            shape: self.shape[1..].to_vec(),
            data: self.data[index * size..(index + 1) * size].to_vec(),
        }
    }
}

impl fmt::Display for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.dtype, self.shape)
    }
}

/// Widens an IEEE half-precision bit pattern.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise the mantissa.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | ((113 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

// ---------------------------------------------------------------- .npy / .npz

/// Parses one `.npy` file; `path` and `array` name it in errors.
pub fn parse_npy(bytes: &[u8], path: &Path, array: &str) -> Result<Array, DataError> {
    let bad = |reason: String| DataError::Format {
        path: path.to_path_buf(),
        reason: format!("array {array:?}: {reason}"),
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy array (no \\x93NUMPY magic)".into()));
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (
            usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
            10usize,
        ),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header".into()));
            }
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (n as usize, 12)
        }
        v => return Err(bad(format!(".npy format version {v} is not supported"))),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .ok_or_else(|| bad("truncated header".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;
    let dict = match PyLit::parse(header).map_err(|e| bad(format!("header {header:?}: {e}")))? {
        PyLit::Dict(d) => d,
        _ => return Err(bad(format!("header {header:?} is not a dict"))),
    };
    let descr = match dict.get("descr") {
        Some(PyLit::Str(s)) => s.clone(),
        Some(_) => {
            return Err(bad(
                "structured (record) arrays are not supported; save one plain array per input"
                    .into(),
            ))
        }
        None => return Err(bad("header has no 'descr'".into())),
    };
    let fortran = match dict.get("fortran_order") {
        Some(PyLit::Bool(b)) => *b,
        _ => return Err(bad("header has no 'fortran_order'".into())),
    };
    let shape: Vec<usize> = match dict.get("shape") {
        Some(PyLit::Tuple(items)) => items
            .iter()
            .map(|i| match i {
                PyLit::Int(n) => usize::try_from(*n).map_err(|_| bad(format!("dimension {n}"))),
                _ => Err(bad("shape holds a non-integer".into())),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad("header has no 'shape' tuple".into())),
    };
    let (dtype, big_endian) = npy_dtype(&descr).map_err(bad)?;
    let size = element_size(dtype).unwrap_or(1);
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    let body = &bytes[start + header_len..];
    let want = count
        .checked_mul(size)
        .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    if body.len() < want {
        return Err(bad(format!(
            "truncated: {} bytes of data for shape {shape:?} of {descr} ({want} expected)",
            body.len()
        )));
    }
    let mut data = body[..want].to_vec();
    if big_endian && size > 1 {
        for c in data.chunks_exact_mut(size) {
            c.reverse();
        }
    }
    if fortran && shape.len() > 1 {
        data = fortran_to_c(&data, &shape, size);
    }
    Array::new(dtype, shape, data).map_err(bad)
}

/// Reorders column-major elements into row-major order.
fn fortran_to_c(data: &[u8], shape: &[usize], size: usize) -> Vec<u8> {
    let count: usize = shape.iter().product();
    let mut out = vec![0u8; data.len()];
    if count == 0 {
        // Other dimensions may be huge: their strides must not be computed.
        return out;
    }
    // Column-major strides, in elements.
    let mut fstrides = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        fstrides[k] = fstrides[k - 1] * shape[k - 1];
    }
    let mut index = vec![0usize; shape.len()];
    for c in 0..count {
        let f: usize = index.iter().zip(&fstrides).map(|(i, s)| i * s).sum();
        out[c * size..(c + 1) * size].copy_from_slice(&data[f * size..(f + 1) * size]);
        for k in (0..shape.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}

/// Maps a numpy `descr` (`<f4`, `|u1`, ...) to an element type and byte order.
fn npy_dtype(descr: &str) -> Result<(DataType, bool), String> {
    let (order, code) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
        _ => ('=', descr),
    };
    let dtype = match code {
        "b1" | "?" => DataType::Bool,
        "i1" => DataType::Int8,
        "u1" => DataType::Uint8,
        "i2" => DataType::Int16,
        "u2" => DataType::Uint16,
        "i4" => DataType::Int32,
        "u4" => DataType::Uint32,
        "i8" => DataType::Int64,
        "u8" => DataType::Uint64,
        "f2" => DataType::Float16,
        "f4" => DataType::Float,
        "f8" => DataType::Double,
        _ => return Err(format!("numpy dtype {descr:?} is not supported")),
    };
    Ok((dtype, order == '>'))
}

/// Reads every array of an `.npz` archive, in archive order. Archive members
/// are `<name>.npy`; stored and deflated members are both read.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Array)>, DataError> {
    let file = std::fs::File::open(path).map_err(|error| DataError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    read_npz_from(std::io::BufReader::new(file), path)
}

/// [`read_npz`] over any seekable reader; `path` names it in errors.
pub fn read_npz_from(
    reader: impl std::io::Read + std::io::Seek,
    path: &Path,
) -> Result<Vec<(String, Array)>, DataError> {
    let bad = |reason: String| DataError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let mut archive =
        zip::ZipArchive::new(reader).map_err(|e| bad(format!("not a .npz (zip) archive: {e}")))?;
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut member = archive
            .by_index(i)
            .map_err(|e| bad(format!("archive member {i}: {e}")))?;
        if member.is_dir() {
            continue;
        }
        let member_name = member.name().to_string();
        let name = member_name
            .strip_suffix(".npy")
            .unwrap_or(&member_name)
            .to_string();
        // The size is what the archive claims: a hint, capped so a hostile
        // header cannot make us reserve memory the data never fills.
        let hint = usize::try_from(member.size()).unwrap_or(0).min(1 << 26);
        let mut bytes = Vec::with_capacity(hint);
        member
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("array {name:?}: {e}")))?;
        out.push((name.clone(), parse_npy(&bytes, path, &name)?));
    }
    Ok(out)
}

/// The subset of Python literals a `.npy` header uses.
#[derive(Debug, Clone, PartialEq)]
enum PyLit {
    Str(String),
    Int(i64),
    Bool(bool),
    Tuple(Vec<PyLit>),
    Dict(BTreeMap<String, PyLit>),
}

impl PyLit {
    fn parse(text: &str) -> Result<PyLit, String> {
        let mut p = LitParser {
            s: text.as_bytes(),
            i: 0,
            depth: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("unexpected text at byte {}", p.i));
        }
        Ok(v)
    }
}

struct LitParser<'a> {
    s: &'a [u8],
    i: usize,
    /// Open brackets around the current value: bounded so a hostile header
    /// cannot overflow the stack (numpy's own headers nest two deep).
    depth: usize,
}

/// Deepest bracket nesting a `.npy` header may use.
const MAX_HEADER_DEPTH: usize = 16;

impl LitParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Items up to `close`, separated by commas (a trailing comma is allowed).
    fn items(
        &mut self,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            if self.eat(close) {
                return Ok(());
            }
            item(self)?;
            if !self.eat(b',') {
                return if self.eat(close) {
                    Ok(())
                } else {
                    Err(format!(
                        "expected ',' or '{}' at byte {}",
                        close as char, self.i
                    ))
                };
            }
        }
    }

    fn value(&mut self) -> Result<PyLit, String> {
        if matches!(self.peek(), Some(b'(' | b'[' | b'{')) {
            if self.depth >= MAX_HEADER_DEPTH {
                return Err(format!(
                    "brackets nested deeper than {MAX_HEADER_DEPTH} at byte {}",
                    self.i
                ));
            }
            self.depth += 1;
            let v = self.value_inner();
            self.depth -= 1;
            return v;
        }
        self.value_inner()
    }

    fn value_inner(&mut self) -> Result<PyLit, String> {
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != q {
                    self.i += 1;
                }
                if self.i == self.s.len() {
                    return Err("unterminated string".into());
                }
                let s = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                Ok(PyLit::Str(s))
            }
            Some(b'(') | Some(b'[') => {
                let close = if self.s[self.i] == b'(' { b')' } else { b']' };
                self.i += 1;
                let mut v = Vec::new();
                self.items(close, |p| {
                    v.push(p.value()?);
                    Ok(())
                })?;
                Ok(PyLit::Tuple(v))
            }
            Some(b'{') => {
                self.i += 1;
                let mut d = BTreeMap::new();
                self.items(b'}', |p| {
                    let PyLit::Str(k) = p.value()? else {
                        return Err("dict key is not a string".into());
                    };
                    if !p.eat(b':') {
                        return Err(format!("expected ':' at byte {}", p.i));
                    }
                    d.insert(k, p.value()?);
                    Ok(())
                })?;
                Ok(PyLit::Dict(d))
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'-')
                {
                    self.i += 1;
                }
                let word = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                match word {
                    "True" => Ok(PyLit::Bool(true)),
                    "False" => Ok(PyLit::Bool(false)),
                    // numpy writes `3L` for longs under Python 2.
                    w => w
                        .trim_end_matches('L')
                        .parse()
                        .map(PyLit::Int)
                        .map_err(|_| format!("unexpected {w:?} at byte {start}")),
                }
            }
            None => Err("unexpected end of header".into()),
        }
    }
}

// ---------------------------------------------------------------- inputs and samples

/// One input the model reads at run time (graph inputs without an initializer).
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    /// The input's name.
    pub name: String,
    /// Its element type.
    pub dtype: DataType,
    /// Its dims: a size, a symbol name, or unknown (`None` when even the rank is unknown).
    pub shape: Option<Vec<DimValue>>,
}

impl InputSpec {
    /// The run-time inputs of a graph, in order.
    pub fn of_graph(g: &Graph) -> Result<Vec<InputSpec>, String> {
        g.inputs
            .iter()
            .filter(|i| g.initializer(i.name()).is_none())
            .map(|i| {
                let ty =
                    i.ty.as_ref()
                        .ok_or_else(|| format!("input {:?} has no type", i.name()))?;
                let dtype = ty.tensor_elem().ok_or_else(|| {
                    format!(
                        "input {:?} is {ty}, not a tensor of a known element type",
                        i.name()
                    )
                })?;
                Ok(InputSpec {
                    name: i.name().to_string(),
                    dtype,
                    shape: ty
                        .tensor_shape()
                        .map(|s| s.iter().map(|d| d.value.clone()).collect()),
                })
            })
            .collect()
    }
}

impl fmt::Display for InputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.dtype)?;
        match &self.shape {
            None => f.write_str("[..]"),
            Some(dims) => {
                f.write_str("[")?;
                for (i, d) in dims.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    match d {
                        DimValue::Known(n) => write!(f, "{n}")?,
                        DimValue::Symbol(s) => f.write_str(s)?,
                        DimValue::Unknown => f.write_str("?")?,
                    }
                }
                f.write_str("]")
            }
        }
    }
}

/// One sample: one array per model input, in the model's input order.
pub type Sample = Vec<Array>;

/// Where the samples came from, for the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSource {
    /// Read from a file or folder.
    File {
        /// The `.npz` file or folder.
        path: String,
        /// Samples in it.
        available: usize,
    },
    /// Generated.
    Synthetic {
        /// The seed.
        seed: u64,
        /// Floats are uniform in `[lo, hi)`.
        float_range: [f64; 2],
        /// Integers are uniform in `[lo, hi)`.
        int_range: [i64; 2],
        /// Symbolic dims nobody pinned, set to 1.
        defaulted_dims: Vec<String>,
    },
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::File { path, available } => {
                write!(f, "{path} ({available} samples)")
            }
            DataSource::Synthetic {
                seed,
                float_range,
                int_range,
                defaulted_dims,
            } => {
                write!(
                    f,
                    "SYNTHETIC inputs (no data given): seed {seed}, floats uniform in [{}, {}), integers uniform in [{}, {})",
                    float_range[0], float_range[1], int_range[0], int_range[1]
                )?;
                if !defaulted_dims.is_empty() {
                    write!(f, "; dims set to 1: {}", defaulted_dims.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

/// Samples ready to run, with their provenance.
#[derive(Clone, Debug)]
pub struct Samples {
    /// The samples.
    pub samples: Vec<Sample>,
    /// Where they came from.
    pub source: DataSource,
}

/// Reads samples for `inputs` from an `.npz` file or a folder of them, taking
/// at most `limit`, and checks them against the inputs and the pinned `dims`.
pub fn load_samples(
    path: &Path,
    inputs: &[InputSpec],
    dims: &BTreeMap<String, usize>,
    limit: Option<usize>,
) -> Result<Samples, DataError> {
    let meta = std::fs::metadata(path).map_err(|error| DataError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let (samples, available) = if meta.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|error| DataError::Io {
                path: path.to_path_buf(),
                error,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "npz"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DataError::Mismatch {
                path: path.to_path_buf(),
                reason: "the folder holds no .npz files".into(),
            });
        }
        let available = files.len();
        let take = limit.unwrap_or(available).min(available);
        let mut samples = Vec::with_capacity(take);
        for file in &files[..take] {
            let arrays = read_npz(file)?;
            let by_name = bind(file, arrays, inputs)?;
            samples.push(by_name);
        }
        (samples, available)
    } else {
        let arrays = read_npz(path)?;
        let arrays = bind(path, arrays, inputs)?;
        let mut available = None;
        for (a, spec) in arrays.iter().zip(inputs) {
            let n = *a.shape.first().ok_or_else(|| DataError::Mismatch {
                path: path.to_path_buf(),
                reason: format!(
                    "array {:?} is a scalar; arrays hold [samples, ...input shape]",
                    spec.name
                ),
            })?;
            match available {
                None => available = Some(n),
                Some(m) if m != n => {
                    return Err(DataError::Mismatch {
                        path: path.to_path_buf(),
                        reason: format!(
                            "array {:?} has {n} samples (first axis) but {:?} has {m}",
                            spec.name, inputs[0].name
                        ),
                    })
                }
                _ => {}
            }
        }
        let available = available.unwrap_or(0);
        let take = limit.unwrap_or(available).min(available);
        let samples = (0..take)
            .map(|i| arrays.iter().map(|a| a.index_first_axis(i)).collect())
            .collect();
        (samples, available)
    };
    if samples.is_empty() {
        return Err(DataError::Mismatch {
            path: path.to_path_buf(),
            reason: "no samples to run".into(),
        });
    }
    for (i, s) in samples.iter().enumerate() {
        check_sample(s, inputs, dims).map_err(|reason| DataError::Mismatch {
            path: path.to_path_buf(),
            reason: format!("sample {i}: {reason}"),
        })?;
    }
    Ok(Samples {
        samples,
        source: DataSource::File {
            path: path.display().to_string(),
            available,
        },
    })
}

/// Orders a file's arrays as the model's inputs, refusing missing and extra ones.
fn bind(
    path: &Path,
    arrays: Vec<(String, Array)>,
    inputs: &[InputSpec],
) -> Result<Vec<Array>, DataError> {
    let mismatch = |reason: String| DataError::Mismatch {
        path: path.to_path_buf(),
        reason,
    };
    let names = || {
        inputs
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut by_name: BTreeMap<String, Array> = BTreeMap::new();
    for (name, a) in arrays {
        if !inputs.iter().any(|i| i.name == name) {
            // Strict on purpose: an extra array usually means the wrong
            // file. An input `specialize` pinned to a constant is the common
            // legitimate case; say so rather than ignore data silently.
            return Err(mismatch(format!(
                "array {name:?} is not an input of the model (inputs: {}); if a pass such as `specialize` pinned {name:?} to a constant, drop that array from the data",
                names()
            )));
        }
        by_name.insert(name, a);
    }
    inputs
        .iter()
        .map(|i| {
            by_name.remove(&i.name).ok_or_else(|| {
                mismatch(format!(
                    "no array for input {:?} (inputs: {})",
                    i.name,
                    names()
                ))
            })
        })
        .collect()
}

/// Checks one sample's arrays against the inputs: dtype, rank, fixed dims,
/// pinned dims, and one value per symbol across all inputs.
pub fn check_sample(
    sample: &[Array],
    inputs: &[InputSpec],
    dims: &BTreeMap<String, usize>,
) -> Result<(), String> {
    let mut seen: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (a, spec) in sample.iter().zip(inputs) {
        if a.dtype != spec.dtype {
            return Err(format!(
                "input {:?} is {} but the array is {}",
                spec.name, spec.dtype, a.dtype
            ));
        }
        let Some(shape) = &spec.shape else { continue };
        if shape.len() != a.shape.len() {
            return Err(format!(
                "input {spec} has rank {} but the array has shape {:?}",
                shape.len(),
                a.shape
            ));
        }
        for (axis, (d, &n)) in shape.iter().zip(&a.shape).enumerate() {
            match d {
                DimValue::Known(k) if *k >= 0 && *k as usize != n => {
                    return Err(format!(
                        "input {spec}: axis {axis} is {k} but the array has {n} (shape {:?})",
                        a.shape
                    ))
                }
                // "?" is how some exporters (PaddlePaddle) write an unknown dim:
                // anonymous, not one symbol shared by every such axis.
                DimValue::Symbol(s) if s == "?" => {}
                DimValue::Symbol(s) => {
                    if let Some(&p) = dims.get(s) {
                        if p != n {
                            return Err(format!(
                                "input {spec}: dim {s:?} is pinned to {p} but the array has {n} on axis {axis}"
                            ));
                        }
                    }
                    match seen.get(s.as_str()) {
                        Some(&(m, other)) if m != n => {
                            return Err(format!(
                                "dim {s:?} is {m} in input {other:?} but {n} in input {:?}",
                                spec.name
                            ))
                        }
                        _ => {
                            seen.insert(s, (n, &spec.name));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// How synthetic inputs are drawn (the `synthetic:` part of a pipeline's
/// `validate:` section).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticSpec {
    /// Seed of the generator.
    pub seed: u64,
    /// Floats are uniform in `[lo, hi)`.
    pub float_range: [f64; 2],
    /// Integers are uniform in `[lo, hi)`.
    pub int_range: [i64; 2],
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            seed: 0,
            float_range: [-1.0, 1.0],
            int_range: [0, 10],
        }
    }
}

/// SplitMix64: tiny, seedable, and the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Seeded synthetic samples for `inputs`: symbolic dims take their pinned
/// value, or 1 (listed in the source so the report can say so).
pub fn synthetic(
    inputs: &[InputSpec],
    dims: &BTreeMap<String, usize>,
    count: usize,
    spec: &SyntheticSpec,
) -> Result<Samples, DataError> {
    let [flo, fhi] = spec.float_range;
    let [ilo, ihi] = spec.int_range;
    if !flo.is_finite() || !fhi.is_finite() || flo >= fhi {
        return Err(DataError::Synthetic(format!(
            "float range [{flo}, {fhi}) is empty or not finite"
        )));
    }
    if ilo >= ihi {
        return Err(DataError::Synthetic(format!(
            "integer range [{ilo}, {ihi}) is empty"
        )));
    }
    let mut defaulted = Vec::new();
    let mut shapes = Vec::with_capacity(inputs.len());
    for i in inputs {
        let dims_of = i.shape.as_ref().ok_or_else(|| {
            DataError::Synthetic(format!(
                "input {:?} has no declared rank; give data with --data",
                i.name
            ))
        })?;
        let mut shape = Vec::with_capacity(dims_of.len());
        for (axis, d) in dims_of.iter().enumerate() {
            shape.push(match d {
                DimValue::Known(n) => usize::try_from(*n).map_err(|_| {
                    DataError::Synthetic(format!("input {:?}: axis {axis} is {n}", i.name))
                })?,
                DimValue::Symbol(s) => match dims.get(s) {
                    Some(&v) => v,
                    None => {
                        if !defaulted.contains(s) {
                            defaulted.push(s.clone());
                        }
                        1
                    }
                },
                DimValue::Unknown => {
                    let label = format!("{}[{axis}]", i.name);
                    defaulted.push(label);
                    1
                }
            });
        }
        shapes.push(shape);
    }
    let mut samples = Vec::with_capacity(count);
    for s in 0..count {
        let mut sample = Vec::with_capacity(inputs.len());
        for (i, shape) in inputs.iter().zip(&shapes) {
            // One stream per (input, sample): adding an input or a sample
            // leaves the values of the others unchanged.
            let mut h = 0xcbf2_9ce4_8422_2325u64; // FNV-1a of the input's name
            for b in i.name.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            let mut rng = Rng::new(spec.seed ^ h ^ (s as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            sample.push(random_array(i, shape.clone(), &mut rng, spec)?);
        }
        samples.push(sample);
    }
    defaulted.sort();
    Ok(Samples {
        samples,
        source: DataSource::Synthetic {
            seed: spec.seed,
            float_range: spec.float_range,
            int_range: spec.int_range,
            defaulted_dims: defaulted,
        },
    })
}

fn random_array(
    input: &InputSpec,
    shape: Vec<usize>,
    rng: &mut Rng,
    spec: &SyntheticSpec,
) -> Result<Array, DataError> {
    let n: usize = shape.iter().product();
    let [flo, fhi] = spec.float_range;
    let [ilo, ihi] = spec.int_range;
    let span = (ihi - ilo) as u64;
    let mut float = || flo + (fhi - flo) * rng.unit();
    let mut data = Vec::with_capacity(n * element_size(input.dtype).unwrap_or(1));
    match input.dtype {
        DataType::Float => (0..n).for_each(|_| data.extend((float() as f32).to_le_bytes())),
        DataType::Double => (0..n).for_each(|_| data.extend(float().to_le_bytes())),
        DataType::Float16 => {
            (0..n).for_each(|_| data.extend(f32_to_f16(float() as f32).to_le_bytes()))
        }
        DataType::Bool => (0..n).for_each(|_| data.push(u8::from(float() >= (flo + fhi) / 2.0))),
        dt if element_size(dt).is_some() && !dt.is_float() => {
            let size = element_size(dt).unwrap_or(1);
            for _ in 0..n {
                let v = ilo + (rng.next_u64() % span) as i64;
                data.extend_from_slice(&v.to_le_bytes()[..size]);
            }
        }
        dt => {
            return Err(DataError::Synthetic(format!(
                "input {:?}: cannot generate {dt} values; give data with --data",
                input.name
            )))
        }
    }
    Array::new(input.dtype, shape, data).map_err(DataError::Synthetic)
}

/// Narrows to IEEE half precision, rounding to nearest even.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rem = m & ((1 << shift) - 1);
        let mut r = m >> shift;
        if rem > half || (rem == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let rem = man & 0x1fff;
    let mut r = ((e as u32) << 10) | (man >> 13);
    if rem > 0x1000 || (rem == 0x1000 && r & 1 == 1) {
        r += 1;
    }
    sign | r as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Dim, TypeInfo, ValueInfo};

    fn npy(descr: &str, fortran: bool, shape: &str, body: &[u8]) -> Vec<u8> {
        let header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn npy_header_nested_deeply_is_refused_without_overflowing_the_stack() {
        let p = Path::new("t.npz");
        let shape = format!("{}{}", "(".repeat(60_000), ")".repeat(60_000));
        let err = parse_npy(&npy("<f4", false, &shape, &[]), p, "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nested deeper"), "{err}");
    }

    #[test]
    fn npy_fortran_empty_array_with_huge_dimensions_does_not_overflow() {
        let p = Path::new("t.npz");
        // Dimensions whose product overflows before the 0: refused, no panic.
        let shape = format!("({}, {}, 0)", 1u64 << 40, 1u64 << 40);
        let err = parse_npy(&npy("<f4", true, &shape, &[]), p, "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("too large"), "{err}");
        // Empty with large (non-overflowing) dimensions: read, no strides walked.
        let shape = format!("({}, {}, 0)", 1u64 << 20, 1u64 << 20);
        let a = parse_npy(&npy("<f4", true, &shape, &[]), p, "x").unwrap();
        assert!(a.data.is_empty());
    }

    #[test]
    fn npy_headers_and_layouts_are_read() {
        let p = Path::new("t.npz");
        let body: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = parse_npy(&npy("<f4", false, "(2, 3)", &body), p, "x").unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.to_f64(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        // Column-major storage of [[1, 3, 5], [2, 4, 6]].
        let f = parse_npy(&npy("<f4", true, "(2, 3)", &body), p, "x").unwrap();
        assert_eq!(f.to_f64(), vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        // Big-endian int16 and a scalar.
        let be = parse_npy(
            &npy(">i2", false, "(2,)", &[0x01, 0x02, 0xff, 0xfe]),
            p,
            "x",
        )
        .unwrap();
        assert_eq!(be.to_f64(), vec![258.0, -2.0]);
        let s = parse_npy(&npy("|u1", false, "()", &[7]), p, "x").unwrap();
        assert_eq!((s.shape.len(), s.to_f64()), (0, vec![7.0]));
    }

    #[test]
    fn bad_npy_is_refused_naming_the_array() {
        let p = Path::new("d.npz");
        let err = parse_npy(b"not numpy at all", p, "x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d.npz") && err.contains("\"x\"") && err.contains("magic"),
            "{err}"
        );
        let err = parse_npy(&npy("<f4", false, "(4,)", &[0; 8]), p, "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        let err = parse_npy(&npy("<c8", false, "(1,)", &[0; 8]), p, "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("<c8"), "{err}");
        let err = parse_npy(&npy("<f4", false, "(1,", &[0; 4]), p, "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("header"), "{err}");
    }

    #[test]
    fn half_precision_round_trips() {
        for x in [0.0f32, 1.0, -2.5, 65504.0, 6.1e-5, 5.96e-8, 0.333_333] {
            let back = f16_to_f32(f32_to_f16(x));
            assert!((back - x).abs() <= x.abs() * 1e-3 + 6e-8, "{x} -> {back}");
        }
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
        assert_eq!(f16_to_f32(f32_to_f16(1e9)), f32::INFINITY);
    }

    fn write_npz(path: &Path, arrays: &[(&str, Vec<u8>)]) {
        let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in arrays {
            z.start_file(format!("{name}.npy"), opts).unwrap();
            std::io::Write::write_all(&mut z, bytes).unwrap();
        }
        z.finish().unwrap();
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn npz_files_and_folders_give_samples() {
        let g = graph_with_input(vec![Dim::symbol("batch"), Dim::known(2)]);
        let inputs = InputSpec::of_graph(&g).unwrap();
        let none = BTreeMap::new();
        let dir = tempfile::tempdir().unwrap();
        // One file, first axis = 3 samples of [1, 2].
        let one = dir.path().join("d.npz");
        write_npz(
            &one,
            &[(
                "x",
                npy(
                    "<f4",
                    false,
                    "(3, 1, 2)",
                    &f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                ),
            )],
        );
        let s = load_samples(&one, &inputs, &none, None).unwrap();
        assert_eq!(s.samples.len(), 3);
        assert_eq!(s.samples[2][0].to_f64(), vec![5.0, 6.0]);
        assert_eq!(
            load_samples(&one, &inputs, &none, Some(2))
                .unwrap()
                .samples
                .len(),
            2
        );
        // A folder, one sample per file, in file-name order.
        let folder = dir.path().join("samples");
        std::fs::create_dir(&folder).unwrap();
        write_npz(
            &folder.join("b.npz"),
            &[("x", npy("<f4", false, "(1, 2)", &f32s(&[3.0, 4.0])))],
        );
        write_npz(
            &folder.join("a.npz"),
            &[(
                "x",
                npy("<f4", false, "(2, 2)", &f32s(&[1.0, 2.0, 0.0, 0.0])),
            )],
        );
        let s = load_samples(&folder, &inputs, &none, None).unwrap();
        assert_eq!(s.samples[0][0].shape, vec![2, 2]);
        assert_eq!(s.samples[1][0].to_f64(), vec![3.0, 4.0]);
        // Extra and missing arrays are named.
        let extra = dir.path().join("e.npz");
        write_npz(
            &extra,
            &[("y", npy("<f4", false, "(1, 1, 2)", &f32s(&[0.0, 0.0])))],
        );
        let err = load_samples(&extra, &inputs, &none, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("e.npz") && err.contains("\"y\"") && err.contains("x: f32[batch,2]"),
            "{err}"
        );
        let err = load_samples(&dir.path().join("nope.npz"), &inputs, &none, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.npz"), "{err}");
    }

    fn graph_with_input(shape: Vec<Dim>) -> Graph {
        let mut g = Graph::new("g");
        g.inputs.push(ValueInfo::new(
            "x",
            TypeInfo::tensor(DataType::Float, shape),
        ));
        g
    }

    #[test]
    fn samples_are_checked_against_inputs() {
        let g = graph_with_input(vec![Dim::symbol("batch"), Dim::known(3)]);
        let inputs = InputSpec::of_graph(&g).unwrap();
        let ok = Array::from_f32(vec![2, 3], &[0.0; 6]);
        assert!(check_sample(std::slice::from_ref(&ok), &inputs, &BTreeMap::new()).is_ok());
        let pinned = BTreeMap::from([("batch".to_string(), 4)]);
        let err = check_sample(&[ok], &inputs, &pinned).unwrap_err();
        assert!(
            err.contains("batch") && err.contains("pinned to 4"),
            "{err}"
        );
        let err = check_sample(
            &[Array::from_f32(vec![2, 4], &[0.0; 8])],
            &inputs,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.contains("axis 1 is 3"), "{err}");
        let ints = Array::new(DataType::Int64, vec![1, 3], vec![0; 24]).unwrap();
        let err = check_sample(&[ints], &inputs, &BTreeMap::new()).unwrap_err();
        assert!(err.contains("f32") && err.contains("i64"), "{err}");
    }

    #[test]
    fn synthetic_inputs_are_seeded_and_in_range() {
        let g = graph_with_input(vec![Dim::symbol("batch"), Dim::known(64)]);
        let inputs = InputSpec::of_graph(&g).unwrap();
        let spec = SyntheticSpec {
            seed: 7,
            float_range: [2.0, 3.0],
            int_range: [0, 10],
        };
        let a = synthetic(&inputs, &BTreeMap::new(), 3, &spec).unwrap();
        let b = synthetic(&inputs, &BTreeMap::new(), 3, &spec).unwrap();
        assert_eq!(a.samples, b.samples);
        assert_eq!(a.samples[0][0].shape, vec![1, 64]);
        assert_ne!(a.samples[0], a.samples[1]);
        assert!(a.samples[2][0]
            .to_f64()
            .iter()
            .all(|v| (2.0..3.0).contains(v)));
        let DataSource::Synthetic { defaulted_dims, .. } = &a.source else {
            panic!("synthetic source expected")
        };
        assert_eq!(defaulted_dims, &vec!["batch".to_string()]);
        let pinned = BTreeMap::from([("batch".to_string(), 5)]);
        let c = synthetic(&inputs, &pinned, 1, &spec).unwrap();
        assert_eq!(c.samples[0][0].shape, vec![5, 64]);
        let other = synthetic(
            &inputs,
            &BTreeMap::new(),
            1,
            &SyntheticSpec { seed: 8, ..spec },
        )
        .unwrap();
        assert_ne!(other.samples[0], a.samples[0]);
    }
}
