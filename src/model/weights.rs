//! Reading weights from GGUF files and Hugging Face safetensors into one layout.
//!
//! Everything is normalised to the Hugging Face convention at load time: GGUF llama files store
//! the rows of `attn_q` and `attn_k` permuted for interleaved rotary embeddings, and we undo that
//! permutation here, so the model code has a single RoPE path and a model saved as a folder is
//! what `transformers` expects.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::error::{Error, Result};

/// How to store the weights of a linear layer once loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightPolicy {
    /// Fastest inference on this device: on CPU, formats without a SIMD kernel in candle (Q4_1,
    /// Q5_x) and float weights are requantized to Q8_0; other quantized formats stay as they are.
    #[default]
    Fast,
    /// Keep what the file has: quantized stays quantized, float stays f32 (exact logits of a
    /// float checkpoint; what training needs).
    Exact,
}

const SUPPORTED: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// The weight of a linear layer, `(out_features, in_features)`.
#[derive(Debug, Clone)]
pub enum Linear {
    Quantized(QMatMul),
    Float(Tensor),
}

impl Linear {
    /// `x`: (m, in) -> (m, out).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Quantized(q) => q.forward(x),
            Linear::Float(w) => x.matmul(&w.t()?),
        }
    }

    /// The weight as a dense f32 tensor (dequantized if needed).
    pub fn to_f32(&self) -> candle_core::Result<Tensor> {
        match self {
            Linear::Quantized(QMatMul::QTensor(q)) => q.dequantize(&q.device()),
            Linear::Quantized(QMatMul::Tensor(t)) | Linear::Quantized(QMatMul::TensorF16(t)) => {
                t.to_dtype(DType::F32)
            }
            Linear::Float(w) => Ok(w.clone()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Linear::Quantized(QMatMul::QTensor(q)) => format!("{:?}", q.dtype()),
            Linear::Quantized(_) => "F32".into(),
            Linear::Float(w) => format!("{:?}", w.dtype()).to_uppercase(),
        }
    }
}

/// One tensor as it comes out of a file, before we decide how to keep it.
pub enum RawTensor {
    Quantized(QTensor),
    Float(Tensor),
}

impl RawTensor {
    pub fn to_f32(&self, device: &Device) -> Result<Tensor> {
        Ok(match self {
            RawTensor::Quantized(q) => q.dequantize(device)?,
            RawTensor::Float(t) => t.to_dtype(DType::F32)?.to_device(device)?,
        })
    }

    pub fn dims(&self) -> Vec<usize> {
        match self {
            RawTensor::Quantized(q) => q.shape().dims().to_vec(),
            RawTensor::Float(t) => t.dims().to_vec(),
        }
    }

    pub fn into_linear(self, policy: WeightPolicy, device: &Device) -> Result<Linear> {
        let requantize_on_cpu = device.is_cpu() && policy == WeightPolicy::Fast;
        Ok(match self {
            RawTensor::Float(t) => {
                let t = t.to_dtype(DType::F32)?.to_device(device)?;
                if requantize_on_cpu && t.dim(1)? % 32 == 0 {
                    Linear::Quantized(QMatMul::from_qtensor(QTensor::quantize(
                        &t,
                        GgmlDType::Q8_0,
                    )?)?)
                } else {
                    Linear::Float(t)
                }
            }
            RawTensor::Quantized(q) => match q.dtype() {
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                    RawTensor::Float(q.dequantize(device)?).into_linear(policy, device)?
                }
                // candle 0.11 has only scalar dot products for these on x86.
                GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 if requantize_on_cpu => {
                    let f = q.dequantize(device)?;
                    Linear::Quantized(QMatMul::from_qtensor(QTensor::quantize(
                        &f,
                        GgmlDType::Q8_0,
                    )?)?)
                }
                _ => Linear::Quantized(QMatMul::from_qtensor(q)?),
            },
        })
    }
}

/// Row order that turns GGUF's interleaved-RoPE q/k rows into HF's half-split order
/// (`to_gguf = false`), or back (`to_gguf = true`). `new[i] = old[perm[i]]`.
pub fn rope_row_permutation(heads: usize, head_dim: usize, to_gguf: bool) -> Vec<usize> {
    let half = head_dim / 2;
    let mut perm = vec![0; heads * head_dim];
    for h in 0..heads {
        for p in 0..2 {
            for j in 0..half {
                let hf_row = h * head_dim + p * half + j;
                let gguf_row = h * head_dim + 2 * j + p;
                if to_gguf {
                    perm[gguf_row] = hf_row;
                } else {
                    perm[hf_row] = gguf_row;
                }
            }
        }
    }
    perm
}

/// Reorders the rows (first dimension) of a weight matrix, quantized or not.
pub fn permute_rows(t: RawTensor, perm: &[usize]) -> Result<RawTensor> {
    Ok(match t {
        RawTensor::Float(t) => {
            let idx = Tensor::from_vec(
                perm.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                perm.len(),
                t.device(),
            )?;
            RawTensor::Float(t.index_select(&idx, 0)?)
        }
        RawTensor::Quantized(q) => {
            let (rows, cols) = q.shape().dims2()?;
            if rows != perm.len() {
                return Err(Error::BadConfig(format!(
                    "cannot permute {rows} rows with a permutation of {}",
                    perm.len()
                )));
            }
            let row_bytes = cols / q.dtype().block_size() * q.dtype().type_size();
            let data = q.data()?;
            let mut out = Vec::with_capacity(data.len());
            for &src in perm {
                out.extend_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
            let device = q.device();
            let storage = QStorage::from_data(Cow::Owned(out), &device, q.dtype())?;
            RawTensor::Quantized(QTensor::new(storage, (rows, cols))?)
        }
    })
}

/// An opened GGUF file whose header has been checked against the file's length.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: gguf_file::Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::ModelNotFound(path.to_path_buf()));
        }
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; 4];
        if reader.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
            return Err(Error::NotGguf(path.to_path_buf()));
        }
        use std::io::Seek;
        reader
            .seek(std::io::SeekFrom::Start(0))
            .map_err(|e| Error::io(path, e))?;
        let content = gguf_file::Content::read(&mut reader).map_err(|e| classify(path, e))?;
        for (name, info) in &content.tensor_infos {
            let dtype = info.ggml_dtype;
            if matches!(dtype, GgmlDType::Q8_1 | GgmlDType::Q8K) {
                return Err(Error::UnsupportedTensorType {
                    name: name.clone(),
                    dtype: format!("{dtype:?}"),
                    supported: SUPPORTED,
                });
            }
            let elems = info.shape.elem_count();
            if elems % dtype.block_size() != 0 {
                return Err(Error::BadGguf {
                    path: path.to_path_buf(),
                    detail: format!(
                        "tensor `{name}` has {elems} elements, not a multiple of {dtype:?} blocks"
                    ),
                });
            }
            let end = content.tensor_data_offset
                + info.offset
                + (elems / dtype.block_size() * dtype.type_size()) as u64;
            if end > file_len {
                return Err(Error::TruncatedGguf {
                    path: path.to_path_buf(),
                    detail: format!(
                        "tensor `{name}` ends at byte {end} but the file has only {file_len} bytes"
                    ),
                });
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<RawTensor> {
        if !self.has(name) {
            return Err(Error::MissingTensor(name.to_string()));
        }
        // Read to CPU first: row permutations and requantization work on host bytes.
        let q = self
            .content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| classify(&self.path, e))?;
        if device.is_cpu() {
            return Ok(RawTensor::Quantized(q));
        }
        let storage = QStorage::from_data(q.data()?, device, q.dtype())?;
        Ok(RawTensor::Quantized(QTensor::new(
            storage,
            q.shape().clone(),
        )?))
    }
}

/// Turns candle's GGUF parse errors into ours: running out of bytes means a truncated file.
fn classify(path: &Path, e: candle_core::Error) -> Error {
    // candle appends context on further lines; the first says what is wrong.
    let msg = e.to_string().lines().next().unwrap_or_default().to_string();
    let eof = matches!(&e, candle_core::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
        || msg.contains("remaining")
        || msg.contains("failed to fill whole buffer");
    if eof {
        Error::TruncatedGguf {
            path: path.to_path_buf(),
            detail: msg,
        }
    } else if let Some(code) = msg.strip_prefix("unknown dtype for tensor ") {
        Error::UnsupportedTensorType {
            name: "(unknown)".into(),
            dtype: format!("ggml type {code}"),
            supported: SUPPORTED,
        }
    } else {
        Error::BadGguf {
            path: path.to_path_buf(),
            detail: msg,
        }
    }
}

/// All tensors of a `model.safetensors` (or sharded `model-0000x-of-0000y.safetensors`) folder.
pub fn load_safetensors(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let single = dir.join("model.safetensors");
    let mut files = Vec::new();
    if single.exists() {
        files.push(single);
    } else {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for entry in entries.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "safetensors") {
                files.push(p);
            }
        }
        files.sort();
    }
    if files.is_empty() {
        return Err(Error::ModelNotFound(dir.join("model.safetensors")));
    }
    let mut all = HashMap::new();
    for f in files {
        let tensors = candle_core::safetensors::load(&f, device)
            .map_err(|e| Error::BadConfig(format!("cannot read {}: {e}", f.display())))?;
        all.extend(tensors);
    }
    Ok(all)
}
