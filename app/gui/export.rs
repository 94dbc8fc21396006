//! Export the current file (or a range of it) as an annotated MP4 and/or JSON Lines in the
//! background, with progress and cancel; and record a live source as shown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};
use spotter_pipeline::annotate::{Annotation, Annotator};
use spotter_pipeline::export::VideoWriter;
use spotter_pipeline::{
    Command, Event, FrameResult, ModelLoader, OutputConfig, Pipeline, PipelineConfig, Policy, SourceSpec,
};

use super::Action;

/// What to export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRequest {
    pub source: String,
    pub model: String,
    pub video: Option<PathBuf>,
    pub jsonl: Option<PathBuf>,
    /// Seconds from the start; `None`: the whole file.
    pub range: Option<(f64, f64)>,
    pub fps: Option<f64>,
}

/// A running (or finished) export.
pub struct ExportJob {
    pub request: ExportRequest,
    pipeline: Option<Pipeline>,
    events: Receiver<Event>,
    pub frames_done: u64,
    pub total: Option<u64>,
    pub finished: bool,
    pub cancelled: bool,
    pub error: Option<String>,
}

impl ExportJob {
    pub fn start(request: ExportRequest, loader: ModelLoader, ctx: &egui::Context) -> anyhow::Result<Self> {
        let mut config = PipelineConfig::new(vec![request.model.clone()], loader);
        config.policy = Some(Policy::Lossless);
        config.output = OutputConfig { video: request.video.clone(), jsonl: request.jsonl.clone(), keep_audio: true };
        if let Some((start, end)) = request.range {
            config.start_paused = start > 0.0;
            config.max_frames = request.fps.map(|fps| ((end - start).max(0.0) * fps).ceil().max(1.0) as u64);
        }
        let pipeline = Pipeline::start(SourceSpec::parse(&request.source)?, config)?;
        if let Some((start, _)) = request.range
            && start > 0.0
        {
            pipeline.send(Command::Seek(start));
            pipeline.send(Command::Resume);
        }
        let events = wake_on_events(pipeline.events().clone(), ctx.clone())?;
        Ok(Self {
            request,
            pipeline: Some(pipeline),
            events,
            frames_done: 0,
            total: None,
            finished: false,
            cancelled: false,
            error: None,
        })
    }

    pub fn poll(&mut self) {
        for e in self.events.try_iter() {
            match e {
                Event::Progress { frames_done, total, .. } => {
                    self.frames_done = frames_done;
                    self.total = total;
                }
                Event::Error(e) => self.error = Some(e),
                Event::ModelLoadFailed { error, .. } => self.error = Some(error),
                Event::Finished(s) => {
                    self.frames_done = s.frames_out;
                    self.finished = true;
                }
                _ => {}
            }
        }
        if self.finished
            && let Some(p) = self.pipeline.take()
            && let Err(e) = p.wait()
        {
            self.error.get_or_insert(e.to_string());
        }
    }

    pub fn cancel(&mut self) {
        if let Some(p) = &self.pipeline {
            p.send(Command::Stop);
        }
        self.cancelled = true;
    }

    pub fn fraction(&self) -> f32 {
        match self.total {
            Some(t) if t > 0 => (self.frames_done as f32 / t as f32).min(1.0),
            _ => 0.0,
        }
    }
}

/// Forwards a pipeline's events and wakes the window on each.
fn wake_on_events(from: Receiver<Event>, ctx: egui::Context) -> anyhow::Result<Receiver<Event>> {
    let (tx, rx) = bounded::<Event>(64);
    std::thread::Builder::new().name("spotter-gui-export".into()).spawn(move || {
        for e in from.iter() {
            if matches!(e, Event::Frame(_)) {
                continue;
            }
            if tx.send_timeout(e, Duration::from_secs(5)).is_err() {
                break;
            }
            ctx.request_repaint();
        }
        ctx.request_repaint();
    })?;
    Ok(rx)
}

/// The export dialog's fields.
pub struct ExportDialog {
    pub open: bool,
    pub video: bool,
    pub jsonl: bool,
    pub path: String,
    pub use_range: bool,
    pub start_secs: f64,
    pub end_secs: f64,
}

impl Default for ExportDialog {
    fn default() -> Self {
        Self {
            open: false,
            video: true,
            jsonl: true,
            path: String::new(),
            use_range: false,
            start_secs: 0.0,
            end_secs: 0.0,
        }
    }
}

/// `clip.mp4` → `clip.annotated.mp4` beside it.
pub fn default_output(source: &str) -> PathBuf {
    let p = Path::new(source);
    let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "export".into());
    p.with_file_name(format!("{stem}.annotated.mp4"))
}

impl ExportDialog {
    pub fn show(&mut self, source: &str, duration: Option<f64>) {
        self.open = true;
        if self.path.is_empty() {
            self.path = default_output(source).display().to_string();
        }
        if let Some(d) = duration
            && (self.end_secs <= 0.0 || self.end_secs > d)
        {
            self.end_secs = d;
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, job: Option<&ExportJob>, duration: Option<f64>, actions: &mut Vec<Action>) {
        if !self.open {
            return;
        }
        let mut open = self.open;
        egui::Window::new("Export").open(&mut open).collapsible(false).resizable(false).show(ui.ctx(), |ui| {
            let running = job.is_some_and(|j| !j.finished);
            ui.add_enabled_ui(!running, |ui| {
                ui.checkbox(&mut self.video, "Annotated MP4");
                ui.checkbox(&mut self.jsonl, "Detections as JSON Lines");
                ui.horizontal(|ui| {
                    let label = ui.label("Output");
                    ui.add(egui::TextEdit::singleline(&mut self.path).desired_width(320.0)).labelled_by(label.id);
                    if ui.button("Choose…").clicked()
                        && let Some(p) = rfd::FileDialog::new().add_filter("MP4 video", &["mp4"]).save_file()
                    {
                        self.path = p.display().to_string();
                    }
                });
                if let Some(d) = duration {
                    ui.checkbox(&mut self.use_range, "Only a range");
                    if self.use_range {
                        ui.add(egui::Slider::new(&mut self.start_secs, 0.0..=d).text("From (s)"));
                        ui.add(egui::Slider::new(&mut self.end_secs, 0.0..=d).text("To (s)"));
                    }
                }
            });
            ui.separator();
            if let Some(j) = job {
                let text = match (j.finished, j.cancelled, &j.error) {
                    (_, _, Some(e)) => format!("Export failed: {e}"),
                    (true, true, None) => format!("Cancelled after {} frames", j.frames_done),
                    (true, false, None) => format!("Export finished: {} frames", j.frames_done),
                    (false, _, None) => match j.total {
                        Some(t) => format!("Exporting: {} / {t} frames", j.frames_done),
                        None => format!("Exporting: {} frames", j.frames_done),
                    },
                };
                ui.add(
                    egui::ProgressBar::new(if j.finished && !j.cancelled { 1.0 } else { j.fraction() })
                        .show_percentage(),
                );
                ui.label(text);
                if j.finished {
                    for p in j.request.video.iter().chain(j.request.jsonl.iter()) {
                        ui.monospace(p.display().to_string());
                    }
                }
            }
            ui.horizontal(|ui| {
                if running {
                    if ui.button("Cancel export").clicked() {
                        actions.push(Action::CancelExport);
                    }
                } else if ui.add_enabled(self.video || self.jsonl, egui::Button::new("Start export")).clicked() {
                    actions.push(Action::StartExport);
                }
            });
        });
        self.open = open;
    }

    /// The outputs for the chosen path: `X.mp4` and `X.jsonl`.
    pub fn outputs(&self) -> (Option<PathBuf>, Option<PathBuf>) {
        let video = PathBuf::from(self.path.trim());
        let jsonl = video.with_extension("jsonl");
        (self.video.then_some(video), self.jsonl.then_some(jsonl))
    }
}

/// Records what a live source shows (with its boxes) to an MP4, on its own thread.
pub struct Recorder {
    pub path: PathBuf,
    frames: Option<Sender<Arc<FrameResult>>>,
    thread: Option<std::thread::JoinHandle<Result<u64, String>>>,
    pub dropped: u64,
}

impl Recorder {
    /// Starts recording to `path` (its folder is created); a folder or file that cannot be
    /// written fails here, before any frame.
    pub fn start(path: PathBuf, fps: Option<f64>) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        std::fs::File::create(&path).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        let (tx, rx) = bounded::<Arc<FrameResult>>(8);
        let out = path.clone();
        let thread = std::thread::Builder::new().name("spotter-gui-record".into()).spawn(move || {
            let mut writer: Option<VideoWriter> = None;
            let mut annotator = Annotator::new();
            let mut t0 = None;
            let mut n = 0u64;
            for f in rx.iter() {
                let img = &f.frame.image;
                if writer.is_none() {
                    writer =
                        Some(VideoWriter::create(&out, img.width, img.height, fps, None).map_err(|e| e.to_string())?);
                }
                let Some(w) = writer.as_mut() else { break };
                let mut canvas = img.data.to_vec();
                if let Some(r) = f.results.first() {
                    let a: Vec<Annotation<'_>> = r
                        .detections
                        .iter()
                        .zip(&r.labels)
                        .map(|(d, l)| Annotation { bbox: d.bbox, class_id: d.class_id, label: l, score: d.score })
                        .collect();
                    annotator.draw(&mut canvas, img.width, img.height, &a);
                }
                let start = *t0.get_or_insert(f.frame.pts_secs);
                w.write_rgb(&canvas, img.width, img.height, f.frame.pts_secs - start, f.frame.duration_secs)
                    .map_err(|e| e.to_string())?;
                n += 1;
            }
            if let Some(w) = writer.as_mut() {
                w.finish().map_err(|e| e.to_string())?;
            }
            Ok(n)
        })?;
        Ok(Self { path, frames: Some(tx), thread: Some(thread), dropped: 0 })
    }

    pub fn push(&mut self, frame: &Arc<FrameResult>) {
        if let Some(tx) = &self.frames
            && tx.try_send(Arc::clone(frame)).is_err()
        {
            self.dropped += 1;
        }
    }

    /// Whether the recorder stopped by itself (it could not write): [`Self::stop`] says why.
    pub fn failed(&self) -> bool {
        self.frames.is_some() && self.thread.as_ref().is_some_and(|t| t.is_finished())
    }

    /// Stops and returns the number of frames written (an empty recording leaves no file).
    pub fn stop(mut self) -> Result<u64, String> {
        self.frames = None;
        let result = match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err("the recorder thread panicked".into()),
            None => Ok(0),
        };
        if result == Ok(0) {
            let _ = std::fs::remove_file(&self.path);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_sit_beside_the_source() {
        assert_eq!(default_output("/v/clip.mp4"), PathBuf::from("/v/clip.annotated.mp4"));
        let d = ExportDialog { path: "/o/x.mp4".into(), jsonl: true, video: false, ..ExportDialog::default() };
        assert_eq!(d.outputs(), (None, Some(PathBuf::from("/o/x.jsonl"))));
    }
}
