//! Pure-Rust reader for official PyTorch checkpoint files (`.pt`, torch zip format).
//!
//! A checkpoint is a zip archive holding `<archive>/data.pkl` (a pickle stream),
//! `<archive>/data/<key>` storage blobs and a few small metadata files
//! (`version`, `byteorder`, ...). The pickle stream is interpreted as *data* by a
//! small pickle virtual machine: globals are only recorded as names, calls of
//! unknown callables become opaque values, and no code is ever executed.
//!
//! The model is chosen like the official `attempt_load`: `ckpt['ema']` when it is set,
//! else `ckpt['model']`; a checkpoint whose top level is itself a module, or a plain
//! state dict (name -> tensor), is accepted too. Tensor names and order follow
//! PyTorch's `Module.state_dict()`; tensors keep their stored dtype and are copied
//! out of their storages honouring storage offsets and strides.
//!
//! All containers created by the pickle live in an arena and are referred to by
//! index, which gives pickle's shared-reference semantics (the memo) without
//! recursion when values are dropped. Walks over the resulting object graph are
//! iterative or depth-limited, work on shared structures is budgeted, and every
//! size taken from the file is checked before anything is allocated from it, so a
//! malformed or hostile file gives an error, never a panic.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Seek};
use std::path::Path;
use std::rc::Rc;

use zip::ZipArchive;
use zip::result::ZipError;

/// Largest `data.pkl` accepted.
const MAX_PICKLE_BYTES: u64 = 512 << 20;
/// Largest number of values on the pickle stack (marks included).
const MAX_STACK: usize = 1 << 22;
/// Largest number of containers / objects a pickle may create.
const MAX_HEAP: usize = 1 << 23;
/// Largest number of memo entries.
const MAX_MEMO: usize = 1 << 23;
/// Deepest module nesting accepted when walking the module tree.
const MAX_MODULE_DEPTH: usize = 256;
/// Most modules visited when walking the module tree (shared modules count once per use).
const MAX_MODULE_VISITS: usize = 1 << 20;
/// Most state-dict entries.
const MAX_STATE_ENTRIES: usize = 1 << 22;
/// Most values copied out of existing sequences by constructor calls (`set(list)`, ...).
const MAX_COPIED: usize = 1 << 22;
/// Most dict / set entries examined while walking the module tree.
const MAX_WALK_WORK: usize = 1 << 24;
/// Longest state-dict name.
const MAX_NAME_LEN: usize = 4096;
/// Most bytes of names built while walking the module tree.
const MAX_NAME_BYTES: usize = 256 << 20;
/// Most bytes of class names.
const MAX_NAMES_BYTES: usize = 16 << 20;
/// Most tensor dimensions.
const MAX_NDIM: usize = 64;
/// Deepest nesting converted to JSON (the `yaml` attribute).
const MAX_JSON_DEPTH: usize = 128;
/// Budget for the JSON made from the `yaml` attribute: one unit per node and per string byte.
const MAX_JSON_UNITS: usize = 64 << 20;
/// Materialised tensor bytes may exceed the storage bytes read by at most this factor...
const OUTPUT_FACTOR: u64 = 8;
/// ...plus this slack (expanded / shared-storage tensors).
const OUTPUT_SLACK: u64 = 16 << 20;

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// Element type of a tensor storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageDtype {
    /// IEEE half precision (`torch.HalfStorage`).
    F16,
    /// bfloat16 (`torch.BFloat16Storage`).
    BF16,
    /// f32 (`torch.FloatStorage`).
    F32,
    /// f64 (`torch.DoubleStorage`).
    F64,
    /// i64 (`torch.LongStorage`).
    I64,
    /// i32 (`torch.IntStorage`).
    I32,
    /// i16 (`torch.ShortStorage`).
    I16,
    /// i8 (`torch.CharStorage`).
    I8,
    /// u8 (`torch.ByteStorage`, `torch.UntypedStorage`).
    U8,
    /// bool, one byte per element (`torch.BoolStorage`).
    Bool,
}

impl StorageDtype {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// PyTorch's name of the dtype (`float16`, `int64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
            Self::F32 => "float32",
            Self::F64 => "float64",
            Self::I64 => "int64",
            Self::I32 => "int32",
            Self::I16 => "int16",
            Self::I8 => "int8",
            Self::U8 => "uint8",
            Self::Bool => "bool",
        }
    }

    /// Maps a storage class (`torch.HalfStorage`) or dtype (`torch.float16`) global.
    fn from_torch_global(module: &str, name: &str) -> Option<Self> {
        if module != "torch" && !module.starts_with("torch.") {
            return None;
        }
        Some(match name {
            "HalfStorage" | "float16" | "half" => Self::F16,
            "BFloat16Storage" | "bfloat16" => Self::BF16,
            "FloatStorage" | "float32" | "float" => Self::F32,
            "DoubleStorage" | "float64" | "double" => Self::F64,
            "LongStorage" | "int64" | "long" => Self::I64,
            "IntStorage" | "int32" | "int" => Self::I32,
            "ShortStorage" | "int16" | "short" => Self::I16,
            "CharStorage" | "int8" => Self::I8,
            "ByteStorage" | "UntypedStorage" | "uint8" => Self::U8,
            "BoolStorage" | "bool" => Self::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for StorageDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A tensor read from a checkpoint, materialised as a contiguous buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Element type as stored in the checkpoint.
    pub dtype: StorageDtype,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// contiguous little-endian bytes, row-major
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values widened / converted to f32 (integers and bools by value).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let d = &self.data;
        match self.dtype {
            StorageDtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            StorageDtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            StorageDtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            StorageDtype::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
            StorageDtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
            StorageDtype::I32 => {
                d.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect()
            }
            StorageDtype::I16 => d.chunks_exact(2).map(|c| f32::from(i16::from_le_bytes([c[0], c[1]]))).collect(),
            StorageDtype::I8 => d.iter().map(|&b| f32::from(b as i8)).collect(),
            StorageDtype::U8 => d.iter().map(|&b| f32::from(b)).collect(),
            StorageDtype::Bool => d.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 }).collect(),
        }
    }
}

/// What a checkpoint holds: the model's state dict plus the metadata Spotter uses.
#[derive(Debug, Clone, PartialEq)]
pub struct PtCheckpoint {
    /// state_dict-style names in PyTorch's `state_dict()` order (module's own params, then own
    /// persistent buffers, then children, recursively; None entries skipped), e.g.
    /// "model.0.conv.weight", "model.0.bn.num_batches_tracked"
    pub tensors: Vec<(String, RawTensor)>,
    /// the model's `yaml` attribute (the parsed config dict) converted to JSON (ints/floats/
    /// strings/None->null/lists/dicts with string keys), if present
    pub yaml: Option<serde_json::Value>,
    /// class names from the model's `names` attribute (dict int->str sorted by key, or list), if present
    pub names: Option<Vec<String>>,
    /// The model's `nc` attribute (number of classes), if present.
    pub nc: Option<usize>,
    /// The model's `stride` attribute (detection strides), if present.
    pub stride: Option<Vec<f32>>,
    /// the class path of the model object, e.g. "models.yolo.DetectionModel"
    pub model_class: Option<String>,
    /// top-level checkpoint keys present (e.g. epoch, model, ema...), for `weights info`
    pub top_level_keys: Vec<String>,
}

impl PtCheckpoint {
    /// The tensor with state-dict name `name`, if any.
    pub fn get(&self, name: &str) -> Option<&RawTensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PtError {
    /// The file could not be read.
    #[error("cannot read checkpoint: {0}")]
    Io(std::io::Error),
    /// The bytes are not a zip archive at all.
    #[error("not a PyTorch checkpoint (not a zip archive)")]
    NotZip,
    /// A pre-1.6 torch checkpoint (raw pickle stream, not a zip archive).
    #[error(
        "legacy (pre-1.6, non-zip) PyTorch checkpoint format is not supported; re-save it with a recent torch.save"
    )]
    LegacyFormat,
    /// The zip archive is damaged or truncated.
    #[error("corrupt or truncated checkpoint zip archive: {0}")]
    Zip(String),
    /// The archive has no `data.pkl`.
    #[error("not a PyTorch checkpoint (no data.pkl in the zip archive)")]
    NoDataPkl,
    /// The pickle stream is truncated or malformed.
    #[error("corrupt pickle in data.pkl: {msg} at byte offset {offset}")]
    Pickle {
        /// Byte offset of the offending opcode in `data.pkl`.
        offset: usize,
        /// What is wrong.
        msg: String,
    },
    /// A tensor references a storage blob that is not in the archive.
    #[error("missing storage blob `{0}` in the checkpoint archive")]
    MissingStorage(String),
    /// A storage blob holds fewer bytes than a tensor needs.
    #[error("storage `{storage}` too short for tensor `{tensor}`: needs {needed} bytes, has {available}")]
    StorageTooShort {
        /// Tensor name.
        tensor: String,
        /// Storage key.
        storage: String,
        /// Bytes the tensor needs.
        needed: u64,
        /// Bytes the blob holds.
        available: u64,
    },
    /// A tensor uses a storage type this reader does not handle.
    #[error("unsupported storage type `{storage_type}` for tensor `{tensor}`")]
    UnsupportedStorage {
        /// Tensor name.
        tensor: String,
        /// The storage class as named in the pickle.
        storage_type: String,
    },
    /// A tensor's description in the pickle is malformed.
    #[error("malformed tensor `{tensor}`: {msg}")]
    BadTensor {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        msg: String,
    },
    /// Neither a model object nor a state dict was found.
    #[error("no model in checkpoint (top-level keys: {keys})")]
    NoModel {
        /// The top-level keys, comma-separated.
        keys: String,
    },
    /// The model object is malformed.
    #[error("malformed model in checkpoint: {0}")]
    BadModel(String),
    /// The checkpoint exceeds one of the reader's safety limits.
    #[error("checkpoint exceeds reader limits: {0}")]
    Limit(String),
}

// By hand rather than `#[from]`: the message already carries the I/O error's text, and a
// `source()` as well would print it twice in a `{:#}` chain.
impl From<std::io::Error> for PtError {
    fn from(error: std::io::Error) -> Self {
        PtError::Io(error)
    }
}

/// Reads a PyTorch checkpoint file.
pub fn read_pt(path: &Path) -> Result<PtCheckpoint, PtError> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    read_archive(std::io::BufReader::new(file), len)
}

/// Reads a PyTorch checkpoint held in memory.
pub fn read_pt_bytes(bytes: &[u8]) -> Result<PtCheckpoint, PtError> {
    read_archive(std::io::Cursor::new(bytes), bytes.len() as u64)
}

// ---------------------------------------------------------------------------
// Zip layer
// ---------------------------------------------------------------------------

/// Where storage blobs come from (the zip archive; a map in tests).
trait BlobSource {
    /// Reads at most `max_len` bytes of the blob of storage `key`.
    fn blob(&mut self, key: &str, max_len: u64) -> Result<Vec<u8>, PtError>;
}

struct ZipBlobs<R: Read + Seek> {
    zip: ZipArchive<R>,
    prefix: String,
    archive_len: u64,
}

impl<R: Read + Seek> BlobSource for ZipBlobs<R> {
    fn blob(&mut self, key: &str, max_len: u64) -> Result<Vec<u8>, PtError> {
        let name = format!("{}data/{}", self.prefix, key);
        read_entry(&mut self.zip, &name, max_len, self.archive_len)?.ok_or(PtError::MissingStorage(name))
    }
}

fn zip_err(e: ZipError) -> PtError {
    match e {
        ZipError::Io(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => PtError::Io(e),
        e => PtError::Zip(e.to_string()),
    }
}

/// Reads up to `max_len` bytes of entry `name`; `Ok(None)` if there is no such entry.
fn read_entry<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    name: &str,
    max_len: u64,
    archive_len: u64,
) -> Result<Option<Vec<u8>>, PtError> {
    let entry = match zip.by_name(name) {
        Ok(e) => e,
        Err(ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(zip_err(e)),
    };
    // Pre-allocate no more than the archive itself could hold uncompressed.
    let cap = entry.size().min(max_len).min(archive_len).min(usize::MAX as u64);
    let mut buf = Vec::with_capacity(cap as usize);
    entry.take(max_len).read_to_end(&mut buf).map_err(|e| PtError::Zip(format!("cannot read `{name}`: {e}")))?;
    Ok(Some(buf))
}

fn read_archive<R: Read + Seek>(mut reader: R, archive_len: u64) -> Result<PtCheckpoint, PtError> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    reader.seek(std::io::SeekFrom::Start(0))?;
    let head = &head[..got];

    let mut zip = match ZipArchive::new(reader) {
        Ok(z) => z,
        Err(e) => {
            return Err(if head.starts_with(b"PK\x03\x04") {
                PtError::Zip(e.to_string())
            } else if head.starts_with(&[0x80, 0x02, 0x8a]) {
                // protocol-2 pickle starting with the legacy magic number (a LONG1)
                PtError::LegacyFormat
            } else if let ZipError::Io(io) = e {
                if io.kind() == std::io::ErrorKind::UnexpectedEof { PtError::NotZip } else { PtError::Io(io) }
            } else {
                PtError::NotZip
            });
        }
    };

    // torch writes `<archive>/data.pkl`; accept it at the root as well.
    let mut prefix = None;
    for i in 0..zip.len() {
        let Some(Ok(name)) = zip.name_for_index(i) else {
            continue;
        };
        if let Some(p) = name.strip_suffix("data.pkl")
            && (p.is_empty() || (p.ends_with('/') && p.matches('/').count() == 1))
        {
            prefix = Some(p.to_string());
            break;
        }
    }
    let prefix = prefix.ok_or(PtError::NoDataPkl)?;

    let pickle = read_entry(&mut zip, &format!("{prefix}data.pkl"), MAX_PICKLE_BYTES + 1, archive_len)?
        .ok_or(PtError::NoDataPkl)?;
    if pickle.len() as u64 > MAX_PICKLE_BYTES {
        return Err(PtError::Limit(format!("data.pkl is larger than {MAX_PICKLE_BYTES} bytes")));
    }
    let big_endian = match read_entry(&mut zip, &format!("{prefix}byteorder"), 64, archive_len)? {
        None => false,
        Some(b) => match String::from_utf8_lossy(&b).trim() {
            "little" => false,
            "big" => true,
            other => return Err(PtError::Zip(format!("unknown byteorder `{other}`"))),
        },
    };
    let mut blobs = ZipBlobs { zip, prefix, archive_len };
    load_checkpoint(&pickle, &mut blobs, big_endian)
}

// ---------------------------------------------------------------------------
// Pickle values
// ---------------------------------------------------------------------------

/// A pickle value. Containers and objects live in the arena (`Obj`), so cloning a
/// value is cheap and dropping one never recurses.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64, approximated.
    BigInt(f64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Obj(usize),
}

/// Hashable form of a dict key, for pickle's key-replacing SETITEM semantics.
#[derive(Debug, Hash, PartialEq, Eq)]
enum KeyH {
    None,
    Int(i64),
    FloatBits(u64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
}

impl KeyH {
    fn of(v: &Value) -> Option<Self> {
        Some(match v {
            Value::None => Self::None,
            Value::Bool(b) => Self::Int(i64::from(*b)),
            Value::Int(i) => Self::Int(*i),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Self::Int(*f as i64),
            Value::Float(f) | Value::BigInt(f) => Self::FloatBits(f.to_bits()),
            Value::Str(s) => Self::Str(s.clone()),
            Value::Bytes(b) => Self::Bytes(b.clone()),
            Value::Obj(_) => return None,
        })
    }
}

#[derive(Debug, Default)]
struct Dict {
    entries: Vec<(Value, Value)>,
    index: HashMap<KeyH, usize>,
}

/// Dicts up to this size are searched linearly; larger ones get a hash index.
const DICT_INDEX_FROM: usize = 32;

impl Dict {
    fn insert(&mut self, k: Value, v: Value) {
        let Some(h) = KeyH::of(&k) else {
            self.entries.push((k, v));
            return;
        };
        if self.index.is_empty() && self.entries.len() < DICT_INDEX_FROM {
            let same = self.entries.iter_mut().find(|(ek, _)| KeyH::of(ek).is_some_and(|eh| eh == h));
            match same {
                Some(e) => e.1 = v,
                None => self.entries.push((k, v)),
            }
            return;
        }
        if self.index.is_empty() {
            for (i, (ek, _)) in self.entries.iter().enumerate() {
                if let Some(eh) = KeyH::of(ek) {
                    self.index.insert(eh, i);
                }
            }
        }
        if let Some(&i) = self.index.get(&h)
            && let Some(e) = self.entries.get_mut(i)
        {
            e.1 = v;
            return;
        }
        self.index.insert(h, self.entries.len());
        self.entries.push((k, v));
    }

    fn get_str(&self, key: &str) -> Option<&Value> {
        if !self.index.is_empty() {
            let i = *self.index.get(&KeyH::Str(Rc::from(key)))?;
            return self.entries.get(i).map(|e| &e.1);
        }
        self.entries.iter().find_map(|(k, v)| match k {
            Value::Str(s) if &**s == key => Some(v),
            _ => None,
        })
    }
}

#[derive(Debug)]
struct Instance {
    /// The class (or callable) that produced the object.
    class: Value,
    /// `__setstate__` / BUILD state (for nn.Module: the instance `__dict__`).
    state: Option<Value>,
    /// Items added by SETITEM(S) on a non-dict object.
    items: Vec<(Value, Value)>,
    /// Items added by APPEND(S) / ADDITEMS on a non-list object.
    list: Vec<Value>,
}

#[derive(Debug, Clone)]
struct StorageRef {
    /// The element type, or the storage class name when unsupported.
    dtype: Result<StorageDtype, Rc<str>>,
    key: Rc<str>,
}

#[derive(Debug, Clone)]
struct TensorMeta {
    storage: StorageRef,
    offset: u64,
    shape: Vec<u64>,
    stride: Vec<u64>,
}

#[derive(Debug)]
enum Heap {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Box<Dict>),
    Set(Vec<Value>),
    Global(Box<(Rc<str>, Rc<str>)>),
    Instance(Box<Instance>),
    Storage(Box<StorageRef>),
    Tensor(Box<TensorMeta>),
    /// A tensor rebuild call with arguments we could not understand.
    BadTensor(Rc<str>),
    /// A persistent id that is not a torch storage.
    Opaque,
}

// ---------------------------------------------------------------------------
// Pickle virtual machine
// ---------------------------------------------------------------------------

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: u64) -> Option<&'a [u8]> {
        let n = usize::try_from(n).ok()?;
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.bytes(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.array().map(i32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
    /// A `\n`-terminated line, without the terminator (and without a trailing `\r`).
    fn line(&mut self) -> Option<&'a [u8]> {
        let rest = self.data.get(self.pos..)?;
        let n = rest.iter().position(|&b| b == b'\n')?;
        self.pos += n + 1;
        let line = &rest[..n];
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

/// The pickle memo. Picklers number entries 0, 1, 2, ... so dense keys live in a vector;
/// any other key goes to a map.
#[derive(Default)]
struct Memo {
    dense: Vec<Option<Value>>,
    sparse: HashMap<u64, Value>,
    count: usize,
}

impl Memo {
    fn insert(&mut self, key: u64, v: Value) -> Result<(), PtError> {
        let slot = usize::try_from(key).ok().filter(|&k| k <= self.dense.len());
        let in_sparse = !self.sparse.is_empty() && self.sparse.contains_key(&key);
        let is_new = match slot {
            Some(k) if k < self.dense.len() => self.dense.get(k).is_some_and(Option::is_none),
            _ => !in_sparse,
        };
        if is_new && self.count >= MAX_MEMO {
            return Err(PtError::Limit(format!("more than {MAX_MEMO} memo entries")));
        }
        match slot {
            Some(k) if k < self.dense.len() => {
                if let Some(s) = self.dense.get_mut(k) {
                    *s = Some(v);
                }
            }
            Some(_) => {
                // a key moving from the map to the vector keeps its count
                if in_sparse {
                    self.sparse.remove(&key);
                }
                self.dense.push(Some(v));
            }
            None => {
                self.sparse.insert(key, v);
            }
        }
        if is_new {
            self.count += 1;
        }
        Ok(())
    }

    fn get(&self, key: u64) -> Option<&Value> {
        match usize::try_from(key).ok().and_then(|k| self.dense.get(k)) {
            Some(Some(v)) => Some(v),
            _ => self.sparse.get(&key),
        }
    }
}

struct Vm<'a> {
    r: Reader<'a>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: Memo,
    heap: Vec<Heap>,
    /// Offset of the opcode being executed (for error messages).
    op_pos: usize,
    /// Values copied by constructor calls so far (see `MAX_COPIED`).
    copied: usize,
}

/// The object graph a pickle produced.
struct Graph {
    top: Value,
    heap: Vec<Heap>,
}

fn unexpected_end() -> String {
    "unexpected end of data".to_string()
}

fn text(b: &[u8]) -> Rc<str> {
    Rc::from(String::from_utf8_lossy(b).as_ref())
}

fn parse_int_text(line: &[u8]) -> Result<Value, String> {
    let s = std::str::from_utf8(line).map_err(|_| "non-ASCII integer literal".to_string())?;
    let s = s.trim();
    let s = s.strip_suffix('L').unwrap_or(s);
    if let Ok(i) = s.parse::<i64>() {
        return Ok(Value::Int(i));
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // too large for i64: approximate
        if let Ok(f) = s.parse::<f64>() {
            return Ok(Value::BigInt(f));
        }
    }
    Err(format!("bad integer literal {s:?}"))
}

/// Little-endian two's complement integer of any length (LONG1 / LONG4).
fn decode_long(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    let negative = b[b.len() - 1] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0x00 };
    let fits = b.len() <= 8 || (b[8..].iter().all(|&x| x == fill) && ((b[7] & 0x80 != 0) == negative));
    if fits {
        let mut a = [fill; 8];
        let n = b.len().min(8);
        a[..n].copy_from_slice(&b[..n]);
        return Value::Int(i64::from_le_bytes(a));
    }
    let mut f = 0.0f64;
    for &x in b.iter().rev() {
        f = f * 256.0 + f64::from(x);
    }
    if negative {
        f -= 2f64.powi(i32::try_from(b.len() * 8).unwrap_or(i32::MAX));
    }
    Value::BigInt(f)
}

/// Decodes a protocol-0 `S'...'` string literal (Python escape syntax).
fn unescape_string(line: &[u8]) -> Result<Vec<u8>, String> {
    let inner = match line {
        [q, inner @ .., q2] if (*q == b'\'' || *q == b'"') && q == q2 => inner,
        _ => return Err("STRING literal is not quoted".to_string()),
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = inner.get(i) else {
            out.push(b'\\');
            break;
        };
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'\\' | b'\'' | b'"' => out.push(e),
            b'\n' => {}
            b'x' => {
                let h = inner.get(i..i + 2).and_then(|h| std::str::from_utf8(h).ok());
                match h.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => return Err("bad \\x escape in STRING literal".to_string()),
                }
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut n = 1;
                while n < 3 {
                    match inner.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                            n += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Ok(out)
}

/// Decodes Python's `raw-unicode-escape` (protocol-0 UNICODE).
fn raw_unicode_escape(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let width = match b.get(i + 1) {
                Some(b'u') => 4,
                Some(b'U') => 8,
                _ => 0,
            };
            if width > 0
                && let Some(h) = b.get(i + 2..i + 2 + width).and_then(|h| std::str::from_utf8(h).ok())
                && let Ok(cp) = u32::from_str_radix(h, 16)
            {
                out.push(char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER));
                i += 2 + width;
                continue;
            }
        }
        out.push(char::from(b[i]));
        i += 1;
    }
    out
}

/// Python 2 module names that Python 3 maps on unpickling (`fix_imports`).
fn fix_module(m: &str) -> &str {
    match m {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        other => other,
    }
}

impl<'a> Vm<'a> {
    fn new(data: &'a [u8]) -> Self {
        Vm {
            r: Reader { data, pos: 0 },
            stack: Vec::new(),
            marks: Vec::new(),
            memo: Memo::default(),
            heap: Vec::new(),
            op_pos: 0,
            copied: 0,
        }
    }

    fn err(&self, msg: impl Into<String>) -> PtError {
        PtError::Pickle { offset: self.op_pos, msg: msg.into() }
    }

    fn alloc(&mut self, h: Heap) -> Result<Value, PtError> {
        if self.heap.len() >= MAX_HEAP {
            return Err(PtError::Limit(format!("data.pkl creates more than {MAX_HEAP} objects")));
        }
        self.heap.push(h);
        Ok(Value::Obj(self.heap.len() - 1))
    }

    fn push(&mut self, v: Value) -> Result<(), PtError> {
        if self.stack.len() + self.marks.len() >= MAX_STACK {
            return Err(PtError::Limit(format!("pickle stack deeper than {MAX_STACK}")));
        }
        self.stack.push(v);
        Ok(())
    }

    fn push_new(&mut self, h: Heap) -> Result<(), PtError> {
        let v = self.alloc(h)?;
        self.push(v)
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value, PtError> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<Value, PtError> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack.last().cloned().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PtError> {
        let m = self.marks.pop().ok_or_else(|| self.err("no MARK on the stack"))?;
        if m > self.stack.len() {
            return Err(self.err("stack underflow"));
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PtError> {
        let v = self.top()?;
        self.memo.insert(key, v)
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PtError> {
        let v = self.memo.get(key).cloned().ok_or_else(|| self.err(format!("memo key {key} not found")))?;
        self.push(v)
    }

    fn heap_mut(&mut self, v: &Value) -> Result<Option<&mut Heap>, PtError> {
        match v {
            Value::Obj(i) => Ok(self.heap.get_mut(*i)),
            _ => Err(self.err("container operation on a scalar value")),
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), PtError> {
        let target = self.top()?;
        match self.heap_mut(&target)? {
            Some(Heap::List(l) | Heap::Set(l)) => l.extend(items),
            Some(Heap::Instance(inst)) => inst.list.extend(items),
            _ => {}
        }
        Ok(())
    }

    fn set_items(&mut self, pairs: Vec<(Value, Value)>) -> Result<(), PtError> {
        let target = self.top()?;
        match self.heap_mut(&target)? {
            Some(Heap::Dict(d)) => {
                for (k, v) in pairs {
                    d.insert(k, v);
                }
            }
            Some(Heap::Instance(inst)) => inst.items.extend(pairs),
            _ => {}
        }
        Ok(())
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, PtError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("odd number of items for a dict"));
        }
        let mut out = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    fn new_dict(&mut self, pairs: Vec<(Value, Value)>) -> Result<Value, PtError> {
        let mut d = Dict::default();
        for (k, v) in pairs {
            d.insert(k, v);
        }
        self.alloc(Heap::Dict(Box::new(d)))
    }

    fn seq(&self, v: &Value) -> Option<&[Value]> {
        match v {
            Value::Obj(i) => match self.heap.get(*i)? {
                Heap::Tuple(t) | Heap::List(t) | Heap::Set(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    /// The first `max` items of a sequence value (calls never need more).
    fn seq_prefix(&self, v: &Value, max: usize) -> Vec<Value> {
        self.seq(v).map(|s| s.iter().take(max).cloned().collect()).unwrap_or_default()
    }

    /// A copy of a whole sequence, charged to the `MAX_COPIED` budget (a memoised
    /// sequence may be passed to any number of constructor calls).
    fn copy_seq(&mut self, v: Option<&Value>) -> Result<Vec<Value>, PtError> {
        let n = v.and_then(|v| self.seq(v)).map_or(0, <[Value]>::len);
        self.copied = self.copied.saturating_add(n);
        if self.copied > MAX_COPIED {
            return Err(PtError::Limit(format!("constructor calls copy more than {MAX_COPIED} values")));
        }
        Ok(v.and_then(|v| self.seq(v)).map(<[Value]>::to_vec).unwrap_or_default())
    }

    fn global_of(&self, v: &Value) -> Option<(Rc<str>, Rc<str>)> {
        match v {
            Value::Obj(i) => match self.heap.get(*i)? {
                Heap::Global(g) => Some((g.0.clone(), g.1.clone())),
                _ => None,
            },
            _ => None,
        }
    }

    fn global(&mut self, module: &[u8], name: &[u8]) -> Result<Value, PtError> {
        let module = String::from_utf8_lossy(module);
        let module: Rc<str> = Rc::from(fix_module(&module));
        self.alloc(Heap::Global(Box::new((module, text(name)))))
    }

    fn opaque_instance(&mut self, class: Value) -> Result<Value, PtError> {
        self.alloc(Heap::Instance(Box::new(Instance { class, state: None, items: Vec::new(), list: Vec::new() })))
    }

    /// `callable(*args)` for REDUCE / NEWOBJ / INST / OBJ. Known torch and
    /// container constructors are interpreted; everything else becomes an opaque instance.
    fn call(&mut self, callable: Value, args: Value, depth: u32) -> Result<Value, PtError> {
        let Some((module, name)) = self.global_of(&callable) else {
            return self.opaque_instance(callable);
        };
        let items = self.seq_prefix(&args, 8);
        match (&*module, &*name) {
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                let h = match self.tensor_meta(&items) {
                    Ok(m) => Heap::Tensor(Box::new(m)),
                    Err(msg) => Heap::BadTensor(Rc::from(msg.as_str())),
                };
                self.alloc(h)
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => match items.first() {
                Some(v @ Value::Obj(i)) if matches!(self.heap.get(*i), Some(Heap::Tensor(_) | Heap::BadTensor(_))) => {
                    Ok(v.clone())
                }
                _ => self.alloc(Heap::BadTensor(Rc::from("parameter data is not a tensor"))),
            },
            ("torch._tensor", "_rebuild_from_type_v2") if depth == 0 => {
                // (func, new_type, args, state): the tensor is func(*args)
                match (items.first(), items.get(2)) {
                    (Some(f), Some(a)) => self.call(f.clone(), a.clone(), depth + 1),
                    _ => self.opaque_instance(callable),
                }
            }
            ("collections", "OrderedDict" | "defaultdict") | ("builtins", "dict") => {
                // OrderedDict(iterable_of_pairs) / dict(...) / defaultdict(factory): items come via SETITEMS
                let mut pairs = Vec::new();
                if name.as_ref() != "defaultdict"
                    && let Some(src) = items.first()
                {
                    let dict_src = match src {
                        Value::Obj(i) => match self.heap.get(*i) {
                            Some(Heap::Dict(d)) => Some(d.entries.clone()),
                            _ => None,
                        },
                        _ => None,
                    };
                    if let Some(entries) = dict_src {
                        self.copied = self.copied.saturating_add(entries.len());
                        pairs = entries;
                    } else {
                        for p in self.copy_seq(Some(src))? {
                            if let Some([k, v]) = self.seq(&p) {
                                pairs.push((k.clone(), v.clone()));
                            }
                        }
                    }
                    if self.copied > MAX_COPIED {
                        return Err(PtError::Limit(format!("constructor calls copy more than {MAX_COPIED} values")));
                    }
                }
                self.new_dict(pairs)
            }
            ("builtins", "set" | "frozenset") => {
                let v = self.copy_seq(items.first())?;
                self.alloc(Heap::Set(v))
            }
            ("builtins", "list") => {
                let v = self.copy_seq(items.first())?;
                self.alloc(Heap::List(v))
            }
            ("builtins", "tuple") | ("torch", "Size") => {
                let v = self.copy_seq(items.first())?;
                self.alloc(Heap::Tuple(v))
            }
            ("copyreg", "_reconstructor") => {
                // (cls, base, state): an instance of cls
                let cls = items.first().cloned().unwrap_or(callable);
                self.opaque_instance(cls)
            }
            _ => self.opaque_instance(callable),
        }
    }

    fn int_list(&self, v: &Value) -> Option<Vec<u64>> {
        let s = self.seq(v)?;
        if s.len() > MAX_NDIM {
            return None;
        }
        s.iter()
            .map(|x| match x {
                Value::Int(i) => u64::try_from(*i).ok(),
                _ => None,
            })
            .collect()
    }

    /// Arguments of `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
    fn tensor_meta(&self, items: &[Value]) -> Result<TensorMeta, String> {
        let [storage, offset, size, stride, ..] = items else {
            return Err("tensor rebuild call has fewer than 4 arguments".to_string());
        };
        let storage = match storage {
            Value::Obj(i) => match self.heap.get(*i) {
                Some(Heap::Storage(s)) => (**s).clone(),
                _ => return Err("tensor storage argument is not a torch storage".to_string()),
            },
            _ => return Err("tensor storage argument is not a torch storage".to_string()),
        };
        let offset = match offset {
            Value::Int(i) => u64::try_from(*i).map_err(|_| "negative storage offset".to_string())?,
            _ => return Err("storage offset is not an integer".to_string()),
        };
        let shape = self.int_list(size).ok_or("size is not a tuple of at most 64 non-negative integers")?;
        let stride = self.int_list(stride).ok_or("stride is not a tuple of at most 64 non-negative integers")?;
        if shape.len() != stride.len() {
            return Err(format!("size has {} dimensions but stride has {}", shape.len(), stride.len()));
        }
        if shape.len() > MAX_NDIM {
            return Err(format!("more than {MAX_NDIM} dimensions"));
        }
        Ok(TensorMeta { storage, offset, shape, stride })
    }

    /// BINPERSID: torch's `('storage', storage_type, key, location, numel)`.
    fn persistent_load(&mut self, pid: Value) -> Result<Value, PtError> {
        let items = self.seq_prefix(&pid, 5);
        let storage = match items.as_slice() {
            [Value::Str(tag), ty, key, ..] if &**tag == "storage" => {
                let key: Rc<str> = match key {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => Rc::from(i.to_string().as_str()),
                    _ => return self.alloc(Heap::Opaque),
                };
                let dtype = match self.global_of(ty) {
                    Some((m, n)) => StorageDtype::from_torch_global(&m, &n).ok_or_else(|| Rc::from(format!("{m}.{n}"))),
                    None => Err(Rc::from("<not a class>")),
                };
                StorageRef { dtype, key }
            }
            _ => return self.alloc(Heap::Opaque),
        };
        self.alloc(Heap::Storage(Box::new(storage)))
    }

    fn read<T>(&self, v: Option<T>) -> Result<T, PtError> {
        v.ok_or_else(|| self.err(unexpected_end()))
    }

    fn str_value(&self, b: &[u8]) -> Value {
        Value::Str(text(b))
    }

    fn run(mut self) -> Result<Graph, PtError> {
        loop {
            self.op_pos = self.r.pos;
            let op = self.r.u8();
            let op = self.read(op)?;
            match op {
                // --- framing / control
                0x80 => {
                    let p = self.r.u8();
                    let p = self.read(p)?;
                    if p > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {p}")));
                    }
                }
                0x95 => {
                    let n = self.r.u64();
                    self.read(n)?; // FRAME length: frames are transparent here
                }
                b'.' => {
                    let top = self.pop()?;
                    return Ok(Graph { top, heap: self.heap });
                }
                b'(' => {
                    if self.stack.len() + self.marks.len() >= MAX_STACK {
                        return Err(PtError::Limit(format!("pickle stack deeper than {MAX_STACK}")));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    if self.stack.len() > self.floor() {
                        self.stack.pop();
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?;
                    self.push(v)?;
                }
                // --- scalars
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'I' => {
                    let l = self.r.line();
                    let l = self.read(l)?;
                    let v = match l {
                        b"01" => Value::Bool(true),
                        b"00" => Value::Bool(false),
                        _ => parse_int_text(l).map_err(|m| self.err(m))?,
                    };
                    self.push(v)?;
                }
                b'L' => {
                    let l = self.r.line();
                    let l = self.read(l)?;
                    let v = parse_int_text(l).map_err(|m| self.err(m))?;
                    self.push(v)?;
                }
                b'J' => {
                    let v = self.r.i32();
                    let v = self.read(v)?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.r.u8();
                    let v = self.read(v)?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = self.r.u16();
                    let v = self.read(v)?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                0x8a => {
                    let n = self.r.u8();
                    let n = self.read(n)?;
                    let b = self.r.bytes(u64::from(n));
                    let b = self.read(b)?;
                    self.push(decode_long(b))?;
                }
                0x8b => {
                    let n = self.r.i32();
                    let n = self.read(n)?;
                    let n = u64::try_from(n).map_err(|_| self.err("negative LONG4 length"))?;
                    let b = self.r.bytes(n);
                    let b = self.read(b)?;
                    self.push(decode_long(b))?;
                }
                b'F' => {
                    let l = self.r.line();
                    let l = self.read(l)?;
                    let s = String::from_utf8_lossy(l);
                    let f = s.trim().parse::<f64>().map_err(|_| self.err(format!("bad float literal {s:?}")))?;
                    self.push(Value::Float(f))?;
                }
                b'G' => {
                    let b = self.r.array::<8>();
                    let b = self.read(b)?;
                    self.push(Value::Float(f64::from_be_bytes(b)))?;
                }
                // --- strings and bytes
                b'S' => {
                    let l = self.r.line();
                    let l = self.read(l)?;
                    let b = unescape_string(l).map_err(|m| self.err(m))?;
                    let v = self.str_value(&b);
                    self.push(v)?;
                }
                b'T' | b'U' | b'X' | 0x8c | 0x8d | b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'T' => {
                            let n = self.r.i32();
                            let n = self.read(n)?;
                            u64::try_from(n).map_err(|_| self.err("negative BINSTRING length"))?
                        }
                        b'U' | 0x8c | b'C' => {
                            let n = self.r.u8();
                            u64::from(self.read(n)?)
                        }
                        b'X' | b'B' => {
                            let n = self.r.u32();
                            u64::from(self.read(n)?)
                        }
                        _ => {
                            let n = self.r.u64();
                            self.read(n)?
                        }
                    };
                    let b = self.r.bytes(n);
                    let b = self.read(b)?;
                    let v = match op {
                        b'B' | b'C' | 0x8e | 0x96 => Value::Bytes(Rc::from(b)),
                        _ => self.str_value(b),
                    };
                    self.push(v)?;
                }
                b'V' => {
                    let l = self.r.line();
                    let l = self.read(l)?;
                    self.push(Value::Str(Rc::from(raw_unicode_escape(l).as_str())))?;
                }
                0x97 => return Err(self.err("out-of-band buffers (NEXT_BUFFER) are not supported")),
                0x98 => {
                    self.top()?; // READONLY_BUFFER: no-op on our values
                }
                // --- tuples, lists, dicts, sets
                b')' => self.push_new(Heap::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_new(Heap::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push_new(Heap::Tuple(items))?;
                }
                b']' => self.push_new(Heap::List(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_new(Heap::List(items))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'}' => self.push_new(Heap::Dict(Box::default()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let d = self.new_dict(pairs)?;
                    self.push(d)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.set_items(pairs)?;
                }
                0x8f => self.push_new(Heap::Set(Vec::new()))?,
                0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push_new(Heap::Set(items))?;
                }
                // --- memo
                b'p' => {
                    let l = self.r.line();
                    let l = self.read(l)?;
                    let k = std::str::from_utf8(l).ok().and_then(|s| s.trim().parse::<u64>().ok());
                    let k = k.ok_or_else(|| self.err("bad PUT index"))?;
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = self.r.u8();
                    let k = self.read(k)?;
                    self.memo_put(u64::from(k))?;
                }
                b'r' => {
                    let k = self.r.u32();
                    let k = self.read(k)?;
                    self.memo_put(u64::from(k))?;
                }
                0x94 => {
                    let k = self.memo.count as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let l = self.r.line();
                    let l = self.read(l)?;
                    let k = std::str::from_utf8(l).ok().and_then(|s| s.trim().parse::<u64>().ok());
                    let k = k.ok_or_else(|| self.err("bad GET index"))?;
                    self.memo_get(k)?;
                }
                b'h' => {
                    let k = self.r.u8();
                    let k = self.read(k)?;
                    self.memo_get(u64::from(k))?;
                }
                b'j' => {
                    let k = self.r.u32();
                    let k = self.read(k)?;
                    self.memo_get(u64::from(k))?;
                }
                // --- classes and objects
                b'c' => {
                    let m = self.r.line();
                    let m = self.read(m)?;
                    let n = self.r.line();
                    let n = self.read(n)?;
                    let g = self.global(m, n)?;
                    self.push(g)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(m), Value::Str(n)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(m.as_bytes(), n.as_bytes())?;
                    self.push(g)?;
                }
                0x82..=0x84 => {
                    let code = match op {
                        0x82 => self.r.u8().map(u32::from),
                        0x83 => self.r.u16().map(u32::from),
                        _ => self.r.u32(),
                    };
                    let code = self.read(code)?;
                    let g = self.global(b"<extension>", code.to_string().as_bytes())?;
                    self.push(g)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args, 0)?;
                    self.push(v)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args, 0)?;
                    self.push(v)?;
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args, 0)?;
                    self.push(v)?;
                }
                b'i' => {
                    let m = self.r.line();
                    let m = self.read(m)?;
                    let n = self.r.line();
                    let n = self.read(n)?;
                    let items = self.pop_mark()?;
                    let cls = self.global(m, n)?;
                    let args = self.alloc(Heap::Tuple(items))?;
                    let v = self.call(cls, args, 0)?;
                    self.push(v)?;
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.err("OBJ without a class"));
                    }
                    let cls = items.remove(0);
                    let args = self.alloc(Heap::Tuple(items))?;
                    let v = self.call(cls, args, 0)?;
                    self.push(v)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    if let Some(Heap::Instance(inst)) = self.heap_mut(&target)? {
                        inst.state = Some(state);
                    }
                }
                // --- persistent ids
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?;
                }
                b'P' => {
                    let l = self.r.line();
                    self.read(l)?;
                    self.push_new(Heap::Opaque)?;
                }
                _ => return Err(self.err(format!("unknown opcode 0x{op:02x}"))),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Object graph -> checkpoint
// ---------------------------------------------------------------------------

impl Graph {
    fn get(&self, v: &Value) -> Option<&Heap> {
        match v {
            Value::Obj(i) => self.heap.get(*i),
            _ => None,
        }
    }

    fn dict(&self, v: &Value) -> Option<&Dict> {
        match self.get(v)? {
            Heap::Dict(d) => Some(d),
            _ => None,
        }
    }

    fn seq(&self, v: &Value) -> Option<&[Value]> {
        match self.get(v)? {
            Heap::Tuple(t) | Heap::List(t) | Heap::Set(t) => Some(t),
            _ => None,
        }
    }

    fn instance(&self, v: &Value) -> Option<&Instance> {
        match self.get(v)? {
            Heap::Instance(i) => Some(i),
            _ => None,
        }
    }

    /// The `__dict__` of an object (BUILD state, or the dict half of a `(dict, slots)` state).
    fn instance_dict(&self, v: &Value) -> Option<&Dict> {
        let state = self.instance(v)?.state.as_ref()?;
        self.dict(state).or_else(|| self.seq(state).and_then(|s| s.first()).and_then(|d| self.dict(d)))
    }

    fn is_module(&self, v: &Value) -> bool {
        self.instance_dict(v).is_some_and(|d| d.get_str("_modules").is_some() || d.get_str("_parameters").is_some())
    }

    fn is_tensor(&self, v: &Value) -> bool {
        matches!(self.get(v), Some(Heap::Tensor(_) | Heap::BadTensor(_)))
    }

    fn class_path(&self, v: &Value) -> Option<String> {
        match self.get(&self.instance(v)?.class)? {
            Heap::Global(g) => Some(format!("{}.{}", g.0, g.1)),
            _ => None,
        }
    }

    fn key_string(&self, k: &Value) -> String {
        match k {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::None => "null".to_string(),
            Value::Float(f) | Value::BigInt(f) => f.to_string(),
            Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            Value::Obj(_) => match self.get(k) {
                Some(Heap::Global(g)) => format!("{}.{}", g.0, g.1),
                _ => "<object>".to_string(),
            },
        }
    }

    /// Converts plain data to JSON; `Err` when nested too deeply or too large (cycles).
    fn to_json(&self, v: &Value, depth: usize, budget: &mut usize) -> Result<serde_json::Value, ()> {
        use serde_json::Value as J;
        let cost = 1 + match v {
            Value::Str(s) => s.len(),
            Value::Bytes(b) => b.len(),
            _ => 0,
        };
        if depth > MAX_JSON_DEPTH || *budget < cost {
            return Err(());
        }
        *budget -= cost;
        Ok(match v {
            Value::None => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) | Value::BigInt(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.to_string()),
            Value::Bytes(b) => J::String(String::from_utf8_lossy(b).into_owned()),
            Value::Obj(_) => match self.get(v) {
                Some(Heap::Tuple(items) | Heap::List(items) | Heap::Set(items)) => {
                    J::Array(items.iter().map(|x| self.to_json(x, depth + 1, budget)).collect::<Result<_, _>>()?)
                }
                Some(Heap::Dict(d)) => {
                    let mut m = serde_json::Map::new();
                    for (k, x) in &d.entries {
                        let key = self.key_string(k);
                        *budget = budget.checked_sub(key.len()).ok_or(())?;
                        m.insert(key, self.to_json(x, depth + 1, budget)?);
                    }
                    J::Object(m)
                }
                Some(Heap::Global(g)) => J::String(format!("{}.{}", g.0, g.1)),
                _ => J::Null,
            },
        })
    }

    /// Class names from a list of strings or a dict int -> str (sorted by key).
    fn names(&self, v: &Value) -> Result<Option<Vec<String>>, PtError> {
        let mut bytes = 0usize;
        let mut take = |s: &Rc<str>| {
            bytes = bytes.saturating_add(s.len());
            (bytes <= MAX_NAMES_BYTES).then(|| s.to_string())
        };
        let too_big = || PtError::Limit(format!("class names exceed {MAX_NAMES_BYTES} bytes"));
        if let Some(items) = self.seq(v) {
            let mut out = Vec::with_capacity(items.len());
            for x in items {
                let Value::Str(s) = x else { return Ok(None) };
                out.push(take(s).ok_or_else(too_big)?);
            }
            return Ok(Some(out));
        }
        let Some(d) = self.dict(v) else {
            return Ok(None);
        };
        let mut pairs = Vec::with_capacity(d.entries.len());
        for (k, x) in &d.entries {
            let (Value::Int(i), Value::Str(s)) = (k, x) else {
                return Ok(None);
            };
            pairs.push((*i, take(s).ok_or_else(too_big)?));
        }
        pairs.sort_by_key(|p| p.0);
        Ok(Some(pairs.into_iter().map(|p| p.1).collect()))
    }

    /// PyTorch `Module.state_dict()` order, walked iteratively: own parameters, own
    /// persistent buffers, then each child's state dict with prefix `<child>.`.
    fn module_state_dict(&self, root: &Value) -> Result<Vec<(String, Value)>, PtError> {
        let mut out: Vec<(String, Value)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut todo: Vec<(Value, String, usize)> = vec![(root.clone(), String::new(), 0)];
        let mut visits = 0usize;
        // shared sub-structures can be visited many times: bound the total work
        let mut work = 0usize;
        let mut name_bytes = 0usize;
        let mut charge = |n: usize, what: &str| {
            work = work.saturating_add(n);
            if work > MAX_WALK_WORK {
                return Err(PtError::Limit(format!(
                    "module tree too large (more than {MAX_WALK_WORK} {what} entries visited)"
                )));
            }
            Ok(())
        };
        let mut name = |prefix: &str, tail: &str, dot: bool| {
            let n = prefix.len() + tail.len() + usize::from(dot);
            name_bytes = name_bytes.saturating_add(n);
            if n > MAX_NAME_LEN {
                return Err(PtError::BadModel(format!("state-dict name longer than {MAX_NAME_LEN} bytes")));
            }
            if name_bytes > MAX_NAME_BYTES {
                return Err(PtError::Limit(format!("state-dict names exceed {MAX_NAME_BYTES} bytes")));
            }
            let mut s = String::with_capacity(n);
            s.push_str(prefix);
            s.push_str(tail);
            if dot {
                s.push('.');
            }
            Ok(s)
        };
        while let Some((module, prefix, depth)) = todo.pop() {
            visits += 1;
            if visits > MAX_MODULE_VISITS {
                return Err(PtError::Limit(format!("more than {MAX_MODULE_VISITS} modules")));
            }
            if depth > MAX_MODULE_DEPTH {
                return Err(PtError::BadModel(format!(
                    "modules nested more than {MAX_MODULE_DEPTH} levels deep (cyclic module tree?)"
                )));
            }
            let Some(d) = self.instance_dict(&module) else {
                continue;
            };
            let non_persistent: std::collections::HashSet<&str> =
                match d.get_str("_non_persistent_buffers_set").and_then(|s| self.seq(s)) {
                    Some(set) => {
                        charge(set.len(), "buffer-set")?;
                        set.iter()
                            .filter_map(|x| match x {
                                Value::Str(s) => Some(&**s),
                                _ => None,
                            })
                            .collect()
                    }
                    None => std::collections::HashSet::new(),
                };
            for (attr, kind) in [("_parameters", "parameter"), ("_buffers", "buffer")] {
                let Some(tv) = d.get_str(attr) else { continue };
                let Some(td) = self.dict(tv) else {
                    if matches!(tv, Value::None) {
                        continue;
                    }
                    return Err(PtError::BadModel(format!("`{prefix}{attr}` is not a dict")));
                };
                charge(td.entries.len(), kind)?;
                for (k, v) in &td.entries {
                    let Value::Str(tname) = k else {
                        return Err(PtError::BadModel(format!("`{prefix}{attr}` has a non-string key")));
                    };
                    if matches!(v, Value::None) || (kind == "buffer" && non_persistent.contains(&**tname)) {
                        continue;
                    }
                    let full = name(&prefix, tname, false)?;
                    if !self.is_tensor(v) {
                        return Err(PtError::BadModel(format!("{kind} `{full}` is not a tensor")));
                    }
                    if let Some(&i) = index.get(&full) {
                        if let Some(e) = out.get_mut(i) {
                            e.1 = v.clone();
                        }
                    } else {
                        if out.len() >= MAX_STATE_ENTRIES {
                            return Err(PtError::Limit(format!("more than {MAX_STATE_ENTRIES} tensors")));
                        }
                        index.insert(full.clone(), out.len());
                        out.push((full, v.clone()));
                    }
                }
            }
            if let Some(mv) = d.get_str("_modules") {
                let Some(md) = self.dict(mv) else {
                    if matches!(mv, Value::None) {
                        continue;
                    }
                    return Err(PtError::BadModel(format!("`{prefix}_modules` is not a dict")));
                };
                charge(md.entries.len(), "module")?;
                for (k, child) in md.entries.iter().rev() {
                    if matches!(child, Value::None) {
                        continue;
                    }
                    let Value::Str(cname) = k else {
                        return Err(PtError::BadModel(format!("`{prefix}_modules` has a non-string key")));
                    };
                    let child_prefix = name(&prefix, cname, true)?;
                    todo.push((child.clone(), child_prefix, depth + 1));
                }
            }
        }
        Ok(out)
    }
}

/// Decodes the pickle and materialises everything the checkpoint exposes.
fn load_checkpoint(pickle: &[u8], blobs: &mut dyn BlobSource, big_endian: bool) -> Result<PtCheckpoint, PtError> {
    let g = Vm::new(pickle).run()?;

    let top_dict = g.dict(&g.top);
    let top_level_keys: Vec<String> =
        top_dict.map(|d| d.entries.iter().map(|(k, _)| g.key_string(k)).collect()).unwrap_or_default();
    let no_model = || PtError::NoModel {
        keys: if top_level_keys.is_empty() { "none".to_string() } else { top_level_keys.join(", ") },
    };

    // attempt_load: ckpt.get('ema') or ckpt['model']; else the object itself. A candidate
    // counts when it is a module or a dict holding tensors (a state dict).
    let usable = |v: &Value| g.is_module(v) || g.dict(v).is_some_and(|d| d.entries.iter().any(|(_, t)| g.is_tensor(t)));
    let mut candidates: Vec<Value> = Vec::new();
    if let Some(d) = top_dict {
        for key in ["ema", "model", "state_dict"] {
            if let Some(v) = d.get_str(key) {
                candidates.push(v.clone());
            }
        }
    }
    candidates.push(g.top.clone());
    let model = candidates.into_iter().find(|v| usable(v)).ok_or_else(no_model)?;

    let mut ck = PtCheckpoint {
        tensors: Vec::new(),
        yaml: None,
        names: None,
        nc: None,
        stride: None,
        model_class: None,
        top_level_keys: top_level_keys.clone(),
    };

    let entries: Vec<(String, Value)>;
    let mut stride_tensor: Option<Value> = None;
    if g.is_module(&model) {
        entries = g.module_state_dict(&model)?;
        ck.model_class = g.class_path(&model);
        if let Some(d) = g.instance_dict(&model) {
            if let Some(y) = d.get_str("yaml").filter(|v| !matches!(v, Value::None)) {
                let mut budget = MAX_JSON_UNITS;
                let json = g.to_json(y, 0, &mut budget).map_err(|()| {
                    PtError::BadModel("`yaml` attribute is nested too deeply or too large".to_string())
                })?;
                ck.yaml = Some(json);
            }
            ck.names = match d.get_str("names") {
                Some(v) => g.names(v)?,
                None => None,
            };
            ck.nc = match d.get_str("nc") {
                Some(Value::Int(n)) => usize::try_from(*n).ok(),
                _ => None,
            };
            match d.get_str("stride") {
                Some(v) if g.is_tensor(v) => stride_tensor = Some(v.clone()),
                Some(v) => {
                    ck.stride = g.seq(v).and_then(|s| {
                        s.iter()
                            .map(|x| match x {
                                Value::Int(i) => Some(*i as f32),
                                Value::Float(f) => Some(*f as f32),
                                _ => None,
                            })
                            .collect()
                    });
                }
                None => {}
            }
        }
    } else if let Some(d) = g.dict(&model) {
        // a plain state dict: name -> tensor
        entries = d.entries.iter().filter(|(_, v)| g.is_tensor(v)).map(|(k, v)| (g.key_string(k), v.clone())).collect();
        if entries.is_empty() {
            return Err(no_model());
        }
    } else {
        return Err(no_model());
    }

    let mut wanted: Vec<(String, Value)> = entries;
    let n_state = wanted.len();
    if let Some(s) = stride_tensor {
        wanted.push(("stride".to_string(), s));
    }
    let mut tensors = materialize_all(&g, &wanted, blobs, big_endian)?;
    if tensors.len() > n_state
        && let Some((_, s)) = tensors.pop()
    {
        ck.stride = Some(s.to_f32_vec());
    }
    ck.tensors = tensors;
    Ok(ck)
}

/// A tensor ready to be copied out of its storage.
struct Planned<'g> {
    meta: &'g TensorMeta,
    dtype: StorageDtype,
    numel: u64,
    /// Bytes of the storage the tensor touches (0 when empty).
    needed: u64,
    out_bytes: u64,
}

fn plan<'g>(meta: &'g TensorMeta, name: &str) -> Result<Planned<'g>, PtError> {
    let dtype = meta
        .storage
        .dtype
        .clone()
        .map_err(|t| PtError::UnsupportedStorage { tensor: name.to_string(), storage_type: t.to_string() })?;
    let overflow = || PtError::BadTensor { tensor: name.to_string(), msg: "size overflows".to_string() };
    let es = dtype.size_in_bytes() as u64;
    let numel = meta.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(overflow)?;
    let needed = if numel == 0 {
        0
    } else {
        let mut last = meta.offset;
        for (&d, &s) in meta.shape.iter().zip(&meta.stride) {
            last = (d - 1).checked_mul(s).and_then(|x| x.checked_add(last)).ok_or_else(overflow)?;
        }
        last.checked_add(1).and_then(|x| x.checked_mul(es)).ok_or_else(overflow)?
    };
    let out_bytes = numel.checked_mul(es).filter(|&b| usize::try_from(b).is_ok()).ok_or_else(overflow)?;
    Ok(Planned { meta, dtype, numel, needed, out_bytes })
}

/// Copies a (possibly strided) tensor out of its storage blob into row-major bytes.
fn gather(p: &Planned<'_>, blob: &[u8], big_endian: bool) -> Option<Vec<u8>> {
    let es = p.dtype.size_in_bytes();
    if p.numel == 0 {
        return Some(Vec::new());
    }
    let m = p.meta;
    let out_len = usize::try_from(p.out_bytes).ok()?;
    let offset = usize::try_from(m.offset).ok()?;
    let shape: Vec<usize> = m.shape.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
    let stride: Vec<usize> = m.stride.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;

    let mut contiguous = true;
    let mut expect = 1usize;
    for (&d, &s) in shape.iter().zip(&stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
            break;
        }
        expect = expect.checked_mul(d)?;
    }
    let mut out = if contiguous {
        let start = offset.checked_mul(es)?;
        blob.get(start..start.checked_add(out_len)?)?.to_vec()
    } else {
        let mut out = Vec::with_capacity(out_len);
        let nd = shape.len();
        // contiguous innermost runs are copied at once
        let (inner_len, inner_stride) = (shape[nd - 1], stride[nd - 1]);
        let outer = &shape[..nd - 1];
        let mut idx = vec![0usize; outer.len()];
        loop {
            let mut base = offset;
            for (i, &x) in idx.iter().enumerate() {
                base += x * stride[i];
            }
            if inner_stride == 1 {
                out.extend_from_slice(blob.get(base * es..(base + inner_len) * es)?);
            } else {
                for j in 0..inner_len {
                    let s = (base + j * inner_stride) * es;
                    out.extend_from_slice(blob.get(s..s + es)?);
                }
            }
            // odometer over the outer dimensions
            let mut d = outer.len();
            loop {
                if d == 0 {
                    return finish(out, es, big_endian);
                }
                d -= 1;
                idx[d] += 1;
                if idx[d] < outer[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    };
    if big_endian && es > 1 {
        out.chunks_exact_mut(es).for_each(<[u8]>::reverse);
    }
    Some(out)
}

fn finish(mut out: Vec<u8>, es: usize, big_endian: bool) -> Option<Vec<u8>> {
    if big_endian && es > 1 {
        out.chunks_exact_mut(es).for_each(<[u8]>::reverse);
    }
    Some(out)
}

/// Materialises the wanted tensors, loading each storage blob once.
fn materialize_all(
    g: &Graph,
    wanted: &[(String, Value)],
    blobs: &mut dyn BlobSource,
    big_endian: bool,
) -> Result<Vec<(String, RawTensor)>, PtError> {
    // validate everything in order first, so errors name the first bad tensor
    let mut plans = Vec::with_capacity(wanted.len());
    for (name, v) in wanted {
        let meta = match g.get(v) {
            Some(Heap::Tensor(m)) => &**m,
            Some(Heap::BadTensor(msg)) => {
                return Err(PtError::BadTensor { tensor: name.clone(), msg: msg.to_string() });
            }
            _ => {
                return Err(PtError::BadTensor { tensor: name.clone(), msg: "not a tensor".to_string() });
            }
        };
        plans.push(plan(meta, name)?);
    }

    // group by storage key
    let mut order: Vec<usize> = (0..plans.len()).collect();
    order.sort_by(|&a, &b| plans[a].meta.storage.key.cmp(&plans[b].meta.storage.key));

    let mut results: Vec<Option<RawTensor>> = vec![None; plans.len()];
    let mut loaded_bytes = 0u64;
    let mut out_total = 0u64;
    let mut i = 0;
    while i < order.len() {
        let key = plans[order[i]].meta.storage.key.clone();
        let mut j = i;
        while j < order.len() && plans[order[j]].meta.storage.key == key {
            j += 1;
        }
        let group = &order[i..j];
        let needed = group.iter().map(|&k| plans[k].needed).max().unwrap_or(0);
        let blob = if needed == 0 { Vec::new() } else { blobs.blob(&key, needed)? };
        loaded_bytes = loaded_bytes.saturating_add(blob.len() as u64);
        for &k in group {
            let p = &plans[k];
            let name = &wanted[k].0;
            if p.needed > blob.len() as u64 {
                return Err(PtError::StorageTooShort {
                    tensor: name.clone(),
                    storage: key.to_string(),
                    needed: p.needed,
                    available: blob.len() as u64,
                });
            }
            out_total = out_total.saturating_add(p.out_bytes);
            if out_total > loaded_bytes.saturating_mul(OUTPUT_FACTOR).saturating_add(OUTPUT_SLACK) {
                return Err(PtError::BadTensor {
                    tensor: name.clone(),
                    msg: format!(
                        "expands to {} bytes, far more than the {} storage bytes read so far",
                        p.out_bytes, loaded_bytes
                    ),
                });
            }
            let data = gather(p, &blob, big_endian).ok_or_else(|| PtError::BadTensor {
                tensor: name.clone(),
                msg: "strides reach outside the storage".to_string(),
            })?;
            let shape = p.meta.shape.iter().map(|&d| d as usize).collect();
            results[k] = Some(RawTensor { dtype: p.dtype, shape, data });
        }
        i = j;
    }
    wanted
        .iter()
        .zip(results)
        .map(|((name, _), t)| {
            t.map(|t| (name.clone(), t))
                .ok_or_else(|| PtError::BadTensor { tensor: name.clone(), msg: "not materialised".to_string() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use std::path::PathBuf;

    const TINY_MODELS: [&str; 7] = [
        "tiny-gelan-c",
        "tiny-gelan-s",
        "tiny-gelan",
        "tiny-yolov9-c",
        "tiny-yolov9-e",
        "tiny-yolov9-cf",
        "tiny-yolov7-af",
    ];

    fn tiny(file: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/yolov9/tiny")).join(file)
    }

    fn full_dir() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/yolov9/full"))
    }

    fn read_json(path: &Path) -> serde_json::Value {
        let text = std::fs::read_to_string(path).expect("read json fixture");
        serde_json::from_str(&text).expect("parse json fixture")
    }

    // --- tiny pickle writer for synthetic checkpoints --------------------------------------

    struct Pk(Vec<u8>);

    impl Pk {
        fn new() -> Self {
            Pk(vec![0x80, 2])
        }
        fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn s(&mut self, s: &str) -> &mut Self {
            self.0.push(b'X');
            self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
            self.0.extend_from_slice(s.as_bytes());
            self
        }
        fn int(&mut self, i: i32) -> &mut Self {
            self.0.push(b'J');
            self.0.extend_from_slice(&i.to_le_bytes());
            self
        }
        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.0.push(b'c');
            self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
            self
        }
        fn ints(&mut self, v: &[i32]) -> &mut Self {
            self.op(b"(");
            for &i in v {
                self.int(i);
            }
            self.op(b"t")
        }
        /// `_rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())`
        fn tensor(
            &mut self,
            cls: &str,
            key: &str,
            numel: i32,
            offset: i32,
            shape: &[i32],
            stride: &[i32],
        ) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2").op(b"((").s("storage").global("torch", cls);
            self.s(key).s("cpu").int(numel).op(b"tQ").int(offset).ints(shape).ints(stride);
            self.op(b"\x89").global("collections", "OrderedDict").op(b")RtR")
        }
        /// `_rebuild_parameter(tensor, False, OrderedDict())`
        fn param(&mut self, key: &str, numel: i32, shape: &[i32], stride: &[i32]) -> &mut Self {
            self.global("torch._utils", "_rebuild_parameter").op(b"(");
            self.tensor("FloatStorage", key, numel, 0, shape, stride);
            self.op(b"\x89").global("collections", "OrderedDict").op(b")RtR")
        }
        /// An nn.Module: NEWOBJ of `cls`, BUILD with the dict whose items `body` writes.
        fn module(&mut self, cls: &str, body: impl FnOnce(&mut Pk)) -> &mut Self {
            self.global("models.test", cls).op(b")\x81}(");
            body(self);
            self.op(b"ub")
        }
        fn done(&mut self) -> Vec<u8> {
            self.0.push(b'.');
            std::mem::take(&mut self.0)
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn make_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, data) in entries {
            w.start_file(*name, opts).expect("start zip entry");
            w.write_all(data).expect("write zip entry");
        }
        w.finish().expect("finish zip").into_inner()
    }

    fn archive(pickle: &[u8], blobs: &[(&str, &[u8])]) -> Vec<u8> {
        let names: Vec<String> = blobs.iter().map(|(k, _)| format!("archive/data/{k}")).collect();
        let mut entries: Vec<(&str, &[u8])> = vec![("archive/data.pkl", pickle), ("archive/version", b"3\n")];
        for (n, (_, d)) in names.iter().zip(blobs) {
            entries.push((n, d));
        }
        make_zip(&entries)
    }

    fn read_err(bytes: &[u8]) -> PtError {
        match read_pt_bytes(bytes) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    // --- real checkpoints -------------------------------------------------------------------

    /// Every tensor of every tiny checkpoint equals (bit for bit, after widening) the
    /// tensor of the same name in the sibling float32 safetensors file.
    #[test]
    fn tiny_checkpoints_match_safetensors() {
        for model in TINY_MODELS {
            let ck = read_pt(&tiny(&format!("{model}.pt"))).unwrap_or_else(|e| panic!("{model}: {e}"));
            let st_bytes = std::fs::read(tiny(&format!("{model}.safetensors"))).expect("read safetensors");
            let st = safetensors::SafeTensors::deserialize(&st_bytes).expect("parse safetensors");
            let (_, meta) = safetensors::SafeTensors::read_metadata(&st_bytes).expect("safetensors metadata");
            let meta = meta.metadata().clone().unwrap_or_default();

            let mut ours: Vec<&str> = ck.tensors.iter().map(|(n, _)| n.as_str()).collect();
            let mut theirs: Vec<String> = st.names().into_iter().map(str::to_string).collect();
            assert_eq!(ours.len(), theirs.len(), "{model}: tensor count");
            ours.sort_unstable();
            theirs.sort_unstable();
            assert_eq!(ours, theirs, "{model}: tensor names");

            for (name, t) in &ck.tensors {
                let view = st.tensor(name).expect("tensor in safetensors");
                assert_eq!(t.shape, view.shape(), "{model}: {name} shape");
                assert_eq!(t.data.len(), t.numel() * t.dtype.size_in_bytes(), "{model}: {name} bytes");
                match view.dtype() {
                    safetensors::Dtype::F32 => {
                        assert_eq!(t.dtype, StorageDtype::F16, "{model}: {name} dtype");
                        let want: Vec<u32> =
                            view.data().chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                        let got: Vec<u32> = t.to_f32_vec().iter().map(|x| x.to_bits()).collect();
                        assert!(got == want, "{model}: {name} values differ");
                    }
                    safetensors::Dtype::I64 => {
                        assert_eq!(t.dtype, StorageDtype::I64, "{model}: {name} dtype");
                        assert_eq!(t.data, view.data(), "{model}: {name} values");
                    }
                    other => panic!("{model}: {name}: unexpected safetensors dtype {other:?}"),
                }
            }

            let nc: usize = meta.get("nc").expect("nc metadata").parse().expect("nc number");
            assert_eq!(ck.nc, Some(nc), "{model}: nc");
            let yaml = ck.yaml.as_ref().expect("yaml attribute");
            assert_eq!(yaml["nc"].as_u64(), Some(nc as u64), "{model}: yaml nc");
            assert!(yaml["backbone"].is_array() && yaml["head"].is_array(), "{model}: yaml layers");
            let names = ck.names.as_ref().expect("names attribute");
            assert_eq!(names.len(), nc, "{model}: names");
            assert_eq!(names[0], "person", "{model}: first name");
            assert_eq!(ck.stride.as_deref(), Some(&[8.0f32, 16.0, 32.0][..]), "{model}: stride");
            assert_eq!(ck.model_class.as_deref(), Some("models.yolo.DetectionModel"), "{model}: class");

            let info = read_json(&tiny(&format!("{model}.json")));
            let keys: Vec<&str> = info["checkpoint"]["keys"]
                .as_array()
                .expect("checkpoint keys")
                .iter()
                .filter_map(|k| k.as_str())
                .collect();
            assert_eq!(ck.top_level_keys, keys, "{model}: top-level keys");
        }
    }

    /// Tensors come in `state_dict()` order (not the sorted order of safetensors).
    #[test]
    fn tiny_state_dict_order() {
        let ck = read_pt(&tiny("tiny-gelan-s.pt")).expect("read tiny-gelan-s");
        let names: Vec<&str> = ck.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            &names[..6],
            [
                "model.0.conv.weight",
                "model.0.bn.weight",
                "model.0.bn.bias",
                "model.0.bn.running_mean",
                "model.0.bn.running_var",
                "model.0.bn.num_batches_tracked",
            ]
        );
        assert_eq!(names.last().copied(), Some("model.22.dfl.conv.weight"));
        // top-level layer indices never decrease (a sorted order would put model.10 before model.2)
        let layers: Vec<usize> = names
            .iter()
            .map(|n| n.split('.').nth(1).and_then(|i| i.parse().ok()).expect("model.<i>. prefix"))
            .collect();
        assert!(layers.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(ck.get("model.0.conv.weight").map(|t| t.shape.clone()), Some(vec![8, 3, 3, 3]));
        assert_eq!(ck.get("model.0.bn.num_batches_tracked").map(|t| t.shape.len()), Some(0));
    }

    /// The full-size gelan-s checkpoint (skipped where `full/` is not available).
    #[test]
    fn full_gelan_s() {
        let dir = full_dir();
        let start = std::time::Instant::now();
        let ck = read_pt(&dir.join("gelan-s.pt")).expect("read gelan-s.pt");
        eprintln!("gelan-s.pt read in {:?}", start.elapsed());
        assert_eq!(ck.tensors.len(), 1339);
        assert_eq!(ck.get("model.0.conv.weight").map(|t| t.shape.clone()), Some(vec![32, 3, 3, 3]));
        assert_eq!(ck.get("model.22.cv3.2.2.weight").map(|t| t.shape.clone()), Some(vec![80, 128, 1, 1]));
        let names = ck.names.as_ref().expect("names");
        assert_eq!(names.len(), 80);
        assert_eq!(names[0], "person");
        assert_eq!(ck.nc, Some(80));
        assert_eq!(ck.stride.as_deref(), Some(&[8.0f32, 16.0, 32.0][..]));

        // the manifest lists PyTorch's state_dict() order, shapes and dtypes
        let manifest = dir.join("../manifests/gelan-s.json");
        if manifest.is_file() {
            let m = read_json(&manifest);
            let sd = m["state_dict"].as_array().expect("state_dict list");
            assert_eq!(sd.len(), ck.tensors.len());
            for (entry, (name, t)) in sd.iter().zip(&ck.tensors) {
                assert_eq!(entry[0].as_str(), Some(name.as_str()));
                let shape: Vec<usize> =
                    entry[1].as_array().expect("shape").iter().filter_map(|d| d.as_u64().map(|d| d as usize)).collect();
                assert_eq!(shape, t.shape, "{name}");
                assert_eq!(entry[2].as_str(), Some(t.dtype.name()), "{name}");
            }
        }
    }

    // --- synthetic checkpoints --------------------------------------------------------------

    #[test]
    fn plain_state_dict_with_offsets_and_strides() {
        let mut p = Pk::new();
        p.global("collections", "OrderedDict").op(b")R(");
        p.s("a").tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1]);
        p.s("transposed").tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3]);
        p.s("sliced").tensor("FloatStorage", "0", 6, 2, &[2], &[2]);
        p.s("scalar").tensor("FloatStorage", "0", 6, 5, &[], &[]);
        p.s("expanded").tensor("FloatStorage", "0", 6, 1, &[2, 2], &[0, 1]);
        p.s("empty").tensor("FloatStorage", "0", 6, 0, &[0, 4], &[4, 1]);
        p.s("not_a_tensor").int(3);
        let pickle = p.op(b"u").done();
        let blob = f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let ck = read_pt_bytes(&archive(&pickle, &[("0", &blob)])).expect("read");
        let get = |n: &str| ck.get(n).expect("tensor").to_f32_vec();
        assert_eq!(get("a"), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(get("transposed"), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(get("sliced"), [2.0, 4.0]);
        assert_eq!(get("scalar"), [5.0]);
        assert_eq!(get("expanded"), [1.0, 2.0, 1.0, 2.0]);
        assert!(get("empty").is_empty());
        assert_eq!(ck.get("transposed").map(|t| t.shape.clone()), Some(vec![3, 2]));
        assert_eq!(ck.tensors.len(), 6);
        assert_eq!(ck.top_level_keys.len(), 7);
        assert!(ck.yaml.is_none() && ck.names.is_none() && ck.model_class.is_none());
    }

    /// A module checkpoint: `ema` wins over `model`, state_dict order and filtering, memo
    /// identity (a dict filled after it was memoised), attributes.
    #[test]
    fn module_checkpoint_semantics() {
        let mut p = Pk::new();
        p.op(b"}(").s("epoch").int(3);
        p.s("model").module("Other", |p| {
            p.s("_parameters").op(b"}(").s("x").param("9", 1, &[1], &[1]).op(b"u");
        });
        p.s("ema").module("Net", |p| {
            p.s("_parameters").op(b"}(").s("w").param("0", 4, &[2, 2], &[2, 1]);
            p.s("unused").op(b"N").s("b").param("1", 2, &[2], &[1]).op(b"u");
            p.s("_buffers").op(b"}(").s("tmp").tensor("FloatStorage", "1", 2, 0, &[2], &[1]);
            p.s("count").tensor("LongStorage", "2", 1, 0, &[], &[]).op(b"u");
            p.s("_non_persistent_buffers_set").global("__builtin__", "set").op(b"](").s("tmp").op(b"e\x85R");
            p.s("_modules").op(b"}(").s("child").module("Child", |p| {
                p.s("_parameters").op(b"}(").s("k").param("1", 2, &[1, 2], &[2, 1]).op(b"u");
                p.s("_modules").op(b"}");
            });
            p.s("gone").op(b"N").op(b"u");
            // memo identity: memoise an empty dict, fill it, use it through BINGET
            p.s("names").op(b"}q\x07(").op(b"K\x01").s("dog").op(b"K\x00").s("cat").op(b"u");
            p.s("yaml").op(b"}(").s("nc").int(2).s("labels").op(b"h\x07").s("depth").op(b"G");
            p.op(&0.5f64.to_be_bytes()).s("none").op(b"N").s("list").op(b"](K\x01K\x02e").op(b"u");
            p.s("nc").int(2).s("stride").tensor("FloatStorage", "3", 3, 0, &[3], &[1]);
        });
        let pickle = p.op(b"u").done();
        let bytes = archive(
            &pickle,
            &[
                ("0", &f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
                ("1", &f32_bytes(&[5.0, 6.0])),
                ("2", &7i64.to_le_bytes()),
                ("3", &f32_bytes(&[8.0, 16.0, 32.0])),
            ],
        );
        let ck = read_pt_bytes(&bytes).expect("read");
        let names: Vec<&str> = ck.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["w", "b", "count", "child.k"]);
        assert_eq!(ck.get("count").map(|t| (t.dtype, t.to_f32_vec())), Some((StorageDtype::I64, vec![7.0])));
        assert_eq!(ck.get("child.k").map(|t| t.to_f32_vec()), Some(vec![5.0, 6.0]));
        assert_eq!(ck.model_class.as_deref(), Some("models.test.Net"));
        assert_eq!(ck.names, Some(vec!["cat".to_string(), "dog".to_string()]));
        assert_eq!(ck.nc, Some(2));
        assert_eq!(ck.stride, Some(vec![8.0, 16.0, 32.0]));
        assert_eq!(
            ck.yaml,
            Some(serde_json::json!({
                "nc": 2, "labels": {"1": "dog", "0": "cat"}, "depth": 0.5, "none": null, "list": [1, 2]
            }))
        );
        assert_eq!(ck.top_level_keys, ["epoch", "model", "ema"]);
    }

    /// A bare module object at the top level; a dict whose `model` entry is not a model
    /// falls back to the dict itself as a state dict; names given as a list.
    #[test]
    fn top_level_module_and_state_dict_fallback() {
        let mut p = Pk::new();
        p.module("Net", |p| {
            p.s("_parameters").op(b"}(").s("w").param("0", 2, &[2], &[1]).op(b"u");
            p.s("names").op(b"](").s("a").s("b").op(b"e");
        });
        let ck = read_pt_bytes(&archive(&p.done(), &[("0", &f32_bytes(&[1.0, 2.0]))])).expect("read");
        assert_eq!(ck.tensors.len(), 1);
        assert!(ck.top_level_keys.is_empty());
        assert_eq!(ck.names, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(ck.model_class.as_deref(), Some("models.test.Net"));

        let mut p = Pk::new();
        p.op(b"}(").s("model").tensor("FloatStorage", "0", 2, 0, &[2], &[1]);
        p.s("model.bias").tensor("FloatStorage", "0", 2, 1, &[1], &[1]).op(b"u");
        let ck = read_pt_bytes(&archive(&p.done(), &[("0", &f32_bytes(&[1.0, 2.0]))])).expect("read");
        let names: Vec<&str> = ck.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["model", "model.bias"]);
        assert_eq!(ck.get("model.bias").map(RawTensor::to_f32_vec), Some(vec![2.0]));
    }

    /// Protocol-4 opcodes, text opcodes and a torch 2.x style `_rebuild_from_type_v2`.
    #[test]
    fn protocol_4_and_text_opcodes() {
        let mut p = Pk(vec![0x80, 4, 0x95]);
        p.op(&0u64.to_le_bytes());
        p.op(b"}\x94(");
        // SHORT_BINUNICODE + STACK_GLOBAL + MEMOIZE
        p.op(b"\x8c\x06weight\x94");
        p.op(b"\x8c\x0dtorch._tensor\x8c\x15_rebuild_from_type_v2\x93");
        p.op(b"(\x8c\x0ctorch._utils\x8c\x12_rebuild_tensor_v2\x93");
        p.global("torch", "Tensor");
        p.op(b"(").op(b"(").s("storage").global("torch", "BFloat16Storage").s("0").s("cuda:0").int(2);
        p.op(b"tQK\x00K\x02\x85K\x01\x85\x89").global("collections", "OrderedDict").op(b")Rt");
        p.op(b"}tR");
        // text opcodes in a value that is not needed: INT, LONG, FLOAT, STRING, UNICODE, PUT/GET
        p.op(b"S'in\\'fo\\n'\n").op(b"(I01\nI-12\nL123456789012345678901234567890L\nF1.5\nVcaf\\u00e9\np9\ng9\nl");
        // LONG1 of 9 bytes that still fits in i64, EMPTY_SET/ADDITEMS, FROZENSET
        p.op(b"\x8c\x01x\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff");
        p.op(b"\x8c\x01s\x8f(K\x01K\x02\x90").op(b"\x8c\x01f(K\x03\x91");
        let pickle = p.op(b"u").done();
        let blob = [0x80, 0x3f, 0x00, 0x40]; // bf16 1.0, 2.0
        let ck = read_pt_bytes(&archive(&pickle, &[("0", &blob)])).expect("read");
        let w = ck.get("weight").expect("weight");
        assert_eq!((w.dtype, w.to_f32_vec()), (StorageDtype::BF16, vec![1.0, 2.0]));
        assert_eq!(ck.tensors.len(), 1);
        assert_eq!(ck.top_level_keys, ["weight", "in'fo\n", "x", "s", "f"]);
    }

    #[test]
    fn decoders() {
        assert!(matches!(decode_long(&[]), Value::Int(0)));
        assert!(matches!(decode_long(&[0xff]), Value::Int(-1)));
        assert!(matches!(decode_long(&[0x00, 0x80]), Value::Int(-32768)));
        assert!(matches!(decode_long(&[0x00, 0x80, 0x00]), Value::Int(32768)));
        assert!(matches!(decode_long(&[0xff; 9]), Value::Int(-1)));
        assert!(matches!(decode_long(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0]), Value::BigInt(f) if f == 2f64.powi(63)));
        assert_eq!(unescape_string(b"'a\\x41\\101\\\\'").expect("unescape"), b"aAA\\");
        assert_eq!(raw_unicode_escape(b"a\\u00e9\\U0001F600\\x"), "a\u{e9}\u{1F600}\\x");
        assert!(matches!(parse_int_text(b"-7"), Ok(Value::Int(-7))));
    }

    #[test]
    fn big_endian_storages_are_swapped() {
        let mut p = Pk::new();
        p.op(b"}(").s("t").tensor("FloatStorage", "0", 2, 0, &[2], &[1]).op(b"u");
        let pickle = p.done();
        let blob: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
        let bytes = make_zip(&[("a/data.pkl", &pickle), ("a/byteorder", b"big"), ("a/data/0", &blob)]);
        let ck = read_pt_bytes(&bytes).expect("read");
        assert_eq!(ck.get("t").map(|t| t.to_f32_vec()), Some(vec![1.5, -2.0]));
    }

    // --- errors -----------------------------------------------------------------------------

    #[test]
    fn error_random_bytes() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let e = read_err(&bytes);
        assert!(matches!(e, PtError::NotZip), "{e}");
        assert_eq!(e.to_string(), "not a PyTorch checkpoint (not a zip archive)");
        assert!(matches!(read_err(&[]), PtError::NotZip));
        assert!(matches!(read_err(&[0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc]), PtError::LegacyFormat));
    }

    #[test]
    fn error_truncated_checkpoint() {
        let bytes = std::fs::read(tiny("tiny-gelan-s.pt")).expect("read fixture");
        let e = read_err(&bytes[..bytes.len() / 2]);
        assert!(matches!(e, PtError::Zip(_)), "{e}");
        assert!(e.to_string().starts_with("corrupt or truncated checkpoint zip archive"), "{e}");
    }

    #[test]
    fn error_zip_without_data_pkl() {
        let bytes = make_zip(&[("archive/version", b"3\n"), ("archive/data/0", b"\0\0\0\0")]);
        let e = read_err(&bytes);
        assert!(matches!(e, PtError::NoDataPkl), "{e}");
        assert_eq!(e.to_string(), "not a PyTorch checkpoint (no data.pkl in the zip archive)");
    }

    #[test]
    fn error_bad_pickles() {
        let e = read_err(&archive(&[0x80, 2, b'}', 0xff, b'.'], &[]));
        assert_eq!(e.to_string(), "corrupt pickle in data.pkl: unknown opcode 0xff at byte offset 3");
        let e = read_err(&archive(&[0x80, 2, b'X', 10, 0, 0, 0, b'a'], &[]));
        assert_eq!(e.to_string(), "corrupt pickle in data.pkl: unexpected end of data at byte offset 2");
        let e = read_err(&archive(&[0x80, 2, b'}'], &[]));
        assert!(e.to_string().contains("unexpected end of data at byte offset 3"), "{e}");
        let e = read_err(&archive(&[0x80, 2, b't', b'.'], &[]));
        assert!(e.to_string().contains("no MARK"), "{e}");
        let e = read_err(&archive(&[0x80, 2, b'(', b'a', b'.'], &[]));
        assert!(e.to_string().contains("stack underflow"), "{e}");
        let e = read_err(&archive(&[0x80, 2, b'h', 4, b'.'], &[]));
        assert!(e.to_string().contains("memo key 4 not found"), "{e}");
        let e = read_err(&archive(&[0x80, 2, b'K', 1, b'K', 1, b'a', b'.'], &[]));
        assert!(matches!(e, PtError::Pickle { offset: 6, .. }), "{e}");
    }

    #[test]
    fn error_missing_storage() {
        let mut p = Pk::new();
        p.op(b"}(").s("w").tensor("HalfStorage", "7", 2, 0, &[2], &[1]).op(b"u");
        let e = read_err(&archive(&p.done(), &[("0", b"\0\0\0\0")]));
        assert!(matches!(&e, PtError::MissingStorage(p) if p == "archive/data/7"), "{e}");
        assert_eq!(e.to_string(), "missing storage blob `archive/data/7` in the checkpoint archive");
    }

    #[test]
    fn error_storage_too_short() {
        let mut p = Pk::new();
        p.op(b"}(").s("w").tensor("FloatStorage", "0", 4, 1, &[2, 2], &[2, 1]).op(b"u");
        let e = read_err(&archive(&p.done(), &[("0", &f32_bytes(&[1.0, 2.0, 3.0, 4.0]))]));
        assert!(
            matches!(&e, PtError::StorageTooShort { tensor, needed: 20, available: 16, .. } if tensor == "w"),
            "{e}"
        );
    }

    #[test]
    fn error_unsupported_storage() {
        let mut p = Pk::new();
        p.op(b"}(").s("w").tensor("ComplexFloatStorage", "0", 1, 0, &[1], &[1]).op(b"u");
        let e = read_err(&archive(&p.done(), &[("0", &[0u8; 8])]));
        assert_eq!(e.to_string(), "unsupported storage type `torch.ComplexFloatStorage` for tensor `w`");
    }

    #[test]
    fn error_no_model() {
        let mut p = Pk::new();
        p.op(b"}(").s("epoch").int(1).s("model").op(b"N").s("ema").op(b"Nu");
        let e = read_err(&archive(&p.done(), &[]));
        assert_eq!(e.to_string(), "no model in checkpoint (top-level keys: epoch, model, ema)");
        let e = read_err(&archive(&Pk::new().int(5).done(), &[]));
        assert!(matches!(e, PtError::NoModel { .. }), "{e}");
    }

    #[test]
    fn error_malformed_model() {
        // a parameter that is not a tensor
        let mut p = Pk::new();
        p.module("Net", |p| {
            p.s("_parameters").op(b"}(").s("w").int(1).op(b"u");
        });
        let e = read_err(&archive(&p.done(), &[]));
        assert_eq!(e.to_string(), "malformed model in checkpoint: parameter `w` is not a tensor");
        // a tensor rebuilt from something that is not a storage
        let mut p = Pk::new();
        p.op(b"}(").s("w").global("torch._utils", "_rebuild_tensor_v2").op(b"(K\x00K\x00)").op(b")tRu");
        let e = read_err(&archive(&p.done(), &[]));
        assert!(matches!(&e, PtError::BadTensor { tensor, .. } if tensor == "w"), "{e}");
    }

    /// Cycles and deep nesting give errors, never a stack overflow.
    #[test]
    fn hostile_structures() {
        // a module that is its own child
        let mut p = Pk::new();
        p.global("models.test", "Net").op(b")\x81q\x01}(").s("_modules").op(b"}(").s("me").op(b"h\x01uub");
        let e = read_err(&archive(&p.done(), &[]));
        assert!(matches!(e, PtError::BadModel(_)), "{e}");

        // a yaml list that contains itself
        let mut p = Pk::new();
        p.module("Net", |p| {
            p.s("_modules").op(b"}").s("yaml").op(b"]q\x05h\x05a");
        });
        let e = read_err(&archive(&p.done(), &[]));
        assert!(e.to_string().contains("`yaml`"), "{e}");

        // a million nested tuples (dropping them must not recurse)
        let mut p = Pk::new();
        p.op(b")");
        p.0.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        let e = read_err(&archive(&p.done(), &[]));
        assert!(matches!(e, PtError::NoModel { .. }), "{e}");

        // a tiny storage expanded to a huge tensor
        let mut p = Pk::new();
        p.op(b"}(").s("w").tensor("FloatStorage", "0", 1, 0, &[1 << 30, 1 << 30], &[0, 0]).op(b"u");
        let e = read_err(&archive(&p.done(), &[("0", &[0u8; 4])]));
        assert!(matches!(e, PtError::BadTensor { .. }), "{e}");

        // a size that overflows
        let mut p = Pk::new();
        p.op(b"}(").s("w");
        p.tensor("FloatStorage", "0", 1, 0, &[i32::MAX, i32::MAX, i32::MAX, i32::MAX, 4], &[0, 0, 0, 0, 0]);
        let e = read_err(&archive(&p.op(b"u").done(), &[("0", &[0u8; 4])]));
        assert!(matches!(e, PtError::BadTensor { .. }), "{e}");
    }

    /// Shared (memoised) structures used many times hit the work limits instead of
    /// multiplying memory or time.
    #[test]
    fn amplification_limits() {
        // set(big_list) called again and again on the same memoised list
        let mut p = Pk::new();
        p.global("__builtin__", "set").op(b"q\x01](");
        p.0.extend(std::iter::repeat_n(b'N', 1000));
        p.op(b"eq\x020");
        for _ in 0..20_000 {
            p.op(b"h\x01h\x02\x85R0");
        }
        let e = read_err(&archive(&p.op(b"N").done(), &[]));
        assert!(matches!(e, PtError::Limit(_)), "{e}");

        // a module DAG: every level uses the level below twice (2^40 paths)
        let mut p = Pk::new();
        p.module("Leaf", |p| {
            p.s("_parameters").op(b"}(");
            for i in 0..1000 {
                p.s(&format!("p{i}")).op(b"N");
            }
            p.op(b"u");
        });
        p.op(b"q\x00");
        for level in 1..=40u8 {
            p.module("Node", |p| {
                p.s("_modules").op(b"}(").s("a").op(&[b'h', level - 1]);
                p.s("b").op(&[b'h', level - 1]).op(b"u");
            });
            p.op(&[b'q', level]);
        }
        let e = read_err(&archive(&p.done(), &[]));
        assert!(matches!(e, PtError::Limit(_)), "{e}");
    }

    struct MapBlobs(HashMap<String, Vec<u8>>);

    impl BlobSource for MapBlobs {
        fn blob(&mut self, key: &str, max_len: u64) -> Result<Vec<u8>, PtError> {
            let b = self.0.get(key).ok_or_else(|| PtError::MissingStorage(key.to_string()))?;
            Ok(b[..b.len().min(max_len as usize)].to_vec())
        }
    }

    /// Mutated and truncated copies of a real data.pkl give results or errors, never panics.
    #[test]
    fn mutated_pickles_never_panic() {
        let bytes = std::fs::read(tiny("tiny-gelan.pt")).expect("read fixture");
        let mut zip = ZipArchive::new(Cursor::new(&bytes[..])).expect("zip");
        let mut blobs = HashMap::new();
        let mut pickle = Vec::new();
        for i in 0..zip.len() {
            let mut f = zip.by_index(i).expect("entry");
            let name = f.name().expect("name").to_string();
            let mut data = Vec::new();
            f.read_to_end(&mut data).expect("read entry");
            if let Some(key) = name.split("/data/").nth(1) {
                blobs.insert(key.to_string(), data);
            } else if name.ends_with("/data.pkl") {
                pickle = data;
            }
        }
        let mut source = MapBlobs(blobs);
        let reference = load_checkpoint(&pickle, &mut source, false).expect("unmodified pickle loads");
        assert!(!reference.tensors.is_empty());

        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut ok, mut failed) = (0, 0);
        for round in 0..48 {
            let mut m = pickle.clone();
            if round % 4 == 0 {
                m.truncate(rnd() as usize % m.len());
            } else {
                for _ in 0..1 + rnd() % 3 {
                    let at = rnd() as usize % m.len();
                    m[at] = rnd() as u8;
                }
            }
            match load_checkpoint(&m, &mut source, false) {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
        }
        assert_eq!(ok + failed, 48);
    }
}
