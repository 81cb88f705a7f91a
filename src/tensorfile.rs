//! Safetensors files with 64-byte aligned tensors: writing (atomically) and
//! validating the header. Dataset files, model files and checkpoints are all
//! such files.
//!
//! ```text
//! [u64 LE header length N][N bytes of JSON, padded with spaces][data section]
//! ```
//!
//! The JSON maps each tensor name to `{dtype, shape, data_offsets}` (offsets
//! relative to the data section) and carries string metadata under
//! `__metadata__`. Safetensors forbids holes between tensors, so alignment
//! comes from two rules: the header is padded until `8 + N` is a multiple of
//! 64, and a tensor whose byte length is not a multiple of 64 is followed by
//! a `__pad.K` U8 tensor, which readers ignore.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::Path;

use serde_json::{json, Value};

use crate::data::DataError;

// Tensors are mapped and read in place, and safetensors data is
// little-endian: a big-endian CPU would need a byte-swapping copy.
#[cfg(not(target_endian = "little"))]
compile_error!("fastnn reads little-endian tensor files in place and needs a little-endian CPU");

/// Alignment of every tensor's data, in bytes.
pub const TENSOR_ALIGN: usize = 64;
/// Largest JSON header accepted, as in the safetensors crate.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    U8,
    F32,
    /// Only for PyTorch's integer buffers in model files
    /// (`num_batches_tracked`).
    I64,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::F32 => 4,
            Dtype::I64 => 8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dtype::U8 => "U8",
            Dtype::F32 => "F32",
            Dtype::I64 => "I64",
        }
    }
}

/// One tensor to be written: its name, dtype, shape and little-endian bytes.
pub struct TensorOut<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Cow<'a, [u8]>,
}

impl<'a> TensorOut<'a> {
    /// An f32 tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> TensorOut<'a> {
        TensorOut {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            bytes: Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    /// An i64 tensor.
    pub fn i64(name: impl Into<String>, shape: Vec<usize>, values: &[i64]) -> TensorOut<'a> {
        TensorOut {
            name: name.into(),
            dtype: Dtype::I64,
            shape,
            bytes: Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    /// A u8 tensor borrowing its bytes.
    pub fn u8(name: impl Into<String>, shape: Vec<usize>, values: &'a [u8]) -> TensorOut<'a> {
        TensorOut {
            name: name.into(),
            dtype: Dtype::U8,
            shape,
            bytes: Cow::Borrowed(values),
        }
    }
}

/// Inserts `__pad.K` tensors after every tensor whose length is not a
/// multiple of [`TENSOR_ALIGN`], so that each tensor starts aligned.
pub fn with_padding(tensors: Vec<TensorOut<'_>>) -> Vec<TensorOut<'_>> {
    let count = tensors.len();
    let mut padded = Vec::with_capacity(2 * count);
    for (i, t) in tensors.into_iter().enumerate() {
        let rem = t.bytes.len() % TENSOR_ALIGN;
        padded.push(t);
        if rem != 0 && i + 1 < count {
            let k = TENSOR_ALIGN - rem;
            padded.push(TensorOut {
                name: format!("__pad.{i}"),
                dtype: Dtype::U8,
                shape: vec![k],
                bytes: Cow::Owned(vec![0u8; k]),
            });
        }
    }
    padded
}

/// CRC-32 of the data section the tensors will form.
pub fn data_crc(tensors: &[TensorOut<'_>]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    tensors.iter().for_each(|t| h.update(&t.bytes));
    h.finalize()
}

/// The JSON header, padded with spaces so that the data section starts at a
/// multiple of [`TENSOR_ALIGN`] bytes from the start of the file.
fn header_json(tensors: &[TensorOut<'_>], metadata: &BTreeMap<String, String>) -> String {
    let mut map = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.bytes.len();
        map.insert(
            t.name.clone(),
            json!({ "dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    map.insert("__metadata__".to_string(), json!(metadata));
    let mut header = Value::Object(map).to_string();
    while !(8 + header.len()).is_multiple_of(TENSOR_ALIGN) {
        header.push(' ');
    }
    header
}

/// Writes `tensors` (already padded, see [`with_padding`]) and `metadata` to
/// `out` atomically: the bytes go to a temporary file beside `out`, which is
/// renamed only once complete and flushed, so an interrupted write leaves
/// the previous file (or nothing) behind. An existing `out` is an error
/// unless `overwrite`.
pub fn write_atomic(
    out: &Path,
    tensors: &[TensorOut<'_>],
    metadata: &BTreeMap<String, String>,
    overwrite: bool,
) -> Result<(), DataError> {
    let header = header_json(tensors, metadata);
    let tmp = crate::atomic::temp_beside(out, ".fastnn-", ".tmp")
        .map_err(|e| DataError::io(out, "cannot create a temporary file in its folder", e))?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        let mut write = || -> std::io::Result<()> {
            w.write_all(&(header.len() as u64).to_le_bytes())?;
            w.write_all(header.as_bytes())?;
            for t in tensors {
                w.write_all(&t.bytes)?;
            }
            w.flush()?;
            w.get_ref().sync_data()
        };
        write().map_err(|e| DataError::io(tmp.path(), "cannot write", e))?;
    }
    let persisted = if overwrite {
        tmp.persist(out).map_err(|e| e.error)
    } else {
        tmp.persist_noclobber(out).map_err(|e| e.error)
    };
    persisted.map_err(|e| DataError::io(out, "cannot move the finished file into place", e))?;
    Ok(())
}

/// Location of one tensor in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub bytes: Range<usize>,
}

/// A parsed and validated header.
#[derive(Debug, Clone, Default)]
pub struct Header {
    /// Offset of the data section in the file.
    pub data_start: usize,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

/// Parses the header of the safetensors file `file` (its whole contents)
/// and checks it as the safetensors crate does: every tensor's offsets hold
/// its shape, and the tensors tile the data section exactly, up to the end
/// of the file. `__pad.K` tensors are checked, then dropped.
pub fn parse(file: &[u8]) -> Result<Header, String> {
    let file_len = file.len() as u64;
    if file.len() < 8 {
        return Err(format!(
            "not a safetensors file: {file_len} bytes is shorter than the 8-byte header length"
        ));
    }
    let n = u64::from_le_bytes(file[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES || 8 + n > file_len {
        return Err(format!(
            "truncated or not a safetensors file: header claims {n} bytes, the file has {file_len}"
        ));
    }
    let data_start = 8 + n as usize;
    let text =
        std::str::from_utf8(&file[8..data_start]).map_err(|_| "header is not UTF-8".to_string())?;
    let json: serde_json::Map<String, Value> =
        serde_json::from_str(text).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let data_len = file.len() - data_start;
    let mut header = Header {
        data_start,
        ..Header::default()
    };
    let mut ranges = Vec::new();
    for (name, entry) in &json {
        if name == "__metadata__" {
            let obj = entry.as_object().ok_or("__metadata__ is not an object")?;
            for (k, v) in obj {
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("metadata {k} is not a string"))?;
                header.metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        let (dtype, shape, begin, end) =
            parse_entry(entry).map_err(|p| format!("tensor {name}: {p}"))?;
        let expected = shape
            .iter()
            .try_fold(dtype.size(), |acc, &x| acc.checked_mul(x))
            .ok_or_else(|| format!("tensor {name}: shape {shape:?} overflows"))?;
        if end < begin || end - begin != expected {
            return Err(format!(
                "tensor {name}: offsets {begin}..{end} do not hold shape {shape:?} of {dtype:?}"
            ));
        }
        if end > data_len {
            return Err(format!(
                "truncated: tensor {name} ends at byte {} but the file has {} bytes",
                data_start + end,
                file.len()
            ));
        }
        ranges.push((begin, end, name.clone()));
        if !name.starts_with("__pad.") {
            header.tensors.insert(
                name.clone(),
                TensorInfo {
                    dtype,
                    shape,
                    bytes: data_start + begin..data_start + end,
                },
            );
        }
    }
    // Safetensors rule: tensors tile the data section exactly, no holes,
    // nothing after the last one.
    ranges.sort();
    let mut at = 0;
    for (begin, end, name) in &ranges {
        if *begin != at {
            return Err(format!(
                "tensor {name} starts at {begin}, expected {at}: a hole or overlap"
            ));
        }
        at = *end;
    }
    if at != data_len {
        return Err(format!(
            "file length {} does not match its header: the tensors end at byte {} (truncated or appended to)",
            file.len(),
            data_start + at
        ));
    }
    Ok(header)
}

/// `(dtype, shape, begin, end)` of one header entry.
fn parse_entry(entry: &Value) -> Result<(Dtype, Vec<usize>, usize, usize), String> {
    let dtype = match entry.get("dtype").and_then(Value::as_str) {
        Some("U8") => Dtype::U8,
        Some("F32") => Dtype::F32,
        Some("I64") => Dtype::I64,
        Some(other) => return Err(format!("dtype {other} is not supported (U8, F32 or I64)")),
        None => return Err("no dtype".to_string()),
    };
    let int = |v: &Value| v.as_u64().and_then(|x| usize::try_from(x).ok());
    let shape = entry
        .get("shape")
        .and_then(Value::as_array)
        .ok_or("no shape")?
        .iter()
        .map(|x| int(x).ok_or("shape entries must be integers"))
        .collect::<Result<Vec<_>, _>>()?;
    let offsets = entry
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .ok_or("data_offsets must be a pair of integers")?;
    match (int(&offsets[0]), int(&offsets[1])) {
        (Some(b), Some(e)) => Ok((dtype, shape, b, e)),
        _ => Err("data_offsets must be a pair of integers".to_string()),
    }
}

/// Reinterprets 4-byte aligned little-endian bytes as f32 values.
///
/// Panics if `bytes` is not 4-byte aligned or not a whole number of values
/// (callers pass tensors validated to start 64-byte aligned).
pub fn cast_f32(bytes: &[u8]) -> &[f32] {
    // SAFETY: every bit pattern is a valid f32, and the byte order is the
    // CPU's (little-endian, see the compile_error above). `align_to` yields
    // an aligned middle part; the assert makes sure it is the whole slice.
    let (head, body, tail) = unsafe { bytes.align_to::<f32>() };
    assert!(head.is_empty() && tail.is_empty(), "f32 tensor misaligned");
    body
}

/// Copies little-endian f32 bytes into `out` (any alignment).
pub fn read_f32_into(out: &mut [f32], bytes: &[u8]) {
    for (x, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *x = f32::from_le_bytes(b.try_into().expect("4 bytes"));
    }
}
