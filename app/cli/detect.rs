//! `spotter detect`: detections on images, folders of images, video files, network streams and
//! cameras, as text or JSON Lines, with an annotated MP4 for video.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use spotter_detector::image_io::read_image;
use spotter_detector::{LetterboxMode, NmsOptions};
use spotter_pipeline::SourceSpec;
use spotter_pipeline::export::JsonDetection;

use super::ModelArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct DetectArgs {
    /// An image, a folder of images, a video file, a stream URL (rtsp://, http://, ...), or a
    /// camera (`camera:0`, `camera:0@1280x720@30`).
    pub source: String,
    /// Model: a variant name (gelan-s, gelan-c, yolov9-e, ...) or a weights file. Repeat (up to
    /// 4) to compare models on the same frames.
    #[arg(long = "model")]
    models: Vec<String>,
    #[command(flatten)]
    pub model_args: ModelArgs,
    /// Confidence threshold.
    #[arg(long, default_value_t = 0.25)]
    conf: f32,
    /// IoU threshold of the non-maximum suppression.
    #[arg(long, default_value_t = 0.45)]
    iou: f32,
    /// Keep only these class ids, e.g. 0,2.
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<usize>>,
    /// Suppress overlapping boxes across classes.
    #[arg(long)]
    agnostic_nms: bool,
    /// At most this many detections per frame.
    #[arg(long, default_value_t = 1000)]
    max_det: usize,
    /// Stop after this many frames.
    #[arg(long)]
    pub max_frames: Option<usize>,
    /// Write detections as JSON Lines (one object per frame) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the annotated video (H.264 MP4) to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Do not copy the source's audio into --out.
    #[arg(long)]
    pub no_audio: bool,
}

/// The images of `source`: the file itself, or the folder's images in name order.
fn list_images(source: &Path) -> Result<Vec<PathBuf>> {
    if source.is_dir() {
        Ok(spotter_pipeline::source::image_files(source)?)
    } else if source.is_file() {
        Ok(vec![source.to_path_buf()])
    } else {
        bail!("{}: no such file or folder", source.display())
    }
}

#[derive(serde::Serialize)]
struct JsonFrame<'a> {
    frame: usize,
    pts: f64,
    width: u32,
    height: u32,
    model: &'a str,
    source: String,
    detections: Vec<JsonDetection>,
}

pub fn run(args: DetectArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.conf) || !(0.0..=1.0).contains(&args.iou) {
        bail!("--conf and --iou must lie between 0 and 1");
    }
    if args.models.len() > spotter_pipeline::runner::MAX_MODELS {
        bail!("compare at most {} models", spotter_pipeline::runner::MAX_MODELS);
    }
    let spec = SourceSpec::parse(&args.source)?;
    match spec {
        SourceSpec::Image(_) | SourceSpec::Folder(_) => run_images(args),
        other => super::video::run(other, args),
    }
}

impl DetectArgs {
    pub fn nms(&self) -> NmsOptions {
        NmsOptions {
            conf_threshold: self.conf,
            iou_threshold: self.iou,
            max_det: self.max_det,
            agnostic: self.agnostic_nms,
            classes: self.classes.clone(),
        }
    }

    /// The models to run: those named, or the default for the device.
    pub fn models(&self) -> Vec<String> {
        if self.models.is_empty() {
            vec![super::default_model(&self.model_args.device).to_string()]
        } else {
            self.models.clone()
        }
    }
}

fn run_images(args: DetectArgs) -> Result<()> {
    let images = list_images(Path::new(&args.source))?;
    if args.out.is_some() {
        bail!("--out writes a video; for images use --json");
    }
    let models = args.models();
    if models.len() > 1 {
        bail!("compare several models on video or camera sources; run images once per model");
    }
    let options = args.model_args.options(args.nms(), LetterboxMode::MinimalRect)?;
    let mut detector = crate::weights::load_detector(&models[0], options)?;
    let mut json_out = match &args.json {
        Some(p) => {
            Some(BufWriter::new(std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?))
        }
        None => None,
    };
    let variant = detector.info().variant.clone();
    let limit = args.max_frames.unwrap_or(usize::MAX);
    let mut total = 0usize;
    let mut per_class: std::collections::BTreeMap<String, usize> = Default::default();
    let mut inference_ms = Vec::new();
    for (frame, path) in images.iter().enumerate().take(limit) {
        let image = read_image(path)?;
        let result = detector.detect(&image)?;
        inference_ms.push(result.times.inference_ms);
        total += result.detections.len();
        let labels: Vec<String> = result.detections.iter().map(|d| detector.class_name(d.class_id)).collect();
        for l in &labels {
            *per_class.entry(l.clone()).or_default() += 1;
        }
        if let Some(out) = json_out.as_mut() {
            let record = JsonFrame {
                frame,
                pts: 0.0,
                width: result.width,
                height: result.height,
                model: &variant,
                source: path.display().to_string(),
                detections: result
                    .detections
                    .iter()
                    .zip(&labels)
                    .map(|(d, label)| JsonDetection {
                        bbox: d.bbox,
                        score: d.score,
                        class_id: d.class_id,
                        label: label.clone(),
                    })
                    .collect(),
            };
            serde_json::to_writer(&mut *out, &record)?;
            writeln!(out).context("cannot write detections")?;
        } else {
            outln!("{} ({}x{}): {} detections", path.display(), result.width, result.height, result.detections.len())?;
            for (d, label) in result.detections.iter().zip(&labels) {
                let [x1, y1, x2, y2] = d.bbox;
                outln!("  {label:<14} {:.3}  [{x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}]", d.score)?;
            }
        }
    }
    if let Some(mut out) = json_out {
        out.flush().context("cannot write detections")?;
    }
    let frames = images.len().min(limit);
    let summary: Vec<String> = per_class.iter().map(|(k, v)| format!("{k} {v}")).collect();
    inference_ms.sort_by(f64::total_cmp);
    let median = inference_ms.get(inference_ms.len() / 2).copied().unwrap_or(0.0);
    eprintln!(
        "{frames} frame(s), {total} detection(s){}{} with {variant} on {}; inference p50 {median:.1} ms",
        if summary.is_empty() { "" } else { ": " },
        summary.join(", "),
        detector.info().device
    );
    Ok(())
}
