//! The central view: the frame, fitted with its aspect kept, and the detections drawn over it
//! with egui's painter (crisp at any size); hovering a box shows its details.

use egui::{Color32, ColorImage, CornerRadius, FontId, Pos2, Rect, Sense, Stroke, StrokeKind, TextureHandle, Vec2};
use spotter_pipeline::{FrameResult, ModelResult};

use super::player::{Player, SlotState};

/// The colour of a class (the same palette as annotated exports).
pub fn class_color32(class_id: usize) -> Color32 {
    let [r, g, b] = spotter_pipeline::annotate::class_color(class_id);
    Color32::from_rgb(r, g, b)
}

/// `rect` shrunk to the largest centred rectangle with the aspect of `size`.
pub fn fit_rect(rect: Rect, size: Vec2) -> Rect {
    if size.x <= 0.0 || size.y <= 0.0 {
        return rect;
    }
    let scale = (rect.width() / size.x).min(rect.height() / size.y);
    Rect::from_center_size(rect.center(), size * scale)
}

#[derive(Default)]
pub struct VideoView {
    texture: Option<TextureHandle>,
    /// Where the last frame was drawn (tests and screenshots look there).
    pub last_image_rect: Option<Rect>,
}

impl VideoView {
    /// Uploads the newest frame when there is one.
    pub fn update_texture(&mut self, ctx: &egui::Context, player: &mut Player) {
        if !player.fresh_frame {
            return;
        }
        player.fresh_frame = false;
        let Some(f) = &player.latest else { return };
        let img = &f.frame.image;
        let image = ColorImage::from_rgb([img.width as usize, img.height as usize], &img.data);
        match &mut self.texture {
            Some(t) => t.set(image, egui::TextureOptions::LINEAR),
            None => self.texture = Some(ctx.load_texture("spotter-video", image, egui::TextureOptions::LINEAR)),
        }
    }

    /// One view per model (compare mode: a grid), or a placeholder before the first frame.
    pub fn ui(&mut self, ui: &mut egui::Ui, player: Option<&Player>, show_labels: bool) {
        let rect = ui.available_rect_before_wrap();
        ui.painter().rect_filled(rect, CornerRadius::ZERO, Color32::from_gray(16));
        let (Some(player), Some(texture)) = (player, &self.texture) else {
            ui.centered_and_justified(|ui| ui.label("No video: open a file, a camera or a stream (Ctrl+O)"));
            return;
        };
        let Some(frame) = player.latest.clone() else { return };
        let n = frame.results.len().max(1);
        let (cols, rows) = match n {
            1 => (1, 1),
            2 => (2, 1),
            _ => (2, 2),
        };
        let cell = Vec2::new(rect.width() / cols as f32, rect.height() / rows as f32);
        for i in 0..n {
            let (c, r) = (i % cols, i / cols);
            let cell_rect = Rect::from_min_size(rect.min + Vec2::new(c as f32 * cell.x, r as f32 * cell.y), cell);
            let caption = (n > 1).then(|| tile_caption(player, &frame, i));
            let image_rect = self.tile_ui(ui, cell_rect.shrink(2.0), texture, &frame, i, show_labels, caption);
            if i == 0 {
                self.last_image_rect = Some(image_rect);
            }
        }
        ui.allocate_rect(rect, Sense::hover());
    }

    #[allow(clippy::too_many_arguments)]
    fn tile_ui(
        &self,
        ui: &mut egui::Ui,
        rect: Rect,
        texture: &TextureHandle,
        frame: &FrameResult,
        slot: usize,
        show_labels: bool,
        caption: Option<String>,
    ) -> Rect {
        let img = &frame.frame.image;
        let size = Vec2::new(img.width as f32, img.height as f32);
        let top = if caption.is_some() { 22.0 } else { 0.0 };
        let area = Rect::from_min_max(rect.min + Vec2::new(0.0, top), rect.max);
        let image_rect = fit_rect(area, size);
        let painter = ui.painter_at(rect);
        painter.image(texture.id(), image_rect, Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)), Color32::WHITE);
        if let Some(caption) = caption {
            painter.text(
                rect.min + Vec2::new(4.0, 2.0),
                egui::Align2::LEFT_TOP,
                caption,
                FontId::proportional(14.0),
                Color32::from_gray(230),
            );
        }
        let scale = image_rect.width() / size.x.max(1.0);
        let to_screen = |x: f32, y: f32| image_rect.min + Vec2::new(x * scale, y * scale);
        let response = ui.interact(image_rect, ui.scope_id().with(("video-tile", slot)), Sense::hover());
        let hover = response.hover_pos();
        let Some(result) = frame.results.get(slot) else { return image_rect };
        let mut hovered: Option<usize> = None;
        for (k, d) in result.detections.iter().enumerate() {
            let r = Rect::from_min_max(to_screen(d.bbox[0], d.bbox[1]), to_screen(d.bbox[2], d.bbox[3]));
            let color = class_color32(d.class_id);
            let is_hovered = hover.is_some_and(|p| r.contains(p));
            if is_hovered {
                hovered = Some(k);
            }
            painter.rect_stroke(
                r,
                CornerRadius::ZERO,
                Stroke::new(if is_hovered { 3.0 } else { 2.0 }, color),
                StrokeKind::Outside,
            );
            if show_labels {
                let text = format!("{} {:.2}", label_of(result, k), d.score);
                let galley = painter.layout_no_wrap(text, FontId::proportional(13.0), text_on(color));
                let tab = Rect::from_min_size(
                    r.min - Vec2::new(0.0, galley.size().y + 2.0),
                    galley.size() + Vec2::new(6.0, 2.0),
                );
                let tab = if tab.min.y < image_rect.min.y {
                    tab.translate(Vec2::new(0.0, galley.size().y + 2.0))
                } else {
                    tab
                };
                painter.rect_filled(tab, CornerRadius::ZERO, color);
                painter.galley(tab.min + Vec2::new(3.0, 1.0), galley, Color32::WHITE);
            }
        }
        if let Some(k) = hovered {
            let d = &result.detections[k];
            let label = label_of(result, k);
            response.on_hover_ui_at_pointer(|ui| {
                ui.strong(format!("{label}  {:.3}", d.score));
                ui.label(format!("class {}  ·  {}", d.class_id, result.model));
                let [x1, y1, x2, y2] = d.bbox;
                ui.label(format!("box [{x1:.0}, {y1:.0}, {x2:.0}, {y2:.0}]  ({:.0}×{:.0} px)", x2 - x1, y2 - y1));
            });
        }
        image_rect
    }
}

fn label_of(r: &ModelResult, k: usize) -> &str {
    r.labels.get(k).map_or("", String::as_str)
}

/// Black or white text, whichever reads better on `bg`.
fn text_on(bg: Color32) -> Color32 {
    let lum = 0.2126 * f32::from(bg.r()) + 0.7152 * f32::from(bg.g()) + 0.0722 * f32::from(bg.b());
    if lum > 150.0 { Color32::BLACK } else { Color32::WHITE }
}

fn tile_caption(player: &Player, frame: &FrameResult, slot: usize) -> String {
    let Some(r) = frame.results.get(slot) else { return String::new() };
    let fps = player.stats.as_ref().and_then(|s| s.models.iter().find(|m| m.model == r.model)).map_or(0.0, |m| m.fps);
    let loading = match player.slots.get(slot) {
        Some(SlotState::Loading(m)) => format!("  (loading {})", super::models::short_name(m)),
        _ => String::new(),
    };
    format!(
        "{}  ·  {fps:.1} fps  ·  {:.1} ms  ·  {} detections{loading}",
        super::models::short_name(&r.model),
        r.inference_ms,
        r.detections.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_keeps_its_aspect() {
        let r = fit_rect(Rect::from_min_size(Pos2::ZERO, Vec2::new(400.0, 400.0)), Vec2::new(1280.0, 720.0));
        assert!((r.width() - 400.0).abs() < 1e-3 && (r.height() - 225.0).abs() < 1e-3);
        assert!((r.center().y - 200.0).abs() < 1e-3);
    }
}
