//! `spotter weights ...` and auto-download on `--model NAME`, against a real HTTP server on
//! loopback serving the tiny fixture checkpoints under official file names.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::http_server::{Reply, Server};
use crate::{assert_clean_error, fixture, spotter, spotter_with, stderr, stdout};

fn tiny(name: &str) -> PathBuf {
    fixture(&format!("yolov9/tiny/{name}"))
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// A server offering `tiny-gelan-s.pt` as `<prefix>/gelan-s.pt` (a valid checkpoint carrying its
/// own config, so it loads under the official name).
fn gelan_s_server(prefix: &str, script: Vec<Reply>) -> (Server, Vec<u8>) {
    let data = bytes(&tiny("tiny-gelan-s.pt"));
    (Server::start(vec![(format!("{prefix}/gelan-s.pt"), data.clone())], script), data)
}

fn part(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

fn fetch(names: &[&str], dir: &Path, mirror: &str) -> std::process::Output {
    let mut args = vec!["weights", "fetch"];
    args.extend(names);
    args.extend(["--dir", dir.to_str().unwrap(), "--mirror", mirror]);
    spotter(&args)
}

#[test]
fn fetch_downloads_from_the_mirror_into_the_directory() {
    let (server, data) = gelan_s_server("/yolov9", vec![Reply::Serve]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new/weights");
    let o = fetch(&["gelan-s"], &dir, &format!("{}/yolov9/", server.url()));
    assert!(o.status.success(), "{}", stderr(&o));
    let dest = dir.join("gelan-s.pt");
    assert_eq!(bytes(&dest), data);
    assert!(!part(&dest).exists());
    let out = stdout(&o);
    assert!(out.starts_with(&format!("gelan-s: {} (", dest.display())), "{out}");
    assert!(out.contains("sha256 ") && out.trim_end().len() > 64, "{out}");
    assert!(stderr(&o).contains(&format!("downloading gelan-s.pt (773.8 kB) from {}/yolov9/gelan-s.pt", server.url())));
    let requests = server.finish();
    assert_eq!(requests.len(), 1);
    assert_eq!((requests[0].path.as_str(), requests[0].status), ("/yolov9/gelan-s.pt", 200));
    // Present now: a second fetch asks nothing of the (stopped) server.
    let o = fetch(&["gelan-s"], &dir, "http://127.0.0.1:9");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), format!("gelan-s: already present at {}", dest.display()));
}

#[test]
fn mirror_and_directory_come_from_the_environment_too() {
    let (server, data) = gelan_s_server("/site", vec![Reply::Serve]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let mirror = format!("{}/site", server.url());
    let o = spotter_with(
        &["weights", "fetch", "gelan-s"],
        &[("SPOTTER_WEIGHTS_DIR", dir), ("SPOTTER_WEIGHTS_MIRROR", &mirror)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(bytes(&tmp.path().join("gelan-s.pt")), data);
    assert_eq!(server.finish()[0].path, "/site/gelan-s.pt");
}

#[test]
fn fetch_resumes_after_a_cut_connection() {
    let (server, data) = gelan_s_server("", vec![Reply::CutAfter(300_000), Reply::Serve]);
    let tmp = tempfile::tempdir().unwrap();
    let o = fetch(&["gelan-s"], tmp.path(), &server.url());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming after 300.0 kB"), "{}", stderr(&o));
    let requests = server.finish();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].range, None);
    assert_eq!((requests[1].range.as_deref(), requests[1].status), (Some("bytes=300000-"), 206));
    assert_eq!(bytes(&tmp.path().join("gelan-s.pt")), data, "byte for byte");
}

#[test]
fn an_interrupted_fetch_is_resumed_by_the_next_one() {
    let cuts = vec![Reply::CutAfter(100_000); 3];
    let (server, data) = gelan_s_server("", cuts);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("gelan-s.pt");
    let o = fetch(&["gelan-s"], tmp.path(), &server.url());
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.lines().last().unwrap().contains("the connection was closed after 300.0 kB"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(server.finish().len(), 3, "three attempts, each making progress");
    assert!(!dest.exists(), "nothing under the final name");
    assert_eq!(bytes(&part(&dest)), data[..300_000]);

    let (server, _) = gelan_s_server("", vec![Reply::Serve]);
    let o = fetch(&["gelan-s"], tmp.path(), &server.url());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(server.finish()[0].range.as_deref(), Some("bytes=300000-"));
    assert_eq!(bytes(&dest), data);
    assert!(!part(&dest).exists());
}

#[test]
fn not_found_is_one_clear_line_and_leaves_nothing() {
    let (server, _) = gelan_s_server("", vec![Reply::NotFound]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    let o = fetch(&["gelan-s"], &dir, &server.url());
    assert_clean_error(
        &o,
        &format!("cannot download gelan-s.pt from {}/gelan-s.pt: the server answered HTTP 404", server.url()),
    );
    assert!(stderr(&o).contains(&format!("place gelan-s.pt in {}", dir.display())));
    assert!(!dir.exists(), "no directory, no file, no part");
    server.finish();
}

#[test]
fn connection_refused_is_one_clear_line() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let o = fetch(&["gelan-c"], tmp.path(), &format!("http://127.0.0.1:{port}"));
    assert_clean_error(&o, "connection refused");
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
}

#[test]
fn corrupt_or_truncated_payloads_are_rejected_and_not_kept() {
    let size = bytes(&tiny("tiny-gelan-s.pt")).len();
    for reply in [Reply::Corrupt, Reply::Truncate(size / 2)] {
        let (server, _) = gelan_s_server("", vec![reply.clone()]);
        let tmp = tempfile::tempdir().unwrap();
        let o = fetch(&["gelan-s"], tmp.path(), &server.url());
        let err = stderr(&o);
        assert!(!o.status.success(), "{reply:?}: {err}");
        let last = err.lines().last().unwrap();
        assert!(last.contains("gelan-s.pt from") && last.contains("is not a usable checkpoint"), "{reply:?}: {err}");
        assert!(last.contains("the download was discarded"), "{err}");
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none(), "{reply:?}: nothing kept");
        server.finish();
    }
}

#[test]
fn a_pinned_checksum_is_enforced() {
    let data = bytes(&tiny("tiny-gelan-c.pt"));
    let good = {
        let o = spotter(&["weights", "info", tiny("tiny-gelan-c.pt").to_str().unwrap(), "--json"]);
        let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        v["sha256"].as_str().unwrap().to_string()
    };
    let server = Server::start(
        vec![("/tiny-gelan-c.pt".into(), data.clone())],
        vec![Reply::FlipByte(data.len() / 2), Reply::Serve],
    );
    let tmp = tempfile::tempdir().unwrap();
    let registry = tmp.path().join("site.json");
    let entry = serde_json::json!({"variants": [{
        "name": "tiny-gelan-c", "file": "tiny-gelan-c.pt", "url": format!("{}/tiny-gelan-c.pt", server.url()),
        "sha256": good, "size": data.len(),
    }]});
    std::fs::write(&registry, entry.to_string()).unwrap();
    let dir = tmp.path().join("w");
    let args =
        ["weights", "fetch", "tiny-gelan-c", "--registry", registry.to_str().unwrap(), "--dir", dir.to_str().unwrap()];
    // The registry's URL is used: no mirror.
    let run = || spotter_with(&args, &[("SPOTTER_WEIGHTS_MIRROR", "")]);
    // One flipped byte: same length, wrong checksum.
    let o = run();
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&format!("not the pinned {good}; the download was discarded")), "{}", stderr(&o));
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&good));
    assert_eq!(bytes(&dir.join("tiny-gelan-c.pt")), data);
    server.finish();
}

#[test]
fn unwritable_destinations_are_one_clear_line() {
    let (server, _) = gelan_s_server("", vec![Reply::Serve]);
    let tmp = tempfile::tempdir().unwrap();
    // As root, permission bits stop nothing: a directory below a regular file cannot exist.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let dir = file.join("weights");
    let o = fetch(&["gelan-s"], &dir, &server.url());
    assert_clean_error(&o, &format!("cannot write {}", dir.display()));
    assert_eq!(bytes(&file), b"x");
    server.finish();
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_is_a_clear_error_and_leaves_nothing() {
    let (server, _) = gelan_s_server("", vec![Reply::Serve]);
    let tmp = tempfile::tempdir().unwrap();
    let part_file = tmp.path().join("gelan-s.pt.part");
    // The download lands on a device that is always full.
    std::os::unix::fs::symlink("/dev/full", &part_file).unwrap();
    let o = fetch(&["gelan-s"], tmp.path(), &server.url());
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.lines().last().unwrap().contains("No space left on device"), "{err}");
    assert!(std::fs::symlink_metadata(&part_file).is_err(), "the part is gone");
    assert!(!tmp.path().join("gelan-s.pt").exists());
    server.finish();
}

#[test]
fn unknown_names_fail_before_anything_is_downloaded() {
    let (server, _) = gelan_s_server("", vec![Reply::Serve]);
    let tmp = tempfile::tempdir().unwrap();
    let o = fetch(&["gelan-s", "gelan-x"], tmp.path(), &server.url());
    assert_clean_error(&o, "unknown weights 'gelan-x': expected one of gelan-s, gelan-m");
    assert!(server.finish().is_empty());
}

#[test]
fn detect_downloads_a_missing_variant_then_uses_the_local_file() {
    let (server, data) = gelan_s_server("", vec![Reply::Serve]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let photo = fixture("images/coffee.png");
    let run = |model: &str, mirror: &str| {
        let out = tmp.path().join(format!("{}.jsonl", model.len()));
        let o = spotter_with(
            &["detect", photo.to_str().unwrap(), "--model", model, "--imgsz", "128", "--json", out.to_str().unwrap()],
            &[("SPOTTER_WEIGHTS_DIR", dir), ("SPOTTER_WEIGHTS_MIRROR", mirror)],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let line: Value = serde_json::from_str(std::fs::read_to_string(out).unwrap().trim()).unwrap();
        (line, stderr(&o))
    };
    let (downloaded, err) = run("gelan-s", &server.url());
    assert!(err.contains("downloading gelan-s.pt") && err.contains("saved "), "{err}");
    assert_eq!(server.finish().len(), 1);
    assert_eq!(bytes(&tmp.path().join("gelan-s.pt")), data);
    assert_eq!(downloaded["model"], "gelan-s");
    // The same detections as the fixture file itself, and no download the second time.
    let (direct, _) = run(tiny("tiny-gelan-s.pt").to_str().unwrap(), "http://127.0.0.1:9");
    assert_eq!(downloaded["detections"], direct["detections"]);
    assert_eq!(direct["detections"].as_array().unwrap().len(), 40);
    let (again, err) = run("gelan-s", "http://127.0.0.1:9");
    assert!(!err.contains("downloading"), "{err}");
    assert_eq!(again["detections"], direct["detections"]);
}

#[test]
fn bench_reports_an_unreachable_download_in_one_line() {
    assert_clean_error(
        &spotter(&["bench", "--model", "yolov9-e", "--runs", "1"]),
        "cannot download yolov9-e.pt from http://127.0.0.1:9/yolov9-e.pt: connection refused",
    );
}

#[test]
fn list_shows_what_is_present_and_where() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(tiny("tiny-gelan-s.pt"), tmp.path().join("gelan-s.pt")).unwrap();
    std::fs::copy(tiny("tiny-gelan-c.safetensors"), tmp.path().join("yolov9-c-converted.safetensors")).unwrap();
    let dir = tmp.path().to_str().unwrap();
    let o = spotter(&["weights", "list", "--dir", dir]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let row = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name}: {text}"))
            .to_string()
    };
    assert!(row("gelan-s").ends_with(&tmp.path().join("gelan-s.pt").display().to_string()), "{text}");
    assert!(row("gelan-s").contains("773.8 kB"), "{text}");
    assert!(row("yolov9-c-converted").ends_with("yolov9-c-converted.safetensors"), "{text}");
    assert!(row("gelan-c").ends_with("not downloaded"), "{text}");
    let c = row("yolov9-c");
    assert!(c.contains("dual-head") && c.contains("25.3M") && c.contains("102.1") && c.contains("53.0"), "{c}");
    assert!(text.contains(&format!("downloads go to {dir}")), "{text}");

    let o = spotter(&["weights", "list", "--dir", dir, "--json"]);
    let rows: Vec<Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 13);
    let local: Vec<&str> = rows.iter().filter(|r| !r["local"].is_null()).map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(local, ["gelan-s", "yolov9-c-converted"]);
    let e = rows.iter().find(|r| r["name"] == "gelan-e").unwrap();
    assert_eq!(e["url"], "https://github.com/WongKinYiu/yolov9/releases/download/v0.1/gelan-e.pt");
    assert_eq!((e["params"].as_u64(), e["kind"].as_str()), (Some(57_345_920), Some("GELAN")));
}

#[test]
fn info_describes_a_checkpoint() {
    let o = spotter(&["weights", "info", tiny("tiny-yolov9-c.pt").to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["variant"], "tiny-yolov9-c");
    assert_eq!(v["format"], "pt");
    assert_eq!(v["dtype"], "f16");
    assert_eq!(v["classes"], 5);
    assert_eq!(v["names"][0], "person");
    assert_eq!(v["pgi_branch"], true);
    assert_eq!((v["layers"].as_u64(), v["inference_layers"].as_u64()), (Some(39), Some(24)));
    assert_eq!(v["registry"], Value::Null);

    // A downloaded variant by name, as text.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(tiny("tiny-gelan-s.pt"), tmp.path().join("gelan-s.pt")).unwrap();
    let o = spotter(&["weights", "info", "gelan-s", "--dir", tmp.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "variant:    gelan-s (GELAN, https://github.com/WongKinYiu/yolov9/releases/download/v0.1/gelan-s.pt)",
        "classes:    20 (person, bicycle,",
        "params:     144,060 (fused, inference branch)",
        "GFLOPs:     0.8 at 640x640",
        "PGI branch: no",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    assert_clean_error(
        &spotter(&["weights", "info", "gelan-c"]),
        "gelan-c is not downloaded; get it with `spotter weights fetch gelan-c`",
    );
    let photo = fixture("images/coffee.png");
    assert_clean_error(&spotter(&["weights", "info", photo.to_str().unwrap()]), "coffee.png");
}

/// Detections of `model` on the coffee photo at 128: (class, score, box).
fn detections(model: &Path, dir: &Path) -> Vec<(u64, f64, Vec<f64>)> {
    let out = dir.join("d.jsonl");
    let photo = fixture("images/coffee.png");
    let o = spotter(&[
        "detect",
        photo.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--imgsz",
        "128",
        "--device",
        "cpu",
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: Value = serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    line["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let b = d["bbox"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            (d["class_id"].as_u64().unwrap(), d["score"].as_f64().unwrap(), b)
        })
        .collect()
}

#[test]
fn convert_round_trip_gives_the_same_detections() {
    let tmp = tempfile::tempdir().unwrap();
    for model in ["tiny-gelan-c", "tiny-yolov9-c"] {
        let input = tiny(&format!("{model}.pt"));
        let original = detections(&input, tmp.path());
        assert!(!original.is_empty());
        for half in [false, true] {
            let out = tmp.path().join(format!("{model}-{half}.safetensors"));
            let mut args = vec!["weights", "convert", input.to_str().unwrap(), out.to_str().unwrap()];
            if half {
                args.push("--half");
            }
            let o = spotter(&args);
            assert!(o.status.success(), "{}", stderr(&o));
            assert!(stdout(&o).contains(&format!("{model}, ")), "{}", stdout(&o));
            assert!(!part(&out).exists() && !out.with_extension("safetensors.part").exists());
            let converted = detections(&out, tmp.path());
            assert_eq!(converted.len(), original.len(), "{model} half={half}");
            for ((c1, s1, b1), (c2, s2, b2)) in original.iter().zip(&converted) {
                assert_eq!(c1, c2);
                if half {
                    // The official weights are float16 already: nothing changes.
                    assert_eq!((s1, b1), (s2, b2), "{model}");
                } else {
                    assert!((s1 - s2).abs() <= 1e-3, "{model}: {s1} vs {s2}");
                    assert!(b1.iter().zip(b2).all(|(a, b)| (a - b).abs() <= 1e-3), "{model}: {b1:?} vs {b2:?}");
                }
            }
            // The converted file names itself and keeps classes and the PGI branch.
            let o = spotter(&["weights", "info", out.to_str().unwrap(), "--json"]);
            let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
            assert_eq!(v["variant"], model);
            assert_eq!(v["dtype"], if half { "f16" } else { "f32" });
            assert_eq!(v["pgi_branch"], model == "tiny-yolov9-c");
        }
    }
}

#[test]
fn convert_reports_bad_input_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let out_s = out.to_str().unwrap();
    let photo = fixture("images/coffee.png");
    assert_clean_error(&spotter(&["weights", "convert", photo.to_str().unwrap(), out_s]), "coffee.png");
    assert_clean_error(&spotter(&["weights", "convert", "/no/such.pt", out_s]), "/no/such.pt: no such file");
    let model = tiny("tiny-gelan-s.pt");
    let bad_out = tmp.path().join("out.bin");
    assert_clean_error(
        &spotter(&["weights", "convert", model.to_str().unwrap(), bad_out.to_str().unwrap()]),
        "must be a .safetensors file",
    );
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let inside_file = file.join("out.safetensors");
    assert_clean_error(
        &spotter(&["weights", "convert", model.to_str().unwrap(), inside_file.to_str().unwrap()]),
        &format!("cannot write {}: {} is not a folder", inside_file.display(), file.display()),
    );
    let same = tmp.path().join("same.safetensors");
    std::fs::copy(tiny("tiny-gelan-s.safetensors"), &same).unwrap();
    assert_clean_error(
        &spotter(&["weights", "convert", same.to_str().unwrap(), same.to_str().unwrap()]),
        "input and output are the same file",
    );
    let mut left: Vec<String> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["a-file", "same.safetensors"], "nothing written");
}

#[test]
fn redirects_are_followed_and_resume_keeps_its_range() {
    // Release URLs redirect to a CDN; a resumed request must carry its Range through.
    let data = bytes(&tiny("tiny-gelan-s.pt"));
    let files = vec![("/gelan-s.pt".to_string(), data.clone()), ("/cdn/gelan-s.pt".to_string(), data.clone())];
    let to_cdn = || Reply::Redirect("/cdn/gelan-s.pt".into());
    let server = Server::start(files, vec![to_cdn(), Reply::CutAfter(200_000), to_cdn(), Reply::Serve]);
    let tmp = tempfile::tempdir().unwrap();
    let o = fetch(&["gelan-s"], tmp.path(), &server.url());
    assert!(o.status.success(), "{}", stderr(&o));
    let r = server.finish();
    let seen: Vec<(&str, Option<&str>, u16)> =
        r.iter().map(|r| (r.path.as_str(), r.range.as_deref(), r.status)).collect();
    assert_eq!(
        seen,
        [
            ("/gelan-s.pt", None, 302),
            ("/cdn/gelan-s.pt", None, 200),
            ("/gelan-s.pt", Some("bytes=200000-"), 302),
            ("/cdn/gelan-s.pt", Some("bytes=200000-"), 206),
        ]
    );
    assert_eq!(bytes(&tmp.path().join("gelan-s.pt")), data);
}

#[test]
fn a_server_without_range_support_restarts_the_file() {
    let (server, data) = gelan_s_server("", vec![Reply::IgnoreRange]);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("gelan-s.pt");
    std::fs::write(part(&dest), vec![0u8; 1000]).unwrap();
    let o = fetch(&["gelan-s"], tmp.path(), &server.url());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(server.finish()[0].range.as_deref(), Some("bytes=1000-"));
    assert_eq!(bytes(&dest), data, "the stale part was replaced, not appended to");
}

#[test]
fn list_into_a_closed_pipe_is_not_a_crash() {
    // `spotter weights list | head -1`: the reader goes away before the table is written.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spotter"))
        .args(["weights", "list"])
        .env("SPOTTER_WEIGHTS_DIR", crate::root().join("tests/fixtures/no-weights"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}
