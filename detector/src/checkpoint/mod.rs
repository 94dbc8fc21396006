//! Reading weights files: official PyTorch checkpoints (`.pt`, parsed as data) and
//! safetensors with the official key names.

pub mod pt;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::weights::TensorStore;

/// Safetensors metadata keys Spotter writes (and reads back).
pub const META_CONFIG: &str = "spotter.config";
pub const META_NAMES: &str = "spotter.names";
pub const META_MODEL: &str = "model";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pt,
    Safetensors,
}

/// A weights file read into memory.
pub struct Checkpoint {
    pub path: PathBuf,
    pub format: Format,
    pub tensors: Vec<(String, Tensor)>,
    /// The config dict the file carries (official `.pt`: the model's `yaml` attribute).
    pub config: Option<serde_json::Value>,
    pub names: Option<Vec<String>>,
    /// Storage dtype of the weights (of the first floating-point tensor).
    pub dtype: DType,
    /// Safetensors header metadata (empty for `.pt`).
    pub metadata: HashMap<String, String>,
}

impl Checkpoint {
    /// Reads a `.pt` or `.safetensors` file (chosen by content, not by extension).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|error| Error::Io { path: path.to_path_buf(), error })?;
        if bytes.starts_with(b"PK\x03\x04") {
            Self::from_pt(path, &bytes)
        } else if looks_like_safetensors(&bytes) {
            Self::from_safetensors(path, &bytes)
        } else if bytes.len() < 8 {
            Err(Error::UnknownFormat { path: path.to_path_buf() })
        } else {
            match path.extension().and_then(|e| e.to_str()) {
                Some("safetensors") => Self::from_safetensors(path, &bytes),
                Some("pt" | "pth") => Self::from_pt(path, &bytes),
                _ => Err(Error::UnknownFormat { path: path.to_path_buf() }),
            }
        }
    }

    fn from_pt(path: &Path, bytes: &[u8]) -> Result<Self> {
        let ck = pt::read_pt_bytes(bytes).map_err(|error| Error::Checkpoint { path: path.to_path_buf(), error })?;
        let mut tensors = Vec::with_capacity(ck.tensors.len());
        for (name, raw) in ck.tensors {
            tensors.push((name, raw_to_tensor(&raw)?));
        }
        Ok(Self {
            path: path.to_path_buf(),
            format: Format::Pt,
            dtype: storage_dtype(&tensors),
            tensors,
            config: ck.yaml,
            names: ck.names,
            metadata: HashMap::new(),
        })
    }

    fn from_safetensors(path: &Path, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::Safetensors { path: path.to_path_buf(), reason };
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        // Keep the file's order for stable messages.
        let mut named: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
        named.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
        let mut tensors = Vec::with_capacity(named.len());
        for (name, view) in named {
            let dtype = match view.dtype() {
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F64 => DType::F64,
                safetensors::Dtype::I64 => DType::I64,
                safetensors::Dtype::U8 => DType::U8,
                safetensors::Dtype::U32 => DType::U32,
                other => return Err(bad(format!("tensor '{name}' has unsupported dtype {other:?}"))),
            };
            let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
                .map_err(|e| bad(format!("tensor '{name}': {e}")))?;
            tensors.push((name, t));
        }
        let config = match metadata.get(META_CONFIG) {
            Some(text) => Some(serde_json::from_str(text).map_err(|e| bad(format!("metadata {META_CONFIG}: {e}")))?),
            None => None,
        };
        let names = match metadata.get(META_NAMES) {
            Some(text) => Some(serde_json::from_str(text).map_err(|e| bad(format!("metadata {META_NAMES}: {e}")))?),
            None => None,
        };
        Ok(Self {
            path: path.to_path_buf(),
            format: Format::Safetensors,
            dtype: storage_dtype(&tensors),
            tensors,
            config,
            names,
            metadata,
        })
    }

    /// The tensors as a store the model is built from.
    pub fn into_store(self) -> TensorStore {
        TensorStore::new(&self.path, self.tensors)
    }

    /// Writes the weights as safetensors (f32, or f16 with `half`), with the config and class
    /// names in the metadata so the file is self-describing.
    pub fn write_safetensors(&self, out: &Path, half: bool, variant: Option<&str>) -> Result<()> {
        let mut meta = HashMap::new();
        if let Some(cfg) = &self.config {
            meta.insert(META_CONFIG.to_string(), cfg.to_string());
        }
        if let Some(names) = &self.names {
            meta.insert(META_NAMES.to_string(), serde_json::to_string(names).unwrap_or_default());
        }
        if let Some(v) = variant {
            meta.insert(META_MODEL.to_string(), v.to_string());
        }
        let target = if half { DType::F16 } else { DType::F32 };
        let mut converted = Vec::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            let t = if t.dtype().is_float() { t.to_dtype(target)? } else { t.clone() };
            converted.push((name.clone(), t));
        }
        let tmp = out.with_extension("safetensors.part");
        safetensors::serialize_to_file(converted, Some(meta), &tmp)
            .map_err(|e| Error::Safetensors { path: out.to_path_buf(), reason: e.to_string() })?;
        std::fs::rename(&tmp, out).map_err(|error| Error::Io { path: out.to_path_buf(), error })
    }
}

fn looks_like_safetensors(bytes: &[u8]) -> bool {
    if bytes.len() < 10 {
        return false;
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[..8]);
    let header = u64::from_le_bytes(n);
    header > 1 && header < bytes.len() as u64 && bytes[8] == b'{'
}

fn storage_dtype(tensors: &[(String, Tensor)]) -> DType {
    tensors.iter().map(|(_, t)| t.dtype()).find(|d| d.is_float()).unwrap_or(DType::F32)
}

fn raw_to_tensor(raw: &pt::RawTensor) -> Result<Tensor> {
    use pt::StorageDtype as S;
    let direct = match raw.dtype {
        S::F16 => Some(DType::F16),
        S::BF16 => Some(DType::BF16),
        S::F32 => Some(DType::F32),
        S::F64 => Some(DType::F64),
        S::I64 => Some(DType::I64),
        S::U8 => Some(DType::U8),
        _ => None,
    };
    Ok(match direct {
        Some(dtype) => Tensor::from_raw_buffer(&raw.data, dtype, &raw.shape, &Device::Cpu)?,
        None => Tensor::from_vec(raw.to_f32_vec(), raw.shape.as_slice(), &Device::Cpu)?,
    })
}
