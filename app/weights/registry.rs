//! The registry of downloadable weights: the official YOLOv9 v0.1 release files
//! (`weights/registry.json`, embedded in the binary), optionally extended or overridden by a
//! site's own registry file (`--registry FILE` or `$SPOTTER_WEIGHTS_REGISTRY`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::WeightsError;

/// The official registry, as shipped.
const OFFICIAL: &str = include_str!("../../weights/registry.json");

/// Environment variable naming an extra registry file (same format as `weights/registry.json`).
pub const REGISTRY_ENV: &str = "SPOTTER_WEIGHTS_REGISTRY";

/// What a release file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A GELAN model (`gelan-*.pt`): the inference architecture, trained as it is.
    Gelan,
    /// A YOLOv9 training checkpoint with the auxiliary PGI branch (dropped at load).
    DualHead,
    /// A YOLOv9 model re-parameterised into its GELAN architecture (`yolov9-*-converted.pt`).
    Converted,
    /// Anything a site registry adds.
    #[default]
    Custom,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Gelan => "GELAN",
            Self::DualHead => "dual-head",
            Self::Converted => "converted",
            Self::Custom => "custom",
        }
    }
}

/// A row of the official COCO table (`README.md` of the YOLOv9 repository), val2017 at 640.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CocoRow {
    /// The row's model name in the table (`YOLOv9-C`).
    pub row: String,
    /// AP@[.5:.95] in percent.
    pub ap: f64,
    pub ap50: f64,
    pub ap75: f64,
    /// Parameters in millions, as printed.
    pub params_m: f64,
    /// GFLOPs at 640, as printed.
    pub gflops: f64,
}

/// One downloadable weights file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Variant {
    /// The name `--model` and `spotter weights fetch` take.
    pub name: String,
    /// File name in the weights directory and on a mirror.
    pub file: String,
    /// Where it is released.
    pub url: String,
    #[serde(default)]
    pub kind: Kind,
    /// Built-in config the file's architecture matches (the file carries its own config too).
    #[serde(default)]
    pub architecture: Option<String>,
    /// Parameters of the model Spotter runs (fused, inference branch), when known exactly.
    #[serde(default)]
    pub params: Option<u64>,
    /// GFLOPs of one 640x640 forward pass of that model, when known exactly.
    #[serde(default)]
    pub gflops: Option<f64>,
    #[serde(default)]
    pub coco: Option<CocoRow>,
    /// File size in bytes, when known.
    #[serde(default)]
    pub size: Option<u64>,
    /// Pinned SHA-256 of the file (hex), checked after download when present.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

impl Variant {
    /// Parameters in millions: exact when known, else the official table's figure.
    pub fn params_m(&self) -> Option<f64> {
        self.params.map(|p| p as f64 / 1e6).or(self.coco.as_ref().map(|c| c.params_m))
    }

    /// GFLOPs at 640: exact when known, else the official table's figure.
    pub fn gflops_640(&self) -> Option<f64> {
        self.gflops.or(self.coco.as_ref().map(|c| c.gflops))
    }

    /// The URL to download from: the release URL, or `MIRROR/<file>` when a mirror is set.
    pub fn url_with(&self, mirror: Option<&str>) -> String {
        match mirror.map(str::trim).filter(|m| !m.is_empty()) {
            Some(m) => format!("{}/{}", m.trim_end_matches('/'), self.file),
            None => self.url.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RegistryFile {
    #[serde(default)]
    variants: Vec<Variant>,
}

/// The known variants, official first, then those a site registry adds.
#[derive(Debug, Clone)]
pub struct Registry {
    pub variants: Vec<Variant>,
    /// The site registry file in use, if any.
    pub extra: Option<PathBuf>,
}

impl Registry {
    /// The official registry alone.
    pub fn official() -> Result<Self, WeightsError> {
        Ok(Self { variants: parse(OFFICIAL, Path::new("weights/registry.json (built in)"))?, extra: None })
    }

    /// The official registry merged with `extra` (a file path), or with
    /// `$SPOTTER_WEIGHTS_REGISTRY` when `extra` is `None`. Entries of the extra file replace
    /// official ones of the same name and add the others.
    pub fn load(extra: Option<&Path>) -> Result<Self, WeightsError> {
        let mut registry = Self::official()?;
        let extra = extra
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(REGISTRY_ENV).filter(|v| !v.is_empty()).map(PathBuf::from));
        if let Some(path) = extra {
            let text =
                std::fs::read_to_string(&path).map_err(|error| WeightsError::Read { path: path.clone(), error })?;
            for v in parse(&text, &path)? {
                match registry.variants.iter_mut().find(|o| o.name == v.name) {
                    Some(slot) => *slot = v,
                    None => registry.variants.push(v),
                }
            }
            registry.extra = Some(path);
        }
        Ok(registry)
    }

    pub fn get(&self, name: &str) -> Option<&Variant> {
        self.variants.iter().find(|v| v.name == name)
    }

    /// Looks `name` up, accepting the file name too (`gelan-c.pt`).
    pub fn find(&self, name: &str) -> Option<&Variant> {
        self.get(name).or_else(|| self.variants.iter().find(|v| v.file == name))
    }

    pub fn names(&self) -> Vec<&str> {
        self.variants.iter().map(|v| v.name.as_str()).collect()
    }

    /// The variant `name`, or an error listing the known ones.
    pub fn require(&self, name: &str) -> Result<&Variant, WeightsError> {
        self.find(name)
            .ok_or_else(|| WeightsError::UnknownVariant { name: name.to_string(), known: self.names().join(", ") })
    }
}

fn parse(text: &str, origin: &Path) -> Result<Vec<Variant>, WeightsError> {
    let bad = |reason: String| WeightsError::Registry { path: origin.to_path_buf(), reason };
    let file: RegistryFile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    for (i, v) in file.variants.iter().enumerate() {
        if v.name.is_empty() || v.file.is_empty() || v.url.is_empty() {
            return Err(bad(format!("variant {} needs a name, a file and a url", i + 1)));
        }
        if v.file.contains(['/', '\\']) || v.file.starts_with('.') {
            return Err(bad(format!("variant '{}': file '{}' must be a plain file name", v.name, v.file)));
        }
        if let Some(sha) = &v.sha256
            && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(bad(format!("variant '{}': sha256 must be 64 hex digits", v.name)));
        }
        if file.variants[..i].iter().any(|o| o.name == v.name) {
            return Err(bad(format!("variant '{}' is listed twice", v.name)));
        }
    }
    Ok(file.variants)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "https://github.com/WongKinYiu/yolov9/releases/download/v0.1/";

    fn manifest(arch: &str) -> serde_json::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/yolov9/manifests/{arch}.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn official_registry_lists_the_release_files() {
        let r = Registry::official().unwrap();
        let mut names: Vec<String> = r.names().into_iter().map(String::from).collect();
        names.sort_unstable();
        let mut expected = vec!["yolov9-t-converted".to_string()];
        for size in ["s", "m", "c", "e"] {
            expected.extend([format!("gelan-{size}"), format!("yolov9-{size}"), format!("yolov9-{size}-converted")]);
        }
        expected.sort_unstable();
        assert_eq!(names, expected);
        for v in &r.variants {
            assert_eq!(v.file, format!("{}.pt", v.name));
            assert_eq!(v.url, format!("{RELEASE}{}", v.file), "{}", v.name);
            assert!(spotter_detector::spec::builtin_config_name(&v.name).is_some(), "{} has no built-in spec", v.name);
            let kind = if v.name.ends_with("-converted") {
                Kind::Converted
            } else if v.name.starts_with("yolov9") {
                Kind::DualHead
            } else {
                Kind::Gelan
            };
            assert_eq!(v.kind, kind, "{}", v.name);
            // Sizes and checksums are not known until someone downloads the files.
            assert_eq!((v.size, v.sha256.as_deref()), (None, None), "{}", v.name);
        }
    }

    #[test]
    fn exact_numbers_match_the_fused_architecture() {
        // What Spotter runs: a GELAN model; dual-head files drop their PGI branch, leaving the
        // GELAN model of the same size (detector/tests/manifests.rs checks that equality).
        for v in Registry::official().unwrap().variants {
            let Some(params) = v.params else {
                assert_eq!(v.name, "yolov9-t-converted", "only the T file's numbers are unknown");
                continue;
            };
            let size = v.name.trim_end_matches("-converted").rsplit('-').next().unwrap().to_string();
            let fused = &manifest(&format!("gelan-{size}"))["summary_fused"];
            assert_eq!(params, fused["parameters"].as_u64().unwrap(), "{}", v.name);
            let gflops = fused["gflops_640_exact"].as_f64().unwrap();
            assert!((v.gflops.unwrap() - gflops).abs() < 0.05, "{}: {:?} vs {gflops}", v.name, v.gflops);
            // The official table, where it has a row, agrees to its printed precision.
            if let Some(c) = &v.coco {
                assert!((c.params_m - params as f64 / 1e6).abs() < 0.051, "{}", v.name);
                assert!((c.gflops - gflops).abs() < 0.151, "{}", v.name);
            }
        }
    }

    #[test]
    fn official_table_rows() {
        let r = Registry::official().unwrap();
        let c = r.get("yolov9-c-converted").unwrap().coco.clone().unwrap();
        assert_eq!((c.row.as_str(), c.ap, c.ap50, c.ap75), ("YOLOv9-C", 53.0, 70.2, 57.8));
        assert_eq!(r.get("yolov9-e").unwrap().coco.as_ref().unwrap().ap, 55.6);
        assert_eq!(r.get("yolov9-t-converted").unwrap().params_m(), Some(2.0));
        assert!(r.get("gelan-c").unwrap().coco.is_none());
        assert_eq!(r.get("gelan-c").unwrap().params_m(), Some(25.288768));
    }

    #[test]
    fn mirror_replaces_the_release_url() {
        let r = Registry::official().unwrap();
        let v = r.find("gelan-s.pt").unwrap();
        assert_eq!(v.url_with(None), format!("{RELEASE}gelan-s.pt"));
        assert_eq!(v.url_with(Some("http://mirror.lan/yolov9/")), "http://mirror.lan/yolov9/gelan-s.pt");
        assert_eq!(v.url_with(Some("http://mirror.lan")), "http://mirror.lan/gelan-s.pt");
        assert_eq!(v.url_with(Some("  ")), v.url);
    }

    #[test]
    fn site_registry_adds_and_replaces_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.json");
        let sha = "ab".repeat(32);
        std::fs::write(
            &path,
            format!(
                r#"{{"variants": [
                    {{"name": "gelan-c", "file": "gelan-c.pt", "url": "http://lan/gelan-c.pt", "kind": "gelan", "sha256": "{sha}"}},
                    {{"name": "forklift", "file": "forklift.pt", "url": "http://lan/forklift.pt"}}
                ]}}"#
            ),
        )
        .unwrap();
        let r = Registry::load(Some(&path)).unwrap();
        assert_eq!(r.variants.len(), Registry::official().unwrap().variants.len() + 1);
        assert_eq!(r.get("gelan-c").unwrap().sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(r.get("gelan-c").unwrap().url, "http://lan/gelan-c.pt");
        assert_eq!(r.get("forklift").unwrap().kind, Kind::Custom);
        assert_eq!(r.extra.as_deref(), Some(path.as_path()));
    }

    #[test]
    fn bad_site_registries_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.json");
        for (text, needle) in [
            ("{", "EOF"),
            (r#"{"variants": [{"name": "x", "file": "../x.pt", "url": "u"}]}"#, "plain file name"),
            (r#"{"variants": [{"name": "x", "file": "x.pt", "url": "u", "sha256": "12"}]}"#, "64 hex digits"),
            (r#"{"variants": [{"name": "x", "file": "x.pt", "url": ""}]}"#, "needs a name"),
            (
                r#"{"variants": [{"name": "x", "file": "x.pt", "url": "u"}, {"name": "x", "file": "y.pt", "url": "u"}]}"#,
                "twice",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Registry::load(Some(&path)).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("site.json"), "{text}: {err}");
        }
        let missing = dir.path().join("missing.json");
        assert!(Registry::load(Some(&missing)).unwrap_err().to_string().contains("missing.json"));
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let r = Registry::official().unwrap();
        let err = r.require("gelan-x").unwrap_err().to_string();
        assert!(err.contains("gelan-x") && err.contains("gelan-c") && err.contains("yolov9-e-converted"), "{err}");
        assert_eq!(r.require("yolov9-c.pt").unwrap().name, "yolov9-c");
    }
}
