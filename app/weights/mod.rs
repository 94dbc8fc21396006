//! Model weights: the registry of official variants, where files live, and downloading them.
//!
//! `--model NAME` resolves through the local weights directories first; a registry variant that
//! is not present is downloaded (see [`resolve_or_fetch`]).

pub mod download;
pub mod progress;
pub mod registry;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use spotter_detector::detector::{resolve_source, user_weights_dir, weights_dirs};
use spotter_detector::{Detector, DetectorOptions};

pub use download::{Progress, Request};
pub use registry::{Registry, Variant};

/// Overrides the download directory (and is searched first).
pub const DIR_ENV: &str = "SPOTTER_WEIGHTS_DIR";
/// A base URL that replaces the release URL: files are fetched as `MIRROR/<file name>`.
pub const MIRROR_ENV: &str = "SPOTTER_WEIGHTS_MIRROR";

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("unknown weights '{name}': expected one of {known}")]
    UnknownVariant { name: String, known: String },

    #[error("{}: invalid weights registry: {reason}", path.display())]
    Registry { path: PathBuf, reason: String },

    #[error("cannot download {file} from {url}: {reason}")]
    Network { file: String, url: String, reason: String },

    #[error("cannot download {file} from {url}: the server answered {status}")]
    Status { file: String, url: String, status: String },

    #[error("{file} from {url} is not a usable checkpoint ({reason}); the download was discarded")]
    NotLoadable { file: String, url: String, reason: String },

    #[error("{file} from {url} has SHA-256 {actual}, not the pinned {expected}; the download was discarded")]
    Checksum { file: String, url: String, expected: String, actual: String },

    #[error("{file} from {url} has {actual} bytes, not the expected {expected}; the download was discarded")]
    Size { file: String, url: String, expected: u64, actual: u64 },

    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },

    #[error("cannot write {}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },

    #[error("download of {file} cancelled; {} kept for resuming", human_bytes(*done))]
    Cancelled { file: String, done: u64 },

    #[error("no weights directory: set {DIR_ENV} or pass a directory")]
    NoDirectory,
}

impl WeightsError {
    /// Whether the server could not be reached or did not deliver (as opposed to a bad file
    /// or a local failure): the cases a mirror or a manual copy helps with.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Network { .. } | Self::Status { .. })
    }
}

/// `1.5 MB`-style sizes (decimal units).
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

/// Where downloads go: `explicit`, else `$SPOTTER_WEIGHTS_DIR`, else `./weights` in a Spotter
/// checkout (it has `weights/README.md`), else the user's data directory
/// (`$XDG_DATA_HOME/spotter/weights`, `~/.local/share/spotter/weights`). Each of these is also
/// searched by `--model NAME` (see `weights_dirs`).
pub fn download_dir(explicit: Option<&Path>) -> Result<PathBuf, WeightsError> {
    if let Some(d) = explicit {
        return Ok(d.to_path_buf());
    }
    if let Some(d) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let checkout = Path::new("weights");
    if checkout.join("README.md").is_file() {
        return Ok(checkout.to_path_buf());
    }
    user_weights_dir().ok_or(WeightsError::NoDirectory)
}

/// The mirror base URL: `explicit`, else `$SPOTTER_WEIGHTS_MIRROR`.
pub fn mirror(explicit: Option<&str>) -> Option<String> {
    explicit
        .map(str::to_string)
        .or_else(|| std::env::var(MIRROR_ENV).ok())
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
}

/// The local file of `variant`, searching `dirs` in order for its file name, then for
/// `<name>.safetensors` (a converted copy).
pub fn find_local(variant: &Variant, dirs: &[PathBuf]) -> Option<PathBuf> {
    let names = [variant.file.clone(), format!("{}.safetensors", variant.name)];
    dirs.iter().flat_map(|d| names.iter().map(move |n| d.join(n))).find(|p| p.is_file())
}

/// The download request for `variant` into `dir`.
pub fn request(variant: &Variant, dir: &Path, mirror: Option<&str>) -> Request {
    let mut req = Request::new(variant.url_with(mirror), dir.join(&variant.file));
    req.size = variant.size;
    req.sha256 = variant.sha256.clone();
    req
}

/// Adds what the user can do when a server could not deliver `variant`.
pub fn with_hint(err: WeightsError, variant: &Variant, dir: &Path) -> anyhow::Error {
    if err.is_unreachable() {
        anyhow::anyhow!("{err}; place {} in {} or set {MIRROR_ENV} to a mirror", variant.file, dir.display())
    } else {
        err.into()
    }
}

/// The weights file for `--model NAME|PATH`: an existing path; a registry variant found in the
/// weights directories, or else downloaded into the download directory (progress on stderr);
/// otherwise whatever the detector resolves (built-in names whose files were placed by hand).
pub fn resolve_or_fetch(name: &str, options: &DetectorOptions) -> anyhow::Result<PathBuf> {
    if Path::new(name).exists() {
        return Ok(PathBuf::from(name));
    }
    let explicit = options.weights_dir.as_deref();
    let registry = Registry::load(None)?;
    if let Some(variant) = registry.get(name) {
        if let Some(found) = find_local(variant, &weights_dirs(explicit)) {
            return Ok(found);
        }
        let dir = download_dir(explicit)?;
        let mirror = mirror(None);
        let bar = progress::TerminalProgress::new(&variant.file);
        let fetched =
            download::download(&request(variant, &dir, mirror.as_deref()), &|p| bar.update(p), &AtomicBool::new(false))
                .map_err(|e| with_hint(e, variant, &dir))?;
        drop(bar);
        eprintln!("saved {} ({})", fetched.path.display(), human_bytes(fetched.bytes));
        return Ok(fetched.path);
    }
    match resolve_source(name, explicit) {
        Ok(path) => Ok(path),
        Err(spotter_detector::Error::WeightsNotFound { name, searched }) => Err(anyhow::anyhow!(
            "weights for '{name}' are not present (looked in {searched}) and the official release has no such \
             file; place {name}.pt in one of those folders"
        )),
        Err(e) => Err(e.into()),
    }
}

/// Loads `--model NAME|PATH`, downloading a registry variant that is not present.
pub fn load_detector(name: &str, options: DetectorOptions) -> anyhow::Result<Detector> {
    let path = resolve_or_fetch(name, &options)?;
    Ok(Detector::from_path(&path, options)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1_500), "1.5 kB");
        assert_eq!(human_bytes(51_234_567), "51.2 MB");
        assert_eq!(human_bytes(2_500_000_000), "2.50 GB");
    }

    #[test]
    fn local_files_are_found_in_directory_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let registry = Registry::official().unwrap();
        let v = registry.get("gelan-c").unwrap();
        let dirs = [a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_local(v, &dirs), None);
        std::fs::write(b.path().join("gelan-c.pt"), b"x").unwrap();
        assert_eq!(find_local(v, &dirs), Some(b.path().join("gelan-c.pt")));
        std::fs::write(a.path().join("gelan-c.safetensors"), b"x").unwrap();
        assert_eq!(find_local(v, &dirs), Some(a.path().join("gelan-c.safetensors")));
    }

    #[test]
    fn explicit_directory_and_mirror_win() {
        assert_eq!(download_dir(Some(Path::new("/x/w"))).unwrap(), Path::new("/x/w"));
        assert_eq!(mirror(Some(" http://m/ ")).as_deref(), Some("http://m/"));
        let registry = Registry::official().unwrap();
        let req = request(registry.get("gelan-e").unwrap(), Path::new("/w"), Some("http://m/"));
        assert_eq!(req.url, "http://m/gelan-e.pt");
        assert_eq!(req.dest, Path::new("/w/gelan-e.pt"));
    }

    #[test]
    fn unreachable_servers_get_a_hint() {
        let registry = Registry::official().unwrap();
        let v = registry.get("gelan-c").unwrap();
        let err = WeightsError::Network {
            file: "gelan-c.pt".into(),
            url: "http://x/gelan-c.pt".into(),
            reason: "connection refused".into(),
        };
        let msg = with_hint(err, v, Path::new("/w")).to_string();
        assert!(
            msg.ends_with("connection refused; place gelan-c.pt in /w or set SPOTTER_WEIGHTS_MIRROR to a mirror"),
            "{msg}"
        );
        let err = WeightsError::Cancelled { file: "gelan-c.pt".into(), done: 3 };
        assert!(!with_hint(err, v, Path::new("/w")).to_string().contains("MIRROR"));
    }
}
