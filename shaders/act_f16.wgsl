// Activations in f16 (SHADER_F16): half the activation traffic; arithmetic stays in f32.

@group(0) @binding(3) var<storage, read> x: array<vec4<f16>>;

fn x4(i: u32) -> vec4<f32> {
    return vec4<f32>(x[i]);
}

fn x_at(i: u32) -> f32 {
    return f32(x[i / 4u][i % 4u]);
}
