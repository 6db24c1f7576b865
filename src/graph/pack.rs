//! Packing an imported graph into a .kpak: choose each weight's precision, quantize, and write
//! the graph with its constants as tensors.
//!
//! Conv and MatMul/Gemm weights are the quantizable ones; a conv weight [M, C/g, kH, kW] is
//! stored as the matrix [M, C/g*kH*kW] (the implicit-GEMM view), so every weight format applies.
//! By default the convolutions reading a graph input (each camera stream's stem) and the
//! convolutions that feed the outputs directly (a detector's final head convolutions) stay f32:
//! they are the most sensitive to quantization. So do weights whose rows are shorter than one
//! quantization group, which padding would make larger than f32.

use std::io::IsTerminal;

use super::{ConstData, Graph};
use crate::error::{Error, Result};
use crate::format::KpakWriter;
use crate::quant;
use crate::tensor::Scheme;

/// How to pack.
#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Precision of quantizable weights.
    pub weights: Scheme,
    /// Per-layer overrides: (node-name pattern with `*` wildcards, format), first match wins.
    pub layers: Vec<(String, Scheme)>,
    /// Keep the input convs and the output convs at f32 when the weights are below f32 (default true).
    pub protect_ends: bool,
    /// Metadata to carry (ONNX metadata_props and provenance).
    pub metadata: Vec<(String, String)>,
}

/// One weight's choice, for `kestrel info` and the pack summary.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerChoice {
    pub node: String,
    pub tensor: String,
    pub scheme: Scheme,
    pub why: &'static str,
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Parses `PATTERN=FORMAT`.
pub fn parse_layer_override(s: &str) -> Result<(String, Scheme)> {
    let (pat, fmt) = s
        .rsplit_once('=')
        .ok_or_else(|| Error::InvalidArgument { reason: format!("layer override '{s}' is not PATTERN=FORMAT") })?;
    Ok((pat.to_string(), Scheme::parse(fmt)?))
}

/// Convs at the ends of the graph: every conv reading a graph input (the stem of each camera
/// stream in a multi-input model), and every conv from
/// whose output a graph output is reachable without passing through another conv. A conv that
/// reads a Softmax is a fixed decoder (YOLO's distribution focal loss: the expectation over
/// bins), not a learned layer: the search looks through it to the convs behind it.
fn protected_convs(g: &Graph) -> Vec<usize> {
    let mut out: Vec<usize> = (0..g.nodes.len())
        .filter(|&i| g.nodes[i].op == "Conv" && g.nodes[i].inputs.iter().flatten().any(|v| g.inputs.contains(v)))
        .collect();
    // Walk backwards from the outputs through non-conv nodes.
    let producers = g.producers();
    let mut seen = vec![false; g.values.len()];
    let mut stack: Vec<usize> = g.outputs.clone();
    while let Some(v) = stack.pop() {
        if std::mem::replace(&mut seen[v], true) {
            continue;
        }
        if let Some(p) = producers[v] {
            let node = &g.nodes[p];
            if node.op == "Conv" {
                out.push(p);
                let reads_softmax =
                    node.inputs[0].and_then(|x| producers[x]).is_some_and(|q| g.nodes[q].op == "Softmax");
                if reads_softmax {
                    stack.push(node.inputs[0].unwrap_or(v));
                }
            } else {
                stack.extend(node.inputs.iter().flatten());
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Chooses each quantizable weight's format.
pub fn choose_precision(g: &Graph, opts: &PackOptions) -> Vec<LayerChoice> {
    let protected = if opts.protect_ends && opts.weights != Scheme::F32 { protected_convs(g) } else { vec![] };
    let mut choices = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let weight = match n.op.as_str() {
            "Conv" | "MatMul" | "Gemm" => n.inputs.get(1).copied().flatten(),
            _ => None,
        };
        let Some(w) = weight.filter(|&w| matches!(g.constant(w), Some(ConstData::F32(_)))) else { continue };
        // K, the length of a weight row: a row shorter than one quantization group would be
        // padded to the group, larger than f32 and no more accurate.
        let shape = &g.values[w].shape;
        let k = shape.iter().skip(1).product::<usize>();
        let (scheme, why) = match opts.layers.iter().find(|(p, _)| glob_match(p, &n.name)) {
            Some((_, s)) => (*s, "--layer override"),
            None if protected.contains(&i) => (Scheme::F32, "first conv / output conv kept at f32"),
            None if opts.weights.group().is_some_and(|group| k < group) => {
                (Scheme::F32, "rows shorter than a quantization group kept at f32")
            }
            None => (opts.weights, "--weights"),
        };
        choices.push(LayerChoice { node: n.name.clone(), tensor: g.values[w].name.clone(), scheme, why });
    }
    choices
}

/// What packing did.
#[derive(Clone, Debug, Default)]
pub struct PackReport {
    pub layers: Vec<LayerChoice>,
    pub f32_bytes: usize,
    pub packed_bytes: usize,
}

/// Writes `g` (after [`super::passes::optimize`]) into a .kpak writer with the chosen precisions.
pub fn pack(g: &Graph, opts: &PackOptions) -> Result<(KpakWriter, PackReport)> {
    let mut w = KpakWriter::new();
    for (k, v) in &opts.metadata {
        w.metadata(k, v)?;
    }
    let layers = choose_precision(g, opts);
    let mut report = PackReport { layers: layers.clone(), ..PackReport::default() };
    let progress = std::io::stderr().is_terminal();
    let mut ids: Vec<usize> = g.constants.keys().copied().collect();
    ids.sort_unstable();
    let total = ids.len();
    for (done, id) in ids.into_iter().enumerate() {
        let Some(ConstData::F32(data)) = g.constant(id) else { continue };
        let v = &g.values[id];
        report.f32_bytes += data.len() * 4;
        match layers.iter().find(|l| l.tensor == v.name) {
            Some(choice) if v.shape.len() >= 2 => {
                // The matrix view: rows = output channels, K = everything else.
                let n = v.shape[0];
                let k = v.numel() / n.max(1);
                if progress {
                    eprint!("\r[{}/{total}] {} -> {}          ", done + 1, v.name, choice.scheme.label());
                }
                let packed = quant::quantize(data, n, k, choice.scheme).map_err(|e| Error::InvalidTensor {
                    tensor: v.name.clone(),
                    reason: format!("cannot be quantized to {}: {e}", choice.scheme.label()),
                })?;
                report.packed_bytes += packed.view().weight_bytes();
                w.add_matrix(&v.name, &packed)?;
            }
            _ => {
                report.packed_bytes += data.len() * 4;
                w.add_f32(&v.name, &v.shape, data)?;
            }
        }
    }
    if progress {
        eprintln!();
    }
    w.graph(g)?;
    Ok((w, report))
}
