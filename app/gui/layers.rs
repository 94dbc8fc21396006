//! Live bar chart of milliseconds per layer of the active model, coloured by module type.

use std::collections::BTreeMap;

use egui::Color32;
use egui_plot::{Bar, BarChart, Legend, Plot};
use spotter_detector::model::LayerTiming;

/// A fixed colour per module type (unknown types share grey).
pub fn module_color(module: &str) -> Color32 {
    match module {
        "Conv" => Color32::from_rgb(66, 133, 244),
        "AConv" => Color32::from_rgb(0, 172, 193),
        "ADown" => Color32::from_rgb(0, 137, 123),
        "ELAN1" => Color32::from_rgb(124, 179, 66),
        "RepNCSPELAN4" => Color32::from_rgb(251, 140, 0),
        "SPPELAN" => Color32::from_rgb(229, 57, 53),
        "Concat" => Color32::from_rgb(142, 36, 170),
        "Upsample" => Color32::from_rgb(216, 27, 96),
        "CBLinear" => Color32::from_rgb(109, 76, 65),
        "CBFuse" => Color32::from_rgb(255, 179, 0),
        "DDetect" | "DualDDetect" | "Detect" => Color32::from_rgb(57, 73, 171),
        _ => Color32::from_gray(140),
    }
}

/// Text shown when hovering a layer's bar.
pub fn layer_hover_text(l: &LayerTiming) -> String {
    format!("layer {}  {}\noutput {:?}\n{:.2} ms", l.index, l.module, l.shape, l.ms)
}

#[derive(Default)]
pub struct LayerChart;

impl LayerChart {
    pub fn ui(&mut self, ui: &mut egui::Ui, model: &str, profile: Option<&[LayerTiming]>) {
        let Some(layers) = profile.filter(|p| !p.is_empty()) else {
            ui.label(if model == super::models::NO_MODEL {
                "Per-layer latency: no model is running".to_string()
            } else {
                format!("Per-layer latency of {model}: waiting for a profiled frame…")
            });
            return;
        };
        let total: f64 = layers.iter().map(|l| l.ms).sum();
        let slowest = layers.iter().max_by(|a, b| a.ms.total_cmp(&b.ms));
        ui.horizontal(|ui| {
            ui.strong(format!("Per-layer latency of {model}"));
            ui.label(format!("{} layers, {total:.1} ms in all", layers.len()));
            if let Some(s) = slowest {
                ui.label(format!("slowest: layer {} {} ({:.1} ms)", s.index, s.module, s.ms));
            }
        });
        // One chart per module type, so the legend names the colours.
        let mut by_module: BTreeMap<&str, Vec<Bar>> = BTreeMap::new();
        for l in layers {
            by_module
                .entry(l.module)
                .or_default()
                .push(Bar::new(l.index as f64, l.ms).width(0.8).fill(module_color(l.module)).name(layer_hover_text(l)));
        }
        Plot::new("layer-latency")
            .legend(Legend::default())
            .x_axis_label("layer")
            .y_axis_label("ms")
            .allow_scroll(false)
            .allow_zoom(false)
            .allow_drag(false)
            .show(ui, |plot| {
                for (module, bars) in by_module {
                    plot.bar_chart(
                        BarChart::new(module, bars)
                            .color(module_color(module))
                            .element_formatter(Box::new(|bar, _| bar.name.clone())),
                    );
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hover_text_names_index_module_and_shape() {
        let l = LayerTiming { index: 7, module: "RepNCSPELAN4", shape: vec![1, 128, 40, 40], ms: 3.25 };
        assert_eq!(layer_hover_text(&l), "layer 7  RepNCSPELAN4\noutput [1, 128, 40, 40]\n3.25 ms");
        assert_ne!(module_color("Conv"), module_color("ADown"));
    }
}
