//! Model specs in the official YOLOv9 config schema (`models/detect/*.yaml`), and their
//! resolution into concrete layers the way the official `parse_model` does it.

use serde_json::Value;

use crate::error::{Error, Result};

/// One layer as written in a config: `[from, repeats, module, args]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// Relative (-1) or absolute layer indices.
    pub from: Vec<i64>,
    /// Whether `from` was written as a single index (not a list).
    pub from_single: bool,
    pub repeats: i64,
    pub module: String,
    pub args: Vec<Value>,
}

/// A whole config: `nc`, multiples, optional activation, backbone + head layers.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub nc: usize,
    pub depth_multiple: f64,
    pub width_multiple: f64,
    /// Anchors per level; only used by the official parser's output-channel check.
    pub anchors: usize,
    pub activation: Activation,
    pub layers: Vec<LayerSpec>,
}

/// The activation of every Conv and RepConvN (config key `activation`, default SiLU).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Silu,
    Relu,
    LeakyRelu(f64),
    Hardswish,
    Identity,
}

impl Activation {
    /// Parses the official spelling, e.g. `nn.SiLU()`, `nn.LeakyReLU(0.1)`.
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim().trim_start_matches("torch.").trim_start_matches("nn.");
        let (name, arg) = match t.split_once('(') {
            Some((name, rest)) => (name.trim(), rest.trim_end_matches(')').trim()),
            None => (t, ""),
        };
        match name {
            "SiLU" => Ok(Self::Silu),
            "ReLU" => Ok(Self::Relu),
            "Hardswish" => Ok(Self::Hardswish),
            "Identity" => Ok(Self::Identity),
            "LeakyReLU" => {
                let slope = if arg.is_empty() {
                    0.01
                } else {
                    arg.trim_start_matches("negative_slope=")
                        .parse::<f64>()
                        .map_err(|_| Error::Spec(format!("bad LeakyReLU slope in '{text}'")))?
                };
                Ok(Self::LeakyRelu(slope))
            }
            _ => Err(Error::Spec(format!("unsupported activation '{text}'"))),
        }
    }
}

/// The built-in configs: the official `models/detect/*.yaml`.
const BUILTIN: &[(&str, &str)] = &[
    ("gelan-t", include_str!("../specs/gelan-t.yaml")),
    ("gelan-s", include_str!("../specs/gelan-s.yaml")),
    ("gelan-m", include_str!("../specs/gelan-m.yaml")),
    ("gelan-c", include_str!("../specs/gelan-c.yaml")),
    ("gelan-e", include_str!("../specs/gelan-e.yaml")),
    ("yolov9-t", include_str!("../specs/yolov9-t.yaml")),
    ("yolov9-s", include_str!("../specs/yolov9-s.yaml")),
    ("yolov9-m", include_str!("../specs/yolov9-m.yaml")),
    ("yolov9-c", include_str!("../specs/yolov9-c.yaml")),
    ("yolov9-e", include_str!("../specs/yolov9-e.yaml")),
    ("gelan", include_str!("../specs/gelan.yaml")),
    ("yolov9", include_str!("../specs/yolov9.yaml")),
    ("yolov9-cf", include_str!("../specs/yolov9-cf.yaml")),
    ("yolov7-af", include_str!("../specs/yolov7-af.yaml")),
];

/// Names of the built-in configs, including the `-converted` aliases.
pub fn builtin_names() -> Vec<String> {
    let mut names: Vec<String> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
    for size in ["t", "s", "m", "c", "e"] {
        names.push(format!("yolov9-{size}-converted"));
    }
    names
}

/// The config a variant name stands for. `yolov9-X-converted` weights (made by the official
/// `tools/reparameterization.ipynb`) have the architecture of `gelan-X`.
pub fn builtin_config_name(variant: &str) -> Option<&'static str> {
    let lookup = match variant.strip_suffix("-converted") {
        Some(base) => base.replacen("yolov9", "gelan", 1),
        None => variant.to_string(),
    };
    BUILTIN.iter().find(|(n, _)| *n == lookup).map(|(n, _)| *n)
}

impl ModelSpec {
    /// A built-in config by variant name (`gelan-c`, `yolov9-e`, `yolov9-c-converted`, ...).
    pub fn builtin(variant: &str) -> Option<Self> {
        let name = builtin_config_name(variant)?;
        let text = BUILTIN.iter().find(|(n, _)| *n == name)?.1;
        // The built-in texts are tested to parse; a failure here would be a build defect.
        Self::from_yaml(text).ok()
    }

    /// Parses config YAML text (the official syntax).
    pub fn from_yaml(text: &str) -> Result<Self> {
        let docs =
            yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| Error::Spec(format!("invalid YAML: {e}")))?;
        let doc = docs.into_iter().next().ok_or_else(|| Error::Spec("empty YAML".into()))?;
        Self::from_json(&yaml_to_json(&doc))
    }

    /// Builds a spec from the parsed config dict (as carried by official checkpoints).
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v.as_object().ok_or_else(|| Error::Spec("config is not a mapping".into()))?;
        let nc = obj
            .get("nc")
            .and_then(Value::as_u64)
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::Spec("missing or invalid 'nc'".into()))? as usize;
        let multiple = |key: &str| -> Result<f64> {
            match obj.get(key) {
                None => Ok(1.0),
                Some(v) => v
                    .as_f64()
                    .filter(|m| *m > 0.0 && m.is_finite())
                    .ok_or_else(|| Error::Spec(format!("invalid '{key}'"))),
            }
        };
        let anchors = match obj.get("anchors") {
            Some(Value::Array(levels)) => levels.first().and_then(Value::as_array).map(|a| a.len() / 2).unwrap_or(1),
            Some(v) => v.as_u64().unwrap_or(1) as usize,
            None => 1,
        };
        let activation = match obj.get("activation") {
            Some(Value::String(s)) => Activation::parse(s)?,
            Some(Value::Null) | None => Activation::Silu,
            Some(other) => return Err(Error::Spec(format!("invalid activation {other}"))),
        };
        let mut layers = Vec::new();
        for part in ["backbone", "head"] {
            let list = obj
                .get(part)
                .and_then(Value::as_array)
                .ok_or_else(|| Error::Spec(format!("missing '{part}' layer list")))?;
            for entry in list {
                layers.push(parse_layer(entry, layers.len())?);
            }
        }
        if layers.is_empty() {
            return Err(Error::Spec("no layers".into()));
        }
        Ok(Self {
            nc,
            depth_multiple: multiple("depth_multiple")?,
            width_multiple: multiple("width_multiple")?,
            anchors,
            activation,
            layers,
        })
    }

    /// The same spec with another class count (the official `DetectionModel(cfg, nc=...)`).
    pub fn with_nc(mut self, nc: usize) -> Self {
        self.nc = nc;
        self
    }
}

fn parse_layer(entry: &Value, index: usize) -> Result<LayerSpec> {
    let bad = |what: &str| Error::Spec(format!("layer {index}: {what}"));
    let items =
        entry.as_array().filter(|a| a.len() == 4).ok_or_else(|| bad("expected [from, repeats, module, args]"))?;
    let (from, from_single) = match &items[0] {
        Value::Array(list) => (
            list.iter()
                .map(|f| f.as_i64().ok_or_else(|| bad("'from' must hold integers")))
                .collect::<Result<Vec<_>>>()?,
            false,
        ),
        v => (vec![v.as_i64().ok_or_else(|| bad("'from' must be an integer or a list"))?], true),
    };
    if from.is_empty() {
        return Err(bad("empty 'from'"));
    }
    let repeats = items[1].as_i64().filter(|&n| n >= 1).ok_or_else(|| bad("repeats must be a positive integer"))?;
    let module = items[2].as_str().ok_or_else(|| bad("module must be a name"))?.to_string();
    let args = match &items[3] {
        Value::Array(a) => a.clone(),
        Value::Null => Vec::new(),
        _ => return Err(bad("args must be a list")),
    };
    Ok(LayerSpec { from, from_single, repeats, module, args })
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(s) => {
            s.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
        }
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        _ => Value::Null,
    }
}

// ---------------------------------------------------------------------------------------------
// Resolution (official `parse_model`)

/// Detection head flavours. Only the inference branch is ever built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// yolov7-af style: no groups in the box branch, no `make_divisible`.
    Detect,
    DDetect,
    /// yolov9 training form: auxiliary `cv2/cv3/dfl` + main `cv4/cv5/dfl2`.
    DualDDetect,
    /// yolov9-cf: `cv2..cv7`, inference on `cv6/cv7/dfl3`.
    TripleDDetect,
}

impl HeadKind {
    /// How many sets of levels the head takes (1, 2 or 3).
    pub fn branches(self) -> usize {
        match self {
            Self::Detect | Self::DDetect => 1,
            Self::DualDDetect => 2,
            Self::TripleDDetect => 3,
        }
    }
}

/// A module with its constructor arguments resolved (input channels inserted, widths scaled).
#[derive(Debug, Clone, PartialEq)]
pub enum Module {
    Conv { c1: usize, c2: usize, k: usize, s: usize, p: usize, g: usize, d: usize, act: bool },
    AConv { c1: usize, c2: usize },
    ADown { c1: usize, c2: usize },
    Elan1 { c1: usize, c2: usize, c3: usize, c4: usize },
    RepNCSPELAN4 { c1: usize, c2: usize, c3: usize, c4: usize, c5: usize },
    SppElan { c1: usize, c2: usize, c3: usize },
    SppCspc { c1: usize, c2: usize, e: f64, k: Vec<usize> },
    MaxPool { k: usize },
    Concat,
    Upsample { scale: usize },
    CbLinear { c1: usize, c2s: Vec<usize>, k: usize, s: usize, p: usize, g: usize },
    CbFuse { idx: Vec<usize> },
    Silence,
    Head { kind: HeadKind, nc: usize, ch: Vec<usize>, strides: Vec<usize> },
}

impl Module {
    /// The official module name, as in the configs (`nn.Upsample` shortened to `Upsample`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Conv { .. } => "Conv",
            Self::AConv { .. } => "AConv",
            Self::ADown { .. } => "ADown",
            Self::Elan1 { .. } => "ELAN1",
            Self::RepNCSPELAN4 { .. } => "RepNCSPELAN4",
            Self::SppElan { .. } => "SPPELAN",
            Self::SppCspc { .. } => "SPPCSPC",
            Self::MaxPool { .. } => "MP",
            Self::Concat => "Concat",
            Self::Upsample { .. } => "Upsample",
            Self::CbLinear { .. } => "CBLinear",
            Self::CbFuse { .. } => "CBFuse",
            Self::Silence => "Silence",
            Self::Head { kind: HeadKind::Detect, .. } => "Detect",
            Self::Head { kind: HeadKind::DDetect, .. } => "DDetect",
            Self::Head { kind: HeadKind::DualDDetect, .. } => "DualDDetect",
            Self::Head { kind: HeadKind::TripleDDetect, .. } => "TripleDDetect",
        }
    }
}

/// A layer after resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedLayer {
    pub index: usize,
    /// Absolute indices of the inputs; `usize::MAX` stands for the image (first layer's -1).
    pub from: Vec<usize>,
    pub repeats: usize,
    pub module: Module,
    /// Output channels (CBLinear: the sum of its splits).
    pub out_channels: usize,
    /// Total downsampling factor of the output relative to the image.
    pub stride: usize,
}

/// Marks the network input in [`ResolvedLayer::from`].
pub const IMAGE: usize = usize::MAX;

fn make_divisible(x: f64, divisor: usize) -> usize {
    ((x / divisor as f64).ceil() as usize) * divisor
}

impl ModelSpec {
    /// Resolves every layer the way the official `parse_model` does (channels, width and
    /// depth multiples, head inputs) and tracks each layer's stride.
    pub fn resolve(&self) -> Result<Vec<ResolvedLayer>> {
        let mut out: Vec<ResolvedLayer> = Vec::with_capacity(self.layers.len());
        let no = self.anchors * (self.nc + 5);
        for (i, layer) in self.layers.iter().enumerate() {
            let err = |reason: String| Error::Layer { index: i, module: layer.module.clone(), reason };
            // Absolute input indices.
            let mut from = Vec::with_capacity(layer.from.len());
            for &f in &layer.from {
                let abs = if f < 0 { i as i64 + f } else { f };
                if abs < 0 && i == 0 && f == -1 {
                    from.push(IMAGE);
                } else if abs < 0 || abs as usize >= i {
                    return Err(err(format!("'from' {f} does not name an earlier layer")));
                } else {
                    from.push(abs as usize);
                }
            }
            let ch = |idx: usize| if idx == IMAGE { 3 } else { out[idx].out_channels };
            let stride_of = |idx: usize| if idx == IMAGE { 1 } else { out[idx].stride };
            let c_in = ch(from[0]);
            let s_in = stride_of(from[0]);
            let args = eval_args(&layer.args, self.nc, self.anchors);
            let int = |j: usize, default: Option<usize>| -> Result<usize> {
                match args.get(j) {
                    Some(Value::Number(n)) => n
                        .as_u64()
                        .map(|v| v as usize)
                        .ok_or_else(|| err(format!("argument {j} must be a non-negative integer"))),
                    Some(Value::Null) | None => default.ok_or_else(|| err(format!("missing argument {j}"))),
                    Some(other) => Err(err(format!("argument {j} must be an integer, got {other}"))),
                }
            };
            let width = |c2: usize| if c2 != no { make_divisible(c2 as f64 * self.width_multiple, 8) } else { c2 };
            let mut repeats = if layer.repeats > 1 {
                ((layer.repeats as f64 * self.depth_multiple).round_ties_even() as usize).max(1)
            } else {
                1
            };
            let single = |what: &str| -> Result<()> {
                if from.len() != 1 { Err(err(format!("{what} takes one input"))) } else { Ok(()) }
            };
            let name = layer.module.trim_start_matches("models.common.").trim_start_matches("models.yolo.");
            let (module, c2, stride) = match name {
                "Conv" => {
                    single("Conv")?;
                    let c2 = width(int(0, None)?);
                    let k = int(1, Some(1))?;
                    let s = int(2, Some(1))?;
                    let d = int(5, Some(1))?;
                    let k_eff = if d > 1 { d * (k - 1) + 1 } else { k };
                    let p = int(3, Some(k_eff / 2))?;
                    let g = int(4, Some(1))?;
                    let act = !matches!(args.get(6), Some(Value::Bool(false)));
                    if k == 0 || s == 0 || g == 0 || c_in % g != 0 || c2 % g != 0 {
                        return Err(err("invalid kernel, stride or groups".into()));
                    }
                    (Module::Conv { c1: c_in, c2, k, s, p, g, d, act }, c2, s_in * s)
                }
                "AConv" | "ADown" => {
                    single(name)?;
                    let c2 = width(int(0, None)?);
                    let m =
                        if name == "AConv" { Module::AConv { c1: c_in, c2 } } else { Module::ADown { c1: c_in, c2 } };
                    (m, c2, s_in * 2)
                }
                "ELAN1" => {
                    single(name)?;
                    let c2 = width(int(0, None)?);
                    (Module::Elan1 { c1: c_in, c2, c3: int(1, None)?, c4: int(2, None)? }, c2, s_in)
                }
                "RepNCSPELAN4" => {
                    single(name)?;
                    let c2 = width(int(0, None)?);
                    let m = Module::RepNCSPELAN4 {
                        c1: c_in,
                        c2,
                        c3: int(1, None)?,
                        c4: int(2, None)?,
                        c5: int(3, Some(1))?,
                    };
                    (m, c2, s_in)
                }
                "SPPELAN" => {
                    single(name)?;
                    let c2 = width(int(0, None)?);
                    (Module::SppElan { c1: c_in, c2, c3: int(1, None)? }, c2, s_in)
                }
                "SPPCSPC" => {
                    single(name)?;
                    let c2 = width(int(0, None)?);
                    // args after insertion of n: [c1, c2, n, shortcut, g, e, k]; n is not used.
                    let e = args.get(4).and_then(Value::as_f64).unwrap_or(0.5);
                    let k = match args.get(5) {
                        Some(Value::Array(ks)) => ks.iter().filter_map(Value::as_u64).map(|k| k as usize).collect(),
                        _ => vec![5, 9, 13],
                    };
                    repeats = 1;
                    (Module::SppCspc { c1: c_in, c2, e, k }, c2, s_in)
                }
                "MP" => {
                    single(name)?;
                    let k = int(0, Some(2))?;
                    (Module::MaxPool { k }, c_in, s_in * k)
                }
                "Concat" => {
                    let dim = int(0, Some(1))?;
                    if dim != 1 {
                        return Err(err("only channel concatenation (dimension 1) is supported".into()));
                    }
                    let c2 = from.iter().map(|&f| ch(f)).sum();
                    if from.iter().any(|&f| stride_of(f) != s_in) {
                        return Err(err("inputs have different strides".into()));
                    }
                    (Module::Concat, c2, s_in)
                }
                "nn.Upsample" | "Upsample" => {
                    single(name)?;
                    if !matches!(args.first(), Some(Value::Null) | None) {
                        return Err(err("only scale_factor upsampling is supported (size must be None)".into()));
                    }
                    let scale = args.get(1).and_then(Value::as_f64).unwrap_or(0.0);
                    if scale < 1.0 || scale.fract() != 0.0 || s_in % (scale as usize) != 0 {
                        return Err(err(format!("unsupported scale factor {scale}")));
                    }
                    if let Some(mode) = args.get(2).and_then(Value::as_str)
                        && mode != "nearest"
                    {
                        return Err(err(format!("unsupported upsampling mode '{mode}'")));
                    }
                    (Module::Upsample { scale: scale as usize }, c_in, s_in / scale as usize)
                }
                "CBLinear" => {
                    single(name)?;
                    let c2s: Vec<usize> = match args.first() {
                        Some(Value::Array(list)) => list.iter().filter_map(Value::as_u64).map(|c| c as usize).collect(),
                        _ => return Err(err("first argument must be the list of output widths".into())),
                    };
                    if c2s.is_empty() || c2s.contains(&0) {
                        return Err(err("invalid output widths".into()));
                    }
                    let k = int(1, Some(1))?;
                    let s = int(2, Some(1))?;
                    let p = int(3, Some(k / 2))?;
                    let g = int(4, Some(1))?;
                    let total = c2s.iter().sum();
                    (Module::CbLinear { c1: c_in, c2s, k, s, p, g }, total, s_in * s)
                }
                "CBFuse" => {
                    let idx: Vec<usize> = match args.first() {
                        Some(Value::Array(list)) => list.iter().filter_map(Value::as_u64).map(|c| c as usize).collect(),
                        _ => return Err(err("argument must be the list of split indices".into())),
                    };
                    if idx.len() + 1 != from.len() {
                        return Err(err("needs one split index per input but the last".into()));
                    }
                    for (j, &f) in from[..from.len() - 1].iter().enumerate() {
                        match out.get(f).map(|l| &l.module) {
                            Some(Module::CbLinear { c2s, .. }) if idx[j] < c2s.len() => {}
                            _ => return Err(err(format!("input {f} is not a CBLinear with split {}", idx[j]))),
                        }
                    }
                    let last = from[from.len() - 1];
                    (Module::CbFuse { idx }, ch(last), stride_of(last))
                }
                "Silence" => (Module::Silence, c_in, s_in),
                "Detect" | "DDetect" | "DualDDetect" | "TripleDDetect" => {
                    let kind = match name {
                        "Detect" => HeadKind::Detect,
                        "DDetect" => HeadKind::DDetect,
                        "DualDDetect" => HeadKind::DualDDetect,
                        _ => HeadKind::TripleDDetect,
                    };
                    let nc = int(0, Some(self.nc))?;
                    if nc == 0 {
                        return Err(err("nc must be positive".into()));
                    }
                    if from.len() % kind.branches() != 0 || from.contains(&IMAGE) {
                        return Err(err(format!(
                            "{} inputs do not split into {} branches",
                            from.len(),
                            kind.branches()
                        )));
                    }
                    let ch: Vec<usize> = from.iter().map(|&f| ch(f)).collect();
                    let strides: Vec<usize> = from.iter().map(|&f| stride_of(f)).collect();
                    if i + 1 != self.layers.len() {
                        return Err(err("the detection head must be the last layer".into()));
                    }
                    (Module::Head { kind, nc, ch, strides }, 0, 0)
                }
                other => return Err(err(format!("unknown module '{other}'"))),
            };
            if repeats > 1 && c_in != c2 {
                return Err(err(format!("{repeats} repeats need equal input and output channels")));
            }
            if c2 == 0 && !matches!(module, Module::Head { .. }) {
                return Err(err("zero output channels".into()));
            }
            out.push(ResolvedLayer { index: i, from, repeats, module, out_channels: c2, stride });
        }
        match out.last().map(|l| &l.module) {
            Some(Module::Head { .. }) => Ok(out),
            _ => Err(Error::Spec("the last layer is not a detection head".into())),
        }
    }
}

/// The official parser `eval`s string arguments: `nc`, `anchors`, `None`, `True`, `False`.
fn eval_args(args: &[Value], nc: usize, anchors: usize) -> Vec<Value> {
    args.iter()
        .map(|a| match a.as_str() {
            Some("nc") => Value::from(nc),
            Some("anchors") => Value::from(anchors),
            Some("None") => Value::Null,
            Some("True") => Value::Bool(true),
            Some("False") => Value::Bool(false),
            _ => a.clone(),
        })
        .collect()
}

/// The layers the inference output depends on (the official `detect*.py` path). Layers only
/// the auxiliary (PGI) branch needs are left out.
pub fn inference_layers(layers: &[ResolvedLayer]) -> Vec<bool> {
    let mut needed = vec![false; layers.len()];
    let Some(head) = layers.last() else { return needed };
    needed[head.index] = true;
    let mut stack: Vec<usize> = match &head.module {
        Module::Head { kind, .. } => {
            let nl = head.from.len() / kind.branches();
            head.from[head.from.len() - nl..].to_vec()
        }
        _ => head.from.clone(),
    };
    while let Some(i) = stack.pop() {
        if i == IMAGE || needed[i] {
            continue;
        }
        needed[i] = true;
        stack.extend(layers[i].from.iter().copied());
    }
    needed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_spec_parses_and_resolves() {
        for name in builtin_names() {
            let spec = ModelSpec::builtin(&name).unwrap_or_else(|| panic!("{name} does not parse"));
            let layers = spec.resolve().unwrap_or_else(|e| panic!("{name}: {e}"));
            let Module::Head { strides, .. } = &layers.last().unwrap().module else { panic!() };
            assert!(strides.len() >= 3);
            assert!(strides.iter().all(|s| [8, 16, 32].contains(s)), "{name}: {strides:?}");
        }
    }

    #[test]
    fn converted_names_map_to_gelan() {
        assert_eq!(builtin_config_name("yolov9-c-converted"), Some("gelan-c"));
        assert_eq!(builtin_config_name("yolov9-e"), Some("yolov9-e"));
        assert_eq!(builtin_config_name("yolov9-x"), None);
    }

    #[test]
    fn activation_spellings() {
        assert_eq!(Activation::parse("nn.ReLU()").unwrap(), Activation::Relu);
        assert_eq!(Activation::parse("nn.LeakyReLU(0.1)").unwrap(), Activation::LeakyRelu(0.1));
        assert!(Activation::parse("nn.GELU()").is_err());
    }

    #[test]
    fn bad_configs_are_errors() {
        let unknown =
            "nc: 2\nbackbone: [[-1, 1, Conv, [8, 3, 2]], [-1, 1, Frobnicate, [8]]]\nhead: [[[1], 1, DDetect, [nc]]]\n";
        let e = ModelSpec::from_yaml(unknown).unwrap().resolve().unwrap_err().to_string();
        assert!(e.contains("layer 1") && e.contains("Frobnicate"), "{e}");
        let forward_ref = "nc: 2\nbackbone: [[1, 1, Conv, [8, 3, 2]]]\nhead: [[[0], 1, DDetect, [nc]]]\n";
        assert!(ModelSpec::from_yaml(forward_ref).unwrap().resolve().is_err());
        assert!(ModelSpec::from_yaml("nc: 2\n").is_err());
        assert!(ModelSpec::from_yaml("[1, 2").is_err());
        let no_head = "nc: 2\nbackbone: [[-1, 1, Conv, [8, 3, 2]]]\nhead: []\n";
        assert!(ModelSpec::from_yaml(no_head).unwrap().resolve().is_err());
    }

    #[test]
    fn width_rounding_follows_make_divisible() {
        // gelan-m asks AConv [180]: the official parser rounds it up to 184.
        let layers = ModelSpec::builtin("gelan-m").unwrap().resolve().unwrap();
        assert!(layers.iter().any(|l| matches!(l.module, Module::AConv { c2: 184, .. })));
    }
}
