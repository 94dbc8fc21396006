//! The threaded pipeline: a decoder thread, a detector worker and a sink (annotate, encode,
//! JSON Lines), linked by bounded channels. Live sources drop stale frames so latency never
//! builds up; files are processed losslessly, in order, with back-pressure.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, select};
use spotter_detector::model::LayerTiming;
use spotter_detector::{Detection, Detections, Detector, NmsOptions};

use crate::annotate::{Annotation, Annotator};
use crate::error::{Error, Result};
use crate::export::{JsonDetection, JsonFrame, JsonlWriter, VideoWriter};
use crate::source::{Frame, FrameSource, SourceInfo, SourceSpec};
use crate::stats::{PipelineStats, Stage, StatsSnapshot};

/// The most models compared side by side.
pub const MAX_MODELS: usize = 4;

/// What the detector worker runs: a [`Detector`], or anything that behaves like one.
pub trait FrameDetector: Send {
    /// The model's name as shown and written to JSON Lines.
    fn name(&self) -> String;
    fn detect(&mut self, frame: &spotter_detector::RgbFrame) -> spotter_detector::Result<Detections>;
    fn class_name(&self, class_id: usize) -> String;
    fn set_nms(&mut self, nms: &NmsOptions);
    fn set_imgsz(&mut self, imgsz: u32);
    /// Turns per-layer timing of the following frames on or off (models that cannot profile ignore it).
    fn set_profiling(&mut self, on: bool) {
        let _ = on;
    }
    /// The per-layer times of the last frame while profiling was on.
    fn profile(&self) -> Option<Vec<LayerTiming>> {
        None
    }
}

impl FrameDetector for Detector {
    fn name(&self) -> String {
        self.info().variant.clone()
    }
    fn detect(&mut self, frame: &spotter_detector::RgbFrame) -> spotter_detector::Result<Detections> {
        Detector::detect(self, frame)
    }
    fn class_name(&self, class_id: usize) -> String {
        Detector::class_name(self, class_id)
    }
    fn set_nms(&mut self, nms: &NmsOptions) {
        self.options.nms = nms.clone();
    }
    fn set_imgsz(&mut self, imgsz: u32) {
        self.options.imgsz = imgsz;
    }
    fn set_profiling(&mut self, on: bool) {
        Detector::set_profiling(self, on);
    }
    fn profile(&self) -> Option<Vec<LayerTiming>> {
        let p = self.last_profile();
        (!p.is_empty()).then(|| p.to_vec())
    }
}

/// Loads a model by name or path (runs on a loader thread, off the hot path).
pub type ModelLoader = Arc<dyn Fn(&str) -> Result<Box<dyn FrameDetector>> + Send + Sync>;

/// How frames flow from the decoder to the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Newest frame wins; stale ones are dropped and counted (cameras, streams, playback).
    Live,
    /// Every frame, in order, with back-pressure (export, CLI on a file).
    Lossless,
}

/// Where results go besides the event stream.
#[derive(Debug, Clone, Default)]
pub struct OutputConfig {
    /// Annotated H.264 MP4.
    pub video: Option<PathBuf>,
    /// Detections as JSON Lines.
    pub jsonl: Option<PathBuf>,
    /// Copy the source's audio into the video (file sources).
    pub keep_audio: bool,
}

/// How to run.
#[derive(Clone)]
pub struct PipelineConfig {
    pub policy: Option<Policy>,
    /// Models to run on every frame (more than one: compare mode).
    pub models: Vec<String>,
    pub loader: ModelLoader,
    pub output: OutputConfig,
    pub max_frames: Option<u64>,
    /// Play files at their own pace (GUI playback) instead of as fast as possible.
    pub realtime: bool,
    /// Start again from the beginning at the end (seekable sources).
    pub looping: bool,
    pub start_paused: bool,
    /// Burn boxes into the frames sent with events too (the GUI draws its own overlay).
    pub annotate_events: bool,
}

impl PipelineConfig {
    pub fn new(models: Vec<String>, loader: ModelLoader) -> Self {
        Self {
            policy: None,
            models,
            loader,
            output: OutputConfig::default(),
            max_frames: None,
            realtime: false,
            looping: false,
            start_paused: false,
            annotate_events: false,
        }
    }
}

/// Commands accepted while running.
#[derive(Debug, Clone)]
pub enum Command {
    Pause,
    Resume,
    /// While paused: show the next frame and stay paused.
    Step,
    /// Seek to a time in seconds (seekable sources).
    Seek(f64),
    /// Playback speed factor for realtime playback.
    Speed(f64),
    /// Loop seekable sources (start again at the end).
    Loop(bool),
    Nms(NmsOptions),
    ImageSize(u32),
    /// Replace the model in a slot (0 = the main one). Frames keep flowing on the old model
    /// until the new one is loaded; a failed load keeps the old one.
    SwitchModel {
        slot: usize,
        model: String,
    },
    /// Run these models side by side (1 to 4).
    Compare(Vec<String>),
    /// Time every layer of the main model (slot 0) on each frame: [`ModelResult::profile`].
    Profile(bool),
    Stop,
}

/// One model's result on one frame.
#[derive(Debug, Clone)]
pub struct ModelResult {
    pub model: String,
    pub detections: Vec<Detection>,
    pub labels: Vec<String>,
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub postprocess_ms: f64,
    /// Per-layer times of this frame, while profiling is on (main model only).
    pub profile: Option<Vec<LayerTiming>>,
}

/// Everything known about one processed frame.
#[derive(Debug, Clone)]
pub struct FrameResult {
    pub frame: Arc<Frame>,
    pub results: Vec<ModelResult>,
    /// Frame decoded → all models done.
    pub latency_ms: f64,
}

/// What the pipeline reports.
#[derive(Debug, Clone)]
pub enum Event {
    Frame(Arc<FrameResult>),
    Progress {
        frames_done: u64,
        total: Option<u64>,
        eta_secs: Option<f64>,
    },
    ModelLoaded {
        slot: usize,
        model: String,
    },
    ModelLoadFailed {
        slot: usize,
        model: String,
        error: String,
    },
    /// A non-fatal problem (e.g. audio could not be carried over).
    Warning(String),
    /// A fatal error; the pipeline stops.
    Error(String),
    Finished(StatsSnapshot),
}

enum DecoderCommand {
    Pause,
    Resume,
    Step,
    Loop(bool),
    Seek(f64),
    Speed(f64),
    Stop,
}

enum WorkerCommand {
    Nms(NmsOptions),
    ImageSize(u32),
    Switch { slot: usize, model: String },
    Compare(Vec<String>),
    Profile(bool),
}

/// A loaded model coming back from a loader thread.
struct Loaded {
    slot: usize,
    generation: u64,
    model: String,
    result: Result<Box<dyn FrameDetector>>,
}

type Outputs = (Option<VideoWriter>, Option<JsonlWriter>);

fn open_outputs(output: &OutputConfig, info: &SourceInfo) -> Result<Outputs> {
    let video = match &output.video {
        Some(p) => {
            let audio = (output.keep_audio && info.has_audio && !info.live).then(|| PathBuf::from(&info.name));
            Some(VideoWriter::create(p, info.width, info.height, info.fps, audio.as_deref())?)
        }
        None => None,
    };
    let jsonl = match &output.jsonl {
        Some(p) => Some(JsonlWriter::create(p)?),
        None => None,
    };
    Ok((video, jsonl))
}

/// A running pipeline. Dropping it stops the threads and waits for them.
pub struct Pipeline {
    info: SourceInfo,
    decoder_tx: Sender<DecoderCommand>,
    worker_tx: Sender<WorkerCommand>,
    events: Receiver<Event>,
    stats: Arc<Mutex<PipelineStats>>,
    threads: Vec<JoinHandle<()>>,
    error: Arc<Mutex<Option<String>>>,
}

/// Starts a pipeline thread, which records its CPU time in `stats` when `f` returns (what
/// `bench --pipeline` reports the decoder and the sink cost beside the detector).
fn spawn(name: &str, stats: &Arc<Mutex<PipelineStats>>, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    let stats = Arc::clone(stats);
    let thread = name.to_string();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            f();
            if let (Some(ms), Ok(mut stats)) = (crate::stats::thread_cpu_ms(), stats.lock()) {
                stats.thread_cpu_ms.insert(thread, ms);
            }
        })
        .map_err(|e| Error::BadSource(format!("cannot start thread {name}: {e}")))
}

impl Pipeline {
    /// Opens `source` on the decoder thread, loads the models and starts. Errors in opening
    /// the source, loading the first models or creating outputs are returned here.
    pub fn start(source: SourceSpec, config: PipelineConfig) -> Result<Self> {
        Self::start_with(Box::new(move || source.open()), config)
    }

    /// Like [`Self::start`] with a source built by `open` on the decoder thread.
    pub fn start_with(
        open: Box<dyn FnOnce() -> Result<Box<dyn FrameSource>> + Send>,
        config: PipelineConfig,
    ) -> Result<Self> {
        if config.models.is_empty() || config.models.len() > MAX_MODELS {
            return Err(Error::BadSource(format!("run 1 to {MAX_MODELS} models, not {}", config.models.len())));
        }
        // Load the models first (in parallel is not worth it on small machines).
        let mut detectors = Vec::with_capacity(config.models.len());
        for m in &config.models {
            detectors.push((config.loader)(m)?);
        }
        let stats = Arc::new(Mutex::new(PipelineStats::default()));
        let error = Arc::new(Mutex::new(None));
        let (decoder_tx, decoder_rx) = bounded::<DecoderCommand>(16);
        let (worker_tx, worker_rx) = bounded::<WorkerCommand>(16);
        let (ready_tx, ready_rx) = bounded::<Result<SourceInfo>>(1);
        // Frames: lossless keeps a few in flight; live keeps only the newest.
        let (events_tx, events_rx) = bounded::<Event>(64);

        let mut threads = Vec::new();
        let decoder_stats = Arc::clone(&stats);
        let decoder_error = Arc::clone(&error);
        let policy_cell = Arc::new(Mutex::new(Policy::Lossless));
        let policy_for_decoder = Arc::clone(&policy_cell);
        let (frames_tx, frames_rx) = bounded::<Arc<Frame>>(4);
        let frames_rx_for_decoder = frames_rx.clone();
        let max_frames = config.max_frames;
        let realtime = config.realtime;
        let looping = config.looping;
        let start_paused = config.start_paused;
        let requested_policy = config.policy;
        threads.push(spawn("spotter-decode", &stats, move || {
            let mut source = match open() {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let info = source.info().clone();
            let policy = requested_policy.unwrap_or(if info.live { Policy::Live } else { Policy::Lossless });
            if let Ok(mut p) = policy_for_decoder.lock() {
                *p = policy;
            }
            let _ = ready_tx.send(Ok(info));
            decode_loop(
                source.as_mut(),
                DecodeCtx {
                    error: decoder_error,
                    commands: decoder_rx,
                    frames: frames_tx,
                    frames_back: frames_rx_for_decoder,
                    stats: decoder_stats,
                    policy,
                    max_frames,
                    realtime,
                    looping,
                    paused: start_paused,
                },
            );
        })?);
        let info = match ready_rx.recv() {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                for t in threads {
                    let _ = t.join();
                }
                return Err(e);
            }
            Err(_) => return Err(Error::Stopped),
        };
        let policy = policy_cell.lock().map(|p| *p).unwrap_or(Policy::Lossless);

        let (results_tx, results_rx) = bounded::<FrameResult>(4);
        let worker_events = events_tx.clone();
        let worker_stats = Arc::clone(&stats);
        let loader = Arc::clone(&config.loader);
        let worker_error = Arc::clone(&error);
        threads.push(spawn("spotter-detect", &stats, move || {
            let mut w = Worker {
                detectors,
                generations: vec![0; MAX_MODELS],
                loader,
                loads: bounded(MAX_MODELS * 2),
                events: worker_events,
                stats: worker_stats,
                policy,
                profiling: false,
            };
            if let Err(e) = w.run(frames_rx, worker_rx, results_tx) {
                let msg = e.to_string();
                let _ = w.events.try_send(Event::Error(msg.clone()));
                if let Ok(mut slot) = worker_error.lock() {
                    slot.get_or_insert(msg);
                }
            }
        })?);

        let sink_stats = Arc::clone(&stats);
        let sink_error = Arc::clone(&error);
        let total = config.max_frames.map_or(info.frame_count, |m| Some(info.frame_count.map_or(m, |n| n.min(m))));
        let annotate_events = config.annotate_events;
        let decoder_stop = decoder_tx.clone();
        let output = config.output.clone();
        let sink_info = info.clone();
        let (outputs_ready_tx, outputs_ready_rx) = bounded::<Result<()>>(1);
        threads.push(spawn("spotter-sink", &stats, move || {
            // The outputs belong to this thread (FFmpeg contexts stay on one thread); they are
            // created before any frame so an unwritable path fails at once.
            let outputs = open_outputs(&output, &sink_info);
            let (video, jsonl) = match outputs {
                Ok(o) => {
                    if let Some(note) = o.0.as_ref().and_then(|v| v.audio_note.clone()) {
                        let _ = events_tx.try_send(Event::Warning(note));
                    }
                    let _ = outputs_ready_tx.send(Ok(()));
                    o
                }
                Err(e) => {
                    let _ = decoder_stop.try_send(DecoderCommand::Stop);
                    let _ = outputs_ready_tx.send(Err(e));
                    return;
                }
            };
            let mut sink = Sink {
                video,
                jsonl,
                annotator: Annotator::new(),
                events: events_tx,
                stats: sink_stats,
                total,
                annotate_events,
            };
            if let Err(e) = sink.run(results_rx) {
                let msg = e.to_string();
                let _ = decoder_stop.try_send(DecoderCommand::Stop);
                let _ = sink.events.try_send(Event::Error(msg.clone()));
                if let Ok(mut slot) = sink_error.lock() {
                    slot.get_or_insert(msg);
                }
            }
            let summary = sink.stats.lock().map(|mut s| s.snapshot());
            if let Ok(summary) = summary {
                let _ = sink.events.try_send(Event::Finished(summary));
            }
        })?);
        let pipeline = Self { info, decoder_tx, worker_tx, events: events_rx, stats, threads, error };
        match outputs_ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::Stopped),
        }
        Ok(pipeline)
    }

    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.lock().map(|mut s| s.snapshot()).unwrap_or_else(|p| p.into_inner().snapshot())
    }

    pub fn send(&self, command: Command) {
        // A command sent after the end has nothing to act on; dropping it is right.
        let to_decoder = |c| self.decoder_tx.send(c).is_ok();
        let to_worker = |c| self.worker_tx.send(c).is_ok();
        let _delivered = match command {
            Command::Pause => to_decoder(DecoderCommand::Pause),
            Command::Resume => to_decoder(DecoderCommand::Resume),
            Command::Step => to_decoder(DecoderCommand::Step),
            Command::Loop(on) => to_decoder(DecoderCommand::Loop(on)),
            Command::Seek(s) => to_decoder(DecoderCommand::Seek(s)),
            Command::Speed(s) => to_decoder(DecoderCommand::Speed(s)),
            Command::Stop => to_decoder(DecoderCommand::Stop),
            Command::Nms(n) => to_worker(WorkerCommand::Nms(n)),
            Command::ImageSize(s) => to_worker(WorkerCommand::ImageSize(s)),
            Command::SwitchModel { slot, model } => to_worker(WorkerCommand::Switch { slot, model }),
            Command::Compare(models) => to_worker(WorkerCommand::Compare(models)),
            Command::Profile(on) => to_worker(WorkerCommand::Profile(on)),
        };
    }

    /// Waits for the end (source exhausted, max frames, stop or error) and returns the summary,
    /// or the first fatal error.
    pub fn wait(mut self) -> Result<StatsSnapshot> {
        self.join();
        if let Some(e) = self.error.lock().ok().and_then(|e| e.clone()) {
            return Err(Error::BadSource(e));
        }
        Ok(self.stats())
    }

    fn join(&mut self) {
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a pipeline thread panicked");
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.decoder_tx.try_send(DecoderCommand::Stop);
        self.join();
    }
}

struct DecodeCtx {
    /// Where a fatal source error goes (the first one wins).
    error: Arc<Mutex<Option<String>>>,
    commands: Receiver<DecoderCommand>,
    frames: Sender<Arc<Frame>>,
    frames_back: Receiver<Arc<Frame>>,
    stats: Arc<Mutex<PipelineStats>>,
    policy: Policy,
    max_frames: Option<u64>,
    realtime: bool,
    looping: bool,
    paused: bool,
}

fn decode_loop(source: &mut dyn FrameSource, mut ctx: DecodeCtx) {
    let mut sent = 0u64;
    let mut speed = 1.0f64;
    // Realtime pacing: wall clock at which pts 0 would have been shown.
    let mut clock: Option<(Instant, f64)> = None;
    loop {
        // Commands (blocking while paused).
        let command = if ctx.paused { ctx.commands.recv().ok() } else { ctx.commands.try_recv().ok() };
        match command {
            Some(DecoderCommand::Stop) => break,
            Some(DecoderCommand::Pause) => {
                ctx.paused = true;
                continue;
            }
            Some(DecoderCommand::Resume) => {
                ctx.paused = false;
                clock = None;
                continue;
            }
            Some(DecoderCommand::Speed(s)) => {
                speed = s.clamp(0.1, 16.0);
                clock = None;
                continue;
            }
            // Decode one frame (paused or not) and go on as before.
            Some(DecoderCommand::Step) => clock = None,
            Some(DecoderCommand::Loop(on)) => {
                ctx.looping = on;
                continue;
            }
            Some(DecoderCommand::Seek(secs)) => {
                if let Err(e) = source.seek(secs) {
                    tracing::warn!("{e}");
                }
                clock = None;
                // Show the new position even when paused: fall through to decode one frame.
            }
            None if ctx.paused => break, // commands channel closed
            None => {}
        }
        if ctx.max_frames.is_some_and(|m| sent >= m) {
            break;
        }
        let frame = match source.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) if ctx.looping && sent > 0 && source.info().seekable => {
                if let Err(e) = source.seek(0.0) {
                    tracing::warn!("cannot loop: {e}");
                    break;
                }
                clock = None;
                continue;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("source: {e}");
                if let Ok(mut s) = ctx.stats.lock() {
                    s.decode_errors += 1;
                }
                if let Ok(mut slot) = ctx.error.lock() {
                    slot.get_or_insert(e.to_string());
                }
                break;
            }
        };
        if ctx.realtime && !source.info().live {
            let (t0, p0) = *clock.get_or_insert((Instant::now(), frame.pts_secs));
            let due = t0 + Duration::from_secs_f64(((frame.pts_secs - p0) / speed).max(0.0));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        if let Ok(mut s) = ctx.stats.lock() {
            s.frames_in += 1;
            s.rate_in.tick(Instant::now());
            s.record(Stage::Decode, frame.decode_ms);
            let src = source.stats();
            s.reconnects = src.reconnects;
            s.decode_errors = s.decode_errors.max(src.decode_errors);
        }
        let frame = Arc::new(frame);
        sent += 1;
        match ctx.policy {
            Policy::Lossless => {
                if ctx.frames.send(frame).is_err() {
                    break;
                }
            }
            Policy::Live => {
                // Keep only the newest frame waiting: replace any stale one nobody took yet.
                while ctx.frames_back.try_recv().is_ok() {
                    if let Ok(mut s) = ctx.stats.lock() {
                        s.dropped += 1;
                    }
                }
                if let Err(TrySendError::Disconnected(_)) = ctx.frames.try_send(frame) {
                    break;
                }
            }
        }
    }
    let src = source.stats();
    if let Ok(mut s) = ctx.stats.lock() {
        s.reconnects = src.reconnects;
        s.decode_errors = s.decode_errors.max(src.decode_errors);
    }
}

struct Worker {
    detectors: Vec<Box<dyn FrameDetector>>,
    /// Per slot, the newest requested load; older loads finishing late are discarded.
    generations: Vec<u64>,
    loader: ModelLoader,
    loads: (Sender<Loaded>, Receiver<Loaded>),
    events: Sender<Event>,
    stats: Arc<Mutex<PipelineStats>>,
    policy: Policy,
    /// Whether the main model times its layers.
    profiling: bool,
}

impl Worker {
    fn run(
        &mut self,
        frames: Receiver<Arc<Frame>>,
        commands: Receiver<WorkerCommand>,
        results: Sender<FrameResult>,
    ) -> Result<()> {
        let loads = self.loads.1.clone();
        let mut commands = commands;
        loop {
            enum Next {
                Loaded(Loaded),
                Command(WorkerCommand),
                CommandsClosed,
                Frame(Arc<Frame>),
                End,
            }
            // Swap in models that finished loading, apply commands, then take a frame.
            let next = select! {
                recv(loads) -> msg => match msg {
                    Ok(l) => Next::Loaded(l),
                    Err(_) => continue,
                },
                recv(commands) -> msg => match msg {
                    Ok(c) => Next::Command(c),
                    Err(_) => Next::CommandsClosed,
                },
                recv(frames) -> msg => match msg {
                    Ok(f) => Next::Frame(f),
                    Err(_) => Next::End,
                },
            };
            match next {
                Next::Loaded(l) => self.install(l),
                Next::Command(c) => self.apply(c),
                Next::CommandsClosed => commands = crossbeam_channel::never(),
                Next::End => return Ok(()),
                Next::Frame(frame) => {
                    let result = self.process(frame)?;
                    let delivered = match self.policy {
                        Policy::Lossless => results.send(result).is_ok(),
                        Policy::Live => !matches!(results.try_send(result), Err(TrySendError::Disconnected(_))),
                    };
                    if !delivered {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn process(&mut self, frame: Arc<Frame>) -> Result<FrameResult> {
        let mut out = Vec::with_capacity(self.detectors.len());
        for (slot, d) in self.detectors.iter_mut().enumerate() {
            let r = d.detect(&frame.image)?;
            let profile = if slot == 0 && self.profiling { d.profile() } else { None };
            let labels = r.detections.iter().map(|x| d.class_name(x.class_id)).collect();
            out.push(ModelResult {
                model: d.name(),
                detections: r.detections,
                labels,
                preprocess_ms: r.times.preprocess_ms,
                inference_ms: r.times.inference_ms,
                postprocess_ms: r.times.postprocess_ms,
                profile,
            });
        }
        let latency_ms = frame.decoded_at.elapsed().as_secs_f64() * 1e3;
        if let Ok(mut s) = self.stats.lock() {
            let now = Instant::now();
            for r in &out {
                s.record(Stage::Preprocess, r.preprocess_ms);
                s.record(Stage::Inference, r.inference_ms);
                s.record(Stage::Postprocess, r.postprocess_ms);
                let m = s.model(&r.model);
                m.frames += 1;
                m.detections += r.detections.len() as u64;
                m.rate.tick(now);
                m.latency.entry(Stage::Preprocess).or_default().push(r.preprocess_ms);
                m.latency.entry(Stage::Inference).or_default().push(r.inference_ms);
                m.latency.entry(Stage::Postprocess).or_default().push(r.postprocess_ms);
                m.latency.entry(Stage::EndToEnd).or_default().push(latency_ms);
                for l in &r.labels {
                    *m.per_class.entry(l.clone()).or_default() += 1;
                }
            }
        }
        Ok(FrameResult { frame, results: out, latency_ms })
    }

    fn apply(&mut self, command: WorkerCommand) {
        match command {
            WorkerCommand::Nms(n) => self.detectors.iter_mut().for_each(|d| d.set_nms(&n)),
            WorkerCommand::ImageSize(s) => self.detectors.iter_mut().for_each(|d| d.set_imgsz(s)),
            WorkerCommand::Switch { slot, model } => self.load(slot, model),
            WorkerCommand::Profile(on) => {
                self.profiling = on;
                if let Some(d) = self.detectors.first_mut() {
                    d.set_profiling(on);
                }
            }
            WorkerCommand::Compare(models) => {
                if models.is_empty() || models.len() > MAX_MODELS {
                    let _ = self.events.try_send(Event::Warning(format!("compare takes 1 to {MAX_MODELS} models")));
                    return;
                }
                // Fewer slots: drop the extra models now; new or changed slots load in the background.
                self.detectors.truncate(models.len());
                for (slot, m) in models.into_iter().enumerate() {
                    if self.detectors.get(slot).is_none_or(|d| d.name() != m) {
                        self.load(slot, m);
                    }
                }
            }
        }
    }

    /// Loads a model on its own thread; the frames keep flowing meanwhile.
    fn load(&mut self, slot: usize, model: String) {
        if slot >= MAX_MODELS {
            return;
        }
        self.generations[slot] += 1;
        let generation = self.generations[slot];
        let loader = Arc::clone(&self.loader);
        let tx = self.loads.0.clone();
        let spawned = std::thread::Builder::new().name("spotter-model-load".into()).spawn(move || {
            let result = loader(&model);
            let _ = tx.send(Loaded { slot, generation, model, result });
        });
        if let Err(e) = spawned {
            let _ = self.events.try_send(Event::Warning(format!("cannot start a loader thread: {e}")));
        }
    }

    fn install(&mut self, loaded: Loaded) {
        if self.generations.get(loaded.slot) != Some(&loaded.generation) {
            return; // superseded by a newer request
        }
        match loaded.result {
            Ok(mut d) => {
                if loaded.slot == 0 && self.profiling {
                    d.set_profiling(true);
                }
                if loaded.slot < self.detectors.len() {
                    self.detectors[loaded.slot] = d;
                } else {
                    self.detectors.push(d);
                }
                let _ = self.events.try_send(Event::ModelLoaded { slot: loaded.slot, model: loaded.model });
            }
            Err(e) => {
                tracing::warn!("loading {} failed: {e}", loaded.model);
                let _ = self.events.try_send(Event::ModelLoadFailed {
                    slot: loaded.slot,
                    model: loaded.model,
                    error: e.to_string(),
                });
            }
        }
    }
}

struct Sink {
    video: Option<VideoWriter>,
    jsonl: Option<JsonlWriter>,
    annotator: Annotator,
    events: Sender<Event>,
    stats: Arc<Mutex<PipelineStats>>,
    total: Option<u64>,
    annotate_events: bool,
}

fn annotations(r: &ModelResult) -> Vec<Annotation<'_>> {
    r.detections
        .iter()
        .zip(&r.labels)
        .map(|(d, l)| Annotation { bbox: d.bbox, class_id: d.class_id, label: l, score: d.score })
        .collect()
}

impl Sink {
    fn run(&mut self, results: Receiver<FrameResult>) -> Result<()> {
        let started = Instant::now();
        let mut done = 0u64;
        let mut last_progress = Instant::now() - Duration::from_secs(1);
        let mut canvas: Vec<u8> = Vec::new();
        for mut result in results.iter() {
            let t0 = Instant::now();
            let frame = Arc::clone(&result.frame);
            let first = result.results.first();
            let needs_canvas = self.video.is_some() || self.annotate_events;
            if needs_canvas {
                canvas.clear();
                canvas.extend_from_slice(&frame.image.data);
                if let Some(r) = first {
                    self.annotator.draw(&mut canvas, frame.image.width, frame.image.height, &annotations(r));
                }
            }
            if let Some(v) = self.video.as_mut() {
                v.write_rgb(&canvas, frame.image.width, frame.image.height, frame.pts_secs, frame.duration_secs)?;
            }
            if self.annotate_events {
                let annotated = spotter_detector::RgbFrame::from_slice(frame.image.width, frame.image.height, &canvas)
                    .map_err(|e| Error::Decode(e.to_string()))?;
                result.frame = Arc::new(Frame { image: annotated, ..(*frame).clone() });
            }
            if let Some(j) = self.jsonl.as_mut() {
                for r in &result.results {
                    j.write(&JsonFrame {
                        frame: frame.index,
                        pts: frame.pts_secs,
                        width: frame.image.width,
                        height: frame.image.height,
                        model: r.model.clone(),
                        detections: r
                            .detections
                            .iter()
                            .zip(&r.labels)
                            .map(|(d, l)| JsonDetection {
                                bbox: d.bbox,
                                score: d.score,
                                class_id: d.class_id,
                                label: l.clone(),
                            })
                            .collect(),
                    })?;
                }
            }
            let output_ms = t0.elapsed().as_secs_f64() * 1e3;
            done += 1;
            if let Ok(mut s) = self.stats.lock() {
                s.frames_out += 1;
                s.rate_out.tick(Instant::now());
                s.record(Stage::Output, output_ms);
                s.record(Stage::EndToEnd, frame.decoded_at.elapsed().as_secs_f64() * 1e3);
            }
            // Consumers need not read every frame event; the sink never blocks on them.
            let _ = self.events.try_send(Event::Frame(Arc::new(result)));
            if last_progress.elapsed() >= Duration::from_millis(200) {
                last_progress = Instant::now();
                let elapsed = started.elapsed().as_secs_f64();
                let eta_secs = self.total.filter(|t| *t > done).map(|t| (t - done) as f64 * elapsed / done as f64);
                let _ = self.events.try_send(Event::Progress { frames_done: done, total: self.total, eta_secs });
            }
        }
        if let Some(v) = self.video.as_mut() {
            v.finish()?;
        }
        if let Some(j) = self.jsonl.as_mut() {
            j.finish()?;
        }
        let _ = self.events.try_send(Event::Progress { frames_done: done, total: self.total, eta_secs: Some(0.0) });
        Ok(())
    }
}
