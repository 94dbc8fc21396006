//! The public entry point: load a model by name or path, run it on RGB frames.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::{Checkpoint, Format, META_MODEL};
use crate::classes::default_names;
use crate::device_preprocess::DeviceLetterboxer;
use crate::error::{Error, Result};
use crate::model::{LayerInfo, LayerTiming, Model};
use crate::nn::conv::LoadCtx;
use crate::postprocess::{Detection, Nms, NmsOptions, scale_boxes};
use crate::preprocess::{Letterbox, LetterboxMode, Letterboxer, RgbFrame, letterbox_geometry};
use crate::spec::{ModelSpec, builtin_config_name};
use crate::weights::TensorStore;

/// Where to run: `auto` picks a GPU when one is compiled in and present, else the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            "metal" | "mps" => Ok(Self::Metal),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Self::Cuda).map_err(|_| Error::Options(format!("bad CUDA device '{s}'"))),
                None => {
                    Err(Error::Options(format!("unknown device '{s}' (expected auto, cpu, cuda, cuda:N or metal)")))
                }
            },
        }
    }
}

impl DeviceChoice {
    /// Opens the device. `Auto` falls back to the CPU when no GPU can be opened.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => {
                if candle_core::utils::cuda_is_available()
                    && let Ok(d) = Device::new_cuda(0)
                {
                    return Ok(d);
                }
                if candle_core::utils::metal_is_available()
                    && let Ok(d) = Device::new_metal(0)
                {
                    return Ok(d);
                }
                Ok(Device::Cpu)
            }
            Self::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Device(
                        "this build has no CUDA support (rebuild with `--features cuda`)".into(),
                    ));
                }
                Device::new_cuda(n).map_err(|e| Error::Device(format!("cannot open CUDA device {n}: {e}")))
            }
            Self::Metal => {
                if !candle_core::utils::metal_is_available() {
                    return Err(Error::Device(
                        "this build has no Metal support (rebuild with `--features metal`)".into(),
                    ));
                }
                Device::new_metal(0).map_err(|e| Error::Device(format!("cannot open Metal device: {e}")))
            }
        }
    }
}

/// Describes a Candle device in words (`cpu`, `cuda:0`, `metal`).
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".into(),
        },
        Device::Metal(_) => "metal".into(),
    }
}

/// The dtype `precision` runs in on `device`: f32 for `Auto`; f16 and bf16 on GPUs only.
pub fn dtype_for(precision: Precision, device: &Device) -> Result<DType> {
    match (precision, device) {
        (Precision::Auto | Precision::F32, _) => Ok(DType::F32),
        (p, Device::Cpu) => Err(Error::Options(format!("{p:?} precision needs a GPU; the CPU runs in f32"))),
        (Precision::F16, _) => Ok(DType::F16),
        (Precision::BF16, _) => Ok(DType::BF16),
    }
}

/// Floating-point precision of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 on the CPU, f32 on GPUs too.
    #[default]
    Auto,
    F32,
    F16,
    BF16,
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "half" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            other => Err(Error::Options(format!("unknown precision '{other}' (expected f32, f16 or bf16)"))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DetectorOptions {
    pub device: DeviceChoice,
    pub precision: Precision,
    /// Long side of the network input (a multiple of the largest stride, 32).
    pub imgsz: u32,
    /// `MinimalRect` like the official detect.py on images and video; `Square` pads to imgsz².
    pub letterbox: LetterboxMode,
    pub nms: NmsOptions,
    /// A config (`.yaml`) to build the model from, overriding what the file carries.
    pub config: Option<PathBuf>,
    /// Where variant names are looked up (see [`weights_dirs`]).
    pub weights_dir: Option<PathBuf>,
    /// BatchNorm epsilon of the checkpoint (the official models use 1e-3).
    pub bn_eps: f64,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Auto,
            precision: Precision::Auto,
            imgsz: 640,
            letterbox: LetterboxMode::MinimalRect,
            nms: NmsOptions::default(),
            config: None,
            weights_dir: None,
            bn_eps: 1e-3,
        }
    }
}

/// What is known about a loaded model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// Variant name (`gelan-c`, ...) or the file stem of a custom model.
    pub variant: String,
    pub path: PathBuf,
    pub format: &'static str,
    /// Storage precision of the file's weights (`float16`, `float32`, ...).
    pub file_dtype: String,
    pub nc: usize,
    pub names: Vec<String>,
    /// Parameters of the inference model (fused).
    pub params: usize,
    /// GFLOPs of one 640x640 forward pass (official `model_info` counting).
    pub gflops_640: f64,
    /// Whether the file carries the auxiliary PGI branch (dual/triple-head training form).
    pub has_pgi_branch: bool,
    pub strides: Vec<usize>,
    pub device: String,
    pub dtype: String,
    pub layers: Vec<LayerInfo>,
}

/// Time spent in each stage of one `detect` call.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StageTimes {
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub postprocess_ms: f64,
}

/// Detections on one frame, with boxes in the frame's pixels.
#[derive(Debug, Clone, Default)]
pub struct Detections {
    pub width: u32,
    pub height: u32,
    pub detections: Vec<Detection>,
    pub times: StageTimes,
}

/// The directories where variant names are looked up, in order: the explicit one,
/// `$SPOTTER_WEIGHTS_DIR`, `./weights`, then the user's data directory.
pub fn weights_dirs(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = explicit {
        dirs.push(d.to_path_buf());
    }
    if let Some(d) = std::env::var_os("SPOTTER_WEIGHTS_DIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("weights"));
    if let Some(d) = user_weights_dir() {
        dirs.push(d);
    }
    dirs
}

/// The user's weights directory: `$XDG_DATA_HOME/spotter/weights`, else
/// `~/.local/share/spotter/weights`.
pub fn user_weights_dir() -> Option<PathBuf> {
    let data = match std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".local").join("share"),
    };
    Some(data.join("spotter").join("weights"))
}

/// Finds the file for `source`: an existing path, or a variant name in the weights directories.
pub fn resolve_source(source: &str, weights_dir: Option<&Path>) -> Result<PathBuf> {
    let path = Path::new(source);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let looks_like_path = source.contains('/') || source.contains('\\') || path.extension().is_some();
    if builtin_config_name(source).is_none() || looks_like_path {
        if looks_like_path {
            return Err(Error::Io {
                path: path.to_path_buf(),
                error: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        return Err(Error::UnknownModel(source.to_string(), crate::spec::builtin_names().join(", ")));
    }
    let dirs = weights_dirs(weights_dir);
    for dir in &dirs {
        for ext in ["pt", "safetensors"] {
            let candidate = dir.join(format!("{source}.{ext}"));
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(Error::WeightsNotFound {
        name: source.to_string(),
        searched: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

/// Picks the model spec for a checkpoint: explicit config, then the one the file carries,
/// then a sibling `<stem>.yaml`, then a built-in spec named like the file.
fn choose_spec(ck: &Checkpoint, explicit: Option<&Path>) -> Result<(ModelSpec, String)> {
    let stem = ck.path.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string();
    let named = ck.metadata.get(META_MODEL).cloned().unwrap_or_else(|| stem.clone());
    let read_yaml = |p: &Path| -> Result<ModelSpec> {
        let text = std::fs::read_to_string(p).map_err(|error| Error::Io { path: p.to_path_buf(), error })?;
        ModelSpec::from_yaml(&text).map_err(|e| Error::Spec(format!("{}: {e}", p.display())))
    };
    if let Some(p) = explicit {
        return Ok((read_yaml(p)?, named));
    }
    if let Some(cfg) = &ck.config {
        let spec = ModelSpec::from_json(cfg)
            .map_err(|e| Error::Spec(format!("{}: embedded config: {e}", ck.path.display())))?;
        return Ok((spec, named));
    }
    let sibling = ck.path.with_extension("yaml");
    if sibling.is_file() {
        return Ok((read_yaml(&sibling)?, named));
    }
    for candidate in [&named, &stem] {
        if let Some(spec) = ModelSpec::builtin(candidate) {
            let nc = ck.metadata.get("nc").and_then(|n| n.parse().ok()).unwrap_or(spec.nc);
            return Ok((spec.with_nc(nc), candidate.clone()));
        }
    }
    Err(Error::NoConfig { path: ck.path.clone() })
}

fn validate(options: &DetectorOptions) -> Result<()> {
    if options.imgsz == 0 || !options.imgsz.is_multiple_of(32) {
        return Err(Error::Options(format!("image size {} is not a positive multiple of 32", options.imgsz)));
    }
    let unit = 0.0..=1.0;
    if !unit.contains(&options.nms.conf_threshold) || !unit.contains(&options.nms.iou_threshold) {
        return Err(Error::Options("confidence and IoU thresholds must lie between 0 and 1".into()));
    }
    Ok(())
}

/// Where the weights came from, for [`ModelInfo`].
struct Source {
    path: PathBuf,
    format: &'static str,
    file_dtype: String,
    names: Option<Vec<String>>,
}

/// A loaded detector: the model plus the options and buffers of its pre/post-processing.
pub struct Detector {
    model: Model,
    info: ModelInfo,
    device: Device,
    dtype: DType,
    pub options: DetectorOptions,
    /// Reused across frames: resize tables and buffers, NMS buffers, the input tensor data.
    letterboxer: Letterboxer,
    /// The same on the device, for GPUs (the frame goes up as bytes, once).
    device_letterboxer: DeviceLetterboxer,
    nms: Nms,
    input: Vec<f32>,
    profiling: bool,
    last_profile: Vec<LayerTiming>,
}

impl Detector {
    /// Loads `source`: a file path, or a variant name looked up in the weights directories.
    pub fn load(source: &str, options: DetectorOptions) -> Result<Self> {
        let path = resolve_source(source, options.weights_dir.as_deref())?;
        Self::from_path(&path, options)
    }

    pub fn from_path(path: &Path, options: DetectorOptions) -> Result<Self> {
        validate(&options)?;
        Self::from_checkpoint(Checkpoint::read(path)?, options)
    }

    pub fn from_checkpoint(ck: Checkpoint, options: DetectorOptions) -> Result<Self> {
        let (spec, variant) = choose_spec(&ck, options.config.as_deref())?;
        let source = Source {
            path: ck.path.clone(),
            format: match ck.format {
                Format::Pt => "pt",
                Format::Safetensors => "safetensors",
            },
            file_dtype: format!("{:?}", ck.dtype).to_lowercase(),
            names: ck.names.clone(),
        };
        Self::assemble(spec, variant, source, ck.into_store(), options)
    }

    /// A model of a built-in variant's architecture with deterministic random weights, for
    /// speed measurements when the real weights are not at hand (its detections mean nothing).
    pub fn synthetic(variant: &str, options: DetectorOptions) -> Result<Self> {
        let spec = ModelSpec::builtin(variant)
            .ok_or_else(|| Error::UnknownModel(variant.to_string(), crate::spec::builtin_names().join(", ")))?;
        let source = Source {
            path: PathBuf::from("<random weights>"),
            format: "random",
            file_dtype: "float32".into(),
            names: None,
        };
        Self::assemble(spec, variant.to_string(), source, TensorStore::synthetic(), options)
    }

    fn assemble(
        spec: ModelSpec,
        variant: String,
        source: Source,
        store: TensorStore,
        options: DetectorOptions,
    ) -> Result<Self> {
        validate(&options)?;
        let device = options.device.open()?;
        let dtype = dtype_for(options.precision, &device)?;
        let resolved = spec.resolve().map_err(|e| match e {
            Error::Spec(m) => Error::Spec(format!("{}: {m}", source.path.display())),
            other => other,
        })?;
        let nc = spec.nc;
        let names = match source.names {
            Some(n) if n.len() == nc => n,
            _ => default_names(nc),
        };
        let ctx = LoadCtx { activation: spec.activation, bn_eps: options.bn_eps, device: device.clone(), dtype };
        let model = Model::load(&resolved, &store, &ctx)?;
        store.check_all_used()?;
        drop(store);
        let layers = model.layer_table();
        let has_pgi_branch = layers.iter().any(|l| !l.inference)
            || matches!(resolved.last().map(|l| &l.module), Some(crate::spec::Module::Head { kind, .. }) if kind.branches() > 1);
        let gflops_640 = model.gflops(640, dtype)?;
        let info = ModelInfo {
            variant,
            path: source.path,
            format: source.format,
            file_dtype: source.file_dtype,
            nc,
            names,
            params: model.params(),
            gflops_640,
            has_pgi_branch,
            strides: model.strides(),
            device: device_name(&device),
            dtype: format!("{dtype:?}").to_lowercase(),
            layers,
        };
        tracing::info!(variant = %info.variant, params = info.params, device = %info.device, "model loaded");
        Ok(Self {
            model,
            info,
            device,
            dtype,
            options,
            letterboxer: Letterboxer::new(),
            device_letterboxer: DeviceLetterboxer::new(),
            nms: Nms::new(),
            input: Vec::new(),
            profiling: false,
            last_profile: Vec::new(),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The class name of `class_id` (or `class N` when out of range).
    pub fn class_name(&self, class_id: usize) -> String {
        self.info.names.get(class_id).cloned().unwrap_or_else(|| format!("class {class_id}"))
    }

    /// Per-layer timing of every following forward pass (synchronising the device after each
    /// layer, so keep it off when not looking).
    pub fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
        if !on {
            self.last_profile.clear();
        }
    }

    /// The per-layer times of the last forward pass while profiling was on.
    pub fn last_profile(&self) -> &[LayerTiming] {
        &self.last_profile
    }

    fn stride(&self) -> u32 {
        self.info.strides.iter().copied().max().unwrap_or(32).max(32) as u32
    }

    /// The letterbox geometry `detect` uses for a frame of this size.
    pub fn geometry(&self, width: u32, height: u32, mode: LetterboxMode) -> Result<Letterbox> {
        Ok(letterbox_geometry(width, height, self.options.imgsz, self.stride(), mode)?)
    }

    /// Runs the network on a prepared input (batch, 3, h, w) in 0..1, returning the official
    /// `pred` tensor (batch, 4 + nc, anchors) as f32.
    pub fn forward(&mut self, input: &Tensor) -> Result<Tensor> {
        let input = input.to_device(&self.device)?.to_dtype(self.dtype)?;
        let out = if self.profiling {
            let (out, timings) = self.model.forward_profiled(&input)?;
            self.last_profile = timings;
            out
        } else {
            self.model.forward(&input)?
        };
        Ok(out.pred.to_dtype(DType::F32)?)
    }

    /// Detects objects in one frame.
    pub fn detect(&mut self, frame: &RgbFrame) -> Result<Detections> {
        let mut out = self.detect_batch(std::slice::from_ref(frame))?;
        out.pop().ok_or_else(|| Error::Image("no result".into()))
    }

    /// The letterbox geometry of each frame of a batch: `MinimalRect` (or the configured mode)
    /// when all frames come out the same size, else the full square so they stack.
    pub fn batch_geometry(&self, frames: &[RgbFrame]) -> Result<Vec<Letterbox>> {
        let geos = frames
            .iter()
            .map(|f| self.geometry(f.width, f.height, self.options.letterbox))
            .collect::<Result<Vec<_>>>()?;
        if geos.iter().any(|g| (g.out_width, g.out_height) != (geos[0].out_width, geos[0].out_height)) {
            return frames.iter().map(|f| self.geometry(f.width, f.height, LetterboxMode::Square)).collect();
        }
        Ok(geos)
    }

    /// The network input of a batch, (batch, 3, h, w) f32 in 0..1, with each frame's geometry.
    /// On the CPU the frames are letterboxed on the host (bit-exact with cv2); on a GPU each
    /// frame is uploaded once as bytes and letterboxed there ([`DeviceLetterboxer`], same values).
    pub fn preprocess_batch(&mut self, frames: &[RgbFrame]) -> Result<(Tensor, Vec<Letterbox>)> {
        let geos = self.batch_geometry(frames)?;
        let Some(first) = geos.first() else {
            return Err(Error::Image("empty batch".into()));
        };
        let (w, h) = (first.out_width as usize, first.out_height as usize);
        if !self.device.is_cpu() {
            let planes = frames
                .iter()
                .zip(&geos)
                .map(|(f, g)| self.device_letterboxer.letterbox(f, g, &self.device))
                .collect::<Result<Vec<_>>>()?;
            return Ok((Tensor::stack(&planes, 0)?, geos));
        }
        let mut batch = Vec::with_capacity(frames.len() * 3 * h * w);
        for (f, g) in frames.iter().zip(&geos) {
            self.letterboxer.letterbox_into(f, g, &mut self.input)?;
            batch.extend_from_slice(&self.input);
        }
        Ok((Tensor::from_vec(batch, (frames.len(), 3, h, w), &Device::Cpu)?, geos))
    }

    /// Detects objects in several frames with one forward pass. Frames of different sizes are
    /// letterboxed to the full square so they stack.
    ///
    /// One device-to-host copy per batch: the `pred` tensor, after the forward pass.
    pub fn detect_batch(&mut self, frames: &[RgbFrame]) -> Result<Vec<Detections>> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let t0 = Instant::now();
        let (input, geos) = self.preprocess_batch(frames)?;
        let (h, w) = (input.dim(2)?, input.dim(3)?);
        let t1 = Instant::now();
        let pred = self.forward(&input)?;
        // The copy below waits for the GPU anyway; waiting here first costs nothing and makes
        // `inference_ms` the device time (on a GPU `preprocess_ms` is the host's share only).
        self.device.synchronize()?;
        let t2 = Instant::now();
        let (b, rows, n) = pred.dims3()?;
        let flat: Vec<f32> = pred.flatten_all()?.to_vec1()?;
        let nc = rows - 4;
        let mut results = Vec::with_capacity(b);
        for (i, (f, _)) in frames.iter().zip(&geos).enumerate() {
            let slice = &flat[i * rows * n..(i + 1) * rows * n];
            let mut dets = Vec::new();
            self.nms.run(slice, nc, n, &self.options.nms, &mut dets)?;
            scale_boxes(&mut dets, (h as u32, w as u32), (f.height, f.width));
            results.push(Detections {
                width: f.width,
                height: f.height,
                detections: dets,
                times: StageTimes::default(),
            });
        }
        let t3 = Instant::now();
        let per = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3 / frames.len() as f64;
        let times = StageTimes { preprocess_ms: per(t0, t1), inference_ms: per(t1, t2), postprocess_ms: per(t2, t3) };
        for r in &mut results {
            r.times = times;
        }
        Ok(results)
    }
}
