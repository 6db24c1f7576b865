//! Activation memory planning: every intermediate value gets an offset in one arena, and values
//! whose lifetimes do not overlap share bytes. The arena is allocated once at load, so running
//! the graph allocates nothing.
//!
//! Placement is TFLite's "greedy by size": values in order of decreasing size, each at the lowest
//! offset that does not collide with an already placed value alive at the same time.

use super::{Graph, ValueId};

/// Offsets are multiples of this, so each value can be bound to a GPU shader on its own
/// (`min_storage_buffer_offset_alignment` is at most 256).
pub const PLAN_ALIGN: usize = 256;

/// Where each planned value lives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Byte offset in the arena for each value id; None for inputs and constants.
    pub offsets: Vec<Option<usize>>,
    /// Arena size: the peak activation memory.
    pub arena_bytes: usize,
    /// What the arena would be without reuse (the sum of all planned values).
    pub unshared_bytes: usize,
}

impl MemoryPlan {
    pub fn offset(&self, v: ValueId) -> Option<usize> {
        self.offsets.get(v).copied().flatten()
    }
}

/// Plans the activation arena of `g` (f32 values, 4 bytes per element).
pub fn plan_activation_memory(g: &Graph) -> MemoryPlan {
    let n_values = g.values.len();
    // Lifetime of each produced value: [producing node, last reading node]; outputs live to the end.
    let mut first = vec![usize::MAX; n_values];
    let mut last = vec![0usize; n_values];
    for (i, node) in g.nodes.iter().enumerate() {
        for &o in &node.outputs {
            first[o] = first[o].min(i);
            last[o] = last[o].max(i);
        }
        for &inp in node.inputs.iter().flatten() {
            last[inp] = last[inp].max(i);
        }
    }
    for &o in &g.outputs {
        last[o] = g.nodes.len();
    }
    let mut planned: Vec<(ValueId, usize)> = (0..n_values)
        .filter(|&v| first[v] != usize::MAX && g.constant(v).is_none())
        .map(|v| (v, (g.values[v].numel() * 4).next_multiple_of(PLAN_ALIGN).max(PLAN_ALIGN)))
        .collect();
    planned.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));

    let mut offsets = vec![None; n_values];
    let mut placed: Vec<(usize, usize, ValueId)> = Vec::new(); // (offset, size, value)
    let mut arena = 0;
    for &(v, size) in &planned {
        let overlaps = |o: ValueId| first[v] <= last[o] && first[o] <= last[v];
        let mut conflicts: Vec<(usize, usize)> =
            placed.iter().filter(|&&(_, _, o)| overlaps(o)).map(|&(off, sz, _)| (off, sz)).collect();
        conflicts.sort_unstable();
        let mut offset = 0;
        for (off, sz) in conflicts {
            if offset + size <= off {
                break;
            }
            offset = offset.max(off + sz);
        }
        placed.push((offset, size, v));
        offsets[v] = Some(offset);
        arena = arena.max(offset + size);
    }
    MemoryPlan { offsets, arena_bytes: arena, unshared_bytes: planned.iter().map(|p| p.1).sum() }
}
