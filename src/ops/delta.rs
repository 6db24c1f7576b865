//! Temporal delta layers (PAPERS.md section 2): on a stream of frames, a conv or linear layer
//! keeps its reference input x_ref and its accumulated pre-activation output y, and for a new
//! input x adds only what changed:
//!
//! ```text
//! dx = x - x_ref, zeroed where |dx| < theta
//! y += W * dx        (exact by linearity; the bias stays in y from the keyframe)
//! x_ref += dx        (only where an entry fired, so |x - x_ref| < theta everywhere after)
//! out = act(y)       (the nonlinearity applies to the accumulated y)
//! ```
//!
//! y is always the layer applied to x_ref (up to float rounding), and x_ref is within theta of x
//! everywhere, so the error against the dense layer of x is bounded by theta times the sum of
//! |W| over one output's taps and does not drift. The work of a step is one pass over the input
//! to find the fired entries, then for each fired entry a multiply-add into every output its taps
//! reach: proportional to the fired count. A keyframe (the dense layer) resets both states.
//!
//! Layout, chosen for the scatter: y is kept position-major ([N, OH*OW, M]) so the outputs one
//! fired input reaches through one tap are a contiguous row, and the weights are kept tap-major
//! ([group, kH, kW, C/group, M/group]) so the row it adds is contiguous too. The activated
//! output is kept channel-major (the graph's layout) and rewritten only at touched positions.

use super::conv::{conv2d_output_shape, conv2d_packed, Conv2d, PackedConvWeights};
use super::gemm::{GemmArgs, Kernel, Ld, Strided, NR_MAX};
use super::{check_len, parallel_items, pool_threads, workers_for, Activation, SharedMut};
use crate::error::{Error, Result};

fn check_theta(op: &str, theta: f32) -> Result<()> {
    if theta.is_nan() || theta < 0.0 || theta.is_infinite() {
        return Err(Error::InvalidArgument { reason: format!("{op}: theta {theta} must be finite and >= 0") });
    }
    Ok(())
}

fn set_thetas(op: &str, dst: &mut [f32], theta: &[f32]) -> Result<()> {
    for &t in theta {
        check_theta(op, t)?;
    }
    match theta.len() {
        1 => dst.fill(theta[0]),
        n if n == dst.len() => dst.copy_from_slice(theta),
        n => {
            return Err(Error::InvalidArgument {
                reason: format!("{op}: {n} thresholds for {} input channels (give 1 or one per channel)", dst.len()),
            })
        }
    }
    Ok(())
}

/// What one step of a delta layer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaStep {
    /// Input entries that fired (all of them for a keyframe).
    pub fired: usize,
    /// Multiply-adds done.
    pub macs: u64,
    /// The step ran the dense layer (a keyframe: forced, cheaper, or because too much fired).
    pub keyed: bool,
    /// More than the step's bound fired (for a layer that reads a camera, a scene cut).
    pub cut: bool,
}

/// Whether `dx` fires under `theta`. NaN never fires (and never poisons the state); theta = 0
/// fires every change.
#[inline(always)]
fn fires(dx: f32, theta: f32) -> bool {
    dx != 0.0 && dx.abs() >= theta
}

/// Which output rows (or columns) tap `i` of each input row reaches: the flat (tap, output)
/// pairs and, per input coordinate, the range of them.
#[derive(Clone, Debug)]
struct TapTable {
    pairs: Vec<(u32, u32)>,
    starts: Vec<u32>,
}

impl TapTable {
    /// Output o reads input o * stride + t * dilation - pad through tap t.
    fn new(input: usize, output: usize, taps: usize, stride: usize, dilation: usize, pad: usize) -> TapTable {
        let mut pairs = Vec::new();
        let mut starts = Vec::with_capacity(input + 1);
        for i in 0..input {
            starts.push(pairs.len() as u32);
            for t in 0..taps {
                let num = i as isize + pad as isize - (t * dilation) as isize;
                if num >= 0 && num % stride as isize == 0 && ((num / stride as isize) as usize) < output {
                    pairs.push((t as u32, (num / stride as isize) as u32));
                }
            }
        }
        starts.push(pairs.len() as u32);
        TapTable { pairs, starts }
    }

    fn of(&self, i: usize) -> &[(u32, u32)] {
        &self.pairs[self.starts[i] as usize..self.starts[i + 1] as usize]
    }
}

/// The taps through which an input position reaches any output depend only on its row and
/// column modulo the stride: with stride 2, a 3x3 kernel reaches an input through 1, 2, 2 or 4 of
/// its 9 taps, never all 9. The position GEMM of a strided conv therefore runs once per residue
/// class, against the weights of that class's taps only (9/4 taps per position on average
/// instead of 9); a stride-1 conv has one class holding every tap.
#[derive(Clone, Debug, Default)]
struct TapClasses {
    stride: [usize; 2],
    /// Per class (row residue * stride_w + column residue): the weights of its taps,
    /// [C, class rows * class columns * M], tap-major within a channel.
    weights: Vec<Vec<f32>>,
    /// Per class: its tap rows and tap columns.
    rows: Vec<usize>,
    cols: Vec<usize>,
    /// Per kernel row (column): its index among the tap rows (columns) of its class.
    row_slot: Vec<usize>,
    col_slot: Vec<usize>,
}

impl TapClasses {
    /// Input coordinate i is reached through tap t when (i + pad - t * dilation) is a multiple of
    /// the stride: tap t belongs to residue (t * dilation - pad) mod stride.
    fn residues(taps: usize, stride: usize, dilation: usize, pad: usize) -> Vec<usize> {
        (0..taps)
            .map(|t| (t as isize * dilation as isize - pad as isize).rem_euclid(stride as isize) as usize)
            .collect()
    }

    fn new(w: &[f32], w_shape: &[usize; 4], p: &Conv2d) -> TapClasses {
        let [m, c, kh, kw] = *w_shape;
        let [sh, sw] = p.strides;
        let row_res = Self::residues(kh, sh, p.dilations[0], p.pads[0]);
        let col_res = Self::residues(kw, sw, p.dilations[1], p.pads[1]);
        let slots = |res: &[usize]| -> Vec<usize> {
            (0..res.len()).map(|t| res[..t].iter().filter(|&&r| r == res[t]).count()).collect()
        };
        let mut classes = TapClasses {
            stride: p.strides,
            row_slot: slots(&row_res),
            col_slot: slots(&col_res),
            ..TapClasses::default()
        };
        for rr in 0..sh {
            for rc in 0..sw {
                let rows: Vec<usize> = (0..kh).filter(|&i| row_res[i] == rr).collect();
                let cols: Vec<usize> = (0..kw).filter(|&j| col_res[j] == rc).collect();
                let taps = rows.len() * cols.len();
                let mut wc = vec![0.0; c * taps * m];
                for ci in 0..c {
                    for (si, &i) in rows.iter().enumerate() {
                        for (sj, &j) in cols.iter().enumerate() {
                            let dst = &mut wc[(ci * taps + si * cols.len() + sj) * m..][..m];
                            for (mo, d) in dst.iter_mut().enumerate() {
                                *d = w[((mo * c + ci) * kh + i) * kw + j];
                            }
                        }
                    }
                }
                classes.weights.push(wc);
                classes.rows.push(rows.len());
                classes.cols.push(cols.len());
            }
        }
        classes
    }

    fn count(&self) -> usize {
        self.weights.len()
    }

    /// The class of input position (ih, iw).
    fn of(&self, ih: usize, iw: usize) -> usize {
        (ih % self.stride[0]) * self.stride[1] + iw % self.stride[1]
    }

    fn taps(&self, class: usize) -> usize {
        self.rows[class] * self.cols[class]
    }
}

/// Moved input positions per GEMM of the one-group path: bounds the scratch.
const CHUNK: usize = 256;

/// The cost model that picks a step's path, in nanoseconds of one AVX-512 core, read off
/// `cargo bench --bench delta` and timers around its phases: only the ratios matter, and they carry
/// over between machines better than the times do. The dense conv runs its multiply-adds about
/// three times faster per unit than the position GEMM's short-K GEMM does, but a step's fixed
/// costs per moved position and per touched output (the activation, and a write into each
/// channel's plane) are what decide small layers.
mod cost {
    pub const DENSE_MAC: f64 = 0.03;
    /// Per output value of the dense path (activation, copies).
    pub const DENSE_OUTPUT: f64 = 0.5;
    pub const GEMM_MAC: f64 = 0.1;
    /// Per moved position of the GEMM path: gathering its row, adding its products into y.
    pub const GEMM_POSITION: f64 = 40.0;
    pub const SCATTER_MAC: f64 = 0.6;
    /// Per fired entry of the scatter.
    pub const SCATTER_ENTRY: f64 = 20.0;
    /// Per touched output value: the refresh.
    pub const TOUCHED: f64 = 2.5;
    /// Per output value, when y must first be transposed (the first delta step after a dense one).
    pub const TRANSPOSE: f64 = 1.2;
}

/// How a step adds its fired entries (or does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Whole moved positions as rows of a GEMM against the weights of their taps.
    Gemm,
    /// Entry by entry.
    Scatter,
    /// The dense conv: cheaper than either (or a scene cut).
    Dense,
}

/// Where a delta conv step's output went.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ran {
    /// Into the layer's own output, its state up to date.
    Here,
    /// Nowhere yet: the cost model chose dense for a camera layer and left its state alone, and
    /// the caller runs the plain conv into its own buffer.
    Deferred,
}

/// One conv layer's delta state.
#[derive(Clone, Debug)]
pub struct DeltaConv2d {
    x_shape: [usize; 4],
    out_shape: [usize; 4],
    w_shape: [usize; 4],
    group: usize,
    /// Weights for the scatter: [group, kH, kW, C/group, M/group] (grouped convs), or
    /// [C, kH * kW, M] for one group, the right operand of the per-chunk GEMM.
    w_taps: Vec<f32>,
    /// Weights for the dense keyframe, in the GEMM kernel's layout.
    packed: PackedConvWeights,
    bias: Option<Vec<f32>>,
    /// The conv without its activation (the keyframe computes y with it).
    linear: Conv2d,
    /// The conv with its activation, for the dense steps that leave the state alone.
    fused: Conv2d,
    activation: Activation,
    rows: TapTable,
    cols: TapTable,
    /// Per input channel.
    theta: Vec<f32>,
    x_ref: Vec<f32>,
    /// Pre-activation output: position-major [N, OH*OW, M] for the scatter, or right after a
    /// keyframe the conv's own channel-major [N, M, OH, OW] (`y_position_major` false). The first
    /// delta step after a keyframe transposes it; a layer that keeps falling back to dense never
    /// pays for the transposition, so its dense frames cost what the plain conv costs.
    y: Vec<f32>,
    y_position_major: bool,
    /// act(y), channel-major [N, M, OH, OW].
    out: Vec<f32>,
    /// Per output position (of all N), the step that last touched it (the lanes' `touched`
    /// lists hold this step's).
    mark: Vec<u32>,
    generation: u32,
    /// Scratch of the scatter: the fired (weight offset, dx) of one input position.
    fired_here: Vec<(u32, f32)>,
    /// Per moved position: (group, first index in `fired_here`) of each group's fired run.
    group_starts: Vec<(usize, usize)>,
    /// The one-group GEMM's right operands, one per stride residue class (see [`TapClasses`]).
    classes: TapClasses,
    /// Scratch of one image: which input positions moved, and their list.
    moved: Vec<u8>,
    positions: Vec<u32>,
    /// Per-thread scratch for standalone use; in a graph the executor passes one shared by
    /// every layer instead ([`DeltaConv2d::step_bounded_in`]), and this stays empty.
    own: DeltaScratch,
    keyed: bool,
    /// Steps left to run dense without a scan, after the cost model last chose dense.
    skip_scans: u32,
    /// Whether a step may fall back to the dense conv when the cost model says it is cheaper.
    cost_model: bool,
    /// Scan on every step, even after the cost model chose dense (a layer that reads a camera:
    /// its scan is what sees a scene cut).
    scan_always: bool,
    /// Steps from one probe to the next while the cost model keeps choosing dense.
    probe_every: u32,
    last: DeltaStep,
}

/// After the cost model picks the dense conv, the next this-many-minus-one steps run the plain
/// conv (activation fused, no scan, the state left alone): a layer whose input is noisy stays
/// noisy for a while, and a fallback that has paid for its scan and the state's upkeep costs up
/// to half as much again as the plain conv (`cargo bench --bench delta`). The step after them
/// scans against the state the fallback left, which is still exact (y is the conv of x_ref), and
/// decides again. Each fallback in a row doubles the interval, up to [`PROBE_EVERY_MAX`]; a step
/// that runs in delta, or a reset, brings it back to this.
pub const PROBE_EVERY: u32 = 8;

/// The longest interval between probes of a layer that keeps choosing dense: a layer that could
/// run in delta again waits at most this many steps (about 2 s at 30 frames a second), and by
/// then the probes cost an eighth of what they did at [`PROBE_EVERY`].
pub const PROBE_EVERY_MAX: u32 = 64;

/// Per-thread scratch of the delta conv's one-group path: the moved positions of one residue
/// class, the dx rows of one chunk of them in the GEMM kernel's packed layout ([CHUNK, C]),
/// their products with the class's taps ([CHUNK, class taps * M]), the outputs this thread
/// touched and a few output rows. Layers run one at a time, so an executor keeps one of these for
/// all its layers, sized to the largest ([`DeltaScratch::fit`]).
#[derive(Clone, Debug, Default)]
pub struct DeltaScratch {
    lanes: Vec<Lane>,
    /// The channel-major y a keyframe left, on its way to position-major.
    transpose: Vec<f32>,
}

#[derive(Clone, Debug, Default)]
struct Lane {
    class_positions: Vec<u32>,
    packed_dx: Vec<f32>,
    gemm_tail: Vec<f32>,
    products: Vec<f32>,
    touched: Vec<u32>,
    /// Up to [`REFRESH_ROWS`] output rows on their way through the activation.
    rows: Vec<f32>,
    macs: u64,
}

/// Output rows activated per call when the touched outputs are rewritten.
const REFRESH_ROWS: usize = 64;

/// Lanes of a [`DeltaScratch`]: the threads one delta step may use. More would multiply the
/// scratch (megabytes per lane for a wide layer) for little: the step is memory-bound.
const MAX_LANES: usize = 4;

impl DeltaScratch {
    pub fn new() -> DeltaScratch {
        DeltaScratch::default()
    }

    /// Grows the scratch to what `layer` needs (a no-op once it fits: steps never allocate).
    pub fn fit(&mut self, layer: &DeltaConv2d) {
        let [n, c, h, w] = layer.x_shape;
        let [m, _, kh, kw] = layer.w_shape;
        let [_, _, oh, ow] = layer.out_shape;
        let lanes = pool_threads().clamp(1, MAX_LANES);
        if self.lanes.len() < lanes {
            self.lanes.resize_with(lanes, Lane::default);
        }
        let one_group = layer.group == 1;
        let grow_f32 = |v: &mut Vec<f32>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        };
        grow_f32(&mut self.transpose, layer.y.len());
        for lane in &mut self.lanes {
            let reserve = |v: &mut Vec<u32>, len: usize| v.reserve(len.saturating_sub(v.len()));
            reserve(&mut lane.touched, n * oh * ow);
            grow_f32(&mut lane.rows, REFRESH_ROWS * m);
            if one_group {
                reserve(&mut lane.class_positions, h * w);
                grow_f32(&mut lane.packed_dx, Kernel::max_packed_a_len(CHUNK, c));
                grow_f32(&mut lane.gemm_tail, c * NR_MAX);
                grow_f32(&mut lane.products, CHUNK * kh * kw * m);
            }
        }
    }
}

impl DeltaConv2d {
    /// A delta layer for inputs of `x_shape`. `theta` >= 0; 0 makes every change fire, which
    /// tracks the dense conv up to float rounding.
    pub fn new(
        x_shape: &[usize],
        w: &[f32],
        w_shape: &[usize],
        bias: Option<&[f32]>,
        p: &Conv2d,
        theta: f32,
    ) -> Result<DeltaConv2d> {
        let op = "delta_conv2d";
        check_theta(op, theta)?;
        p.activation.validate()?;
        let out_shape = conv2d_output_shape(x_shape, w_shape, p)?;
        check_len(op, "weights", w.len(), w_shape)?;
        if let Some(b) = bias {
            if b.len() != w_shape[0] {
                return Err(Error::shape(op, format!("bias of {} values", w_shape[0]), b.len()));
            }
        }
        if p.activation.is_per_channel() {
            p.activation.check_channels(op, w_shape[0])?;
        }
        let xs: [usize; 4] = x_shape.try_into().expect("checked by conv2d_output_shape");
        let ws: [usize; 4] = w_shape.try_into().expect("checked by conv2d_output_shape");
        let [m, cg, kh, kw] = ws;
        let group = p.group;
        let mg = m / group;
        let mut w_taps = vec![0.0; w.len()];
        for mo in 0..m {
            let (g, mol) = (mo / mg, mo % mg);
            for cl in 0..cg {
                for i in 0..kh {
                    for j in 0..kw {
                        let at = if group == 1 {
                            (cl * kh * kw + i * kw + j) * m + mo
                        } else {
                            (((g * kh + i) * kw + j) * cg + cl) * mg + mol
                        };
                        w_taps[at] = w[((mo * cg + cl) * kh + i) * kw + j];
                    }
                }
            }
        }
        let one_group = group == 1;
        let positions = out_shape[0] * out_shape[2] * out_shape[3];
        Ok(DeltaConv2d {
            x_shape: xs,
            out_shape,
            w_shape: ws,
            group,
            w_taps,
            packed: PackedConvWeights::new(w, w_shape, group)?,
            bias: bias.map(<[f32]>::to_vec),
            linear: Conv2d { activation: Activation::None, ..p.clone() },
            fused: p.clone(),
            activation: p.activation.clone(),
            classes: if one_group { TapClasses::new(w, &ws, p) } else { TapClasses::default() },
            rows: TapTable::new(xs[2], out_shape[2], kh, p.strides[0], p.dilations[0], p.pads[0]),
            cols: TapTable::new(xs[3], out_shape[3], kw, p.strides[1], p.dilations[1], p.pads[1]),
            theta: vec![theta; xs[1]],
            x_ref: vec![0.0; xs.iter().product()],
            y: vec![0.0; out_shape.iter().product()],
            y_position_major: false,
            out: vec![0.0; out_shape.iter().product()],
            mark: vec![0; positions],
            generation: 0,
            fired_here: Vec::with_capacity(xs[1]),
            moved: vec![0; xs[2] * xs[3]],
            positions: Vec::with_capacity(xs[2] * xs[3]),
            group_starts: Vec::with_capacity(group),
            own: DeltaScratch::new(),
            keyed: false,
            skip_scans: 0,
            cost_model: true,
            scan_always: false,
            probe_every: PROBE_EVERY,
            last: DeltaStep::default(),
        })
    }

    /// The activated output of the last step ([N, M, OH, OW]).
    pub fn output(&self) -> &[f32] {
        &self.out
    }

    pub fn output_shape(&self) -> [usize; 4] {
        self.out_shape
    }

    pub fn input_shape(&self) -> [usize; 4] {
        self.x_shape
    }

    /// theta per input channel.
    pub fn thetas(&self) -> &[f32] {
        &self.theta
    }

    /// One theta for every input channel, or one per channel (PAPERS.md section 2: channel-wise
    /// thresholds, so a channel of small activations is judged on its own scale).
    pub fn set_thetas(&mut self, theta: &[f32]) -> Result<()> {
        set_thetas("delta_conv2d", &mut self.theta, theta)
    }

    /// The reference input: what the output is the conv of.
    pub fn reference_input(&self) -> &[f32] {
        &self.x_ref
    }

    /// Inputs that fired in the last step (all of them for a keyframe).
    pub fn fired(&self) -> usize {
        self.last.fired
    }

    /// What the last step did.
    pub fn last_step(&self) -> DeltaStep {
        self.last
    }

    /// Input entries per step.
    pub fn input_len(&self) -> usize {
        self.x_ref.len()
    }

    /// Multiply-adds of the dense conv.
    pub fn dense_macs(&self) -> u64 {
        let [_, cg, kh, kw] = self.w_shape;
        (self.out.len() * cg * kh * kw) as u64
    }

    /// Whether steps may run the dense conv when the cost model says it is cheaper than their
    /// delta (on by default). Off, every step runs in delta unless more than its bound fired:
    /// the setting for counting the work delta mode saves, as `kestrel calibrate-delta` does.
    pub fn set_cost_model(&mut self, on: bool) {
        self.cost_model = on;
        self.skip_scans = 0;
        self.probe_every = PROBE_EVERY;
    }

    /// Whether every step scans its input, even after the cost model chose dense (off by
    /// default). On for a layer that reads a camera, whose scan is what detects a scene cut.
    pub fn set_scan_always(&mut self, on: bool) {
        self.scan_always = on;
        self.skip_scans = 0;
        self.probe_every = PROBE_EVERY;
    }

    /// Forgets the state: the next step is a keyframe.
    pub fn reset(&mut self) {
        self.keyed = false;
        self.skip_scans = 0;
        self.probe_every = PROBE_EVERY;
    }

    /// The dense conv of `x`; both states restart from it.
    pub fn keyframe(&mut self, x: &[f32]) -> Result<&[f32]> {
        check_len("delta_conv2d", "input", x.len(), &self.x_shape)?;
        conv2d_packed(x, &self.x_shape, &self.packed, self.bias.as_deref(), &self.linear, &mut self.y)?;
        self.y_position_major = false;
        super::activation(&self.y, &self.out_shape, &self.activation, &mut self.out)?;
        self.x_ref.copy_from_slice(x);
        self.keyed = true;
        self.last = DeltaStep { fired: x.len(), macs: self.dense_macs(), keyed: true, cut: false };
        Ok(&self.out)
    }

    /// Makes y position-major, through `scratch` (at least y's length).
    fn position_major_y(&mut self, scratch: &mut [f32]) {
        if self.y_position_major {
            return;
        }
        let [n, m, oh, ow] = self.out_shape;
        let ohw = oh * ow;
        let channel_major = &mut scratch[..self.y.len()];
        channel_major.copy_from_slice(&self.y);
        // In blocks of positions whose rows of y stay in L1 while every plane writes into them.
        const BLOCK: usize = 64;
        for b in 0..n {
            for from in (0..ohw).step_by(BLOCK) {
                let len = BLOCK.min(ohw - from);
                let rows = &mut self.y[(b * ohw + from) * m..][..len * m];
                for mo in 0..m {
                    let plane = &channel_major[(b * m + mo) * ohw + from..][..len];
                    for (row, &v) in rows.chunks_exact_mut(m).zip(plane) {
                        row[mo] = v;
                    }
                }
            }
        }
        self.y_position_major = true;
    }

    /// Adds the fired part of `x - x_ref` to the output (a keyframe if there has been none).
    /// Allocates nothing.
    pub fn step(&mut self, x: &[f32]) -> Result<&[f32]> {
        self.step_bounded(x, usize::MAX)?;
        Ok(&self.out)
    }

    /// [`DeltaConv2d::step`], but once more than `max_fired` inputs fire the step becomes a
    /// keyframe: past that point the dense conv is cheaper than the scatter (and a frame where
    /// most of the input moved is a scene cut).
    pub fn step_bounded(&mut self, x: &[f32], max_fired: usize) -> Result<DeltaStep> {
        let mut own = std::mem::take(&mut self.own);
        own.fit(self);
        let step = self.step_bounded_in(x, max_fired, &mut own);
        self.own = own;
        step
    }

    /// [`DeltaConv2d::step_bounded`] with scratch shared between layers (fitted to this one with
    /// [`DeltaScratch::fit`]; a scratch that does not fit is an error, never a reallocation).
    pub fn step_bounded_in(&mut self, x: &[f32], max_fired: usize, scratch: &mut DeltaScratch) -> Result<DeltaStep> {
        // Standalone, the layer's own output is the result, so a dense step must be a keyframe.
        let (step, ran) = self.step_scanned(x, max_fired, scratch, false)?;
        debug_assert!(ran == Ran::Here);
        Ok(step)
    }

    /// The step behind [`DeltaConv2d::step_bounded_in`] and [`DeltaConv2d::step_into`]. With
    /// `may_defer`, a camera layer whose cost model chooses dense leaves its state alone and
    /// returns [`Ran::Deferred`]: the caller runs the plain conv into its own buffer.
    fn step_scanned(
        &mut self,
        x: &[f32],
        max_fired: usize,
        scratch: &mut DeltaScratch,
        may_defer: bool,
    ) -> Result<(DeltaStep, Ran)> {
        if !self.keyed {
            self.keyframe(x)?;
            return Ok((self.last, Ran::Here));
        }
        if self.skip_scans > 0 {
            // [`DeltaConv2d::step_into`] runs these steps as the plain conv before calling here.
            self.skip_scans -= 1;
            self.keyframe(x)?;
            return Ok((self.last, Ran::Here));
        }
        check_len("delta_conv2d", "input", x.len(), &self.x_shape)?;
        self.check_scratch(scratch)?;
        let kern = Kernel::current();
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Once every 2^32 steps: stale marks could alias the new generation.
            self.mark.fill(0);
            self.generation = 1;
        }
        for lane in &mut scratch.lanes {
            lane.touched.clear();
            lane.macs = 0;
        }
        let DeltaScratch { lanes, transpose } = scratch;
        self.step_moved(x, max_fired, kern, lanes, transpose, may_defer)
    }

    /// [`DeltaConv2d::step_bounded_in`], the output written to `out` ([N, M, OH, OW]). A step the
    /// cost model runs as the plain conv writes straight into `out` and leaves the layer's own
    /// output alone: that still holds act(y) for the state (y, x_ref) the next scan starts from.
    pub fn step_into(
        &mut self,
        x: &[f32],
        max_fired: usize,
        scratch: &mut DeltaScratch,
        out: &mut [f32],
    ) -> Result<DeltaStep> {
        check_len("delta_conv2d", "output", out.len(), &self.out_shape)?;
        if self.skip_scans > 0 {
            // Set only by a dense step, so the state exists (reset clears it).
            self.skip_scans -= 1;
            check_len("delta_conv2d", "input", x.len(), &self.x_shape)?;
            conv2d_packed(x, &self.x_shape, &self.packed, self.bias.as_deref(), &self.fused, out)?;
            self.last = DeltaStep { fired: x.len(), macs: self.dense_macs(), keyed: true, cut: false };
            return Ok(self.last);
        }
        let (step, ran) = self.step_scanned(x, max_fired, scratch, true)?;
        match ran {
            Ran::Deferred => conv2d_packed(x, &self.x_shape, &self.packed, self.bias.as_deref(), &self.fused, out)?,
            Ran::Here => out.copy_from_slice(&self.out),
        }
        Ok(step)
    }

    fn check_scratch(&self, scratch: &DeltaScratch) -> Result<()> {
        let [n, c, h, w] = self.x_shape;
        let [m, _, kh, kw] = self.w_shape;
        let [_, _, oh, ow] = self.out_shape;
        let one_group = self.group == 1;
        let fits = |l: &Lane| {
            l.touched.capacity() >= n * oh * ow
                && l.rows.len() >= REFRESH_ROWS * m
                && (!one_group
                    || (l.class_positions.capacity() >= h * w
                        && l.packed_dx.len() >= Kernel::max_packed_a_len(CHUNK, c)
                        && l.gemm_tail.len() >= c * NR_MAX
                        && l.products.len() >= CHUNK * kh * kw * m))
        };
        if scratch.lanes.is_empty() || !scratch.lanes.iter().all(fits) || scratch.transpose.len() < self.y.len() {
            return Err(Error::InvalidArgument {
                reason: "delta_conv2d: the shared scratch was not fitted to this layer".into(),
            });
        }
        Ok(())
    }

    /// A delta step, in three passes that split over the worker pool when the layer is large.
    ///
    /// 1. The scan: per channel plane, one contiguous, vectorised, read-only pass over a range
    ///    of positions marks the moved positions and counts the entries that fire.
    /// 2. For a one-group conv whose firing is dense within positions, the position GEMM: every
    ///    moved position becomes one row of dx, and a chunk of such rows times the weights of
    ///    the taps its stride class reaches is one GEMM whose rows are added into the outputs
    ///    each tap reaches: work proportional to the moved positions, at the GEMM kernel's
    ///    speed. Threads take bands of input rows; a band is at least one kernel extent tall,
    ///    so the even bands reach disjoint outputs, then the odd ones do (and each input
    ///    position, whose x_ref the gather moves, is in one band). Otherwise (and for grouped
    ///    convs) each moved position's fired channels are scattered entry by entry.
    /// 3. act(y) is rewritten at the touched outputs, each thread at its own.
    fn step_moved(
        &mut self,
        x: &[f32],
        max_fired: usize,
        kern: Kernel,
        lanes: &mut [Lane],
        transpose: &mut [f32],
        may_defer: bool,
    ) -> Result<(DeltaStep, Ran)> {
        let [n, c, h, w] = self.x_shape;
        let m = self.w_shape[0];
        let [_, _, oh, ow] = self.out_shape;
        let (hw, ohw) = (h * w, oh * ow);
        let threads = lanes.len();
        let (mut fired, mut macs) = (0usize, 0u64);
        for b in 0..n {
            let xb = &x[b * c * hw..][..c * hw];
            let (firing, moved) = self.scan(b, xb, kern, threads);
            fired = fired.saturating_add(firing);
            let over = fired > max_fired;
            // Past the bound, a layer that reads a camera has seen a scene cut, and without
            // the cost model the step is a keyframe. With it, a layer further in just runs
            // dense: the bound is then one more way of saying the dense conv is cheaper.
            if over && (self.scan_always || !self.cost_model) {
                self.keyframe(x)?;
                self.last.cut = true;
                return Ok((self.last, Ran::Here));
            }
            let path = if over { Path::Dense } else { self.cheapest_path(moved, firing) };
            if path == Path::Dense {
                self.skip_scans = if self.scan_always { 0 } else { self.probe_every - 1 };
                self.probe_every = (self.probe_every * 2).min(PROBE_EVERY_MAX);
                if b == 0 && may_defer && self.scan_always {
                    // A layer that scans every step (it reads a camera) would otherwise pay for a
                    // keyframe on every frame its input is noisy. Nothing has changed its state
                    // yet, and the state is still exact (y is the conv of x_ref): the caller runs
                    // the plain conv into its own buffer instead. The other layers do refresh
                    // their state here, once per probe, so that after a change that then holds
                    // still their next probe compares against the new input, not the old one.
                    self.last = DeltaStep { fired: x.len(), macs: self.dense_macs(), keyed: true, cut: false };
                    return Ok((self.last, Ran::Deferred));
                }
                self.keyframe(x)?;
                return Ok((self.last, Ran::Here));
            }
            self.probe_every = PROBE_EVERY;
            self.positions.clear();
            self.positions.extend(self.moved.iter().enumerate().filter(|(_, &v)| v != 0).map(|(p, _)| p as u32));
            self.position_major_y(transpose);
            if path == Path::Scatter {
                macs += self.scatter_positions(b, xb, kern, &mut lanes[0]);
                continue;
            }
            let extent = (self.w_shape[2] - 1) * self.linear.dilations[0] + 1;
            let work = self.positions.len() * c * self.w_shape[2] * self.w_shape[3] * m;
            let threads = workers_for(work, threads);
            // Bands: two per thread per phase (so a late thread evens out), each >= extent rows.
            let bands = if threads > 1 { (4 * threads).min(h / extent.max(1)) & !1 } else { 1 };
            let bands = if bands >= 2 * threads { bands } else { 1 };
            let band_rows = h.div_ceil(bands);
            let bands = h.div_ceil(band_rows);
            let band = BandJob {
                kern,
                b,
                positions: &self.positions,
                x: xb,
                theta: &self.theta,
                x_ref: SharedMut::new(&mut self.x_ref[b * c * hw..][..c * hw]),
                classes: &self.classes,
                rows: &self.rows,
                cols: &self.cols,
                c,
                w,
                m,
                ow,
                ohw,
                generation: self.generation,
                y: SharedMut::new(&mut self.y),
                mark: SharedMut::new(&mut self.mark),
                lanes: SharedMut::new(lanes),
            };
            for parity in 0..2usize.min(bands) {
                let items = (bands - parity).div_ceil(2);
                parallel_items(items, threads, |item, lane| {
                    let at = (2 * item + parity) * band_rows;
                    band.run(at..(at + band_rows).min(h), lane);
                });
            }
        }
        let touched: usize = lanes.iter().map(|l| l.touched.len()).sum();
        let refresh = Refresh {
            kern,
            y: &self.y,
            activation: &self.activation,
            m,
            ohw,
            out: SharedMut::new(&mut self.out),
            lanes: SharedMut::new(lanes),
        };
        parallel_items(threads, workers_for(touched * m * 8, threads), |lane, _| refresh.run(lane));
        // Every fired entry was counted by the scan (the passes after it use each once).
        macs += lanes.iter().map(|l| l.macs).sum::<u64>();
        self.last = DeltaStep { fired, macs, keyed: false, cut: false };
        Ok((self.last, Ran::Here))
    }

    /// The cheapest way to add `firing` fired entries at `moved` positions of one image, by the
    /// [`cost`] model. Falling back to dense when the delta paths cost more keeps a layer whose
    /// input is noisy from running slower than the plain conv.
    fn cheapest_path(&self, moved: usize, firing: usize) -> Path {
        let c = self.x_shape[1] as f64;
        let [m, cg, kh, kw] = self.w_shape;
        let [_, _, oh, ow] = self.out_shape;
        let [sh, sw] = self.linear.strides;
        let (moved, firing, m, outputs) = (moved as f64, firing as f64, m as f64, (oh * ow) as f64);
        // Outputs an input reaches through the kernel, and over how many inputs an output's
        // taps spread: a moved blob touches about moved / stride^2 outputs, scattered moves
        // moved * reach. Between the two, the geometric mean.
        let reach = (kh * kw) as f64 / (sh.max(1) * sw.max(1)) as f64;
        let touched = (moved * (reach / (sh.max(1) * sw.max(1)) as f64).sqrt()).min(outputs) * m;
        let mg = m / self.group as f64;
        let fixed = touched * cost::TOUCHED + if self.y_position_major { 0.0 } else { outputs * m * cost::TRANSPOSE };
        let scatter = firing * (cost::SCATTER_ENTRY + reach * mg * cost::SCATTER_MAC) + fixed;
        let gemm = if self.group == 1 {
            moved * (cost::GEMM_POSITION + c * reach * m * cost::GEMM_MAC) + fixed
        } else {
            f64::INFINITY
        };
        let dense = outputs * m * ((cg * kh * kw) as f64 * cost::DENSE_MAC + cost::DENSE_OUTPUT);
        if self.cost_model && gemm.min(scatter) > dense {
            Path::Dense
        } else if gemm <= scatter {
            Path::Gemm
        } else {
            Path::Scatter
        }
    }

    /// Pass 1 of a step on image `b`: marks the moved positions and returns the fired count and
    /// the moved count.
    fn scan(&mut self, b: usize, xb: &[f32], kern: Kernel, threads: usize) -> (usize, usize) {
        let [_, c, h, w] = self.x_shape;
        let hw = h * w;
        // Ranges of whole cache lines, about four per thread.
        let threads = workers_for(c * hw * 4, threads);
        let span = hw.div_ceil(4 * threads).next_multiple_of(16).max(16);
        let items = hw.div_ceil(span);
        let total = std::sync::atomic::AtomicUsize::new(0);
        let total_moved = std::sync::atomic::AtomicUsize::new(0);
        let (theta, moved) = (&self.theta, SharedMut::new(&mut self.moved));
        let x_ref = &self.x_ref[b * c * hw..][..c * hw];
        parallel_items(items, threads, |item, _| {
            let (from, len) = (item * span, span.min(hw - item * span));
            // SAFETY: item i alone covers positions from..from + len of every plane.
            let mv = unsafe { moved.range(from, len) };
            mv.fill(0);
            let mut firing = 0;
            for (ci, &theta) in theta.iter().enumerate() {
                let at = ci * hw + from;
                firing += scan_plane(kern, &xb[at..][..len], &x_ref[at..][..len], mv, theta);
            }
            total.fetch_add(firing, std::sync::atomic::Ordering::Relaxed);
            let moved: usize = mv.iter().map(|&v| v as usize).sum();
            total_moved.fetch_add(moved, std::sync::atomic::Ordering::Relaxed);
        });
        (total.into_inner(), total_moved.into_inner())
    }

    /// The scatter of the moved positions of image `b`, entry by entry (four fired channels of a
    /// group per pass of the group's output row): the multiply-adds done.
    fn scatter_positions(&mut self, b: usize, xb: &[f32], kern: Kernel, lane: &mut Lane) -> u64 {
        let [_, c, h, w] = self.x_shape;
        let [m, cg, kh, kw] = self.w_shape;
        let [_, _, oh, ow] = self.out_shape;
        let (hw, ohw, taps, mg) = (h * w, oh * ow, kh * kw, m / self.group);
        // Where channel ci's weights for tap t start in `w_taps`: base(ci) + t * tap_stride.
        // One group: [C, kH kW, M]; grouped: [group, kH kW, C/group, M/group].
        let (one, tap_stride) = (self.group == 1, if self.group == 1 { m } else { cg * mg });
        let base = |ci: usize| if one { ci * taps * m } else { ((ci / cg) * taps * cg + ci % cg) * mg };
        let rb = &mut self.x_ref[b * c * hw..][..c * hw];
        let mut macs = 0u64;
        for &pos in &self.positions {
            let pos = pos as usize;
            self.fired_here.clear();
            self.group_starts.clear();
            for (ci, &theta) in self.theta.iter().enumerate() {
                let k = ci * hw + pos;
                let dx = xb[k] - rb[k];
                if fires(dx, theta) {
                    rb[k] = xb[k];
                    // Channels come in order, so each group's fired entries are one run.
                    if self.group_starts.last().is_none_or(|&(g, _)| g != ci / cg) {
                        self.group_starts.push((ci / cg, self.fired_here.len()));
                    }
                    self.fired_here.push((base(ci) as u32, dx));
                }
            }
            let (ih, iw) = (pos / w, pos % w);
            for &(i, orow) in self.rows.of(ih) {
                for &(j, ocol) in self.cols.of(iw) {
                    let at = b * ohw + orow as usize * ow + ocol as usize;
                    if self.mark[at] != self.generation {
                        self.mark[at] = self.generation;
                        lane.touched.push(at as u32);
                    }
                    let tap = (i as usize * kw + j as usize) * tap_stride;
                    for (r, &(g, from)) in self.group_starts.iter().enumerate() {
                        let to = self.group_starts.get(r + 1).map_or(self.fired_here.len(), |&(_, t)| t);
                        let y = &mut self.y[at * m + g * mg..][..mg];
                        kern.axpy_taps(y, &self.w_taps, tap, &self.fired_here[from..to]);
                    }
                    macs += (self.fired_here.len() * mg) as u64;
                }
            }
        }
        macs
    }
}

/// Pass 1 on one range of one channel plane: marks in `moved` where an entry fires, and returns
/// how many do. Read-only and branch-free, so it vectorises.
fn scan_plane(kern: Kernel, x: &[f32], x_ref: &[f32], moved: &mut [u8], theta: f32) -> usize {
    match kern {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: each instance exists only on CPUs with its features (see `Kernel`).
        Kernel::Avx512 => unsafe { scan_plane_avx512(x, x_ref, moved, theta) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Kernel::Avx2Fma => unsafe { scan_plane_avx2(x, x_ref, moved, theta) },
        _ => scan_plane_body(x, x_ref, moved, theta),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn scan_plane_avx512(x: &[f32], x_ref: &[f32], moved: &mut [u8], theta: f32) -> usize {
    scan_plane_body(x, x_ref, moved, theta)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scan_plane_avx2(x: &[f32], x_ref: &[f32], moved: &mut [u8], theta: f32) -> usize {
    scan_plane_body(x, x_ref, moved, theta)
}

#[inline(always)]
fn scan_plane_body(x: &[f32], x_ref: &[f32], moved: &mut [u8], theta: f32) -> usize {
    let mut firing = 0usize;
    for ((&xv, &rv), mv) in x.iter().zip(x_ref).zip(moved.iter_mut()) {
        let dx = xv - rv;
        let f = u8::from(dx != 0.0) & u8::from(dx.abs() >= theta);
        *mv |= f;
        firing += f as usize;
    }
    firing
}

/// Pass 2 of a delta step for one image, shared by the threads: each runs bands of input rows.
struct BandJob<'a> {
    kern: Kernel,
    b: usize,
    /// The moved positions of the image, ascending (so a band's are one run).
    positions: &'a [u32],
    /// The image's input, its reference input, and the thresholds per channel.
    x: &'a [f32],
    x_ref: SharedMut<'a, f32>,
    theta: &'a [f32],
    classes: &'a TapClasses,
    rows: &'a TapTable,
    cols: &'a TapTable,
    c: usize,
    w: usize,
    m: usize,
    ow: usize,
    ohw: usize,
    generation: u32,
    y: SharedMut<'a, f32>,
    mark: SharedMut<'a, u32>,
    lanes: SharedMut<'a, Lane>,
}

impl BandJob<'_> {
    /// The moved positions in input rows `band`, on lane `lane`.
    fn run(&self, band: std::ops::Range<usize>, lane: usize) {
        match self.kern {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: each instance exists only on CPUs with its features (see `Kernel`).
            Kernel::Avx512 => unsafe { self.run_avx512(band, lane) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Kernel::Avx2Fma => unsafe { self.run_avx2(band, lane) },
            _ => self.run_body(band, lane),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn run_avx512(&self, band: std::ops::Range<usize>, lane: usize) {
        self.run_body(band, lane)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, band: std::ops::Range<usize>, lane: usize) {
        self.run_body(band, lane)
    }

    #[inline(always)]
    fn run_body(&self, band: std::ops::Range<usize>, lane: usize) {
        let (kern, c, w, m, hw) = (self.kern, self.c, self.w, self.m, self.x.len() / self.c.max(1));
        // SAFETY: `parallel_items` runs one item at a time per lane index, so this lane is ours.
        let lane = unsafe { &mut self.lanes.range(lane, 1)[0] };
        let first = self.positions.partition_point(|&p| (p as usize) < band.start * w);
        let last = self.positions.partition_point(|&p| (p as usize) < band.end * w);
        let positions = &self.positions[first..last];
        let classes = self.classes;
        for class in 0..classes.count() {
            let class_taps = classes.taps(class);
            if class_taps == 0 {
                // A stride wider than the kernel: these inputs reach no output at all.
                continue;
            }
            lane.class_positions.clear();
            lane.class_positions
                .extend(positions.iter().copied().filter(|&p| classes.of(p as usize / w, p as usize % w) == class));
            let class_cols = classes.cols[class];
            for chunk_at in (0..lane.class_positions.len()).step_by(CHUNK) {
                let chunk = &lane.class_positions[chunk_at..(chunk_at + CHUNK).min(lane.class_positions.len())];
                let rows = chunk.len();
                // The dx rows go straight into the GEMM kernel's packed layout (blocks of MR
                // positions, each [C][MR]): per block and channel, MR reads from one plane that
                // lie close together, and one contiguous write. Branch-free, because sensor
                // noise makes firing a coin toss the predictor cannot learn.
                let mr = kern.mr();
                let packed = &mut lane.packed_dx[..kern.packed_a_len(rows, c)];
                for (block, block_at) in packed.chunks_exact_mut(mr * c).zip((0..rows).step_by(mr)) {
                    let here = &chunk[block_at..(block_at + mr).min(rows)];
                    for (ci, (dst, &theta)) in block.chunks_exact_mut(mr).zip(self.theta).enumerate() {
                        let xp = &self.x[ci * hw..][..hw];
                        for (d, &pos) in dst.iter_mut().zip(here) {
                            let at = ci * hw + pos as usize;
                            // SAFETY: a position is in one band only, so no other thread reads or
                            // writes its reference input meanwhile.
                            let rv = unsafe { self.x_ref.get(at) };
                            let xv = xp[pos as usize];
                            let dx = xv - rv;
                            let f = fires(dx, theta);
                            *d = if f { dx } else { 0.0 };
                            // SAFETY: as above.
                            unsafe { self.x_ref.set(at, if f { xv } else { rv }) };
                        }
                        dst[here.len()..].fill(0.0);
                    }
                }
                let width = class_taps * m;
                let products = &mut lane.products[..rows * width];
                let args = GemmArgs {
                    a: packed,
                    m: rows,
                    k: c,
                    b: &classes.weights[class],
                    rows: Ld { ld: width, k: c },
                    n: width,
                    bias: None,
                };
                kern.gemm(args, &mut lane.gemm_tail, &mut Strided { out: products, ld: width, col: 0 });
                lane.macs += (rows * c * width) as u64;
                for (r, &pos) in chunk.iter().enumerate() {
                    let (ih, iw) = (pos as usize / w, pos as usize % w);
                    for &(i, orow) in self.rows.of(ih) {
                        let row_slot = classes.row_slot[i as usize];
                        for &(j, ocol) in self.cols.of(iw) {
                            let at = self.b * self.ohw + orow as usize * self.ow + ocol as usize;
                            // SAFETY: bands of one parity reach disjoint outputs (each band is at
                            // least one kernel extent tall), so no other thread touches `at` now.
                            unsafe {
                                if self.mark.get(at) != self.generation {
                                    self.mark.set(at, self.generation);
                                    lane.touched.push(at as u32);
                                }
                            }
                            let tap = row_slot * class_cols + classes.col_slot[j as usize];
                            let z = &products[(r * class_taps + tap) * m..][..m];
                            // SAFETY: as above.
                            let y = unsafe { self.y.range(at * m, m) };
                            for (yv, zv) in y.iter_mut().zip(z) {
                                *yv += zv;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Pass 3: act(y) rewritten at the outputs each lane touched (disjoint: an output is on the list
/// of the lane that first touched it).
struct Refresh<'a> {
    kern: Kernel,
    y: &'a [f32],
    activation: &'a Activation,
    m: usize,
    ohw: usize,
    out: SharedMut<'a, f32>,
    lanes: SharedMut<'a, Lane>,
}

impl Refresh<'_> {
    fn run(&self, lane: usize) {
        let (m, ohw) = (self.m, self.ohw);
        // SAFETY: item `lane` runs once, and is the only user of that lane in this pass.
        let lane = unsafe { &mut self.lanes.range(lane, 1)[0] };
        let per_channel = self.activation.is_per_channel();
        lane.touched.sort_unstable();
        // REFRESH_ROWS rows at a time: one activation call over them (m can be as small as 8).
        for batch in lane.touched.chunks(REFRESH_ROWS) {
            let rows = &mut lane.rows[..batch.len() * m];
            for (row, &at) in rows.chunks_exact_mut(m).zip(batch) {
                row.copy_from_slice(&self.y[at as usize * m..][..m]);
            }
            if per_channel {
                for row in rows.chunks_exact_mut(m) {
                    for (mo, v) in row.iter_mut().enumerate() {
                        self.kern.activate(self.activation, std::slice::from_mut(v), mo);
                    }
                }
            } else {
                self.kern.activate(self.activation, rows, 0);
            }
            // Channel by channel: the batch's positions are sorted, so in each plane their
            // writes share cache lines (position by position, each write lands on another
            // plane's line, and the step spent more time here than in its GEMM).
            for mo in 0..m {
                for (row, &at) in rows.chunks_exact(m).zip(batch) {
                    let (b, pos) = (at as usize / ohw, at as usize % ohw);
                    // SAFETY: output position `at` is on this lane's list only.
                    unsafe { self.out.set((b * m + mo) * ohw + pos, row[mo]) };
                }
            }
        }
    }
}

/// One linear layer's delta state: y = x W^T + b over rows of x ([R, K] -> [R, N]).
#[derive(Clone, Debug)]
pub struct DeltaLinear {
    rows: usize,
    k: usize,
    n: usize,
    /// W^T: [K, N], so the outputs one fired input reaches are a contiguous row.
    w_t: Vec<f32>,
    bias: Option<Vec<f32>>,
    /// Per input feature.
    theta: Vec<f32>,
    x_ref: Vec<f32>,
    y: Vec<f32>,
    fired_here: Vec<(u32, f32)>,
    keyed: bool,
    last: DeltaStep,
}

impl DeltaLinear {
    /// `w` is [N, K] (a Gemm with transB = 1, PyTorch's layout).
    pub fn new(rows: usize, w: &[f32], n: usize, k: usize, bias: Option<&[f32]>, theta: f32) -> Result<DeltaLinear> {
        let op = "delta_linear";
        check_theta(op, theta)?;
        check_len(op, "weights", w.len(), &[n, k])?;
        if let Some(b) = bias {
            if b.len() != n {
                return Err(Error::shape(op, format!("bias of {n} values"), b.len()));
            }
        }
        let mut w_t = vec![0.0; n * k];
        for (j, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
            for (i, &v) in row.iter().enumerate() {
                w_t[i * n + j] = v;
            }
        }
        Ok(DeltaLinear {
            rows,
            k,
            n,
            w_t,
            bias: bias.map(<[f32]>::to_vec),
            theta: vec![theta; k],
            x_ref: vec![0.0; rows * k],
            y: vec![0.0; rows * n],
            fired_here: Vec::with_capacity(k),
            keyed: false,
            last: DeltaStep::default(),
        })
    }

    /// The accumulated output [R, N].
    pub fn output(&self) -> &[f32] {
        &self.y
    }

    /// theta per input feature.
    pub fn thetas(&self) -> &[f32] {
        &self.theta
    }

    /// One theta for every input feature, or one per feature.
    pub fn set_thetas(&mut self, theta: &[f32]) -> Result<()> {
        set_thetas("delta_linear", &mut self.theta, theta)
    }

    pub fn reference_input(&self) -> &[f32] {
        &self.x_ref
    }

    pub fn last_step(&self) -> DeltaStep {
        self.last
    }

    pub fn input_len(&self) -> usize {
        self.x_ref.len()
    }

    pub fn dense_macs(&self) -> u64 {
        (self.rows * self.k * self.n) as u64
    }

    pub fn reset(&mut self) {
        self.keyed = false;
    }

    /// The dense layer of `x`; both states restart from it.
    pub fn keyframe(&mut self, x: &[f32]) -> Result<&[f32]> {
        check_len("delta_linear", "input", x.len(), &[self.rows, self.k])?;
        // The dense layer through the step's own kernel: every input as a fired entry against a
        // zero reference, over the bias (W^T is what this layer keeps).
        let kern = Kernel::current();
        for r in 0..self.rows {
            let y = &mut self.y[r * self.n..][..self.n];
            match &self.bias {
                Some(b) => y.copy_from_slice(b),
                None => y.fill(0.0),
            }
            self.fired_here.clear();
            self.fired_here
                .extend(x[r * self.k..][..self.k].iter().enumerate().map(|(i, &v)| ((i * self.n) as u32, v)));
            kern.axpy_taps(y, &self.w_t, 0, &self.fired_here);
        }
        self.x_ref.copy_from_slice(x);
        self.keyed = true;
        self.last = DeltaStep { fired: x.len(), macs: self.dense_macs(), keyed: true, cut: false };
        Ok(&self.y)
    }

    /// Adds the fired part of `x - x_ref`; past `max_fired` fired inputs it runs dense instead.
    /// Allocates nothing.
    pub fn step_bounded(&mut self, x: &[f32], max_fired: usize) -> Result<DeltaStep> {
        if !self.keyed {
            self.keyframe(x)?;
            return Ok(self.last);
        }
        check_len("delta_linear", "input", x.len(), &[self.rows, self.k])?;
        let kern = Kernel::current();
        let (mut fired, mut macs) = (0usize, 0u64);
        for r in 0..self.rows {
            self.fired_here.clear();
            for (i, &theta) in self.theta.iter().enumerate() {
                let at = r * self.k + i;
                let dx = x[at] - self.x_ref[at];
                if fires(dx, theta) {
                    self.x_ref[at] = x[at];
                    self.fired_here.push(((i * self.n) as u32, dx));
                }
            }
            fired += self.fired_here.len();
            if fired > max_fired {
                self.keyframe(x)?;
                self.last.cut = true;
                return Ok(self.last);
            }
            kern.axpy_taps(&mut self.y[r * self.n..][..self.n], &self.w_t, 0, &self.fired_here);
            macs += (self.fired_here.len() * self.n) as u64;
        }
        self.last = DeltaStep { fired, macs, keyed: false, cut: false };
        Ok(self.last)
    }

    pub fn step(&mut self, x: &[f32]) -> Result<&[f32]> {
        self.step_bounded(x, usize::MAX)?;
        Ok(&self.y)
    }
}
