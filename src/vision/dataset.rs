//! Paired RGB + infrared datasets on disk: writing generated ones, and finding the pairs and
//! labels of real ones.
//!
//! Layouts read (folder names matched without regard to case):
//! - **LLVIP**: `visible/`, `infrared/`, `Annotations/*.xml` (VOC); identical file stems;
//! - **M3FD-style**: `Vis/`, `Ir/`, `Annotation/*.xml`;
//! - **DEYOLO / YOLO txt**: visible and infrared image folders (`vis`, `rgb`, `visible`,
//!   `images/visible`, ... and `ir`, `infrared`, `thermal`, `lwir`, ...) plus `labels/*.txt`, with
//!   class names from `classes.txt` (one per line) or from the caller (the model's metadata).
//!
//! Each image of one modality must have its partner in the other: a file present on one side
//! only is an error that names it (never a silently shorter dataset). Labels are optional per
//! image (an image with no objects may have no file) but a label file with no image is an error.
//!
//! [`write_synth`] writes the LLVIP layout, plus `labels/` (YOLO txt), `classes.txt` and
//! `index.csv` (file, condition, clip, frame, objects).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use super::annotations::Annotation;
use super::synth::{self, SynthOptions, CLASSES};

/// One image pair with its labels.
#[derive(Clone, Debug)]
pub struct Sample {
    pub stem: String,
    pub rgb: PathBuf,
    pub ir: PathBuf,
    /// None: no label file (an image without objects, or an unlabelled dataset).
    pub annotation: Option<PathBuf>,
}

/// A dataset found on disk.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    pub samples: Vec<Sample>,
    /// Class names from `classes.txt`, when the dataset has one.
    pub classes: Option<Vec<String>>,
    /// Condition per stem, from `index.csv` or the XML files (filled as annotations are read).
    pub conditions: BTreeMap<String, String>,
}

const RGB_DIRS: &[&str] = &["visible", "vis", "rgb", "images/visible", "images/vis", "images/rgb"];
const IR_DIRS: &[&str] = &["infrared", "ir", "thermal", "lwir", "images/infrared", "images/ir", "images/thermal"];
const VOC_DIRS: &[&str] = &["annotations", "annotation", "annotations/xml", "xml"];
const YOLO_DIRS: &[&str] = &["labels", "labels/visible", "labels/vis", "labels/rgb"];
const IMAGE_EXTS: &[&str] = &["png", "jpg", "jpeg", "bmp"];

/// `root/name` matched case-insensitively, component by component.
fn find_dir(root: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().find_map(|name| {
        let mut dir = root.to_path_buf();
        for part in name.split('/') {
            let entry = std::fs::read_dir(&dir)
                .ok()?
                .flatten()
                .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(part) && e.path().is_dir())?;
            dir = entry.path();
        }
        Some(dir)
    })
}

/// Files of `dir` with one of `exts`, by stem.
fn files_by_stem(dir: &Path, exts: &[&str]) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
        if !ext.is_some_and(|e| exts.contains(&e.as_str())) {
            continue;
        }
        let stem = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        if let Some(previous) = out.insert(stem.clone(), path.clone()) {
            return Err(Error::Dataset {
                path: dir.to_path_buf(),
                reason: format!("two files share the stem {stem:?}: {} and {}", previous.display(), path.display()),
            });
        }
    }
    Ok(out)
}

impl Dataset {
    /// Finds the pairs and labels under `root` (see the module docs for the layouts).
    pub fn open(root: &Path) -> Result<Dataset> {
        let err = |reason: String| Error::Dataset { path: root.to_path_buf(), reason };
        if !root.is_dir() {
            return Err(err("not a directory".into()));
        }
        let rgb_dir = find_dir(root, RGB_DIRS)
            .ok_or_else(|| err(format!("no visible-image folder (looked for {})", RGB_DIRS.join(", "))))?;
        let ir_dir = find_dir(root, IR_DIRS)
            .ok_or_else(|| err(format!("no infrared-image folder (looked for {})", IR_DIRS.join(", "))))?;
        Dataset::from_dirs(root, &rgb_dir, &ir_dir)
    }

    /// Pairs from explicit folders; labels and metadata are looked for under `root`.
    pub fn from_dirs(root: &Path, rgb_dir: &Path, ir_dir: &Path) -> Result<Dataset> {
        let err = |reason: String| Error::Dataset { path: root.to_path_buf(), reason };
        let rgb = files_by_stem(rgb_dir, IMAGE_EXTS)?;
        let ir = files_by_stem(ir_dir, IMAGE_EXTS)?;
        let only = |a: &BTreeMap<String, PathBuf>, b: &BTreeMap<String, PathBuf>| -> Vec<String> {
            a.iter().filter(|(k, _)| !b.contains_key(*k)).map(|(_, p)| p.display().to_string()).take(5).collect()
        };
        let (rgb_only, ir_only) = (only(&rgb, &ir), only(&ir, &rgb));
        if !rgb_only.is_empty() || !ir_only.is_empty() {
            let mut reason = String::from("unpaired images:");
            if !rgb_only.is_empty() {
                reason += &format!(" no infrared partner for {}", rgb_only.join(", "));
            }
            if !ir_only.is_empty() {
                reason += &format!(" no visible partner for {}", ir_only.join(", "));
            }
            return Err(err(reason));
        }
        if rgb.is_empty() {
            return Err(err(format!("no images in {}", rgb_dir.display())));
        }
        let (labels, classes) = if let Some(dir) = find_dir(root, VOC_DIRS) {
            (files_by_stem(&dir, &["xml"])?, None)
        } else if let Some(dir) = find_dir(root, YOLO_DIRS) {
            let classes = match std::fs::read_to_string(root.join("classes.txt")) {
                Ok(text) => Some(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()),
                Err(_) => None,
            };
            (files_by_stem(&dir, &["txt"])?, classes)
        } else {
            (BTreeMap::new(), None)
        };
        if let Some((stem, path)) = labels.iter().find(|(k, _)| !rgb.contains_key(*k)) {
            return Err(err(format!("label file {} ({stem}) has no image pair", path.display())));
        }
        let samples = rgb
            .into_iter()
            .map(|(stem, rgb)| Sample { ir: ir[&stem].clone(), annotation: labels.get(&stem).cloned(), stem, rgb })
            .collect();
        let mut conditions = BTreeMap::new();
        if let Ok(index) = std::fs::read_to_string(root.join("index.csv")) {
            for line in index.lines().skip(1) {
                let mut f = line.split(',');
                if let (Some(file), Some(cond)) = (f.next(), f.next()) {
                    let stem = Path::new(file).file_stem().unwrap_or_default().to_string_lossy().into_owned();
                    conditions.insert(stem, cond.to_string());
                }
            }
        }
        Ok(Dataset { root: root.to_path_buf(), samples, classes, conditions })
    }

    /// The labels of `sample` (an empty annotation when it has no label file). YOLO txt needs
    /// the class names (`classes.txt` or `fallback_classes`) and the image size.
    pub fn annotation(&self, sample: &Sample, size: (usize, usize), fallback_classes: &[String]) -> Result<Annotation> {
        let Some(path) = &sample.annotation else {
            return Ok(Annotation {
                filename: sample.stem.clone(),
                width: size.0,
                height: size.1,
                condition: self.conditions.get(&sample.stem).cloned(),
                labels: vec![],
            });
        };
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut ann = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("xml")) {
            Annotation::from_voc(&text, path)?
        } else {
            let classes = self.classes.as_deref().unwrap_or(fallback_classes);
            if classes.is_empty() {
                return Err(Error::Dataset {
                    path: self.root.clone(),
                    reason: "YOLO txt labels need class names: add classes.txt or use a model with names".into(),
                });
            }
            Annotation::from_yolo(&text, path, size.0, size.1, classes)?
        };
        if ann.condition.is_none() {
            ann.condition = self.conditions.get(&sample.stem).cloned();
        }
        Ok(ann)
    }
}

/// Writes `count` generated pairs under `out` (LLVIP layout plus YOLO labels and an index),
/// calling `progress(done)` after each. Frames are generated on the worker pool's threads.
pub fn write_synth(out: &Path, count: usize, opts: &SynthOptions, progress: &(dyn Fn(usize) + Sync)) -> Result<()> {
    for dir in ["visible", "infrared", "Annotations", "labels"] {
        std::fs::create_dir_all(out.join(dir)).map_err(|e| Error::io(out.join(dir), e))?;
    }
    let classes: Vec<String> = CLASSES.iter().map(|s| s.to_string()).collect();
    std::fs::write(out.join("classes.txt"), classes.join("\n") + "\n")
        .map_err(|e| Error::io(out.join("classes.txt"), e))?;
    let rows: Vec<std::sync::Mutex<String>> = (0..count).map(|_| std::sync::Mutex::new(String::new())).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failure: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count || failure.lock().is_ok_and(|f| f.is_some()) {
                    break;
                }
                match write_one(out, i, opts, &classes) {
                    Ok(row) => *rows[i].lock().unwrap_or_else(|e| e.into_inner()) = row,
                    Err(e) => {
                        failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                    }
                }
                progress(i + 1);
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let mut index = String::from("file,condition,clip,frame,objects\n");
    for row in rows {
        index += &row.into_inner().unwrap_or_else(|e| e.into_inner());
    }
    std::fs::write(out.join("index.csv"), index).map_err(|e| Error::io(out.join("index.csv"), e))
}

/// File stem of frame `i`: `000042`, or `c0003_f0007` for sequences.
pub fn stem(opts: &SynthOptions, i: usize) -> String {
    match opts.sequence {
        Some(n) if n > 0 => format!("c{:04}_f{:04}", i / n, i % n),
        _ => format!("{i:06}"),
    }
}

fn write_one(out: &Path, i: usize, opts: &SynthOptions, classes: &[String]) -> Result<String> {
    let f = synth::frame(opts, i);
    let stem = stem(opts, i);
    let name = format!("{stem}.png");
    f.rgb.save_png(&out.join("visible").join(&name))?;
    f.ir.save_png(&out.join("infrared").join(&name))?;
    let ann = f.annotation(&name);
    let xml = out.join("Annotations").join(format!("{stem}.xml"));
    std::fs::write(&xml, ann.to_voc()).map_err(|e| Error::io(&xml, e))?;
    let txt = out.join("labels").join(format!("{stem}.txt"));
    std::fs::write(&txt, ann.to_yolo(classes)?).map_err(|e| Error::io(&txt, e))?;
    let (clip, frame) = f.clip.unwrap_or((i, 0));
    Ok(format!("{name},{},{clip},{frame},{}\n", f.condition.name(), f.labels.len()))
}
