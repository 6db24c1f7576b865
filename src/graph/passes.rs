//! Rewrites applied after import: drop Identity, fold BatchNormalization into the preceding
//! convolution, fuse activations into convolutions (including the x * sigmoid(x) SiLU pattern),
//! and remove what no output needs. Each rewrite keeps the graph's meaning exactly (up to float
//! rounding in the folded weights). Gemm weights stored [K, N] (transB = 0) are rewritten to
//! [N, K] with transB = 1: every quantizer groups along a row, and a linear layer's groups must
//! run along K, the sum's axis, as they do for convs.

use super::{Attr, ConstData, ElemType, Graph, Node, ValueId};
use crate::error::{Error, Result};

/// What the passes changed, for `kestrel info` and pack progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub identities_removed: usize,
    pub batchnorms_folded: usize,
    pub activations_fused: usize,
    pub silu_patterns: usize,
    pub gemm_weights_transposed: usize,
    pub dead_nodes_removed: usize,
}

/// Runs every pass in order.
pub fn optimize(g: &mut Graph) -> Result<PassReport> {
    let mut r = PassReport { identities_removed: remove_identities(g), ..PassReport::default() };
    r.batchnorms_folded = fold_batchnorms(g)?;
    let (fused, silu) = fuse_activations(g);
    r.activations_fused = fused;
    r.silu_patterns = silu;
    r.gemm_weights_transposed = gemm_weights_to_rows(g)?;
    r.dead_nodes_removed = eliminate_dead(g);
    Ok(r)
}

/// Replaces every read of `from` with `to`.
fn rewire(g: &mut Graph, from: ValueId, to: ValueId) {
    for n in &mut g.nodes {
        for i in n.inputs.iter_mut().flatten() {
            if *i == from {
                *i = to;
            }
        }
    }
}

fn remove_identities(g: &mut Graph) -> usize {
    let mut removed = 0;
    let mut i = 0;
    while i < g.nodes.len() {
        let n = &g.nodes[i];
        if n.op == "Identity" && !g.outputs.contains(&n.outputs[0]) {
            if let Some(src) = n.inputs.first().copied().flatten() {
                let out = n.outputs[0];
                g.nodes.remove(i);
                rewire(g, out, src);
                removed += 1;
                continue;
            }
        }
        i += 1;
    }
    removed
}

/// Indices of the nodes reading `v`.
fn readers(g: &Graph, v: ValueId) -> Vec<usize> {
    g.nodes.iter().enumerate().filter(|(_, n)| n.inputs.contains(&Some(v))).map(|(i, _)| i).collect()
}

fn producer(g: &Graph, v: ValueId) -> Option<usize> {
    g.nodes.iter().position(|n| n.outputs.contains(&v))
}

fn fold_batchnorms(g: &mut Graph) -> Result<usize> {
    let mut folded = 0;
    let mut i = 0;
    while i < g.nodes.len() {
        if g.nodes[i].op != "BatchNormalization" || g.nodes[i].outputs.len() != 1 {
            i += 1;
            continue;
        }
        let bn = g.nodes[i].clone();
        let x = bn.input(0)?;
        let conv_at = producer(g, x);
        let foldable = conv_at.is_some_and(|c| {
            g.nodes[c].op == "Conv"
                && g.nodes[c].attr("activation").is_none()
                && readers(g, x).len() == 1
                && !g.outputs.contains(&x)
                && g.constant(g.nodes[c].inputs[1].unwrap_or(usize::MAX)).is_some()
        });
        let Some(c) = conv_at.filter(|_| foldable) else {
            i += 1;
            continue;
        };
        let eps = bn.float("epsilon", 1e-5)? as f64;
        let (scale, shift, mean, var) =
            (g.const_f32(&bn, 1)?, g.const_f32(&bn, 2)?, g.const_f32(&bn, 3)?, g.const_f32(&bn, 4)?);
        let conv = g.nodes[c].clone();
        let w = g.const_f32(&conv, 1)?;
        let m = g.values[conv.input(1)?].shape[0];
        if [scale.len(), shift.len(), mean.len(), var.len()].iter().any(|&l| l != m) {
            return Err(Error::GraphNode {
                node: bn.name.clone(),
                op: bn.op.clone(),
                reason: format!("parameters do not have {m} channels"),
            });
        }
        let per = w.len() / m;
        let bias: Vec<f32> = match conv.inputs.get(2).copied().flatten() {
            Some(_) => g.const_f32(&conv, 2)?.to_vec(),
            None => vec![0.0; m],
        };
        let k: Vec<f64> = (0..m).map(|o| scale[o] as f64 / (var[o] as f64 + eps).sqrt()).collect();
        let new_w: Vec<f32> = w.iter().enumerate().map(|(j, &v)| (v as f64 * k[j / per]) as f32).collect();
        let new_b: Vec<f32> =
            (0..m).map(|o| ((bias[o] as f64 - mean[o] as f64) * k[o] + shift[o] as f64) as f32).collect();
        // New constants: the originals may be shared with other nodes.
        let w_shape = g.values[conv.input(1)?].shape.clone();
        let w_id = g.add_value(&format!("{}.weight_bn", conv.name), ElemType::F32, w_shape);
        g.constants.insert(w_id, ConstData::F32(new_w));
        let b_id = g.add_value(&format!("{}.bias_bn", conv.name), ElemType::F32, vec![m]);
        g.constants.insert(b_id, ConstData::F32(new_b));
        let conv_node = &mut g.nodes[c];
        conv_node.inputs = vec![conv_node.inputs[0], Some(w_id), Some(b_id)];
        conv_node.outputs = bn.outputs.clone();
        g.nodes.remove(i);
        folded += 1;
    }
    Ok(folded)
}

/// Stores the constant weights of `Gemm` nodes with transB = 0 as their transpose [N, K] and
/// sets transB = 1 (exact: a transpose moves values, it does not round them).
fn gemm_weights_to_rows(g: &mut Graph) -> Result<usize> {
    let mut rewritten = 0;
    for i in 0..g.nodes.len() {
        let node = &g.nodes[i];
        if node.op != "Gemm" || node.int("transB", 0)? != 0 {
            continue;
        }
        let Some(w) = node.inputs.get(1).copied().flatten() else { continue };
        let (Some(ConstData::F32(data)), &[k, n]) = (g.constant(w), &g.values[w].shape[..]) else { continue };
        if data.len() != k * n {
            continue;
        }
        let t: Vec<f32> = (0..n * k).map(|idx| data[(idx % k) * n + idx / k]).collect();
        // A new constant: the original may be shared with another node.
        let t_id = g.add_value(&format!("{}.weight_nk", node.name), ElemType::F32, vec![n, k]);
        g.constants.insert(t_id, ConstData::F32(t));
        let node = &mut g.nodes[i];
        node.inputs[1] = Some(t_id);
        node.set_attr("transB", Attr::Int(1));
        rewritten += 1;
    }
    Ok(rewritten)
}

/// Fuses Relu / Sigmoid / SiLU into the Conv producing their input, and turns remaining
/// x * sigmoid(x) pairs into one `Silu` node. Returns (fused into convs, SiLU patterns).
fn fuse_activations(g: &mut Graph) -> (usize, usize) {
    let (mut fused, mut silu) = (0, 0);
    let mut i = 0;
    while i < g.nodes.len() {
        let y = match g.nodes[i].outputs.as_slice() {
            [y] if !g.outputs.contains(y) => *y,
            _ => {
                i += 1;
                continue;
            }
        };
        let users = readers(g, y);
        let is_conv = g.nodes[i].op == "Conv" && g.nodes[i].attr("activation").is_none();
        // x * sigmoid(x): a Sigmoid of y whose only reader is a Mul of y and it.
        let silu_pair = (users.len() == 2).then(|| {
            let (a, b) = (users[0], users[1]);
            let (s, mul) = if g.nodes[a].op == "Sigmoid" { (a, b) } else { (b, a) };
            let sig_out = g.nodes[s].outputs[0];
            let ok = g.nodes[s].op == "Sigmoid"
                && g.nodes[mul].op == "Mul"
                && readers(g, sig_out) == [mul]
                && !g.outputs.contains(&sig_out)
                && (g.nodes[mul].inputs == [Some(y), Some(sig_out)] || g.nodes[mul].inputs == [Some(sig_out), Some(y)]);
            ok.then_some((s, mul))
        });
        if let Some(Some((s, mul))) = silu_pair {
            let out = g.nodes[mul].outputs.clone();
            if is_conv {
                g.nodes[i].set_attr("activation", Attr::Str("silu".into()));
                g.nodes[i].outputs = out;
                fused += 1;
            } else {
                let name = g.nodes[mul].name.clone();
                g.nodes.insert(
                    i + 1,
                    Node { name, op: "Silu".into(), inputs: vec![Some(y)], outputs: out, attrs: vec![] },
                );
                silu += 1;
            }
            let (s, mul) = if s > mul { (s, mul) } else { (mul, s) };
            let shift = usize::from(!is_conv);
            g.nodes.remove(s + shift);
            g.nodes.remove(mul + shift);
        } else if is_conv && users.len() == 1 && matches!(g.nodes[users[0]].op.as_str(), "Relu" | "Sigmoid") {
            let u = users[0];
            let act = g.nodes[u].op.to_lowercase();
            let out = g.nodes[u].outputs.clone();
            g.nodes[i].set_attr("activation", Attr::Str(act));
            g.nodes[i].outputs = out;
            g.nodes.remove(u);
            fused += 1;
        }
        i += 1;
    }
    (fused, silu)
}

/// Removes nodes whose outputs nothing reads, and constants nothing reads.
fn eliminate_dead(g: &mut Graph) -> usize {
    let before = g.nodes.len();
    loop {
        let uses = g.use_counts();
        let n = g.nodes.len();
        g.nodes.retain(|node| node.outputs.iter().any(|&o| uses[o] > 0));
        if g.nodes.len() == n {
            break;
        }
    }
    let uses = g.use_counts();
    g.constants.retain(|&id, _| uses[id] > 0);
    before - g.nodes.len()
}
