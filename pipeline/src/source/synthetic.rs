//! A generated moving test pattern, paced in real time like a camera. It stands in for a
//! webcam in tests (this machine has none) and goes through the same source interface.

use std::time::{Duration, Instant};

use spotter_detector::RgbFrame;

use super::{Frame, FrameSource, SourceInfo, SourceKind};
use crate::error::{Error, Result};

pub struct SyntheticSource {
    info: SourceInfo,
    period: Duration,
    started: Option<Instant>,
    next: u64,
    limit: Option<u64>,
}

impl SyntheticSource {
    pub fn new(width: u32, height: u32, fps: f64, frames: Option<u64>) -> Result<Self> {
        if width == 0 || height == 0 || fps.is_nan() || fps <= 0.0 {
            return Err(Error::BadSource(format!("synthetic source {width}x{height}@{fps}")));
        }
        let info = SourceInfo {
            kind: SourceKind::Synthetic,
            name: format!("synthetic:{width}x{height}@{fps}"),
            width,
            height,
            fps: Some(fps),
            duration_secs: frames.map(|n| n as f64 / fps),
            frame_count: frames,
            seekable: false,
            live: true,
            has_audio: false,
        };
        Ok(Self { info, period: Duration::from_secs_f64(1.0 / fps), started: None, next: 0, limit: frames })
    }

    /// A gradient background with a bright square moving across it.
    fn render(&self, index: u64) -> Vec<u8> {
        let (w, h) = (self.info.width as usize, self.info.height as usize);
        let mut data = vec![0u8; w * h * 3];
        let side = (w.min(h) / 4).max(1);
        let x0 = (index as usize * 7) % w.saturating_sub(side).max(1);
        let y0 = (index as usize * 3) % h.saturating_sub(side).max(1);
        for y in 0..h {
            for x in 0..w {
                let p = (y * w + x) * 3;
                let inside = (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y);
                let px = if inside { [240, 240, 40] } else { [(x * 255 / w) as u8, (y * 255 / h) as u8, 96] };
                data[p..p + 3].copy_from_slice(&px);
            }
        }
        data
    }
}

impl FrameSource for SyntheticSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.limit.is_some_and(|n| self.next >= n) {
            return Ok(None);
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        // Real time: frame n is available at n / fps.
        let due = started + self.period * self.next as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t0 = Instant::now();
        let image = RgbFrame::new(self.info.width, self.info.height, self.render(self.next))
            .map_err(|e| Error::Decode(e.to_string()))?;
        let index = self.next;
        self.next += 1;
        let now = Instant::now();
        Ok(Some(Frame {
            index,
            pts_secs: index as f64 * self.period.as_secs_f64(),
            duration_secs: Some(self.period.as_secs_f64()),
            image,
            decoded_at: now,
            decode_ms: (now - t0).as_secs_f64() * 1e3,
        }))
    }
}
