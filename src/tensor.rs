//! Weight formats and their byte layouts: the one place that knows how many words a row of each
//! format takes. The .kpak reader, the quantizers, the CPU kernels and the WGSL shaders all read
//! the same layout (docs/FORMAT.md, "Weight formats").
//!
//! Every component is a sequence of little-endian `u32` words, so it can be bound to a shader as
//! `array<u32>` straight from the file mapping.

use crate::error::{Error, Result};

/// Weight format code as stored in the tensor table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FormatCode {
    F32 = 1,
    F16 = 2,
    Q8 = 3,
    Q4 = 4,
    Fp4 = 5,
}

impl FormatCode {
    pub fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::F32,
            2 => Self::F16,
            3 => Self::Q8,
            4 => Self::Q4,
            5 => Self::Fp4,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8 => "q8",
            Self::Q4 => "q4",
            Self::Fp4 => "fp4",
        }
    }
}

/// How an FP4 group scale is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fp4Scale {
    /// One byte per group: the exponent of a power of two, bias 127 (OCP MX "E8M0").
    E8M0,
    /// One IEEE binary16 per group.
    F16,
}

/// Group sizes along K that the int4 and fp4 formats accept.
pub const GROUP_SIZES: [u32; 3] = [32, 64, 128];

/// A weight format with its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    F32,
    F16,
    /// int8, symmetric, one f32 scale per output row.
    Q8,
    /// int4 codes 0..15 in groups along K, one packed f16 pair (s, -z*s) per group.
    Q4 {
        group: u32,
        symmetric: bool,
    },
    /// E2M1 codes in groups along K with one scale per group.
    Fp4 {
        group: u32,
        scale: Fp4Scale,
    },
}

/// Which part of a tensor a component holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ComponentKind {
    /// f32 / f16 values.
    Data = 1,
    /// Packed integer or fp4 codes.
    Quants = 2,
    /// Per-row (q8) or per-group (fp4) scales.
    Scales = 3,
    /// q4 group parameters: packed f16 pairs (s, -z*s).
    Params = 4,
    /// LoRC factor U, f16 [n, r].
    LorcU = 5,
    /// LoRC factor V^T, f16 [r, k].
    LorcV = 6,
}

impl ComponentKind {
    pub fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Data,
            2 => Self::Quants,
            3 => Self::Scales,
            4 => Self::Params,
            5 => Self::LorcU,
            6 => Self::LorcV,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Quants => "quants",
            Self::Scales => "scales",
            Self::Params => "params",
            Self::LorcU => "lorc_u",
            Self::LorcV => "lorc_v",
        }
    }
}

const fn div_ceil(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

impl Scheme {
    pub fn code(self) -> FormatCode {
        match self {
            Scheme::F32 => FormatCode::F32,
            Scheme::F16 => FormatCode::F16,
            Scheme::Q8 => FormatCode::Q8,
            Scheme::Q4 { .. } => FormatCode::Q4,
            Scheme::Fp4 { .. } => FormatCode::Fp4,
        }
    }

    /// Short name as the CLI spells it (`q4g128`, `fp4-e8m0`, ...).
    pub fn label(self) -> String {
        match self {
            Scheme::F32 => "f32".into(),
            Scheme::F16 => "f16".into(),
            Scheme::Q8 => "q8".into(),
            Scheme::Q4 { group, symmetric } => {
                format!("q4g{group}{}", if symmetric { "-sym" } else { "" })
            }
            Scheme::Fp4 { group, scale: Fp4Scale::E8M0 } => format!("fp4g{group}-e8m0"),
            Scheme::Fp4 { group, scale: Fp4Scale::F16 } => format!("fp4g{group}-f16"),
        }
    }

    /// Parses the CLI names: f32, f16, q8, q4 (= q4g128), q4g32/64/128 (+ `-sym`),
    /// fp4 (= MXFP4: group 32, E8M0 scale), fp4g32/64/128-f16.
    pub fn parse(name: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument {
            reason: format!(
                "unknown weight format '{name}' (expected f32, f16, q8, q4, q4g32, q4g64, q4g128, fp4, fp4gNN-f16)"
            ),
        };
        let scheme = match name {
            "f32" => Scheme::F32,
            "f16" => Scheme::F16,
            "q8" => Scheme::Q8,
            "q4" => Scheme::Q4 { group: 128, symmetric: false },
            "fp4" | "mxfp4" => Scheme::Fp4 { group: 32, scale: Fp4Scale::E8M0 },
            _ => {
                if let Some(rest) = name.strip_prefix("q4g") {
                    let (g, symmetric) = match rest.strip_suffix("-sym") {
                        Some(g) => (g, true),
                        None => (rest, false),
                    };
                    Scheme::Q4 { group: g.parse().map_err(|_| bad())?, symmetric }
                } else if let Some(rest) = name.strip_prefix("fp4g") {
                    let (g, scale) = if let Some(g) = rest.strip_suffix("-f16") {
                        (g, Fp4Scale::F16)
                    } else if let Some(g) = rest.strip_suffix("-e8m0") {
                        (g, Fp4Scale::E8M0)
                    } else {
                        (rest, Fp4Scale::F16)
                    };
                    Scheme::Fp4 { group: g.parse().map_err(|_| bad())?, scale }
                } else {
                    return Err(bad());
                }
            }
        };
        scheme.validate().map(|_| scheme)
    }

    /// Checks the parameters (group sizes; MXFP4 is group 32 only).
    pub fn validate(self) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidQuantization { reason });
        match self {
            Scheme::Q4 { group, .. } | Scheme::Fp4 { group, .. } if !GROUP_SIZES.contains(&group) => {
                bad(format!("group size {group} is not one of 32, 64, 128"))
            }
            Scheme::Fp4 { group, scale: Fp4Scale::E8M0 } if group != 32 => {
                bad(format!("E8M0 (MXFP4) scales use group 32, not {group}"))
            }
            _ => Ok(()),
        }
    }

    /// Elements packed in one u32 word of the main component.
    pub fn elems_per_word(self) -> usize {
        match self {
            Scheme::F32 => 1,
            Scheme::F16 => 2,
            Scheme::Q8 => 4,
            Scheme::Q4 { .. } | Scheme::Fp4 { .. } => 8,
        }
    }

    /// Group size along K, or the padded row for formats without groups.
    pub fn group(self) -> Option<usize> {
        match self {
            Scheme::Q4 { group, .. } | Scheme::Fp4 { group, .. } => Some(group as usize),
            _ => None,
        }
    }

    /// K rounded up to what one row of the main component holds (padding elements are zero codes).
    pub fn padded_k(self, k: usize) -> usize {
        match self.group() {
            Some(g) => div_ceil(k, g) * g,
            None => div_ceil(k, self.elems_per_word()) * self.elems_per_word(),
        }
    }

    /// Words per row of the main component (data or quants).
    pub fn row_words(self, k: usize) -> usize {
        self.padded_k(k) / self.elems_per_word()
    }

    /// Number of groups along K (1 for per-row formats).
    pub fn groups(self, k: usize) -> usize {
        match self.group() {
            Some(g) => div_ceil(k, g),
            None => 1,
        }
    }

    /// Words per row of the auxiliary component (scales or params), 0 when there is none.
    pub fn aux_row_words(self, k: usize) -> usize {
        match self {
            Scheme::F32 | Scheme::F16 => 0,
            Scheme::Q8 => 1,
            Scheme::Q4 { .. } => self.groups(k),
            Scheme::Fp4 { scale: Fp4Scale::E8M0, .. } => div_ceil(self.groups(k), 4),
            Scheme::Fp4 { scale: Fp4Scale::F16, .. } => div_ceil(self.groups(k), 2),
        }
    }

    /// Component kinds in file order: main, then auxiliary if any.
    pub fn components(self) -> &'static [ComponentKind] {
        match self {
            Scheme::F32 | Scheme::F16 => &[ComponentKind::Data],
            Scheme::Q8 | Scheme::Fp4 { .. } => &[ComponentKind::Quants, ComponentKind::Scales],
            Scheme::Q4 { .. } => &[ComponentKind::Quants, ComponentKind::Params],
        }
    }

    /// True for formats that store integer or fp4 codes.
    pub fn is_quantized(self) -> bool {
        !matches!(self, Scheme::F32 | Scheme::F16)
    }

    /// Bytes of weights, scales and parameters for an [n, k] matrix (what a GEMV must stream).
    pub fn matrix_bytes(self, n: usize, k: usize) -> usize {
        n * (self.row_words(k) + self.aux_row_words(k)) * 4
    }
}

/// Borrowed LoRC factors: y += U (V^T x), both f16 in the F16 layout.
#[derive(Clone, Copy, Debug)]
pub struct LorcView<'a> {
    pub rank: usize,
    /// U, [n, rank] in the F16 layout.
    pub u: &'a [u32],
    /// V^T, [rank, k] in the F16 layout.
    pub v: &'a [u32],
}

/// A borrowed [n, k] weight matrix in any format: from a file mapping or from a [`PackedMatrix`].
#[derive(Clone, Copy, Debug)]
pub struct MatrixView<'a> {
    pub n: usize,
    pub k: usize,
    pub scheme: Scheme,
    /// Data (f32/f16) or quants, `n * scheme.row_words(k)` words.
    pub main: &'a [u32],
    /// Scales or params, `n * scheme.aux_row_words(k)` words; empty for f32/f16.
    pub aux: &'a [u32],
    pub lorc: Option<LorcView<'a>>,
}

impl<'a> MatrixView<'a> {
    /// Builds a view and checks every length against the shape.
    pub fn new(
        n: usize,
        k: usize,
        scheme: Scheme,
        main: &'a [u32],
        aux: &'a [u32],
        lorc: Option<LorcView<'a>>,
    ) -> Result<Self> {
        scheme.validate()?;
        if n == 0 || k == 0 {
            return Err(Error::shape("matrix", "n > 0 and k > 0", format!("[{n}, {k}]")));
        }
        let check = |what: &'static str, expected: usize, actual: usize| {
            if expected == actual {
                Ok(())
            } else {
                Err(Error::shape(what, format!("{expected} words"), format!("{actual} words")))
            }
        };
        check("matrix main component", n * scheme.row_words(k), main.len())?;
        check("matrix aux component", n * scheme.aux_row_words(k), aux.len())?;
        if let Some(l) = lorc {
            check("LoRC U", n * Scheme::F16.row_words(l.rank), l.u.len())?;
            check("LoRC V", l.rank * Scheme::F16.row_words(k), l.v.len())?;
        }
        Ok(Self { n, k, scheme, main, aux, lorc })
    }

    /// Main-component words of row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> &'a [u32] {
        let w = self.scheme.row_words(self.k);
        &self.main[r * w..(r + 1) * w]
    }

    /// Aux-component words of row `r`.
    #[inline]
    pub fn aux_row(&self, r: usize) -> &'a [u32] {
        let w = self.scheme.aux_row_words(self.k);
        &self.aux[r * w..(r + 1) * w]
    }

    /// Bytes a GEMV must read for the weights (LoRC factors included).
    pub fn weight_bytes(&self) -> usize {
        let lorc = self.lorc.map_or(0, |l| (l.u.len() + l.v.len()) * 4);
        self.scheme.matrix_bytes(self.n, self.k) + lorc
    }

    /// LoRC factors as two plain F16 matrices: V^T is [rank, k], U is [n, rank].
    pub fn lorc_matrices(&self) -> Option<(MatrixView<'a>, MatrixView<'a>)> {
        self.lorc.map(|l| {
            let v = MatrixView { n: l.rank, k: self.k, scheme: Scheme::F16, main: l.v, aux: &[], lorc: None };
            let u = MatrixView { n: self.n, k: l.rank, scheme: Scheme::F16, main: l.u, aux: &[], lorc: None };
            (v, u)
        })
    }
}

/// Owned LoRC factors (see [`LorcView`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LorcFactors {
    pub rank: usize,
    pub u: Vec<u32>,
    pub v: Vec<u32>,
}

/// An owned [n, k] weight matrix, as the quantizers produce it.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedMatrix {
    pub n: usize,
    pub k: usize,
    pub scheme: Scheme,
    pub main: Vec<u32>,
    pub aux: Vec<u32>,
    pub lorc: Option<LorcFactors>,
    /// Marks a q8 matrix as an int8 master that may be bit-switched to fewer bits at load.
    pub bitswitch_master: bool,
}

impl PackedMatrix {
    pub fn view(&self) -> MatrixView<'_> {
        MatrixView {
            n: self.n,
            k: self.k,
            scheme: self.scheme,
            main: &self.main,
            aux: &self.aux,
            lorc: self.lorc.as_ref().map(|l| LorcView { rank: l.rank, u: &l.u, v: &l.v }),
        }
    }
}

/// Packs f32 values into the F16 layout: rows of `k` values, each row padded to whole words.
pub fn pack_f16_rows(values: &[f32], k: usize) -> Vec<u32> {
    let rows = values.len() / k;
    let row_words = Scheme::F16.row_words(k);
    let mut out = vec![0u32; rows * row_words];
    for (r, row) in values.chunks_exact(k).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            let bits = half::f16::from_f32(v).to_bits() as u32;
            out[r * row_words + i / 2] |= bits << (16 * (i % 2));
        }
    }
    out
}

/// Element `i` of a row in the F16 layout.
#[inline]
pub fn f16_at(row: &[u32], i: usize) -> f32 {
    half::f16::from_bits((row[i / 2] >> (16 * (i % 2))) as u16).to_f32()
}
