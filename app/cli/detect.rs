//! `spotter detect`: detections on images (and folders of images) as text or JSON Lines.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use spotter_detector::image_io::{is_image_path, read_image};
use spotter_detector::{LetterboxMode, NmsOptions};

use super::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct DetectArgs {
    /// An image file or a folder of images.
    source: PathBuf,
    /// Model: a variant name (gelan-s, gelan-c, yolov9-e, ...) or a weights file.
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    model_args: ModelArgs,
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
    max_frames: Option<usize>,
    /// Write detections as JSON Lines (one object per frame) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The images of `source`: the file itself, or the folder's images in name order.
fn list_images(source: &Path) -> Result<Vec<PathBuf>> {
    if source.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(source)
            .with_context(|| format!("cannot read folder {}", source.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_image_path(p))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("{}: no images in this folder", source.display());
        }
        Ok(files)
    } else if source.is_file() {
        Ok(vec![source.to_path_buf()])
    } else {
        bail!("{}: no such file or folder", source.display())
    }
}

#[derive(serde::Serialize)]
struct JsonDetection<'a> {
    bbox: [f32; 4],
    score: f32,
    class_id: usize,
    label: &'a str,
}

#[derive(serde::Serialize)]
struct JsonFrame<'a> {
    frame: usize,
    pts: f64,
    width: u32,
    height: u32,
    model: &'a str,
    source: String,
    detections: Vec<JsonDetection<'a>>,
}

pub fn run(args: DetectArgs) -> Result<()> {
    let images = list_images(&args.source)?;
    if !(0.0..=1.0).contains(&args.conf) || !(0.0..=1.0).contains(&args.iou) {
        bail!("--conf and --iou must lie between 0 and 1");
    }
    let nms = NmsOptions {
        conf_threshold: args.conf,
        iou_threshold: args.iou,
        max_det: args.max_det,
        agnostic: args.agnostic_nms,
        classes: args.classes.clone(),
    };
    let model = args.model.clone().unwrap_or_else(|| super::default_model(&args.model_args.device).to_string());
    let options = args.model_args.options(nms, LetterboxMode::MinimalRect)?;
    let mut detector = crate::weights::load_detector(&model, options)?;
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
                    .map(|(d, label)| JsonDetection { bbox: d.bbox, score: d.score, class_id: d.class_id, label })
                    .collect(),
            };
            serde_json::to_writer(&mut *out, &record)?;
            writeln!(out).context("cannot write detections")?;
        } else {
            println!("{} ({}x{}): {} detections", path.display(), result.width, result.height, result.detections.len());
            for (d, label) in result.detections.iter().zip(&labels) {
                let [x1, y1, x2, y2] = d.bbox;
                println!("  {label:<14} {:.3}  [{x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}]", d.score);
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
