// Portable reduction of ROWS partial sums across the workgroup through workgroup memory.

struct Lane {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}

var<workgroup> red: array<f32, WG * ROWS>;

// Returns, on threads lid < ROWS, the workgroup's total for row `lid`.
fn reduce_rows(lane: Lane, acc: array<f32, ROWS>) -> f32 {
    for (var r = 0u; r < ROWS; r++) {
        red[r * WG + lane.lid] = acc[r];
    }
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lane.lid < s) {
            for (var r = 0u; r < ROWS; r++) {
                red[r * WG + lane.lid] += red[r * WG + lane.lid + s];
            }
        }
        workgroupBarrier();
    }
    var total = 0.0;
    if (lane.lid < ROWS) {
        total = red[lane.lid * WG];
    }
    return total;
}
