//! Reading photographs as 8-bit RGB frames, decoded the way the official pipeline decodes them.

use std::path::Path;

use crate::error::{Error, Result};
use crate::preprocess::RgbFrame;

/// File extensions treated as images when a folder is scanned.
pub const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff"];

/// Whether `path` has an image file extension.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Reads an image file as 8-bit RGB.
pub fn read_image(path: &Path) -> Result<RgbFrame> {
    let bytes = std::fs::read(path).map_err(|error| Error::Io { path: path.to_path_buf(), error })?;
    decode_image(&bytes).map_err(|reason| Error::Image(format!("{}: not a readable image ({reason})", path.display())))
}

/// Decodes an encoded image. JPEGs go through libjpeg-turbo with its default (accurate)
/// IDCT and fancy upsampling, which decodes exactly like the official pipeline's
/// `cv2.imread`; other formats through the `image` crate (lossless, so decoders agree).
pub fn decode_image(bytes: &[u8]) -> std::result::Result<RgbFrame, String> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let img = turbojpeg::decompress(bytes, turbojpeg::PixelFormat::RGB).map_err(|e| e.to_string())?;
        let row = img.width * 3;
        let mut data = Vec::with_capacity(row * img.height);
        for y in 0..img.height {
            data.extend_from_slice(&img.pixels[y * img.pitch..y * img.pitch + row]);
        }
        return RgbFrame::new(img.width as u32, img.height as u32, data).map_err(|e| e.to_string());
    }
    let img = image::load_from_memory(bytes).map_err(|e| e.to_string())?.to_rgb8();
    let (w, h) = img.dimensions();
    RgbFrame::new(w, h, img.into_raw()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_and_png_decode_to_rgb() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/images");
        let jpg = read_image(&Path::new(dir).join("grace_hopper.jpg")).unwrap();
        assert_eq!((jpg.width, jpg.height), (512, 600));
        let png = read_image(&Path::new(dir).join("chelsea.png")).unwrap();
        assert_eq!((png.width, png.height, png.data.len()), (451, 300, 451 * 300 * 3));
    }

    #[test]
    fn bad_images_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jpg");
        std::fs::write(&path, [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]).unwrap();
        let e = read_image(&path).unwrap_err().to_string();
        assert!(e.contains("x.jpg") && e.contains("not a readable image"), "{e}");
        std::fs::write(&path, b"plain text").unwrap();
        assert!(read_image(&path).is_err());
        assert!(read_image(&dir.path().join("missing.png")).is_err());
        assert!(is_image_path(Path::new("a/B.JPG")) && !is_image_path(Path::new("clip.mp4")));
    }
}
