//! Command-line interface (the contract is in DESIGN.md; scripts and tests rely on it).

/// `println!` that returns the write error instead of panicking, so that a closed pipe
/// (`spotter detect ... | head -1`) ends the command quietly (see `main`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod bench;
mod detect;
mod video;
mod weights;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use spotter_detector::{DetectorOptions, DeviceChoice, LetterboxMode, NmsOptions, Precision};

#[derive(Debug, Parser)]
#[command(
    name = "spotter",
    version,
    about = "Real-time video analytics with GELAN / YOLOv9 detectors",
    long_about = "Real-time video analytics with GELAN / YOLOv9 detectors.\n\nWithout a command, opens the \
                  window on SOURCE (default: the bundled demo clip).",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// What to open in the window: a video file, an image, a folder, a URL, `camera:N`.
    source: Option<String>,
    /// Model to start with: a variant name (gelan-s, gelan-c, ...) or a checkpoint file. Repeat
    /// (up to 4) to start in compare mode.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Show the per-layer latency chart at start.
    #[arg(long)]
    layers: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Detect objects in images, video files, streams or cameras.
    Detect(detect::DetectArgs),
    /// Measure the detector's speed (p50/p95 ms per frame, optionally per layer).
    Bench(bench::BenchArgs),
    /// List the cameras and the formats they offer (open one with `camera:INDEX` or `camera:NAME`).
    Cameras,
    /// Official weights: list, download (with resume and a mirror), convert, inspect.
    Weights(weights::WeightsArgs),
}

/// Model and device options shared by the commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Device: auto, cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Precision on GPUs: f32, f16 or bf16 (the CPU always runs f32).
    #[arg(long, default_value = "auto")]
    precision: String,
    /// Network input size (long side, a multiple of 32).
    #[arg(long, default_value_t = 640)]
    imgsz: u32,
    /// Model config (.yaml) for weights files that carry none.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory where model names are looked up (also $SPOTTER_WEIGHTS_DIR).
    #[arg(long)]
    weights_dir: Option<PathBuf>,
}

impl ModelArgs {
    pub fn options(&self, nms: NmsOptions, letterbox: LetterboxMode) -> Result<DetectorOptions> {
        Ok(DetectorOptions {
            device: self.device.parse::<DeviceChoice>()?,
            precision: self.precision.parse::<Precision>()?,
            imgsz: self.imgsz,
            letterbox,
            nms,
            config: self.config.clone(),
            weights_dir: self.weights_dir.clone(),
            ..Default::default()
        })
    }
}

/// The model used when none is named: gelan-c on a GPU, gelan-s on the CPU.
pub fn default_model(device: &str) -> &'static str {
    let gpu = device.starts_with("cuda")
        || device == "metal"
        || (device == "auto" && (candle_core::utils::cuda_is_available() || candle_core::utils::metal_is_available()));
    if gpu { "gelan-c" } else { "gelan-s" }
}

#[cfg(feature = "camera")]
fn list_cameras() -> Result<()> {
    use spotter_pipeline::source::camera;
    let cameras = camera::list_cameras()?;
    if cameras.is_empty() {
        outln!("no cameras found")?;
    }
    for c in cameras {
        outln!("camera:{}  {}  ({})", c.index, c.name, c.description)?;
        match camera::camera_formats(&c.index) {
            Ok(formats) => {
                for (w, h, fps, format) in formats {
                    outln!("    {w}x{h} @ {fps} fps  {format}")?;
                }
            }
            Err(e) => outln!("    formats unavailable: {e}")?,
        }
    }
    Ok(())
}

#[cfg(not(feature = "camera"))]
fn list_cameras() -> Result<()> {
    anyhow::bail!("this build has no camera support (feature `camera`)")
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(Command::Detect(a)) => detect::run(a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::Cameras) => list_cameras(),
        Some(Command::Weights(a)) => weights::run(a),
        None => {
            if args.models.len() > spotter_pipeline::runner::MAX_MODELS {
                anyhow::bail!("compare at most {} models", spotter_pipeline::runner::MAX_MODELS);
            }
            crate::gui::run(crate::gui::StartOptions {
                source: args.source,
                model: args.models.first().cloned(),
                compare_with: args.models.iter().skip(1).cloned().collect(),
                layers: args.layers,
                start_paused: false,
                ..Default::default()
            })
        }
    }
}
