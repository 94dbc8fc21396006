//! The cameras the Open menu offers: listed through nokhwa, or by a function a caller passes
//! in [`StartOptions`](super::StartOptions) (tests, where no camera is attached).

use std::sync::Arc;

/// One camera the menu offers.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraEntry {
    pub name: String,
    /// Its largest resolution, when known.
    pub resolution: Option<(u32, u32)>,
    /// The source that opens it (`camera:0`).
    pub source: String,
}

impl CameraEntry {
    /// "name (1280×720)", or the name alone.
    pub fn label(&self) -> String {
        match self.resolution {
            Some((w, h)) => format!("{} ({w}×{h})", self.name),
            None => self.name.clone(),
        }
    }
}

type ListFn = dyn Fn() -> Result<Vec<CameraEntry>, String> + Send + Sync;

/// Lists the cameras present; a failure is one line of text.
#[derive(Clone)]
pub struct CameraLister(Arc<ListFn>);

impl CameraLister {
    pub fn new(list: impl Fn() -> Result<Vec<CameraEntry>, String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(list))
    }

    pub fn list(&self) -> Result<Vec<CameraEntry>, String> {
        (self.0)()
    }
}

/// The cameras attached to this machine.
impl Default for CameraLister {
    fn default() -> Self {
        Self::new(system_cameras)
    }
}

impl std::fmt::Debug for CameraLister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CameraLister")
    }
}

/// The cameras nokhwa finds, each with its largest resolution.
#[cfg(feature = "camera")]
pub fn system_cameras() -> Result<Vec<CameraEntry>, String> {
    use spotter_pipeline::source::camera::{camera_formats, list_cameras};
    let list = list_cameras().map_err(|e| e.to_string())?;
    Ok(list
        .into_iter()
        .map(|c| CameraEntry {
            resolution: camera_formats(&c.index)
                .ok()
                .and_then(|f| f.into_iter().map(|(w, h, _, _)| (w, h)).max_by_key(|(w, h)| w * h)),
            source: format!("camera:{}", c.index),
            name: c.name,
        })
        .collect())
}

#[cfg(not(feature = "camera"))]
pub fn system_cameras() -> Result<Vec<CameraEntry>, String> {
    Err("this build has no camera support (feature `camera`)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_show_their_resolution() {
        let e = CameraEntry { name: "Desk".into(), resolution: Some((1280, 720)), source: "camera:0".into() };
        assert_eq!(e.label(), "Desk (1280×720)");
        assert_eq!(CameraEntry { resolution: None, ..e }.label(), "Desk");
    }
}
