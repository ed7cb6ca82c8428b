//! GGUF (llama.cpp) files: a bounds-checked reader, dequantization to f32, and an importer
//! (`import.rs`; its tokenizer files in `tokenizer.rs`) that writes a HF Llama/Mistral
//! directory (config, F32 safetensors, tokenizer files) the way transformers' own GGUF
//! loader derives them.

use super::checkpoint::HostTensor;
use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod import;
mod tokenizer;

pub use import::{import_gguf, unpermute_rows};
const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// Any integer type as u64 (negative values give None).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(x) => Some(x as u64),
            Self::U16(x) => Some(x as u64),
            Self::U32(x) => Some(x as u64),
            Self::U64(x) => Some(x),
            Self::I8(x) => u64::try_from(x).ok(),
            Self::I16(x) => u64::try_from(x).ok(),
            Self::I32(x) => u64::try_from(x).ok(),
            Self::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }
    /// Any integer type as i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::U64(x) => i64::try_from(x).ok(),
            Self::I8(x) => Some(x as i64),
            Self::I16(x) => Some(x as i64),
            Self::I32(x) => Some(x as i64),
            Self::I64(x) => Some(x),
            _ => self.as_u64().map(|x| x as i64),
        }
    }
    /// A float (f32 widened exactly) or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(x) => Some(x as f64),
            Self::F64(x) => Some(x),
            _ => self.as_i64().map(|x| x as f64),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types this crate knows by name (ids from ggml.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: Self = Self(0);
    pub const F16: Self = Self(1);
    pub const Q4_0: Self = Self(2);
    pub const Q4_1: Self = Self(3);
    pub const Q8_0: Self = Self(8);
    pub const BF16: Self = Self(30);

    pub fn name(self) -> String {
        let known = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
            "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
            "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
            "BF16",
        ];
        match known.get(self.0 as usize) {
            Some(n) => (*n).to_string(),
            None => format!("type {}", self.0),
        }
    }

    /// (elements per block, bytes per block) for the types we dequantize.
    fn block(self) -> Option<(u64, u64)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
            _ => return None,
        })
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the innermost (fastest) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Row-major (HF/numpy) shape: the GGUF dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An open GGUF file (memory-mapped). All offsets were checked against the file size at open.
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_start: u64,
    alignment: u64,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(e) => {
                let s = &self.buf[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => bail!(
                "file is truncated: needs {n} bytes at offset {} but it has {} bytes",
                self.pos,
                self.buf.len()
            ),
        }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.remaining())
            .with_context(|| {
                format!(
                    "string length {len} at offset {} runs past the end of the file",
                    self.pos
                )
            })?;
        let b = self.take(len)?;
        // llama.cpp strings should be UTF-8; keep invalid bytes visible rather than failing.
        Ok(String::from_utf8_lossy(b).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.arr::<1>()?[0]),
            1 => GgufValue::I8(self.arr::<1>()?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.arr()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.arr()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.arr()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.arr()?)),
            7 => match self.arr::<1>()?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => bail!("invalid bool byte {b} at offset {}", self.pos - 1),
            },
            8 => GgufValue::Str(self.string()?),
            9 => {
                if depth > 4 {
                    bail!("arrays nested too deeply at offset {}", self.pos);
                }
                let elem_ty = self.u32()?;
                let n = self.u64()?;
                let min_size: u64 = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    t => bail!("unknown metadata value type {t} at offset {}", self.pos),
                };
                if n.checked_mul(min_size)
                    .is_none_or(|b| b > self.remaining() as u64)
                {
                    bail!(
                        "array of {n} elements at offset {} runs past the end of the file",
                        self.pos
                    );
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem_ty, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.arr()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.arr()?)),
            t => bail!("unknown metadata value type {t} at offset {}", self.pos),
        })
    }
}

impl GgufFile {
    /// Open and parse the header, metadata and tensor infos; check every tensor lies in the file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_inner(path).with_context(|| format!("reading GGUF file {}", path.display()))
    }

    fn open_inner(path: &Path) -> Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata()?.len();
        if len < 24 {
            bail!("file is truncated: {len} bytes is shorter than a GGUF header");
        }
        // SAFETY: the map is read-only; like every mmap reader we rely on the file not being
        // truncated by another process while it is open.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let mut c = Cursor {
            buf: &map[..],
            pos: 0,
        };
        let magic = c.arr::<4>()?;
        if &magic != MAGIC {
            bail!(
                "not a GGUF file: bad magic {:?} (expected \"GGUF\")",
                String::from_utf8_lossy(&magic)
            );
        }
        let version = c.u32()?;
        if version != 2 && version != 3 {
            bail!("unsupported GGUF version {version} (pinpoint reads versions 2 and 3)");
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        // Each KV takes at least 8+4 bytes, each tensor info at least 8+4+4+8 bytes.
        if n_kv.saturating_mul(12) > len || n_tensors.saturating_mul(24) > len {
            bail!("header claims {n_kv} metadata entries and {n_tensors} tensors, more than the file can hold");
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut meta_index = HashMap::new();
        for i in 0..n_kv {
            let key = c.string().with_context(|| format!("metadata entry {i}"))?;
            let ty = c.u32().with_context(|| format!("metadata key {key:?}"))?;
            let v = c
                .value(ty, 0)
                .with_context(|| format!("metadata key {key:?}"))?;
            meta_index.insert(key.clone(), metadata.len());
            metadata.push((key, v));
        }
        let alignment = match meta_index.get("general.alignment") {
            Some(&i) => {
                let a = metadata[i]
                    .1
                    .as_u64()
                    .context("general.alignment is not an integer")?;
                if a == 0 || !a.is_power_of_two() {
                    bail!("general.alignment {a} is not a power of two");
                }
                a
            }
            None => DEFAULT_ALIGNMENT,
        };
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::new();
        for i in 0..n_tensors {
            let name = c.string().with_context(|| format!("tensor info {i}"))?;
            let ctx = || format!("tensor info of {name:?}");
            let n_dims = c.u32().with_context(ctx)?;
            if n_dims > 4 {
                bail!("tensor {name:?} has {n_dims} dimensions (GGUF allows at most 4)");
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64().with_context(ctx)?);
            }
            let ggml_type = GgmlType(c.u32().with_context(ctx)?);
            let offset = c.u64().with_context(ctx)?;
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                bail!("tensor {name:?} appears twice");
            }
            tensors.push(GgufTensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let data_len = len.saturating_sub(data_start);
        check_extents(&tensors, data_len)?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            meta_index,
            tensors,
            tensor_index,
            data_start,
            alignment,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// All metadata entries in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.as_str())
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.as_u64())
    }
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| v.as_f64())
    }
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|v| v.as_bool())
    }
    /// A string array, e.g. `tokenizer.ggml.tokens`. Error if present but not an array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let a = v
            .as_array()
            .with_context(|| format!("{}: {key} is not an array", self.path.display()))?;
        let out = a
            .iter()
            .map(|x| x.as_str())
            .collect::<Option<Vec<_>>>()
            .with_context(|| {
                format!("{}: {key} is not an array of strings", self.path.display())
            })?;
        Ok(Some(out))
    }
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor dequantized to f32, in row-major HF order of its GGUF dims (reversed), with no
    /// renaming or q/k un-permutation.
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor> {
        let t = self
            .tensor_info(name)
            .with_context(|| format!("{}: no tensor named {name:?}", self.path.display()))?;
        let data = self
            .dequantize(t)
            .with_context(|| format!("{}: tensor {name:?}", self.path.display()))?;
        Ok(HostTensor::new(t.shape(), data))
    }

    fn dequantize(&self, t: &GgufTensorInfo) -> Result<Vec<f32>> {
        let (blk, bytes) = t.ggml_type.block().with_context(|| {
            format!(
                "type {} is not supported (pinpoint reads F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                t.ggml_type.name()
            )
        })?;
        let n = t.n_elements();
        let size = (n / blk * bytes) as usize;
        let start = (self.data_start + t.offset) as usize;
        let raw = self
            .map
            .get(start..start + size)
            .context("tensor data runs past the end of the file")?;
        Ok(dequantize_raw(t.ggml_type, raw))
    }
}

/// Every tensor's data lies inside the file's data section of `data_len` bytes (quantized
/// rows are whole blocks).
fn check_extents(tensors: &[GgufTensorInfo], data_len: u64) -> Result<()> {
    for t in tensors {
        let name = &t.name;
        let n = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let n = n.with_context(|| format!("tensor {name:?}: dims {:?} overflow", t.dims))?;
        if let Some((blk, bytes)) = t.ggml_type.block() {
            let ne0 = t.dims.first().copied().unwrap_or(1);
            if !ne0.is_multiple_of(blk) {
                bail!(
                    "tensor {name:?}: row length {ne0} is not a multiple of the {} block size {blk}",
                    t.ggml_type.name()
                );
            }
            let size = (n / blk).checked_mul(bytes);
            let end = size.and_then(|s| t.offset.checked_add(s));
            if end.is_none_or(|e| e > data_len) {
                bail!(
                    "tensor {name:?} ({}, dims {:?}) at data offset {} runs past the end of the file \
                     (data section is {data_len} bytes)",
                    t.ggml_type.name(),
                    t.dims,
                    t.offset
                );
            }
        } else if t.offset > data_len {
            bail!(
                "tensor {name:?} at data offset {} starts past the end of the file",
                t.offset
            );
        }
    }
    Ok(())
}

fn f16_at(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Dequantize whole blocks of a supported type (the caller checked the length).
fn dequantize_raw(ty: GgmlType, raw: &[u8]) -> Vec<f32> {
    use rayon::prelude::*;
    match ty {
        GgmlType::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        GgmlType::F16 => raw.chunks_exact(2).map(f16_at).collect(),
        GgmlType::BF16 => raw
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        GgmlType::Q8_0 => raw
            .par_chunks_exact(34)
            .flat_map_iter(|b| {
                let d = f16_at(&b[0..2]);
                b[2..34].iter().map(move |&q| d * (q as i8 as f32))
            })
            .collect(),
        GgmlType::Q4_0 => raw
            .par_chunks_exact(18)
            .flat_map_iter(|b| {
                let d = f16_at(&b[0..2]);
                let qs = &b[2..18];
                let lo = qs.iter().map(move |&q| d * ((q & 0xF) as i32 - 8) as f32);
                let hi = qs.iter().map(move |&q| d * ((q >> 4) as i32 - 8) as f32);
                lo.chain(hi)
            })
            .collect(),
        GgmlType::Q4_1 => raw
            .par_chunks_exact(20)
            .flat_map_iter(|b| {
                let d = f16_at(&b[0..2]);
                let m = f16_at(&b[2..4]);
                let qs = &b[4..20];
                let lo = qs.iter().map(move |&q| d * (q & 0xF) as f32 + m);
                let hi = qs.iter().map(move |&q| d * (q >> 4) as f32 + m);
                lo.chain(hi)
            })
            .collect(),
        _ => unreachable!("checked by block()"),
    }
}
