//! The C ABI from the caller's side: status codes and last-error text for bad arguments and
//! missing files, decisions for good frames, and the safe action (with its reason) for a dropped
//! frame, a NaN frame and a frame with no rows. examples/c/control_loop.c does the same from C
//! (CI compiles and runs it).

use std::ffi::{CStr, CString};
use std::ptr;

use kestrel::ffi::*;

fn last_error() -> String {
    // SAFETY: kestrel_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(kestrel_last_error()) }.to_string_lossy().into_owned()
}

fn path(p: &str) -> CString {
    CString::new(format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_c_abi_reports_errors_and_fails_safe() {
    // SAFETY (whole test): every pointer passed is valid for what the header documents.
    unsafe {
        assert!(!CStr::from_ptr(kestrel_version()).to_bytes().is_empty());
        let mut c: *mut KestrelController = ptr::null_mut();
        let missing = path("models/no-such.kpak");
        let s = kestrel_controller_open(missing.as_ptr(), ptr::null(), 30.0, 0, &mut c);
        assert_eq!(s, KestrelStatus::Io);
        assert!(c.is_null());
        assert!(last_error().contains("no-such.kpak"), "{}", last_error());
        let det = path("models/rgbir-fused.kpak");
        assert_eq!(
            kestrel_controller_open(det.as_ptr(), ptr::null(), 30.0, 0, ptr::null_mut()),
            KestrelStatus::InvalidArgument
        );
        assert_eq!(kestrel_controller_open(ptr::null(), ptr::null(), 30.0, 0, &mut c), KestrelStatus::InvalidArgument);
        assert_eq!(
            kestrel_controller_open(det.as_ptr(), ptr::null(), f64::NAN, 0, &mut c),
            KestrelStatus::InvalidArgument
        );
        assert!(last_error().contains("rate_hz"));
        // A policy file that is not a policy (the detector) is refused by name.
        assert_eq!(kestrel_controller_open(det.as_ptr(), det.as_ptr(), 30.0, 0, &mut c), KestrelStatus::Unsupported);
        assert!(last_error().contains("as a policy"), "{}", last_error());

        let pol = path("models/policy.kpak");
        assert_eq!(kestrel_controller_open(det.as_ptr(), pol.as_ptr(), 30.0, 0, &mut c), KestrelStatus::Ok);
        assert!(!c.is_null());
        let (w, h) = (320u32, 240u32);
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        let mut ir = vec![0u8; (w * h) as usize];
        assert_eq!(kestrel_synth_frame(5, 0, w, h, rgb.as_mut_ptr(), ir.as_mut_ptr()), KestrelStatus::Ok);
        let frames =
            KestrelFrames { width: w, height: h, rgb: rgb.as_ptr(), ir: ir.as_ptr(), rgb_age_ns: 0, ir_age_ns: 0 };
        let state = KestrelRobotState::default();
        let mut d = KestrelDecision::default();
        assert_eq!(kestrel_controller_step(c, &frames, &state, ptr::null(), &mut d), KestrelStatus::Ok);
        assert!(d.action.iter().all(|v| v.is_finite()));
        assert_ne!(d.safe_reason, KestrelSafeReason::Failed as u32);
        assert_ne!(d.safe_reason, KestrelSafeReason::Stale as u32);
        // A NaN thermal pixel in a float frame: failed, stopped.
        let rgb_f: Vec<f32> = rgb.iter().map(|&v| v as f32 / 255.0).collect();
        let mut ir_f: Vec<f32> = ir.iter().map(|&v| v as f32 / 255.0).collect();
        ir_f[1234] = f32::NAN;
        let ff = KestrelFramesF32 {
            width: w,
            height: h,
            rgb: rgb_f.as_ptr(),
            ir: ir_f.as_ptr(),
            rgb_age_ns: 0,
            ir_age_ns: 0,
        };
        assert_eq!(kestrel_controller_step_f32(c, &ff, &state, ptr::null(), &mut d), KestrelStatus::Ok);
        assert_eq!(d.safe_reason, KestrelSafeReason::Failed as u32);
        assert_eq!(d.action[..6], [0.0; 6]);
        // Clean float frames are fine.
        ir_f[1234] = 0.5;
        assert_eq!(kestrel_controller_step_f32(c, &ff, &state, ptr::null(), &mut d), KestrelStatus::Ok);
        assert_ne!(d.safe_reason, KestrelSafeReason::Failed as u32);
        // A frame with no rows, and a frame captured a second ago.
        let empty = KestrelFrames { height: 0, ..frames };
        assert_eq!(kestrel_controller_step(c, &empty, &state, ptr::null(), &mut d), KestrelStatus::Ok);
        assert_eq!(d.safe_reason, KestrelSafeReason::Failed as u32);
        // A late frame is no new frame: once the last good one is older than max_age (three
        // periods), the period is stale.
        std::thread::sleep(std::time::Duration::from_millis(120));
        let old = KestrelFrames { rgb_age_ns: 1_000_000_000, ir_age_ns: 1_000_000_000, ..frames };
        assert_eq!(kestrel_controller_step(c, &old, &state, ptr::null(), &mut d), KestrelStatus::Ok);
        assert_eq!(d.safe_reason, KestrelSafeReason::Stale as u32);
        // Arguments that are not frames are errors, not decisions.
        assert_eq!(
            kestrel_controller_step(c, &frames, &state, ptr::null(), ptr::null_mut()),
            KestrelStatus::InvalidArgument
        );
        assert_eq!(
            kestrel_controller_step(ptr::null_mut(), &frames, &state, ptr::null(), &mut d),
            KestrelStatus::InvalidArgument
        );
        assert_eq!(kestrel_controller_reset(c), KestrelStatus::Ok);
        kestrel_controller_close(c);
        kestrel_controller_close(ptr::null_mut());
    }
}
