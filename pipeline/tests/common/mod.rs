//! Shared helpers: real clips made with the ffmpeg command-line tool, a tiny real model, and a
//! detector that is deliberately slow.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use spotter_detector::{Detections, Detector, DetectorOptions, DeviceChoice, NmsOptions, RgbFrame};
use spotter_pipeline::{FrameDetector, ModelLoader};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn tiny(name: &str) -> PathBuf {
    repo().join("tests/fixtures/yolov9/tiny").join(format!("{name}.pt"))
}

/// Runs the ffmpeg tool; panics with its message on failure (a broken test setup).
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg runs");
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// 2 s of 25 fps test pattern (50 frames) with a 440 Hz AAC tone, moov first.
pub fn clip_with_audio(dir: &Path) -> PathBuf {
    let p = dir.join("audio.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25:duration=2",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=2",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "10",
        "-c:a",
        "aac",
        "-shortest",
        "-movflags",
        "+faststart",
        p.to_str().unwrap(),
    ]);
    p
}

/// 20 frames: ten at 10 fps, then ten at 20 fps (variable frame rate).
pub fn clip_vfr(dir: &Path) -> PathBuf {
    let p = dir.join("vfr.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=160x120:rate=10:duration=2",
        "-vf",
        "settb=1/1000,setpts='if(lt(N,10),N/10,1+(N-10)/20)/TB'",
        "-fps_mode",
        "passthrough",
        "-enc_time_base",
        "1/1000",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-video_track_timescale",
        "1000",
        p.to_str().unwrap(),
    ]);
    p
}

/// The same as [`clip_with_audio`] without audio, as MPEG-TS (for streaming).
pub fn clip_ts(dir: &Path, seconds: u32) -> PathBuf {
    let p = dir.join("stream.ts");
    let src = format!("testsrc=size=160x120:rate=25:duration={seconds}");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &src,
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "5",
        "-f",
        "mpegts",
        p.to_str().unwrap(),
    ]);
    p
}

pub fn options() -> DetectorOptions {
    DetectorOptions { device: DeviceChoice::Cpu, imgsz: 128, ..Default::default() }
}

pub fn load_tiny(name: &str) -> Detector {
    Detector::from_path(&tiny(name), options()).expect("tiny model loads")
}

/// Wraps a detector and sleeps before each frame: a detector slower than the source.
pub struct Slow {
    pub inner: Detector,
    pub delay: Duration,
}

impl FrameDetector for Slow {
    fn name(&self) -> String {
        self.inner.info().variant.clone()
    }
    fn detect(&mut self, frame: &RgbFrame) -> spotter_detector::Result<Detections> {
        std::thread::sleep(self.delay);
        self.inner.detect(frame)
    }
    fn class_name(&self, class_id: usize) -> String {
        self.inner.class_name(class_id)
    }
    fn set_nms(&mut self, nms: &NmsOptions) {
        self.inner.options.nms = nms.clone();
    }
    fn set_imgsz(&mut self, imgsz: u32) {
        self.inner.options.imgsz = imgsz;
    }
}

/// Loads tiny fixture models by name (`tiny-gelan-s`), each slowed by `delay`.
pub fn loader(delay: Duration) -> ModelLoader {
    Arc::new(move |name: &str| {
        let inner = Detector::from_path(&tiny(name), options()).map_err(spotter_pipeline::Error::from)?;
        Ok(Box::new(Slow { inner, delay }) as Box<dyn FrameDetector>)
    })
}

/// (pts seconds) of every video frame of a file, read back with ffmpeg-next.
pub fn video_pts(path: &Path) -> Vec<f64> {
    use ffmpeg_next as ff;
    spotter_pipeline::source::ffmpeg_init();
    let mut input = ff::format::input(&path).unwrap();
    let stream = input.streams().best(ff::media::Type::Video).unwrap();
    let index = stream.index();
    let tb = stream.time_base();
    let tb = f64::from(tb.numerator()) / f64::from(tb.denominator());
    let mut decoder =
        ff::codec::context::Context::from_parameters(stream.parameters()).unwrap().decoder().video().unwrap();
    let mut pts = Vec::new();
    let mut frame = ff::frame::Video::empty();
    for (s, packet) in input.packets() {
        if s.index() == index {
            decoder.send_packet(&packet).unwrap();
            while decoder.receive_frame(&mut frame).is_ok() {
                pts.push(frame.timestamp().unwrap() as f64 * tb);
            }
        }
    }
    decoder.send_eof().unwrap();
    while decoder.receive_frame(&mut frame).is_ok() {
        pts.push(frame.timestamp().unwrap() as f64 * tb);
    }
    pts
}

/// (codec name, duration seconds) of the audio stream, if any.
pub fn audio_stream(path: &Path) -> Option<(String, f64)> {
    use ffmpeg_next as ff;
    spotter_pipeline::source::ffmpeg_init();
    let mut input = ff::format::input(&path).unwrap();
    let (index, tb, codec) = {
        let stream = input.streams().best(ff::media::Type::Audio)?;
        (stream.index(), stream.time_base(), format!("{:?}", stream.parameters().id()))
    };
    let mut last = 0i64;
    for (s, p) in input.packets() {
        if s.index() == index {
            last = last.max(p.pts().unwrap_or(0) + p.duration());
        }
    }
    Some((codec, last as f64 * f64::from(tb.numerator()) / f64::from(tb.denominator())))
}
