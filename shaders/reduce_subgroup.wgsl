// Reduction with subgroup operations: one subgroupAdd per row, then one partial per subgroup
// through workgroup memory. Works for any subgroup size from 4 to 256.

struct Lane {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
}

const MAX_SUBGROUPS: u32 = 64u; // WG / smallest subgroup size (4)
var<workgroup> red: array<f32, MAX_SUBGROUPS * ROWS>;

fn reduce_rows(lane: Lane, acc: array<f32, ROWS>) -> f32 {
    let sg = lane.lid / lane.sg_size;
    for (var r = 0u; r < ROWS; r++) {
        let s = subgroupAdd(acc[r]);
        if (lane.sg_lane == 0u) {
            red[r * MAX_SUBGROUPS + sg] = s;
        }
    }
    workgroupBarrier();
    var total = 0.0;
    if (lane.lid < ROWS) {
        let groups = WG / lane.sg_size;
        for (var i = 0u; i < groups; i++) {
            total += red[lane.lid * MAX_SUBGROUPS + i];
        }
    }
    return total;
}
