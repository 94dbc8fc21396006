//! The compare table: params, GFLOPs, p50/p95 ms, FPS, detections and agreement with the largest model.

use spotter_pipeline::stats::Stage;

use super::models::{FactsMap, short_name};
use super::player::Player;

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareRow {
    pub model: String,
    pub params_m: Option<f64>,
    pub gflops: Option<f64>,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub fps: f64,
    pub detections: usize,
    /// Share of the largest model's boxes this model also found; `None` for the largest itself.
    pub agreement: Option<f64>,
    pub largest: bool,
}

pub fn rows(player: &Player, facts: &FactsMap) -> Vec<CompareRow> {
    let Some(frame) = &player.latest else { return Vec::new() };
    let largest = player.largest_model_index(frame);
    let facts = facts.lock().map(|f| f.clone()).unwrap_or_default();
    frame
        .results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let m = player.stats.as_ref().and_then(|s| s.models.iter().find(|m| m.model == r.model));
            let inference = m.and_then(|m| m.stages.iter().find(|s| s.stage == Stage::Inference));
            let f = facts.get(&r.model);
            CompareRow {
                model: r.model.clone(),
                params_m: f.map(|f| f.params as f64 / 1e6),
                gflops: f.and_then(|f| f.gflops),
                p50_ms: inference.map_or(0.0, |s| s.p50_ms),
                p95_ms: inference.map_or(0.0, |s| s.p95_ms),
                fps: m.map_or(0.0, |m| m.fps),
                detections: r.detections.len(),
                agreement: (Some(i) != largest)
                    .then(|| player.agreement.get(&r.model).filter(|(_, n)| *n > 0).map(|(k, n)| *k as f64 / *n as f64))
                    .flatten(),
                largest: Some(i) == largest,
            }
        })
        .collect()
}

#[derive(Default)]
pub struct CompareTable;

impl CompareTable {
    pub fn ui(&mut self, ui: &mut egui::Ui, player: &Player, facts: &FactsMap) {
        let rows = rows(player, facts);
        egui::Grid::new("compare-table").striped(true).spacing([18.0, 4.0]).show(ui, |ui| {
            for h in ["Model", "Params", "GFLOPs", "p50 ms", "p95 ms", "FPS", "Detections", "Agreement"] {
                ui.strong(h);
            }
            ui.end_row();
            for r in &rows {
                ui.label(short_name(&r.model));
                ui.label(r.params_m.map_or("–".into(), |p| format!("{p:.2} M")));
                ui.label(r.gflops.map_or("–".into(), |g| format!("{g:.1}")));
                ui.label(format!("{:.1}", r.p50_ms));
                ui.label(format!("{:.1}", r.p95_ms));
                ui.label(format!("{:.1}", r.fps));
                ui.label(r.detections.to_string());
                ui.label(if r.largest {
                    "reference".to_string()
                } else {
                    r.agreement.map_or("–".into(), |a| format!("{:.0} %", a * 100.0))
                });
                ui.end_row();
            }
        });
    }
}
