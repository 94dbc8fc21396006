//! Detection overlay: box outlines, class-coloured label tabs and text, drawn straight into packed RGB8 frames.
//!
//! Text is rendered with an embedded TrueType font (DejaVu Sans Bold, see `assets/fonts/DejaVu-LICENSE.txt`)
//! rasterised by `ab_glyph`. Each glyph is rasterised once per (character, size) into an 8-bit coverage mask and
//! cached; after the first frames at a given resolution, annotating is rectangle fills and coverage blits only, with no
//! allocation (the label text buffer and the caches are reused).
//!
//! Sizes follow the frame: outline thickness `max(2, round(min(w, h) / 320))` px, font size (em height, as in CSS
//! `font-size`) `max(12, round(min(w, h) / 40))` px.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont, point};

/// DejaVu Sans Bold, Bitstream Vera licence (`assets/fonts/DejaVu-LICENSE.txt`).
static FONT_TTF: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/fonts/DejaVuSans-Bold.ttf"));

/// Class colours: picked for separation in hue and lightness (pairwise CIELAB distance >= 24), so neighbouring
/// boxes of different classes stay distinguishable on video.
const PALETTE: [[u8; 3]; 20] = [
    [230, 57, 70],   // red
    [30, 136, 229],  // blue
    [67, 160, 71],   // green
    [255, 152, 0],   // orange
    [142, 36, 170],  // purple
    [0, 188, 212],   // cyan
    [253, 216, 53],  // yellow
    [236, 64, 122],  // pink
    [121, 85, 72],   // brown
    [156, 204, 101], // light green
    [57, 73, 171],   // indigo
    [255, 204, 188], // peach
    [206, 147, 216], // lilac
    [128, 0, 32],    // maroon
    [128, 128, 0],   // olive
    [0, 230, 118],   // spring green
    [120, 144, 156], // blue grey
    [220, 0, 220],   // magenta
    [0, 137, 123],   // teal
    [27, 94, 32],    // dark green
];

/// Opacity of the banner's dark band, out of 255.
const BANNER_ALPHA: u8 = 170;

/// Upper bound on cached glyph masks; the cache is flushed past it (only reachable with many frame sizes).
const MAX_CACHED_GLYPHS: usize = 4096;

/// One box to draw, in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Annotation<'a> {
    /// `[x1, y1, x2, y2]`: top-left and bottom-right corners.
    pub bbox: [f32; 4],
    /// Selects the colour, see [`class_color`].
    pub class_id: usize,
    /// Class name shown in the tab; may be empty.
    pub label: &'a str,
    /// Confidence, shown with two decimals (omitted when not finite).
    pub score: f32,
}

/// Stable, distinct colour per class id: a fixed palette of 20 colours indexed by `class_id % 20`.
pub fn class_color(class_id: usize) -> [u8; 3] {
    PALETTE[class_id % PALETTE.len()]
}

/// Text grey level for a tab of colour `bg`: black (0) on light colours, white (255) otherwise.
///
/// The switch point is a relative luminance of 0.3 rather than WCAG's contrast crossover (~0.18): white text on
/// saturated mid-tones (red, pink, teal) reads better in practice than the ratio alone suggests.
fn text_level_on(bg: [u8; 3]) -> u8 {
    let lin = |c: u8| {
        let c = f32::from(c) / 255.0;
        if c <= 0.040_45 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
    };
    let lum = 0.2126 * lin(bg[0]) + 0.7152 * lin(bg[1]) + 0.0722 * lin(bg[2]);
    if lum > 0.3 { 0 } else { 255 }
}

/// Half-open integer rectangle `[x0, x1) x [y0, y1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

impl Rect {
    fn new(x0: i64, y0: i64, x1: i64, y1: i64) -> Self {
        Self { x0, y0, x1, y1 }
    }

    fn intersect(self, o: Rect) -> Rect {
        Rect { x0: self.x0.max(o.x0), y0: self.y0.max(o.y0), x1: self.x1.min(o.x1), y1: self.y1.min(o.y1) }
    }

    fn is_empty(self) -> bool {
        self.x1 <= self.x0 || self.y1 <= self.y0
    }
}

/// A validated view of the caller's pixels.
struct Frame<'a> {
    px: &'a mut [u8],
    w: i64,
    h: i64,
}

impl<'a> Frame<'a> {
    /// `None` when the buffer is not exactly `width * height * 3` bytes or the frame is empty.
    fn new(px: &'a mut [u8], width: u32, height: u32) -> Option<Self> {
        let len = (width as usize).checked_mul(height as usize)?.checked_mul(3)?;
        (len != 0 && px.len() == len).then_some(Self { px, w: i64::from(width), h: i64::from(height) })
    }

    fn bounds(&self) -> Rect {
        Rect::new(0, 0, self.w, self.h)
    }

    /// Byte range of row `y`, columns `x0..x1`; the caller has clipped all three to the frame.
    fn span(&self, y: i64, x0: i64, x1: i64) -> std::ops::Range<usize> {
        let row = (y * self.w) as usize;
        (row + x0 as usize) * 3..(row + x1 as usize) * 3
    }

    fn fill(&mut self, r: Rect, color: [u8; 3]) {
        let r = r.intersect(self.bounds());
        if r.is_empty() {
            return;
        }
        if r.x1 - r.x0 <= 16 {
            // Narrow (vertical box edges): per-row copies would cost more in call overhead than they save.
            for y in r.y0..r.y1 {
                let span = self.span(y, r.x0, r.x1);
                for p in self.px[span].chunks_exact_mut(3) {
                    p.copy_from_slice(&color);
                }
            }
            return;
        }
        // Fill the first row by doubling copies, then copy that row down: memcpy speed for wide tabs.
        let first = self.span(r.y0, r.x0, r.x1);
        let row = &mut self.px[first.clone()];
        row[..3].copy_from_slice(&color);
        let mut done = 3;
        while done < row.len() {
            let n = done.min(row.len() - done);
            row.copy_within(..n, done);
            done += n;
        }
        for y in r.y0 + 1..r.y1 {
            let dst = self.span(y, r.x0, r.x1);
            self.px.copy_within(first.clone(), dst.start);
        }
    }

    fn blend(&mut self, r: Rect, color: [u8; 3], alpha: u8) {
        let r = r.intersect(self.bounds());
        if r.is_empty() {
            return;
        }
        for y in r.y0..r.y1 {
            let span = self.span(y, r.x0, r.x1);
            for p in self.px[span].chunks_exact_mut(3) {
                blend_px(p, color, alpha);
            }
        }
    }

    /// Blends grey level `level` through a coverage mask whose top-left pixel lands at `(x, y)`, clipped to `clip`.
    ///
    /// Text is always black or white, so one level serves all three channels and the mask is stored with each
    /// coverage value repeated per channel: the inner loop is a straight byte-for-byte blend the compiler vectorises.
    fn blit_mask(&mut self, mask: &GlyphMask, x: i64, y: i64, level: u8, clip: Rect) {
        let dst =
            Rect::new(x, y, x + mask.width as i64, y + mask.height as i64).intersect(clip).intersect(self.bounds());
        if dst.is_empty() {
            return;
        }
        let (mx0, mx1) = ((dst.x0 - x) as usize * 3, (dst.x1 - x) as usize * 3);
        let fg = u16::from(level);
        for yy in dst.y0..dst.y1 {
            let mrow = (yy - y) as usize * mask.width * 3;
            let coverage = &mask.coverage3[mrow + mx0..mrow + mx1];
            let span = self.span(yy, dst.x0, dst.x1);
            for (d, &a) in self.px[span].iter_mut().zip(coverage) {
                let a = u16::from(a);
                // Max 255 * 255 + 127 fits u16; exact for a = 0 (unchanged) and a = 255 (= level).
                *d = ((fg * a + u16::from(*d) * (255 - a) + 127) / 255) as u8;
            }
        }
    }
}

fn blend_px(p: &mut [u8], color: [u8; 3], alpha: u8) {
    let a = u32::from(alpha);
    for (d, s) in p.iter_mut().zip(color) {
        *d = ((u32::from(s) * a + u32::from(*d) * (255 - a) + 127) / 255) as u8;
    }
}

/// A rasterised glyph: coverage mask plus placement relative to the pen position on the baseline.
struct GlyphMask {
    id: GlyphId,
    advance: f32,
    /// Offset of the mask's left column from the pen x.
    left: i64,
    /// Offset of the mask's top row from the baseline (negative: above).
    top: i64,
    width: usize,
    height: usize,
    /// Row-major coverage, 0..=255, each value repeated 3 times (one per RGB channel).
    coverage3: Vec<u8>,
}

/// Per font size: scale and the vertical extents used to size tabs.
#[derive(Debug, Clone, Copy)]
struct SizeMetrics {
    scale: PxScale,
    /// Pixels from the top of the tallest letters/digits down to the baseline.
    ascent: i64,
    /// Pixels from the baseline down to the bottom of descenders.
    descent: i64,
    pad_x: i64,
    pad_y: i64,
}

/// Horizontal ink extent of a laid-out string, relative to the starting pen position.
#[derive(Debug, Clone, Copy)]
struct Extent {
    x0: i64,
    x1: i64,
}

impl Extent {
    fn width(self) -> i64 {
        (self.x1 - self.x0).max(0)
    }
}

/// The font and everything derived from it, cached per (character, em size).
struct GlyphCache {
    font: FontRef<'static>,
    index: HashMap<(char, u32), usize>,
    masks: Vec<GlyphMask>,
    metrics: HashMap<u32, SizeMetrics>,
}

impl GlyphCache {
    fn scale_for(&self, em_px: u32) -> PxScale {
        let upem = self.font.units_per_em().unwrap_or(2048.0).max(1.0);
        PxScale::from(em_px as f32 * self.font.height_unscaled() / upem)
    }

    /// Index into `masks` of the glyph for `c` at `em_px`, rasterising it on first use.
    fn glyph(&mut self, c: char, em_px: u32) -> usize {
        if let Some(&i) = self.index.get(&(c, em_px)) {
            return i;
        }
        let scale = self.scale_for(em_px);
        let id = self.font.glyph_id(c);
        let advance = self.font.as_scaled(scale).h_advance(id);
        let mut mask = GlyphMask { id, advance, left: 0, top: 0, width: 0, height: 0, coverage3: Vec::new() };
        if let Some(outlined) = self.font.outline_glyph(id.with_scale_and_position(scale, point(0.0, 0.0))) {
            let b = outlined.px_bounds();
            let (w, h) = (b.width() as usize, b.height() as usize);
            mask.left = b.min.x as i64;
            mask.top = b.min.y as i64;
            mask.width = w;
            mask.height = h;
            mask.coverage3 = vec![0; w * h * 3];
            outlined.draw(|x, y, v| {
                let (x, y) = (x as usize, y as usize);
                if x < w && y < h {
                    let i = (y * w + x) * 3;
                    mask.coverage3[i..i + 3].fill((v.clamp(0.0, 1.0) * 255.0).round() as u8);
                }
            });
        }
        self.masks.push(mask);
        let i = self.masks.len() - 1;
        self.index.insert((c, em_px), i);
        i
    }

    /// Drops every cached glyph once the cache has grown past [`MAX_CACHED_GLYPHS`]. Called only between text runs:
    /// indices handed out by [`GlyphCache::glyph`] must stay valid while a run is laid out and rendered.
    fn trim(&mut self) {
        if self.masks.len() > MAX_CACHED_GLYPHS {
            self.index.clear();
            self.masks.clear();
        }
    }

    fn metrics(&mut self, em_px: u32) -> SizeMetrics {
        if let Some(&m) = self.metrics.get(&em_px) {
            return m;
        }
        let mut ascent = 0;
        for c in ['H', 'l', 'd', '0'] {
            let i = self.glyph(c, em_px);
            ascent = ascent.max(-self.masks[i].top);
        }
        let mut descent = 0;
        for c in ['g', 'p', 'y'] {
            let i = self.glyph(c, em_px);
            descent = descent.max(self.masks[i].top + self.masks[i].height as i64);
        }
        let em = i64::from(em_px);
        let m = SizeMetrics {
            scale: self.scale_for(em_px),
            ascent,
            descent,
            pad_x: ((em * 2 + 3) / 6).max(2),
            pad_y: ((em + 3) / 6).max(2),
        };
        self.metrics.insert(em_px, m);
        m
    }

    /// Lays `text` out from pen x = 0 (kerned, pen rounded to whole pixels per glyph) into `placed` as
    /// (mask index, pen x) pairs, and returns the ink extent. Glyphs without ink (spaces) are not placed.
    fn layout(&mut self, text: &str, em_px: u32, scale: PxScale, placed: &mut Vec<(usize, i64)>) -> Extent {
        placed.clear();
        let mut pen = 0.0f32;
        let mut prev: Option<GlyphId> = None;
        let mut ext = Extent { x0: i64::MAX, x1: i64::MIN };
        for c in text.chars() {
            let i = self.glyph(c, em_px);
            let g = &self.masks[i];
            if let Some(p) = prev {
                pen += self.font.as_scaled(scale).kern(p, g.id);
            }
            let x = pen.round() as i64;
            if g.width > 0 && g.height > 0 {
                ext.x0 = ext.x0.min(x + g.left);
                ext.x1 = ext.x1.max(x + g.left + g.width as i64);
                placed.push((i, x));
            }
            pen += g.advance;
            prev = Some(g.id);
        }
        if ext.x0 > ext.x1 { Extent { x0: 0, x1: 0 } } else { ext }
    }

    /// Blits glyphs placed by [`GlyphCache::layout`] with the pen origin at `(ox, baseline)`.
    fn render(&self, frame: &mut Frame<'_>, placed: &[(usize, i64)], ox: i64, baseline: i64, level: u8, clip: Rect) {
        for &(i, x) in placed {
            if let Some(g) = self.masks.get(i) {
                frame.blit_mask(g, ox + x + g.left, baseline + g.top, level, clip);
            }
        }
    }
}

/// Draws detections onto packed RGB8 frames (stride = `width * 3`).
///
/// Holds the parsed embedded font and the rasterised glyph cache; reuse one per video stream.
pub struct Annotator {
    /// `None` only if the embedded font failed to parse (ruled out by a unit test); boxes are still drawn then.
    cache: Option<GlyphCache>,
    /// Reused label text buffer.
    text: String,
    /// Reused glyph placement buffer.
    placed: Vec<(usize, i64)>,
}

impl Default for Annotator {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Annotator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Annotator")
            .field("font_loaded", &self.cache.is_some())
            .field("cached_glyphs", &self.cache.as_ref().map_or(0, |c| c.masks.len()))
            .finish()
    }
}

impl Annotator {
    /// Parses the embedded font. Cannot fail at run time: the font is compiled in and tested.
    pub fn new() -> Self {
        let cache = FontRef::try_from_slice(FONT_TTF).ok().map(|font| GlyphCache {
            font,
            index: HashMap::new(),
            masks: Vec::new(),
            metrics: HashMap::new(),
        });
        Self { cache, text: String::with_capacity(64), placed: Vec::with_capacity(64) }
    }

    /// Draws each annotation: a box outline in the class colour (thickness `max(2, round(min(w, h) / 320))`, drawn
    /// inward from the box edges) and a filled tab above the box with `"label 0.91"` in white or black, whichever
    /// contrasts with the class colour (black on light colours). The tab goes inside the box when there is no room
    /// above it, and is shifted left to stay within the frame. Boxes are clipped to the frame; boxes with NaN
    /// coordinates, zero or negative size, or lying wholly outside the frame are skipped. A buffer whose length is
    /// not `width * height * 3` is left untouched.
    pub fn draw(&mut self, rgb: &mut [u8], width: u32, height: u32, annotations: &[Annotation<'_>]) {
        let Some(mut frame) = Frame::new(rgb, width, height) else {
            return;
        };
        let short = i64::from(width.min(height));
        let thickness = ((short + 160) / 320).max(2);
        let em_px = font_px(width, height);
        let mut text = std::mem::take(&mut self.text);
        for a in annotations {
            let Some(b) = pixel_box(a.bbox) else {
                continue;
            };
            if b.intersect(frame.bounds()).is_empty() {
                continue;
            }
            let color = class_color(a.class_id);
            draw_outline(&mut frame, b, thickness, color);

            text.clear();
            match (a.label.is_empty(), a.score.is_finite()) {
                (false, true) => {
                    let _ = write!(text, "{} {:.2}", a.label, a.score);
                }
                (true, true) => {
                    let _ = write!(text, "{:.2}", a.score);
                }
                (false, false) => text.push_str(a.label),
                (true, false) => {}
            }
            if text.is_empty() {
                continue;
            }
            let Some(cache) = self.cache.as_mut() else {
                continue;
            };
            cache.trim();
            let m = cache.metrics(em_px);
            let ext = cache.layout(&text, em_px, m.scale, &mut self.placed);
            let tab_w = ext.width() + 2 * m.pad_x;
            let tab_h = m.ascent + m.descent + 2 * m.pad_y;
            let tx = b.x0.min(frame.w - tab_w).max(0);
            let ty = if b.y0 - tab_h >= 0 { b.y0 - tab_h } else { b.y0.max(0) };
            let tab = Rect::new(tx, ty, tx + tab_w, ty + tab_h);
            frame.fill(tab, color);
            let fg = text_level_on(color);
            let (ox, baseline) = (tx + m.pad_x - ext.x0, ty + m.pad_y + m.ascent);
            cache.render(&mut frame, &self.placed, ox, baseline, fg, tab);
        }
        self.text = text;
    }

    /// Draws one line of white text (e.g. `"gelan-s 23.4 FPS"`) in the top-left corner on a dark translucent band.
    /// Same font size as the labels; a buffer of the wrong length is left untouched.
    pub fn draw_banner(&mut self, rgb: &mut [u8], width: u32, height: u32, text: &str) {
        let Some(mut frame) = Frame::new(rgb, width, height) else {
            return;
        };
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        if text.is_empty() {
            return;
        }
        let em_px = font_px(width, height);
        cache.trim();
        let m = cache.metrics(em_px);
        let ext = cache.layout(text, em_px, m.scale, &mut self.placed);
        let margin = m.pad_y;
        let band =
            Rect::new(margin, margin, margin + ext.width() + 2 * m.pad_x, margin + m.ascent + m.descent + 2 * m.pad_y);
        frame.blend(band, [0, 0, 0], BANNER_ALPHA);
        let (ox, baseline) = (band.x0 + m.pad_x - ext.x0, band.y0 + m.pad_y + m.ascent);
        cache.render(&mut frame, &self.placed, ox, baseline, 255, band);
    }
}

/// Label font em size for a frame: `max(12, round(min(w, h) / 40))` px.
fn font_px(width: u32, height: u32) -> u32 {
    ((width.min(height) + 20) / 40).max(12)
}

/// Rounds a box to whole pixels; `None` for NaN coordinates or an empty box. Infinite coordinates are clamped.
fn pixel_box(bbox: [f32; 4]) -> Option<Rect> {
    if bbox.iter().any(|v| v.is_nan()) {
        return None;
    }
    // Keeps later arithmetic (tab offsets, thickness) far from i64 overflow.
    let px = |v: f32| f64::from(v).round().clamp(-1e9, 1e9) as i64;
    let r = Rect::new(px(bbox[0]), px(bbox[1]), px(bbox[2]), px(bbox[3]));
    (!r.is_empty()).then_some(r)
}

/// Outline of `b`, `t` pixels thick, inside the box; edges outside the frame are not drawn.
fn draw_outline(frame: &mut Frame<'_>, b: Rect, t: i64, color: [u8; 3]) {
    frame.fill(Rect::new(b.x0, b.y0, b.x1, b.y0 + t), color);
    frame.fill(Rect::new(b.x0, b.y1 - t, b.x1, b.y1), color);
    frame.fill(Rect::new(b.x0, b.y0, b.x0 + t, b.y1), color);
    frame.fill(Rect::new(b.x1 - t, b.y0, b.x1, b.y1), color);
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREY: [u8; 3] = [128, 128, 128];

    fn grey_frame(w: u32, h: u32) -> Vec<u8> {
        GREY.iter().copied().cycle().take(w as usize * h as usize * 3).collect()
    }

    fn px(rgb: &[u8], w: u32, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * w as usize + x as usize) * 3;
        [rgb[i], rgb[i + 1], rgb[i + 2]]
    }

    fn ann(bbox: [f32; 4], class_id: usize) -> Annotation<'static> {
        Annotation { bbox, class_id, label: "person", score: 0.91 }
    }

    #[test]
    fn embedded_font_parses_and_has_glyphs() {
        let font = FontRef::try_from_slice(FONT_TTF).expect("embedded font parses");
        for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .-_:%()".chars() {
            assert_ne!(font.glyph_id(c), GlyphId(0), "missing glyph for {c:?}");
        }
        assert!(Annotator::new().cache.is_some());
    }

    #[test]
    fn class_color_is_stable_and_distinct() {
        assert_eq!(class_color(3), class_color(3));
        assert_eq!(class_color(7), class_color(7 + PALETTE.len()));
        for i in 0..20 {
            for j in 0..i {
                let (a, b) = (class_color(i), class_color(j));
                assert_ne!(a, b, "classes {i} and {j}");
                let d2: i32 = a.iter().zip(b).map(|(&x, y)| (i32::from(x) - i32::from(y)).pow(2)).sum();
                assert!(d2 > 50 * 50, "classes {i} and {j} too similar: {a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn text_colour_contrasts() {
        assert_eq!(text_level_on([255, 255, 255]), 0);
        assert_eq!(text_level_on([253, 216, 53]), 0);
        assert_eq!(text_level_on([0, 0, 0]), 255);
        assert_eq!(text_level_on([13, 71, 161]), 255);
        assert_eq!(text_level_on([230, 57, 70]), 255);
        assert_eq!(text_level_on([0, 230, 118]), 0);
    }

    #[test]
    fn draws_outline_tab_and_text() {
        let (w, h) = (640, 360);
        let mut rgb = grey_frame(w, h);
        let class_id = 2;
        let c = class_color(class_id);
        Annotator::new().draw(&mut rgb, w, h, &[ann([200.0, 100.0, 400.0, 300.0], class_id)]);

        // Outline: left, right and bottom edges, and the top-left corner (thickness is 2 at 640x360).
        for (x, y) in [(200, 200), (201, 200), (399, 150), (398, 150), (300, 299), (300, 298), (200, 100), (201, 101)] {
            assert_eq!(px(&rgb, w, x, y), c, "outline pixel ({x}, {y})");
        }
        // Just outside the outline, and well inside the box: untouched.
        for (x, y) in [(199, 200), (400, 200), (300, 300), (202, 200), (300, 200), (397, 250), (300, 297)] {
            assert_eq!(px(&rgb, w, x, y), GREY, "pixel ({x}, {y})");
        }
        // Far outside: untouched.
        for (x, y) in [(0, 0), (639, 359), (100, 50), (500, 200), (300, 340)] {
            assert_eq!(px(&rgb, w, x, y), GREY, "pixel ({x}, {y})");
        }

        // The tab sits right above the box, starting at its left edge.
        let (mut tab, mut text, mut top) = (0, 0, u32::MAX);
        for y in 60..100 {
            for x in 200..400 {
                let p = px(&rgb, w, x, y);
                if p == c {
                    tab += 1;
                    top = top.min(y);
                } else if p != GREY {
                    text += 1;
                }
            }
        }
        assert!(tab > 400, "tab pixels: {tab}");
        assert!(text > 60, "text pixels: {text}");
        assert!(top < 100 - 12, "tab top row {top}");
        assert_eq!(px(&rgb, w, 200, 99), c, "tab bottom-left corner");
        assert_eq!(px(&rgb, w, 201, 99), c, "tab bottom-left corner");
        // Text colour for this class is used at least somewhere at full coverage.
        let fg = [text_level_on(c); 3];
        assert!((60..100).any(|y| (200..400).any(|x| px(&rgb, w, x, y) == fg)));
    }

    #[test]
    fn tab_goes_inside_for_box_at_top() {
        let (w, h) = (640, 360);
        let mut rgb = grey_frame(w, h);
        let c = class_color(0);
        Annotator::new().draw(&mut rgb, w, h, &[ann([100.0, 0.0, 300.0, 200.0], 0)]);
        let tab =
            (2..18).flat_map(|y| (102..160).map(move |x| (x, y))).filter(|&(x, y)| px(&rgb, w, x, y) == c).count();
        assert!(tab > 200, "tab inside the box: {tab}");
        assert_eq!(px(&rgb, w, 250, 100), GREY);
    }

    #[test]
    fn tab_shifted_into_frame_at_right_edge() {
        let (w, h) = (640, 360);
        let mut rgb = grey_frame(w, h);
        let c = class_color(4);
        Annotator::new().draw(&mut rgb, w, h, &[ann([620.0, 100.0, 640.0, 150.0], 4)]);
        assert_eq!(px(&rgb, w, 639, 99), c, "tab reaches the right edge");
        assert!((560..620).any(|x| px(&rgb, w, x, 99) == c), "tab extends left of the box");
    }

    #[test]
    fn edge_cases_do_not_panic() {
        let mut a = Annotator::new();
        let boxes = [
            ann([-50.0, -50.0, 100.0, 100.0], 1),
            ann([600.0, 300.0, 900.0, 500.0], 2),
            ann([0.0, 0.0, 640.0, 360.0], 3),
            ann([f32::NAN, 0.0, 10.0, 10.0], 4),
            ann([10.0, 10.0, 10.0, 50.0], 5),
            ann([10.0, 50.0, 60.0, 50.0], 6),
            ann([60.0, 60.0, 10.0, 10.0], 7),
            ann([f32::NEG_INFINITY, f32::NEG_INFINITY, f32::INFINITY, f32::INFINITY], 8),
            ann([1e30, 1e30, 2e30, 2e30], 9),
            ann([-1e30, -1e30, -1e29, -1e29], 10),
            ann([700.0, 10.0, 800.0, 50.0], 11),
            Annotation { bbox: [5.0, 5.0, 30.0, 30.0], class_id: usize::MAX, label: "", score: f32::NAN },
            Annotation { bbox: [5.0, 5.0, 30.0, 30.0], class_id: 12, label: "", score: 0.5 },
            Annotation {
                bbox: [5.0, 5.0, 30.0, 30.0], class_id: 13, label: "日本 émoji 🚗\t\n", score: f32::INFINITY
            },
        ];
        let mut rgb = grey_frame(640, 360);
        a.draw(&mut rgb, 640, 360, &boxes);
        a.draw(&mut rgb, 640, 360, &[]);
        a.draw_banner(&mut rgb, 640, 360, "gelan-s 23.4 FPS");
        a.draw_banner(&mut rgb, 640, 360, "");
        for (w, h) in [(8, 8), (1, 1), (1, 500), (500, 1), (3, 40)] {
            let mut rgb = grey_frame(w, h);
            a.draw(&mut rgb, w, h, &boxes);
            a.draw(&mut rgb, w, h, &[ann([1.0, 1.0, 6.0, 6.0], 0), ann([0.0, 0.0, 8.0, 8.0], 1)]);
            a.draw_banner(&mut rgb, w, h, "gelan-s 23.4 FPS");
            assert_eq!(rgb.len(), w as usize * h as usize * 3);
        }
        let mut rgb = grey_frame(8, 8);
        a.draw(&mut rgb, 8, 8, &[ann([1.0, 1.0, 6.0, 6.0], 0)]);
        assert_eq!(px(&rgb, 8, 1, 3), class_color(0));
    }

    #[test]
    fn nan_zero_and_empty_draw_nothing() {
        let mut a = Annotator::new();
        let mut rgb = grey_frame(64, 64);
        let nothing = [
            ann([f32::NAN, 10.0, 20.0, 20.0], 0),
            ann([10.0, 10.0, 10.0, 20.0], 0),
            ann([10.0, 20.0, 20.0, 20.0], 0),
            ann([30.0, 30.0, 20.0, 20.0], 0),
            ann([100.0, 100.0, 200.0, 200.0], 0),
            ann([-20.0, -20.0, -1.0, -1.0], 0),
        ];
        a.draw(&mut rgb, 64, 64, &nothing);
        a.draw(&mut rgb, 64, 64, &[]);
        assert_eq!(rgb, grey_frame(64, 64));
    }

    #[test]
    fn wrong_buffer_length_is_left_untouched() {
        let mut a = Annotator::new();
        let boxes = [ann([10.0, 10.0, 50.0, 50.0], 0)];
        for len in [0, 64 * 64 * 3 - 1, 64 * 64 * 3 + 3, 64 * 64] {
            let mut rgb = vec![7u8; len];
            a.draw(&mut rgb, 64, 64, &boxes);
            a.draw_banner(&mut rgb, 64, 64, "x");
            assert!(rgb.iter().all(|&v| v == 7), "len {len}");
        }
        let mut rgb = Vec::new();
        a.draw(&mut rgb, 0, 0, &boxes);
        a.draw(&mut rgb, u32::MAX, u32::MAX, &boxes);
    }

    #[test]
    fn banner_darkens_top_left_only() {
        let (w, h) = (640, 360);
        let mut rgb = grey_frame(w, h);
        Annotator::new().draw_banner(&mut rgb, w, h, "gelan-s 23.4 FPS");
        assert!(px(&rgb, w, 3, 3)[0] < 64, "band is dark");
        assert_eq!(px(&rgb, w, 320, 180), GREY);
        assert_eq!(px(&rgb, w, 600, 5), GREY);
        let white = (0..30).flat_map(|y| (0..200).map(move |x| (x, y))).filter(|&(x, y)| px(&rgb, w, x, y)[0] > 200);
        assert!(white.count() > 60);
    }

    #[test]
    fn glyph_cache_is_warm_after_first_frame() {
        let mut a = Annotator::new();
        let mut rgb = grey_frame(1280, 720);
        let boxes = [ann([100.0, 100.0, 300.0, 300.0], 0), ann([400.0, 100.0, 600.0, 300.0], 1)];
        a.draw(&mut rgb, 1280, 720, &boxes);
        a.draw_banner(&mut rgb, 1280, 720, "gelan-s 23.4 FPS");
        let glyphs = a.cache.as_ref().map(|c| c.masks.len());
        let cap = a.text.capacity();
        for _ in 0..3 {
            a.draw(&mut rgb, 1280, 720, &boxes);
            a.draw_banner(&mut rgb, 1280, 720, "gelan-s 23.4 FPS");
        }
        assert_eq!(a.cache.as_ref().map(|c| c.masks.len()), glyphs);
        assert_eq!(a.text.capacity(), cap);
    }

    #[test]
    fn kerning_tightens_pairs() {
        let mut a = Annotator::new();
        let cache = a.cache.as_mut().expect("font loaded");
        let m = cache.metrics(40);
        let mut placed = Vec::new();
        cache.layout("To", 40, m.scale, &mut placed);
        assert_eq!(placed.len(), 2);
        let t = cache.glyph('T', 40);
        let unkerned = cache.masks[t].advance.round() as i64;
        assert!(placed[1].1 < unkerned - 2, "'o' at {} vs advance of 'T' {unkerned}", placed[1].1);
    }

    #[test]
    fn glyph_cache_is_bounded() {
        let mut a = Annotator::new();
        let mut rgb = grey_frame(64, 64);
        let mut text = String::new();
        for (n, c) in ('\u{4e00}'..).take(MAX_CACHED_GLYPHS + 100).enumerate() {
            text.push(c);
            if n % 50 == 49 {
                a.draw_banner(&mut rgb, 64, 64, &text);
                text.clear();
            }
        }
        a.draw_banner(&mut rgb, 64, 64, "ok 0.99");
        let cached = a.cache.as_ref().map_or(0, |c| c.masks.len());
        assert!(cached <= MAX_CACHED_GLYPHS + 64, "{cached} glyphs cached");
    }

    #[test]
    fn sizes_scale_with_frame() {
        assert_eq!(font_px(640, 360), 12);
        assert_eq!(font_px(1280, 720), 18);
        assert_eq!(font_px(1920, 1080), 27);
        assert_eq!(font_px(8, 8), 12);
    }
}
