//! Every WGSL file is parsed and validated by naga in plain `cargo test`, before any GPU is
//! involved: each kernel module (prelude + reduction + format + GEMM tile), for both reduction
//! variants, and the copy kernel. A .wgsl file that no validated module includes fails the test.

use kestrel::backend::gpu::shaders::{self, Activation, KernelVariant, Reduction, GEMV_ROW_CHOICES};
use kestrel::selftest::all_schemes;
use wgpu::naga;

fn validate(name: &str, src: &str, capabilities: naga::valid::Capabilities) {
    let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities);
    validator
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all());
    validator.validate(&module).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
    for entry in ["gemv", "gemm"] {
        if name.starts_with("matmul") {
            assert!(module.entry_points.iter().any(|e| e.name == entry), "{name} lacks entry point {entry}");
        }
    }
}

#[test]
fn every_kernel_module_validates() {
    use naga::valid::Capabilities;
    // unpack2x16float needs SHADER_FLOAT16_IN_FLOAT32, which wgpu grants on every native backend
    // (downlevel flag SHADER_F16_IN_F32); it is the baseline here, not an optional feature.
    let base = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    let mut used = vec!["copy.wgsl", "delta.wgsl"];
    for (name, src) in kestrel::backend::gpu::graph_ops::modules() {
        validate(&name, &src, Capabilities::empty());
    }
    used.extend(kestrel::backend::gpu::graph_ops::SHADER_FILES);
    validate("copy", shaders::COPY, Capabilities::empty());
    validate("delta", shaders::DELTA, Capabilities::empty());
    for scheme in all_schemes() {
        let (file, _) = shaders::format_source(scheme);
        for (reduction, caps) in [(Reduction::Shared, base), (Reduction::Subgroup, base | Capabilities::SUBGROUP)] {
            for (activation, act_caps) in
                [(Activation::F32, caps), (Activation::F16, caps | Capabilities::SHADER_FLOAT16)]
            {
                for rows in GEMV_ROW_CHOICES {
                    let v = KernelVariant { reduction, activation, rows };
                    validate(&format!("{file}/{}", v.name()), &shaders::matmul_module(scheme, v), act_caps);
                }
            }
        }
        used.extend([
            "common.wgsl",
            "act_f32.wgsl",
            "act_f16.wgsl",
            "reduce_shared.wgsl",
            "reduce_subgroup.wgsl",
            "gemm_tile.wgsl",
        ]);
        used.push(match file {
            "matmul_f32" => "matmul_f32.wgsl",
            "matmul_f16" => "matmul_f16.wgsl",
            "matmul_q8" => "matmul_q8.wgsl",
            "matmul_q4" => "matmul_q4.wgsl",
            _ => "matmul_fp4.wgsl",
        });
    }
    // The portable variant needs neither subgroups nor f16 (it is the fallback everywhere).
    let portable =
        shaders::matmul_module(kestrel::tensor::Scheme::Q4 { group: 128, symmetric: false }, KernelVariant::PORTABLE);
    assert!(!portable.contains("subgroup") && !portable.contains("enable f16"));

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".wgsl") {
            assert!(used.contains(&name.as_str()), "shaders/{name} is not validated by any module");
            assert!(shaders::ALL_FILES.iter().any(|(n, _)| *n == name), "shaders/{name} is not in the shader table");
        }
    }
}

#[test]
fn the_subgroup_variant_is_rejected_without_the_capability() {
    let v = KernelVariant { reduction: Reduction::Subgroup, ..KernelVariant::PORTABLE };
    let src = shaders::matmul_module(kestrel::tensor::Scheme::Q8, v);
    let module = naga::front::wgsl::parse_str(&src).unwrap();
    let mut v = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32,
    );
    assert!(v.validate(&module).is_err(), "subgroup builtins must need the SUBGROUP capability");
}
