//! Output: annotated H.264 MP4 (source timestamps kept, audio carried over) and JSON Lines.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use ff::format::Pixel;
use ffmpeg_next as ff;

use crate::error::{Error, Result};

/// Time base of the exported video stream (the MPEG clock: exact for 24/25/30/50/60 fps and
/// fine enough for variable frame rates).
const TIME_BASE: i32 = 90_000;

/// Audio codecs the MP4 muxer takes as they are.
const MP4_AUDIO: [ff::codec::Id; 7] = [
    ff::codec::Id::AAC,
    ff::codec::Id::MP3,
    ff::codec::Id::OPUS,
    ff::codec::Id::AC3,
    ff::codec::Id::EAC3,
    ff::codec::Id::ALAC,
    ff::codec::Id::FLAC,
];

/// The audio track of the source, copied packet by packet.
struct AudioCopy {
    input: ff::format::context::Input,
    in_index: usize,
    out_index: usize,
    in_tb: ff::Rational,
    done: bool,
}

/// Writes an H.264 (yuv420p) MP4. Fragmented, so a file cut short by a crash still plays;
/// [`VideoWriter::finish`] completes it on a normal end or a cancel.
pub struct VideoWriter {
    path: PathBuf,
    output: ff::format::context::Output,
    encoder: ff::encoder::Video,
    /// The frame handed to the encoder, refilled for every frame.
    yuv: ff::frame::Video,
    stream_index: usize,
    stream_tb: ff::Rational,
    width: u32,
    height: u32,
    last_pts: Option<i64>,
    /// Frame durations by pts, for the packets the encoder hands back (possibly reordered).
    durations: HashMap<i64, i64>,
    audio: Option<AudioCopy>,
    /// Why the source's audio was not carried over, if it was not.
    pub audio_note: Option<String>,
    frames: u64,
    finished: bool,
}

fn ff_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::output(path, e)
}

impl VideoWriter {
    /// Creates `path` for frames of `width` x `height` (odd sizes are cropped to even ones).
    /// `audio_from`: a file whose audio stream is copied into the output.
    pub fn create(path: &Path, width: u32, height: u32, fps: Option<f64>, audio_from: Option<&Path>) -> Result<Self> {
        crate::source::ffmpeg_init();
        let (ew, eh) = (width & !1, height & !1);
        if ew == 0 || eh == 0 {
            return Err(Error::output(path, format!("frame size {width}x{height} is too small to encode")));
        }
        let codec = ff::encoder::find_by_name("libx264")
            .or_else(|| ff::encoder::find(ff::codec::Id::H264))
            .ok_or_else(|| Error::output(path, "no H.264 encoder in this FFmpeg"))?;
        let mut output = ff::format::output_as(&path, "mp4").map_err(|e| ff_err(path, e))?;
        let global_header = output.format().flags().contains(ff::format::flag::Flags::GLOBAL_HEADER);
        let mut encoder =
            ff::codec::context::Context::new_with_codec(codec).encoder().video().map_err(|e| ff_err(path, e))?;
        encoder.set_width(ew);
        encoder.set_height(eh);
        encoder.set_format(Pixel::YUV420P);
        encoder.set_time_base(ff::Rational::new(1, TIME_BASE));
        if let Some(f) = fps.filter(|f| *f > 0.0) {
            encoder.set_frame_rate(Some(ff::Rational::new((f * 1000.0).round() as i32, 1000)));
        }
        if global_header {
            encoder.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        }
        // No B-frames: packets come out in presentation order, so the fragmented MP4 needs no
        // edit list and every frame keeps exactly its source timestamp.
        encoder.set_max_b_frames(0);
        let mut opts = ff::Dictionary::new();
        // superfast rather than veryfast: on a CPU-only machine the encoder shares the cores
        // with the detector. On the demo clip (640x360, one thread) it took 3.0 ms of CPU a
        // frame instead of 5.1, for a file a third larger at the same quality factor (SSIM
        // 0.985 against 0.983).
        opts.set("preset", "superfast");
        opts.set("crf", "23");
        // CAVLC instead of CABAC entropy coding: on the annotated demo clip (one thread, 100
        // frames) x264 took 0.32 s of CPU instead of 0.41, for a file 6 % larger at the same
        // SSIM (0.982); on the plain clip 12 % less CPU, 10 % larger.
        opts.set("x264-params", "cabac=0");
        // One thread, encoding each frame as it is sent: the detector keeps every core busy,
        // so x264's frame threads (three on two cores) only added their hand-offs, and held
        // frames back to encode at the end. bench --pipeline, 8 alternating pairs: 2.1 points
        // less overhead end to end, 2.3 in steady state.
        opts.set("threads", "1");
        let encoder = encoder.open_as_with(codec, opts).map_err(|e| ff_err(path, format!("H.264 encoder: {e}")))?;
        let stream_index = {
            let mut stream = output.add_stream(codec).map_err(|e| ff_err(path, e))?;
            stream.set_parameters(&encoder);
            stream.set_time_base(ff::Rational::new(1, TIME_BASE));
            stream.index()
        };

        let mut audio_note = None;
        let mut audio = None;
        if let Some(src) = audio_from {
            match ff::format::input(&src) {
                Ok(input) => {
                    if let Some(ist) = input.streams().best(ff::media::Type::Audio) {
                        let id = ist.parameters().id();
                        if MP4_AUDIO.contains(&id) {
                            let in_index = ist.index();
                            let in_tb = ist.time_base();
                            let params = ist.parameters();
                            let mut ost = output
                                .add_stream(ff::encoder::find(ff::codec::Id::None))
                                .map_err(|e| ff_err(path, e))?;
                            ost.set_parameters(params);
                            ost.set_time_base(in_tb);
                            let out_index = ost.index();
                            audio = Some(AudioCopy { input, in_index, out_index, in_tb, done: false });
                        } else {
                            audio_note = Some(format!("audio not carried over: {id:?} does not go into MP4"));
                        }
                    }
                }
                Err(e) => audio_note = Some(format!("audio not carried over: {e}")),
            }
        }

        let mut flags = ff::Dictionary::new();
        flags.set("movflags", "+frag_keyframe+empty_moov+default_base_moof");
        output.write_header_with(flags).map_err(|e| ff_err(path, e))?;
        let stream_tb = output.stream(stream_index).map(|s| s.time_base()).unwrap_or(ff::Rational::new(1, TIME_BASE));
        Ok(Self {
            path: path.to_path_buf(),
            output,
            encoder,
            yuv: ff::frame::Video::new(Pixel::YUV420P, ew, eh),
            stream_index,
            stream_tb,
            width: ew,
            height: eh,
            last_pts: None,
            durations: HashMap::new(),
            audio,
            audio_note,
            frames: 0,
            finished: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Encodes one frame of packed RGB rows (`width` x `height` pixels, at least the writer's
    /// size) shown at `pts_secs` for `duration_secs`.
    pub fn write_rgb(
        &mut self,
        rgb: &[u8],
        width: u32,
        height: u32,
        pts_secs: f64,
        duration_secs: Option<f64>,
    ) -> Result<()> {
        let src_row = width as usize * 3;
        if width < self.width || height < self.height || rgb.len() < src_row * self.height as usize {
            return Err(Error::output(&self.path, format!("frame size changed to {width}x{height}")));
        }
        crate::yuv::rgb_to_yuv420(rgb, src_row, &mut self.yuv);
        let mut pts = (pts_secs * f64::from(TIME_BASE)).round() as i64;
        if let Some(last) = self.last_pts
            && pts <= last
        {
            pts = last + 1;
        }
        self.last_pts = Some(pts);
        let duration = duration_secs.map(|d| (d * f64::from(TIME_BASE)).round() as i64).filter(|d| *d > 0).unwrap_or(1);
        self.durations.insert(pts, duration);
        self.yuv.set_pts(Some(pts));
        self.encoder.send_frame(&self.yuv).map_err(|e| ff_err(&self.path, e))?;
        self.drain()?;
        self.copy_audio_until(pts_secs)?;
        self.frames += 1;
        Ok(())
    }

    fn drain(&mut self) -> Result<()> {
        let mut packet = ff::Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(self.stream_index);
            if let Some(d) = packet.pts().and_then(|p| self.durations.remove(&p)) {
                // The MP4 muxer drops the last frame unless packets carry their duration.
                packet.set_duration(d);
            }
            packet.rescale_ts(ff::Rational::new(1, TIME_BASE), self.stream_tb);
            packet.write_interleaved(&mut self.output).map_err(|e| ff_err(&self.path, e))?;
        }
        Ok(())
    }

    /// Copies the source's audio packets up to `until_secs` (a little ahead, for interleaving).
    fn copy_audio_until(&mut self, until_secs: f64) -> Result<()> {
        let Some(audio) = self.audio.as_mut() else { return Ok(()) };
        if audio.done {
            return Ok(());
        }
        let out_tb = self.output.stream(audio.out_index).map(|s| s.time_base()).unwrap_or(audio.in_tb);
        let tb = f64::from(audio.in_tb.numerator()) / f64::from(audio.in_tb.denominator().max(1));
        loop {
            let mut packet = ff::Packet::empty();
            match packet.read(&mut audio.input) {
                Ok(()) => {
                    if packet.stream() != audio.in_index {
                        continue;
                    }
                    let t = packet.pts().or(packet.dts()).map(|p| p as f64 * tb).unwrap_or(0.0);
                    if t < 0.0 {
                        // Encoder priming before the first video frame (AAC starts at -1024
                        // samples): a negative start would make the muxer shift every stream.
                        continue;
                    }
                    packet.set_stream(audio.out_index);
                    packet.rescale_ts(audio.in_tb, out_tb);
                    packet.set_position(-1);
                    packet.write_interleaved(&mut self.output).map_err(|e| ff_err(&self.path, e))?;
                    if t > until_secs + 0.5 {
                        return Ok(());
                    }
                }
                Err(_) => {
                    audio.done = true;
                    return Ok(());
                }
            }
        }
    }

    /// Flushes the encoder and completes the file. Also called on drop.
    pub fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.encoder.send_eof().map_err(|e| ff_err(&self.path, e))?;
        self.drain()?;
        self.output.write_trailer().map_err(|e| ff_err(&self.path, e))
    }
}

impl Drop for VideoWriter {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!("{e}");
        }
    }
}

/// One detection in the JSON Lines output (DESIGN.md schema).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JsonDetection {
    pub bbox: [f32; 4],
    pub score: f32,
    pub class_id: usize,
    pub label: String,
}

/// One line: the detections of one model on one frame.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JsonFrame {
    pub frame: u64,
    pub pts: f64,
    pub width: u32,
    pub height: u32,
    pub model: String,
    pub detections: Vec<JsonDetection>,
}

/// Writes detections as JSON Lines.
pub struct JsonlWriter {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
}

impl JsonlWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|e| Error::output(path, e))?;
        Ok(Self { path: path.to_path_buf(), out: BufWriter::new(file) })
    }

    pub fn write(&mut self, record: &JsonFrame) -> Result<()> {
        serde_json::to_writer(&mut self.out, record).map_err(|e| Error::output(&self.path, e))?;
        self.out.write_all(b"\n").map_err(|e| Error::output(&self.path, e))
    }

    pub fn finish(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::output(&self.path, e))
    }
}
