//! The window's real state driven through egui_kittest: what a user clicks, what they see.

use std::time::{Duration, Instant};

use egui::{Key, Modifiers, Pos2, Rect};
use egui_kittest::kittest::Queryable;
use egui_kittest::{Harness, SnapshotOptions};
use spotter::gui::{Action, NO_MODEL, SlotState, SpotterApp, StartOptions, State, missing_message};

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
    }
}

/// Steps the UI until `cond` holds (panics with `what` after `secs`).
fn wait_until(h: &mut Harness<'_, Host>, what: &str, secs: u64, cond: impl Fn(&mut Harness<'_, Host>) -> bool) {
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
    // Viewing goes on meanwhile.
    let seen = h.state_mut().app().player.as_ref().unwrap().latest.as_ref().map_or(0, |f| f.frame.index);
    wait_until(&mut h, "the export ends", 240, |h| shows(h, "Export finished: 100 frames"));
    let now = h.state_mut().app().player.as_ref().unwrap().latest.as_ref().map_or(0, |f| f.frame.index);
    assert_ne!(now, seen, "the video kept playing during the export");
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
