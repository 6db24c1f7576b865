//! Ground-truth boxes on disk: Pascal VOC XML (LLVIP, M3FD) and YOLO txt (DEYOLO, ultralytics).
//!
//! VOC boxes are pixel corners (`xmin ymin xmax ymax`); YOLO lines are `class cx cy w h`
//! normalised by the image size. Both read into [`Annotation`]: boxes as pixel corners, the
//! condition (day, night, ...) where the file records one. The XML reader understands exactly
//! the VOC subset (nested elements, no attributes needed, the five predefined entities); it is
//! not a general XML parser, and says so by name when a file is outside that subset.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};

/// One labelled box, in pixels of the image it annotates.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub class: String,
    pub box_xyxy: [f32; 4],
    /// VOC `difficult` (heavily occluded or tiny): evaluation ignores it, as COCO's `iscrowd`.
    pub difficult: bool,
}

/// The labels of one image.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Annotation {
    pub filename: String,
    pub width: usize,
    pub height: usize,
    /// Capture condition (`day`, `dusk`, `night`, `fog`, `glare`) when recorded.
    pub condition: Option<String>,
    pub labels: Vec<Label>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

impl Annotation {
    /// The VOC XML text (LLVIP's element order, plus a `condition` element).
    pub fn to_voc(&self) -> String {
        let mut s = String::from("<annotation>\n");
        let _ = writeln!(s, "\t<folder>visible</folder>\n\t<filename>{}</filename>", escape(&self.filename));
        let _ = writeln!(s, "\t<source>\n\t\t<database>kestrel synth</database>\n\t</source>");
        let _ = writeln!(
            s,
            "\t<size>\n\t\t<width>{}</width>\n\t\t<height>{}</height>\n\t\t<depth>3</depth>\n\t</size>",
            self.width, self.height
        );
        if let Some(c) = &self.condition {
            let _ = writeln!(s, "\t<condition>{}</condition>", escape(c));
        }
        for l in &self.labels {
            let [x1, y1, x2, y2] = l.box_xyxy;
            let _ = writeln!(
                s,
                "\t<object>\n\t\t<name>{}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n\t\t<difficult>{}</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{}</xmin>\n\t\t\t<ymin>{}</ymin>\n\t\t\t<xmax>{}</xmax>\n\t\t\t<ymax>{}</ymax>\n\t\t</bndbox>\n\t</object>",
                escape(&l.class),
                l.difficult as u8,
                x1.round() as i64,
                y1.round() as i64,
                x2.round() as i64,
                y2.round() as i64
            );
        }
        s.push_str("</annotation>\n");
        s
    }

    /// Parses VOC XML; `path` only names the file in errors.
    pub fn from_voc(text: &str, path: &Path) -> Result<Annotation> {
        let err = |reason: String| Error::Annotation { path: path.to_path_buf(), reason };
        let root = element(text, "annotation").ok_or_else(|| err("no <annotation> element (not VOC XML)".into()))?;
        let size = element(root, "size").ok_or_else(|| err("no <size> element".into()))?;
        let dim = |name: &str| -> Result<usize> {
            let v = element(size, name).ok_or_else(|| err(format!("no <size><{name}>")))?;
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| *v >= 1.0 && *v < 1e6)
                .map(|v| v as usize)
                .ok_or_else(|| err(format!("<size><{name}> is {:?}, not a positive size", v.trim())))
        };
        let mut ann = Annotation {
            filename: element(root, "filename").map(|f| unescape(f.trim())).unwrap_or_default(),
            width: dim("width")?,
            height: dim("height")?,
            condition: element(root, "condition").map(|c| unescape(c.trim())),
            labels: Vec::new(),
        };
        for (i, obj) in elements(root, "object").enumerate() {
            let name = element(obj, "name").ok_or_else(|| err(format!("object {i} has no <name>")))?;
            let bb = element(obj, "bndbox").ok_or_else(|| err(format!("object {i} has no <bndbox>")))?;
            let mut corners = [0f32; 4];
            for (c, tag) in corners.iter_mut().zip(["xmin", "ymin", "xmax", "ymax"]) {
                let v = element(bb, tag).ok_or_else(|| err(format!("object {i} has no <{tag}>")))?;
                *c = v
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| err(format!("object {i}: <{tag}> is {:?}, not a number", v.trim())))?;
            }
            if corners[2] < corners[0] || corners[3] < corners[1] {
                return Err(err(format!("object {i}: box {corners:?} has max below min")));
            }
            let difficult = element(obj, "difficult").is_some_and(|d| d.trim() == "1");
            ann.labels.push(Label { class: unescape(name.trim()), box_xyxy: corners, difficult });
        }
        Ok(ann)
    }

    /// YOLO txt lines (`class_id cx cy w h`, normalised). Classes missing from `classes` are an
    /// error naming the class.
    pub fn to_yolo(&self, classes: &[String]) -> Result<String> {
        let mut s = String::new();
        let (w, h) = (self.width as f32, self.height as f32);
        for l in &self.labels {
            let id = classes.iter().position(|c| *c == l.class).ok_or_else(|| Error::InvalidArgument {
                reason: format!("class {:?} of {} is not in the class list {classes:?}", l.class, self.filename),
            })?;
            let [x1, y1, x2, y2] = l.box_xyxy;
            let _ = writeln!(
                s,
                "{id} {:.6} {:.6} {:.6} {:.6}",
                (x1 + x2) / 2.0 / w,
                (y1 + y2) / 2.0 / h,
                (x2 - x1) / w,
                (y2 - y1) / h
            );
        }
        Ok(s)
    }

    /// Parses YOLO txt for an image of `width` x `height`.
    pub fn from_yolo(text: &str, path: &Path, width: usize, height: usize, classes: &[String]) -> Result<Annotation> {
        let err = |line: usize, reason: String| Error::Annotation {
            path: path.to_path_buf(),
            reason: format!("line {line}: {reason}"),
        };
        // Found by fuzzing: a 0-pixel side made every box degenerate, and writing the labels
        // back divided by it.
        if width == 0 || height == 0 {
            return Err(Error::Annotation {
                path: path.to_path_buf(),
                reason: format!("image size {width}x{height}: YOLO boxes are relative to a non-empty image"),
            });
        }
        let mut labels = Vec::new();
        for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() != 5 {
                return Err(err(n, format!("{} fields, expected `class cx cy w h`", fields.len())));
            }
            let id: usize =
                fields[0].parse().map_err(|_| err(n, format!("class id {:?} is not an integer", fields[0])))?;
            let class =
                classes.get(id).ok_or_else(|| err(n, format!("class id {id} with {} classes", classes.len())))?;
            let mut v = [0f32; 4];
            for (dst, f) in v.iter_mut().zip(&fields[1..]) {
                *dst = f
                    .parse::<f32>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| err(n, format!("{f:?} is not a number")))?;
            }
            let [cx, cy, w, h] = v;
            if w < 0.0 || h < 0.0 {
                return Err(err(n, format!("negative size {w} x {h}")));
            }
            // Relative coordinates live in 0..1, with room for boxes cut by the frame's edge.
            // Found by fuzzing: a centre of 8e35 passed the finiteness check, then overflowed
            // to infinity in pixels.
            if let Some(x) = v.iter().find(|x| !(-1.0..=2.0).contains(*x)) {
                return Err(err(n, format!("{x} is outside the relative range of YOLO coordinates (0 to 1)")));
            }
            let (iw, ih) = (width as f32, height as f32);
            let box_xyxy = [(cx - w / 2.0) * iw, (cy - h / 2.0) * ih, (cx + w / 2.0) * iw, (cy + h / 2.0) * ih];
            labels.push(Label { class: class.clone(), box_xyxy, difficult: false });
        }
        let filename = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Annotation { filename, width, height, condition: None, labels })
    }
}

/// The text inside the first `<tag>...</tag>` of `text` (None when absent or unclosed).
fn element<'a>(text: &'a str, tag: &'a str) -> Option<&'a str> {
    elements(text, tag).next()
}

/// The texts inside every top-level `<tag>...</tag>` of `text`, in order. `<tag attr="..">` is
/// accepted; nested elements of the same name are not (VOC has none).
fn elements<'a>(text: &'a str, tag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let mut rest = text;
    std::iter::from_fn(move || loop {
        let start = rest.find('<')?;
        let after = &rest[start + 1..];
        let name_end = after.find(|c: char| c == '>' || c == '/' || c.is_whitespace())?;
        if &after[..name_end] != tag {
            rest = after;
            continue;
        }
        let open_end = after.find('>')?;
        if after[..open_end].ends_with('/') {
            // <tag/>: empty.
            rest = &after[open_end + 1..];
            return Some("");
        }
        let body = &after[open_end + 1..];
        let close = format!("</{tag}>");
        let end = body.find(&close)?;
        rest = &body[end + close.len()..];
        return Some(&body[..end]);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yolo_labels_of_an_empty_image_are_refused() {
        // The input the YOLO fuzz target crashed on (fuzz/regressions/yolo/): height 0.
        let names = ["person".to_string()];
        for (w, h) in [(47, 0), (0, 240), (0, 0)] {
            let err = Annotation::from_yolo("0 0.5 0.5 0.2 0.2\n", Path::new("a.txt"), w, h, &names).unwrap_err();
            assert!(err.to_string().contains("non-empty image"), "{err}");
        }
    }

    #[test]
    fn yolo_coordinates_far_outside_the_image_are_refused() {
        // The second YOLO fuzz crash (fuzz/regressions/yolo/): a centre of 8.2e35 is finite but
        // overflows to infinity in pixels.
        let names = ["person".to_string()];
        let err = Annotation::from_yolo("0 0.82e36 300. 292 02\n", Path::new("a.txt"), 320, 47, &names).unwrap_err();
        assert!(err.to_string().contains("relative range"), "{err}");
        // A box cut by the frame's edge is still a box.
        let ann = Annotation::from_yolo("0 1.05 0.5 0.2 0.4\n", Path::new("a.txt"), 320, 240, &names).unwrap();
        assert_eq!(ann.labels.len(), 1);
    }

    fn sample() -> Annotation {
        Annotation {
            filename: "000001.png".into(),
            width: 320,
            height: 240,
            condition: Some("night".into()),
            labels: vec![
                Label { class: "person".into(), box_xyxy: [10.0, 20.0, 40.0, 100.0], difficult: false },
                Label { class: "car".into(), box_xyxy: [100.0, 120.0, 220.0, 180.0], difficult: true },
            ],
        }
    }

    #[test]
    fn voc_round_trips() {
        let a = sample();
        let back = Annotation::from_voc(&a.to_voc(), Path::new("x.xml")).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn yolo_round_trips_within_rounding() {
        let a = sample();
        let classes: Vec<String> = ["person", "car", "bicycle"].iter().map(|s| s.to_string()).collect();
        let text = a.to_yolo(&classes).unwrap();
        let back = Annotation::from_yolo(&text, Path::new("000001.txt"), 320, 240, &classes).unwrap();
        for (l, m) in a.labels.iter().zip(&back.labels) {
            assert_eq!(l.class, m.class);
            for (p, q) in l.box_xyxy.iter().zip(&m.box_xyxy) {
                assert!((p - q).abs() < 1e-3, "{p} vs {q}");
            }
        }
    }

    #[test]
    fn broken_files_name_the_problem() {
        let p = Path::new("bad.xml");
        let cases = [
            ("<root/>", "not VOC"),
            ("<annotation><filename>a</filename></annotation>", "<size>"),
            ("<annotation><size><width>0</width><height>5</height></size></annotation>", "width"),
            (
                "<annotation><size><width>9</width><height>5</height></size><object><name>car</name><bndbox><xmin>5</xmin><ymin>1</ymin><xmax>2</xmax><ymax>3</ymax></bndbox></object></annotation>",
                "max below min",
            ),
            (
                "<annotation><size><width>9</width><height>5</height></size><object><name>car</name><bndbox><xmin>x</xmin></bndbox></object></annotation>",
                "not a number",
            ),
        ];
        for (text, want) in cases {
            let e = Annotation::from_voc(text, p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("bad.xml"), "{e}");
        }
        let classes = vec!["person".to_string()];
        for (text, want) in
            [("0 0.5 0.5", "3 fields"), ("3 0.5 0.5 0.1 0.1", "class id 3"), ("0 a 0.5 0.1 0.1", "not a number")]
        {
            let e = Annotation::from_yolo(text, Path::new("l.txt"), 10, 10, &classes).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
