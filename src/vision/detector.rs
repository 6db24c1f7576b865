//! A packed detector ready to take frames: the graph on the CPU or the GPU, its inputs read from
//! the graph (which modality, how many channels, what size), its class names from the metadata,
//! and the buffers for one frame pair made once.
//!
//! Inputs are matched to cameras by name: `ir`, `infrared`, `thermal` or `lwir` take the thermal
//! frame, any other name (`rgb`, ultralytics' `images`) the visible one. So an ultralytics YOLO
//! export, the fused RGB+IR model and the single-modality baselines all run through the same
//! code, and a model asks only for the frames it uses.

use std::path::Path;

use crate::backend::gpu::{GpuContext, GpuOptions};
use crate::error::{Error, Result};
use crate::exec::{CpuExecutor, DeltaOptions, DeltaStats, GpuExecutor};
use crate::format::{Kpak, Verify};
use crate::graph::Graph;

use super::detect::{decode_into, DecodeOptions, DecodeScratch, Detection};
use super::image::Image;
use super::preprocess::{letterbox_with, LetterboxScratch};

/// Which camera an input reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modality {
    Rgb,
    Ir,
}

impl Modality {
    fn of_input(name: &str) -> Modality {
        match name.to_ascii_lowercase().as_str() {
            "ir" | "infrared" | "thermal" | "lwir" => Modality::Ir,
            _ => Modality::Rgb,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Modality::Rgb => "rgb",
            Modality::Ir => "ir",
        }
    }
}

/// One graph input.
#[derive(Clone, Debug)]
pub struct InputSpec {
    pub name: String,
    pub modality: Modality,
    pub channels: usize,
    /// Side of the square letterboxed input.
    pub size: usize,
}

/// Where the graph runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// The GPU; `allow_software` admits lavapipe and the like.
    Gpu {
        allow_software: bool,
    },
}

enum Engine {
    Cpu(Box<CpuExecutor>),
    Gpu(Box<(GpuContext, GpuExecutor)>),
}

/// A detector loaded from a .kpak (or an .onnx imported on the fly).
pub struct Detector {
    engine: Engine,
    inputs: Vec<InputSpec>,
    classes: Vec<String>,
    anchors: usize,
    buffers: Vec<Vec<f32>>,
    output: Vec<f32>,
    letterbox: LetterboxScratch,
    decode: DecodeScratch,
    metadata: Vec<(String, String)>,
    /// The model file (the GPU's delta mode reads its weights again).
    source: std::path::PathBuf,
    /// Score / IoU thresholds and the per-image cap used by [`Detector::detect`].
    pub options: DecodeOptions,
}

impl Detector {
    /// Loads `path` for `device`.
    pub fn open(path: &Path, device: Device) -> Result<Detector> {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
            let model = crate::import::onnx::Model::load(path)?;
            let mut g = crate::graph::onnx::import(&model)?;
            crate::graph::passes::optimize(&mut g)?;
            let weights = |_| unreachable!("imported graphs carry their weights");
            return Detector::build(&g, &model.metadata, &weights, device, path);
        }
        let pak = Kpak::open(path, Verify::Full)?;
        let g = pak
            .graph()
            .ok_or_else(|| Error::Unsupported { what: format!("{} has no graph to run", path.display()) })?;
        Detector::build(g, pak.metadata(), &|id| crate::exec::kpak_weights(&pak, g, id), device, path)
    }

    /// A detector from an open .kpak with a graph of the caller's (the file's own, edited: clip
    /// thresholds chosen, say), its weights read from `pak`. `source` names it in errors and is
    /// what a CPU fallback loads again.
    pub fn from_kpak(pak: &Kpak, g: &Graph, device: Device, source: &Path) -> Result<Detector> {
        Detector::build(g, pak.metadata(), &|id| crate::exec::kpak_weights(pak, g, id), device, source)
    }

    /// Starts (or stops) recording the largest output of every ReLU/SiLU layer per channel
    /// (CPU only): the statistics behind `kestrel calibrate-clip`.
    pub fn record_activation_max(&mut self, on: bool) -> Result<()> {
        match &mut self.engine {
            Engine::Cpu(e) => {
                e.record_activation_max(on);
                Ok(())
            }
            Engine::Gpu(_) => {
                Err(Error::Unsupported { what: "activation statistics on the GPU (calibrate on the CPU)".into() })
            }
        }
    }

    /// (layer, largest output per channel) since [`Detector::record_activation_max`].
    pub fn activation_max(&self) -> Vec<(String, Vec<f32>)> {
        match &self.engine {
            Engine::Cpu(e) => e.activation_max(),
            Engine::Gpu(_) => Vec::new(),
        }
    }

    fn build(
        g: &Graph,
        metadata: &[(String, String)],
        weights: &dyn Fn(usize) -> Result<Vec<f32>>,
        device: Device,
        path: &Path,
    ) -> Result<Detector> {
        let bad = |reason: String| Error::Unsupported { what: format!("{} as a detector: {reason}", path.display()) };
        let mut inputs = Vec::new();
        for &v in &g.inputs {
            let value = &g.values[v];
            let &[1, c, h, w] = value.shape.as_slice() else {
                return Err(bad(format!("input {} has shape {:?}, not [1, C, S, S]", value.name, value.shape)));
            };
            if h != w || !(c == 1 || c == 3) {
                return Err(bad(format!("input {} is [1, {c}, {h}, {w}]: need 1 or 3 channels, square", value.name)));
            }
            inputs.push(InputSpec {
                name: value.name.clone(),
                modality: Modality::of_input(&value.name),
                channels: c,
                size: h,
            });
        }
        if inputs.is_empty() || inputs.len() > 2 || (inputs.len() == 2 && inputs[0].modality == inputs[1].modality) {
            let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(bad(format!("inputs {names:?}: need one camera input, or one visible and one thermal")));
        }
        let out = g.outputs.first().ok_or_else(|| bad("no output".into()))?;
        let shape = &g.values[*out].shape;
        let &[1, rows, anchors] = shape.as_slice() else {
            return Err(bad(format!("output shape {shape:?} is not a YOLOv8 head's [1, 4 + classes, anchors]")));
        };
        if rows < 5 {
            return Err(bad(format!("output shape {shape:?} has no class rows")));
        }
        let nc = rows - 4;
        let classes = match metadata.iter().find(|(k, _)| k == "names").and_then(|(_, v)| parse_names(v)) {
            Some(names) if names.len() == nc => names,
            _ => (0..nc).map(|i| format!("class{i}")).collect(),
        };
        let engine = match device {
            Device::Cpu => Engine::Cpu(Box::new(CpuExecutor::new(g, weights)?)),
            Device::Gpu { allow_software } => {
                let ctx = GpuContext::new(&GpuOptions { allow_software })?;
                let e = GpuExecutor::new(&ctx, g, weights)?;
                Engine::Gpu(Box::new((ctx, e)))
            }
        };
        let buffers = inputs.iter().map(|i| vec![0.0; i.channels * i.size * i.size]).collect();
        Ok(Detector {
            engine,
            inputs,
            classes,
            anchors,
            buffers,
            output: vec![0.0; rows * anchors],
            letterbox: LetterboxScratch::default(),
            decode: DecodeScratch::with_capacity(anchors),
            metadata: metadata.to_vec(),
            source: path.to_path_buf(),
            options: DecodeOptions::default(),
        })
    }

    /// The model's metadata entries.
    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }

    /// Runs the following frames as a stream in delta mode (`exec::delta`); the first is a
    /// keyframe. On the GPU the model file is read again for f32 copies of the delta layers'
    /// weights, and the thresholds must be fixed (see `GpuExecutor::enable_delta`).
    pub fn enable_delta(&mut self, opts: DeltaOptions) -> Result<()> {
        match &mut self.engine {
            Engine::Cpu(e) => e.enable_delta(opts),
            Engine::Gpu(b) => {
                let (ctx, e) = &mut **b;
                if self.source.extension().is_some_and(|x| x.eq_ignore_ascii_case("onnx")) {
                    let model = crate::import::onnx::Model::load(&self.source)?;
                    let mut g = crate::graph::onnx::import(&model)?;
                    crate::graph::passes::optimize(&mut g)?;
                    let none = |_| Err(Error::Unsupported { what: "weights outside an imported graph".into() });
                    return e.enable_delta(ctx, &g, &none, &opts);
                }
                let pak = Kpak::open(&self.source, Verify::Structure)?;
                let g = pak.graph().ok_or_else(|| Error::Unsupported {
                    what: format!("{} has no graph to run", self.source.display()),
                })?;
                e.enable_delta(ctx, g, &|id| crate::exec::kpak_weights(&pak, g, id), &opts)
            }
        }
    }

    /// Totals of the delta stream, when in delta mode.
    pub fn delta_stats(&self) -> Option<DeltaStats> {
        match &self.engine {
            Engine::Cpu(e) => e.delta_stats().cloned(),
            Engine::Gpu(b) => b.1.delta_stats(),
        }
    }

    /// Makes the next frame a keyframe (a new clip, a camera restart).
    pub fn reset_delta(&mut self) {
        match &mut self.engine {
            Engine::Cpu(e) => e.reset_delta(),
            Engine::Gpu(b) => b.1.reset_delta(),
        }
    }

    /// Starts (or stops) timing each step of the model (the CPU backend).
    pub fn set_profiling(&mut self, on: bool) {
        if let Engine::Cpu(e) = &mut self.engine {
            e.set_profiling(on);
        }
    }

    /// (node name, op, seconds) per step since profiling started (empty on the GPU backend).
    pub fn profile(&self) -> Vec<(String, String, f64)> {
        match &self.engine {
            Engine::Cpu(e) => e.profile(),
            Engine::Gpu(_) => Vec::new(),
        }
    }

    /// Multiply-adds of one dense run of the model.
    pub fn dense_macs(&self) -> u64 {
        match &self.engine {
            Engine::Cpu(e) => e.dense_macs(),
            Engine::Gpu(b) => b.1.dense_macs(),
        }
    }

    pub fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Whether the model reads the `m` camera.
    pub fn needs(&self, m: Modality) -> bool {
        self.inputs.iter().any(|i| i.modality == m)
    }

    /// Detections in frame pixels (the visible frame's when it is given, else the thermal one's),
    /// best first. A frame the model needs but did not get, frames of different sizes, or a frame
    /// with no pixels are errors.
    pub fn detect(&mut self, rgb: Option<&Image>, ir: Option<&Image>) -> Result<Vec<Detection>> {
        let mut out = Vec::new();
        self.detect_into(rgb, ir, &mut out)?;
        Ok(out)
    }

    /// Whether the last frame's head output is all finite numbers. Decoding skips non-finite
    /// anchors, so a corrupted run (a flipped exponent bit, a device fault) would otherwise look
    /// like an empty scene, the most dangerous thing it could look like.
    pub fn output_is_finite(&self) -> bool {
        self.output.iter().all(|v| v.is_finite())
    }

    /// The GPU context the detector runs on (`None` on the CPU): for fault tests, which
    /// destroy its device to simulate a lost GPU.
    pub fn gpu_context(&self) -> Option<&GpuContext> {
        match &self.engine {
            Engine::Gpu(g) => Some(&g.0),
            Engine::Cpu(_) => None,
        }
    }

    /// The model file the detector was loaded from (a fallback loads it again).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Anchors of the head: the most detections a frame can give.
    pub fn anchors(&self) -> usize {
        self.anchors
    }

    /// Every class's probability for a detection of the last frame (`out` holds one per class).
    pub fn class_probs(&self, d: &Detection, out: &mut [f32]) {
        let n = self.anchors;
        for (c, p) in out.iter_mut().enumerate().take(self.classes.len()) {
            *p = self.output[(4 + c) * n + d.anchor];
        }
    }

    /// [`Detector::detect`] into `out` (cleared first). Once the buffers have grown to the
    /// stream's frame sizes, a frame allocates nothing in kestrel's code (the control loop's
    /// steady state).
    pub fn detect_into(&mut self, rgb: Option<&Image>, ir: Option<&Image>, out: &mut Vec<Detection>) -> Result<()> {
        out.clear();
        if let (Some(a), Some(b)) = (rgb, ir) {
            if self.needs(Modality::Rgb) && self.needs(Modality::Ir) && (a.width, a.height) != (b.width, b.height) {
                return Err(Error::InvalidArgument {
                    reason: format!(
                        "the visible frame is {}x{} and the thermal frame {}x{}: a pair must have one size",
                        a.width, a.height, b.width, b.height
                    ),
                });
            }
        }
        let mut placement = None;
        for (spec, buf) in self.inputs.iter().zip(&mut self.buffers) {
            let frame = match spec.modality {
                Modality::Rgb => rgb,
                Modality::Ir => ir,
            }
            .ok_or_else(|| Error::InvalidArgument {
                reason: format!("the model's input '{}' needs a {} frame", spec.name, spec.modality.name()),
            })?;
            if frame.width == 0 || frame.height == 0 {
                return Err(Error::InvalidArgument { reason: format!("empty {} frame", spec.modality.name()) });
            }
            let lb = letterbox_with(frame, spec.size, spec.channels, buf, &mut self.letterbox);
            // Boxes are reported in the visible frame when the model reads one.
            if spec.modality == Modality::Rgb || placement.is_none() {
                placement = Some((lb, (frame.width, frame.height)));
            }
        }
        let (lb, frame_size) = placement.expect("a detector has at least one input");
        // One or two inputs (checked at load): a fixed array, nothing allocated per frame here.
        let mut refs: [&[f32]; 2] = [&[], &[]];
        for (r, b) in refs.iter_mut().zip(&self.buffers) {
            *r = b;
        }
        let refs = &refs[..self.buffers.len()];
        match &mut self.engine {
            Engine::Cpu(e) => {
                e.run(refs)?;
                let n = self.output.len();
                self.output.copy_from_slice(&e.output(0)[..n]);
            }
            Engine::Gpu(b) => {
                let (ctx, e) = &**b;
                e.run_and_read(ctx, refs, 0, &mut self.output)?;
            }
        }
        let nc = self.classes.len();
        decode_into(&self.output, nc, self.anchors, &lb, frame_size, &self.options, &mut self.decode, out);
        Ok(())
    }
}

/// Checks that a visible and a thermal frame were captured close enough together to be one pair:
/// timestamps (any common clock, e.g. nanoseconds) at most `max_skew` apart. A rig whose cameras
/// drift apart would otherwise fuse a person in one frame with empty road in the other.
pub fn check_pair_timestamps(rgb_ns: u64, ir_ns: u64, max_skew_ns: u64) -> Result<()> {
    let skew = rgb_ns.abs_diff(ir_ns);
    if skew > max_skew_ns {
        return Err(Error::InvalidArgument {
            reason: format!(
                "visible and thermal frames are {:.1} ms apart (at most {:.1} ms makes a pair)",
                skew as f64 / 1e6,
                max_skew_ns as f64 / 1e6
            ),
        });
    }
    Ok(())
}

/// Class names from ultralytics' `names` metadata: a Python dict literal such as
/// `{0: 'person', 1: 'car'}` (ids in order from 0). None if it does not parse.
pub fn parse_names(text: &str) -> Option<Vec<String>> {
    let body = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut names = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (id, after) = rest.split_once(':')?;
        if id.trim().parse::<usize>().ok()? != names.len() {
            return None;
        }
        let after = after.trim_start();
        let quote = after.chars().next().filter(|c| *c == '\'' || *c == '"')?;
        let end = after[1..].find(quote)? + 1;
        names.push(after[1..end].to_string());
        rest = after[end + 1..].trim_start().trim_start_matches(',').trim_start();
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::parse_names;

    #[test]
    fn pair_timestamps_must_be_close() {
        assert!(super::check_pair_timestamps(1_000_000, 1_004_000, 5_000_000).is_ok());
        let e = super::check_pair_timestamps(0, 40_000_000, 20_000_000).unwrap_err().to_string();
        assert!(e.contains("40.0 ms apart"), "{e}");
    }

    #[test]
    fn ultralytics_names_parse() {
        assert_eq!(
            parse_names("{0: 'person', 1: \"car\", 2: 'traffic light'}").unwrap(),
            ["person", "car", "traffic light"]
        );
        assert_eq!(parse_names("{}").unwrap(), Vec::<String>::new());
        assert!(parse_names("{1: 'x'}").is_none(), "ids must start at 0");
        assert!(parse_names("[0, 1]").is_none());
    }
}
