//! `spotter weights list | fetch NAME... | convert IN OUT | info PATH`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use spotter_detector::checkpoint::Checkpoint;
use spotter_detector::detector::{resolve_source, weights_dirs};
use spotter_detector::{Detector, DetectorOptions, DeviceChoice};

use crate::weights::progress::TerminalProgress;
use crate::weights::{self, Registry, Variant, download, human_bytes};

#[derive(Debug, clap::Args)]
#[command(after_help = ENV_HELP)]
pub struct WeightsArgs {
    #[command(subcommand)]
    command: WeightsCommand,
    /// A registry file that adds or replaces variants (also $SPOTTER_WEIGHTS_REGISTRY).
    #[arg(long, global = true, value_name = "FILE")]
    registry: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum WeightsCommand {
    /// The official variants, and where each is present locally.
    List {
        /// Weights directory to look in first (also $SPOTTER_WEIGHTS_DIR).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// One JSON object per variant.
        #[arg(long)]
        json: bool,
    },
    /// Download variants into the weights directory (resuming an interrupted download).
    Fetch {
        /// Variant names (see `spotter weights list`).
        #[arg(required = true)]
        names: Vec<String>,
        /// Download into this directory (default: $SPOTTER_WEIGHTS_DIR, ./weights in a
        /// checkout, else the user's data directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Fetch `URL/<file name>` instead of the release URL (also $SPOTTER_WEIGHTS_MIRROR).
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
        /// Download even when the file is already present.
        #[arg(long)]
        force: bool,
    },
    /// Convert a checkpoint (.pt or .safetensors) to safetensors carrying its config and class names.
    Convert {
        input: PathBuf,
        output: PathBuf,
        /// Store the weights as float16 (half the size; the official weights are float16 already).
        #[arg(long)]
        half: bool,
    },
    /// Describe a weights file or a downloaded variant: classes, size, layers, PGI branch.
    Info {
        /// A file, or a variant name present in the weights directories.
        path: String,
        /// Weights directory to look in first (also $SPOTTER_WEIGHTS_DIR).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: WeightsArgs) -> Result<()> {
    let registry = Registry::load(args.registry.as_deref())?;
    match args.command {
        WeightsCommand::List { dir, json } => list(&registry, dir.as_deref(), json),
        WeightsCommand::Fetch { names, dir, mirror, force } => {
            fetch(&registry, &names, dir.as_deref(), mirror.as_deref(), force)
        }
        WeightsCommand::Convert { input, output, half } => convert(&input, &output, half),
        WeightsCommand::Info { path, dir, json } => info(&registry, &path, dir.as_deref(), json),
    }
}

fn cpu_options() -> DetectorOptions {
    DetectorOptions { device: DeviceChoice::Cpu, ..Default::default() }
}

fn opt_num(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format!("{v:.decimals$}")).unwrap_or_else(|| "-".into())
}

#[derive(serde::Serialize)]
struct ListRow<'a> {
    name: &'a str,
    file: &'a str,
    kind: &'static str,
    url: &'a str,
    architecture: Option<&'a str>,
    params: Option<u64>,
    gflops: Option<f64>,
    coco_ap: Option<f64>,
    size: Option<u64>,
    sha256: Option<&'a str>,
    note: Option<&'a str>,
    local: Option<String>,
}

fn list(registry: &Registry, dir: Option<&Path>, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let dirs = weights_dirs(dir);
    let target = weights::download_dir(dir);
    if !json {
        writeln!(
            out,
            "{:<20} {:<10} {:>8} {:>7} {:>8} {:>9}  local",
            "name", "kind", "params", "GFLOPs", "COCO AP", "size"
        )?;
    }
    for v in &registry.variants {
        let local = weights::find_local(v, &dirs);
        let size = local.as_ref().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len()).or(v.size);
        if json {
            let row = ListRow {
                name: &v.name,
                file: &v.file,
                kind: v.kind.label(),
                url: &v.url,
                architecture: v.architecture.as_deref(),
                params: v.params,
                gflops: v.gflops,
                coco_ap: v.coco.as_ref().map(|c| c.ap),
                size,
                sha256: v.sha256.as_deref(),
                note: v.note.as_deref(),
                local: local.as_ref().map(|p| p.display().to_string()),
            };
            writeln!(out, "{}", serde_json::to_string(&row)?)?;
            continue;
        }
        writeln!(
            out,
            "{:<20} {:<10} {:>8} {:>7} {:>8} {:>9}  {}",
            v.name,
            v.kind.label(),
            v.params_m().map(|p| format!("{p:.1}M")).unwrap_or_else(|| "-".into()),
            opt_num(v.gflops_640(), 1),
            opt_num(v.coco.as_ref().map(|c| c.ap), 1),
            size.map(human_bytes).unwrap_or_else(|| "-".into()),
            local.map(|p| p.display().to_string()).unwrap_or_else(|| "not downloaded".into()),
        )?;
    }
    if !json {
        match target {
            Ok(t) => writeln!(out, "downloads go to {} (`spotter weights fetch NAME`)", t.display())?,
            Err(e) => writeln!(out, "{e}")?,
        }
        if let Some(extra) = &registry.extra {
            writeln!(out, "registry: official + {}", extra.display())?;
        }
    }
    Ok(())
}

fn fetch(registry: &Registry, names: &[String], dir: Option<&Path>, mirror: Option<&str>, force: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    // Every name is checked before anything is downloaded.
    let variants: Vec<&Variant> = names.iter().map(|n| registry.require(n)).collect::<Result<_, _>>()?;
    let target = weights::download_dir(dir)?;
    let mirror = weights::mirror(mirror);
    // With --dir, only that directory counts as "present".
    let search = if dir.is_some() { vec![target.clone()] } else { weights_dirs(None) };
    for v in variants {
        if !force && let Some(found) = weights::find_local(v, &search) {
            writeln!(out, "{}: already present at {}", v.name, found.display())?;
            continue;
        }
        let req = weights::request(v, &target, mirror.as_deref());
        let bar = TerminalProgress::new(&v.file);
        let fetched = download::download(&req, &|p| bar.update(p), &AtomicBool::new(false))
            .map_err(|e| weights::with_hint(e, v, &target))?;
        drop(bar);
        writeln!(
            out,
            "{}: {} ({}, sha256 {})",
            v.name,
            fetched.path.display(),
            human_bytes(fetched.bytes),
            fetched.sha256
        )?;
    }
    Ok(())
}

fn convert(input: &Path, output: &Path, half: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if !input.is_file() {
        bail!("{}: no such file", input.display());
    }
    if output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!("{}: the output must be a .safetensors file", output.display());
    }
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        bail!("cannot write {}: {} is not a folder", output.display(), parent.display());
    }
    if output.exists() && std::fs::canonicalize(input).ok() == std::fs::canonicalize(output).ok() {
        bail!("{}: input and output are the same file", output.display());
    }
    // It must load as a model before it is converted (and the name it loads under travels along).
    let variant = Detector::from_path(input, cpu_options())?.info().variant.clone();
    let ck = Checkpoint::read(input)?;
    let tensors = ck.tensors.len();
    ck.write_safetensors(output, half, Some(&variant))?;
    drop(ck);
    // And so must the result.
    let converted = match Detector::from_path(output, cpu_options()) {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(output);
            return Err(
                anyhow::Error::from(e).context(format!("{}: the converted file does not load", output.display()))
            );
        }
    };
    let size = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    writeln!(
        out,
        "{}: {variant}, {tensors} tensors, {}, {}",
        output.display(),
        converted.info().file_dtype,
        human_bytes(size)
    )?;
    Ok(())
}

#[derive(serde::Serialize)]
struct InfoJson<'a> {
    path: String,
    format: &'a str,
    size: u64,
    sha256: String,
    variant: &'a str,
    registry: Option<&'a str>,
    kind: Option<&'static str>,
    classes: usize,
    names: &'a [String],
    params: usize,
    gflops: f64,
    dtype: &'a str,
    layers: usize,
    inference_layers: usize,
    pgi_branch: bool,
    strides: &'a [usize],
}

fn info(registry: &Registry, source: &str, dir: Option<&Path>, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let path = if Path::new(source).exists() {
        PathBuf::from(source)
    } else if let Some(v) = registry.get(source) {
        match weights::find_local(v, &weights_dirs(dir)) {
            Some(p) => p,
            None => bail!("{source} is not downloaded; get it with `spotter weights fetch {source}`"),
        }
    } else {
        resolve_source(source, dir)?
    };
    let detector = Detector::from_path(&path, cpu_options())?;
    let info = detector.info();
    let size = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?.len();
    let sha256 = download::sha256_file(&path)?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let entry = registry.get(&info.variant).or_else(|| registry.find(&file_name));
    let inference_layers = info.layers.iter().filter(|l| l.inference).count();
    if json {
        let record = InfoJson {
            path: path.display().to_string(),
            format: info.format,
            size,
            sha256,
            variant: &info.variant,
            registry: entry.map(|v| v.name.as_str()),
            kind: entry.map(|v| v.kind.label()),
            classes: info.nc,
            names: &info.names,
            params: info.params,
            gflops: (info.gflops_640 * 10.0).round() / 10.0,
            dtype: &info.file_dtype,
            layers: info.layers.len(),
            inference_layers,
            pgi_branch: info.has_pgi_branch,
            strides: &info.strides,
        };
        writeln!(out, "{}", serde_json::to_string(&record)?)?;
        return Ok(());
    }
    let shown: Vec<&str> = info.names.iter().take(8).map(String::as_str).collect();
    let more = if info.nc > shown.len() { format!(", ... ({} more)", info.nc - shown.len()) } else { String::new() };
    writeln!(out, "file:       {} ({}, {})", path.display(), info.format, human_bytes(size))?;
    writeln!(out, "sha256:     {sha256}")?;
    match entry {
        Some(v) => writeln!(out, "variant:    {} ({}, {})", info.variant, v.kind.label(), v.url)?,
        None => writeln!(out, "variant:    {} (not in the registry)", info.variant)?,
    }
    writeln!(out, "classes:    {} ({}{more})", info.nc, shown.join(", "))?;
    writeln!(out, "params:     {} (fused, inference branch)", group_digits(info.params))?;
    writeln!(out, "GFLOPs:     {:.1} at 640x640", info.gflops_640)?;
    writeln!(out, "dtype:      {} in the file; runs in float32 on the CPU", info.file_dtype)?;
    writeln!(out, "layers:     {} ({inference_layers} on the inference path)", info.layers.len())?;
    writeln!(
        out,
        "PGI branch: {}",
        if info.has_pgi_branch { "yes (auxiliary training branch, dropped at load)" } else { "no" }
    )?;
    writeln!(out, "strides:    {:?}", info.strides)?;
    Ok(())
}

/// `25288768` -> `25,288,768`.
fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The `SPOTTER_WEIGHTS_*` variables in effect, for `--help` readers and error hints.
pub const ENV_HELP: &str = concat!(
    "environment: SPOTTER_WEIGHTS_DIR (weights directory), ",
    "SPOTTER_WEIGHTS_MIRROR (mirror base URL), ",
    "SPOTTER_WEIGHTS_REGISTRY (extra registry file)"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::MIRROR_ENV;
    use crate::weights::registry::REGISTRY_ENV;

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(7), "7");
        assert_eq!(group_digits(1234), "1,234");
        assert_eq!(group_digits(25_288_768), "25,288,768");
        assert_eq!(group_digits(100_000), "100,000");
    }

    #[test]
    fn env_help_names_the_variables() {
        assert!(
            ENV_HELP.contains(MIRROR_ENV) && ENV_HELP.contains(REGISTRY_ENV) && ENV_HELP.contains(weights::DIR_ENV)
        );
    }
}
