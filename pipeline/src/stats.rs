//! Running statistics: frame rates, drops, and p50/p95 latency of every stage.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Samples kept per latency window.
const WINDOW: usize = 512;

/// The stages a frame goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Decode,
    Preprocess,
    Inference,
    Postprocess,
    /// Annotation, encoding and JSON Lines.
    Output,
    /// Frame decoded → result ready.
    EndToEnd,
}

pub const STAGES: [Stage; 6] =
    [Stage::Decode, Stage::Preprocess, Stage::Inference, Stage::Postprocess, Stage::Output, Stage::EndToEnd];

/// The last [`WINDOW`] samples of one latency, in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct LatencyWindow {
    samples: VecDeque<f64>,
    sorted: Vec<f64>,
}

impl LatencyWindow {
    pub fn push(&mut self, ms: f64) {
        if self.samples.len() == WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(ms);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// (p50, p95) by nearest rank; zeros when empty.
    pub fn percentiles(&mut self) -> (f64, f64) {
        if self.samples.is_empty() {
            return (0.0, 0.0);
        }
        self.sorted.clear();
        self.sorted.extend(self.samples.iter().copied());
        self.sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = ((q * self.sorted.len() as f64).ceil() as usize).clamp(1, self.sorted.len());
            self.sorted[rank - 1]
        };
        (at(0.5), at(0.95))
    }
}

/// Events per second over the last two seconds.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    times: VecDeque<Instant>,
}

impl RateMeter {
    pub fn tick(&mut self, now: Instant) {
        self.times.push_back(now);
        while self.times.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(2)) {
            self.times.pop_front();
        }
    }

    pub fn per_sec(&self) -> f64 {
        match (self.times.front(), self.times.back()) {
            (Some(a), Some(b)) if self.times.len() > 1 => {
                let span = b.duration_since(*a).as_secs_f64();
                if span > 0.0 { (self.times.len() - 1) as f64 / span } else { 0.0 }
            }
            _ => 0.0,
        }
    }
}

/// Statistics of one model.
#[derive(Debug, Clone, Default)]
pub struct ModelStats {
    pub frames: u64,
    pub detections: u64,
    pub per_class: BTreeMap<String, u64>,
    pub rate: RateMeter,
    pub latency: BTreeMap<Stage, LatencyWindow>,
}

/// Statistics of a whole run, shared by the pipeline's threads.
#[derive(Debug, Clone)]
pub struct PipelineStats {
    pub started: Instant,
    pub frames_in: u64,
    pub frames_out: u64,
    /// Stale frames the live policy dropped before detection.
    pub dropped: u64,
    pub decode_errors: u64,
    pub reconnects: u64,
    pub rate_in: RateMeter,
    pub rate_out: RateMeter,
    pub latency: BTreeMap<Stage, LatencyWindow>,
    pub models: BTreeMap<String, ModelStats>,
    /// CPU time of each pipeline thread that has ended, by thread name.
    pub thread_cpu_ms: BTreeMap<String, f64>,
}

impl Default for PipelineStats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            frames_in: 0,
            frames_out: 0,
            dropped: 0,
            decode_errors: 0,
            reconnects: 0,
            rate_in: RateMeter::default(),
            rate_out: RateMeter::default(),
            latency: BTreeMap::new(),
            models: BTreeMap::new(),
            thread_cpu_ms: BTreeMap::new(),
        }
    }
}

/// p50 and p95 of one stage.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StageLatency {
    pub stage: Stage,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

/// A model's numbers at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelSnapshot {
    pub model: String,
    pub frames: u64,
    pub fps: f64,
    pub detections: u64,
    pub per_class: BTreeMap<String, u64>,
    pub stages: Vec<StageLatency>,
}

/// The pipeline's numbers at one moment (also the end-of-run summary).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatsSnapshot {
    pub elapsed_secs: f64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub dropped: u64,
    pub decode_errors: u64,
    pub reconnects: u64,
    pub fps_in: f64,
    pub fps_out: f64,
    /// Frames out per second over the whole run.
    pub average_fps: f64,
    pub stages: Vec<StageLatency>,
    pub models: Vec<ModelSnapshot>,
    /// CPU time of each pipeline thread (`spotter-decode`, `spotter-detect`, `spotter-sink`),
    /// filled in as each ends (so complete in the summary `Pipeline::wait` returns); empty
    /// where the system does not say (Linux only).
    pub thread_cpu_ms: BTreeMap<String, f64>,
}

/// CPU time the calling thread has run so far, in milliseconds: the first field of Linux's
/// `/proc/thread-self/schedstat` (nanoseconds on the CPU). None elsewhere.
pub fn thread_cpu_ms() -> Option<f64> {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e6)
}

fn summarize(map: &mut BTreeMap<Stage, LatencyWindow>) -> Vec<StageLatency> {
    STAGES
        .iter()
        .filter_map(|s| {
            map.get_mut(s).filter(|w| !w.is_empty()).map(|w| {
                let (p50_ms, p95_ms) = w.percentiles();
                StageLatency { stage: *s, p50_ms, p95_ms }
            })
        })
        .collect()
}

impl PipelineStats {
    pub fn record(&mut self, stage: Stage, ms: f64) {
        self.latency.entry(stage).or_default().push(ms);
    }

    pub fn model(&mut self, name: &str) -> &mut ModelStats {
        self.models.entry(name.to_string()).or_default()
    }

    pub fn snapshot(&mut self) -> StatsSnapshot {
        let elapsed_secs = self.started.elapsed().as_secs_f64();
        let models = self
            .models
            .iter_mut()
            .map(|(name, m)| ModelSnapshot {
                model: name.clone(),
                frames: m.frames,
                fps: m.rate.per_sec(),
                detections: m.detections,
                per_class: m.per_class.clone(),
                stages: summarize(&mut m.latency),
            })
            .collect();
        StatsSnapshot {
            elapsed_secs,
            frames_in: self.frames_in,
            frames_out: self.frames_out,
            dropped: self.dropped,
            decode_errors: self.decode_errors,
            reconnects: self.reconnects,
            fps_in: self.rate_in.per_sec(),
            fps_out: self.rate_out.per_sec(),
            average_fps: if elapsed_secs > 0.0 { self.frames_out as f64 / elapsed_secs } else { 0.0 },
            stages: summarize(&mut self.latency),
            models,
            thread_cpu_ms: self.thread_cpu_ms.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut w = LatencyWindow::default();
        for i in 1..=100 {
            w.push(f64::from(i));
        }
        assert_eq!(w.percentiles(), (50.0, 95.0));
        for _ in 0..WINDOW {
            w.push(7.0);
        }
        assert_eq!(w.len(), WINDOW);
        assert_eq!(w.percentiles(), (7.0, 7.0));
    }

    /// A thread's CPU time grows by what it spins, and not while it sleeps.
    #[test]
    fn thread_cpu_time_counts_running_only() {
        let Some(start) = thread_cpu_ms() else {
            return; // not Linux
        };
        std::thread::sleep(Duration::from_millis(60));
        let slept = thread_cpu_ms().unwrap_or(f64::NAN) - start;
        let busy = Instant::now();
        while busy.elapsed() < Duration::from_millis(60) {
            std::hint::spin_loop();
        }
        let spun = thread_cpu_ms().unwrap_or(f64::NAN) - start - slept;
        assert!(slept < 20.0, "asleep 60 ms, counted {slept:.1} ms");
        // Spinning for 60 ms of wall time runs at least part of it even on a busy machine.
        assert!(spun > 5.0 && spun <= 65.0, "spun 60 ms, counted {spun:.1} ms");
    }

    #[test]
    fn rate_meter_counts_per_second() {
        let mut r = RateMeter::default();
        let t0 = Instant::now();
        for i in 0..11 {
            r.tick(t0 + Duration::from_millis(100 * i));
        }
        assert!((r.per_sec() - 10.0).abs() < 1e-6);
    }
}
