//! The help overlay: keyboard shortcuts.

pub const SHORTCUTS: [(&str, &str); 11] = [
    ("Space", "play / pause"),
    ("Right / Left", "forward / back 5 s (Right while paused: next frame)"),
    ("Ctrl+O", "open a file"),
    ("Ctrl+E", "export the current file"),
    ("Ctrl+R", "record a live source"),
    ("1 – 4", "model 1 to 4 of the compare list"),
    ("C", "compare mode on / off"),
    ("L", "per-layer latency chart"),
    ("S", "show / hide the sidebar"),
    ("F1 or ?", "this help"),
    ("Esc", "close dialogs"),
];

#[derive(Default)]
pub struct HelpOverlay {
    pub open: bool,
}

impl HelpOverlay {
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        if !self.open {
            return;
        }
        let mut open = self.open;
        egui::Window::new("Keyboard shortcuts").open(&mut open).collapsible(false).resizable(false).show(
            ui.ctx(),
            |ui| {
                egui::Grid::new("shortcuts").spacing([24.0, 6.0]).show(ui, |ui| {
                    for (keys, what) in SHORTCUTS {
                        ui.monospace(keys);
                        ui.label(what);
                        ui.end_row();
                    }
                });
            },
        );
        self.open = open;
    }
}
