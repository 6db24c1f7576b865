//! ProAct clipping thresholds on a graph (PAPERS.md section 10).
//!
//! A bit flip in a weight's exponent or sign can turn one activation into a huge value that
//! swamps every layer after it. ProAct bounds each ReLU (here also SiLU, YOLOv8's activation):
//! an output above the threshold T is set to zero, as a fault rather than a signal. The
//! thresholds are hybrid: one per layer everywhere, and one per channel on the last activation
//! layer (a detection head has one per branch: the activated layers that feed an un-activated
//! output conv). They live on the nodes as attributes, so both executors apply them:
//! - [`ATTR_LAYER`] (`clip`, a float): the layer-wise threshold, on every clippable node;
//! - [`ATTR_CHANNELS`] (`clip_channels`, floats, one per output channel): on the last layers.
//!
//! `kestrel calibrate-clip` sets them from activation statistics (the largest value each layer
//! and channel produces on a calibration set, Ranger's bound and ProAct's starting point; the
//! paper then trains T down, which needs gradients this runtime does not have). A [`ClipMode`]
//! chooses which thresholds a run uses.

use super::{Attr, Graph, Node};

/// The layer-wise threshold attribute.
pub const ATTR_LAYER: &str = "clip";
/// The channel-wise threshold attribute (last activation layers).
pub const ATTR_CHANNELS: &str = "clip_channels";

/// Which stored thresholds a run applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipMode {
    /// No clipping (the thresholds are ignored).
    None,
    /// The layer-wise threshold everywhere, the last layers included.
    Layer,
    /// Layer-wise everywhere, channel-wise on the last layers (ProAct's hybrid).
    Hybrid,
}

impl ClipMode {
    pub fn parse(s: &str) -> Option<ClipMode> {
        match s {
            "none" => Some(ClipMode::None),
            "layer" => Some(ClipMode::Layer),
            "hybrid" => Some(ClipMode::Hybrid),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ClipMode::None => "none",
            ClipMode::Layer => "layer",
            ClipMode::Hybrid => "hybrid",
        }
    }
}

/// Whether `node` ends in a ReLU or SiLU (fused into a Conv or Gemm, or on its own).
pub fn is_clippable(node: &Node) -> bool {
    match node.op.as_str() {
        "Relu" | "Silu" => true,
        "Conv" | "Gemm" => matches!(node.attr("activation"), Some(Attr::Str(a)) if a == "relu" || a == "silu"),
        _ => false,
    }
}

/// Indices of the last activation layers: clippable nodes whose output is read by a Conv or
/// Gemm without an activation (a head's output conv) or is a graph output.
pub fn last_layers(g: &Graph) -> Vec<usize> {
    let unactivated_reader = |v: usize| {
        g.outputs.contains(&v)
            || g.nodes.iter().any(|n| {
                matches!(n.op.as_str(), "Conv" | "Gemm")
                    && !is_clippable(n)
                    && n.inputs.first().copied().flatten() == Some(v)
            })
    };
    (0..g.nodes.len())
        .filter(|&i| is_clippable(&g.nodes[i]) && g.nodes[i].outputs.first().is_some_and(|&v| unactivated_reader(v)))
        .collect()
}

/// Stores thresholds from per-channel maxima (node name, max per output channel): the
/// layer-wise threshold on every clippable node that has statistics, channel-wise ones on the
/// last layers. Returns (layer-wise, channel-wise) counts.
pub fn store(g: &mut Graph, maxima: &[(String, Vec<f32>)]) -> (usize, usize) {
    let last = last_layers(g);
    let (mut layers, mut channels) = (0, 0);
    for (i, node) in g.nodes.iter_mut().enumerate() {
        if !is_clippable(node) {
            continue;
        }
        let Some((_, m)) = maxima.iter().find(|(name, _)| *name == node.name) else { continue };
        // A layer that never fired positive keeps a zero bound: anything it puts out under a
        // fault is then suppressed, which is what ProAct's bound does too.
        let t = m.iter().copied().fold(0.0f32, f32::max);
        node.set_attr(ATTR_LAYER, Attr::Float(t));
        layers += 1;
        if last.contains(&i) {
            node.set_attr(ATTR_CHANNELS, Attr::Floats(m.iter().map(|v| v.max(0.0)).collect()));
            channels += 1;
        }
    }
    (layers, channels)
}

/// Keeps the thresholds `mode` uses and drops the others (in a copy the run builds from).
pub fn apply_mode(g: &mut Graph, mode: ClipMode) {
    for node in &mut g.nodes {
        let keep: &[&str] = match mode {
            ClipMode::None => &[],
            ClipMode::Layer => &[ATTR_LAYER],
            ClipMode::Hybrid => &[ATTR_LAYER, ATTR_CHANNELS],
        };
        node.attrs.retain(|(k, _)| !(k == ATTR_LAYER || k == ATTR_CHANNELS) || keep.contains(&k.as_str()));
    }
}

/// (nodes with a layer-wise threshold, nodes with channel-wise ones).
pub fn count(g: &Graph) -> (usize, usize) {
    let has = |n: &Node, a: &str| n.attr(a).is_some();
    (g.nodes.iter().filter(|n| has(n, ATTR_LAYER)).count(), g.nodes.iter().filter(|n| has(n, ATTR_CHANNELS)).count())
}
