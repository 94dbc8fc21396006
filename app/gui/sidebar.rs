//! The controls: model picker, thresholds, classes, input size, device, compare; and the
//! transport bar (play/pause, step, seek, loop, speed).

use spotter_detector::classes::COCO_80;

use super::Action;
use super::models::{NO_MODEL, is_present, short_name};
use super::player::{Player, SlotState};
use super::state::{DEVICES, IMAGE_SIZES, MODEL_CHOICES, State};

#[derive(Default)]
pub struct Sidebar {
    class_search: String,
    /// Whether each official variant's weights are here (looked up when the picker opens).
    present: Vec<(String, bool)>,
}

impl Sidebar {
    pub fn refresh_presence(&mut self, dirs: &[std::path::PathBuf]) {
        self.present = MODEL_CHOICES.iter().map(|m| (m.to_string(), is_present(m, dirs))).collect();
    }

    /// `default_model` runs when none was chosen.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        state: &mut State,
        default_model: &str,
        player: Option<&Player>,
        actions: &mut Vec<Action>,
    ) {
        ui.heading("Model");
        let current = state.model.clone().unwrap_or_else(|| default_model.to_string());
        let status = match player.and_then(|p| p.slots.first()) {
            Some(SlotState::Ready(m)) => format!("running {}", short_name(m)),
            Some(SlotState::Loading(m)) => format!("loading {}…", short_name(m)),
            Some(SlotState::NoModel) | None => "no model: video only".to_string(),
        };
        egui::ComboBox::from_label("Model").selected_text(short_name(&current)).width(150.0).show_ui(ui, |ui| {
            for (name, present) in &self.present {
                let text = format!("{name}  {}", if *present { "(present)" } else { "(not downloaded)" });
                if ui.selectable_label(current == *name, text).clicked() {
                    actions.push(Action::SetModel(name.clone()));
                }
            }
            for path in &state.recent_checkpoints {
                if ui.selectable_label(current == *path, format!("{}  (file)", short_name(path))).clicked() {
                    actions.push(Action::SetModel(path.clone()));
                }
            }
            if ui.selectable_label(false, "Checkpoint file…").clicked() {
                actions.push(Action::PickCheckpoint);
            }
        });
        ui.label(egui::RichText::new(status).small());

        ui.separator();
        ui.heading("Detection");
        let mut nms_changed = false;
        nms_changed |= ui.add(egui::Slider::new(&mut state.conf, 0.01..=1.0).text("Confidence")).changed();
        nms_changed |= ui.add(egui::Slider::new(&mut state.iou, 0.05..=1.0).text("IoU")).changed();
        if nms_changed {
            actions.push(Action::NmsChanged);
        }
        let mut imgsz = state.imgsz;
        egui::ComboBox::from_label("Input size").selected_text(imgsz.to_string()).show_ui(ui, |ui| {
            for s in IMAGE_SIZES {
                ui.selectable_value(&mut imgsz, s, s.to_string());
            }
        });
        if imgsz != state.imgsz {
            state.imgsz = imgsz;
            actions.push(Action::ImageSize(imgsz));
        }
        let mut device = state.device.clone();
        egui::ComboBox::from_label("Device").selected_text(device.clone()).show_ui(ui, |ui| {
            for d in DEVICES {
                ui.selectable_value(&mut device, d.to_string(), d);
            }
        });
        if device != state.device {
            state.device = device;
            actions.push(Action::Device);
        }
        ui.checkbox(&mut state.show_labels, "Labels and scores");

        ui.separator();
        self.classes_ui(ui, state, actions);

        ui.separator();
        ui.heading("Compare");
        let mut compare = state.compare;
        ui.checkbox(&mut compare, "Compare models side by side");
        if compare != state.compare {
            actions.push(Action::SetCompare(compare));
        }
        let mut models = state.compare_models.clone();
        let mut remove = None;
        for (i, m) in models.iter_mut().enumerate() {
            if i == 0 {
                ui.label(format!("Model 1: {} (the main model)", short_name(&current)));
                continue;
            }
            ui.horizontal(|ui| {
                egui::ComboBox::from_label(format!("Model {}", i + 1))
                    .selected_text(short_name(m))
                    .width(120.0)
                    .show_ui(ui, |ui| {
                        for name in
                            MODEL_CHOICES.iter().map(|s| s.to_string()).chain(state.recent_checkpoints.iter().cloned())
                        {
                            let label = short_name(&name);
                            ui.selectable_value(m, name, label);
                        }
                    });
                if i >= 2 && ui.small_button("x").on_hover_text(format!("Remove model {}", i + 1)).clicked() {
                    remove = Some(i);
                }
            });
        }
        if let Some(i) = remove {
            models.remove(i);
        }
        if models.len() < spotter_pipeline::runner::MAX_MODELS && ui.button("Add a model").clicked() {
            let next = MODEL_CHOICES.iter().find(|m| !models.iter().any(|x| x == *m)).unwrap_or(&"gelan-s");
            models.push(next.to_string());
        }
        if models != state.compare_models {
            state.compare_models = models;
            actions.push(Action::CompareModelsChanged);
        }

        ui.separator();
        let mut chart = state.show_layer_chart;
        ui.checkbox(&mut chart, "Per-layer latency chart");
        if chart != state.show_layer_chart {
            actions.push(Action::LayerChart(chart));
        }
    }

    fn classes_ui(&mut self, ui: &mut egui::Ui, state: &mut State, actions: &mut Vec<Action>) {
        let shown = if state.classes.is_empty() { "all".to_string() } else { state.classes.len().to_string() };
        egui::CollapsingHeader::new(format!("Classes ({shown})")).id_salt("classes").show(ui, |ui| {
            ui.horizontal(|ui| {
                let label = ui.label("Search");
                ui.text_edit_singleline(&mut self.class_search).labelled_by(label.id);
            });
            ui.horizontal(|ui| {
                if ui.small_button("All").clicked() && !state.classes.is_empty() {
                    state.classes.clear();
                    actions.push(Action::NmsChanged);
                }
            });
            let needle = self.class_search.to_lowercase();
            egui::ScrollArea::vertical().max_height(160.0).show(ui, |ui| {
                for (id, name) in COCO_80.iter().enumerate() {
                    if !needle.is_empty() && !name.contains(&needle) {
                        continue;
                    }
                    let mut on = state.classes.contains(&id);
                    if ui.checkbox(&mut on, *name).changed() {
                        if on {
                            state.classes.push(id);
                            state.classes.sort_unstable();
                        } else {
                            state.classes.retain(|c| *c != id);
                        }
                        actions.push(Action::NmsChanged);
                    }
                }
            });
        });
    }
}

/// Play/pause, step, seek bar with time, loop and speed.
pub fn transport_ui(
    ui: &mut egui::Ui,
    state: &mut State,
    player: &Player,
    seek_drag: &mut Option<f64>,
    actions: &mut Vec<Action>,
) {
    let info = player.info.as_ref();
    let seekable = info.is_some_and(|i| i.seekable);
    let duration = info.and_then(|i| i.duration_secs).unwrap_or(0.0);
    ui.horizontal(|ui| {
        let play = if player.paused || player.finished { "Play" } else { "Pause" };
        if ui.button(play).on_hover_text("Space").clicked() {
            actions.push(Action::TogglePause);
        }
        if ui
            .add_enabled(player.paused, egui::Button::new("Step"))
            .on_hover_text("Next frame (Right arrow while paused)")
            .clicked()
        {
            actions.push(Action::Step);
        }
        let position = seek_drag.unwrap_or_else(|| player.position_secs());
        if seekable && duration > 0.0 {
            let mut t = position;
            let width = (ui.available_width() - 420.0).max(80.0);
            ui.spacing_mut().slider_width = width;
            let r = ui.add(egui::Slider::new(&mut t, 0.0..=duration).show_value(false).text("Position"));
            if r.dragged() || r.changed() {
                *seek_drag = Some(t);
            }
            if (r.drag_stopped() || (r.changed() && !r.dragged()))
                && let Some(t) = seek_drag.take()
            {
                actions.push(Action::Seek(t));
            }
            ui.monospace(format!("{} / {}", clock(position), clock(duration)));
        } else {
            ui.monospace(clock(position));
        }
        // A live source runs in real time: nothing to loop or speed up.
        if info.is_some_and(|i| i.live) {
            return;
        }
        if ui.checkbox(&mut state.looping, "Loop").changed() {
            actions.push(Action::Loop(state.looping));
        }
        let mut speed = state.speed;
        egui::ComboBox::from_label("Speed").selected_text(format!("{speed}×")).width(60.0).show_ui(ui, |ui| {
            for s in [0.25, 0.5, 1.0, 1.5, 2.0, 4.0] {
                ui.selectable_value(&mut speed, s, format!("{s}×"));
            }
        });
        if speed != state.speed {
            state.speed = speed;
            actions.push(Action::Speed(speed));
        }
    });
}

/// `m:ss.s`
pub fn clock(secs: f64) -> String {
    let secs = secs.max(0.0);
    format!("{}:{:04.1}", (secs / 60.0).floor() as u64, secs % 60.0)
}

/// The model names the pipeline should run for `state`.
pub fn wanted_models(state: &State, default_model: &str) -> Vec<String> {
    let main = state.model.clone().unwrap_or_else(|| default_model.to_string());
    if state.compare && state.compare_models.len() >= 2 {
        let mut m = state.compare_models.clone();
        m[0] = main;
        m
    } else {
        vec![main]
    }
    .into_iter()
    .map(|m| if m.is_empty() { NO_MODEL.to_string() } else { m })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_minutes_and_seconds() {
        assert_eq!(clock(0.0), "0:00.0");
        assert_eq!(clock(75.25), "1:15.2");
    }

    #[test]
    fn compare_mode_runs_the_main_model_first() {
        let mut s = State { model: Some("gelan-m".into()), ..State::default() };
        assert_eq!(wanted_models(&s, "gelan-s"), vec!["gelan-m"]);
        s.compare = true;
        s.compare_models = vec!["gelan-s".into(), "gelan-c".into(), "gelan-e".into()];
        assert_eq!(wanted_models(&s, "gelan-s"), vec!["gelan-m", "gelan-c", "gelan-e"]);
    }
}
