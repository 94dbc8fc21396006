//! Webcams through nokhwa (V4L2 on Linux, AVFoundation, Media Foundation).

use std::time::Instant;

use nokhwa::Camera;
use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{
    ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution,
};
use spotter_detector::RgbFrame;

use super::{Frame, FrameSource, SourceInfo, SourceKind};
use crate::error::{Error, Result};

/// A camera the system reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CameraDevice {
    pub index: String,
    pub name: String,
    pub description: String,
}

/// The cameras present, by index and name.
pub fn list_cameras() -> Result<Vec<CameraDevice>> {
    let cams = nokhwa::query(ApiBackend::Auto).map_err(|e| Error::Camera(format!("cannot list cameras: {e}")))?;
    Ok(cams
        .into_iter()
        .map(|c| CameraDevice {
            index: c.index().to_string(),
            name: c.human_name(),
            description: c.description().to_string(),
        })
        .collect())
}

/// The formats (resolution, frame rate, pixel format) a camera offers.
pub fn camera_formats(device: &str) -> Result<Vec<(u32, u32, u32, String)>> {
    let mut cam = Camera::new(resolve(device)?, RequestedFormat::new::<RgbFormat>(RequestedFormatType::None))
        .map_err(|e| Error::Camera(format!("camera {device}: {e}")))?;
    let formats = cam.compatible_camera_formats().map_err(|e| Error::Camera(format!("camera {device}: {e}")))?;
    Ok(formats.into_iter().map(|f| (f.width(), f.height(), f.frame_rate(), f.format().to_string())).collect())
}

/// An index (`0`) or a name fragment (`Logitech`).
fn resolve(device: &str) -> Result<CameraIndex> {
    if let Ok(i) = device.parse::<u32>() {
        return Ok(CameraIndex::Index(i));
    }
    let wanted = device.to_lowercase();
    list_cameras()?
        .into_iter()
        .find(|c| c.name.to_lowercase().contains(&wanted))
        .map(|c| c.index.parse::<u32>().map(CameraIndex::Index).unwrap_or(CameraIndex::String(c.index)))
        .ok_or_else(|| Error::Camera(format!("no camera named like '{device}'")))
}

pub struct CameraSource {
    camera: Camera,
    info: SourceInfo,
    started: Option<Instant>,
    next: u64,
}

impl CameraSource {
    pub fn open(device: &str, width: Option<u32>, height: Option<u32>, fps: Option<u32>) -> Result<Self> {
        let index = resolve(device)?;
        let request = match (width, height) {
            (Some(w), Some(h)) => RequestedFormatType::Closest(CameraFormat::new(
                Resolution::new(w, h),
                FrameFormat::MJPEG,
                fps.unwrap_or(30),
            )),
            _ => match fps {
                Some(f) => RequestedFormatType::HighestFrameRate(f),
                None => RequestedFormatType::AbsoluteHighestResolution,
            },
        };
        let mut camera = Camera::new(index, RequestedFormat::new::<RgbFormat>(request))
            .map_err(|e| Error::Camera(format!("camera {device} is absent or busy: {e}")))?;
        camera.open_stream().map_err(|e| Error::Camera(format!("camera {device} cannot stream: {e}")))?;
        let format = camera.camera_format();
        let info = SourceInfo {
            kind: SourceKind::Camera,
            name: format!("camera:{device} ({})", camera.info().human_name()),
            width: format.width(),
            height: format.height(),
            fps: Some(f64::from(format.frame_rate())),
            duration_secs: None,
            frame_count: None,
            seekable: false,
            live: true,
            has_audio: false,
        };
        Ok(Self { camera, info, started: None, next: 0 })
    }
}

impl FrameSource for CameraSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let t0 = Instant::now();
        let started = *self.started.get_or_insert(t0);
        let buffer = self.camera.frame().map_err(|e| Error::Camera(format!("{}: {e}", self.info.name)))?;
        let image =
            buffer.decode_image::<RgbFormat>().map_err(|e| Error::Camera(format!("{}: {e}", self.info.name)))?;
        let (w, h) = image.dimensions();
        let image = RgbFrame::new(w, h, image.into_raw()).map_err(|e| Error::Camera(e.to_string()))?;
        let index = self.next;
        self.next += 1;
        let now = Instant::now();
        Ok(Some(Frame {
            index,
            pts_secs: (t0 - started).as_secs_f64(),
            duration_secs: self.info.fps.map(|f| 1.0 / f),
            image,
            decoded_at: now,
            decode_ms: (now - t0).as_secs_f64() * 1e3,
        }))
    }
}

impl Drop for CameraSource {
    fn drop(&mut self) {
        let _ = self.camera.stop_stream();
    }
}
