//! The C ABI (`include/kestrel.h`, generated from this file by cbindgen).
//!
//! Opaque handles, a status code from every call plus a thread-local last-error message, and
//! `catch_unwind` at every entry: no panic crosses into C. A controller is not thread-safe; use
//! one per control thread. Frames are copied into buffers the controller owns, so after the
//! first frame of a size a step allocates nothing.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::control::{Action, Controller, ControllerOptions, FrameFault, FramePair, Policy, RobotState};
use crate::error::Error;
use crate::vision::detector::{Detector, Device};
use crate::vision::image::Image;

/// Result of every call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KestrelStatus {
    Ok = 0,
    /// A null pointer, a bad size, a value out of range.
    InvalidArgument = 1,
    /// A file could not be read.
    Io = 2,
    /// A model file is corrupt, truncated or not a model this call can use.
    BadModel = 3,
    /// The model or the request needs something kestrel does not do.
    Unsupported = 4,
    /// No usable GPU, or the GPU failed.
    Gpu = 5,
    /// kestrel hit a bug (a panic, caught at the boundary). The handle should be closed.
    Internal = 6,
}

/// Why the controller put out the safe action (`KESTREL_SAFE_REASON_NONE`: it did not).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KestrelSafeReason {
    None = 0,
    Stale = 1,
    Failed = 2,
    Abstained = 3,
    BadAction = 4,
}

/// The robot's state this period.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KestrelRobotState {
    /// Forward speed, m/s.
    pub speed: f32,
    /// Turn rate, rad/s.
    pub turn: f32,
    /// Gripper: 0 open, 1 engaged.
    pub gripper: f32,
}

/// A visible + thermal pair of one size. `rgb` is width x height x 3 bytes (interleaved), `ir`
/// width x height bytes. Ages are how long ago each was captured (0: just now).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KestrelFrames {
    pub width: u32,
    pub height: u32,
    pub rgb: *const u8,
    pub ir: *const u8,
    pub rgb_age_ns: u64,
    pub ir_age_ns: u64,
}

/// The same pair as floats in [0, 1] (a radiometric thermal camera, a float pipeline). NaN or
/// infinite pixels make the period fail safe.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KestrelFramesF32 {
    pub width: u32,
    pub height: u32,
    pub rgb: *const f32,
    pub ir: *const f32,
    pub rgb_age_ns: u64,
    pub ir_age_ns: u64,
}

/// What one period decided.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KestrelDecision {
    /// (dx, dy, dz, droll, dpitch, dyaw, gripper): send this to the robot.
    pub action: [f32; 7],
    /// `KESTREL_SAFE_REASON_NONE`, or why `action` is the safe action.
    pub safe_reason: u32,
    /// Detections this period, and how many of them abstained.
    pub detections: u32,
    pub abstained: u32,
    /// Index of the tracked target among the detections, or -1.
    pub target: i32,
}

/// An opaque controller.
pub struct KestrelController {
    ctl: Controller,
    rgb: Image,
    ir: Image,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let text = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

fn status_of(e: &Error) -> KestrelStatus {
    match e {
        Error::Io { .. } | Error::Image { .. } | Error::Camera { .. } => KestrelStatus::Io,
        Error::InvalidArgument { .. } | Error::ShapeMismatch { .. } => KestrelStatus::InvalidArgument,
        Error::Unsupported { .. } | Error::UnsupportedOps { .. } => KestrelStatus::Unsupported,
        Error::NoAdapter { .. }
        | Error::DeviceRequest { .. }
        | Error::DeviceLost { .. }
        | Error::GpuOutOfMemory { .. }
        | Error::GpuValidation { .. } => KestrelStatus::Gpu,
        _ => KestrelStatus::BadModel,
    }
}

/// Runs `f` with panics caught and errors turned into a status and the last-error text.
fn guard(f: impl FnOnce() -> Result<(), (KestrelStatus, String)>) -> KestrelStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => KestrelStatus::Ok,
        Ok(Err((status, msg))) => {
            set_error(&msg);
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(&format!("internal error (a bug in kestrel; please report it): {what}"));
            KestrelStatus::Internal
        }
    }
}

fn kerr(e: Error) -> (KestrelStatus, String) {
    (status_of(&e), e.to_string())
}

fn invalid(msg: &str) -> (KestrelStatus, String) {
    (KestrelStatus::InvalidArgument, msg.to_string())
}

/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn path_arg<'a>(p: *const c_char, what: &str) -> Result<Option<&'a Path>, (KestrelStatus, String)> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller promises a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| invalid(&format!("{what} is not UTF-8")))?;
    Ok(Some(Path::new(s)))
}

/// The message of the last failed call on this thread ("" if none). Valid until the next
/// kestrel call on this thread.
#[no_mangle]
pub extern "C" fn kestrel_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// kestrel's version, a static string.
#[no_mangle]
pub extern "C" fn kestrel_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Opens a controller: a detector (`.kpak`), a policy network (`.kpak`, or NULL to propose
/// actions yourself in each step), a control rate, and the backend (`use_gpu` 0: CPU; 1: the
/// GPU; 2: the GPU, software adapters allowed).
///
/// # Safety
/// `detector_path` is a NUL-terminated string, `policy_path` one or NULL, `out` a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn kestrel_controller_open(
    detector_path: *const c_char,
    policy_path: *const c_char,
    rate_hz: f64,
    use_gpu: i32,
    out: *mut *mut KestrelController,
) -> KestrelStatus {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        // SAFETY: checked non-null; the caller promises it is valid for a write.
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: the caller promises NUL-terminated strings or NULL.
        let det =
            unsafe { path_arg(detector_path, "detector_path") }?.ok_or_else(|| invalid("detector_path is NULL"))?;
        // SAFETY: as above.
        let pol = unsafe { path_arg(policy_path, "policy_path") }?;
        if !(rate_hz.is_finite() && rate_hz > 0.0 && rate_hz <= 1000.0) {
            return Err(invalid(&format!("rate_hz {rate_hz} is not in (0, 1000]")));
        }
        let device = match use_gpu {
            0 => Device::Cpu,
            1 => Device::Gpu { allow_software: false },
            2 => Device::Gpu { allow_software: true },
            v => return Err(invalid(&format!("use_gpu {v}: 0, 1 or 2"))),
        };
        let detector = Detector::open(det, device).map_err(kerr)?;
        let policy = match pol {
            Some(p) => Policy::open(p).map_err(kerr)?,
            None => Policy::External,
        };
        let ctl = Controller::new(detector, policy, ControllerOptions::at_rate(rate_hz)).map_err(kerr)?;
        let boxed = Box::new(KestrelController { ctl, rgb: Image::default(), ir: Image::default() });
        // SAFETY: checked non-null above.
        unsafe { *out = Box::into_raw(boxed) };
        Ok(())
    })
}

/// Closes a controller (NULL is ignored).
///
/// # Safety
/// `c` is NULL or a handle from `kestrel_controller_open`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn kestrel_controller_close(c: *mut KestrelController) {
    if !c.is_null() {
        // SAFETY: the caller gives back a handle made by Box::into_raw, once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(c) })));
    }
}

/// Forgets the last perception and the tracked target (a new task, a camera restart).
///
/// # Safety
/// `c` is a handle from `kestrel_controller_open`.
#[no_mangle]
pub unsafe extern "C" fn kestrel_controller_reset(c: *mut KestrelController) -> KestrelStatus {
    guard(|| {
        // SAFETY: the caller promises a live handle (null is checked).
        let c = unsafe { c.as_mut() }.ok_or_else(|| invalid("controller is NULL"))?;
        c.ctl.reset();
        Ok(())
    })
}

fn decision_out(c: &KestrelController, d: &crate::control::Decision) -> KestrelDecision {
    use crate::control::watchdog::Unsafe;
    let safe_reason = match d.unsafe_reason {
        None => KestrelSafeReason::None,
        Some(Unsafe::Stale) => KestrelSafeReason::Stale,
        Some(Unsafe::Failed) => KestrelSafeReason::Failed,
        Some(Unsafe::Abstained) => KestrelSafeReason::Abstained,
        Some(Unsafe::BadAction) => KestrelSafeReason::BadAction,
    } as u32;
    let dets = c.ctl.detections();
    KestrelDecision {
        action: d.action.0,
        safe_reason,
        detections: dets.len() as u32,
        abstained: dets.iter().filter(|j| j.judgement.abstain).count() as u32,
        target: d.target.map_or(-1, |t| t as i32),
    }
}

/// Common tail of the step calls: perceive what `fill` put in the controller's frames (or
/// the fault it found), decide, write the decision.
fn step_with(
    c: &mut KestrelController,
    frames: Option<Result<(u64, u64), FrameFault>>,
    state: *const KestrelRobotState,
    proposed: *const f32,
    out: *mut KestrelDecision,
) -> Result<(), (KestrelStatus, String)> {
    let now = Instant::now();
    // SAFETY (both): the caller promises valid pointers or NULL.
    let state = unsafe { state.as_ref() }.copied().unwrap_or_default();
    let external = if proposed.is_null() {
        None
    } else {
        let mut a = Action::STOP;
        // SAFETY: the caller promises 7 floats at `proposed`.
        a.0.copy_from_slice(unsafe { std::slice::from_raw_parts(proposed, 7) });
        Some(a)
    };
    let state = RobotState { speed: state.speed, turn: state.turn, gripper: state.gripper };
    match frames {
        None => {
            c.ctl.perceive(None, now);
        }
        Some(Err(fault)) => {
            c.ctl.reject(fault);
        }
        Some(Ok((rgb_age, ir_age))) => {
            let at = |age: u64| now.checked_sub(Duration::from_nanos(age)).unwrap_or(now);
            let pair = FramePair { rgb: &c.rgb, ir: &c.ir, rgb_time: at(rgb_age), ir_time: at(ir_age) };
            c.ctl.perceive(Some(pair), now);
        }
    }
    let dt = c.ctl.options.period.as_secs_f32();
    let d = c.ctl.decide(&state, external, now, dt);
    // SAFETY: the caller promises a valid pointer (checked non-null by the callers).
    unsafe { *out = decision_out(c, &d) };
    Ok(())
}

/// Frame dimensions a caller may pass (a hostile size cannot ask for unbounded memory).
const MAX_SIDE: u32 = 8192;

fn check_size(width: u32, height: u32) -> Result<(), FrameFault> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(FrameFault::SizeMismatch);
    }
    Ok(())
}

/// One control period with 8-bit frames (`frames` NULL: no frame arrived this period). `state`
/// may be NULL (all zero). `proposed` is NULL, or 7 floats: the action to gate when the
/// controller has no policy network. Writes the decision to `out`; bad frames are not an error
/// (the decision is the safe action, with its reason), only bad arguments are.
///
/// # Safety
/// `c` is a live handle; `frames`, `state`, `proposed` are NULL or valid for their documented
/// sizes; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kestrel_controller_step(
    c: *mut KestrelController,
    frames: *const KestrelFrames,
    state: *const KestrelRobotState,
    proposed: *const f32,
    out: *mut KestrelDecision,
) -> KestrelStatus {
    guard(|| {
        // SAFETY: the caller promises a live handle or NULL.
        let c = unsafe { c.as_mut() }.ok_or_else(|| invalid("controller is NULL"))?;
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        // SAFETY: the caller promises a valid pointer or NULL.
        let frames = match unsafe { frames.as_ref() } {
            None => None,
            Some(f) if f.rgb.is_null() || f.ir.is_null() => Some(Err(FrameFault::Missing)),
            Some(f) => Some(check_size(f.width, f.height).map(|()| {
                let (w, h) = (f.width as usize, f.height as usize);
                c.rgb.reshape(w, h, 3);
                c.ir.reshape(w, h, 1);
                // SAFETY: the caller promises w*h*3 and w*h readable bytes.
                c.rgb.data.copy_from_slice(unsafe { std::slice::from_raw_parts(f.rgb, w * h * 3) });
                // SAFETY: as above.
                c.ir.data.copy_from_slice(unsafe { std::slice::from_raw_parts(f.ir, w * h) });
                (f.rgb_age_ns, f.ir_age_ns)
            })),
        };
        step_with(c, frames, state, proposed, out)
    })
}

/// [`kestrel_controller_step`] with float frames in [0, 1]; NaN or infinite pixels fail the
/// period safe (reason `KESTREL_SAFE_REASON_FAILED`).
///
/// # Safety
/// As for `kestrel_controller_step`, with w*h*3 and w*h floats.
#[no_mangle]
pub unsafe extern "C" fn kestrel_controller_step_f32(
    c: *mut KestrelController,
    frames: *const KestrelFramesF32,
    state: *const KestrelRobotState,
    proposed: *const f32,
    out: *mut KestrelDecision,
) -> KestrelStatus {
    guard(|| {
        // SAFETY: the caller promises a live handle or NULL.
        let c = unsafe { c.as_mut() }.ok_or_else(|| invalid("controller is NULL"))?;
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        // SAFETY: the caller promises a valid pointer or NULL.
        let frames = match unsafe { frames.as_ref() } {
            None => None,
            Some(f) if f.rgb.is_null() || f.ir.is_null() => Some(Err(FrameFault::Missing)),
            Some(f) => Some(check_size(f.width, f.height).and_then(|()| {
                let (w, h) = (f.width as usize, f.height as usize);
                // SAFETY: the caller promises w*h*3 and w*h readable floats.
                let rgb = unsafe { std::slice::from_raw_parts(f.rgb, w * h * 3) };
                // SAFETY: as above.
                let ir = unsafe { std::slice::from_raw_parts(f.ir, w * h) };
                unit_to_u8(rgb, w, h, 3, &mut c.rgb)?;
                unit_to_u8(ir, w, h, 1, &mut c.ir)?;
                Ok((f.rgb_age_ns, f.ir_age_ns))
            })),
        };
        step_with(c, frames, state, proposed, out)
    })
}

/// Float pixels in [0, 1] to 8 bits (clamped); a non-finite pixel is a fault, not a grey.
pub fn unit_to_u8(src: &[f32], w: usize, h: usize, channels: usize, out: &mut Image) -> Result<(), FrameFault> {
    if src.iter().any(|v| !v.is_finite()) {
        return Err(FrameFault::NonFinite);
    }
    out.reshape(w, h, channels);
    for (d, &v) in out.data.iter_mut().zip(src) {
        *d = (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
    }
    Ok(())
}

/// Writes frame `index` of the built-in synthetic street scenes (`kestrel synth`: clips of 30
/// frames with a static camera, conditions drawn per clip) for `seed`: a camera pair for
/// examples and bring-up without cameras. `rgb` takes width x height x 3 bytes, `ir` width x
/// height. Allocates while it renders; not for the control loop itself.
///
/// # Safety
/// `rgb` and `ir` are valid for the writes above.
#[no_mangle]
pub unsafe extern "C" fn kestrel_synth_frame(
    seed: u64,
    index: u64,
    width: u32,
    height: u32,
    rgb: *mut u8,
    ir: *mut u8,
) -> KestrelStatus {
    guard(|| {
        if rgb.is_null() || ir.is_null() {
            return Err(invalid("rgb or ir is NULL"));
        }
        if !(16..=4096).contains(&width) || !(16..=4096).contains(&height) {
            return Err(invalid(&format!("{width}x{height}: sides must be in 16..=4096")));
        }
        let opts = crate::vision::synth::SynthOptions {
            width: width as usize,
            height: height as usize,
            seed,
            sequence: Some(30),
            camera: crate::vision::synth::CameraMotion::Static,
        };
        let f = crate::vision::synth::frame(&opts, index as usize);
        // SAFETY: the caller promises room for these many bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(f.rgb.data.as_ptr(), rgb, f.rgb.data.len());
            std::ptr::copy_nonoverlapping(f.ir.data.as_ptr(), ir, f.ir.data.len());
        }
        Ok(())
    })
}
