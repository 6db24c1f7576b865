//! Pictures of what a detector saw: the visible and thermal frames side by side, each detection
//! boxed on both in its class colour, with a "class score" tag in a built-in 3x5 pixel font
//! (scaled up), so no font files or drawing crates are needed.

use super::detect::Detection;
use super::image::Image;

/// One colour per class id (cycled), bright enough on dark night frames.
const PALETTE: [[u8; 3]; 6] =
    [[255, 56, 56], [56, 200, 255], [255, 200, 40], [120, 255, 80], [220, 90, 255], [255, 140, 40]];

/// The visible and thermal frames side by side (the thermal one scaled to the visible one's
/// height when they differ), with `detections` (visible-frame pixels) drawn on both.
pub fn side_by_side(rgb: Option<&Image>, ir: Option<&Image>, detections: &[Detection], classes: &[String]) -> Image {
    let frames: Vec<Image> = [rgb, ir].into_iter().flatten().map(Image::to_rgb).collect();
    let height = frames.iter().map(|f| f.height).max().unwrap_or(1);
    let width: usize = frames.iter().map(|f| f.width).sum::<usize>().max(1);
    let mut canvas = Image::new(width, height, 3);
    let mut x0 = 0;
    for f in &frames {
        for y in 0..f.height {
            let src = &f.data[y * f.width * 3..(y + 1) * f.width * 3];
            canvas.data[(y * width + x0) * 3..][..f.width * 3].copy_from_slice(src);
        }
        let scale = (height / 240).max(1);
        for d in detections {
            let color = PALETTE[d.class_id % PALETTE.len()];
            let [x1, y1, x2, y2] = d.box_xyxy.map(|v| v.max(0.0) as usize);
            let clip = |x: usize| (x0 + x).min(x0 + f.width - 1);
            rectangle(&mut canvas, clip(x1), y1.min(f.height - 1), clip(x2), y2.min(f.height - 1), color, scale);
            let name = classes.get(d.class_id).map_or("?", |s| s.as_str());
            let label = format!("{name} {:.2}", d.score);
            let ty = y1.saturating_sub(6 * scale + 1);
            text(&mut canvas, clip(x1), ty, &label, color, scale);
        }
        x0 += f.width;
    }
    canvas
}

fn put(img: &mut Image, x: usize, y: usize, c: [u8; 3]) {
    if x < img.width && y < img.height {
        let at = (y * img.width + x) * 3;
        img.data[at..at + 3].copy_from_slice(&c);
    }
}

fn rectangle(img: &mut Image, x1: usize, y1: usize, x2: usize, y2: usize, c: [u8; 3], thickness: usize) {
    for t in 0..thickness {
        for x in x1..=x2 {
            put(img, x, y1 + t, c);
            put(img, x, y2.saturating_sub(t), c);
        }
        for y in y1..=y2 {
            put(img, x1 + t, y, c);
            put(img, x2.saturating_sub(t), y, c);
        }
    }
}

/// Draws `s` with its top-left at (x, y) on a dark backing, each font pixel `scale` pixels.
fn text(img: &mut Image, x: usize, y: usize, s: &str, c: [u8; 3], scale: usize) {
    let w = s.chars().count() * 4 * scale + scale;
    for dy in 0..6 * scale + 1 {
        for dx in 0..w {
            put(img, x + dx, y + dy, [0, 0, 0]);
        }
    }
    for (i, ch) in s.chars().enumerate() {
        let rows = glyph(ch);
        for (r, row) in rows.iter().enumerate() {
            for (col, bit) in row.bytes().enumerate() {
                if bit == b'#' {
                    for sy in 0..scale {
                        for sx in 0..scale {
                            put(img, x + scale + (i * 4 + col) * scale + sx, y + scale + r * scale + sy, c);
                        }
                    }
                }
            }
        }
    }
}

/// A 3x5 glyph ('#' set); letters are drawn lower-case, unknown characters as a box.
fn glyph(c: char) -> [&'static str; 5] {
    match c.to_ascii_lowercase() {
        'a' => [".#.", "#.#", "###", "#.#", "#.#"],
        'b' => ["##.", "#.#", "##.", "#.#", "##."],
        'c' => [".##", "#..", "#..", "#..", ".##"],
        'd' => ["##.", "#.#", "#.#", "#.#", "##."],
        'e' => ["###", "#..", "##.", "#..", "###"],
        'f' => ["###", "#..", "##.", "#..", "#.."],
        'g' => [".##", "#..", "#.#", "#.#", ".##"],
        'h' => ["#.#", "#.#", "###", "#.#", "#.#"],
        'i' => ["###", ".#.", ".#.", ".#.", "###"],
        'j' => ["..#", "..#", "..#", "#.#", ".#."],
        'k' => ["#.#", "#.#", "##.", "#.#", "#.#"],
        'l' => ["#..", "#..", "#..", "#..", "###"],
        'm' => ["#.#", "###", "###", "#.#", "#.#"],
        'n' => ["##.", "#.#", "#.#", "#.#", "#.#"],
        'o' => [".#.", "#.#", "#.#", "#.#", ".#."],
        'p' => ["##.", "#.#", "##.", "#..", "#.."],
        'q' => [".#.", "#.#", "#.#", "##.", ".##"],
        'r' => ["##.", "#.#", "##.", "#.#", "#.#"],
        's' => [".##", "#..", ".#.", "..#", "##."],
        't' => ["###", ".#.", ".#.", ".#.", ".#."],
        'u' => ["#.#", "#.#", "#.#", "#.#", "###"],
        'v' => ["#.#", "#.#", "#.#", "#.#", ".#."],
        'w' => ["#.#", "#.#", "###", "###", "#.#"],
        'x' => ["#.#", "#.#", ".#.", "#.#", "#.#"],
        'y' => ["#.#", "#.#", ".#.", ".#.", ".#."],
        'z' => ["###", "..#", ".#.", "#..", "###"],
        '0' => ["###", "#.#", "#.#", "#.#", "###"],
        '1' => [".#.", "##.", ".#.", ".#.", "###"],
        '2' => ["##.", "..#", ".#.", "#..", "###"],
        '3' => ["##.", "..#", ".#.", "..#", "##."],
        '4' => ["#.#", "#.#", "###", "..#", "..#"],
        '5' => ["###", "#..", "##.", "..#", "##."],
        '6' => [".##", "#..", "###", "#.#", "###"],
        '7' => ["###", "..#", ".#.", ".#.", ".#."],
        '8' => ["###", "#.#", "###", "#.#", "###"],
        '9' => ["###", "#.#", "###", "..#", "##."],
        '.' => ["...", "...", "...", "...", ".#."],
        '-' | '_' => ["...", "...", "###", "...", "..."],
        ' ' => ["...", "...", "...", "...", "..."],
        _ => ["###", "#.#", "#.#", "#.#", "###"],
    }
}
