//! The running pipeline behind the window: starts it on a source, forwards its events to the
//! UI thread (waking the window), and keeps what the panels show.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};
use spotter_detector::model::LayerTiming;
use spotter_pipeline::stats::StatsSnapshot;
use spotter_pipeline::{
    Command, Event, FrameResult, ModelLoader, Pipeline, PipelineConfig, Policy, SourceInfo, SourceSpec,
};

use super::models::{FactsMap, NO_MODEL, missing_message};

/// A model slot's state as far as the window knows.
#[derive(Debug, Clone, PartialEq)]
pub enum SlotState {
    /// The pass-through: video without detection.
    NoModel,
    Loading(String),
    Ready(String),
}

/// Something to tell the user.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub text: String,
    pub error: bool,
    /// The model whose weights are missing, when that is the problem (offers a download).
    pub missing_model: Option<String>,
}

/// One opened source and its pipeline.
pub struct Player {
    pub source: String,
    pipeline: Option<Pipeline>,
    events: Receiver<Event>,
    pub info: Option<SourceInfo>,
    pub latest: Option<Arc<FrameResult>>,
    /// Set when a new frame arrived since the texture was last updated.
    pub fresh_frame: bool,
    pub paused: bool,
    pub finished: bool,
    pub stats: Option<StatsSnapshot>,
    stats_at: Option<Instant>,
    pub profile: Option<Vec<LayerTiming>>,
    pub slots: Vec<SlotState>,
    /// What each slot should run (kept to restart on loop or reopen).
    pub wanted: Vec<String>,
    pub notices: Vec<Notice>,
    loader: ModelLoader,
    facts: FactsMap,
    /// Compare mode bookkeeping: matched / total boxes of the largest model, per other model.
    pub agreement: BTreeMap<String, (u64, u64)>,
}

impl Player {
    /// Opens `source` and starts playing with the pass-through model at once, then loads `models`
    /// in the background (the video plays meanwhile, and on if they cannot be loaded).
    pub fn open(
        source: &str,
        models: &[String],
        loader: ModelLoader,
        facts: FactsMap,
        ctx: &egui::Context,
        start_paused: bool,
        looping: bool,
    ) -> anyhow::Result<Self> {
        let spec = SourceSpec::parse(source)?;
        let mut config = PipelineConfig::new(vec![NO_MODEL.to_string()], Arc::clone(&loader));
        config.policy = Some(Policy::Live);
        config.realtime = true;
        config.start_paused = start_paused;
        config.looping = looping;
        let pipeline = Pipeline::start(spec, config)?;
        let info = pipeline.info().clone();
        let events = forward_events(pipeline.events().clone(), ctx.clone())?;
        let mut player = Self {
            source: source.to_string(),
            pipeline: Some(pipeline),
            events,
            info: Some(info),
            latest: None,
            fresh_frame: false,
            paused: start_paused,
            finished: false,
            stats: None,
            stats_at: None,
            profile: None,
            slots: vec![SlotState::NoModel],
            wanted: Vec::new(),
            notices: Vec::new(),
            loader,
            facts,
            agreement: BTreeMap::new(),
        };
        player.set_models(models);
        if start_paused {
            player.send(Command::Step);
        }
        Ok(player)
    }

    pub fn send(&self, command: Command) {
        if let Some(p) = &self.pipeline {
            p.send(command);
        }
    }

    /// Runs `models` (1 to 4; slot 0 is the main model), loading the changed ones.
    pub fn set_models(&mut self, models: &[String]) {
        let models: Vec<String> = models.iter().take(spotter_pipeline::runner::MAX_MODELS).cloned().collect();
        if models.is_empty() || models == self.wanted {
            return;
        }
        self.agreement.clear();
        if models.len() == 1 && self.wanted.len() <= 1 {
            self.send(Command::SwitchModel { slot: 0, model: models[0].clone() });
        } else {
            self.send(Command::Compare(models.clone()));
        }
        let mut slots = Vec::with_capacity(models.len());
        for (i, m) in models.iter().enumerate() {
            let same = self.wanted.get(i) == Some(m);
            slots.push(match self.slots.get(i) {
                Some(s) if same => s.clone(),
                _ if m == NO_MODEL => SlotState::NoModel,
                _ => SlotState::Loading(m.clone()),
            });
        }
        self.slots = slots;
        self.wanted = models;
    }

    /// Loads every wanted model again (new device or input size).
    pub fn reload_models(&mut self) {
        let models = std::mem::take(&mut self.wanted);
        for (slot, m) in models.iter().enumerate() {
            self.send(Command::SwitchModel { slot, model: m.clone() });
            if let Some(s) = self.slots.get_mut(slot)
                && m != NO_MODEL
            {
                *s = SlotState::Loading(m.clone());
            }
        }
        self.wanted = models;
    }

    /// Restarts the source from the beginning with the same models (play after the end).
    pub fn restart(&mut self, ctx: &egui::Context, looping: bool) -> anyhow::Result<()> {
        let wanted = self.wanted.clone();
        let latest = self.latest.take();
        let notices = std::mem::take(&mut self.notices);
        self.pipeline = None; // stop the old one first
        let mut next =
            Self::open(&self.source, &wanted, Arc::clone(&self.loader), Arc::clone(&self.facts), ctx, false, looping)?;
        next.latest = latest;
        next.notices = notices;
        *self = next;
        Ok(())
    }

    pub fn toggle_pause(&mut self) {
        if self.paused {
            self.send(Command::Resume);
        } else {
            self.send(Command::Pause);
        }
        self.paused = !self.paused;
    }

    /// The playing position in seconds.
    pub fn position_secs(&self) -> f64 {
        self.latest.as_ref().map_or(0.0, |f| f.frame.pts_secs)
    }

    /// Takes the pipeline's events; returns true when the source ended.
    pub fn poll(&mut self) -> bool {
        let mut ended = false;
        let events: Vec<Event> = self.events.try_iter().take(512).collect();
        for event in events {
            match event {
                Event::Frame(f) => {
                    // A slot whose results now come from another model has finished loading
                    // (the pipeline may drop the ModelLoaded event when the window lags).
                    let previous = self.latest.as_ref().map(|l| l.results.iter().map(|r| r.model.clone()).collect());
                    let previous: Vec<String> = previous.unwrap_or_default();
                    for (slot, r) in f.results.iter().enumerate() {
                        if previous.get(slot) != Some(&r.model)
                            && r.model != NO_MODEL
                            && let Some(s) = self.slots.get_mut(slot)
                            && let SlotState::Loading(m) = s
                        {
                            *s = SlotState::Ready(m.clone());
                        }
                    }
                    if let Some(p) = f.results.first().and_then(|r| r.profile.clone()) {
                        self.profile = Some(p);
                    }
                    self.count_agreement(&f);
                    self.latest = Some(f);
                    self.fresh_frame = true;
                }
                Event::ModelLoaded { slot, model } => {
                    if let Some(s) = self.slots.get_mut(slot) {
                        *s = if model == NO_MODEL { SlotState::NoModel } else { SlotState::Ready(model.clone()) };
                    }
                    self.notices.retain(|n| n.missing_model.as_deref() != Some(model.as_str()));
                }
                Event::ModelLoadFailed { slot, model, error } => {
                    let missing = error.contains(&missing_message(&model)).then(|| model.clone());
                    if let Some(s) = self.slots.get_mut(slot) {
                        // The old model keeps running; for a first load that is the pass-through.
                        if matches!(s, SlotState::Loading(m) if *m == model) {
                            *s = SlotState::NoModel;
                        }
                    }
                    self.push_notice(Notice { text: error, error: true, missing_model: missing });
                }
                Event::Warning(w) => self.push_notice(Notice { text: w, error: false, missing_model: None }),
                Event::Error(e) => self.push_notice(Notice { text: e, error: true, missing_model: None }),
                Event::Finished(s) => {
                    self.stats = Some(s);
                    self.finished = true;
                    ended = true;
                }
                Event::Progress { .. } => {}
            }
        }
        if let Some(p) = &self.pipeline
            && self.stats_at.is_none_or(|t| t.elapsed() > Duration::from_millis(250))
            && !self.finished
        {
            self.stats = Some(p.stats());
            self.stats_at = Some(Instant::now());
        }
        ended
    }

    pub fn push_notice(&mut self, notice: Notice) {
        if !self.notices.contains(&notice) {
            self.notices.push(notice);
        }
        if self.notices.len() > 5 {
            self.notices.remove(0);
        }
    }

    /// In compare mode, how many of the largest model's boxes each other model also found.
    fn count_agreement(&mut self, f: &FrameResult) {
        if f.results.len() < 2 {
            return;
        }
        let Some(reference) = self.largest_model_index(f) else { return };
        let reference_dets = &f.results[reference].detections;
        for (i, r) in f.results.iter().enumerate() {
            if i == reference {
                continue;
            }
            let matched = reference_dets
                .iter()
                .filter(|a| r.detections.iter().any(|b| b.class_id == a.class_id && iou(&a.bbox, &b.bbox) >= 0.5))
                .count();
            let e = self.agreement.entry(r.model.clone()).or_default();
            e.0 += matched as u64;
            e.1 += reference_dets.len() as u64;
        }
    }

    /// The model of the result with the most parameters (as recorded when loaded); the last slot otherwise.
    pub fn largest_model_index(&self, f: &FrameResult) -> Option<usize> {
        let params: BTreeMap<String, usize> =
            self.facts.lock().map(|m| m.iter().map(|(k, v)| (k.clone(), v.params)).collect()).unwrap_or_default();
        largest_by(f.results.iter().map(|r| r.model.as_str()), &params)
    }
}

/// The index of the name with the most parameters in `params`; the last one when none is known.
pub fn largest_by<'a>(names: impl Iterator<Item = &'a str>, params: &BTreeMap<String, usize>) -> Option<usize> {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        return None;
    }
    let best = names.iter().enumerate().filter_map(|(i, n)| params.get(*n).map(|p| (i, *p))).max_by_key(|(_, p)| *p);
    Some(best.map_or(names.len() - 1, |(i, _)| i))
}

pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Moves the pipeline's events to the UI thread and wakes the window for each.
fn forward_events(from: Receiver<Event>, ctx: egui::Context) -> anyhow::Result<Receiver<Event>> {
    let (tx, rx) = bounded::<Event>(256);
    std::thread::Builder::new().name("spotter-gui-events".into()).spawn(move || {
        for event in from.iter() {
            let delivered = match event {
                // The window only shows the newest frame: never wait for it to catch up.
                Event::Frame(_) => !matches!(tx.try_send(event), Err(crossbeam_channel::TrySendError::Disconnected(_))),
                other => tx.send_timeout(other, Duration::from_secs(1)).is_ok() || !tx.is_empty(),
            };
            ctx.request_repaint();
            if !delivered {
                break;
            }
        }
        ctx.request_repaint();
    })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_model_is_the_one_with_most_parameters() {
        let params = BTreeMap::from([("a".to_string(), 10), ("b".to_string(), 30), ("c".to_string(), 20)]);
        assert_eq!(largest_by(["a", "b", "c"].into_iter(), &params), Some(1));
        assert_eq!(largest_by(["x", "y"].into_iter(), &BTreeMap::new()), Some(1));
        assert_eq!(largest_by(std::iter::empty(), &params), None);
    }

    #[test]
    fn iou_of_boxes() {
        assert_eq!(iou(&[0.0, 0.0, 2.0, 2.0], &[0.0, 0.0, 2.0, 2.0]), 1.0);
        assert_eq!(iou(&[0.0, 0.0, 2.0, 2.0], &[2.0, 2.0, 4.0, 4.0]), 0.0);
        assert!((iou(&[0.0, 0.0, 2.0, 2.0], &[1.0, 0.0, 3.0, 2.0]) - 1.0 / 3.0).abs() < 1e-6);
    }
}
