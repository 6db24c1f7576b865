//! The activation memory plan never gives two values that are alive at the same time
//! overlapping bytes, keeps offsets aligned, and reuses memory along chains.

use kestrel::graph::plan::{plan_activation_memory, PLAN_ALIGN};
use kestrel::graph::{ElemType, Graph, Node};
use proptest::prelude::*;

/// A random DAG: each node reads one or two earlier values and writes one new value.
fn random_graph(sizes: &[usize], picks: &[(usize, usize)]) -> Graph {
    let mut g = Graph::default();
    let input = g.add_value("x", ElemType::F32, vec![sizes[0]]);
    g.inputs.push(input);
    for (i, (&size, &(a, b))) in sizes[1..].iter().zip(picks).enumerate() {
        let avail = g.values.len();
        let out = g.add_value(&format!("v{i}"), ElemType::F32, vec![size]);
        g.nodes.push(Node {
            name: format!("n{i}"),
            op: "Add".into(),
            inputs: vec![Some(a % avail), Some(b % avail)],
            outputs: vec![out],
            attrs: vec![],
        });
    }
    g.outputs.push(g.values.len() - 1);
    g
}

fn lifetimes(g: &Graph) -> Vec<(usize, usize)> {
    let mut life = vec![(usize::MAX, 0); g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &o in &n.outputs {
            life[o].0 = i;
            life[o].1 = life[o].1.max(i);
        }
        for &v in n.inputs.iter().flatten() {
            life[v].1 = life[v].1.max(i);
        }
    }
    for &o in &g.outputs {
        life[o].1 = g.nodes.len();
    }
    life
}

proptest! {
    #[test]
    fn live_values_never_share_bytes(
        sizes in proptest::collection::vec(1usize..5000, 2..40),
        picks in proptest::collection::vec((any::<usize>(), any::<usize>()), 40),
    ) {
        let g = random_graph(&sizes, &picks);
        let plan = plan_activation_memory(&g);
        let life = lifetimes(&g);
        let planned: Vec<usize> = (0..g.values.len()).filter(|&v| plan.offset(v).is_some()).collect();
        prop_assert_eq!(planned.len(), g.nodes.len(), "every node output is planned, the input is not");
        for &a in &planned {
            let (oa, sa) = (plan.offset(a).unwrap(), g.values[a].numel() * 4);
            prop_assert_eq!(oa % PLAN_ALIGN, 0);
            prop_assert!(oa + sa <= plan.arena_bytes);
            for &b in &planned {
                if a < b && life[a].0 <= life[b].1 && life[b].0 <= life[a].1 {
                    let (ob, sb) = (plan.offset(b).unwrap(), g.values[b].numel() * 4);
                    prop_assert!(oa + sa <= ob || ob + sb <= oa, "values {} and {} overlap", a, b);
                }
            }
        }
        prop_assert!(plan.arena_bytes <= plan.unshared_bytes);
    }
}

#[test]
fn a_chain_reuses_memory() {
    // x -> v0 -> v1 -> ... -> v9, each node reading only the previous value: two buffers suffice.
    let sizes = vec![1000; 11];
    let picks: Vec<(usize, usize)> = (0..10).map(|i| (i, i)).collect();
    let g = random_graph(&sizes, &picks);
    let plan = plan_activation_memory(&g);
    let one = (1000 * 4usize).next_multiple_of(PLAN_ALIGN);
    assert_eq!(plan.arena_bytes, 2 * one);
    assert_eq!(plan.unshared_bytes, 10 * one);
}
