//! Delta mode of the CPU executor: on a stream of frames, every conv and linear layer with
//! constant weights keeps a temporal delta state ([`ops::DeltaConv2d`], [`ops::DeltaLinear`])
//! and adds only the change of its input; the other ops run dense on the accumulated outputs.
//!
//! Keyframes (every layer dense, states reset) come on the first frame, every
//! `keyframe_interval` frames, and on scene cuts. A layer whose fired fraction passes
//! `dense_above` runs dense for that frame (past that point the dense kernel is cheaper than the
//! scatter), and with the cost model on, like any of its fallbacks, for the 7 after it as well;
//! when that happens to a layer that reads a graph input, the frame is a scene cut and every
//! later layer runs dense too.
//!
//! theta is per layer: the model's `delta.theta` metadata (written by `kestrel calibrate-delta`)
//! gives a default and per-layer values; [`DeltaOptions`] can override both.

use crate::error::{Error, Result};
use crate::ops::{self, DeltaScratch, DeltaStep};

/// Per-layer thresholds: (node name, one theta or one per input channel).
pub type LayerThetas = Vec<(String, Vec<f32>)>;

/// Metadata key holding scene-relative thresholds (see [`RelativeThetas`]).
pub const RELATIVE_METADATA_KEY: &str = "delta.relative";

/// Thresholds that follow the scene: at every keyframe of a layer, theta of each input channel
/// becomes a multiple of that channel's RMS over the keyframe's input (floored at a tenth of the
/// layer's RMS, so a nearly constant channel does not fire on every rounding). A dark night frame
/// then gets thresholds as small as its signal, a bright day frame larger ones.
///
/// Layers whose share of the model's dense multiply-adds is below `exact_below` keep theta 0:
/// a threshold there saves almost nothing, but the small layers are where errors cost most (the
/// detection head's last convs, attention gates, the box distribution). On the shipped fused
/// detector, exempting layers under 0.2% of the MACs took the held-out mAP@0.5 drop from 2.5 to
/// under 1 point for 5% of the MAC saving.
///
/// A layer that reads a camera also gets a noise floor: theta of a channel is at least `noise`
/// times the standard deviation of the difference of two frames of pure sensor noise, estimated
/// from the keyframe itself ([`plane_noise_sigma`]). Without it a dark frame's RMS-relative
/// thresholds sit below the noise, and every pixel fires on every frame although nothing moved;
/// holding an older noisy sample instead is no worse for the network than the new one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RelativeThetas {
    /// Multiple for layers that do not read a camera.
    pub t: f32,
    /// Multiple for layers that read a camera (they see its sensor noise first-hand).
    pub t_camera: f32,
    /// Share of the model's dense MACs per frame below which a layer runs exact (0: none).
    pub exact_below: f32,
    /// Multiple of the frame-difference noise below which a camera-reading layer never fires
    /// (0: no noise floor).
    pub noise: f32,
}

impl RelativeThetas {
    /// Parses `t=0.2 t_camera=0.03`, optionally followed by `exact_below=0.002` and `noise=3`.
    pub fn parse(text: &str) -> Result<RelativeThetas> {
        let bad = |why: &str| Error::InvalidArgument { reason: format!("{RELATIVE_METADATA_KEY} '{text}': {why}") };
        let (mut t, mut t_camera, mut exact_below, mut noise) = (None, None, 0.0, 0.0);
        for part in text.split_whitespace() {
            let (k, v) = part.split_once('=').ok_or_else(|| bad("expected t=... t_camera=..."))?;
            let v: f32 = v.parse().map_err(|_| bad("not a number"))?;
            if !v.is_finite() || v < 0.0 {
                return Err(bad("multiples must be finite and >= 0"));
            }
            match k {
                "t" => t = Some(v),
                "t_camera" => t_camera = Some(v),
                "exact_below" if v <= 1.0 => exact_below = v,
                "exact_below" => return Err(bad("exact_below is a share of the MACs, at most 1")),
                "noise" => noise = v,
                _ => return Err(bad("unknown key")),
            }
        }
        match (t, t_camera) {
            (Some(t), Some(t_camera)) => Ok(RelativeThetas { t, t_camera, exact_below, noise }),
            _ => Err(bad("needs both t and t_camera")),
        }
    }

    pub fn format(&self) -> String {
        let mut s = format!("t={} t_camera={}", self.t, self.t_camera);
        if self.exact_below != 0.0 {
            s.push_str(&format!(" exact_below={}", self.exact_below));
        }
        if self.noise != 0.0 {
            s.push_str(&format!(" noise={}", self.noise));
        }
        s
    }
}

/// Metadata key holding the calibrated thresholds (see [`parse_thetas`]).
pub const THETA_METADATA_KEY: &str = "delta.theta";

/// How a stream runs in delta mode.
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaOptions {
    /// theta of layers without their own.
    pub theta: f32,
    /// Per-layer theta, by node name: one value, or one per input channel.
    pub layer_theta: LayerThetas,
    /// A dense keyframe every this many frames (0: only the first frame and scene cuts). Float
    /// rounding in the accumulated outputs is what keyframes bound.
    pub keyframe_interval: usize,
    /// Fired fraction of a layer's input above which the layer runs dense for the frame.
    pub dense_above: f32,
    /// Scene-relative thresholds; when set they replace `theta` and `layer_theta` from each
    /// layer's first keyframe on.
    pub relative: Option<RelativeThetas>,
    /// A conv step runs dense when its cost model says that is cheaper than its delta (the
    /// default: the fastest stream). Off, every step runs in delta unless more than
    /// `dense_above` fired: what counting the work delta mode saves needs.
    pub cost_model: bool,
}

impl Default for DeltaOptions {
    fn default() -> Self {
        DeltaOptions {
            theta: 0.0,
            layer_theta: Vec::new(),
            keyframe_interval: 64,
            dense_above: 0.3,
            relative: None,
            cost_model: true,
        }
    }
}

impl DeltaOptions {
    /// Options from a model's metadata: its calibrated thresholds if it has them (relative,
    /// else per layer), else theta 0 (exact; saves only what did not change at all).
    pub fn from_metadata(metadata: &[(String, String)]) -> Result<DeltaOptions> {
        let mut opts = DeltaOptions::default();
        if let Some((_, text)) = metadata.iter().find(|(k, _)| k == RELATIVE_METADATA_KEY) {
            opts.relative = Some(RelativeThetas::parse(text)?);
        }
        if let Some((_, text)) = metadata.iter().find(|(k, _)| k == THETA_METADATA_KEY) {
            let (default, layers) = parse_thetas(text)?;
            opts.theta = default.unwrap_or(0.0);
            opts.layer_theta = layers;
        }
        Ok(opts)
    }

    /// theta of layer `name`: one value, or one per input channel.
    pub fn theta_of(&self, name: &str) -> &[f32] {
        self.layer_theta.iter().find(|(n, _)| n == name).map_or(std::slice::from_ref(&self.theta), |(_, t)| t)
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32| Error::InvalidArgument {
            reason: format!("delta {what} {v}: must be finite and >= 0"),
        };
        let layers = self.layer_theta.iter().flat_map(|(n, t)| t.iter().map(move |&t| (n.as_str(), t)));
        for (name, t) in std::iter::once(("theta", self.theta)).chain(layers) {
            if !t.is_finite() || t < 0.0 {
                return Err(bad(&format!("theta of {name}"), t));
            }
        }
        if let Some(r) = self.relative {
            let fine = |v: f32| v.is_finite() && v >= 0.0;
            if !(fine(r.t) && fine(r.t_camera) && fine(r.noise) && fine(r.exact_below) && r.exact_below <= 1.0) {
                return Err(Error::InvalidArgument {
                    reason: format!("delta relative thresholds {r:?}: must be finite and >= 0"),
                });
            }
        }
        if !(0.0..=1.0).contains(&self.dense_above) {
            return Err(Error::InvalidArgument {
                reason: format!("delta dense_above {}: must be a fraction in [0, 1]", self.dense_above),
            });
        }
        Ok(())
    }
}

/// Parses `delta.theta` metadata: one `name=theta` per line, where theta is one number or one
/// per input channel separated by commas; `*=theta` gives the default.
pub fn parse_thetas(text: &str) -> Result<(Option<f32>, LayerThetas)> {
    let mut default = None;
    let mut layers = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| Error::InvalidArgument {
            reason: format!("{THETA_METADATA_KEY} line {}: '{line}': {why}", n + 1),
        };
        let (name, value) = line.rsplit_once('=').ok_or_else(|| bad("expected name=theta"))?;
        let theta = value
            .split(',')
            .map(|v| v.trim().parse::<f32>().map_err(|_| bad("theta is not a number")))
            .collect::<Result<Vec<f32>>>()?;
        if theta.iter().any(|t| !t.is_finite() || *t < 0.0) {
            return Err(bad("theta must be finite and >= 0"));
        }
        match name.trim() {
            "*" if theta.len() == 1 => default = Some(theta[0]),
            "*" => return Err(bad("the default is one number")),
            "" => return Err(bad("empty layer name")),
            name => layers.push((name.to_string(), theta)),
        }
    }
    Ok((default, layers))
}

/// The inverse of [`parse_thetas`].
pub fn format_thetas(default: f32, layers: &[(String, Vec<f32>)]) -> String {
    let mut s = format!("*={default}\n");
    for (name, t) in layers {
        let values: Vec<String> = t.iter().map(|v| format!("{v:.6e}")).collect();
        s.push_str(&format!("{name}={}\n", values.join(",")));
    }
    s
}

/// Totals of one delta layer since the stats were last reset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeltaLayerStats {
    /// Node name.
    pub name: String,
    /// Mean theta over the input channels.
    pub theta: f32,
    /// The layer reads a graph input (a camera), so it sees the sensor noise first-hand.
    pub reads_input: bool,
    /// Input entries per frame.
    pub inputs: u64,
    /// Multiply-adds of the dense layer, per frame.
    pub dense_macs: u64,
    /// Fired input entries, summed over frames.
    pub fired: u64,
    /// Multiply-adds done, summed over frames.
    pub macs: u64,
    /// Frames this layer ran dense (keyframes, scene cuts, too much fired).
    pub dense_frames: u64,
}

impl DeltaLayerStats {
    /// Mean fraction of the input that fired per frame.
    pub fn fired_fraction(&self, frames: u64) -> f64 {
        self.fired as f64 / (self.inputs * frames).max(1) as f64
    }
}

/// Totals of a delta stream since the stats were last reset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeltaStats {
    pub frames: u64,
    /// Frames that ran every layer dense on schedule (the first, every keyframe_interval).
    pub keyframes: u64,
    /// Frames where a layer reading a graph input moved too much, so the rest ran dense.
    pub scene_cuts: u64,
    pub layers: Vec<DeltaLayerStats>,
    /// Multiply-adds per frame of the ops that always run dense (MatMul, convs whose weights
    /// are computed).
    pub other_macs_per_frame: u64,
}

impl DeltaStats {
    /// Multiply-adds done over all frames.
    pub fn macs(&self) -> u64 {
        self.layers.iter().map(|l| l.macs).sum::<u64>() + self.other_macs_per_frame * self.frames
    }

    /// Multiply-adds the dense graph would have done over the same frames.
    pub fn dense_macs(&self) -> u64 {
        (self.layers.iter().map(|l| l.dense_macs).sum::<u64>() + self.other_macs_per_frame) * self.frames
    }

    /// Fired fraction over all delta layers' inputs.
    pub fn fired_fraction(&self) -> f64 {
        let fired: u64 = self.layers.iter().map(|l| l.fired).sum();
        let inputs: u64 = self.layers.iter().map(|l| l.inputs).sum();
        fired as f64 / (inputs * self.frames).max(1) as f64
    }
}

/// The mean square of each channel of `x` (planes of `inner` values, channels cycling through
/// `out.len()`, batches after channels) into `out`: the scale relative thresholds are set from.
pub(crate) fn channel_mean_squares(x: &[f32], inner: usize, out: &mut [f64]) {
    let c = out.len().max(1);
    out.fill(0.0);
    for (i, plane) in x.chunks(inner.max(1)).enumerate() {
        out[i % c] += plane.iter().map(|&v| v as f64 * v as f64).sum::<f64>();
    }
    let per = (x.len() / c).max(1) as f64;
    out.iter_mut().for_each(|v| *v /= per);
}

/// The standard deviation of the sensor noise of one image plane ([h, w], row-major), from the
/// plane alone (Immerkaer, "Fast noise variance estimation", 1996): the mask
/// [1 -2 1; -2 4 -2; 1 -2 1] is the difference of two Laplacians, so it cancels smooth shading
/// and straight edges and keeps mostly noise, of which E|response| = 6 sqrt(2/pi) sigma.
///
/// From one frame, so a moving object or a panning camera does not read as noise (a difference of
/// two frames would). Positions whose response is exactly 0 are left out: there the
/// neighbourhood is constant (the letterbox's padding), which has no noise to measure. Texture
/// finer than the mask reads as noise, which errs toward higher thresholds.
///
/// It assumes white noise. Noise the letterbox has resampled is not: the resampling filter
/// correlates neighbouring pixels, and the mask, a high-pass filter, then sees less of it. On the
/// red plane of a night frame of `kestrel synth` shrunk from 320x240 to 192x144 by a triangle
/// filter, it read sigma 0.0094 where the difference of two consecutive frames (robust sigma,
/// over sqrt 2) gave 0.0123: about 30% low. The dark frame is half clipped at
/// 0 as well (35% of its raw pixels), so its noise is far from Gaussian. A floor built on
/// this estimate therefore sits under the real noise.
pub fn plane_noise_sigma(plane: &[f32], h: usize, w: usize) -> f64 {
    if h < 3 || w < 3 || plane.len() < h * w {
        return 0.0;
    }
    let (mut sum, mut count) = (0.0f64, 0u64);
    for y in 1..h - 1 {
        let (up, row, down) = (&plane[(y - 1) * w..][..w], &plane[y * w..][..w], &plane[(y + 1) * w..][..w]);
        for x in 1..w - 1 {
            let lap = |r: &[f32]| r[x - 1] - 2.0 * r[x] + r[x + 1];
            let response = lap(up) - 2.0 * lap(row) + lap(down);
            if response != 0.0 {
                sum += response.abs() as f64;
                count += 1;
            }
        }
    }
    if count == 0 {
        return 0.0;
    }
    sum / count as f64 * (std::f64::consts::PI / 2.0).sqrt() / 6.0
}

/// The delta state of one step.
pub(crate) enum Layer {
    Conv(Box<ops::DeltaConv2d>),
    Linear(ops::DeltaLinear),
}

impl Layer {
    fn input_len(&self) -> usize {
        match self {
            Layer::Conv(l) => l.input_len(),
            Layer::Linear(l) => l.input_len(),
        }
    }

    pub(crate) fn dense_macs(&self) -> u64 {
        match self {
            Layer::Conv(l) => l.dense_macs(),
            Layer::Linear(l) => l.dense_macs(),
        }
    }

    pub(crate) fn set_thetas(&mut self, theta: &[f32]) -> Result<()> {
        match self {
            Layer::Conv(l) => l.set_thetas(theta),
            Layer::Linear(l) => l.set_thetas(theta),
        }
    }

    /// (height, width) of one input plane, for a conv.
    fn plane(&self) -> Option<(usize, usize)> {
        match self {
            Layer::Conv(l) => {
                let [_, _, h, w] = l.input_shape();
                Some((h, w))
            }
            Layer::Linear(_) => None,
        }
    }

    pub(crate) fn reference_input(&self) -> &[f32] {
        match self {
            Layer::Conv(l) => l.reference_input(),
            Layer::Linear(l) => l.reference_input(),
        }
    }

    pub(crate) fn output(&self) -> &[f32] {
        match self {
            Layer::Conv(l) => l.output(),
            Layer::Linear(l) => l.output(),
        }
    }

    fn reset(&mut self) {
        match self {
            Layer::Conv(l) => l.reset(),
            Layer::Linear(l) => l.reset(),
        }
    }

    /// One step on `x`, its output written to `out`.
    fn run(
        &mut self,
        x: &[f32],
        key: bool,
        dense_above: f32,
        scratch: &mut DeltaScratch,
        out: &mut [f32],
    ) -> Result<DeltaStep> {
        let max_fired = (dense_above as f64 * self.input_len() as f64) as usize;
        let step = match (&mut *self, key) {
            (Layer::Conv(l), true) => {
                l.keyframe(x)?;
                l.last_step()
            }
            (Layer::Conv(l), false) => return l.step_into(x, max_fired, scratch, out),
            (Layer::Linear(l), true) => {
                l.keyframe(x)?;
                l.last_step()
            }
            (Layer::Linear(l), false) => l.step_bounded(x, max_fired)?,
        };
        out.copy_from_slice(self.output());
        Ok(step)
    }
}

/// Everything delta mode adds to a CPU executor.
pub(crate) struct DeltaMode {
    pub opts: DeltaOptions,
    /// Per step: its delta state, for conv and linear steps with constant weights (except the
    /// exact ones).
    pub layers: Vec<Option<Layer>>,
    /// Per step: a layer under `exact_below` of the MACs. It runs as the plain dense op: with
    /// theta 0 nearly every entry fires, so a delta state would only add a scan and copies.
    pub exact: Vec<bool>,
    /// Per step: whether it reads a graph input (a fallback there is a scene cut).
    pub reads_input: Vec<bool>,
    /// Index into `stats.layers` per step.
    pub stat_of: Vec<usize>,
    pub stats: DeltaStats,
    /// Frames since the last scheduled keyframe; None forces one.
    pub since_key: Option<usize>,
    /// Per step: (channels, values per channel per image) of its input, for relative thresholds.
    pub input_layout: Vec<(usize, usize)>,
    /// Per-thread scratch of the conv steps, shared by every layer (they run one at a time).
    scratch: DeltaScratch,
    /// Scratch for relative thresholds: per-channel sums and thetas (the widest layer's size).
    sums: Vec<f64>,
    thetas: Vec<f32>,
}

/// Per frame: whether the frame is a keyframe, and whether a scene cut has been seen so far.
pub(crate) struct Frame {
    pub key: bool,
    pub cut: bool,
}

impl DeltaMode {
    pub(crate) fn new(
        opts: DeltaOptions,
        layers: Vec<Option<Layer>>,
        reads_input: Vec<bool>,
        input_layout: Vec<(usize, usize)>,
        names: &[&str],
        other_macs_per_frame: u64,
    ) -> Result<DeltaMode> {
        opts.validate()?;
        let mut stat_of = vec![usize::MAX; layers.len()];
        let mut stats = DeltaStats { other_macs_per_frame, ..DeltaStats::default() };
        for (si, l) in layers.iter().enumerate() {
            if let Some(l) = l {
                stat_of[si] = stats.layers.len();
                stats.layers.push(DeltaLayerStats {
                    name: names[si].to_string(),
                    theta: {
                        let t = opts.theta_of(names[si]);
                        t.iter().sum::<f32>() / t.len() as f32
                    },
                    reads_input: reads_input[si],
                    inputs: l.input_len() as u64,
                    dense_macs: l.dense_macs(),
                    ..DeltaLayerStats::default()
                });
            }
        }
        let widest = input_layout.iter().map(|l| l.0).max().unwrap_or(0);
        let total_dense_macs = stats.layers.iter().map(|l| l.dense_macs).sum::<u64>() + other_macs_per_frame;
        let mut layers = layers;
        let mut exact = vec![false; layers.len()];
        if let Some(r) = opts.relative {
            for (si, l) in layers.iter_mut().enumerate() {
                if l.is_some()
                    && (stats.layers[stat_of[si]].dense_macs as f64) < r.exact_below as f64 * total_dense_macs as f64
                {
                    (exact[si], *l) = (true, None);
                    stats.layers[stat_of[si]].theta = 0.0;
                }
            }
        }
        let mut scratch = DeltaScratch::new();
        for l in layers.iter().flatten() {
            if let Layer::Conv(conv) = l {
                scratch.fit(conv);
            }
        }
        Ok(DeltaMode {
            scratch,
            opts,
            layers,
            exact,
            reads_input,
            stat_of,
            stats,
            since_key: None,
            input_layout,
            sums: vec![0.0; widest],
            thetas: vec![0.0; widest],
        })
    }

    /// Starts a frame.
    pub(crate) fn begin(&mut self) -> Frame {
        let key = match self.since_key {
            None => true,
            Some(n) => self.opts.keyframe_interval > 0 && n + 1 >= self.opts.keyframe_interval,
        };
        self.since_key = Some(if key { 0 } else { self.since_key.map_or(0, |n| n + 1) });
        self.stats.frames += 1;
        self.stats.keyframes += u64::from(key);
        Frame { key, cut: false }
    }

    /// Runs step `si`'s delta layer on `x`, its output into `out`.
    pub(crate) fn run(&mut self, si: usize, x: &[f32], frame: &mut Frame, out: &mut [f32]) -> Result<()> {
        let layer = self.layers[si].as_mut().expect("called for delta steps only");
        let dense = frame.key || frame.cut;
        let step = layer.run(x, dense, self.opts.dense_above, &mut self.scratch, out)?;
        if step.cut && !dense && self.reads_input[si] {
            frame.cut = true;
            self.stats.scene_cuts += 1;
        }
        let s = &mut self.stats.layers[self.stat_of[si]];
        s.fired += step.fired as u64;
        s.macs += step.macs;
        s.dense_frames += u64::from(step.keyed);
        // Thresholds follow the scene at keyframes and scene cuts; a layer the cost model ran
        // dense keeps its own (re-measuring on every such frame cost more than the conv).
        if let (true, Some(r)) = (dense || step.cut, self.opts.relative) {
            let mult = if self.reads_input[si] { r.t_camera } else { r.t };
            let (c, inner) = self.input_layout[si];
            let sums = &mut self.sums[..c];
            channel_mean_squares(layer.reference_input(), inner, sums);
            let layer_rms = (sums.iter().sum::<f64>() / c as f64).sqrt();
            let thetas = &mut self.thetas[..c];
            for (t, &ms) in thetas.iter_mut().zip(sums.iter()) {
                *t = (ms.sqrt().max(0.1 * layer_rms) * mult as f64) as f32;
            }
            if let (true, Some((h, w))) = (self.reads_input[si] && r.noise > 0.0, layer.plane()) {
                // The noise of a frame difference is sqrt(2) times a frame's (batches share a
                // camera, so the first image speaks for all).
                let x = layer.reference_input();
                for (ci, t) in thetas.iter_mut().enumerate() {
                    let sigma = plane_noise_sigma(&x[ci * h * w..][..h * w], h, w);
                    *t = t.max((r.noise as f64 * std::f64::consts::SQRT_2 * sigma) as f32);
                }
            }
            layer.set_thetas(thetas)?;
            s.theta = thetas.iter().sum::<f32>() / c.max(1) as f32;
        }
        Ok(())
    }

    /// Counts a frame of exact step `si`, which ran as the dense op.
    pub(crate) fn ran_exact(&mut self, si: usize) {
        let s = &mut self.stats.layers[self.stat_of[si]];
        (s.fired, s.macs, s.dense_frames) = (s.fired + s.inputs, s.macs + s.dense_macs, s.dense_frames + 1);
    }

    /// The next frame is a keyframe.
    pub(crate) fn reset(&mut self) {
        self.since_key = None;
        for l in self.layers.iter_mut().flatten() {
            l.reset();
        }
    }

    pub(crate) fn reset_stats(&mut self) {
        self.stats.frames = 0;
        self.stats.keyframes = 0;
        self.stats.scene_cuts = 0;
        for l in &mut self.stats.layers {
            (l.fired, l.macs, l.dense_frames) = (0, 0, 0);
        }
    }
}
