//! GGUF (llama.cpp) files: a bounds-checked reader, dequantization to f32, and an importer
//! that writes a HF Llama/Mistral directory (config, F32 safetensors, tokenizer files) the way
//! transformers' own GGUF loader derives them.

use super::checkpoint::{save_safetensors, HostTensor, StoreDtype};
use crate::util::write_json;
use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
        for t in &tensors {
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

/// HF name of a llama.cpp tensor name, or None for tensors HF Llama has no place for.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    let base = gguf_name.strip_suffix(".weight")?;
    match base {
        "token_embd" => return Some("model.embed_tokens.weight".into()),
        "output_norm" => return Some("model.norm.weight".into()),
        "output" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = base.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.weight"))
}

/// Undo llama.cpp's rotary row permutation of a q or k weight (row-major `[rows, cols]`,
/// `n_head` heads): HF = `w.reshape(n, rows/n/2, 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
pub fn unpermute_rows(w: &HostTensor, n_head: usize) -> Result<HostTensor> {
    let (rows, cols) = match w.shape.as_slice() {
        [r, c] => (*r, *c),
        [r] => (*r, 1),
        s => bail!("expected a 2-d q/k weight, got shape {s:?}"),
    };
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        bail!("q/k weight has {rows} rows, not a multiple of 2 x {n_head} heads");
    }
    let half = rows / n_head / 2;
    let mut out = vec![0f32; w.data.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let dst = h * 2 * half + i * half + j;
                let src = h * 2 * half + j * 2 + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&w.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(HostTensor::new(w.shape.clone(), out))
}

/// The GPT-2 byte-to-unicode table (printable bytes map to themselves, the rest to U+0100...).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    table
}

/// llama-3 style split regex for the pre-tokenizer names transformers maps to it.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_PRES: &[&str] = &[
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "dbrx",
    "smaug-bpe",
];
/// Pre-tokenizer names transformers gives another split regex that we do not reproduce yet.
const OTHER_PRES: &[&str] = &[
    "tekken",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "megrez",
    "qwen35",
    "gpt-4o",
    "llama4",
    "kanana2",
    "talkie",
    "minimax-m2",
];

/// The special-token strings, and tokenizer files, that transformers builds from a GGUF.
struct TokenizerFiles {
    tokenizer_json: Value,
    tokenizer_config: Value,
}

fn token_of(tokens: &[&str], id: Option<u64>) -> Option<String> {
    id.and_then(|i| tokens.get(i as usize))
        .map(|s| s.to_string())
}

/// Build `tokenizer.json` + `tokenizer_config.json` for a byte-level BPE ("gpt2") vocabulary the
/// way transformers' GGUF tokenizer conversion does.
fn build_tokenizer(g: &GgufFile) -> Result<TokenizerFiles> {
    let file = g.path.display();
    let model = g.get_str("tokenizer.ggml.model").unwrap_or("");
    if model != "gpt2" {
        bail!(
            "{file}: tokenizer model {model:?} is not supported yet (pinpoint imports byte-level BPE, \
             tokenizer.ggml.model = \"gpt2\")"
        );
    }
    let tokens = g
        .get_str_array("tokenizer.ggml.tokens")?
        .with_context(|| format!("{file}: no tokenizer.ggml.tokens"))?;
    let merges = g
        .get_str_array("tokenizer.ggml.merges")?
        .with_context(|| format!("{file}: no tokenizer.ggml.merges"))?;
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_i64()).collect::<Option<Vec<_>>>())
            .with_context(|| {
                format!("{file}: tokenizer.ggml.token_type is not an integer array")
            })?,
        None => vec![],
    };
    let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
    if OTHER_PRES.contains(&pre) {
        bail!("{file}: pre-tokenizer {pre:?} is not supported yet");
    }
    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        let key = if in_alphabet(t) {
            t.to_string()
        } else {
            t.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(key, json!(i));
    }
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| {
            let parts: Vec<&str> = m.split(' ').collect();
            match parts.as_slice() {
                [a, b] => Ok(json!([a, b])),
                _ => bail!("{file}: merge {m:?} is not two tokens separated by one space"),
            }
        })
        .collect::<Result<_>>()?;
    let mut added: Vec<(u64, Value)> = vec![];
    let mut seen = std::collections::HashSet::new();
    for (special, want_type) in [(true, 3), (false, 4)] {
        for (t, ty) in tokens.iter().zip(types.iter()) {
            if *ty != want_type || (special && !in_alphabet(t)) {
                continue;
            }
            let Some(id) = vocab.get(*t).and_then(|v| v.as_u64()) else {
                continue;
            };
            if !seen.insert(t.to_string()) {
                continue;
            }
            added.push((
                id,
                json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": special}),
            ));
        }
    }
    added.sort_by_key(|(id, _)| *id);
    let added: Vec<Value> = added.into_iter().map(|(_, v)| v).collect();

    let pre_tokenizer = if LLAMA3_PRES.contains(&pre) {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]})
    } else {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
    };

    let id = |k: &str| g.get_u64(&format!("tokenizer.ggml.{k}"));
    let bos = token_of(&tokens, id("bos_token_id"));
    let eos = token_of(&tokens, id("eos_token_id"));
    let unk = token_of(&tokens, id("unknown_token_id"));
    let pad = token_of(&tokens, id("padding_token_id"));
    let add_bos = g.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false) && bos.is_some();
    let add_eos = g.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false) && eos.is_some();

    // TemplateProcessing as transformers' update_post_processor writes it.
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let spec = |tok: &str, type_id: u32| json!({"SpecialToken": {"id": tok, "type_id": type_id}});
    let mut single = vec![];
    let mut pair = vec![];
    let mut special_tokens = serde_json::Map::new();
    for (type_id, side, out) in [(0u32, "A", &mut single), (1u32, "B", &mut pair)] {
        if add_bos {
            out.push(spec(bos.as_deref().unwrap_or(""), type_id));
        }
        out.push(seq(side, type_id));
        if add_eos {
            out.push(spec(eos.as_deref().unwrap_or(""), type_id));
        }
    }
    let pair: Vec<Value> = single.iter().cloned().chain(pair).collect();
    for (on, tok, tid) in [
        (add_bos, &bos, id("bos_token_id")),
        (add_eos, &eos, id("eos_token_id")),
    ] {
        if let (true, Some(t), Some(i)) = (on, tok, tid) {
            special_tokens.insert(t.clone(), json!({"id": t, "ids": [i], "tokens": [t]}));
        }
    }

    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    });
    let mut cfg = serde_json::Map::new();
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert("add_eos_token".into(), json!(add_eos));
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    for (k, v) in [
        ("bos_token", &bos),
        ("eos_token", &eos),
        ("unk_token", &unk),
        ("pad_token", &pad),
    ] {
        cfg.insert(k.into(), json!(v));
    }
    if let Some(t) = g.get_str("tokenizer.chat_template") {
        cfg.insert("chat_template".into(), json!(t));
    }
    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config: Value::Object(cfg),
    })
}

/// `config.json` for the model, with the values transformers derives from the same GGUF.
fn build_config(g: &GgufFile) -> Result<Value> {
    let file = g.path.display();
    let arch = g
        .get_str("general.architecture")
        .with_context(|| format!("{file}: no general.architecture"))?;
    let name = g.get_str("general.name").unwrap_or("");
    // transformers treats a llama-architecture file named exactly "mistral" as Mistral.
    let (model_type, architecture) = match arch {
        "mistral" => ("mistral", "MistralForCausalLM"),
        "llama" if name == "mistral" => ("mistral", "MistralForCausalLM"),
        "llama" => ("llama", "LlamaForCausalLM"),
        other => bail!("{file}: general.architecture {other:?} is not supported (pinpoint imports llama and mistral)"),
    };
    let key = |k: &str| format!("{arch}.{k}");
    let need = |k: &str| {
        g.get_u64(&key(k))
            .with_context(|| format!("{file}: metadata {} is missing", key(k)))
    };
    if let Some(t) = g
        .get_str(&key("rope.scaling.type"))
        .filter(|t| *t != "none")
    {
        bail!("{file}: rope scaling {t:?} is not supported yet");
    }
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let kv_heads = g.get_u64(&key("attention.head_count_kv")).unwrap_or(heads);
    if heads == 0 {
        bail!("{file}: attention.head_count is 0");
    }
    let head_dim = g
        .get_u64(&key("rope.dimension_count"))
        .unwrap_or(hidden / heads);
    let vocab = match g.get_u64(&key("vocab_size")) {
        Some(v) => v,
        None => g
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len() as u64)
            .with_context(|| {
                format!(
                    "{file}: neither {} nor tokenizer.ggml.tokens",
                    key("vocab_size")
                )
            })?,
    };
    let rope_theta = g.get_f64(&key("rope.freq_base")).unwrap_or(10000.0);
    let eps = g
        .get_f64(&key("attention.layer_norm_rms_epsilon"))
        .unwrap_or(1e-6);
    let mut c = serde_json::Map::new();
    c.insert("architectures".into(), json!([architecture]));
    c.insert("model_type".into(), json!(model_type));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert(
        "intermediate_size".into(),
        json!(need("feed_forward_length")?),
    );
    c.insert("num_hidden_layers".into(), json!(need("block_count")?));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(kv_heads));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("rms_norm_eps".into(), json!(eps));
    c.insert("rope_theta".into(), json!(rope_theta));
    c.insert(
        "rope_parameters".into(),
        json!({"rope_theta": rope_theta, "rope_type": "default"}),
    );
    c.insert(
        "max_position_embeddings".into(),
        json!(g.get_u64(&key("context_length")).unwrap_or(2048)),
    );
    c.insert(
        "tie_word_embeddings".into(),
        json!(g.tensor_info("output.weight").is_none()),
    );
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("attention_bias".into(), json!(false));
    c.insert("mlp_bias".into(), json!(false));
    c.insert("torch_dtype".into(), json!("float32"));
    if model_type == "mistral" {
        // Not stored in GGUF; MistralConfig's default, which transformers falls back to.
        c.insert("sliding_window".into(), json!(4096));
    }
    for (hf, k) in [
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("unk_token_id", "unknown_token_id"),
        ("pad_token_id", "padding_token_id"),
    ] {
        if let Some(v) = g.get_u64(&format!("tokenizer.ggml.{k}")) {
            c.insert(hf.into(), json!(v));
        }
    }
    Ok(Value::Object(c))
}

/// Import a GGUF Llama/Mistral model into a HF directory at `out_dir`: `config.json`,
/// `model.safetensors` (F32, exact dequantized values), `tokenizer.json`,
/// `tokenizer_config.json`, `generation_config.json`. The files are built in a temp dir beside
/// `out_dir` and moved into place only when all are written (a missing or empty `out_dir` is
/// replaced by one rename; files in a non-empty one are replaced one by one).
pub fn import_gguf(gguf: &Path, out_dir: &Path, show_progress: bool) -> Result<()> {
    let g = GgufFile::open(gguf)?;
    let file = gguf.display();
    let config = build_config(&g)?;
    super::config::ModelConfig::from_json(config.clone())
        .with_context(|| format!("{file}: the derived config is not one pinpoint can run"))?;
    let tok = build_tokenizer(&g)?;
    let heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
    let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(1) as usize;

    let bar = crate::util::bar(
        g.tensors().len() as u64,
        "importing GGUF {bar:40} {pos}/{len} {msg}",
        show_progress,
    );
    let mut out: Vec<(String, HostTensor)> = Vec::new();
    for t in g.tensors() {
        bar.set_message(t.name.clone());
        bar.inc(1);
        let Some(hf) = hf_tensor_name(&t.name) else {
            if show_progress {
                bar.println(format!(
                    "skipping GGUF tensor {:?} (no HF Llama counterpart)",
                    t.name
                ));
            }
            continue;
        };
        let mut w = g.tensor_f32(&t.name)?;
        if t.name.ends_with(".attn_q.weight") || t.name.ends_with(".attn_k.weight") {
            let n = if t.name.ends_with(".attn_q.weight") {
                heads
            } else {
                kv_heads
            };
            w = unpermute_rows(&w, n).with_context(|| format!("{file}: tensor {:?}", t.name))?;
        }
        out.push((hf, w));
    }
    bar.finish_and_clear();
    if !out.iter().any(|(n, _)| n == "model.embed_tokens.weight") {
        bail!("{file}: no token_embd.weight tensor");
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    // Build everything in a temp dir beside `out_dir`, then move it into place, so a failure
    // never leaves a half-written model.
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".pinpoint-import-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temp dir in {}", parent.display()))?;
    let write_all = |dir: &Path| -> Result<()> {
        let named: Vec<(String, &HostTensor)> = out.iter().map(|(n, t)| (n.clone(), t)).collect();
        save_safetensors(&dir.join("model.safetensors"), &named, StoreDtype::F32)?;
        drop(named);
        drop(out);
        write_json(&dir.join("config.json"), &config)?;
        write_json(&dir.join("tokenizer.json"), &tok.tokenizer_json)?;
        write_json(&dir.join("tokenizer_config.json"), &tok.tokenizer_config)?;
        let mut gen = serde_json::Map::new();
        for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            if let Some(v) = config.get(k) {
                gen.insert(k.into(), v.clone());
            }
        }
        write_json(&dir.join("generation_config.json"), &Value::Object(gen))?;
        Ok(())
    };
    write_all(tmp.path())?;
    let empty_or_missing = match std::fs::read_dir(out_dir) {
        Ok(mut it) => it.next().is_none(),
        Err(_) => !out_dir.exists(),
    };
    if empty_or_missing {
        let _ = std::fs::remove_dir(out_dir);
        let kept = tmp.keep();
        std::fs::rename(&kept, out_dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&kept);
            anyhow::Error::new(e).context(format!(
                "renaming {} to {}",
                kept.display(),
                out_dir.display()
            ))
        })?;
    } else {
        // An existing directory with other files: replace ours file by file (each rename is atomic).
        for entry in std::fs::read_dir(tmp.path())? {
            let entry = entry?;
            let to = out_dir.join(entry.file_name());
            std::fs::rename(entry.path(), &to)
                .with_context(|| format!("moving {} into place", to.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_matches_numpy_formula() {
        // rows = 8, 2 heads, half = 2: rows within a head go [0,2,1,3].
        let w = HostTensor::new(vec![8, 1], (0..8).map(|x| x as f32).collect());
        let u = unpermute_rows(&w, 2).unwrap();
        assert_eq!(u.data, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    }

    #[test]
    fn names_map() {
        assert_eq!(
            hf_tensor_name("blk.3.attn_k.weight").unwrap(),
            "model.layers.3.self_attn.k_proj.weight"
        );
        assert_eq!(hf_tensor_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_tensor_name("rope_freqs.weight").is_none());
    }
}
