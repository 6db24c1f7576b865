//! The vision pieces around the detector: generated RGB+IR data (deterministic, and with the
//! physics that makes fusion matter), the dataset layouts and their errors, the letterbox, and
//! the mAP metric against pycocotools.

use std::path::Path;

use kestrel::vision::annotations::Annotation;
use kestrel::vision::dataset::{write_synth, Dataset};
use kestrel::vision::detect::Detection;
use kestrel::vision::eval::{evaluate, ImageResult};
use kestrel::vision::image::Image;
use kestrel::vision::preprocess::{letterbox_into, resize_bilinear, Letterbox, PAD};
use kestrel::vision::synth::{self, Condition, SynthOptions, CLASSES};

/// Our metric against pycocotools' on the same boxes (tools/coco_map_fixture.py).
const MAP_TOLERANCE: f64 = 1e-3;

#[test]
fn map_matches_pycocotools_on_the_committed_fixture() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/coco-map/fixture.json");
    let f: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let classes: Vec<String> = f["classes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().into()).collect();
    let num = |v: &serde_json::Value| v.as_f64().unwrap() as f32;
    let images: Vec<ImageResult> = f["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|img| ImageResult {
            truth: img["truth"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    let t = t.as_array().unwrap();
                    (t[0].as_u64().unwrap() as usize, [num(&t[1]), num(&t[2]), num(&t[3]), num(&t[4])], t[5] == 1)
                })
                .collect(),
            detections: img["detections"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let d = d.as_array().unwrap();
                    Detection {
                        class_id: d[0].as_u64().unwrap() as usize,
                        score: num(&d[1]),
                        box_xyxy: [num(&d[2]), num(&d[3]), num(&d[4]), num(&d[5])],
                        anchor: 0,
                    }
                })
                .collect(),
        })
        .collect();
    let m = evaluate(&images, classes.len());
    let reference = &f["pycocotools"];
    let close = |ours: Option<f64>, theirs: &serde_json::Value, what: &str| match (ours, theirs.as_f64()) {
        (Some(a), Some(b)) => assert!((a - b).abs() < MAP_TOLERANCE, "{what}: ours {a}, pycocotools {b}"),
        (None, None) => {}
        (a, b) => panic!("{what}: ours {a:?}, pycocotools {b:?}"),
    };
    close(m.map50(), &reference["map50"], "mAP@0.5");
    close(m.map50_95(), &reference["map50_95"], "mAP@0.5:0.95");
    for (c, name) in classes.iter().enumerate() {
        let (ap50, ap) = m.class(c);
        close(ap50, &reference["per_class"][name]["ap50"], &format!("{name} AP@0.5"));
        close(ap, &reference["per_class"][name]["ap50_95"], &format!("{name} AP@0.5:0.95"));
    }
    // The fixture is not degenerate: a metric that returned 0 or 1 everywhere would fail.
    let v = m.map50().unwrap();
    assert!(v > 0.2 && v < 0.9, "{v}");
}

fn small(seed: u64) -> SynthOptions {
    SynthOptions { width: 96, height: 72, seed, ..SynthOptions::default() }
}

#[test]
fn synth_is_deterministic_and_seeds_differ() {
    for i in 0..6 {
        let (a, b) = (synth::frame(&small(3), i), synth::frame(&small(3), i));
        assert_eq!(a.rgb, b.rgb);
        assert_eq!(a.ir, b.ir);
        assert_eq!(a.labels, b.labels);
    }
    assert_ne!(synth::frame(&small(3), 0).rgb, synth::frame(&small(4), 0).rgb);
}

#[test]
fn synth_boxes_lie_in_the_frame_and_name_known_classes() {
    let opts = SynthOptions { width: 160, height: 120, seed: 11, ..SynthOptions::default() };
    let mut total = 0;
    for i in 0..40 {
        let f = synth::frame(&opts, i);
        for l in &f.labels {
            let [x1, y1, x2, y2] = l.box_xyxy;
            assert!(0.0 <= x1 && x1 < x2 && x2 <= 160.0 && 0.0 <= y1 && y1 < y2 && y2 <= 120.0, "{l:?}");
            assert!(CLASSES.contains(&l.class.as_str()));
        }
        total += f.labels.len();
    }
    assert!(total >= 40, "only {total} objects in 40 frames");
}

/// Mean absolute difference between object pixels and the frame's background, in one channel
/// image (gray), over the labelled boxes' centres.
fn object_contrast(img: &Image, labels: &[kestrel::vision::annotations::Label]) -> f32 {
    let gray = img.to_gray();
    let mean_all = gray.data.iter().map(|&v| v as f32).sum::<f32>() / gray.data.len() as f32;
    let mut diffs = Vec::new();
    for l in labels.iter().filter(|l| l.class == "person" && !l.difficult) {
        let [x1, y1, x2, y2] = l.box_xyxy;
        let (cx, cy) = (((x1 + x2) / 2.0) as usize, ((y1 + y2) / 2.0 - (y2 - y1) * 0.1) as usize);
        diffs.push((gray.get(cx.min(gray.width - 1), cy.min(gray.height - 1), 0) as f32 - mean_all).abs());
    }
    diffs.iter().sum::<f32>() / diffs.len().max(1) as f32
}

#[test]
fn synth_physics_night_is_dark_in_rgb_and_people_stay_warm_in_ir() {
    let opts = SynthOptions { width: 160, height: 120, seed: 5, ..SynthOptions::default() };
    let (mut night_rgb, mut day_rgb, mut night_person_ir, mut night_person_rgb) = (vec![], vec![], vec![], vec![]);
    for i in 0..150 {
        let f = synth::frame(&opts, i);
        let mean = f.rgb.data.iter().map(|&v| v as f32).sum::<f32>() / f.rgb.data.len() as f32;
        match f.condition {
            Condition::Night => {
                night_rgb.push(mean);
                if f.labels.iter().any(|l| l.class == "person" && !l.difficult) {
                    night_person_ir.push(object_contrast(&f.ir, &f.labels));
                    night_person_rgb.push(object_contrast(&f.rgb, &f.labels));
                }
            }
            Condition::Day => day_rgb.push(mean),
            _ => {}
        }
    }
    let avg = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    assert!(!night_rgb.is_empty() && !day_rgb.is_empty() && !night_person_ir.is_empty());
    assert!(avg(&night_rgb) * 4.0 < avg(&day_rgb), "night {} day {}", avg(&night_rgb), avg(&day_rgb));
    assert!(
        avg(&night_person_ir) > 3.0 * avg(&night_person_rgb),
        "at night a person should stand out in IR ({}) far more than in RGB ({})",
        avg(&night_person_ir),
        avg(&night_person_rgb)
    );
}

#[test]
fn synth_sequences_move_objects_between_frames() {
    let opts = SynthOptions { width: 128, height: 96, seed: 2, sequence: Some(8), ..SynthOptions::default() };
    let (a, b) = (synth::frame(&opts, 0), synth::frame(&opts, 7));
    assert_eq!(a.clip, Some((0, 0)));
    assert_eq!(b.clip, Some((0, 7)));
    assert_eq!(a.condition, b.condition, "one clip, one condition");
    assert_ne!(a.rgb, b.rgb);
    // Same clip: mostly the same scene (the background of a static or slowly panning camera).
    let same = a.rgb.data.iter().zip(&b.rgb.data).filter(|(x, y)| x.abs_diff(**y) < 24).count();
    assert!(same * 2 > a.rgb.data.len(), "{same} of {}", a.rgb.data.len());
}

#[test]
fn a_written_dataset_reads_back_in_both_label_formats() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(9);
    write_synth(dir.path(), 12, &opts, &|_| {}).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(ds.samples.len(), 12);
    let classes: Vec<String> = CLASSES.iter().map(|s| s.to_string()).collect();
    for (i, s) in ds.samples.iter().enumerate() {
        let f = synth::frame(&opts, i);
        assert_eq!(Image::load_png(&s.rgb).unwrap(), f.rgb);
        assert_eq!(Image::load_png(&s.ir).unwrap(), f.ir);
        let ann = ds.annotation(s, (96, 72), &classes).unwrap();
        assert_eq!(ann.condition.as_deref(), Some(f.condition.name()));
        assert_eq!(ann.labels.len(), f.labels.len());
        // The YOLO copy says the same (to rounding).
        let txt = std::fs::read_to_string(dir.path().join("labels").join(format!("{}.txt", s.stem))).unwrap();
        let yolo = Annotation::from_yolo(&txt, Path::new("x.txt"), 96, 72, &classes).unwrap();
        for (a, b) in yolo.labels.iter().zip(&ann.labels) {
            assert_eq!(a.class, b.class);
            assert!(a.box_xyxy.iter().zip(&b.box_xyxy).all(|(p, q)| (p - q).abs() <= 0.6), "{a:?} {b:?}");
        }
    }
    // The DEYOLO layout: YOLO txt labels only, image folders named vis / ir.
    std::fs::remove_dir_all(dir.path().join("Annotations")).unwrap();
    std::fs::rename(dir.path().join("visible"), dir.path().join("vis")).unwrap();
    std::fs::rename(dir.path().join("infrared"), dir.path().join("ir")).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    let ann = ds.annotation(&ds.samples[0], (96, 72), &[]).unwrap();
    assert_eq!(ann.labels.len(), synth::frame(&opts, 0).labels.len());
}

#[test]
fn unpaired_or_unlabelled_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_synth(dir.path(), 3, &small(1), &|_| {}).unwrap();
    std::fs::remove_file(dir.path().join("infrared/000001.png")).unwrap();
    let e = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("unpaired") && e.contains("000001.png"), "{e}");
    std::fs::remove_file(dir.path().join("visible/000001.png")).unwrap();
    let e = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("000001.xml") && e.contains("no image pair"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = Dataset::open(empty.path()).unwrap_err().to_string();
    assert!(e.contains("no visible-image folder"), "{e}");
    // A corrupt PNG names the file.
    std::fs::write(dir.path().join("bad.png"), b"\x89PNG\r\n\x1a\nnonsense").unwrap();
    let e = Image::load_png(&dir.path().join("bad.png")).unwrap_err().to_string();
    assert!(e.contains("bad.png"), "{e}");
}

#[test]
fn letterbox_centres_the_frame_on_grey_and_maps_boxes_back() {
    let mut img = Image::new(40, 20, 3);
    img.data.iter_mut().enumerate().for_each(|(i, v)| *v = (i % 251) as u8);
    let mut out = vec![0f32; 3 * 32 * 32];
    let lb = letterbox_into(&img, 32, 3, &mut out);
    assert_eq!(lb, Letterbox { scale: 0.8, dx: 0.0, dy: 8.0, size: 32 });
    assert_eq!(out[0], PAD as f32 / 255.0, "padding row");
    assert_ne!(out[8 * 32], PAD as f32 / 255.0, "first image row");
    let b = lb.unmap([8.0, 16.0, 24.0, 24.0]);
    assert_eq!(b, [10.0, 10.0, 30.0, 20.0]);
    // Shrinking by 2 with the triangle filter averages pixel pairs (PIL's BILINEAR).
    let mut ramp = Image::new(4, 1, 1);
    ramp.data.copy_from_slice(&[0, 100, 200, 250]);
    let half = resize_bilinear(&ramp, 2, 1);
    assert_eq!(half.data, vec![71, 207], "PIL: Image.fromarray([[0, 100, 200, 250]]).resize((2, 1), BILINEAR)");
}

#[test]
fn jpeg_frames_read_like_png_ones() {
    // LLVIP and M3FD ship JPEG: the same frames, encoded lossily, read back close to the originals
    // and pair up in a dataset whatever their extension.
    let dir = tempfile::tempdir().unwrap();
    let opts = small(4);
    for sub in ["visible", "infrared"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    for i in 0..3 {
        let f = synth::frame(&opts, i);
        for (sub, img, color) in
            [("visible", &f.rgb, jpeg_encoder::ColorType::Rgb), ("infrared", &f.ir, jpeg_encoder::ColorType::Luma)]
        {
            let path = dir.path().join(sub).join(format!("{i:06}.jpg"));
            let enc = jpeg_encoder::Encoder::new_file(&path, 95).unwrap();
            enc.encode(&img.data, img.width as u16, img.height as u16, color).unwrap();
            let back = Image::load(&path).unwrap();
            assert_eq!((back.width, back.height, back.channels), (img.width, img.height, img.channels));
            let mean_err = back.data.iter().zip(&img.data).map(|(a, b)| a.abs_diff(*b) as f32).sum::<f32>()
                / img.data.len() as f32;
            assert!(mean_err < 4.0, "{sub} {i}: mean error {mean_err} grey levels");
        }
    }
    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(ds.samples.len(), 3);
    // A file that claims to be a JPEG and is not is named.
    let bad = dir.path().join("bad.jpg");
    std::fs::write(&bad, [0xFF, 0xD8, 0xFF, 0x00, 1, 2, 3]).unwrap();
    let e = Image::load(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.jpg") && e.contains("JPEG"), "{e}");
}
