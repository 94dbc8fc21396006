//! The pipeline on real video through real FFmpeg: export, timestamps, audio, JSON Lines,
//! live and lossless policies, model switching and comparing, and bad input.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use spotter_pipeline::export::JsonFrame;
use spotter_pipeline::source::{FrameSource, OpenOptions, VideoSource};
use spotter_pipeline::{Command, Error, Event, OutputConfig, Pipeline, PipelineConfig, Policy, SourceSpec};

fn read_jsonl(path: &Path) -> Vec<JsonFrame> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn config(models: &[&str], delay_ms: u64) -> PipelineConfig {
    PipelineConfig::new(models.iter().map(|m| m.to_string()).collect(), loader(Duration::from_millis(delay_ms)))
}

#[test]
fn export_keeps_every_frame_its_timestamp_and_the_audio() {
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_with_audio(dir.path());
    let out = dir.path().join("annotated.mp4");
    let json = dir.path().join("detections.jsonl");
    let mut cfg = config(&["tiny-gelan-c"], 0);
    cfg.output = OutputConfig { video: Some(out.clone()), jsonl: Some(json.clone()), keep_audio: true };
    let p = Pipeline::start(SourceSpec::File(clip.clone()), cfg).unwrap();
    assert!(p.info().has_audio && !p.info().live);
    let summary = p.wait().unwrap();
    assert_eq!((summary.frames_in, summary.frames_out, summary.dropped), (50, 50, 0));

    let source_pts = video_pts(&clip);
    let exported = video_pts(&out);
    assert_eq!(exported.len(), 50, "every frame exported");
    for (a, b) in source_pts.iter().zip(&exported) {
        assert!((a - b).abs() < 1e-3, "pts {a} exported as {b}");
    }
    let (codec, secs) = audio_stream(&out).expect("audio carried over");
    assert_eq!(codec, "AAC");
    assert!((secs - 2.0).abs() < 0.1, "audio lasts {secs} s");

    let lines = read_jsonl(&json);
    assert_eq!(lines.len(), 50);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l.frame, i as u64);
        assert_eq!((l.width, l.height, l.model.as_str()), (320, 240, "tiny-gelan-c"));
        assert!((l.pts - source_pts[i]).abs() < 1e-6);
    }
}

#[test]
fn variable_frame_rate_is_preserved() {
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_vfr(dir.path());
    let source_pts = video_pts(&clip);
    assert_eq!(source_pts.len(), 20);
    assert!(
        (source_pts[11] - source_pts[10] - 0.05).abs() < 1e-3 && (source_pts[1] - source_pts[0] - 0.1).abs() < 1e-3
    );
    let out = dir.path().join("vfr-out.mp4");
    let mut cfg = config(&["tiny-gelan-s"], 0);
    cfg.output.video = Some(out.clone());
    Pipeline::start(SourceSpec::File(clip), cfg).unwrap().wait().unwrap();
    let exported = video_pts(&out);
    assert_eq!(exported.len(), 20);
    for (a, b) in source_pts.iter().zip(&exported) {
        assert!((a - b).abs() < 1e-3, "pts {a} exported as {b} (no fixed frame rate)");
    }
}

#[test]
fn json_lines_equal_direct_detector_calls_on_the_same_frames() {
    let dir = tempfile::tempdir().unwrap();
    let clip = repo().join("assets/demo.mp4");
    let json = dir.path().join("d.jsonl");
    let mut cfg = config(&["tiny-gelan-c"], 0);
    cfg.output.jsonl = Some(json.clone());
    cfg.max_frames = Some(12);
    Pipeline::start(SourceSpec::File(clip.clone()), cfg).unwrap().wait().unwrap();
    let lines = read_jsonl(&json);
    assert_eq!(lines.len(), 12);

    let mut detector = load_tiny("tiny-gelan-c");
    let mut source = VideoSource::open(clip.to_str().unwrap(), &OpenOptions::file()).unwrap();
    for line in &lines {
        let frame = source.next_frame().unwrap().unwrap();
        assert_eq!(frame.index, line.frame);
        let direct = detector.detect(&frame.image).unwrap();
        assert_eq!(direct.detections.len(), line.detections.len(), "frame {}", line.frame);
        for (d, j) in direct.detections.iter().zip(&line.detections) {
            assert_eq!((d.bbox, d.score, d.class_id), (j.bbox, j.score, j.class_id));
            assert_eq!(detector.class_name(d.class_id), j.label);
        }
    }
}

#[test]
fn live_policy_drops_stale_frames_and_keeps_latency_bounded() {
    // A camera stand-in at 50 fps for 1.2 s against a detector that needs 100 ms a frame.
    let mut cfg = config(&["tiny-gelan-s"], 100);
    cfg.max_frames = Some(60);
    let p = Pipeline::start(SourceSpec::parse("synthetic:160x120@50/60").unwrap(), cfg).unwrap();
    assert!(p.info().live);
    let s = p.wait().unwrap();
    assert_eq!(s.frames_in, 60);
    assert!(s.frames_out < 30, "processed {} of 60", s.frames_out);
    assert!(s.dropped > 20, "dropped {}", s.dropped);
    assert!(s.frames_out + s.dropped >= 58, "every frame processed or counted as dropped: {s:?}");
    let e2e = s.models[0].stages.iter().find(|l| format!("{:?}", l.stage) == "EndToEnd").unwrap();
    // Latency stays near one detector time instead of growing with the backlog.
    assert!(e2e.p95_ms < 450.0, "end-to-end p95 {} ms", e2e.p95_ms);
}

#[test]
fn lossless_policy_processes_every_frame_with_a_slow_detector() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("d.jsonl");
    let mut cfg = config(&["tiny-gelan-s"], 30);
    cfg.output.jsonl = Some(json.clone());
    cfg.max_frames = Some(20);
    // The same generated source, forced lossless: nothing may be dropped.
    cfg.policy = Some(Policy::Lossless);
    let s = Pipeline::start(SourceSpec::parse("synthetic:160x120@100/20").unwrap(), cfg).unwrap().wait().unwrap();
    assert_eq!((s.frames_out, s.dropped), (20, 0));
    let frames: Vec<u64> = read_jsonl(&json).iter().map(|l| l.frame).collect();
    assert_eq!(frames, (0..20).collect::<Vec<_>>());
}

#[test]
fn switching_and_comparing_models_while_frames_flow_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("d.jsonl");
    let mut cfg = config(&["tiny-gelan-s"], 15);
    cfg.output.jsonl = Some(json.clone());
    let p = Pipeline::start(SourceSpec::File(repo().join("assets/demo.mp4")), cfg).unwrap();
    let mut loaded = Vec::new();
    let mut failed = Vec::new();
    let mut stage = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match p.events().recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Frame(f)) => {
                if stage == 0 && f.frame.index >= 5 {
                    p.send(Command::SwitchModel { slot: 0, model: "no-such-model".into() });
                    stage = 1;
                } else if stage == 1 && !failed.is_empty() {
                    p.send(Command::SwitchModel { slot: 0, model: "tiny-gelan-c".into() });
                    stage = 2;
                } else if stage == 2 && !loaded.is_empty() {
                    p.send(Command::Compare(vec!["tiny-gelan-c".into(), "tiny-yolov9-c".into()]));
                    stage = 3;
                }
            }
            Ok(Event::ModelLoaded { model, .. }) => loaded.push(model),
            Ok(Event::ModelLoadFailed { model, .. }) => failed.push(model),
            Ok(Event::Finished(_)) => break,
            _ => {}
        }
    }
    let s = p.wait().unwrap();
    assert_eq!(failed, vec!["no-such-model".to_string()], "the failed load is reported");
    assert!(
        loaded.contains(&"tiny-gelan-c".to_string()) && loaded.contains(&"tiny-yolov9-c".to_string()),
        "{loaded:?}"
    );
    assert_eq!((s.frames_out, s.dropped), (100, 0));
    let lines = read_jsonl(&json);
    // Every frame, in order, at least once; the old model kept working after the failed load.
    let frames: Vec<u64> = lines.iter().map(|l| l.frame).collect::<BTreeSet<_>>().into_iter().collect();
    assert_eq!(frames, (0..100).collect::<Vec<_>>());
    assert!(lines.windows(2).all(|w| w[0].frame <= w[1].frame));
    let models: BTreeSet<&str> = lines.iter().map(|l| l.model.as_str()).collect();
    assert_eq!(models, BTreeSet::from(["tiny-gelan-s", "tiny-gelan-c", "tiny-yolov9-c"]));
    // Compare mode: both models on the same frames, each result tagged.
    let compared = lines.iter().filter(|l| l.model == "tiny-yolov9-c").count();
    assert!(compared > 0);
    assert_eq!(lines.iter().filter(|l| l.frame == 99).count(), 2);
}

#[test]
fn bad_sources_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = |spec: SourceSpec| match Pipeline::start(spec, config(&["tiny-gelan-s"], 0)) {
        Ok(_) => panic!("started"),
        Err(e) => e,
    };
    let e = err(SourceSpec::File(dir.path().join("missing.mp4")));
    assert!(matches!(e, Error::NotFound(_)) && e.to_string().contains("missing.mp4: no such file"), "{e}");

    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "this is not a video").unwrap();
    let e = err(SourceSpec::File(text));
    assert!(e.to_string().contains("notes.mp4") && e.to_string().contains("not a video"), "{e}");

    let e = err(SourceSpec::Url("http://127.0.0.1:9/stream.ts".into()));
    assert!(e.to_string().contains("cannot open http://127.0.0.1:9/stream.ts"), "{e}");

    // A codec FFmpeg cannot decode: rename the codec of a Matroska track.
    let mkv = dir.path().join("v.mkv");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc=size=64x48:rate=5:duration=1", "-c:v", "libx264", mkv.to_str().unwrap()]);
    let mut bytes = std::fs::read(&mkv).unwrap();
    let at = bytes.windows(15).position(|w| w == b"V_MPEG4/ISO/AVC").unwrap();
    bytes[at..at + 15].copy_from_slice(b"V_SPOTTER/NOPE!");
    std::fs::write(&mkv, &bytes).unwrap();
    let e = err(SourceSpec::File(mkv));
    assert!(e.to_string().contains("unsupported video codec") || e.to_string().contains("no video stream"), "{e}");

    #[cfg(feature = "camera")]
    {
        let e = err(SourceSpec::parse("camera:7").unwrap());
        assert!(e.to_string().contains("camera"), "{e}");
    }
}

#[test]
fn truncated_and_corrupt_files_decode_what_can_be_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_with_audio(dir.path());
    let bytes = std::fs::read(&clip).unwrap();

    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() * 6 / 10]).unwrap();
    let s = Pipeline::start(SourceSpec::File(cut), config(&["tiny-gelan-s"], 0)).unwrap().wait().unwrap();
    assert!(s.frames_out > 5 && s.frames_out < 50, "decoded {} frames of a truncated file", s.frames_out);

    let mut garbled = bytes.clone();
    let mid = garbled.len() / 2;
    for b in &mut garbled[mid..mid + 3000] {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    let bad = dir.path().join("garbled.mp4");
    std::fs::write(&bad, &garbled).unwrap();
    let s = Pipeline::start(SourceSpec::File(bad), config(&["tiny-gelan-s"], 0)).unwrap().wait().unwrap();
    assert!(s.frames_out >= 40, "most frames survive: {}", s.frames_out);
    assert!(s.decode_errors > 0, "the damage is reported");
}

#[test]
fn unwritable_outputs_fail_before_any_work() {
    let clip = repo().join("assets/demo.mp4");
    let run = |video: Option<&str>, jsonl: Option<&str>| {
        let mut cfg = config(&["tiny-gelan-s"], 0);
        cfg.output.video = video.map(Into::into);
        cfg.output.jsonl = jsonl.map(Into::into);
        match Pipeline::start(SourceSpec::File(clip.clone()), cfg) {
            Ok(p) => p.wait().map(|_| ()),
            Err(e) => Err(e),
        }
    };
    let e = run(Some("/no/such/dir/out.mp4"), None).unwrap_err().to_string();
    assert!(e.contains("cannot write /no/such/dir/out.mp4"), "{e}");
    let e = run(None, Some("/no/such/dir/out.jsonl")).unwrap_err().to_string();
    assert!(e.contains("cannot write /no/such/dir/out.jsonl"), "{e}");
    // A full disk: /dev/full refuses every write.
    let e = run(Some("/dev/full"), None).unwrap_err().to_string();
    assert!(e.contains("/dev/full"), "{e}");
}

/// Serves `file` over HTTP on loopback; the first `cut` connections are dropped after
/// `cut_after` bytes (a stream that drops), later ones get everything.
fn serve(file: &Path, cut: usize, cut_after: usize, max_requests: usize) -> (String, std::thread::JoinHandle<usize>) {
    let data = std::fs::read(file).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/stream.ts", listener.local_addr().unwrap());
    let handle = std::thread::Builder::new()
        .name("test-http".into())
        .spawn(move || {
            let mut served = 0;
            for stream in listener.incoming().take(max_requests) {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let body = if served < cut { &data[..cut_after.min(data.len())] } else { &data[..] };
                // The full length is announced, so a cut body is a dropped stream, not an end.
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    data.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
                served += 1;
            }
            served
        })
        .unwrap();
    (url, handle)
}

#[test]
fn a_dropped_stream_is_reopened_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let ts = clip_ts(dir.path(), 2);
    let size = std::fs::metadata(&ts).unwrap().len() as usize;
    // First connection drops a third of the way in; the second serves the whole stream.
    let (url, server) = serve(&ts, 1, size / 3, 2);
    let p = Pipeline::start(SourceSpec::Url(url), config(&["tiny-gelan-s"], 0)).unwrap();
    assert!(p.info().live);
    let s = p.wait().unwrap();
    assert!(s.reconnects >= 1, "reconnects {}", s.reconnects);
    assert!(s.frames_in > 50, "frames kept coming after the reconnect: {}", s.frames_in);
    assert_eq!(server.join().unwrap(), 2);
}

#[test]
fn a_stream_that_stays_down_ends_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ts = clip_ts(dir.path(), 1);
    let size = std::fs::metadata(&ts).unwrap().len() as usize;
    // One connection that drops, then nothing listens any more.
    let (url, server) = serve(&ts, 1, size / 2, 1);
    let p = Pipeline::start(SourceSpec::Url(url), config(&["tiny-gelan-s"], 0)).unwrap();
    let e = p.wait().unwrap_err().to_string();
    assert_eq!(server.join().unwrap(), 1);
    assert!(e.contains("could not be reopened after 5 attempts"), "{e}");
}

#[test]
fn profiling_times_every_layer_of_the_main_model_only() {
    let plain: spotter_pipeline::ModelLoader = std::sync::Arc::new(|name: &str| {
        let d = spotter_detector::Detector::from_path(&tiny(name), options()).map_err(Error::from)?;
        Ok(Box::new(d) as Box<dyn spotter_pipeline::FrameDetector>)
    });
    let mut cfg = PipelineConfig::new(vec!["tiny-gelan-s".into(), "tiny-gelan-c".into()], plain);
    cfg.policy = Some(Policy::Lossless);
    cfg.max_frames = Some(12);
    let p = Pipeline::start(SourceSpec::parse("synthetic:160x120@100/12").unwrap(), cfg).unwrap();
    let (mut plain_frames, mut profiled) = (0, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match p.events().recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Frame(f)) => {
                assert!(f.results[1].profile.is_none(), "only the main model is profiled");
                match &f.results[0].profile {
                    Some(layers) => profiled.push(layers.clone()),
                    None if profiled.is_empty() => plain_frames += 1,
                    None => panic!("profiling stopped by itself"),
                }
                if f.frame.index == 2 {
                    p.send(Command::Profile(true));
                }
            }
            Ok(Event::Finished(_)) => break,
            _ => {}
        }
    }
    p.wait().unwrap();
    assert!(plain_frames >= 3, "no profile before it is asked for");
    let layers = profiled.last().expect("profiled frames");
    assert!(layers.len() > 5, "{} layers", layers.len());
    assert!(layers.windows(2).all(|w| w[0].index < w[1].index));
    assert!(layers.iter().all(|l| l.ms >= 0.0 && l.ms.is_finite()));
    assert!(layers.iter().any(|l| l.module == "Conv" && l.shape.len() == 4));
}

#[test]
fn stepping_while_paused_shows_one_frame_at_a_time() {
    let mut cfg = config(&["tiny-gelan-s"], 0);
    cfg.start_paused = true;
    cfg.realtime = true;
    let p = Pipeline::start(SourceSpec::File(repo().join("assets/demo.mp4")), cfg).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        p.send(Command::Step);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Event::Frame(f)) = p.events().recv_timeout(Duration::from_millis(100)) {
                seen.push(f.frame.index);
                break;
            }
        }
    }
    // Nothing more arrives while paused.
    std::thread::sleep(Duration::from_millis(300));
    let more = p.events().try_iter().filter(|e| matches!(e, Event::Frame(_))).count();
    p.send(Command::Stop);
    p.wait().unwrap();
    assert_eq!(seen, vec![0, 1, 2]);
    assert_eq!(more, 0);
}

#[test]
fn looping_starts_the_file_again_at_its_end() {
    let mut cfg = config(&["tiny-gelan-s"], 0);
    cfg.looping = true;
    cfg.max_frames = Some(130);
    cfg.policy = Some(Policy::Lossless);
    let p = Pipeline::start(SourceSpec::File(repo().join("assets/demo.mp4")), cfg).unwrap();
    let mut indices = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match p.events().recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Frame(f)) => indices.push(f.frame.index),
            Ok(Event::Finished(_)) => break,
            _ => {}
        }
    }
    let s = p.wait().unwrap();
    assert_eq!(s.frames_out, 130);
    // Frame events may be skipped by a slow reader, never reordered: the second pass starts at 0.
    let wrap = indices.windows(2).position(|w| w[1] < w[0]).expect("the file started again");
    assert!(indices[wrap] >= 90, "wrapped at {}", indices[wrap]);
    assert!(indices[wrap + 1] <= 5, "restarted at {}", indices[wrap + 1]);
}

#[test]
fn a_cancelled_export_still_leaves_a_playable_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cancelled.mp4");
    let mut cfg = config(&["tiny-gelan-s"], 20);
    cfg.output.video = Some(out.clone());
    let p = Pipeline::start(SourceSpec::File(repo().join("assets/demo.mp4")), cfg).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Event::Progress { frames_done, total, .. }) = p.events().recv_timeout(Duration::from_millis(100)) {
            assert_eq!(total, Some(100));
            if frames_done >= 10 {
                break;
            }
        }
    }
    p.send(Command::Stop);
    let s = p.wait().unwrap();
    assert!(s.frames_out >= 10 && s.frames_out < 100, "stopped after {} frames", s.frames_out);
    let pts = video_pts(&out);
    assert_eq!(pts.len() as u64, s.frames_out, "every processed frame is in the file");
}

#[test]
fn pause_resume_and_seek() {
    let json = tempfile::NamedTempFile::new().unwrap();
    let mut cfg = config(&["tiny-gelan-s"], 0);
    cfg.start_paused = true;
    cfg.output.jsonl = Some(json.path().to_path_buf());
    let p = Pipeline::start(SourceSpec::File(repo().join("assets/demo.mp4")), cfg).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.stats().frames_in, 0, "nothing decoded while paused");
    // Seeking while paused shows the frame at the new position; then play on to the end.
    p.send(Command::Seek(3.0));
    p.send(Command::Resume);
    let s = p.wait().unwrap();
    assert_eq!(s.frames_out, 25, "from 3.0 s to the end of a 4 s clip at 25 fps");
    let first = &read_jsonl(json.path())[0];
    assert!((first.pts - 3.0).abs() < 1e-6 && first.frame == 75, "{first:?}");
}

#[test]
fn seeking_between_keyframes_lands_on_the_requested_frame() {
    // The demo clip has a keyframe every second; 2.5 s lies between two.
    let mut source = VideoSource::open(repo().join("assets/demo.mp4").to_str().unwrap(), &OpenOptions::file()).unwrap();
    assert!(source.info().seekable);
    source.seek(2.5).unwrap();
    let f = source.next_frame().unwrap().unwrap();
    assert!((f.pts_secs - 2.48).abs() < 1e-6, "pts {}", f.pts_secs);
    assert_eq!(f.index, 62);
    let g = source.next_frame().unwrap().unwrap();
    assert_eq!(g.index, 63);
}

/// A source of odd size is cropped to the even size H.264 4:2:0 needs: its rows are read at
/// their own stride (no shear) and the last column and row are dropped.
#[test]
fn video_writer_crops_odd_sizes_to_even() {
    use spotter_pipeline::export::VideoWriter;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.mp4");
    let (w, h) = (65u32, 49u32);
    // Left of column 32 red, right of it blue; the last column and row green (cropped away).
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            rgb.extend_from_slice(match (x, y) {
                (64, _) | (_, 48) => &[20, 220, 20],
                (x, _) if x < 32 => &[220, 20, 20],
                _ => &[20, 20, 220],
            });
        }
    }
    let mut writer = VideoWriter::create(&path, w, h, Some(25.0), None).unwrap();
    writer.write_rgb(&rgb, w, h, 0.0, Some(0.04)).unwrap();
    writer.finish().unwrap();

    let mut source = VideoSource::open(path.to_str().unwrap(), &OpenOptions::file()).unwrap();
    let frame = source.next_frame().unwrap().unwrap().image;
    assert_eq!((frame.width, frame.height), (64, 48));
    let at = |x: u32, y: u32| {
        let i = ((y * 64 + x) * 3) as usize;
        [frame.data[i], frame.data[i + 1], frame.data[i + 2]]
    };
    let close = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(p, q)| p.abs_diff(q) <= 24);
    for y in [2, 24, 45] {
        assert!(close(at(8, y), [220, 20, 20]), "row {y} left: {:?}", at(8, y));
        assert!(close(at(56, y), [20, 20, 220]), "row {y} right: {:?}", at(56, y));
        assert!(close(at(63, y), [20, 20, 220]), "row {y} last column: {:?}", at(63, y));
    }
}

/// The writer takes packed RGB rows; a buffer shorter than a frame is a clear error that
/// leaves the file intact, and the frames written before and after it play back with their
/// colours.
#[test]
fn video_writer_encodes_rgb_rows_and_refuses_short_buffers() {
    use spotter_pipeline::export::VideoWriter;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.mp4");
    let (w, h) = (64u32, 48u32);
    let mut writer = VideoWriter::create(&path, w, h, Some(25.0), None).unwrap();
    let grey = vec![128u8; (w * h * 3) as usize];
    let red: Vec<u8> = [220u8, 20, 20].repeat((w * h) as usize);
    writer.write_rgb(&grey, w, h, 0.0, Some(0.04)).unwrap();
    let err = writer.write_rgb(&grey[..100], w, h, 0.04, Some(0.04)).unwrap_err();
    assert!(err.to_string().contains("rows.mp4"), "{err}");
    writer.write_rgb(&red, w, h, 0.04, Some(0.04)).unwrap();
    assert_eq!(writer.frames(), 2);
    writer.finish().unwrap();

    let mut source = VideoSource::open(path.to_str().unwrap(), &OpenOptions::file()).unwrap();
    let mut frames = Vec::new();
    while let Some(f) = source.next_frame().unwrap() {
        frames.push(f.image);
    }
    assert_eq!(frames.len(), 2);
    let centre = |f: &spotter_detector::RgbFrame| {
        let i = ((h / 2 * w + w / 2) * 3) as usize;
        [f.data[i], f.data[i + 1], f.data[i + 2]]
    };
    let close = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 12);
    assert!(close(centre(&frames[0]), [128, 128, 128]), "{:?}", centre(&frames[0]));
    assert!(close(centre(&frames[1]), [220, 20, 20]), "{:?}", centre(&frames[1]));
}
