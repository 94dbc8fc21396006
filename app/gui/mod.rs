//! The desktop window: watch, open, switch and compare models, per-layer latency, export.
//!
//! [`SpotterApp`] keeps the persisted [`State`] beside the runtime handles (the running
//! [`Player`], an export job, a recorder, a download). Panels draw and return [`Action`]s that
//! are applied after drawing.

mod cameras;
mod compare;
mod export;
mod help;
mod layers;
mod models;
mod player;
mod sidebar;
pub mod state;
mod video;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use egui::{Color32, Key, KeyboardShortcut, Modifiers};
use spotter_pipeline::{Command, ModelLoader};

pub use cameras::{CameraEntry, CameraLister};
pub use export::ExportRequest;
pub use models::{NO_MODEL, missing_message};
pub use player::{Player, SlotState};
pub use state::State;

use compare::CompareTable;
use export::{ExportDialog, ExportJob, Recorder};
use help::HelpOverlay;
use layers::LayerChart;
use models::{FactsMap, SharedOptions, detector_options, nms_options};
use sidebar::{Sidebar, transport_ui, wanted_models};
use video::VideoView;

/// The key eframe stores [`State`] under.
pub const STATE_KEY: &str = "spotter-state";

/// What the UI asks for; applied after drawing.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Open(String),
    OpenFileDialog,
    OpenFolderDialog,
    PickCheckpoint,
    SetModel(String),
    QuickModel(usize),
    SetCompare(bool),
    CompareModelsChanged,
    NmsChanged,
    ImageSize(u32),
    Device,
    LayerChart(bool),
    TogglePause,
    Step,
    Seek(f64),
    SeekBy(f64),
    Speed(f64),
    Loop(bool),
    ShowExport,
    StartExport,
    CancelExport,
    ToggleRecord,
    Download(String),
    CancelDownload,
    DismissNotice(usize),
    ToggleHelp,
    RefreshCameras,
}

/// How the window starts.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// A source to open at once (else the bundled demo clip).
    pub source: Option<String>,
    /// A model to use instead of the remembered one.
    pub model: Option<String>,
    /// More models to compare with the first one (compare mode on at start).
    pub compare_with: Vec<String>,
    /// Show the per-layer latency chart at start.
    pub layers: bool,
    /// Start paused on the first frame (tests).
    pub start_paused: bool,
    /// Folders where model names are looked up (default: the usual weights folders); downloads
    /// go to the first one (default: the usual download folder).
    pub weights_dirs: Option<Vec<PathBuf>>,
    /// Base URL weights are downloaded from instead of the release (default: `$SPOTTER_WEIGHTS_MIRROR`).
    pub weights_mirror: Option<String>,
    /// Where recordings are written (default: the current folder).
    pub recordings_dir: Option<PathBuf>,
    /// How the Open ▸ Camera menu lists cameras (default: the cameras attached, through nokhwa).
    pub cameras: CameraLister,
}

/// A download's bytes done, bytes in all, and outcome once finished (what is said when it worked).
type DownloadProgress = (u64, Option<u64>, Option<Result<String, String>>);

/// A weights download started from the window.
struct Download {
    model: String,
    done: Arc<Mutex<DownloadProgress>>,
    cancel: Arc<AtomicBool>,
}

pub struct SpotterApp {
    pub state: State,
    pub player: Option<Player>,
    default_model: String,
    options: SharedOptions,
    facts: FactsMap,
    loader: ModelLoader,
    weights_dirs: Vec<PathBuf>,
    /// Where the window's downloads go (`None`: the usual download folder).
    download_to: Option<PathBuf>,
    weights_mirror: Option<String>,
    recordings_dir: Option<PathBuf>,
    video: VideoView,
    sidebar: Sidebar,
    layers: LayerChart,
    compare: CompareTable,
    pub export_dialog: ExportDialog,
    pub export: Option<ExportJob>,
    recorder: Option<Recorder>,
    download: Option<Download>,
    help: HelpOverlay,
    url: String,
    camera_lister: CameraLister,
    /// The cameras last listed (`None` until the Camera menu is first opened).
    cameras: Option<Result<Vec<CameraEntry>, String>>,
    seek_drag: Option<f64>,
    /// Errors that belong to no source (a file that cannot be opened ...).
    pub errors: Vec<String>,
    actions: Vec<Action>,
}

impl SpotterApp {
    pub fn new(ctx: &egui::Context, state: State, start: StartOptions) -> Self {
        let mut state = state.sanitized();
        if let Some(m) = &start.model {
            state.model = Some(m.clone());
        }
        if !start.compare_with.is_empty() {
            let main = state.model.clone().unwrap_or_else(|| default_model(&state.device).to_string());
            state.compare = true;
            state.compare_models = std::iter::once(main).chain(start.compare_with.iter().cloned()).collect();
        }
        if start.layers {
            state.show_layer_chart = true;
        }
        let default_model = default_model(&state.device).to_string();
        let options =
            Arc::new(Mutex::new(detector_options(state.conf, state.iou, state.imgsz, &state.device, &state.classes)));
        let facts: FactsMap = Arc::default();
        let dirs = start.weights_dirs.clone().unwrap_or_else(models::default_dirs);
        let loader = models::loader(Arc::clone(&options), Arc::clone(&facts), dirs.clone());
        let mut sidebar = Sidebar::default();
        sidebar.refresh_presence(&dirs);
        let mut app = Self {
            state,
            player: None,
            default_model,
            options,
            facts,
            loader,
            video: VideoView::default(),
            sidebar,
            download_to: start.weights_dirs.as_ref().and_then(|d| d.first().cloned()),
            weights_dirs: dirs,
            weights_mirror: start.weights_mirror.clone(),
            recordings_dir: start.recordings_dir.clone(),
            layers: LayerChart,
            compare: CompareTable,
            export_dialog: ExportDialog::default(),
            export: None,
            recorder: None,
            download: None,
            help: HelpOverlay::default(),
            url: String::new(),
            camera_lister: start.cameras.clone(),
            cameras: None,
            seek_drag: None,
            errors: Vec::new(),
            actions: Vec::new(),
        };
        let source = start.source.clone().unwrap_or_else(|| demo_clip().display().to_string());
        app.open(ctx, &source, start.start_paused);
        app
    }

    /// The models the pipeline runs now.
    pub fn wanted_models(&self) -> Vec<String> {
        wanted_models(&self.state, &self.default_model)
    }

    /// Opens a source (replacing the current one); an error is shown in the window.
    pub fn open(&mut self, ctx: &egui::Context, source: &str, start_paused: bool) {
        // What was recorded from the old source is said on the new one.
        let recorded = self.finish_recording();
        self.player = None;
        let models = self.wanted_models();
        let (loader, facts) = (Arc::clone(&self.loader), Arc::clone(&self.facts));
        match Player::open(source, &models, loader, facts, ctx, start_paused, self.state.looping) {
            Ok(p) => {
                if let Some(s) = p.info.as_ref()
                    && !s.live
                {
                    p.send(Command::Speed(self.state.speed));
                }
                if self.state.show_layer_chart {
                    p.send(Command::Profile(true));
                }
                self.player = Some(p);
                self.state.remember_source(source);
                self.errors.clear();
            }
            Err(e) => self.errors.push(format!("cannot open {source}: {e:#}")),
        }
        if let Some(n) = recorded {
            self.show_notice(n);
        }
    }

    /// Draws the whole window, then applies what was asked.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.finish_download();
        if let Some(p) = self.player.as_mut() {
            // Seekable files loop inside the pipeline (Command::Loop); the end is shown as it is.
            let _ended = p.poll();
            if let (Some(r), Some(f)) = (self.recorder.as_mut(), p.latest.as_ref())
                && p.fresh_frame
            {
                r.push(f);
            }
        }
        if self.recorder.as_ref().is_some_and(Recorder::failed) {
            self.stop_recording();
        }
        if let Some(j) = self.export.as_mut() {
            j.poll();
        }
        if let Some(p) = self.player.as_mut() {
            self.video.update_texture(&ctx, p);
        }
        self.dropped_files(&ctx);
        self.shortcuts(&ctx);

        egui::Panel::top("menu").show(ui, |ui| self.menu_ui(ui));
        egui::Panel::bottom("status").show(ui, |ui| self.status_ui(ui));
        if let Some(p) = &self.player {
            let state = &mut self.state;
            let seek = &mut self.seek_drag;
            let actions = &mut self.actions;
            egui::Panel::bottom("transport").show(ui, |ui| transport_ui(ui, state, p, seek, actions));
        }
        if self.state.show_sidebar {
            egui::Panel::right("controls").default_size(280.0).show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    let default_model = &self.default_model;
                    self.sidebar.ui(ui, &mut self.state, default_model, self.player.as_ref(), &mut self.actions);
                });
            });
        }
        if self.state.show_layer_chart {
            egui::Panel::bottom("layers").resizable(true).default_size(220.0).show(ui, |ui| {
                let model = self.player.as_ref().and_then(|p| p.latest.as_ref()).and_then(|f| f.results.first());
                let name = model.map_or(NO_MODEL.to_string(), |r| r.model.clone());
                let profile = self.player.as_ref().and_then(|p| p.profile.as_deref());
                self.layers.ui(ui, &name, profile);
            });
        }
        if self.state.compare
            && let Some(p) = &self.player
        {
            egui::Panel::bottom("compare").show(ui, |ui| self.compare.ui(ui, p, &self.facts));
        }
        egui::CentralPanel::default().frame(egui::Frame::NONE).show(ui, |ui| {
            self.banner_ui(ui);
            self.video.ui(ui, self.player.as_ref(), self.state.show_labels);
        });
        let duration = self.player.as_ref().and_then(|p| p.info.as_ref()).and_then(|i| i.duration_secs);
        self.export_dialog.ui(ui, self.export.as_ref(), duration, &mut self.actions);
        self.help.ui(ui);

        for action in std::mem::take(&mut self.actions) {
            self.apply(&ctx, action);
        }
    }

    fn menu_ui(&mut self, ui: &mut egui::Ui) {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("Open", |ui| {
                if ui.button("File…  (Ctrl+O)").clicked() {
                    self.actions.push(Action::OpenFileDialog);
                }
                if ui.button("Image folder…").clicked() {
                    self.actions.push(Action::OpenFolderDialog);
                }
                ui.separator();
                ui.horizontal(|ui| {
                    let label = ui.label("URL");
                    ui.add(
                        egui::TextEdit::singleline(&mut self.url).hint_text("rtsp://… http://…").desired_width(220.0),
                    )
                    .labelled_by(label.id);
                    if ui.button("Open URL").clicked() && !self.url.trim().is_empty() {
                        self.actions.push(Action::Open(self.url.trim().to_string()));
                    }
                });
                ui.separator();
                ui.menu_button("Camera", |ui| {
                    match &self.cameras {
                        None => {
                            ui.label("Looking for cameras…");
                            self.actions.push(Action::RefreshCameras);
                        }
                        Some(Ok(list)) if list.is_empty() => {
                            ui.label("No camera found");
                        }
                        Some(Ok(list)) => {
                            for c in list {
                                if ui.button(c.label()).clicked() {
                                    self.actions.push(Action::Open(c.source.clone()));
                                }
                            }
                        }
                        Some(Err(e)) => {
                            ui.label(e);
                        }
                    }
                    if ui.button("Look for cameras").clicked() {
                        self.actions.push(Action::RefreshCameras);
                    }
                });
                ui.menu_button("Recent", |ui| {
                    if self.state.recent_sources.is_empty() {
                        ui.label("Nothing yet");
                    }
                    for s in &self.state.recent_sources {
                        if ui.button(s).clicked() {
                            self.actions.push(Action::Open(s.clone()));
                        }
                    }
                });
                if ui.button("Synthetic test pattern").clicked() {
                    self.actions.push(Action::Open("synthetic:1280x720@25".into()));
                }
            });
            let live = self.player.as_ref().and_then(|p| p.info.as_ref()).is_some_and(|i| i.live);
            if ui.add_enabled(!live, egui::Button::new("Export…")).on_hover_text("Ctrl+E").clicked() {
                self.actions.push(Action::ShowExport);
            }
            let rec = if self.recorder.is_some() { "Stop recording" } else { "Record" };
            if ui.button(rec).on_hover_text("Ctrl+R: record what is shown").clicked() {
                self.actions.push(Action::ToggleRecord);
            }
            ui.menu_button("View", |ui| {
                ui.checkbox(&mut self.state.show_sidebar, "Sidebar");
                let mut chart = self.state.show_layer_chart;
                if ui.checkbox(&mut chart, "Per-layer latency").changed() {
                    self.actions.push(Action::LayerChart(chart));
                }
                let mut compare = self.state.compare;
                if ui.checkbox(&mut compare, "Compare models").changed() {
                    self.actions.push(Action::SetCompare(compare));
                }
            });
            if ui.button("Help").on_hover_text("F1").clicked() {
                self.actions.push(Action::ToggleHelp);
            }
        });
    }

    /// FPS, dropped frames and stage latencies (always visible), and what runs.
    fn status_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let Some(p) = &self.player else {
                ui.label("Nothing open");
                return;
            };
            let model = match p.slots.first() {
                Some(SlotState::Ready(m)) => models::short_name(m),
                Some(SlotState::Loading(m)) => format!("loading {}…", models::short_name(m)),
                _ => NO_MODEL.to_string(),
            };
            ui.strong(model);
            ui.separator();
            if let Some(s) = &p.stats {
                ui.monospace(format!("{:.1} fps", s.fps_out));
                ui.separator();
                ui.monospace(format!("dropped {}", s.dropped));
                ui.separator();
                let stages: Vec<String> =
                    s.stages.iter().map(|l| format!("{} {:.1}", stage_name(l.stage), l.p50_ms)).collect();
                ui.monospace(format!("p50 ms: {}", stages.join(" · ")));
            }
            if let Some(info) = &p.info {
                ui.separator();
                ui.label(format!("{}×{}  {}", info.width, info.height, short_source(&info.name)));
            }
            if let Some(r) = &self.recorder {
                ui.separator();
                ui.colored_label(Color32::from_rgb(229, 57, 53), format!("REC {}", r.path.display()));
            }
            if let Some(j) = &self.export
                && !j.finished
            {
                ui.separator();
                ui.add(
                    egui::ProgressBar::new(j.fraction())
                        .desired_width(120.0)
                        .text(format!("export {:.0} %", j.fraction() * 100.0)),
                );
            }
        });
    }

    /// Errors and missing weights, at the top of the video.
    fn banner_ui(&mut self, ui: &mut egui::Ui) {
        let mut notices: Vec<(String, bool, Option<String>)> =
            self.errors.iter().map(|e| (e.clone(), true, None)).collect();
        if let Some(p) = &self.player {
            notices.extend(p.notices.iter().map(|n| (n.text.clone(), n.error, n.missing_model.clone())));
        }
        let download = self.download.as_ref().map(|d| (d.model.clone(), d.done.lock().map(|g| g.clone()).ok()));
        for (i, (text, error, missing)) in notices.into_iter().enumerate() {
            let fill = if error { Color32::from_rgb(120, 28, 28) } else { Color32::from_rgb(110, 84, 10) };
            egui::Frame::new().fill(fill).inner_margin(6.0).show(ui, |ui| {
                ui.horizontal_wrapped(|ui| {
                    ui.colored_label(Color32::WHITE, &text);
                    if let Some(m) = &missing {
                        match &download {
                            Some((dm, Some((done, total, None)))) if dm == m => {
                                let f = total.map_or(0.0, |t| *done as f32 / t.max(1) as f32);
                                ui.add(egui::ProgressBar::new(f).desired_width(160.0).show_percentage());
                                if ui.button("Cancel download").clicked() {
                                    self.actions.push(Action::CancelDownload);
                                }
                            }
                            _ => {
                                if ui.button(format!("Download {m}")).clicked() {
                                    self.actions.push(Action::Download(m.clone()));
                                }
                            }
                        }
                        if ui.button("Pick a checkpoint…").clicked() {
                            self.actions.push(Action::PickCheckpoint);
                        }
                    }
                    if ui.small_button("x").on_hover_text("Dismiss").clicked() {
                        self.actions.push(Action::DismissNotice(i));
                    }
                });
            });
        }
        if let Some((m, Some((_, _, Some(Err(e)))))) = &download {
            ui.colored_label(Color32::from_rgb(229, 57, 53), format!("download of {m} failed: {e}"));
        }
    }

    fn dropped_files(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).filter(|p| !p.as_os_str().is_empty()).collect()
        });
        if let Some(p) = dropped.first() {
            self.actions.push(Action::Open(p.display().to_string()));
        }
    }

    fn shortcuts(&mut self, ctx: &egui::Context) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        let paused = self.player.as_ref().is_some_and(|p| p.paused);
        let mut actions = Vec::new();
        ctx.input_mut(|i| {
            if i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND, Key::O)) {
                actions.push(Action::OpenFileDialog);
            }
            if i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND, Key::E)) {
                actions.push(Action::ShowExport);
            }
            if i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND, Key::R)) {
                actions.push(Action::ToggleRecord);
            }
            if i.consume_key(Modifiers::NONE, Key::Space) {
                actions.push(Action::TogglePause);
            }
            if i.consume_key(Modifiers::NONE, Key::ArrowRight) {
                actions.push(if paused { Action::Step } else { Action::SeekBy(5.0) });
            }
            if i.consume_key(Modifiers::NONE, Key::ArrowLeft) {
                actions.push(Action::SeekBy(-5.0));
            }
            for (k, key) in [Key::Num1, Key::Num2, Key::Num3, Key::Num4].into_iter().enumerate() {
                if i.consume_key(Modifiers::NONE, key) {
                    actions.push(Action::QuickModel(k));
                }
            }
            if i.consume_key(Modifiers::NONE, Key::C) {
                actions.push(Action::SetCompare(!self.state.compare));
            }
            if i.consume_key(Modifiers::NONE, Key::L) {
                actions.push(Action::LayerChart(!self.state.show_layer_chart));
            }
            if i.consume_key(Modifiers::NONE, Key::S) {
                self.state.show_sidebar = !self.state.show_sidebar;
            }
            if i.consume_key(Modifiers::NONE, Key::F1) || i.consume_key(Modifiers::NONE, Key::Questionmark) {
                actions.push(Action::ToggleHelp);
            }
            if i.consume_key(Modifiers::NONE, Key::Escape) {
                self.help.open = false;
                self.export_dialog.open = false;
            }
        });
        self.actions.extend(actions);
    }

    /// Applies one action (the UI has been drawn).
    pub fn apply(&mut self, ctx: &egui::Context, action: Action) {
        match action {
            Action::Open(s) => self.open(ctx, &s, false),
            Action::OpenFileDialog => {
                if let Some(p) = rfd::FileDialog::new()
                    .add_filter(
                        "Video or image",
                        &["mp4", "mkv", "mov", "avi", "webm", "ts", "jpg", "jpeg", "png", "bmp", "webp"],
                    )
                    .add_filter("Any file", &["*"])
                    .pick_file()
                {
                    self.open(ctx, &p.display().to_string(), false);
                }
            }
            Action::OpenFolderDialog => {
                if let Some(p) = rfd::FileDialog::new().pick_folder() {
                    self.open(ctx, &p.display().to_string(), false);
                }
            }
            Action::PickCheckpoint => {
                if let Some(p) = rfd::FileDialog::new().add_filter("Checkpoint", &["pt", "safetensors"]).pick_file() {
                    let p = p.display().to_string();
                    self.state.remember_checkpoint(&p);
                    self.set_model(&p);
                }
            }
            Action::SetModel(m) => self.set_model(&m),
            Action::QuickModel(k) => {
                if let Some(m) = self.state.compare_models.get(k).cloned() {
                    self.set_model(&m);
                }
            }
            Action::SetCompare(on) => {
                self.state.compare = on;
                self.sync_models();
            }
            Action::CompareModelsChanged => self.sync_models(),
            Action::NmsChanged => {
                let nms = nms_options(self.state.conf, self.state.iou, &self.state.classes);
                if let Ok(mut o) = self.options.lock() {
                    o.nms = nms.clone();
                }
                self.send(Command::Nms(nms));
            }
            Action::ImageSize(s) => {
                if let Ok(mut o) = self.options.lock() {
                    o.imgsz = s;
                }
                self.send(Command::ImageSize(s));
            }
            Action::Device => {
                if let Ok(mut o) = self.options.lock() {
                    o.device = self.state.device.parse().unwrap_or_default();
                }
                self.default_model = default_model(&self.state.device).to_string();
                if let Some(p) = self.player.as_mut() {
                    p.reload_models();
                }
            }
            Action::LayerChart(on) => {
                self.state.show_layer_chart = on;
                self.send(Command::Profile(on));
            }
            Action::TogglePause => {
                if let Some(p) = self.player.as_mut() {
                    if p.finished {
                        if let Err(e) = p.restart(ctx, self.state.looping) {
                            self.errors.push(format!("cannot restart: {e:#}"));
                        }
                    } else {
                        p.toggle_pause();
                    }
                }
            }
            Action::Step => self.send(Command::Step),
            Action::Seek(t) => self.send(Command::Seek(t)),
            Action::SeekBy(d) => {
                if let Some(p) = &self.player {
                    p.send(Command::Seek((p.position_secs() + d).max(0.0)));
                }
            }
            Action::Speed(s) => self.send(Command::Speed(s)),
            Action::Loop(on) => self.send(Command::Loop(on)),
            Action::ShowExport => {
                if let Some(p) = &self.player
                    && p.info.as_ref().is_some_and(|i| !i.live)
                {
                    let duration = p.info.as_ref().and_then(|i| i.duration_secs);
                    self.export_dialog.show(&p.source, duration);
                }
            }
            Action::StartExport => self.start_export(ctx),
            Action::CancelExport => {
                if let Some(j) = self.export.as_mut() {
                    j.cancel();
                }
            }
            Action::ToggleRecord => {
                if self.recorder.is_some() {
                    self.stop_recording();
                } else {
                    self.start_recording();
                }
            }
            Action::Download(m) => self.start_download(ctx, &m),
            Action::CancelDownload => {
                if let Some(d) = &self.download {
                    d.cancel.store(true, Ordering::Relaxed);
                }
            }
            Action::DismissNotice(i) => {
                let n = self.errors.len();
                if i < n {
                    self.errors.remove(i);
                } else if let Some(p) = self.player.as_mut()
                    && i - n < p.notices.len()
                {
                    p.notices.remove(i - n);
                }
            }
            Action::ToggleHelp => self.help.open = !self.help.open,
            Action::RefreshCameras => self.cameras = Some(self.camera_lister.list()),
        }
    }

    fn send(&self, command: Command) {
        if let Some(p) = &self.player {
            p.send(command);
        }
    }

    fn set_model(&mut self, model: &str) {
        self.state.model = Some(model.to_string());
        if let Some(first) = self.state.compare_models.first_mut() {
            *first = model.to_string();
        }
        self.sync_models();
    }

    fn sync_models(&mut self) {
        let models = self.wanted_models();
        if let Some(p) = self.player.as_mut() {
            p.set_models(&models);
        }
    }

    pub fn start_export(&mut self, ctx: &egui::Context) {
        let Some(p) = &self.player else { return };
        let (video, jsonl) = self.export_dialog.outputs();
        let d = &self.export_dialog;
        let request = ExportRequest {
            source: p.source.clone(),
            model: self.wanted_models().first().cloned().unwrap_or_else(|| NO_MODEL.to_string()),
            video,
            jsonl,
            range: d.use_range.then_some((d.start_secs, d.end_secs.max(d.start_secs))),
            fps: p.info.as_ref().and_then(|i| i.fps),
        };
        match ExportJob::start(request, Arc::clone(&self.loader), ctx) {
            Ok(j) => self.export = Some(j),
            Err(e) => self.errors.push(format!("cannot export: {e:#}")),
        }
    }

    fn start_recording(&mut self) {
        let Some(p) = &self.player else { return };
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let dir = match &self.recordings_dir {
            Some(d) => d.clone(),
            None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        };
        let path = dir.join(format!("spotter-recording-{stamp}.mp4"));
        match Recorder::start(path, p.info.as_ref().and_then(|i| i.fps)) {
            Ok(r) => self.recorder = Some(r),
            Err(e) => self.errors.push(format!("cannot record: {e:#}")),
        }
    }

    fn stop_recording(&mut self) {
        if let Some(notice) = self.finish_recording() {
            self.show_notice(notice);
        }
    }

    /// Stops recording; returns what to tell the user.
    fn finish_recording(&mut self) -> Option<player::Notice> {
        let r = self.recorder.take()?;
        let path = r.path.clone();
        let (text, error) = match r.stop() {
            Ok(0) => ("nothing recorded: no frame arrived while recording".to_string(), false),
            Ok(n) => (format!("recorded {n} frames to {}", path.display()), false),
            Err(e) => (format!("recording failed: {e}"), true),
        };
        Some(player::Notice { text, error, missing_model: None })
    }

    /// A notice on the current source (without one, among the window's errors).
    fn show_notice(&mut self, notice: player::Notice) {
        match self.player.as_mut() {
            Some(p) => p.push_notice(notice),
            None => self.errors.push(notice.text),
        }
    }

    fn start_download(&mut self, ctx: &egui::Context, model: &str) {
        let registry = match crate::weights::Registry::load(None) {
            Ok(r) => r,
            Err(e) => return self.errors.push(e.to_string()),
        };
        let Some(variant) = registry.get(model).cloned() else {
            return self.errors.push(format!("{model} is not an official variant; pick a checkpoint file"));
        };
        let dir = match crate::weights::download_dir(self.download_to.as_deref()) {
            Ok(d) => d,
            Err(e) => return self.errors.push(e.to_string()),
        };
        let mirror = crate::weights::mirror(self.weights_mirror.as_deref());
        let request = crate::weights::request(&variant, &dir, mirror.as_deref());
        let done = Arc::new(Mutex::new((0u64, variant.size, None)));
        let cancel = Arc::new(AtomicBool::new(false));
        let (d2, c2, ctx2, name) = (Arc::clone(&done), Arc::clone(&cancel), ctx.clone(), model.to_string());
        let spawned = std::thread::Builder::new().name("spotter-gui-download".into()).spawn(move || {
            let progress = |p: &crate::weights::Progress| {
                if let crate::weights::Progress::Transferred { done, total } = p
                    && let Ok(mut g) = d2.lock()
                {
                    g.0 = *done;
                    g.1 = total.or(g.1);
                }
                ctx2.request_repaint();
            };
            let result = crate::weights::download::download(&request, &progress, &c2)
                .map(|f| {
                    format!("downloaded {name} ({}) to {}", crate::weights::human_bytes(f.bytes), f.path.display())
                })
                .map_err(|e| crate::weights::with_hint(e, &variant, &dir).to_string());
            if let Ok(mut g) = d2.lock() {
                g.2 = Some(result);
            }
            ctx2.request_repaint();
        });
        if let Err(e) = spawned {
            return self.errors.push(format!("cannot start the download: {e}"));
        }
        self.download = Some(Download { model: model.to_string(), done, cancel });
    }

    /// After a finished download: load the model.
    fn finish_download(&mut self) {
        let finished = self
            .download
            .as_ref()
            .and_then(|d| d.done.lock().ok().and_then(|g| g.2.clone()).map(|r| (d.model.clone(), r)));
        if let Some((model, Ok(text))) = finished {
            self.download = None;
            self.sidebar.refresh_presence(&self.weights_dirs);
            if let Some(p) = self.player.as_mut() {
                p.notices.retain(|n| n.missing_model.as_deref() != Some(model.as_str()));
                p.push_notice(player::Notice { text, error: false, missing_model: None });
                p.reload_models();
            }
        }
    }

    /// Where the video's first tile was drawn last (tests).
    pub fn video_rect(&self) -> Option<egui::Rect> {
        self.video.last_image_rect
    }
}

impl eframe::App for SpotterApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        SpotterApp::ui(self, ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STATE_KEY, &self.state);
    }
}

fn stage_name(stage: spotter_pipeline::stats::Stage) -> &'static str {
    use spotter_pipeline::stats::Stage;
    match stage {
        Stage::Decode => "decode",
        Stage::Preprocess => "pre",
        Stage::Inference => "infer",
        Stage::Postprocess => "post",
        Stage::Output => "out",
        Stage::EndToEnd => "e2e",
    }
}

fn short_source(name: &str) -> String {
    Path::new(name).file_name().map_or(name.to_string(), |f| f.to_string_lossy().into_owned())
}

/// gelan-c on a GPU, gelan-s on the CPU.
pub fn default_model(device: &str) -> &'static str {
    crate::cli::default_model(device)
}

/// The bundled demo clip: beside the executable's checkout, or under the current folder.
pub fn demo_clip() -> PathBuf {
    let rel = Path::new("assets/demo.mp4");
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            if dir.join(rel).is_file() {
                return dir.join(rel);
            }
        }
    }
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    if compiled.is_file() { compiled } else { rel.to_path_buf() }
}

/// Opens the window (blocks until it is closed).
pub fn run(start: StartOptions) -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Spotter")
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([640.0, 400.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "spotter",
        options,
        Box::new(move |cc| {
            let state = cc.storage.and_then(|s| eframe::get_value::<State>(s, STATE_KEY)).unwrap_or_default();
            Ok(Box::new(SpotterApp::new(&cc.egui_ctx, state, start)))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}
