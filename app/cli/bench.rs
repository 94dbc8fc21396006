//! `spotter bench`: forward-pass latency per model and input size, optionally per layer.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use spotter_detector::model::LayerTiming;
use spotter_detector::{Detector, LetterboxMode, NmsOptions};

use super::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Models to measure (names or files); repeat the flag for several.
    #[arg(long = "model")]
    models: Vec<String>,
    #[command(flatten)]
    model_args: ModelArgs,
    /// Timed forward passes per model.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Untimed passes first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Also time every top-level layer (median over the runs).
    #[arg(long)]
    per_layer: bool,
    /// One JSON object per model on stdout.
    #[arg(long)]
    json: bool,
    /// Measure a built-in architecture with random weights (no download needed; speed does
    /// not depend on the weight values).
    #[arg(long)]
    random_weights: bool,
    /// Also run the whole pipeline (decode, detect, annotate, encode) on this clip and compare
    /// its frame rate with the detector alone on the same frames, in the same run.
    #[arg(long)]
    pipeline: Option<std::path::PathBuf>,
    /// Frames of the clip to use with --pipeline.
    #[arg(long, default_value_t = 50)]
    frames: u64,
    /// With --pipeline: the detector alone and the whole pipeline alternate this many times,
    /// and the overhead reported is the median of the rounds' (on a shared machine single runs
    /// move by 15 % and more).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// First measure an N x N x N matrix product in the models' precision on the device (the
    /// reference for the "% of matmul" column: the fraction of it the models achieve).
    #[arg(long, value_name = "N")]
    matmul: Option<usize>,
}

#[derive(serde::Serialize)]
struct LayerRow {
    index: usize,
    module: &'static str,
    shape: Vec<usize>,
    ms: f64,
}

#[derive(serde::Serialize)]
struct BenchResult {
    model: String,
    imgsz: u32,
    batch: usize,
    device: String,
    dtype: String,
    threads: usize,
    runs: usize,
    p50_ms: f64,
    p95_ms: f64,
    mean_ms: f64,
    /// The fastest pass: on a machine shared with other work, the least disturbed estimate
    /// (what `scripts/bench-vs-onnxruntime.py` compares besides the medians).
    min_ms: f64,
    params: usize,
    gflops: f64,
    /// Peak resident memory of the process (VmHWM), when the OS reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_mb: Option<f64>,
    /// Resident memory after the timed runs minus after the warm-up: stays near 0 when
    /// frames allocate nothing that grows.
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_growth_mb: Option<f64>,
    /// Model GFLOPs x batch / p50, and its fraction of the measured matrix product (`--matmul`).
    achieved_gflops: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    matmul_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<LayerRow>>,
}

/// One matrix product measurement (`--matmul N`).
#[derive(serde::Serialize)]
struct MatmulResult {
    matmul: usize,
    device: String,
    dtype: String,
    runs: usize,
    p50_ms: f64,
    tflops: f64,
}

/// The value below which `q` of the sorted samples lie (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A `/proc/self/status` field in MiB (`VmRSS`, `VmHWM`); None where there is no procfs.
fn proc_status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line[field.len()..].trim_start_matches(':').split_whitespace().next()?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Times an n x n x n product of random matrices on the device the models run on, in their dtype.
fn bench_matmul(n: usize, args: &BenchArgs) -> Result<MatmulResult> {
    let options = args.model_args.options(NmsOptions::default(), LetterboxMode::Square)?;
    let device = options.device.open()?;
    let dtype = spotter_detector::detector::dtype_for(options.precision, &device)?;
    // Random values (never zeros: they can run faster than real data).
    let a = Tensor::randn(0f32, 1.0, (n, n), &device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &device)?.to_dtype(dtype)?;
    for _ in 0..3 {
        a.matmul(&b)?;
    }
    device.synchronize()?;
    let runs = 10;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        a.matmul(&b)?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let p50_ms = percentile(&times, 0.5);
    Ok(MatmulResult {
        matmul: n,
        device: spotter_detector::detector::device_name(&device),
        dtype: format!("{dtype:?}").to_lowercase(),
        runs,
        p50_ms,
        tflops: 2.0 * (n as f64).powi(3) / (p50_ms / 1e3) / 1e12,
    })
}

fn bench_one(name: &str, args: &BenchArgs, matmul_tflops: Option<f64>) -> Result<BenchResult> {
    let options = args.model_args.options(NmsOptions::default(), LetterboxMode::Square)?;
    let imgsz = options.imgsz as usize;
    let mut det = if args.random_weights {
        Detector::synthetic(name, options)?
    } else {
        crate::weights::load_detector(name, options)?
    };
    // Speed does not depend on the pixel values; a fixed pattern keeps runs comparable.
    let n = args.batch * 3 * imgsz * imgsz;
    let pattern: Vec<f32> = (0..n).map(|i| ((i * 7919) % 255) as f32 / 255.0).collect();
    // Uploaded and converted once: the passes time the network, not the host-to-device copy.
    let input = Tensor::from_vec(pattern, (args.batch, 3, imgsz, imgsz), &Device::Cpu)?
        .to_device(det.device())?
        .to_dtype(det.dtype())?;
    for _ in 0..args.warmup {
        det.forward(&input)?;
    }
    let mut times = Vec::with_capacity(args.runs);
    let rss_after_warmup = proc_status_mb("VmRSS");
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        det.forward(&input)?;
        det.device().synchronize()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let rss_growth_mb = rss_after_warmup.zip(proc_status_mb("VmRSS")).map(|(a, b)| b - a);
    let layers = if args.per_layer {
        det.set_profiling(true);
        let mut per_layer: Vec<Vec<LayerTiming>> = Vec::new();
        for _ in 0..args.runs.clamp(1, 10) {
            det.forward(&input)?;
            per_layer.push(det.last_profile().to_vec());
        }
        det.set_profiling(false);
        let first = per_layer.first().cloned().unwrap_or_default();
        Some(
            first
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let mut ms: Vec<f64> = per_layer.iter().filter_map(|run| run.get(i).map(|r| r.ms)).collect();
                    ms.sort_by(f64::total_cmp);
                    LayerRow { index: l.index, module: l.module, shape: l.shape.clone(), ms: percentile(&ms, 0.5) }
                })
                .collect(),
        )
    } else {
        None
    };
    let mean_ms = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    let info = det.info();
    let p50_ms = percentile(&times, 0.5);
    let gflops = info.gflops_640 * (imgsz as f64 / 640.0).powi(2);
    let achieved_gflops = gflops * args.batch as f64 / (p50_ms / 1e3);
    Ok(BenchResult {
        model: info.variant.clone(),
        imgsz: imgsz as u32,
        batch: args.batch,
        device: info.device.clone(),
        dtype: info.dtype.clone(),
        threads: candle_core::utils::get_num_threads(),
        runs: times.len(),
        p50_ms,
        p95_ms: percentile(&times, 0.95),
        mean_ms,
        min_ms: times.first().copied().unwrap_or(f64::NAN),
        params: info.params,
        gflops,
        achieved_gflops,
        matmul_fraction: matmul_tflops.map(|t| achieved_gflops / (t * 1e3)),
        rss_mb: proc_status_mb("VmHWM"),
        rss_growth_mb,
        layers,
    })
}

/// Frames at the start of a pipeline run left out of its steady-state rate: while they pass,
/// the decoder fills its queue and the encoder sets up (its first frames cost it most).
const STEADY_SKIP_FRAMES: usize = 5;

/// Frames of the untimed pipeline run before the rounds.
const PIPELINE_WARMUP_FRAMES: usize = 8;

/// One round of `bench --pipeline`.
#[derive(serde::Serialize)]
struct PipelineRound {
    detector_fps: f64,
    /// Frames over the whole run: opening the clip, the first frame's latency and finishing
    /// the MP4 included.
    pipeline_fps: f64,
    overhead_pct: f64,
    /// Frames after the first [`STEADY_SKIP_FRAMES`], between their outputs: the pipeline's
    /// throughput once it runs (what an export of a long video sees).
    steady_fps: Option<f64>,
    steady_overhead_pct: Option<f64>,
    /// CPU time of the decoder thread per frame (opening the clip, decoding, converting to
    /// RGB) and of the sink (annotating, converting, encoding, JSON Lines, finishing the file):
    /// the work the pipeline adds to the detector's.
    decoder_cpu_ms_per_frame: Option<f64>,
    sink_cpu_ms_per_frame: Option<f64>,
    /// Their sum as a share of the cores' time the detector takes alone per frame: the
    /// overhead if none of that work fit into moments the detector leaves a core idle.
    /// Overhead beyond it is the pipeline's own cost (waiting, copies, threads getting in
    /// each other's way).
    codec_share_pct: Option<f64>,
}

/// The detector alone on the clip's decoded frames, then the whole pipeline on the same clip,
/// alternating for `--rounds` rounds, after a warm-up of each.
fn bench_pipeline(name: &str, clip: &std::path::Path, args: &BenchArgs) -> Result<()> {
    use spotter_pipeline::source::{FrameSource, OpenOptions, VideoSource};
    use spotter_pipeline::{FrameDetector, ModelLoader, OutputConfig, Pipeline, PipelineConfig, SourceSpec};

    let options = args.model_args.options(NmsOptions::default(), LetterboxMode::MinimalRect)?;
    let load = {
        let options = options.clone();
        let random = args.random_weights;
        move |name: &str| -> Result<Detector> {
            Ok(if random {
                Detector::synthetic(name, options.clone())?
            } else {
                crate::weights::load_detector(name, options.clone())?
            })
        }
    };
    // Decode first, so the detector-alone run measures detection only.
    let mut source = VideoSource::open(&clip.to_string_lossy(), &OpenOptions::file())?;
    let mut frames = Vec::new();
    while frames.len() < args.frames as usize {
        match source.next_frame()? {
            Some(f) => frames.push(f.image),
            None => break,
        }
    }
    if frames.is_empty() {
        anyhow::bail!("{}: no frames", clip.display());
    }
    let mut det = load(name)?;
    det.detect(&frames[0])?; // warm-up
    let dir = std::env::temp_dir().join(format!("spotter-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Each pipeline run takes a detector loaded before its clock starts, so that the overhead
    // does not include loading the model.
    let preloaded: Arc<Mutex<Option<Detector>>> = Arc::default();
    let loader: ModelLoader = {
        let preloaded = Arc::clone(&preloaded);
        let load = load.clone();
        Arc::new(move |n: &str| {
            let ready = preloaded.lock().unwrap_or_else(|p| p.into_inner()).take();
            match ready {
                Some(d) => Ok(Box::new(d) as Box<dyn FrameDetector>),
                None => load(n)
                    .map(|d| Box::new(d) as Box<dyn FrameDetector>)
                    .map_err(|e| spotter_pipeline::Error::Model(format!("{e:#}"))),
            }
        })
    };
    // One whole pipeline over `n` frames: its start, when each frame's outputs were written,
    // and its summary.
    let run_pipeline = |n: usize| -> Result<(Instant, Vec<Instant>, spotter_pipeline::StatsSnapshot)> {
        // Loaded and warmed up like `det` above (its first pass transforms weights and sizes
        // buffers), so that both runs time the same steady state.
        let mut ready = load(name)?;
        ready.detect(&frames[0])?;
        *preloaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(ready);
        let mut config = PipelineConfig::new(vec![name.to_string()], Arc::clone(&loader));
        config.max_frames = Some(n as u64);
        config.output =
            OutputConfig { video: Some(dir.join("bench.mp4")), jsonl: Some(dir.join("bench.jsonl")), keep_audio: true };
        let t = Instant::now();
        let pipeline = Pipeline::start(SourceSpec::File(clip.to_path_buf()), config)?;
        // The sink sends a frame's event right after writing its outputs. The channel closes
        // when the pipeline's threads end.
        let written: Vec<Instant> = pipeline
            .events()
            .iter()
            .filter(|e| matches!(e, spotter_pipeline::Event::Frame(_)))
            .map(|_| Instant::now())
            .collect();
        Ok((t, written, pipeline.wait()?))
    };
    // A pipeline warm-up, as `det` had one. The first pipeline of a process gives its detector
    // thread memory the process never had (the main thread keeps its own): its first frame took
    // 35-70 ms longer, once per process, and the first round stood out from the others.
    let warmup_frames = frames.len().min(PIPELINE_WARMUP_FRAMES);
    // The detector's CPU threads, whose time per frame the codecs' share is measured against.
    let threads = candle_core::utils::get_num_threads();
    run_pipeline(warmup_frames)?;
    let mut rounds = Vec::with_capacity(args.rounds.max(1));
    let mut stages = serde_json::Value::Null;
    for _ in 0..args.rounds.max(1) {
        let t = Instant::now();
        for f in &frames {
            det.detect(f)?;
        }
        let alone_fps = frames.len() as f64 / t.elapsed().as_secs_f64();

        let (t, written, summary) = run_pipeline(frames.len())?;
        let pipeline_fps = summary.frames_out as f64 / t.elapsed().as_secs_f64();
        stages = serde_json::to_value(&summary.stages)?;
        let overhead_pct = (alone_fps / pipeline_fps - 1.0) * 100.0;
        let steady_fps = match (written.get(STEADY_SKIP_FRAMES), written.last()) {
            (Some(first), Some(last)) if last > first => {
                Some((written.len() - 1 - STEADY_SKIP_FRAMES) as f64 / (*last - *first).as_secs_f64())
            }
            _ => None,
        };
        let steady_overhead_pct = steady_fps.map(|f| (alone_fps / f - 1.0) * 100.0);
        let per_frame =
            |thread: &str| summary.thread_cpu_ms.get(thread).map(|ms| ms / summary.frames_out.max(1) as f64);
        let (decoder_cpu_ms_per_frame, sink_cpu_ms_per_frame) =
            (per_frame("spotter-decode"), per_frame("spotter-sink"));
        let cores_ms_per_frame = threads as f64 * 1e3 / alone_fps;
        let codec_share_pct =
            decoder_cpu_ms_per_frame.zip(sink_cpu_ms_per_frame).map(|(d, s)| (d + s) / cores_ms_per_frame * 100.0);
        rounds.push(PipelineRound {
            detector_fps: alone_fps,
            pipeline_fps,
            overhead_pct,
            steady_fps,
            steady_overhead_pct,
            decoder_cpu_ms_per_frame,
            sink_cpu_ms_per_frame,
            codec_share_pct,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The middle round (the upper one of the two middle ones for an even count).
    let median = |value: fn(&PipelineRound) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(value).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let alone_fps = median(|r| r.detector_fps);
    let pipeline_fps = median(|r| r.pipeline_fps);
    let overhead_pct = median(|r| r.overhead_pct);
    let steady = rounds.iter().all(|r| r.steady_fps.is_some());
    let steady_fps = steady.then(|| median(|r| r.steady_fps.unwrap_or(f64::NAN)));
    let steady_overhead_pct = steady.then(|| median(|r| r.steady_overhead_pct.unwrap_or(f64::NAN)));
    let measured_cpu = rounds.iter().all(|r| r.codec_share_pct.is_some());
    let decoder_cpu_ms = measured_cpu.then(|| median(|r| r.decoder_cpu_ms_per_frame.unwrap_or(f64::NAN)));
    let sink_cpu_ms = measured_cpu.then(|| median(|r| r.sink_cpu_ms_per_frame.unwrap_or(f64::NAN)));
    let codec_share_pct = measured_cpu.then(|| median(|r| r.codec_share_pct.unwrap_or(f64::NAN)));
    let each: Vec<String> = rounds.iter().map(|r| format!("{:+.1}", r.overhead_pct)).collect();
    let row = serde_json::json!({
        "model": name, "clip": clip.display().to_string(), "frames": frames.len(),
        "detector_fps": alone_fps, "pipeline_fps": pipeline_fps, "overhead_pct": overhead_pct,
        "warmup_frames": warmup_frames,
        "steady_skip_frames": STEADY_SKIP_FRAMES, "steady_fps": steady_fps,
        "steady_overhead_pct": steady_overhead_pct, "decoder_cpu_ms_per_frame": decoder_cpu_ms,
        "sink_cpu_ms_per_frame": sink_cpu_ms,
        "codec_share_pct": codec_share_pct, "rounds": rounds, "stages": stages,
    });
    if args.json {
        outln!("{row}")?;
    } else {
        outln!(
            "{name}: detector alone {alone_fps:.2} fps, whole pipeline {pipeline_fps:.2} fps on {} frames of {}: overhead {overhead_pct:+.1} % (median of {} alternating rounds: {} %)",
            frames.len(),
            clip.display(),
            each.len(),
            each.join(", ")
        )?;
        if let (Some(fps), Some(pct)) = (steady_fps, steady_overhead_pct) {
            let each: Vec<String> =
                rounds.iter().filter_map(|r| r.steady_overhead_pct).map(|p| format!("{p:+.1}")).collect();
            outln!(
                "{name}: steady state (after the first {STEADY_SKIP_FRAMES} frames, without opening the clip and finishing the file): pipeline {fps:.2} fps, overhead {pct:+.1} % (rounds: {} %)",
                each.join(", ")
            )?;
        }
        if let (Some(decoder), Some(sink), Some(pct)) = (decoder_cpu_ms, sink_cpu_ms, codec_share_pct) {
            outln!(
                "{name}: the decoder used {decoder:.1} ms of CPU a frame and the sink {sink:.1} ms: {pct:.1} % of the time of the {threads} cores the detector takes alone (the overhead if none of it fit into the detector's idle moments)",
            )?;
        }
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> Result<()> {
    let models = if args.models.is_empty() {
        vec![super::default_model(&args.model_args.device).to_string()]
    } else {
        args.models.clone()
    };
    if args.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    if let Some(clip) = &args.pipeline {
        for name in &models {
            bench_pipeline(name, clip, &args)?;
        }
        return Ok(());
    }
    let matmul = args.matmul.map(|n| bench_matmul(n, &args)).transpose()?;
    if let Some(m) = &matmul {
        if args.json {
            outln!("{}", serde_json::to_string(m)?)?;
        } else {
            outln!(
                "matmul {n}x{n}x{n} {} on {}: p50 {:.3} ms = {:.1} TFLOP/s",
                m.dtype,
                m.device,
                m.p50_ms,
                m.tflops,
                n = m.matmul
            )?;
        }
    }
    if !args.json {
        outln!(
            "{:<20} {:>6} {:>5} {:>8} {:>5} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} {:>7}",
            "model",
            "imgsz",
            "batch",
            "device",
            "dtype",
            "p50 ms",
            "p95 ms",
            "GFLOP/s",
            "% matmul",
            "Mparams",
            "GFLOPs",
            "RSS MB"
        )?;
    }
    for name in &models {
        let r = bench_one(name, &args, matmul.as_ref().map(|m| m.tflops))?;
        if args.json {
            outln!("{}", serde_json::to_string(&r)?)?;
            continue;
        }
        let fraction = r.matmul_fraction.map(|f| format!("{:.1}%", 100.0 * f)).unwrap_or_else(|| "-".into());
        let precision = if r.p50_ms < 10.0 { 2 } else { 1 };
        outln!(
            "{:<20} {:>6} {:>5} {:>8} {:>5} {:>9.p$} {:>9.p$} {:>9.1} {:>9} {:>7.2} {:>8.1} {:>7.0}",
            r.model,
            r.imgsz,
            r.batch,
            r.device,
            r.dtype,
            r.p50_ms,
            r.p95_ms,
            r.achieved_gflops,
            fraction,
            r.params as f64 / 1e6,
            r.gflops,
            r.rss_mb.unwrap_or(f64::NAN),
            p = precision
        )?;
        if let Some(layers) = &r.layers {
            let total: f64 = layers.iter().map(|l| l.ms).sum();
            outln!("  {:>5} {:<14} {:<22} {:>9} {:>6}", "layer", "module", "output", "ms", "%")?;
            for l in layers {
                outln!(
                    "  {:>5} {:<14} {:<22} {:>9.2} {:>5.1}%",
                    l.index,
                    l.module,
                    format!("{:?}", l.shape),
                    l.ms,
                    100.0 * l.ms / total.max(1e-9)
                )?;
            }
        }
    }
    Ok(())
}
