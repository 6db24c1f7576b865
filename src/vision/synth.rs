//! Paired RGB + thermal frames of generated street scenes, with ground-truth boxes: the data the
//! shipped RGB+IR detector is trained and evaluated on, and the tests' tiny datasets.
//!
//! A scene is a horizon, a textured ground plane, and people, cars and bicycles standing on the
//! ground (farther objects higher and smaller), drawn back to front so near objects occlude far
//! ones. Every pixel is shaded twice from the same scene description: once as visible light and
//! once as temperature. The physics that makes fusion matter:
//!
//! - **night**: RGB gets a few percent of daylight and strong sensor noise; people and running
//!   engines stay bright in IR; street lamps light pools in RGB and are hot in IR.
//! - **day**: the sun warms the ground unevenly, so IR has warm patches and warm poles of person
//!   size (clutter that RGB tells apart); parked cars and bicycles sit near ambient temperature,
//!   so they have low IR contrast.
//! - **fog**: RGB fades toward the fog colour with distance, IR far less (long-wave IR passes fog).
//! - **glare**: a low sun washes out part of the RGB frame; IR does not see it.
//! - **dusk**: in between.
//!
//! The IR camera is slightly misregistered (a shift of a few pixels and a 1-2% scale), as real
//! rigs are; boxes are given in the RGB frame, as LLVIP and DEYOLO label the visible image.
//! Everything is a pure function of (seed, frame index), so a dataset is reproducible and frames
//! can be generated in any order or in parallel.

use crate::rng::SplitMix64;

use super::annotations::{Annotation, Label};
use super::image::Image;

/// Object classes, in class-id order.
pub const CLASSES: [&str; 3] = ["person", "car", "bicycle"];

/// Capture conditions, in the order the index and the evaluation report them.
pub const CONDITIONS: [&str; 5] = ["day", "dusk", "night", "fog", "glare"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Day,
    Dusk,
    Night,
    Fog,
    Glare,
}

impl Condition {
    pub fn name(self) -> &'static str {
        CONDITIONS[self as usize]
    }

    fn from_index(i: u64) -> Condition {
        [Condition::Day, Condition::Dusk, Condition::Night, Condition::Fog, Condition::Glare][i as usize % 5]
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    /// Frames per clip for video (`None`: independent images).
    pub sequence: Option<usize>,
    /// How the camera moves in sequences.
    pub camera: CameraMotion,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions { width: 320, height: 240, seed: 0, sequence: None, camera: CameraMotion::Mixed }
    }
}

/// Camera motion of a sequence's clips. The scenes are the same under every choice (the same
/// random draws); only the pan differs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CameraMotion {
    /// Half the clips pan slowly, the rest hold still.
    #[default]
    Mixed,
    /// A fixed camera (a mounted surveillance or robot-base camera): only objects move.
    Static,
    /// Every clip pans.
    Pan,
}

impl CameraMotion {
    pub fn parse(s: &str) -> Option<CameraMotion> {
        match s {
            "mixed" => Some(CameraMotion::Mixed),
            "static" => Some(CameraMotion::Static),
            "pan" => Some(CameraMotion::Pan),
            _ => None,
        }
    }
}

/// One generated pair.
#[derive(Clone, Debug)]
pub struct Frame {
    pub rgb: Image,
    pub ir: Image,
    pub condition: Condition,
    /// Boxes in RGB pixel coordinates; objects less than [`MIN_VISIBLE`] visible are left out.
    pub labels: Vec<Label>,
    /// (clip, frame within the clip) for sequences.
    pub clip: Option<(usize, usize)>,
}

impl Frame {
    pub fn annotation(&self, filename: &str) -> Annotation {
        Annotation {
            filename: filename.into(),
            width: self.rgb.width,
            height: self.rgb.height,
            condition: Some(self.condition.name().into()),
            labels: self.labels.clone(),
        }
    }
}

/// Fraction of an object's pixels that must be visible (not occluded, inside the frame) for it
/// to be labelled; between this and [`CLEAR_VISIBLE`] it is labelled `difficult`.
pub const MIN_VISIBLE: f32 = 0.2;
const CLEAR_VISIBLE: f32 = 0.5;
/// Objects shorter than this many pixels are not placed.
const MIN_HEIGHT_PX: f32 = 10.0;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Person,
    Car,
    Bicycle,
    /// Unlabelled thermal clutter: a pole warmed by the sun, or a lamp post.
    Pole {
        lamp: bool,
    },
}

/// One object of a scene, in RGB pixel coordinates at the clip's first frame.
#[derive(Clone, Copy, Debug)]
struct Object {
    kind: Kind,
    /// Box (x0, y0) top-left and size (w, h).
    x0: f32,
    y0: f32,
    w: f32,
    h: f32,
    /// Horizontal velocity, pixels per frame (sequences).
    vx: f32,
    /// Main colour (clothes, paint, frame) and a second one (trousers).
    color: [f32; 3],
    color2: [f32; 3],
    /// Temperature offset of this instance (engines running, clothing insulation).
    heat: f32,
    facing_left: bool,
}

/// Everything shared by the pixels of one frame.
struct Scene {
    w: usize,
    h: usize,
    cond: Condition,
    horizon: f32,
    /// Camera pan in pixels (sequences): the world moves left as it grows.
    pan: f32,
    /// Frame index within the clip (objects move by vx per frame).
    frame: f32,
    ground: [f32; 3],
    texture_seed: u64,
    objects: Vec<Object>,
    /// IR camera geometry relative to RGB: x_rgb = (x_ir - cx) * scale + cx + dx (same for y).
    ir_shift: (f32, f32),
    ir_scale: f32,
    sun: (f32, f32),
    noise_seed: u64,
}

/// Generates frame `index` of the dataset described by `opts` (pure: same inputs, same frame).
pub fn frame(opts: &SynthOptions, index: usize) -> Frame {
    let (clip, frame_in_clip) = match opts.sequence {
        Some(n) if n > 0 => (index / n, index % n),
        _ => (index, 0),
    };
    let scene = scene(opts, clip, frame_in_clip);
    let mut rgb = Image::new(opts.width, opts.height, 3);
    let mut ir = Image::new(opts.width, opts.height, 1);
    let mut shown = vec![0u32; scene.objects.len()];
    let column_offset = column_offsets(scene.noise_seed, opts.width);
    render(&scene, &column_offset, &mut rgb, &mut ir, &mut shown);
    let mut labels = Vec::new();
    for (i, o) in scene.objects.iter().enumerate() {
        let Some(class) = class_of(o.kind) else { continue };
        let area = (o.w * o.h * fill_fraction(o.kind)).max(1.0);
        let visible = shown[i] as f32 / area;
        let (x0, y0) = (o.x0 + o.vx * frame_in_clip as f32 - scene.pan, o.y0);
        let b = [x0.max(0.0), y0.max(0.0), (x0 + o.w).min(opts.width as f32), (y0 + o.h).min(opts.height as f32)];
        if visible < MIN_VISIBLE || b[2] - b[0] < 4.0 || b[3] - b[1] < 4.0 {
            continue;
        }
        labels.push(Label { class: class.into(), box_xyxy: b, difficult: visible < CLEAR_VISIBLE });
    }
    Frame {
        rgb,
        ir,
        condition: scene.cond,
        labels,
        clip: opts.sequence.filter(|&n| n > 0).map(|_| (clip, frame_in_clip)),
    }
}

/// Fixed-pattern column offsets of the microbolometer.
fn column_offsets(noise_seed: u64, width: usize) -> Vec<f32> {
    let mut columns = SplitMix64::new(noise_seed ^ 0x5eed);
    (0..width).map(|_| columns.normal() * 0.006).collect()
}

/// Shades every pixel of `scene` into `rgb` and `ir` (sized to the scene) and counts in `shown`
/// (one per object, zeroed here) how many RGB pixels show each object, for occlusion.
fn render(scene: &Scene, column_offset: &[f32], rgb: &mut Image, ir: &mut Image, shown: &mut [u32]) {
    shown.fill(0);
    let mut noise = SplitMix64::new(scene.noise_seed);
    let rgb_noise = match scene.cond {
        Condition::Night => 0.045,
        Condition::Dusk => 0.02,
        _ => 0.008,
    };
    let (width, height) = (scene.w, scene.h);
    for y in 0..height {
        for (x, column) in column_offset.iter().enumerate() {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let (color, id) = shade_rgb(scene, px, py);
            if let Some(i) = id {
                shown[i] += 1;
            }
            let at = (y * width + x) * 3;
            for (dst, v) in rgb.data[at..at + 3].iter_mut().zip(color) {
                *dst = to_u8(v + noise.normal() * rgb_noise);
            }
            // The IR camera sees the point that maps to this IR pixel.
            let cx = width as f32 / 2.0;
            let cy = height as f32 / 2.0;
            let sx = (px - cx) * scene.ir_scale + cx + scene.ir_shift.0;
            let sy = (py - cy) * scene.ir_scale + cy + scene.ir_shift.1;
            let t = shade_ir(scene, sx, sy) + noise.normal() * 0.012 + column;
            ir.data[y * width + x] = to_u8(t);
        }
    }
}

fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8
}

fn class_of(k: Kind) -> Option<&'static str> {
    match k {
        Kind::Person => Some(CLASSES[0]),
        Kind::Car => Some(CLASSES[1]),
        Kind::Bicycle => Some(CLASSES[2]),
        Kind::Pole { .. } => None,
    }
}

/// Roughly the fraction of its box a shape covers (bicycles are mostly air).
fn fill_fraction(k: Kind) -> f32 {
    match k {
        Kind::Person => 0.55,
        Kind::Car => 0.8,
        Kind::Bicycle => 0.22,
        Kind::Pole { .. } => 0.5,
    }
}

/// The scene of frame `frame_in_clip` of clip `clip`.
fn scene(opts: &SynthOptions, clip: usize, frame_in_clip: usize) -> Scene {
    let mut r = SplitMix64::new(
        opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (clip as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    let (w, h) = (opts.width as f32, opts.height as f32);
    let cond = Condition::from_index(r.below(5));
    let horizon = h * r.uniform(0.28, 0.45);
    // Half the clips pan slowly; the rest have a static camera. The draws are the same under
    // every camera choice (and none are made for still images), so the scenes are too.
    let mixed = if opts.sequence.is_some() && r.below(2) == 0 { r.uniform(-1.5, 1.5) } else { 0.0 };
    let pan_speed = match opts.camera {
        _ if opts.sequence.is_none() => 0.0,
        CameraMotion::Mixed => mixed,
        CameraMotion::Static => 0.0,
        CameraMotion::Pan if mixed != 0.0 => mixed,
        // A clip that held still under Mixed: a speed from its own stream, at least 0.5 px/frame.
        CameraMotion::Pan => {
            let mut own = SplitMix64::new(opts.seed ^ (clip as u64).wrapping_mul(0xA076_1D64_78BD_642F) ^ 0x9a4);
            let v = own.uniform(0.5, 1.5);
            if own.below(2) == 0 {
                v
            } else {
                -v
            }
        }
    };
    let ground = match r.below(3) {
        0 => [0.32, 0.32, 0.34], // asphalt
        1 => [0.28, 0.40, 0.22], // grass
        _ => [0.45, 0.40, 0.33], // gravel
    };
    let mut objects = Vec::new();
    let count = 1 + r.below(7) as usize;
    for _ in 0..count {
        let kind = match r.below(20) {
            0..=8 => Kind::Person,
            9..=14 => Kind::Car,
            _ => Kind::Bicycle,
        };
        if let Some(o) = place(&mut r, kind, w, h, horizon, opts.sequence.is_some()) {
            objects.push(o);
        }
    }
    // Thermal clutter: sun-warmed poles by day, lamp posts by night and dusk.
    for _ in 0..r.below(3) {
        let lamp = matches!(cond, Condition::Night | Condition::Dusk) || r.below(3) == 0;
        if let Some(o) = place(&mut r, Kind::Pole { lamp }, w, h, horizon, false) {
            objects.push(o);
        }
    }
    // Back to front: the lower an object stands, the nearer it is.
    objects.sort_by(|a, b| (a.y0 + a.h).total_cmp(&(b.y0 + b.h)));
    let sun = (r.uniform(0.1, 0.9) * w, horizon - r.uniform(0.0, 0.15) * h);
    Scene {
        w: opts.width,
        h: opts.height,
        cond,
        horizon,
        pan: pan_speed * frame_in_clip as f32,
        frame: frame_in_clip as f32,
        ground,
        texture_seed: r.next_u64(),
        objects,
        ir_shift: (r.uniform(-3.0, 3.0), r.uniform(-3.0, 3.0)),
        ir_scale: 1.0 + r.uniform(-0.02, 0.02),
        sun,
        noise_seed: r.next_u64() ^ frame_in_clip as u64,
    }
}

/// Places one object on the ground with perspective scale; None if it would be too small.
fn place(r: &mut SplitMix64, kind: Kind, w: f32, h: f32, horizon: f32, moving: bool) -> Option<Object> {
    // Ground contact line: near the horizon is far away.
    let foot = horizon + (h - horizon) * r.uniform(0.08, 1.1);
    let depth = (foot - horizon) / (h - horizon); // 0 far .. 1 near
    let (oh, aspect) = match kind {
        Kind::Person => (h * depth * r.uniform(0.55, 0.8), r.uniform(0.32, 0.45)),
        Kind::Car => (h * depth * r.uniform(0.38, 0.5), r.uniform(1.9, 2.5)),
        Kind::Bicycle => (h * depth * r.uniform(0.32, 0.42), r.uniform(1.5, 1.8)),
        Kind::Pole { .. } => (h * depth * r.uniform(0.7, 1.0), r.uniform(0.08, 0.14)),
    };
    if oh < MIN_HEIGHT_PX {
        return None;
    }
    let ow = oh * aspect;
    let x0 = r.uniform(-0.15 * ow, w - 0.85 * ow);
    let palette = |r: &mut SplitMix64| [r.uniform(0.05, 0.95), r.uniform(0.05, 0.95), r.uniform(0.05, 0.95)];
    let vx = match kind {
        _ if !moving => 0.0,
        Kind::Person => r.uniform(-1.0, 1.0) * depth * 2.0,
        Kind::Car => r.uniform(-1.0, 1.0) * depth * 6.0,
        Kind::Bicycle => r.uniform(-1.0, 1.0) * depth * 4.0,
        Kind::Pole { .. } => 0.0,
    };
    let heat = match kind {
        // About half the cars have a running engine.
        Kind::Car => {
            if r.below(2) == 0 {
                r.uniform(0.25, 0.4)
            } else {
                0.0
            }
        }
        _ => r.uniform(-0.05, 0.05),
    };
    Some(Object {
        kind,
        x0,
        y0: foot - oh,
        w: ow,
        h: oh,
        vx,
        color: palette(r),
        color2: palette(r),
        heat,
        facing_left: r.below(2) == 0,
    })
}

/// Which part of an object covers (u, v) in its box (0..1 each), if any.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    Skin,
    Body,
    Legs,
    Paint,
    Window,
    Wheel,
    Engine,
    Frame,
    Lamp,
}

fn part(o: &Object, u: f32, v: f32) -> Option<Part> {
    let u = if o.facing_left { 1.0 - u } else { u };
    let aspect = o.w / o.h;
    match o.kind {
        Kind::Person => {
            let head = (u - 0.5).powi(2) * aspect * aspect + (v - 0.08).powi(2) < 0.075f32.powi(2);
            if head {
                Some(Part::Skin)
            } else if (0.16..0.6).contains(&v) && (0.18..0.82).contains(&u) {
                Some(Part::Body)
            } else if (0.6..1.0).contains(&v) && ((0.25..0.46).contains(&u) || (0.54..0.75).contains(&u)) {
                Some(Part::Legs)
            } else {
                None
            }
        }
        Kind::Car => {
            let wheel = |cu: f32| ((u - cu) * aspect).powi(2) + (v - 0.82).powi(2) < 0.18f32.powi(2);
            if wheel(0.2) || wheel(0.8) {
                Some(Part::Wheel)
            } else if (0.35..0.85).contains(&v) {
                if u > 0.82 && v < 0.6 {
                    Some(Part::Engine)
                } else {
                    Some(Part::Paint)
                }
            } else if v < 0.35 && u > 0.22 + 0.1 * (0.35 - v) && u < 0.72 - 0.25 * (0.35 - v) {
                if v > 0.06 && u > 0.27 && u < 0.68 {
                    Some(Part::Window)
                } else {
                    Some(Part::Paint)
                }
            } else {
                None
            }
        }
        Kind::Bicycle => {
            let ring = |cu: f32| {
                let d = (((u - cu) * aspect).powi(2) + (v - 0.68).powi(2)).sqrt();
                (d - 0.3).abs() < 0.045
            };
            let bar = |(a, b): ((f32, f32), (f32, f32))| {
                segment_distance(u * aspect, v, a.0 * aspect, a.1, b.0 * aspect, b.1) < 0.035
            };
            let frame = [
                ((0.2, 0.68), (0.45, 0.68)),
                ((0.45, 0.68), (0.72, 0.35)),
                ((0.3, 0.35), (0.45, 0.68)),
                ((0.3, 0.35), (0.72, 0.35)),
                ((0.72, 0.35), (0.8, 0.68)),
                ((0.3, 0.35), (0.28, 0.22)),
                ((0.72, 0.35), (0.7, 0.15)),
            ];
            if ring(0.2) || ring(0.8) {
                Some(Part::Wheel)
            } else if frame.into_iter().any(bar) {
                Some(Part::Frame)
            } else {
                None
            }
        }
        Kind::Pole { lamp } => {
            if lamp && v < 0.08 && (0.0..1.0).contains(&u) {
                Some(Part::Lamp)
            } else if (0.3..0.7).contains(&u) {
                Some(Part::Frame)
            } else {
                None
            }
        }
    }
}

fn segment_distance(px: f32, py: f32, ax: f32, ay: f32, bx: f32, by: f32) -> f32 {
    let (dx, dy) = (bx - ax, by - ay);
    let t = (((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy).max(1e-6)).clamp(0.0, 1.0);
    ((px - ax - t * dx).powi(2) + (py - ay - t * dy).powi(2)).sqrt()
}

/// The nearest object part at RGB pixel (x, y) of the current frame: (object index, part).
fn hit(s: &Scene, x: f32, y: f32, frame_shift: impl Fn(&Object) -> f32) -> Option<(usize, Part)> {
    // Objects are sorted far to near: the last hit wins.
    s.objects.iter().enumerate().rev().find_map(|(i, o)| {
        let x0 = o.x0 + frame_shift(o) - s.pan;
        let (u, v) = ((x - x0) / o.w, (y - o.y0) / o.h);
        if !(0.0..1.0).contains(&u) || !(0.0..1.0).contains(&v) {
            return None;
        }
        part(o, u, v).map(|p| (i, p))
    })
}

/// Smooth value noise in [0, 1) at (x, y) with cell size `cell`.
fn value_noise(seed: u64, x: f32, y: f32, cell: f32) -> f32 {
    let (gx, gy) = (x / cell, y / cell);
    let (ix, iy) = (gx.floor(), gy.floor());
    let (fx, fy) = (gx - ix, gy - iy);
    let lattice = |i: f32, j: f32| {
        let mut z = seed
            ^ ((i as i64 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            ^ ((j as i64 as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    };
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let top = lattice(ix, iy) * (1.0 - sx) + lattice(ix + 1.0, iy) * sx;
    let bottom = lattice(ix, iy + 1.0) * (1.0 - sx) + lattice(ix + 1.0, iy + 1.0) * sx;
    top * (1.0 - sy) + bottom * sy
}

/// Distance factor of pixel row y: 0 at the horizon (far), 1 at the bottom (near).
fn nearness(s: &Scene, y: f32) -> f32 {
    ((y - s.horizon) / (s.h as f32 - s.horizon)).clamp(0.0, 1.0)
}

/// Visible light at RGB pixel (x, y), and which labelled object (if any) it shows.
fn shade_rgb(s: &Scene, x: f32, y: f32) -> ([f32; 3], Option<usize>) {
    let mut emissive = false;
    let (albedo, id, depth_y) = match hit(s, x, y, |o| o.vx * s.frame) {
        Some((i, p)) => {
            let o = &s.objects[i];
            let pole = matches!(o.kind, Kind::Pole { .. });
            let c = match p {
                Part::Skin => [0.85, 0.66, 0.52],
                // Clutter poles are grey metal whatever the palette says.
                Part::Frame if pole => [0.42, 0.42, 0.44],
                Part::Body | Part::Paint | Part::Frame => o.color,
                Part::Legs => [o.color2[0] * 0.5, o.color2[1] * 0.5, o.color2[2] * 0.6],
                Part::Window => [0.12, 0.15, 0.2],
                Part::Wheel => [0.06, 0.06, 0.06],
                Part::Engine => o.color.map(|v| v * 0.8),
                Part::Lamp => {
                    emissive = true;
                    [0.95, 0.9, 0.7]
                }
            };
            (c, class_of(o.kind).map(|_| i), o.y0 + o.h)
        }
        None if y < s.horizon => {
            let t = y / s.horizon;
            ([0.55 + 0.3 * t, 0.7 + 0.2 * t, 0.95], None, s.horizon)
        }
        None => {
            let tex = 0.75 + 0.5 * value_noise(s.texture_seed, x + s.pan, y * 2.0, 6.0 + 20.0 * nearness(s, y));
            (s.ground.map(|g| g * tex), None, y)
        }
    };
    // Illumination of the condition, plus the light pools of lamps after dark.
    let (mut light, tint) = match s.cond {
        Condition::Day | Condition::Glare => (1.0, [1.0, 1.0, 1.0]),
        Condition::Fog => (0.85, [1.0, 1.0, 1.0]),
        Condition::Dusk => (0.35, [1.15, 0.85, 0.75]),
        Condition::Night => (0.05, [0.8, 0.85, 1.2]),
    };
    if matches!(s.cond, Condition::Night | Condition::Dusk) {
        for o in &s.objects {
            if let Kind::Pole { lamp: true } = o.kind {
                let (lx, ly) = (o.x0 - s.pan + o.w / 2.0, o.y0 + o.h);
                let d2 = ((x - lx) / (o.h * 0.6)).powi(2) + ((y - ly) / (o.h * 0.25)).powi(2);
                light += 0.5 * (-d2).exp();
            }
        }
    }
    let mut c = if emissive { albedo } else { [0, 1, 2].map(|i| albedo[i] * light * tint[i]) };
    match s.cond {
        Condition::Fog => {
            // Extinction grows with distance: the horizon is far, the bottom row near.
            let transmission = (-3.2 * (1.0 - nearness(s, depth_y)) - 0.4).exp();
            for v in c.iter_mut() {
                *v = *v * transmission + FOG_LEVEL * (1.0 - transmission);
            }
        }
        Condition::Glare => {
            let d = ((x - s.sun.0).powi(2) + (y - s.sun.1).powi(2)).sqrt() / s.w as f32;
            let glare = 1.6 * (-d * 4.0).exp() + 0.15;
            for v in c.iter_mut() {
                *v += glare;
            }
        }
        _ => {}
    }
    (c, id)
}

/// Grey level fog fades to.
const FOG_LEVEL: f32 = 0.72;

/// Apparent temperature (0 cold sky .. 1 hot) at RGB-frame point (x, y).
fn shade_ir(s: &Scene, x: f32, y: f32) -> f32 {
    let day = matches!(s.cond, Condition::Day | Condition::Glare);
    let ambient = match s.cond {
        Condition::Day | Condition::Glare => 0.5,
        Condition::Dusk => 0.42,
        Condition::Fog => 0.4,
        Condition::Night => 0.3,
    };
    let (t, depth_y) = match hit(s, x, y, |o| o.vx * s.frame) {
        Some((i, p)) => {
            let o = &s.objects[i];
            let t = match p {
                Part::Skin => 0.93,
                Part::Body => 0.8 + o.heat,
                Part::Legs => 0.76 + o.heat,
                Part::Engine => ambient + 0.05 + o.heat * 1.2,
                Part::Wheel if o.kind == Kind::Car => ambient + 0.04 + o.heat * 0.5,
                Part::Window => ambient - 0.12,
                // Metal at air temperature: close to the ground behind it.
                Part::Paint => ambient + if day { 0.06 } else { 0.0 } + o.heat * 0.2,
                Part::Wheel | Part::Frame => match o.kind {
                    Kind::Pole { .. } if day => 0.78, // sun-warmed pole: person-like in IR
                    _ => ambient + 0.03,
                },
                Part::Lamp => 0.95,
            };
            (t, o.y0 + o.h)
        }
        None if y < s.horizon => (0.08 + 0.06 * y / s.horizon, s.horizon),
        None => {
            let wx = x + s.pan;
            let mut t = ambient + 0.04 * value_noise(s.texture_seed ^ 1, wx, y * 2.0, 8.0);
            if day {
                // Sun-warmed patches: large blobs, some of them person-bright.
                let patch = value_noise(s.texture_seed ^ 2, wx, y * 1.5, 28.0);
                t += 0.45 * (patch - 0.6).max(0.0);
            }
            (t, y)
        }
    };
    if s.cond == Condition::Fog {
        // Long-wave IR is attenuated far less than visible light.
        let near = nearness(s, depth_y);
        let transmission = (-0.5 * (1.0 - near)).exp();
        return t * transmission + 0.4 * (1.0 - transmission);
    }
    t
}

/// One object a simulator places in the camera image: a labelled class (an index into
/// [`CLASSES`]), its box in RGB pixels, and a seed for its look (colours, warmth, facing).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewObject {
    pub class: usize,
    pub x0: f32,
    pub y0: f32,
    pub w: f32,
    pub h: f32,
    pub look: u64,
}

/// Renders frames for a simulator that places the objects itself (the control loop's built-in
/// world): the look of the world (condition, ground, IR rig misregistration, fixed-pattern
/// noise) is fixed at creation, the objects and the camera's heading change every frame.
/// Rendering into images of the renderer's size allocates nothing.
pub struct ViewRenderer {
    scene: Scene,
    column_offset: Vec<f32>,
    shown: Vec<u32>,
    noise_base: u64,
}

impl ViewRenderer {
    /// Objects beyond this many in one frame are not drawn.
    pub const MAX_OBJECTS: usize = 32;
    /// The horizon's row as a fraction of the height (the simulator's camera pitch).
    pub const HORIZON: f32 = 0.4;

    pub fn new(width: usize, height: usize, condition: Condition, seed: u64) -> ViewRenderer {
        let scene = Scene {
            w: width,
            h: height,
            cond: condition,
            horizon: 0.0,
            pan: 0.0,
            frame: 0.0,
            ground: [0.0; 3],
            texture_seed: 0,
            objects: Vec::with_capacity(Self::MAX_OBJECTS),
            ir_shift: (0.0, 0.0),
            ir_scale: 1.0,
            sun: (0.0, 0.0),
            noise_seed: 0,
        };
        let mut v =
            ViewRenderer { column_offset: vec![0.0; width], scene, shown: vec![0; Self::MAX_OBJECTS], noise_base: 0 };
        v.reseed(condition, seed);
        v
    }

    /// A new world look (the next episode) in the same buffers: allocates nothing.
    pub fn reseed(&mut self, condition: Condition, seed: u64) {
        let mut r = SplitMix64::new(seed ^ 0x7ee1_5eed);
        let s = &mut self.scene;
        let (w, h) = (s.w as f32, s.h as f32);
        s.cond = condition;
        s.horizon = h * Self::HORIZON;
        s.ground = [[0.32, 0.32, 0.34], [0.28, 0.40, 0.22], [0.45, 0.40, 0.33]][r.below(3) as usize];
        s.texture_seed = r.next_u64();
        s.ir_shift = (r.uniform(-3.0, 3.0), r.uniform(-3.0, 3.0));
        s.ir_scale = 1.0 + r.uniform(-0.02, 0.02);
        s.sun = (r.uniform(0.1, 0.9) * w, s.horizon - r.uniform(0.0, 0.15) * h);
        self.noise_base = r.next_u64();
        let mut columns = SplitMix64::new(self.noise_base ^ 0x5eed);
        self.column_offset.iter_mut().for_each(|c| *c = columns.normal() * 0.006);
    }

    pub fn size(&self) -> (usize, usize) {
        (self.scene.w, self.scene.h)
    }

    pub fn condition(&self) -> Condition {
        self.scene.cond
    }

    /// Draws `objects` (nearest last or first: they are sorted by their foot row) with the
    /// world turned by `pan` pixels (the ground texture moves, the sky and sun stay) into `rgb`
    /// (3 channels) and `ir` (1 channel), reshaped to the renderer's size. `frame` seeds the
    /// sensor noise.
    pub fn render(&mut self, objects: &[ViewObject], pan: f32, frame: u64, rgb: &mut Image, ir: &mut Image) {
        let s = &mut self.scene;
        s.objects.clear();
        for o in objects.iter().take(Self::MAX_OBJECTS) {
            let mut r = SplitMix64::new(o.look);
            let palette = |r: &mut SplitMix64| [r.uniform(0.05, 0.95), r.uniform(0.05, 0.95), r.uniform(0.05, 0.95)];
            let kind = match o.class {
                0 => Kind::Person,
                1 => Kind::Car,
                _ => Kind::Bicycle,
            };
            let heat = match kind {
                Kind::Car if r.below(2) == 0 => r.uniform(0.25, 0.4),
                Kind::Car => 0.0,
                _ => r.uniform(-0.05, 0.05),
            };
            s.objects.push(Object {
                kind,
                // Scene boxes are in world pixels; the pan moves them back into the image.
                x0: o.x0 + pan,
                y0: o.y0,
                w: o.w.max(1.0),
                h: o.h.max(1.0),
                vx: 0.0,
                color: palette(&mut r),
                color2: palette(&mut r),
                heat,
                facing_left: r.below(2) == 0,
            });
        }
        // Back to front; an unstable sort needs no buffer (ties are equal depths).
        s.objects.sort_unstable_by(|a, b| (a.y0 + a.h).total_cmp(&(b.y0 + b.h)));
        s.pan = pan;
        s.noise_seed = self.noise_base ^ frame.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        rgb.reshape(s.w, s.h, 3);
        ir.reshape(s.w, s.h, 1);
        let n = s.objects.len();
        render(s, &self.column_offset, rgb, ir, &mut self.shown[..n]);
    }
}
