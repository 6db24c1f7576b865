//! The shipped demo model (models/demo-mlp.kpak): a 3-layer MLP that exercises every weight
//! feature the runtime has. `kestrel demo-model --out FILE` regenerates it byte for byte.

use crate::error::Result;
use crate::format::KpakWriter;
use crate::quant;
use crate::rng::SplitMix64;
use crate::tensor::{Fp4Scale, Scheme};

/// The seed the committed file was generated with.
pub const DEMO_SEED: u64 = 7;
pub const DEMO_INPUT: usize = 96;
pub const DEMO_HIDDEN: usize = 160;
pub const DEMO_OUTPUT: usize = 10;

/// (tensor name, [n, k], format, LoRC rank, bit-switching master).
pub const DEMO_LAYERS: [(&str, [usize; 2], Scheme, usize, bool); 3] = [
    ("fc1.weight", [DEMO_HIDDEN, DEMO_INPUT], Scheme::Q4 { group: 32, symmetric: false }, 8, false),
    ("fc2.weight", [DEMO_HIDDEN, DEMO_HIDDEN], Scheme::Fp4 { group: 32, scale: Fp4Scale::E8M0 }, 0, false),
    ("fc3.weight", [DEMO_OUTPUT, DEMO_HIDDEN], Scheme::Q8, 0, true),
];

/// Builds the demo model: Kaiming-scaled random weights, quantized per layer.
pub fn build_demo_model(seed: u64) -> Result<KpakWriter> {
    let mut rng = SplitMix64::new(seed);
    let mut w = KpakWriter::new();
    w.metadata("name", "demo-mlp")?
        .metadata(
            "description",
            "3-layer MLP: q4 (group 32, asymmetric) + LoRC rank 8, MXFP4, int8 bit-switching master",
        )?
        .metadata("inputs", &format!("x: f32[1, {DEMO_INPUT}]"))?
        .metadata("outputs", &format!("logits: f32[1, {DEMO_OUTPUT}]"))?
        .metadata("graph", "fc1 -> relu -> fc2 -> relu -> fc3")?
        .metadata("provenance", &format!("kestrel demo-model --seed {seed} (random weights, not trained)"))?;
    for (name, [n, k], scheme, lorc, master) in DEMO_LAYERS {
        let std = (2.0 / k as f32).sqrt();
        let weights: Vec<f32> = rng.normal_vec(n * k).iter().map(|v| v * std).collect();
        let mut packed = quant::quantize(&weights, n, k, scheme)?;
        if lorc > 0 {
            quant::add_lorc(&mut packed, &weights, lorc)?;
        }
        packed.bitswitch_master = master;
        w.add_matrix(name, &packed)?;
        let bias: Vec<f32> = (0..n).map(|_| rng.uniform(-0.1, 0.1)).collect();
        w.add_f32(&name.replace("weight", "bias"), &[n], &bias)?;
    }
    Ok(w)
}
