//! Camera threads and the wait-free handoff: a directory of pairs replays in order and ends; the
//! simulator's camera answers the newest request; a camera that stalls is a missing frame by
//! the deadline; a camera that fails is counted and never hands over a broken pair.

use std::time::{Duration, Instant};

use kestrel::control::source::{Camera, CameraLink, Captured, DirCamera, Request, SimCamera};
use kestrel::vision::synth::{SynthOptions, ViewObject};

fn soon() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(10))
}

#[test]
fn a_directory_of_pairs_replays_in_order_then_ends() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SynthOptions { width: 64, height: 48, seed: 9, ..Default::default() };
    kestrel::vision::dataset::write_synth(dir.path(), 3, &opts, &|_| {}).unwrap();
    let mut link = CameraLink::spawn(DirCamera::open(dir.path(), false).unwrap(), 64, 48).unwrap();
    for seq in 1..=3u64 {
        link.request(Request { seq, ..Default::default() });
        let f = link.read(seq, soon()).expect("a pair per request");
        assert_eq!((f.seq, f.rgb.width, f.rgb.height, f.rgb.channels, f.ir.channels), (seq, 64, 48, 3, 1));
    }
    link.request(Request { seq: 4, ..Default::default() });
    assert!(link.read(4, soon()).is_none(), "the folder has three pairs");
    assert!(link.ended());
    assert!(DirCamera::open(&dir.path().join("nothing-here"), false).is_err());
}

#[test]
fn the_sim_camera_answers_the_newest_request_only() {
    let mut link = CameraLink::spawn(SimCamera::new(96, 72), 96, 72).unwrap();
    let person = ViewObject { class: 0, x0: 40.0, y0: 20.0, w: 12.0, h: 40.0, look: 3 };
    let mut req = Request { seq: 1, ..Default::default() };
    req.objects.push(person).unwrap();
    link.request(req.clone());
    let first = link.read(1, soon()).expect("rendered").rgb.clone();
    // Two requests in a row: only the newer may be read.
    link.request(Request { seq: 2, ..Default::default() });
    link.request(Request { seq: 3, ..req });
    let f = link.read(3, soon()).expect("rendered");
    assert_eq!(f.seq, 3);
    assert_eq!(f.rgb.data.len(), 96 * 72 * 3);
    // The same view with new sensor noise: close, not identical.
    let diff = first.data.iter().zip(&f.rgb.data).filter(|(a, b)| a != b).count();
    assert!(diff > 0 && diff < first.data.len(), "{diff} pixels differ");
}

/// A camera that hangs for a while, then fails once, then works.
struct Flaky {
    calls: u32,
}

impl Camera for Flaky {
    fn capture(&mut self, req: &Request, into: &mut Captured) -> kestrel::Result<bool> {
        self.calls += 1;
        match self.calls {
            1 => std::thread::sleep(Duration::from_millis(300)),
            2 => return Err(kestrel::Error::InvalidArgument { reason: "sensor timeout".into() }),
            _ => {}
        }
        into.seq = req.seq;
        into.rgb_time = Instant::now();
        into.ir_time = into.rgb_time;
        Ok(true)
    }
}

#[test]
fn a_stalled_or_failing_camera_is_a_missing_frame_not_a_hang() {
    let mut link = CameraLink::spawn(Flaky { calls: 0 }, 8, 8).unwrap();
    link.request(Request { seq: 1, ..Default::default() });
    let t = Instant::now();
    assert!(link.read(1, Some(t + Duration::from_millis(50))).is_none(), "stalled past the deadline");
    assert!(t.elapsed() < Duration::from_millis(250), "read waited {:?}", t.elapsed());
    // The stalled frame arrives late; the next request fails on the camera thread.
    link.request(Request { seq: 2, ..Default::default() });
    assert!(link.read(2, Some(Instant::now() + Duration::from_millis(600))).is_none());
    assert_eq!(link.errors(), 1);
    link.request(Request { seq: 3, ..Default::default() });
    assert_eq!(link.read(3, soon()).map(|f| f.seq), Some(3), "the camera recovers");
}
