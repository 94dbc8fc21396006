//! The window's real state driven through egui_kittest: what a user clicks, what they see.

use std::time::{Duration, Instant};

use egui::{Key, Modifiers, Pos2, Rect};
use egui_kittest::kittest::Queryable;
use egui_kittest::{Harness, SnapshotOptions};
use spotter::gui::{
    Action, CameraEntry, CameraLister, NO_MODEL, SlotState, SpotterApp, StartOptions, State, missing_message,
};

use crate::{demo, tiny};

/// The app is created inside the first frame so its workers wake the harness's context.
struct Host {
    app: Option<SpotterApp>,
    start: StartOptions,
    state: State,
}

impl Host {
    fn app(&mut self) -> &mut SpotterApp {
        self.app.as_mut().unwrap()
    }
}

const SIZE: [f32; 2] = [1280.0, 800.0];

fn harness(start: StartOptions, state: State) -> Harness<'static, Host> {
    let mut h = Harness::builder().with_size(SIZE).build_ui_state(
        |ui, host: &mut Host| {
            let (state, start) = (host.state.clone(), host.start.clone());
            host.app.get_or_insert_with(|| SpotterApp::new(ui.ctx(), state, start)).ui(ui);
        },
        Host { app: None, start, state },
    );
    h.step();
    h
}

/// A start on the demo clip with an empty weights folder (no official weights, ever).
fn start(model: Option<String>, weights: &tempfile::TempDir) -> StartOptions {
    StartOptions {
        source: Some(demo().display().to_string()),
        model,
        start_paused: false,
        compare_with: Vec::new(),
        layers: false,
        weights_dirs: Some(vec![weights.path().to_path_buf()]),
        ..StartOptions::default()
    }
}

/// Steps the UI until `cond` holds (panics with `what` after `secs`).
fn wait_until(h: &mut Harness<'_, Host>, what: &str, secs: u64, mut cond: impl FnMut(&mut Harness<'_, Host>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        h.step();
        if cond(h) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn shows(h: &Harness<'_, Host>, text: &str) -> bool {
    h.query_all_by_label_contains(text).next().is_some()
}

fn model_name(h: &mut Harness<'_, Host>, slot: usize) -> Option<String> {
    let p = h.state_mut().app().player.as_ref()?;
    p.latest.as_ref()?.results.get(slot).map(|r| r.model.clone())
}

/// Hides what changes from run to run (timings in the status bar) from snapshots.
fn mask_status(h: &mut Harness<'_, Host>) {
    h.mask(Rect::from_min_max(Pos2::new(0.0, SIZE[1] - 28.0), Pos2::new(SIZE[0], SIZE[1])));
}

fn snapshot_options() -> SnapshotOptions {
    // Video frames are decoded and scaled by the GPU renderer: allow the odd pixel to differ.
    SnapshotOptions::new().threshold(2.0).max_failed_pixels(400)
}

#[test]
fn opening_a_file_plays_it_with_boxes_stats_and_the_model_named() {
    let weights = tempfile::tempdir().unwrap();
    let model = tiny("tiny-gelan-s").display().to_string();
    let mut h = harness(start(Some(model.clone()), &weights), State::default());
    wait_until(&mut h, "the model runs on the video", 60, |h| model_name(h, 0).is_some_and(|m| m != NO_MODEL));
    wait_until(&mut h, "stats are shown", 10, |h| shows(h, "fps") && shows(h, "dropped") && shows(h, "p50 ms"));
    let app = h.state_mut().app();
    let p = app.player.as_ref().unwrap();
    assert!(matches!(&p.slots[0], SlotState::Ready(m) if *m == model), "{:?}", p.slots);
    let info = p.info.as_ref().unwrap();
    let aspect = info.width as f32 / info.height as f32;
    assert_eq!(app.state.recent_sources[0], demo().display().to_string(), "the source is remembered");
    let rect = app.video_rect().expect("the video is drawn");
    // The frame's aspect is kept inside the central area.
    assert!((rect.width() / rect.height() - aspect).abs() < 0.01, "{rect:?}");
    assert!(shows(&h, "tiny-gelan-s"), "the model is named");
    assert!(shows(&h, "0:0"), "the position is shown");
}

#[test]
fn missing_weights_are_explained_and_the_video_still_plays() {
    let weights = tempfile::tempdir().unwrap();
    let mut s = start(Some("gelan-s".into()), &weights);
    s.start_paused = true;
    let mut h = harness(s, State::default());
    let message = missing_message("gelan-s");
    wait_until(&mut h, "the banner", 30, |h| shows(h, &message));
    wait_until(&mut h, "a frame", 30, |h| h.state_mut().app().player.as_ref().is_some_and(|p| p.latest.is_some()));
    assert!(shows(&h, "Download gelan-s"), "a download is offered");
    assert!(shows(&h, "Pick a checkpoint"));
    assert!(shows(&h, NO_MODEL), "the status bar says no model runs");
    assert_eq!(model_name(&mut h, 0).as_deref(), Some(NO_MODEL));
    // Playing goes on without a model.
    h.get_by_label("Play").click();
    let first = h.state_mut().app().player.as_ref().unwrap().latest.as_ref().unwrap().frame.index;
    wait_until(&mut h, "playback advances", 30, |h| {
        h.state_mut().app().player.as_ref().unwrap().latest.as_ref().unwrap().frame.index > first + 3
    });
    h.get_by_label("Pause").click();
    h.step();
    assert!(h.state_mut().app().player.as_ref().unwrap().paused);
}

#[test]
fn switching_models_comparing_and_thresholds_change_what_is_shown() {
    let weights = tempfile::tempdir().unwrap();
    let (s, c, y) = (tiny("tiny-gelan-s"), tiny("tiny-gelan-c"), tiny("tiny-yolov9-c"));
    let state = State {
        recent_checkpoints: vec![s.display().to_string(), c.display().to_string()],
        compare_models: vec![s.display().to_string(), y.display().to_string()],
        ..State::default()
    };
    let mut h = harness(start(Some(s.display().to_string()), &weights), state);
    wait_until(&mut h, "tiny-gelan-s runs", 60, |h| model_name(h, 0).is_some_and(|m| m == "tiny-gelan-s"));

    // Switch through the picker while the video plays.
    h.get_by_role_and_label(egui::accesskit::Role::ComboBox, "Model").click();
    h.run_steps(2);
    h.get_by_label_contains("tiny-gelan-c.pt  (file)").click();
    h.run_steps(2);
    wait_until(&mut h, "tiny-gelan-c runs", 60, |h| model_name(h, 0).is_some_and(|m| m == "tiny-gelan-c"));
    wait_until(&mut h, "the picker says what runs", 10, |h| shows(h, "running tiny-gelan-c.pt"));

    // Compare: the main model and the second one on the same frames, with the table.
    h.get_by_label("Compare models side by side").click();
    wait_until(&mut h, "two models side by side", 60, |h| {
        model_name(h, 1).is_some_and(|m| m == "tiny-yolov9-c") && shows(h, "Agreement")
    });
    for header in ["Params", "GFLOPs", "p50 ms", "p95 ms", "Detections"] {
        assert!(shows(&h, header), "{header}");
    }
    assert!(shows(&h, "reference"), "the largest model is the reference");
    let rows = h.query_all_by_label_contains(" M").count();
    assert!(rows >= 2, "params of both models ({rows})");
    h.get_by_label("Compare models side by side").click();
    wait_until(&mut h, "back to one model", 30, |h| {
        h.state_mut().app().player.as_ref().unwrap().latest.as_ref().is_some_and(|f| f.results.len() == 1)
            && !shows(h, "Agreement")
    });

    // Thresholds: a confidence of 1 leaves nothing; every box shown respects the threshold.
    h.get_by_role_and_label(egui::accesskit::Role::Slider, "Confidence").set_value_accesskit(0.99);
    wait_until(&mut h, "the threshold applies", 30, |h| {
        let app = h.state_mut().app();
        (app.state.conf - 0.99).abs() < 1e-3
            && app
                .player
                .as_ref()
                .unwrap()
                .latest
                .as_ref()
                .is_some_and(|f| f.results[0].detections.iter().all(|d| d.score >= 0.99) && f.frame.index > 0)
    });
    // Keys 1 and 2 pick the compare list's models.
    h.key_press(Key::Num2);
    wait_until(&mut h, "key 2 picks tiny-yolov9-c", 60, |h| model_name(h, 0).is_some_and(|m| m == "tiny-yolov9-c"));
}

#[test]
fn layer_chart_shows_the_active_models_layers() {
    let weights = tempfile::tempdir().unwrap();
    let mut h = harness(start(Some(tiny("tiny-gelan-s").display().to_string()), &weights), State::default());
    h.key_press(Key::L);
    h.run_steps(2);
    assert!(h.state_mut().app().state.show_layer_chart, "L shows the chart");
    wait_until(&mut h, "a profiled frame", 60, |h| {
        h.state_mut().app().player.as_ref().is_some_and(|p| p.profile.as_ref().is_some_and(|l| l.len() > 5))
    });
    wait_until(&mut h, "the chart", 10, |h| {
        shows(h, "Per-layer latency of tiny-gelan-s") && shows(h, "slowest: layer")
    });
    assert!(h.state_mut().app().state.show_layer_chart);
}

#[test]
fn export_runs_in_the_background_with_progress_and_writes_the_files() {
    let weights = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut h = harness(start(Some(tiny("tiny-gelan-s").display().to_string()), &weights), State::default());
    wait_until(&mut h, "the model runs", 60, |h| model_name(h, 0).is_some_and(|m| m == "tiny-gelan-s"));
    h.key_press_modifiers(Modifiers::COMMAND, Key::E);
    h.run_steps(2);
    assert!(shows(&h, "Annotated MP4"), "Ctrl+E opens the export dialog");
    let mp4 = out.path().join("demo.annotated.mp4");
    h.state_mut().app().export_dialog.path = mp4.display().to_string();
    h.get_by_label("Start export").click();
    wait_until(&mut h, "progress", 60, |h| shows(h, "Exporting:") || shows(h, "Export finished"));
    // Viewing goes on meanwhile: the player shows new frames while the export runs. Every
    // frame shown is collected (comparing only the first and the last could meet the same
    // index again, the clip loops every 100 frames).
    let latest = |h: &mut Harness<'_, Host>| {
        h.state_mut().app().player.as_ref().unwrap().latest.as_ref().map_or(0, |f| f.frame.index)
    };
    let mut shown = std::collections::BTreeSet::from([latest(&mut h)]);
    wait_until(&mut h, "the export ends", 240, |h| {
        shown.insert(latest(h));
        shows(h, "Export finished: 100 frames")
    });
    assert!(shown.len() >= 2, "the video kept playing during the export: frames shown {shown:?}");
    assert!(std::fs::metadata(&mp4).unwrap().len() > 10_000);
    let jsonl = std::fs::read_to_string(mp4.with_extension("jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 100);
    assert!(jsonl.lines().all(|l| l.contains("\"model\":\"tiny-gelan-s\"")));
}

#[test]
fn cancelling_an_export_stops_it_early() {
    let weights = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut h = harness(start(Some(tiny("tiny-gelan-s").display().to_string()), &weights), State::default());
    h.key_press_modifiers(Modifiers::COMMAND, Key::E);
    h.run_steps(2);
    let mp4 = out.path().join("cut.mp4");
    h.state_mut().app().export_dialog.path = mp4.display().to_string();
    h.state_mut().app().export_dialog.jsonl = false;
    h.get_by_label("Start export").click();
    wait_until(&mut h, "the export starts", 60, |h| shows(h, "Cancel export"));
    h.get_by_label("Cancel export").click();
    wait_until(&mut h, "the export stops", 60, |h| shows(h, "Cancelled after"));
    let j = h.state_mut().app().export.as_ref().unwrap();
    assert!(j.frames_done < 100, "{} frames", j.frames_done);
}

#[test]
fn snapshots_of_the_main_view_help_and_export() {
    let weights = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut s = start(Some(tiny("tiny-gelan-s").display().to_string()), &weights);
    s.start_paused = true;
    // Random fixture weights find "objects" everywhere: show only the surest.
    let mut h = harness(s, State { conf: 0.45, ..State::default() });
    wait_until(&mut h, "the first frame with the model", 60, |h| {
        model_name(h, 0).is_some_and(|m| m == "tiny-gelan-s")
            || h.state_mut().app().player.as_ref().is_some_and(|p| matches!(p.slots[0], SlotState::Ready(_)))
    });
    // Show the first frame again, now through the model.
    let ctx = h.ctx.clone();
    h.state_mut().app().apply(&ctx, Action::Seek(0.0));
    wait_until(&mut h, "frame 0 with the model", 60, |h| {
        h.state_mut()
            .app()
            .player
            .as_ref()
            .and_then(|p| p.latest.as_ref())
            .is_some_and(|f| f.frame.index == 0 && f.results[0].model == "tiny-gelan-s")
    });
    h.run_steps(3);
    mask_status(&mut h);
    let mut results = egui_kittest::SnapshotResults::new();
    results.add(h.try_snapshot_options("gui_main_view", &snapshot_options()));
    h.key_press(Key::F1);
    h.run_steps(3);
    assert!(shows(&h, "Keyboard shortcuts") && shows(&h, "Ctrl+O"));
    mask_status(&mut h);
    results.add(h.try_snapshot_options("gui_help", &snapshot_options()));
    h.key_press(Key::Escape);
    h.state_mut().app().export_dialog.path = out.path().join("snap.mp4").display().to_string();
    h.key_press_modifiers(Modifiers::COMMAND, Key::E);
    h.run_steps(2);
    h.get_by_label("Start export").click();
    wait_until(&mut h, "the export ends", 240, |h| shows(h, "Export finished: 100 frames"));
    h.run_steps(3);
    // The dialog's output paths differ per run.
    let mut paths: Vec<Rect> =
        h.query_all_by_label_contains(&out.path().display().to_string()).map(|n| n.rect()).collect();
    paths.push(h.get_by_label("Output").rect());
    for r in paths {
        h.mask(r.expand(2.0));
    }
    mask_status(&mut h);
    results.add(h.try_snapshot_options("gui_export_finished", &snapshot_options()));
    results.into_result().unwrap();
}

/// The frame shown last (its index), if any.
fn frame_index(h: &mut Harness<'_, Host>) -> Option<u64> {
    h.state_mut().app().player.as_ref()?.latest.as_ref().map(|f| f.frame.index)
}

/// Steps until the video has moved `n` frames on from where it is now.
fn wait_frames(h: &mut Harness<'_, Host>, what: &str, n: u64) {
    wait_until(h, "a first frame", 30, |h| frame_index(h).is_some());
    let from = frame_index(h).unwrap_or(0);
    wait_until(h, what, 60, |h| frame_index(h).is_some_and(|i| i >= from + n));
}

/// The full text of the one label containing `text`.
fn label_with(h: &Harness<'_, Host>, text: &str) -> String {
    use egui_kittest::kittest::NodeT;
    let node = h.get_by_label_contains(text);
    // Plain labels carry their text as the node's value.
    let n = node.accesskit_node();
    n.value().or_else(|| n.label()).unwrap_or_default()
}

/// Width, height and decoded frame count of a video, read back with ffprobe.
fn probe(path: &std::path::Path) -> (u32, u32, u64) {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=width,height,nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe is installed (make deps)");
    assert!(out.status.success(), "ffprobe {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let v: Vec<u64> = text.split(',').map(|x| x.parse().unwrap()).collect();
    (v[0] as u32, v[1] as u32, v[2])
}

/// A live generated source (the camera stand-in) with the tiny model.
fn live(weights: &tempfile::TempDir, recordings: std::path::PathBuf) -> StartOptions {
    StartOptions {
        source: Some("synthetic:320x240@25".into()),
        recordings_dir: Some(recordings),
        ..start(Some(tiny("tiny-gelan-s").display().to_string()), weights)
    }
}

#[test]
fn recording_a_live_source_writes_the_frames_shown_to_an_mp4() {
    let weights = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("recordings");
    let mut h = harness(live(&weights, dir.clone()), State::default());
    wait_until(&mut h, "the model runs on the live source", 60, |h| {
        model_name(h, 0).is_some_and(|m| m == "tiny-gelan-s")
    });
    assert!(h.state_mut().app().player.as_ref().unwrap().info.as_ref().unwrap().live);
    h.get_by_label("Record").click();
    wait_until(&mut h, "the REC indicator", 10, |h| shows(h, "REC ") && shows(h, "Stop recording"));
    // Live policy: the source runs at 25 fps, the window shows what the model keeps up with.
    let mut shown = std::collections::BTreeSet::new();
    wait_until(&mut h, "frames shown while recording", 60, |h| {
        shown.extend(frame_index(h));
        shown.len() > 10
    });
    h.key_press_modifiers(Modifiers::COMMAND, Key::R);
    wait_until(&mut h, "the recording's summary", 30, |h| shows(h, "recorded "));
    assert!(shows(&h, "Record") && !shows(&h, "REC "), "recording stopped");

    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mp4 = &files[0];
    let name = mp4.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("spotter-recording-") && name.ends_with(".mp4"), "{name}");
    let text = label_with(&h, "recorded ");
    let n: u64 = text.strip_prefix("recorded ").unwrap().split(' ').next().unwrap().parse().unwrap();
    assert_eq!(text, format!("recorded {n} frames to {}", mp4.display()));
    assert!(n >= 5, "{n} frames recorded of {} shown", shown.len());
    assert_eq!(probe(mp4), (320, 240, n), "the MP4 decodes to every frame recorded");
}

#[test]
fn recording_into_an_unwritable_folder_is_one_error_line_and_the_video_plays_on() {
    let weights = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // A folder inside a plain file cannot be created, not even by root.
    let file = out.path().join("not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    let mut h = harness(live(&weights, file.join("recordings")), State::default());
    wait_frames(&mut h, "the live source plays", 3);
    h.key_press_modifiers(Modifiers::COMMAND, Key::R);
    wait_until(&mut h, "the error", 10, |h| shows(h, "cannot record"));
    let text = label_with(&h, "cannot record");
    assert!(text.starts_with(&format!("cannot record: cannot create {}", file.join("recordings").display())), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(h.state_mut().app().errors.len() == 1 && !shows(&h, "REC ") && shows(&h, "Record"));
    wait_frames(&mut h, "the video plays on", 10);
    assert!(h.state_mut().app().player.as_ref().unwrap().notices.iter().all(|n| !n.text.contains("recorded")));
}

/// A start on the demo clip whose missing gelan-s is downloaded from `server`.
fn download_start(weights: &tempfile::TempDir, server: &crate::http_server::Server) -> StartOptions {
    StartOptions { weights_mirror: Some(format!("{}/w", server.url())), ..start(Some("gelan-s".into()), weights) }
}

#[test]
fn the_download_button_fetches_missing_weights_and_the_model_runs() {
    use crate::http_server::{Reply, Server};
    let data = std::fs::read(tiny("tiny-gelan-s")).unwrap();
    // The tiny checkpoint under the official file name (it carries its own config).
    let server = Server::start(vec![("/w/gelan-s.pt".into(), data.clone())], vec![Reply::Serve]);
    let weights = tempfile::tempdir().unwrap();
    let mut h = harness(download_start(&weights, &server), State::default());
    wait_until(&mut h, "the banner", 30, |h| shows(h, &missing_message("gelan-s")));
    h.get_by_label("Download gelan-s").click();
    wait_until(&mut h, "progress or the end of the download", 30, |h| {
        shows(h, "Cancel download") || shows(h, "downloaded gelan-s")
    });
    wait_until(&mut h, "the download ends", 60, |h| shows(h, "downloaded gelan-s"));
    let dest = weights.path().join("gelan-s.pt");
    assert_eq!(label_with(&h, "downloaded gelan-s"), format!("downloaded gelan-s (773.8 kB) to {}", dest.display()));
    assert_eq!(std::fs::read(&dest).unwrap(), data, "the file is in the weights folder, byte for byte");
    let requests = server.finish();
    assert_eq!((requests.len(), requests[0].path.as_str(), requests[0].status), (1, "/w/gelan-s.pt", 200));
    wait_until(&mut h, "the model runs and finds boxes", 90, |h| {
        let app = h.state_mut().app();
        let p = app.player.as_ref().unwrap();
        matches!(&p.slots[0], SlotState::Ready(m) if m == "gelan-s")
            && p.latest.as_ref().is_some_and(|f| f.results[0].model != NO_MODEL && !f.results[0].detections.is_empty())
    });
    assert!(!shows(&h, &missing_message("gelan-s")), "the banner is gone");
    assert!(!shows(&h, "Download gelan-s"));
}

#[test]
fn a_failed_download_is_one_error_line_and_the_video_plays_on() {
    use crate::http_server::{Reply, Server};
    let server = Server::start(Vec::new(), vec![Reply::NotFound]);
    let weights = tempfile::tempdir().unwrap();
    let mut h = harness(download_start(&weights, &server), State::default());
    wait_until(&mut h, "the banner", 30, |h| shows(h, &missing_message("gelan-s")));
    h.get_by_label("Download gelan-s").click();
    wait_until(&mut h, "the error", 30, |h| shows(h, "download of gelan-s failed"));
    let text = label_with(&h, "download of gelan-s failed");
    let url = format!("{}/w/gelan-s.pt", server.url());
    assert!(
        text.starts_with(&format!(
            "download of gelan-s failed: cannot download gelan-s.pt from {url}: the server answered HTTP 404"
        )),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
    assert_eq!(server.finish()[0].status, 404);
    assert!(shows(&h, "Download gelan-s"), "a retry is offered");
    assert!(std::fs::read_dir(weights.path()).unwrap().next().is_none(), "nothing left in the weights folder");
    wait_frames(&mut h, "the video plays on", 10);
    assert_eq!(model_name(&mut h, 0).as_deref(), Some(NO_MODEL));
}

/// Opens Open ▸ Camera.
fn open_camera_menu(h: &mut Harness<'_, Host>) {
    h.get_by_label("Open").click();
    h.run_steps(2);
    h.get_by_label("Camera").click();
    h.run_steps(3);
}

#[test]
fn the_camera_menu_says_plainly_when_there_is_no_camera() {
    let weights = tempfile::tempdir().unwrap();
    let mut s = start(Some(NO_MODEL.into()), &weights);
    let attached =
        std::fs::read_dir("/dev").unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("video"));
    if attached {
        // This machine has a camera: list none, as nokhwa does where there is none.
        s.cameras = CameraLister::new(|| Ok(Vec::new()));
    }
    let mut h = harness(s, State::default());
    open_camera_menu(&mut h);
    wait_until(&mut h, "the camera list", 10, |h| shows(h, "No camera found"));
    assert!(shows(&h, "Look for cameras"));
}

#[test]
fn listed_cameras_show_name_and_resolution_and_open_on_click() {
    let weights = tempfile::tempdir().unwrap();
    let rec = tempfile::tempdir().unwrap();
    let s = StartOptions {
        // A stand-in camera that opens as a generated live source.
        cameras: CameraLister::new(|| {
            Ok(vec![CameraEntry {
                name: "Desk camera".into(),
                resolution: Some((320, 240)),
                source: "synthetic:320x240@10".into(),
            }])
        }),
        recordings_dir: Some(rec.path().to_path_buf()),
        ..start(Some(NO_MODEL.into()), &weights)
    };
    let mut h = harness(s, State::default());
    // Recording the demo clip when the camera is opened: the new source says what was recorded.
    h.key_press_modifiers(Modifiers::COMMAND, Key::R);
    wait_until(&mut h, "recording", 10, |h| shows(h, "REC "));
    wait_frames(&mut h, "frames are recorded", 5);
    open_camera_menu(&mut h);
    wait_until(&mut h, "the camera list", 10, |h| shows(h, "Desk camera (320×240)"));
    h.get_by_label("Desk camera (320×240)").click();
    wait_until(&mut h, "the camera plays", 30, |h| {
        let p = h.state_mut().app().player.as_ref().unwrap();
        p.source == "synthetic:320x240@10"
            && p.info.as_ref().is_some_and(|i| i.live)
            && p.latest.as_ref().is_some_and(|f| f.frame.image.width == 320)
    });
    assert!(shows(&h, "320×240"), "the status bar names the live source");
    assert!(!shows(&h, "Loop") && !shows(&h, "Speed"), "nothing to loop or speed up on a camera");
    let text = label_with(&h, "recorded ");
    let mp4 = std::fs::read_dir(rec.path()).unwrap().next().unwrap().unwrap().path();
    assert!(text.starts_with("recorded ") && text.ends_with(&format!(" frames to {}", mp4.display())), "{text}");
    assert!(!shows(&h, "REC "), "the recording stopped with the old source");
}
