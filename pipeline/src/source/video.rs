//! Video files and network streams through FFmpeg: demux, decode, convert to RGB.

use std::time::{Duration, Instant};

use ff::format::Pixel;
use ff::software::scaling;
use ffmpeg_next as ff;
use spotter_detector::RgbFrame;

use super::{Frame, FrameSource, SourceInfo, SourceKind, SourceStats};
use crate::error::{Error, Result};

/// How to open an FFmpeg input.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub live: bool,
    /// Network read/connect timeout.
    pub timeout: Duration,
    /// Reconnect attempts after a live stream drops (0: none).
    pub max_reconnects: u32,
    /// First reconnect delay; doubles each attempt up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl OpenOptions {
    pub fn file() -> Self {
        Self {
            live: false,
            timeout: Duration::from_secs(10),
            max_reconnects: 0,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
        }
    }

    pub fn stream() -> Self {
        Self { live: true, max_reconnects: 5, ..Self::file() }
    }
}

/// One FFmpeg input with its video decoder.
pub struct VideoSource {
    input: ff::format::context::Input,
    stream_index: usize,
    decoder: ff::decoder::Video,
    scaler: Option<(Pixel, u32, u32, scaling::Context)>,
    time_base: f64,
    start_secs: f64,
    decoded: ff::frame::Video,
    rgb: ff::frame::Video,
    eof_sent: bool,
    next_index: u64,
    /// After a seek: frames before this time (decoded from the previous keyframe) are skipped.
    seek_target: Option<f64>,
    info: SourceInfo,
    stats: SourceStats,
}

fn rational(r: ff::Rational) -> Option<f64> {
    (r.numerator() > 0 && r.denominator() > 0).then(|| f64::from(r.numerator()) / f64::from(r.denominator()))
}

impl VideoSource {
    pub fn open(url: &str, options: &OpenOptions) -> Result<Self> {
        super::ffmpeg_init();
        let mut dict = ff::Dictionary::new();
        let micros = options.timeout.as_micros().to_string();
        if options.live {
            dict.set("rw_timeout", &micros);
            if url.starts_with("rtsp") {
                dict.set("timeout", &micros);
                dict.set("rtsp_transport", "tcp");
            }
        }
        let input = ff::format::input_with_dictionary(&url, dict).map_err(|e| Error::open(url, e))?;
        let stream = input.streams().best(ff::media::Type::Video).ok_or_else(|| Error::NoVideo(url.to_string()))?;
        let stream_index = stream.index();
        let time_base = rational(stream.time_base()).unwrap_or(1.0 / 90_000.0);
        let start_secs =
            if stream.start_time() != ff::ffi::AV_NOPTS_VALUE { stream.start_time() as f64 * time_base } else { 0.0 };
        let fps = rational(stream.avg_frame_rate()).or_else(|| rational(stream.rate()));
        let duration_secs = if stream.duration() > 0 {
            Some(stream.duration() as f64 * time_base)
        } else if input.duration() > 0 {
            Some(input.duration() as f64 / f64::from(ff::ffi::AV_TIME_BASE))
        } else {
            None
        };
        let frame_count = if stream.frames() > 0 {
            Some(stream.frames() as u64)
        } else {
            duration_secs.zip(fps).map(|(d, f)| (d * f).round() as u64)
        };
        let codec_id = stream.parameters().id();
        let context =
            ff::codec::context::Context::from_parameters(stream.parameters()).map_err(|e| Error::open(url, e))?;
        let decoder = context
            .decoder()
            .video()
            .map_err(|_| Error::UnsupportedCodec { input: url.to_string(), codec: format!("{codec_id:?}") })?;
        if decoder.width() == 0 || decoder.height() == 0 {
            return Err(Error::UnsupportedCodec { input: url.to_string(), codec: format!("{codec_id:?}") });
        }
        let has_audio = input.streams().best(ff::media::Type::Audio).is_some();
        let live = options.live;
        let info = SourceInfo {
            kind: if live { SourceKind::Stream } else { SourceKind::File },
            name: url.to_string(),
            width: decoder.width(),
            height: decoder.height(),
            fps,
            duration_secs,
            frame_count,
            seekable: !live && duration_secs.is_some(),
            live,
            has_audio,
        };
        Ok(Self {
            input,
            stream_index,
            decoder,
            scaler: None,
            time_base,
            start_secs,
            decoded: ff::frame::Video::empty(),
            rgb: ff::frame::Video::empty(),
            eof_sent: false,
            next_index: 0,
            seek_target: None,
            info,
            stats: SourceStats::default(),
        })
    }

    /// Converts the decoded frame to packed RGB, row by row using the stride.
    fn convert(&mut self, started: Instant) -> Result<Frame> {
        let (fmt, w, h) = (self.decoded.format(), self.decoded.width(), self.decoded.height());
        let stale = !matches!(&self.scaler, Some((f, sw, sh, _)) if *f == fmt && *sw == w && *sh == h);
        if stale {
            let ctx = scaling::Context::get(fmt, w, h, Pixel::RGB24, w, h, scaling::Flags::BILINEAR)
                .map_err(|e| Error::Decode(format!("{}: cannot convert {fmt:?} to RGB: {e}", self.info.name)))?;
            self.scaler = Some((fmt, w, h, ctx));
        }
        if let Some((_, _, _, ctx)) = self.scaler.as_mut() {
            ctx.run(&self.decoded, &mut self.rgb)
                .map_err(|e| Error::Decode(format!("{}: colour conversion failed: {e}", self.info.name)))?;
        }
        let row = w as usize * 3;
        let stride = self.rgb.stride(0);
        let plane = self.rgb.data(0);
        let image = if stride == row {
            RgbFrame::from_slice(w, h, &plane[..row * h as usize])
        } else {
            let mut data = Vec::with_capacity(row * h as usize);
            for y in 0..h as usize {
                data.extend_from_slice(&plane[y * stride..y * stride + row]);
            }
            RgbFrame::new(w, h, data)
        };
        let image = image.map_err(|e| Error::Decode(e.to_string()))?;
        let ts = self.decoded.timestamp().or(self.decoded.pts());
        let fallback = self.info.fps.map(|f| self.next_index as f64 / f).unwrap_or(0.0);
        let pts_secs = ts.map(|t| t as f64 * self.time_base - self.start_secs).unwrap_or(fallback);
        let duration = self.decoded.packet().duration;
        let duration_secs =
            (duration > 0).then_some(duration as f64 * self.time_base).or(self.info.fps.map(|f| 1.0 / f));
        let index = self.next_index;
        self.next_index += 1;
        let now = Instant::now();
        Ok(Frame {
            index,
            pts_secs,
            duration_secs,
            image,
            decoded_at: now,
            decode_ms: (now - started).as_secs_f64() * 1e3,
        })
    }

    /// The next frame; `Err(StreamDropped)` when a live input fails mid-way.
    fn decode_next(&mut self) -> Result<Option<Frame>> {
        let started = Instant::now();
        loop {
            match self.decoder.receive_frame(&mut self.decoded) {
                Ok(()) => {
                    if let Some(target) = self.seek_target {
                        let half_frame = self.info.fps.map_or(0.0, |f| 0.5 / f);
                        let ts = self.decoded.timestamp().or(self.decoded.pts());
                        let pts = ts.map(|t| t as f64 * self.time_base - self.start_secs);
                        if pts.is_some_and(|p| p < target - half_frame) {
                            continue; // before the seek target: decoded only to reach it
                        }
                        self.seek_target = None;
                        if let (Some(p), Some(f)) = (pts, self.info.fps) {
                            self.next_index = (p * f).round() as u64;
                        }
                    }
                    return self.convert(started).map(Some);
                }
                Err(ff::Error::Eof) => return Ok(None),
                Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => {}
                Err(e) => {
                    // A corrupt frame: count it and go on with the rest.
                    self.stats.decode_errors += 1;
                    tracing::debug!("{}: decode error: {e}", self.info.name);
                }
            }
            if self.eof_sent {
                return Ok(None);
            }
            let mut packet = ff::Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) => {
                    if packet.stream() == self.stream_index && self.decoder.send_packet(&packet).is_err() {
                        self.stats.decode_errors += 1;
                    }
                }
                Err(ff::Error::Eof) => {
                    // A clean end, also for a network stream (a drop shows as an error).
                    self.eof_sent = true;
                    let _ = self.decoder.send_eof();
                }
                Err(e) => {
                    if self.info.live {
                        return Err(Error::StreamDropped(format!("{}: {e}", self.info.name)));
                    }
                    // A truncated or damaged file: decode what we have, then stop.
                    self.stats.decode_errors += 1;
                    tracing::warn!("{}: read error, stopping after the decodable frames: {e}", self.info.name);
                    self.eof_sent = true;
                    let _ = self.decoder.send_eof();
                }
            }
        }
    }
}

impl FrameSource for VideoSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        self.decode_next()
    }

    fn seek(&mut self, secs: f64) -> Result<()> {
        if !self.info.seekable {
            return Err(Error::NotSeekable(self.info.name.clone()));
        }
        let target = ((secs.max(0.0) + self.start_secs) * f64::from(ff::ffi::AV_TIME_BASE)) as i64;
        self.input
            .seek(target, ..target)
            .map_err(|e| Error::Decode(format!("{}: seek failed: {e}", self.info.name)))?;
        self.decoder.flush();
        self.eof_sent = false;
        // Decoding restarts at the keyframe before `secs`; frames up to `secs` are skipped so
        // the next frame is the one at the requested time, with its own index.
        self.seek_target = Some(secs.max(0.0));
        if let Some(fps) = self.info.fps {
            self.next_index = (secs.max(0.0) * fps).round() as u64;
        }
        Ok(())
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }
}

/// A network stream that reopens itself with exponential backoff when it drops.
pub struct ReconnectingSource {
    url: String,
    options: OpenOptions,
    inner: VideoSource,
    reconnects: u64,
    decode_errors: u64,
    next_index: u64,
}

impl ReconnectingSource {
    pub fn open(url: &str, options: OpenOptions) -> Result<Self> {
        let inner = VideoSource::open(url, &options)?;
        Ok(Self { url: url.to_string(), options, inner, reconnects: 0, decode_errors: 0, next_index: 0 })
    }

    fn reopen(&mut self) -> Result<()> {
        let mut delay = self.options.initial_backoff;
        let mut last = None;
        for attempt in 1..=self.options.max_reconnects {
            std::thread::sleep(delay);
            match VideoSource::open(&self.url, &self.options) {
                Ok(mut s) => {
                    tracing::warn!("{}: reconnected (attempt {attempt})", self.url);
                    self.decode_errors += self.inner.stats.decode_errors;
                    s.next_index = self.next_index;
                    self.inner = s;
                    self.reconnects += 1;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            delay = (delay * 2).min(self.options.max_backoff);
        }
        Err(Error::StreamLost {
            url: self.url.clone(),
            attempts: self.options.max_reconnects,
            reason: last.map(|e| e.to_string()).unwrap_or_else(|| "dropped".into()),
        })
    }
}

impl FrameSource for ReconnectingSource {
    fn info(&self) -> &SourceInfo {
        &self.inner.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            match self.inner.next_frame() {
                Ok(Some(f)) => {
                    self.next_index = f.index + 1;
                    return Ok(Some(f));
                }
                Ok(None) => return Ok(None),
                Err(Error::StreamDropped(why)) => {
                    tracing::warn!("stream dropped: {why}");
                    if self.options.max_reconnects == 0 {
                        return Err(Error::StreamDropped(why));
                    }
                    self.reopen()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn stats(&self) -> SourceStats {
        SourceStats { decode_errors: self.decode_errors + self.inner.stats.decode_errors, reconnects: self.reconnects }
    }
}
