//! The one f32 GEMM the conv and matmul ops share: C = bias + A B.
//!
//! A is packed once per call into blocks of MR rows stored k-major ([k][MR]), so the kernel
//! walks it with one contiguous stride. B is read in place: row kk starts at an offset given by
//! [`BRows`], either a fixed stride (a matmul operand, the input planes of a 1x1 conv) or a table
//! (the implicit-GEMM conv, where row (c, i, j) is a shifted window of a padded input plane).
//! Register tiles of MR x NR accumulate over the whole of k in fixed-size arrays, which LLVM
//! keeps in vector registers (checked in the generated code: no spills in the AVX2 6x16 or the
//! SSE2 4x8 loop).
//!
//! The SIMD width is picked at run time (the crate is built for baseline x86_64, SSE2, as the
//! design card asks: no `target-cpu=native`):
//! - AVX-512F: a 12 x 32 tile written with intrinsics (24 zmm accumulators, two B loads and
//!   twelve broadcast FMAs per k step). Auto-vectorised code under `avx512f` did not get there:
//!   LLVM kept the 512-bit accumulator arrays on the stack, so this one instance is explicit;
//! - AVX2 + FMA: the portable 6 x 16 tile compiled a second time under `#[target_feature]`;
//! - elsewhere the portable instance (NEON is baseline on aarch64, with fused multiply-add).
//!
//! An op reads the choice once ([`Kernel`]) and uses it for packing and product alike.

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

use super::math::fmadd;
use super::Activation;

/// Largest NR of any instance: callers size the tail scratch with it.
pub(crate) const NR_MAX: usize = 32;

/// One compiled instance of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// SSE2 on x86_64 (4 x 8), NEON on aarch64 (6 x 16), plain scalar code elsewhere.
    Portable,
    /// 6 x 16: twelve 8-lane accumulators, two B loads and a broadcast in 16 registers.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// 12 x 32: twenty-four 16-lane accumulators of the 32 zmm registers.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

thread_local! {
    /// 0: no override; else 1 + the index in [`Kernel::ALL`] of the forced instance.
    static FORCED: Cell<u8> = const { Cell::new(0) };
}

/// Makes the ops called from this thread use `kernel` (one of [`Kernel::available`]) instead of
/// the best the CPU has, or go back to the best with `None`. For tests (per thread, so tests
/// running side by side do not race) and for measuring what the wide kernels buy; results
/// differ only by rounding. A kernel the CPU lacks is ignored.
pub fn force_kernel(kernel: Option<Kernel>) {
    let code = match kernel {
        Some(k) if Kernel::available().contains(&k) => {
            1 + Kernel::ALL.iter().position(|&x| x == k).expect("ALL lists every kernel") as u8
        }
        _ => 0,
    };
    FORCED.with(|f| f.set(code));
}

/// Name of the kernel instance the ops use now (for benchmark reports).
pub fn kernel_name() -> &'static str {
    Kernel::current().name()
}

/// Where the k rows of B start in `GemmArgs::b`.
pub(crate) trait BRows: Copy {
    fn offsets(self) -> impl Iterator<Item = usize> + Clone;
}

/// Row kk at `kk * ld` (k rows).
#[derive(Clone, Copy)]
pub(crate) struct Ld {
    pub ld: usize,
    pub k: usize,
}

impl BRows for Ld {
    #[inline(always)]
    fn offsets(self) -> impl Iterator<Item = usize> + Clone {
        (0..self.k).map(move |kk| kk * self.ld)
    }
}

/// Row kk at `table[kk]`.
#[derive(Clone, Copy)]
pub(crate) struct Table<'a>(pub &'a [usize]);

impl BRows for Table<'_> {
    #[inline(always)]
    fn offsets(self) -> impl Iterator<Item = usize> + Clone {
        self.0.iter().copied()
    }
}

/// Operands of one product. `a` is packed by [`Kernel::pack_a`] for m rows of k values; B
/// element (kk, j) is `b[offset(kk) + j]` for j < n; `bias` (m values) starts each sum.
#[derive(Clone, Copy)]
pub(crate) struct GemmArgs<'a, R: BRows> {
    pub a: &'a [f32],
    pub m: usize,
    pub k: usize,
    pub b: &'a [f32],
    pub rows: R,
    pub n: usize,
    pub bias: Option<&'a [f32]>,
}

/// Where a product's results go: `put(i, j0, values)` receives row i, columns j0.. (at most
/// NR_MAX values; exactly NR of them, a compile-time length once inlined, for full tiles).
pub(crate) trait Dest {
    /// Called once before the puts of each column panel starting at `j0` (for destinations that
    /// map columns to positions and want to do that once per panel, not once per row).
    #[inline(always)]
    fn panel(&mut self, _j0: usize) {}

    fn put(&mut self, i: usize, j0: usize, values: &[f32]);
}

/// Rows at a fixed stride in one slice: row i, column j is `out[i * ld + col + j]`.
pub(crate) struct Strided<'a> {
    pub out: &'a mut [f32],
    pub ld: usize,
    pub col: usize,
}

impl Dest for Strided<'_> {
    #[inline(always)]
    fn put(&mut self, i: usize, j0: usize, values: &[f32]) {
        self.out[i * self.ld + self.col + j0..][..values.len()].copy_from_slice(values);
    }
}

impl Kernel {
    /// Every instance this build has, narrowest first.
    const ALL: &'static [Kernel] = &[
        Kernel::Portable,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512,
    ];

    /// The instances this CPU can run, narrowest first (the last is the default).
    pub fn available() -> &'static [Kernel] {
        static AVAILABLE: OnceLock<Vec<Kernel>> = OnceLock::new();
        AVAILABLE.get_or_init(|| Kernel::ALL.iter().copied().filter(|k| k.supported()).collect())
    }

    fn supported(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => Kernel::Avx2Fma.supported() && std::arch::is_x86_feature_detected!("avx512f"),
        }
    }

    /// The instance to use for a call from this thread.
    pub fn current() -> Kernel {
        match FORCED.with(Cell::get) {
            0 => *Kernel::available().last().expect("the portable kernel is always available"),
            code => Kernel::ALL[code as usize - 1],
        }
    }

    /// Short name with the tile shape, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable if cfg!(target_arch = "aarch64") => "neon-6x16",
            Kernel::Portable => "portable-4x8",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => "avx2-fma-6x16",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => "avx512-12x32",
        }
    }

    /// Rows per register tile.
    pub(crate) fn mr(self) -> usize {
        match self {
            Kernel::Portable if cfg!(target_arch = "aarch64") => 6,
            Kernel::Portable => 4,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => 6,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => AVX512_MR,
        }
    }

    /// Columns per register tile.
    pub(crate) fn nr(self) -> usize {
        match self {
            Kernel::Portable if cfg!(target_arch = "aarch64") => 16,
            Kernel::Portable => 8,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => 16,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => 32,
        }
    }

    /// Floats of packed A for m rows of k values.
    pub(crate) fn packed_a_len(self, m: usize, k: usize) -> usize {
        m.div_ceil(self.mr()) * self.mr() * k
    }

    /// The most floats any instance this CPU has needs for packed A (a buffer sized once, for
    /// whichever instance runs later).
    pub(crate) fn max_packed_a_len(m: usize, k: usize) -> usize {
        Kernel::available().iter().map(|kern| kern.packed_a_len(m, k)).max().unwrap_or(0)
    }

    /// Packs rows `a[r * lda..][..k]`, r < m, into `dst` ([`Self::packed_a_len`] floats): blocks
    /// of MR rows, each stored [k][MR], rows past m zero.
    pub(crate) fn pack_a(self, a: &[f32], lda: usize, m: usize, k: usize, dst: &mut [f32]) {
        let mr = self.mr();
        for (blk, block) in dst[..self.packed_a_len(m, k)].chunks_exact_mut(mr * k).enumerate() {
            for i in 0..mr {
                let r = blk * mr + i;
                let col = block[i..].iter_mut().step_by(mr);
                if r < m {
                    for (d, &v) in col.zip(&a[r * lda..][..k]) {
                        *d = v;
                    }
                } else {
                    col.for_each(|d| *d = 0.0);
                }
            }
        }
    }

    /// Runs the product into `dest`. `tail` needs `k * NR_MAX` floats: the last partial column
    /// panel is copied there, zero-padded, so the kernel never reads past B.
    ///
    /// The caller guarantees the lengths (the ops check shapes first): `a` is packed for m rows,
    /// `b` covers `(k - 1) * ldb + n`, `bias` has m values, every `dest` row has n values.
    pub(crate) fn gemm<R: BRows, D: Dest>(self, args: GemmArgs<R>, tail: &mut [f32], dest: &mut D) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Avx2Fma` is only ever constructed after the CPU reported AVX2 and
            // FMA at run time, which is the whole contract of a `#[target_feature]` function.
            Kernel::Avx2Fma => unsafe { gemm_avx2(args, tail, dest) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Avx512` is only used once the CPU reported AVX-512F (and AVX2 +
            // FMA) at run time.
            Kernel::Avx512 => unsafe { gemm_avx512(args, tail, dest) },
            Kernel::Portable => {
                if cfg!(target_arch = "aarch64") {
                    gemm_tiles::<6, 16, Auto<true>, R, D>(args, tail, dest)
                } else {
                    gemm_tiles::<4, 8, Auto<false>, R, D>(args, tail, dest)
                }
            }
        }
    }

    /// out[j] = x . w[j * k..][..k] (+ bias[j]) for every j < out.len(): the batch-1 linear
    /// layer, one dot product per output, with this instance's vector width.
    pub(crate) fn dots(self, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `gemm`: each instance exists only on CPUs with its features.
            Kernel::Avx2Fma => unsafe { dots_avx2(x, w, bias, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Kernel::Avx512 => unsafe { dots_avx512(x, w, bias, out) },
            Kernel::Portable => dots::<8>(x, w, bias, out),
        }
    }

    /// y += sum over `taps` of dx * w[base + offset..][..y.len()]: the scatter of a delta layer's fired
    /// inputs into one output row, four taps per pass so each y element is loaded and stored once
    /// per four multiply-adds.
    pub(crate) fn axpy_taps(self, y: &mut [f32], w: &[f32], base: usize, taps: &[(u32, f32)]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `gemm`: each instance exists only on CPUs with its features.
            Kernel::Avx2Fma => unsafe { axpy_taps_avx2(y, w, base, taps) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Kernel::Avx512 => unsafe { axpy_taps_avx512(y, w, base, taps) },
            Kernel::Portable => axpy_taps(y, w, base, taps),
        }
    }

    /// Applies `act` (values of `channel`) with this instance's vector width.
    pub(crate) fn activate(self, act: &Activation, data: &mut [f32], channel: usize) {
        match (self, act) {
            (_, Activation::None) => {}
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `gemm`: Avx2Fma exists only on CPUs with AVX2 and FMA.
            (Kernel::Avx2Fma, _) => unsafe { activate_avx2(act, data, channel) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Avx512 is used only on CPUs that reported AVX-512F, AVX2 and FMA.
            (Kernel::Avx512, _) => unsafe { activate_avx512(act, data, channel) },
            _ if cfg!(target_arch = "aarch64") => act.apply_channel::<true>(data, channel),
            _ => act.apply_channel::<false>(data, channel),
        }
    }
}

#[inline(always)]
fn axpy_taps(y: &mut [f32], w: &[f32], base: usize, taps: &[(u32, f32)]) {
    let n = y.len();
    let row = |off: u32| &w[base + off as usize..base + off as usize + n];
    let mut quads = taps.chunks_exact(4);
    for q in &mut quads {
        let (w0, w1, w2, w3) = (row(q[0].0), row(q[1].0), row(q[2].0), row(q[3].0));
        let (a0, a1, a2, a3) = (q[0].1, q[1].1, q[2].1, q[3].1);
        for (i, yv) in y.iter_mut().enumerate() {
            *yv += a0 * w0[i] + a1 * w1[i] + a2 * w2[i] + a3 * w3[i];
        }
    }
    for &(off, a) in quads.remainder() {
        for (yv, wv) in y.iter_mut().zip(row(off)) {
            *yv += a * wv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_taps_avx2(y: &mut [f32], w: &[f32], base: usize, taps: &[(u32, f32)]) {
    axpy_taps(y, w, base, taps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn axpy_taps_avx512(y: &mut [f32], w: &[f32], base: usize, taps: &[(u32, f32)]) {
    axpy_taps(y, w, base, taps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_avx2<R: BRows, D: Dest>(args: GemmArgs<R>, tail: &mut [f32], dest: &mut D) {
    gemm_tiles::<6, 16, Auto<true>, R, D>(args, tail, dest)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gemm_avx512<R: BRows, D: Dest>(args: GemmArgs<R>, tail: &mut [f32], dest: &mut D) {
    gemm_tiles::<AVX512_MR, 32, Avx512Tile, R, D>(args, tail, dest)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn activate_avx2(act: &Activation, data: &mut [f32], channel: usize) {
    act.apply_channel::<true>(data, channel)
}

/// The same loops at 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn activate_avx512(act: &Activation, data: &mut [f32], channel: usize) {
    act.apply_channel::<true>(data, channel)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    dots::<16>(x, w, bias, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dots_avx512(x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    dots::<32>(x, w, bias, out)
}

/// [`Kernel::dots`] with L independent lanes of accumulation (two or more vectors' worth, so the
/// adds of one lane do not wait on each other).
#[inline(always)]
fn dots<const L: usize>(x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let k = x.len();
    for (j, o) in out.iter_mut().enumerate() {
        let row = &w[j * k..][..k];
        let mut acc = [0f32; L];
        let (xc, rc) = (x.chunks_exact(L), row.chunks_exact(L));
        let tail: f32 = xc.remainder().iter().zip(rc.remainder()).map(|(a, b)| a * b).sum();
        for (a, b) in xc.zip(rc) {
            for i in 0..L {
                acc[i] += a[i] * b[i];
            }
        }
        *o = acc.iter().sum::<f32>() + tail + bias.map_or(0.0, |b| b[j]);
    }
}

/// One register-tile product: ROWS rows of a packed block of A (k x AS, AS >= ROWS: the
/// packing's row count) against NR columns of B (rows at `offsets`, plus `col`) over all of k,
/// each sum starting from `init`.
trait TileKernel<const NR: usize> {
    fn tile<const ROWS: usize, const AS: usize>(
        a: &[f32],
        b: &[f32],
        offsets: impl Iterator<Item = usize>,
        col: usize,
        init: [f32; ROWS],
    ) -> [[f32; NR]; ROWS];
}

/// Plain loops over fixed-size arrays, which LLVM vectorises for the target it is inlined into
/// (fused multiply-adds when `FMA`).
struct Auto<const FMA: bool>;

impl<const NR: usize, const FMA: bool> TileKernel<NR> for Auto<FMA> {
    #[inline(always)]
    fn tile<const ROWS: usize, const AS: usize>(
        a: &[f32],
        b: &[f32],
        offsets: impl Iterator<Item = usize>,
        col: usize,
        init: [f32; ROWS],
    ) -> [[f32; NR]; ROWS] {
        let mut acc = [[0f32; NR]; ROWS];
        for i in 0..ROWS {
            acc[i] = [init[i]; NR];
        }
        for (av, off) in a.chunks_exact(AS).zip(offsets) {
            let off = off + col;
            let brow: &[f32; NR] = b[off..off + NR].try_into().expect("slice of NR values");
            for i in 0..ROWS {
                for j in 0..NR {
                    acc[i][j] = fmadd::<FMA>(av[i], brow[j], acc[i][j]);
                }
            }
        }
        acc
    }
}

/// Rows of the AVX-512 tile.
#[cfg(target_arch = "x86_64")]
const AVX512_MR: usize = 12;

/// The AVX-512F instance: each row's 32 columns are two zmm accumulators.
#[cfg(target_arch = "x86_64")]
struct Avx512Tile;

#[cfg(target_arch = "x86_64")]
impl TileKernel<32> for Avx512Tile {
    #[inline(always)]
    fn tile<const ROWS: usize, const AS: usize>(
        a: &[f32],
        b: &[f32],
        offsets: impl Iterator<Item = usize>,
        col: usize,
        init: [f32; ROWS],
    ) -> [[f32; 32]; ROWS] {
        // SAFETY: this impl is only instantiated by `gemm_avx512`, which runs on CPUs that
        // reported AVX-512F.
        unsafe { avx512_tile::<ROWS, AS>(a, b, offsets, col, init) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn avx512_tile<const ROWS: usize, const AS: usize>(
    a: &[f32],
    b: &[f32],
    offsets: impl Iterator<Item = usize>,
    col: usize,
    init: [f32; ROWS],
) -> [[f32; 32]; ROWS] {
    use std::arch::x86_64::*;
    let mut lo = [_mm512_setzero_ps(); ROWS];
    let mut hi = [_mm512_setzero_ps(); ROWS];
    for i in 0..ROWS {
        lo[i] = _mm512_set1_ps(init[i]);
        hi[i] = lo[i];
    }
    for (av, off) in a.chunks_exact(AS).zip(offsets) {
        let brow = &b[off + col..off + col + 32];
        // SAFETY: `brow` holds 32 floats: two unaligned 16-float loads.
        let (b0, b1) = unsafe { (_mm512_loadu_ps(brow.as_ptr()), _mm512_loadu_ps(brow.as_ptr().add(16))) };
        for i in 0..ROWS {
            let ai = _mm512_set1_ps(av[i]);
            lo[i] = _mm512_fmadd_ps(ai, b0, lo[i]);
            hi[i] = _mm512_fmadd_ps(ai, b1, hi[i]);
        }
    }
    let mut out = [[0f32; 32]; ROWS];
    for i in 0..ROWS {
        // SAFETY: each output row holds 32 floats.
        unsafe {
            _mm512_storeu_ps(out[i].as_mut_ptr(), lo[i]);
            _mm512_storeu_ps(out[i].as_mut_ptr().add(16), hi[i]);
        }
    }
    out
}

#[inline(always)]
fn gemm_tiles<const MR: usize, const NR: usize, T: TileKernel<NR>, R: BRows, D: Dest>(
    args: GemmArgs<R>,
    tail: &mut [f32],
    dest: &mut D,
) {
    let GemmArgs { a, m, k, b, rows, n, bias } = args;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // Empty sums: every output is its bias.
        for i in 0..m {
            let row = [bias.map_or(0.0, |bb| bb[i]); NR];
            for j0 in (0..n).step_by(NR) {
                dest.put(i, j0, &row[..(n - j0).min(NR)]);
            }
        }
        return;
    }
    let blocks = || a.chunks_exact(MR * k).take(m.div_ceil(MR)).enumerate();
    let init = |i0: usize| -> [f32; MR] {
        std::array::from_fn(|i| match bias {
            Some(bb) if i0 + i < m => bb[i0 + i],
            _ => 0.0,
        })
    };
    let full = n / NR * NR;
    let mut j0 = 0;
    while j0 < full {
        dest.panel(j0);
        for (blk, block) in blocks() {
            let i0 = blk * MR;
            tile::<MR, NR, T, D>(dest, block, b, rows.offsets(), j0, i0, m - i0, init(i0), j0, NR);
        }
        j0 += NR;
    }
    if full < n {
        // Last partial panel: copy it, zero-padded, so the kernel never reads past B.
        let valid = n - full;
        let t = &mut tail[..k * NR];
        for (dst, off) in t.chunks_exact_mut(NR).zip(rows.offsets()) {
            dst[..valid].copy_from_slice(&b[off + full..][..valid]);
            dst[valid..].fill(0.0);
        }
        let t = &tail[..k * NR];
        dest.panel(full);
        for (blk, block) in blocks() {
            let i0 = blk * MR;
            tile::<MR, NR, T, D>(dest, block, t, Ld { ld: NR, k }.offsets(), 0, i0, m - i0, init(i0), full, valid);
        }
    }
}

/// One register tile of a packed block against the panel at `col` of (b, offsets), handed to
/// `dest` as rows i0.. and columns j0..j0 + valid. A last block of at most 4 (or 8) rows runs a
/// 4-row (8-row) kernel: channel counts are multiples of 4 or 8, and MR may be 6 or 12.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<const MR: usize, const NR: usize, T: TileKernel<NR>, D: Dest>(
    dest: &mut D,
    block: &[f32],
    b: &[f32],
    offsets: impl Iterator<Item = usize>,
    col: usize,
    i0: usize,
    rows_left: usize,
    init: [f32; MR],
    j0: usize,
    valid: usize,
) {
    if MR > 4 && rows_left <= 4 {
        let acc = T::tile::<4, MR>(block, b, offsets, col, std::array::from_fn(|i| init[i]));
        put_rows(dest, &acc, i0, rows_left, j0, valid);
    } else if MR > 8 && rows_left <= 8 {
        let acc = T::tile::<8, MR>(block, b, offsets, col, std::array::from_fn(|i| init[i]));
        put_rows(dest, &acc, i0, rows_left, j0, valid);
    } else {
        let acc = T::tile::<MR, MR>(block, b, offsets, col, init);
        put_rows(dest, &acc, i0, rows_left.min(MR), j0, valid);
    }
}

/// Hands rows 0..count of a register tile to `dest` (row i0 + i, columns j0..j0 + valid).
#[inline(always)]
fn put_rows<const R: usize, const NR: usize, D: Dest>(
    dest: &mut D,
    acc: &[[f32; NR]; R],
    i0: usize,
    count: usize,
    j0: usize,
    valid: usize,
) {
    for (i, row) in acc.iter().enumerate().take(count) {
        if valid == NR {
            dest.put(i0 + i, j0, row);
        } else {
            dest.put(i0 + i, j0, &row[..valid]);
        }
    }
}

thread_local! {
    /// Per-thread scratch (packed operands, im2col tiles, GEMM tails): grows to the largest
    /// layer, then is reused, so a steady-state op on the calling thread does not allocate.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread index scratch (the implicit-GEMM row offsets, pooling tap tables), reused alike.
    static OFFSETS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `len` entries of the thread-local buffer `key`, grown as needed and kept
/// (contents unspecified).
fn with_reused<T: Copy + Default, R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, T::default());
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (the ops never do): use a private buffer.
        Err(_) => f(&mut vec![T::default(); len]),
    })
}

/// Runs `f` with `len` floats of this thread's scratch (contents unspecified).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_reused(&SCRATCH, len, f)
}

/// Runs `f` with `len` entries of this thread's index scratch (contents unspecified).
pub(crate) fn with_offsets<R>(len: usize, f: impl FnOnce(&mut [usize]) -> R) -> R {
    with_reused(&OFFSETS, len, f)
}
