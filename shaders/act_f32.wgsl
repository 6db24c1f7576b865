// Activations in f32, read as vec4 (buffers are padded to whole vec4s with zeros).

@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;

fn x4(i: u32) -> vec4<f32> {
    return x[i];
}

fn x_at(i: u32) -> f32 {
    return x[i / 4u][i % 4u];
}
