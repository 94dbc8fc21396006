//! `spotter detect` on video files, streams and cameras: the threaded pipeline with a
//! progress bar on a terminal and a summary at the end.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use spotter_detector::LetterboxMode;
use spotter_pipeline::stats::StatsSnapshot;
use spotter_pipeline::{Event, FrameDetector, ModelLoader, OutputConfig, Pipeline, PipelineConfig, SourceSpec};

use super::detect::DetectArgs;

pub fn run(spec: SourceSpec, args: DetectArgs) -> Result<()> {
    let options = args.model_args.options(args.nms(), LetterboxMode::MinimalRect)?;
    let loader: ModelLoader = Arc::new(move |name: &str| {
        let d = crate::weights::load_detector(name, options.clone())
            .map_err(|e| spotter_pipeline::Error::Model(format!("{e:#}")))?;
        Ok(Box::new(d) as Box<dyn FrameDetector>)
    });
    let mut config = PipelineConfig::new(args.models(), loader);
    config.max_frames = args.max_frames.map(|n| n as u64);
    config.output = OutputConfig { video: args.out.clone(), jsonl: args.json.clone(), keep_audio: !args.no_audio };
    let pipeline = Pipeline::start(spec, config)?;
    let info = pipeline.info().clone();
    let live = info.live;
    let tty = std::io::stderr().is_terminal();
    // Ctrl-C is not caught: the MP4 is fragmented, so a file cut short still plays.
    let mut last_err = None;
    let mut finished: Option<StatsSnapshot> = None;
    loop {
        match pipeline.events().recv_timeout(Duration::from_millis(500)) {
            Ok(Event::Progress { frames_done, total, eta_secs }) => {
                if tty {
                    progress_bar(frames_done, total, eta_secs, &pipeline.stats());
                }
            }
            Ok(Event::Warning(w)) => eprintln!("warning: {w}"),
            Ok(Event::Error(e)) => last_err = Some(e),
            Ok(Event::Finished(s)) => {
                finished = Some(s);
                break;
            }
            Ok(_) => {}
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    if tty {
        eprint!("\r\x1b[2K");
    }
    let summary = match pipeline.wait() {
        Ok(s) => s,
        Err(e) => bail!(last_err.unwrap_or_else(|| e.to_string())),
    };
    let summary =
        finished.map(|f| if f.frames_out >= summary.frames_out { f } else { summary.clone() }).unwrap_or(summary);
    if let Some(e) = last_err {
        bail!(e);
    }
    print_summary(&summary, live);
    if summary.frames_out == 0 {
        bail!("{}: no frame could be decoded", info.name);
    }
    if let Some(out) = &args.out {
        eprintln!("annotated video: {}", out.display());
    }
    if let Some(json) = &args.json {
        std::fs::metadata(json).with_context(|| format!("cannot write {}", json.display()))?;
    }
    Ok(())
}

fn progress_bar(done: u64, total: Option<u64>, eta_secs: Option<f64>, stats: &StatsSnapshot) {
    let width = 30usize;
    let line = match total {
        Some(t) if t > 0 => {
            let filled = ((done as f64 / t as f64) * width as f64).round() as usize;
            let eta = eta_secs.map(|e| format!("  ETA {e:.0}s")).unwrap_or_default();
            format!(
                "[{}{}] {done}/{t} frames  {:.1} fps{eta}",
                "=".repeat(filled.min(width)),
                " ".repeat(width - filled.min(width)),
                stats.fps_out
            )
        }
        _ => format!("{done} frames  {:.1} fps  {} dropped", stats.fps_out, stats.dropped),
    };
    eprint!("\r\x1b[2K{line}");
    let _ = std::io::stderr().flush();
}

fn print_summary(s: &StatsSnapshot, live: bool) {
    eprintln!(
        "{} frame(s) in {:.1} s ({:.1} fps){}{}{}",
        s.frames_out,
        s.elapsed_secs,
        s.average_fps,
        if live || s.dropped > 0 { format!(", {} dropped", s.dropped) } else { String::new() },
        if s.decode_errors > 0 { format!(", {} decode error(s)", s.decode_errors) } else { String::new() },
        if s.reconnects > 0 { format!(", {} reconnect(s)", s.reconnects) } else { String::new() },
    );
    for m in &s.models {
        let classes: Vec<String> = m.per_class.iter().map(|(k, v)| format!("{k} {v}")).collect();
        eprintln!(
            "  {}: {} detection(s){}{}",
            m.model,
            m.detections,
            if classes.is_empty() { "" } else { ": " },
            classes.join(", ")
        );
    }
    let stages: Vec<String> =
        s.stages.iter().map(|l| format!("{:?} {:.1}/{:.1}", l.stage, l.p50_ms, l.p95_ms).to_lowercase()).collect();
    eprintln!("  latency p50/p95 ms: {}", stages.join(", "));
}
