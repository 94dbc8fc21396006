//! Named tensors the model is built from, with the bookkeeping that turns a bad file into a
//! precise error: which tensor is missing, which has the wrong shape, which is left over.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// A tensor name and its shape.
pub type NamedShape = (String, Vec<usize>);

/// All tensors of a checkpoint, by official state-dict name, as f32 on the CPU.
pub struct TensorStore {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    /// Names in file order, for stable error messages.
    order: Vec<String>,
    used: RefCell<HashSet<String>>,
    /// Recording mode: hand out stand-in tensors of the asked shape and remember every request.
    recorded: Option<RefCell<Vec<NamedShape>>>,
    /// In recording mode, hand out deterministic random values instead of zeros.
    synthetic: bool,
}

impl TensorStore {
    pub fn new(path: &Path, tensors: Vec<(String, Tensor)>) -> Self {
        let order = tensors.iter().map(|(n, _)| n.clone()).collect();
        Self {
            path: path.to_path_buf(),
            tensors: tensors.into_iter().collect(),
            order,
            used: RefCell::default(),
            recorded: None,
            synthetic: false,
        }
    }

    /// A store that owns no tensors: every request yields zeros of the requested shape and is
    /// recorded, so building a spec against it lists the tensors (names and shapes) that spec
    /// expects in a checkpoint.
    pub fn recording() -> Self {
        Self {
            path: PathBuf::from("<spec>"),
            tensors: HashMap::new(),
            order: Vec::new(),
            used: RefCell::default(),
            recorded: Some(RefCell::default()),
            synthetic: false,
        }
    }

    /// Like [`Self::recording`], but with deterministic random weights (BatchNorm scales and
    /// variances of one): a model of the spec's architecture for speed measurements, when the
    /// real weights are not at hand. Its detections mean nothing.
    pub fn synthetic() -> Self {
        Self { path: PathBuf::from("<random weights>"), synthetic: true, ..Self::recording() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The requests a recording store saw, in order.
    pub fn recorded(&self) -> Vec<NamedShape> {
        self.recorded.as_ref().map(|r| r.borrow().clone()).unwrap_or_default()
    }

    /// Fails on the first tensor that no layer asked for.
    pub fn check_all_used(&self) -> Result<()> {
        let used = self.used.borrow();
        let unused: Vec<&String> = self.order.iter().filter(|n| !used.contains(*n)).collect();
        match unused.first() {
            None => Ok(()),
            Some(name) => {
                Err(Error::UnexpectedTensor { path: self.path.clone(), name: (*name).clone(), count: unused.len() })
            }
        }
    }

    pub fn root(&self) -> Weights<'_> {
        Weights { store: self, prefix: String::new(), layer: String::new() }
    }
}

/// A view of a [`TensorStore`] under a name prefix (like candle's `VarBuilder::pp`).
#[derive(Clone)]
pub struct Weights<'a> {
    store: &'a TensorStore,
    prefix: String,
    /// The top-level layer being built, for error messages.
    layer: String,
}

impl<'a> Weights<'a> {
    /// The view one level deeper: `pp("cv1")` turns `model.3.` into `model.3.cv1.`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        Self { store: self.store, prefix: format!("{}{name}.", self.prefix), layer: self.layer.clone() }
    }

    /// Like [`Self::pp`], and names the layer for error messages.
    pub fn layer(&self, index: usize, module: &str) -> Self {
        Self { store: self.store, prefix: format!("{}{index}.", self.prefix), layer: format!("{index} {module}") }
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Whether the file has this tensor (a recording store has none).
    pub fn contains(&self, name: &str) -> bool {
        self.store.tensors.contains_key(&self.full(name))
    }

    /// The tensor `name`, which must have `shape`; returned as f32 on the CPU.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = self.full(name);
        if let Some(rec) = &self.store.recorded {
            let t = if !self.store.synthetic {
                Tensor::zeros(shape, DType::F32, &Device::Cpu)?
            } else if full.ends_with("bn.weight") || full.ends_with("running_var") {
                Tensor::ones(shape, DType::F32, &Device::Cpu)?
            } else {
                Tensor::rand(-0.05f32, 0.05, shape, &Device::Cpu)?
            };
            rec.borrow_mut().push((full, shape.to_vec()));
            return Ok(t);
        }
        let t = self.store.tensors.get(&full).ok_or_else(|| Error::MissingTensor {
            path: self.store.path.clone(),
            name: full.clone(),
            layer: self.layer.clone(),
        })?;
        if t.dims() != shape {
            return Err(Error::ShapeMismatch {
                path: self.store.path.clone(),
                name: full,
                expected: shape.to_vec(),
                actual: t.dims().to_vec(),
            });
        }
        let t = t.to_dtype(DType::F32)?;
        self.store.used.borrow_mut().insert(full);
        Ok(t)
    }

    /// Marks a bookkeeping tensor as expected (BatchNorm's `num_batches_tracked`): it may be
    /// absent, and its value is not used.
    pub fn expect_optional(&self, name: &str, shape: &[usize]) {
        let full = self.full(name);
        if let Some(rec) = &self.store.recorded {
            rec.borrow_mut().push((full, shape.to_vec()));
        } else if self.store.tensors.contains_key(&full) {
            self.store.used.borrow_mut().insert(full);
        }
    }
}
