//! 2-D convolution (ONNX `Conv` on NCHW) with fused bias and activation.
//!
//! Output shape, per spatial axis (H shown; W alike):
//!
//! ```text
//! OH = floor((H + pad_top + pad_bottom - (dilation_h * (kH - 1) + 1)) / stride_h) + 1
//! ```
//!
//! Three paths, all computing each output as bias + a sum over (c, kh, kw) in that order:
//! - **pointwise** (1x1, stride 1, no padding): the input planes are already the GEMM's B operand
//!   ([C/g, H*W] row-major), so the GEMM reads them in place;
//! - **implicit GEMM** (every other conv with at least 4 output channels per group): the input is
//!   copied once into zero-padded *phase planes* (for stride s, the s x s sub-grids of the padded
//!   input, each [Hq, Wq]). In those planes the tap of output pixel (oh, ow) for kernel position
//!   (i, j) sits at (oh + i*d / s, ow + j*d / s) of phase ((i*d) % s, (j*d) % s), so over the
//!   flattened grid of OH x Wq pixels every GEMM row kk = (c, i, j) is a *contiguous* window at a
//!   fixed offset: the GEMM reads B in place through a table of k offsets (no im2col, which
//!   would copy kH*kW times the input). Grid columns ow >= OW are computed and dropped (2 of 82
//!   columns for a 3x3 conv on an 80-wide map);
//! - **direct** (fewer than 4 output channels per group: depthwise and near-depthwise): over the
//!   same phase planes, each output plane's grid accumulates weight x window, one long
//!   vectorised axpy per tap.
//!
//! The weights are already the GEMM's A operand ([M, C/g * kH * kW] row-major); they are packed
//! into the kernel's register-tile layout once per call.
//!
//! Threads: the GEMM paths split the output rows of every plane among workers (no work is
//! repeated; the phase planes are built first, split by channel); the direct path splits whole
//! output planes.

use super::gemm::{with_offsets, with_scratch, Dest, GemmArgs, Kernel, Table, NR_MAX};
use super::{check_len, item_count, parallel_chunks, parallel_for, workers_for, Activation, SharedMut};
use crate::error::{Error, Result};

/// Parameters of a 2-D convolution. The kernel size comes from the weight shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2d {
    /// [stride_h, stride_w], each >= 1.
    pub strides: [usize; 2],
    /// ONNX `pads` order: [top, left, bottom, right] (x1_begin, x2_begin, x1_end, x2_end).
    pub pads: [usize; 4],
    /// [dilation_h, dilation_w], each >= 1.
    pub dilations: [usize; 2],
    /// Groups: C and M must both be multiples; group == C == M is depthwise.
    pub group: usize,
    /// Applied to conv + bias before the store.
    pub activation: Activation,
}

impl Default for Conv2d {
    fn default() -> Self {
        Conv2d { strides: [1, 1], pads: [0; 4], dilations: [1, 1], group: 1, activation: Activation::None }
    }
}

/// Output-channel count per group below which the direct path beats the GEMM.
const DIRECT_MAX_MG: usize = 4;

/// Everything derived from the shapes, checked once.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    m: usize,
    groups: usize,
    cg: usize,
    mg: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    pt: usize,
    pl: usize,
    dh: usize,
    dw: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn new(x_shape: &[usize], w_shape: &[usize], p: &Conv2d) -> Result<Geom> {
        let op = "conv2d";
        let [n, c, h, w] = *x_shape else {
            return Err(Error::shape(op, "input [N, C, H, W]", format!("{x_shape:?}")));
        };
        let [m, cg, kh, kw] = *w_shape else {
            return Err(Error::shape(op, "weights [M, C/group, kH, kW]", format!("{w_shape:?}")));
        };
        let g = p.group;
        if g == 0 || p.strides.contains(&0) || p.dilations.contains(&0) || kh == 0 || kw == 0 {
            return Err(Error::InvalidArgument {
                reason: format!(
                    "conv2d: group {g}, strides {:?}, dilations {:?} and kernel {kh}x{kw} must all be >= 1",
                    p.strides, p.dilations
                ),
            });
        }
        if c % g != 0 || m % g != 0 || cg.checked_mul(g) != Some(c) {
            return Err(Error::shape(
                op,
                format!("weights [M, C/group = {}, ..] with C = {c} and M divisible by group {g}", c / g),
                format!("{w_shape:?}"),
            ));
        }
        let out_len = |input: usize, k: usize, s: usize, d: usize, pa: usize, pb: usize, axis: &str| {
            let span = d.saturating_mul(k - 1).saturating_add(1);
            let padded = input.saturating_add(pa).saturating_add(pb);
            if padded < span {
                return Err(Error::shape(
                    op,
                    format!("{axis} + padding >= dilated kernel extent {span}"),
                    format!("{axis} {input} with pads {pa}+{pb}"),
                ));
            }
            Ok((padded - span) / s + 1)
        };
        let [pt, pl, pb, pr] = p.pads;
        let oh = out_len(h, kh, p.strides[0], p.dilations[0], pt, pb, "H")?;
        let ow = out_len(w, kw, p.strides[1], p.dilations[1], pl, pr, "W")?;
        Ok(Geom {
            n,
            c,
            h,
            w,
            m,
            groups: g,
            cg,
            mg: m / g,
            kh,
            kw,
            sh: p.strides[0],
            sw: p.strides[1],
            pt,
            pl,
            dh: p.dilations[0],
            dw: p.dilations[1],
            oh,
            ow,
        })
    }

    fn k(&self) -> usize {
        self.cg * self.kh * self.kw
    }

    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.pt == 0 && self.pl == 0 && {
            // Bottom/right padding with a 1x1 kernel adds output rows; only the plain case is in
            // place.
            self.oh == self.h && self.ow == self.w
        }
    }
}

/// The output shape [N, M, OH, OW] of a conv, checking every attribute and the shapes.
pub fn conv2d_output_shape(x_shape: &[usize], w_shape: &[usize], p: &Conv2d) -> Result<[usize; 4]> {
    let g = Geom::new(x_shape, w_shape, p)?;
    Ok([g.n, g.m, g.oh, g.ow])
}

/// The range of output positions o in 0..out_len whose input position o * stride + offset lies
/// in 0..in_len (offset = tap * dilation - pad_begin).
#[inline]
fn valid_range(out_len: usize, stride: usize, offset: isize, in_len: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if offset >= 0 { 0 } else { (-offset + s - 1) / s };
    let room = in_len as isize - offset;
    let hi = if room <= 0 { 0 } else { (room + s - 1) / s };
    let hi = (hi as usize).min(out_len);
    let lo = (lo as usize).min(hi);
    (lo, hi)
}

/// Conv weights [M, C/group, kH, kW] in the layout the kernel reads, made once (an executor does
/// this at load, so a run does not repack every layer's weights). GEMM-path convs hold each
/// group's rows packed into register tiles of the CPU's kernel; direct-path (depthwise) convs
/// keep the plain rows.
#[derive(Clone, Debug)]
pub struct PackedConvWeights {
    shape: [usize; 4],
    group: usize,
    /// The kernel the tiles were packed for (`None`: plain rows, direct path).
    kernel: Option<Kernel>,
    data: Vec<f32>,
}

impl PackedConvWeights {
    /// Packs `w` of `w_shape` for a conv with `group` groups.
    pub fn new(w: &[f32], w_shape: &[usize], group: usize) -> Result<PackedConvWeights> {
        let op = "conv2d weights";
        let [m, cg, kh, kw] = *w_shape else {
            return Err(Error::shape(op, "weights [M, C/group, kH, kW]", format!("{w_shape:?}")));
        };
        check_len(op, "weights", w.len(), w_shape)?;
        if group == 0 || m % group != 0 {
            return Err(Error::shape(op, format!("M divisible by group {group}"), m));
        }
        let mg = m / group;
        // No taps at all (C = 0: every output is its bias) also takes the direct path.
        let (kernel, data) = if mg < DIRECT_MAX_MG || cg * kh * kw == 0 {
            (None, w.to_vec())
        } else {
            let kern = Kernel::current();
            let k = cg * kh * kw;
            let packed_len = kern.packed_a_len(mg, k);
            let mut data = vec![0.0; packed_len * group];
            for (grp, dst) in data.chunks_exact_mut(packed_len).enumerate() {
                kern.pack_a(&w[grp * mg * k..], k, mg, k, dst);
            }
            (Some(kern), data)
        };
        Ok(PackedConvWeights { shape: [m, cg, kh, kw], group, kernel, data })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
}

/// The weights a conv reads.
#[derive(Clone, Copy)]
enum Weights<'a> {
    /// [M, C/group, kH, kW] row-major.
    Plain(&'a [f32]),
    /// Packed by [`PackedConvWeights::new`] (checked to match the conv's shape and group).
    Packed(&'a PackedConvWeights),
}

/// y = act(conv(x, w) + bias) for NCHW `x` of `x_shape` and weights [M, C/group, kH, kW].
/// `bias` has M values when present; `out` has the [`conv2d_output_shape`] length.
pub fn conv2d(
    x: &[f32],
    x_shape: &[usize],
    w: &[f32],
    w_shape: &[usize],
    bias: Option<&[f32]>,
    p: &Conv2d,
    out: &mut [f32],
) -> Result<()> {
    check_len("conv2d", "weights", w.len(), w_shape)?;
    conv2d_with(x, x_shape, Weights::Plain(w), w_shape, bias, p, out)
}

/// [`conv2d`] with weights packed ahead of time.
pub fn conv2d_packed(
    x: &[f32],
    x_shape: &[usize],
    w: &PackedConvWeights,
    bias: Option<&[f32]>,
    p: &Conv2d,
    out: &mut [f32],
) -> Result<()> {
    if w.group != p.group {
        return Err(Error::InvalidArgument {
            reason: format!("conv2d: weights packed for {} groups, conv has {}", w.group, p.group),
        });
    }
    conv2d_with(x, x_shape, Weights::Packed(w), &w.shape, bias, p, out)
}

fn conv2d_with(
    x: &[f32],
    x_shape: &[usize],
    w: Weights,
    w_shape: &[usize],
    bias: Option<&[f32]>,
    p: &Conv2d,
    out: &mut [f32],
) -> Result<()> {
    let op = "conv2d";
    let g = Geom::new(x_shape, w_shape, p)?;
    check_len(op, "input", x.len(), x_shape)?;
    check_len(op, "output", out.len(), &[g.n, g.m, g.oh, g.ow])?;
    if let Some(b) = bias {
        if b.len() != g.m {
            return Err(Error::shape(op, format!("bias of {} values", g.m), b.len()));
        }
    }
    p.activation.check_channels(op, g.m)?;
    if let Activation::Clip { min, max } = p.activation {
        if min > max {
            return Err(Error::InvalidArgument { reason: format!("Clip min {min} is above max {max}") });
        }
    }
    if out.is_empty() {
        return Ok(());
    }
    // Packed weights of the same shape took the same path when they were packed: plain rows
    // (kernel None) exactly when mg < DIRECT_MAX_MG or there are no taps (k = 0).
    let tiles = match w {
        Weights::Plain(data) if g.mg >= DIRECT_MAX_MG && g.k() > 0 => WeightTiles::Pack(data),
        Weights::Packed(PackedConvWeights { kernel: Some(kern), data, .. }) => WeightTiles::Packed(*kern, data),
        Weights::Plain(data) => {
            conv_direct(&g, x, data, bias, &p.activation, out);
            return Ok(());
        }
        Weights::Packed(PackedConvWeights { data, .. }) => {
            conv_direct(&g, x, data, bias, &p.activation, out);
            return Ok(());
        }
    };
    conv_gemm(&g, x, tiles, bias, &p.activation, out);
    Ok(())
}

/// Where the GEMM path gets its register-tile weights.
#[derive(Clone, Copy)]
enum WeightTiles<'a> {
    /// Plain rows, packed per call into scratch for the current kernel.
    Pack(&'a [f32]),
    /// Already packed, for this kernel.
    Packed(Kernel, &'a [f32]),
}

/// Direct path: one output plane at a time over the phase planes (the same padded copy the
/// implicit GEMM reads), planes split among workers. For each tap, the whole OH x Wq grid of the
/// plane accumulates weight x a contiguous window: one long vectorised axpy per tap.
fn conv_direct(g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>, act: &Activation, out: &mut [f32]) {
    let kern = Kernel::current();
    let k = g.k();
    let ph = Phases::new(g);
    let pointwise = g.pointwise();
    let plane = g.oh * g.ow;
    let planes = g.n * g.m;
    let workers = workers_for(planes * plane * k, planes);
    let prep_len = if pointwise { 0 } else { g.n * g.c * ph.channel() };
    let grid_len = g.oh * ph.wq;
    with_offsets(k, |table| {
        with_scratch(prep_len + grid_len * workers, |scratch| {
            let (prepared, grids) = scratch.split_at_mut(prep_len);
            if !pointwise {
                prepare_phases(g, &ph, x, prepared, workers);
            }
            fill_offsets(g, &ph, table);
            let job =
                DirectJob { g, ph, kern, src: if pointwise { x } else { &*prepared }, table: &*table, w, bias, act };
            let per = planes.div_ceil(item_count(workers, planes));
            parallel_chunks(out, per * plane, workers, grids, grid_len, |i, chunk, grid| {
                for (j, dst) in chunk.chunks_exact_mut(plane).enumerate() {
                    job.plane(i * per + j, dst, grid);
                }
            });
        })
    });
}

/// What every worker of one direct-path conv shares.
struct DirectJob<'a> {
    g: &'a Geom,
    ph: Phases,
    kern: Kernel,
    src: &'a [f32],
    table: &'a [usize],
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    act: &'a Activation,
}

impl DirectJob<'_> {
    /// Output plane `index` (= n * M + m) into `dst`, using `grid` (OH x Wq floats).
    fn plane(&self, index: usize, dst: &mut [f32], grid: &mut [f32]) {
        let g = self.g;
        let (n, m) = (index / g.m, index % g.m);
        let grp = m / g.mg;
        let src = &self.src[(n * g.c + grp * g.cg) * self.ph.channel()..];
        let n_cols = (g.oh - 1) * self.ph.wq + g.ow;
        let acc = &mut grid[..n_cols];
        acc.fill(self.bias.map_or(0.0, |b| b[m]));
        let taps = &self.w[m * g.k()..][..g.k()];
        match self.kern {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Kernel::Avx2Fma exists only on CPUs that reported AVX2 and FMA.
            Kernel::Avx2Fma => unsafe { taps_avx2(acc, taps, src, self.table) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Kernel::Avx512 exists only on CPUs that reported AVX-512F, AVX2 and FMA.
            Kernel::Avx512 => unsafe { taps_avx512(acc, taps, src, self.table) },
            _ => accumulate_taps(acc, taps, src, self.table),
        }
        for (row, out_row) in dst.chunks_exact_mut(g.ow).enumerate() {
            out_row.copy_from_slice(&grid[row * self.ph.wq..][..g.ow]);
        }
        self.kern.activate(self.act, dst, m);
    }
}

/// [`accumulate_taps`] compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn taps_avx2(acc: &mut [f32], taps: &[f32], src: &[f32], table: &[usize]) {
    accumulate_taps(acc, taps, src, table)
}

/// [`accumulate_taps`] at 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn taps_avx512(acc: &mut [f32], taps: &[f32], src: &[f32], table: &[usize]) {
    accumulate_taps(acc, taps, src, table)
}

/// acc[p] += taps[kk] * src[table[kk] + p] for every tap kk.
#[inline(always)]
fn accumulate_taps(acc: &mut [f32], taps: &[f32], src: &[f32], table: &[usize]) {
    let len = acc.len();
    for (&wv, &off) in taps.iter().zip(table) {
        for (a, &v) in acc.iter_mut().zip(&src[off..off + len]) {
            *a += wv * v;
        }
    }
}

/// Row (c, i, j) of the implicit GEMM (and tap (c, i, j) of the direct path): phase
/// ((i*d) % s, (j*d) % s) of channel c, shifted by ((i*d) / s, (j*d) / s); relative to the
/// group's first channel.
fn fill_offsets(g: &Geom, ph: &Phases, table: &mut [usize]) {
    for (kk, off) in table.iter_mut().enumerate() {
        let (c, i, j) = (kk / (g.kh * g.kw), kk / g.kw % g.kh, kk % g.kw);
        *off = if g.pointwise() {
            c * ph.plane()
        } else {
            let (ti, tj) = (i * g.dh, j * g.dw);
            let phase = (ti % g.sh) * g.sw + tj % g.sw;
            c * ph.channel() + phase * ph.plane() + (ti / g.sh) * ph.wq + tj / g.sw
        };
    }
}

/// Geometry of the phase planes the implicit GEMM reads.
#[derive(Clone, Copy, Debug)]
struct Phases {
    /// Planes per input channel (stride_h * stride_w; 1 for the in-place pointwise path).
    per_channel: usize,
    hq: usize,
    wq: usize,
}

impl Phases {
    fn new(g: &Geom) -> Phases {
        if g.pointwise() {
            return Phases { per_channel: 1, hq: g.h, wq: g.w };
        }
        Phases { per_channel: g.sh * g.sw, hq: g.oh + (g.kh - 1) * g.dh / g.sh, wq: g.ow + (g.kw - 1) * g.dw / g.sw }
    }

    fn plane(&self) -> usize {
        self.hq * self.wq
    }

    /// Floats of one input channel's planes.
    fn channel(&self) -> usize {
        self.per_channel * self.plane()
    }
}

/// GEMM paths: the output is cut into (row band, channel range) pieces that workers take one at
/// a time (see [`Split`]).
fn conv_gemm(g: &Geom, x: &[f32], w: WeightTiles, bias: Option<&[f32]>, act: &Activation, out: &mut [f32]) {
    let kern = match w {
        WeightTiles::Pack(_) => Kernel::current(),
        WeightTiles::Packed(kern, _) => kern,
    };
    let k = g.k();
    let ph = Phases::new(g);
    let pointwise = g.pointwise();
    let macs = g.n * g.m * g.oh * g.ow * k;
    let workers = workers_for(macs, g.oh * g.mg);
    let prep_len = if pointwise { 0 } else { g.n * g.c * ph.channel() };
    let packed_len = kern.packed_a_len(g.mg, k);
    let pack_len = if matches!(w, WeightTiles::Pack(_)) { packed_len * g.groups } else { 0 };
    let per_worker = k * NR_MAX;
    let split = Split::new(g, &ph, kern, workers);
    with_offsets(k, |table| {
        with_scratch(pack_len + prep_len + per_worker * workers, |scratch| {
            let (packing, rest) = scratch.split_at_mut(pack_len);
            let packed: &[f32] = match w {
                WeightTiles::Packed(_, data) => data,
                WeightTiles::Pack(plain) => {
                    // The weights of every group, packed once and shared by the workers.
                    for (grp, dst) in packing.chunks_exact_mut(packed_len).enumerate() {
                        kern.pack_a(&plain[grp * g.mg * k..], k, g.mg, k, dst);
                    }
                    packing
                }
            };
            let (prepared, tails) = rest.split_at_mut(prep_len);
            if !pointwise {
                prepare_phases(g, &ph, x, prepared, workers);
            }
            fill_offsets(g, &ph, table);
            let job = ConvJob {
                g,
                ph,
                kern,
                src: if pointwise { x } else { &*prepared },
                table: &*table,
                packed,
                bias,
                act,
                out: SharedMut::new(out),
            };
            parallel_for(split.items(), workers, tails, per_worker, |item, tail| {
                let (cols, channels) = split.piece(item);
                // SAFETY: the pieces of `split` are disjoint, and each item runs once.
                unsafe { job.run(cols, channels, tail) }
            });
        })
    });
}

/// How a GEMM-path conv's output is cut into pieces: `ranges` ranges of grid columns (whole
/// register-tile panels of NR columns) times `chunks` ranges of each group's output channels
/// (whole MR-row tiles).
///
/// Column ranges come first: a piece then runs every weight tile against each of its B panels
/// while the panel is in L1, and reads the packed weights in order, which the prefetcher
/// follows. Channel ranges make every piece fetch the whole of B again, whose rows are scattered
/// (one per tap), so they are used only when a small map has too few panels to go round.
#[derive(Clone, Copy, Debug)]
struct Split {
    cols: usize,
    mg: usize,
    ranges: usize,
    chunks: usize,
    cols_per_range: usize,
    channels_per_chunk: usize,
}

impl Split {
    fn new(g: &Geom, ph: &Phases, kern: Kernel, workers: usize) -> Split {
        let cols = (g.oh - 1) * ph.wq + g.ow;
        let panels = cols.div_ceil(kern.nr());
        let tiles = g.mg.div_ceil(kern.mr());
        let want = item_count(workers, panels * tiles);
        let (ranges, chunks) = if workers <= 1 {
            (1, 1)
        } else if panels >= 2 * workers {
            (panels.min(want), 1)
        } else {
            (panels, tiles.min(want.div_ceil(panels)))
        };
        let cols_per_range = panels.div_ceil(ranges) * kern.nr();
        let channels_per_chunk = tiles.div_ceil(chunks) * kern.mr();
        Split {
            cols,
            mg: g.mg,
            ranges: cols.div_ceil(cols_per_range),
            chunks: g.mg.div_ceil(channels_per_chunk),
            cols_per_range,
            channels_per_chunk,
        }
    }

    fn items(&self) -> usize {
        self.ranges * self.chunks
    }

    /// Grid columns and per-group channels of piece `item`.
    fn piece(&self, item: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (range, chunk) = (item / self.chunks, item % self.chunks);
        let (j0, c0) = (range * self.cols_per_range, chunk * self.channels_per_chunk);
        (j0..(j0 + self.cols_per_range).min(self.cols), c0..(c0 + self.channels_per_chunk).min(self.mg))
    }
}

/// Fills the phase planes of every (batch, channel): plane (pi, pj) of channel c holds
/// `x[c][r * sh + pi - pad_top][q * sw + pj - pad_left]` at (r, q), zero outside the input.
fn prepare_phases(g: &Geom, ph: &Phases, x: &[f32], dst: &mut [f32], workers: usize) {
    let in_plane = g.h * g.w;
    let fill = |first: usize, chunk: &mut [f32]| {
        for (i, planes) in chunk.chunks_exact_mut(ph.channel()).enumerate() {
            let xc = &x[(first + i) * in_plane..][..in_plane];
            for (phase, plane) in planes.chunks_exact_mut(ph.plane()).enumerate() {
                let (pi, pj) = (phase / g.sw, phase % g.sw);
                let col_off = pj as isize - g.pl as isize;
                let (lo, hi) = valid_range(ph.wq, g.sw, col_off, g.w);
                for (r, row) in plane.chunks_exact_mut(ph.wq).enumerate() {
                    let ih = (r * g.sh + pi) as isize - g.pt as isize;
                    if ih < 0 || ih >= g.h as isize || lo >= hi {
                        row.fill(0.0);
                        continue;
                    }
                    let xrow = &xc[ih as usize * g.w..][..g.w];
                    row[..lo].fill(0.0);
                    copy_strided(&mut row[lo..hi], &xrow[((lo * g.sw) as isize + col_off) as usize..], g.sw);
                    row[hi..].fill(0.0);
                }
            }
        }
    };
    let channels = g.n * g.c;
    if workers <= 1 || channels < 2 {
        fill(0, dst);
        return;
    }
    let per = channels.div_ceil(item_count(workers, channels));
    parallel_chunks(dst, per * ph.channel(), workers, &mut [], 0, |i, chunk, _| fill(i * per, chunk));
}

/// What every worker of one GEMM-path conv shares.
struct ConvJob<'a> {
    g: &'a Geom,
    ph: Phases,
    kern: Kernel,
    /// Phase planes of every (batch, channel), or the input itself for pointwise convs.
    src: &'a [f32],
    /// Offset of B row kk from the group's first channel.
    table: &'a [usize],
    /// Packed weights, one block of `packed_a_len(mg, k)` per group.
    packed: &'a [f32],
    bias: Option<&'a [f32]>,
    act: &'a Activation,
    /// The [N, M, OH, OW] output, written piece by piece by the workers.
    out: SharedMut<'a>,
}

/// GEMM destination: row i is output plane `plane0 + i`; column j is grid pixel `grid0 + j` of
/// the OH x Wq grid, kept when its column is below OW.
struct GridDest<'o, 'a> {
    out: &'o SharedMut<'a>,
    plane0: usize,
    grid0: usize,
    wq: usize,
    ow: usize,
    pixels: usize,
    /// Grid (row, column) of the current panel's first column.
    at: (usize, usize),
}

impl GridDest<'_, '_> {
    /// Writes `values` to pixels `first..` of output plane `plane0 + i`.
    #[inline(always)]
    fn store(&self, i: usize, first: usize, values: &[f32]) {
        // SAFETY: a GridDest only exists inside `ConvJob::run`, whose caller owns the rows and
        // channels it writes; the pixels lie in those rows.
        let dst = unsafe { self.out.range((self.plane0 + i) * self.pixels + first, values.len()) };
        dst.copy_from_slice(values);
    }
}

impl Dest for GridDest<'_, '_> {
    #[inline(always)]
    fn panel(&mut self, j0: usize) {
        let p = self.grid0 + j0;
        self.at = (p / self.wq, p % self.wq);
    }

    #[inline(always)]
    fn put(&mut self, i: usize, j0: usize, values: &[f32]) {
        if self.wq == self.ow {
            // Pointwise: the grid is the output.
            self.store(i, self.grid0 + j0, values);
            return;
        }
        let (mut r, mut q) = self.at;
        if q + values.len() <= self.ow {
            // The whole run lies in one output row (the common case): one copy, of a length
            // the compiler knows for full tiles.
            self.store(i, r * self.ow + q, values);
            return;
        }
        let mut v = values;
        while !v.is_empty() {
            let run = (self.wq - q).min(v.len());
            if q < self.ow {
                let keep = run.min(self.ow - q);
                self.store(i, r * self.ow + q, &v[..keep]);
            }
            v = &v[run..];
            r += 1;
            q = 0;
        }
    }
}

impl ConvJob<'_> {
    /// Grid columns `cols` (of the OH x Wq grid; the output pixels among them) of output channels
    /// `channels` (within each group) of every (batch, group) plane, activation applied.
    ///
    /// # Safety
    /// No other call may be running on an overlapping (columns, channels) piece: each writes its
    /// piece of `out` through the shared pointer.
    unsafe fn run(&self, cols: std::ops::Range<usize>, channels: std::ops::Range<usize>, tail: &mut [f32]) {
        let (g, ph, kern) = (self.g, self.ph, self.kern);
        let k = g.k();
        let pixels = g.oh * g.ow;
        let image = g.c * ph.channel();
        let group_in = g.cg * ph.channel();
        let packed_len = self.packed.len() / g.groups;
        // `channels` starts on a register-tile boundary, so its packed rows are one slice.
        let tile_rows = kern.mr();
        debug_assert_eq!(channels.start % tile_rows, 0);
        let a_start = channels.start / tile_rows * tile_rows * k;
        let a_len = channels.len().div_ceil(tile_rows) * tile_rows * k;
        // The output pixels of grid columns `cols`: one run, as the grid's pad columns (q >= OW)
        // map to no pixel.
        let pixel = |c: usize| c / ph.wq * g.ow + (c % ph.wq).min(g.ow);
        let (first, len) = (pixel(cols.start), pixel(cols.end) - pixel(cols.start));
        for n in 0..g.n {
            for grp in 0..g.groups {
                let m0 = grp * g.mg + channels.start;
                let plane0 = n * g.m + m0;
                let args = GemmArgs {
                    a: &self.packed[grp * packed_len + a_start..][..a_len],
                    m: channels.len(),
                    k,
                    b: &self.src[n * image + grp * group_in + cols.start..],
                    rows: Table(self.table),
                    n: cols.len(),
                    bias: self.bias.map(|b| &b[m0..m0 + channels.len()]),
                };
                let mut dest =
                    GridDest { out: &self.out, plane0, grid0: cols.start, wq: ph.wq, ow: g.ow, pixels, at: (0, 0) };
                kern.gemm(args, tail, &mut dest);
                for i in 0..channels.len() {
                    // SAFETY: these pixels of this channel's plane are this call's (see above).
                    let dst = unsafe { self.out.range((plane0 + i) * pixels + first, len) };
                    kern.activate(self.act, dst, m0 + i);
                }
            }
        }
    }
}

/// dst[t] = src[t * stride]. Stride 1 is a memcpy; stride 2 (every downsampling conv) reads
/// pairs so the loop vectorises as a de-interleave.
#[inline]
fn copy_strided(dst: &mut [f32], src: &[f32], stride: usize) {
    let len = dst.len();
    if len == 0 {
        return;
    }
    match stride {
        1 => dst.copy_from_slice(&src[..len]),
        2 => {
            let (last, body) = dst.split_last_mut().expect("non-empty");
            for (d, pair) in body.iter_mut().zip(src.chunks_exact(2)) {
                *d = pair[0];
            }
            *last = src[2 * (len - 1)];
        }
        _ => {
            for (d, &v) in dst.iter_mut().zip(src.iter().step_by(stride)) {
                *d = v;
            }
        }
    }
}
