//! Single images and folders of images, decoded like the official pipeline.

use std::path::{Path, PathBuf};
use std::time::Instant;

use spotter_detector::image_io::{is_image_path, read_image};

use super::{Frame, FrameSource, SourceInfo, SourceKind};
use crate::error::{Error, Result};

/// The image files of a folder, in name order (an error when there are none).
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::BadSource(format!("cannot read folder {}: {e}", dir.display())))?;
    let mut paths: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && is_image_path(p)).collect();
    paths.sort();
    if paths.is_empty() {
        return Err(Error::BadSource(format!("{}: no images in this folder", dir.display())));
    }
    Ok(paths)
}

pub struct ImageSource {
    paths: Vec<PathBuf>,
    next: usize,
    info: SourceInfo,
}

impl ImageSource {
    pub fn single(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::NotFound(path.to_path_buf()));
        }
        Self::new(vec![path.to_path_buf()], path)
    }

    /// The folder's images in name order.
    pub fn folder(dir: &Path) -> Result<Self> {
        Self::new(image_files(dir)?, dir)
    }

    fn new(paths: Vec<PathBuf>, name: &Path) -> Result<Self> {
        // The first image gives the nominal size; others may differ.
        let first = read_image(&paths[0]).map_err(|e| Error::BadSource(e.to_string()))?;
        let info = SourceInfo {
            kind: SourceKind::Images,
            name: name.display().to_string(),
            width: first.width,
            height: first.height,
            fps: None,
            duration_secs: None,
            frame_count: Some(paths.len() as u64),
            seekable: true,
            live: false,
            has_audio: false,
        };
        Ok(Self { paths, next: 0, info })
    }

    /// The file behind frame `index`.
    pub fn path(&self, index: u64) -> Option<&Path> {
        self.paths.get(index as usize).map(PathBuf::as_path)
    }
}

impl FrameSource for ImageSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let Some(path) = self.paths.get(self.next) else { return Ok(None) };
        let started = Instant::now();
        let image = read_image(path).map_err(|e| Error::BadSource(e.to_string()))?;
        let index = self.next as u64;
        self.next += 1;
        let now = Instant::now();
        Ok(Some(Frame {
            index,
            pts_secs: 0.0,
            duration_secs: None,
            image,
            decoded_at: now,
            decode_ms: (now - started).as_secs_f64() * 1e3,
        }))
    }

    fn seek(&mut self, secs: f64) -> Result<()> {
        // Images have no time: seek by index (one image per second).
        self.next = (secs.max(0.0) as usize).min(self.paths.len());
        Ok(())
    }
}
