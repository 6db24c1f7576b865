//! Frame sources and the camera thread.
//!
//! Cameras run on their own thread and hand frames to the loop through wait-free single-producer
//! single-consumer rings (rtrb): a `frames` ring of filled pairs and a `free` ring that returns
//! the buffers, so pairs are recycled and the handoff never allocates or blocks either side.
//! The loop sends the camera a [`Request`] each period (for the simulator: where everything is
//! now); a real camera ignores it and delivers whatever it captured last.
//!
//! Sources: [`SimCamera`] (the built-in world, the default), [`DirCamera`] (a directory of
//! visible/infrared pairs, replayed at the loop's rate), and a V4L2 pair behind the `v4l2`
//! feature.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::vision::dataset::Dataset;
use crate::vision::image::Image;
use crate::vision::synth::{Condition, ViewObject, ViewRenderer};

/// One captured pair in a recycled buffer.
#[derive(Clone, Debug)]
pub struct Captured {
    pub rgb: Image,
    pub ir: Image,
    pub rgb_time: Instant,
    pub ir_time: Instant,
    /// The request it answers (its sequence number), so the loop can drop stale ones.
    pub seq: u64,
}

/// What the loop asks the camera for this period.
#[derive(Clone, Debug)]
pub struct Request {
    pub seq: u64,
    /// The simulator's view: objects in image pixels, the ground's pan, the world's look.
    pub objects: heapless::Vec<ViewObject, { super::sim::MAX_OTHERS + 1 }>,
    pub pan: f32,
    pub condition: Condition,
    pub look_seed: u64,
}

impl Default for Request {
    fn default() -> Self {
        Request { seq: 0, objects: heapless::Vec::new(), pan: 0.0, condition: Condition::Day, look_seed: 0 }
    }
}

/// A camera pair that fills a recycled buffer on request.
pub trait Camera: Send + 'static {
    /// Fills `into` for `req`; `Ok(false)` when the source has ended.
    fn capture(&mut self, req: &Request, into: &mut Captured) -> Result<bool>;
}

/// The simulator's camera: renders the requested view (allocation-free after the first frame).
pub struct SimCamera {
    renderer: ViewRenderer,
    look: Option<u64>,
}

impl SimCamera {
    pub fn new(width: usize, height: usize) -> SimCamera {
        SimCamera { renderer: ViewRenderer::new(width, height, Condition::Day, 0), look: None }
    }
}

impl Camera for SimCamera {
    fn capture(&mut self, req: &Request, into: &mut Captured) -> Result<bool> {
        if self.look != Some(req.look_seed) || self.renderer.condition() != req.condition {
            self.renderer.reseed(req.condition, req.look_seed);
            self.look = Some(req.look_seed);
        }
        let t = Instant::now();
        self.renderer.render(&req.objects, req.pan, req.seq, &mut into.rgb, &mut into.ir);
        (into.rgb_time, into.ir_time, into.seq) = (t, t, req.seq);
        Ok(true)
    }
}

/// Replays a dataset's pairs in order, one per request (image decoding allocates, on the camera
/// thread). Loops back to the start when `repeat` is set.
pub struct DirCamera {
    dataset: Dataset,
    next: usize,
    repeat: bool,
}

impl DirCamera {
    pub fn open(root: &Path, repeat: bool) -> Result<DirCamera> {
        let dataset = Dataset::open(root)?;
        if dataset.samples.is_empty() {
            return Err(Error::InvalidArgument { reason: format!("{}: no frame pairs", root.display()) });
        }
        Ok(DirCamera { dataset, next: 0, repeat })
    }
}

impl Camera for DirCamera {
    fn capture(&mut self, req: &Request, into: &mut Captured) -> Result<bool> {
        if self.next == self.dataset.samples.len() {
            if !self.repeat {
                return Ok(false);
            }
            self.next = 0;
        }
        let s = &self.dataset.samples[self.next];
        self.next += 1;
        into.rgb = Image::load(&s.rgb)?;
        into.rgb_time = Instant::now();
        into.ir = Image::load(&s.ir)?;
        into.ir_time = Instant::now();
        into.seq = req.seq;
        Ok(true)
    }
}

/// Pairs in flight between the loop and the camera thread.
const RING: usize = 4;

/// The loop's end of a camera thread.
pub struct CameraLink {
    requests: rtrb::Producer<Request>,
    frames: rtrb::Consumer<Box<Captured>>,
    free: rtrb::Producer<Box<Captured>>,
    /// The pair the loop holds this period (returned to the camera on the next read).
    current: Option<Box<Captured>>,
    stop: Arc<AtomicBool>,
    ended: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Capture errors reported by the camera thread (it logs them and keeps going).
    errors: Arc<std::sync::atomic::AtomicU64>,
}

impl CameraLink {
    /// Starts `camera` on its own thread with buffers for frames of `width` x `height`.
    pub fn spawn(mut camera: impl Camera, width: usize, height: usize) -> Result<CameraLink> {
        let (requests, mut req_rx) = rtrb::RingBuffer::<Request>::new(RING);
        let (mut frame_tx, frames) = rtrb::RingBuffer::<Box<Captured>>::new(RING + 1);
        let (mut free, mut free_rx) = rtrb::RingBuffer::<Box<Captured>>::new(RING + 2);
        let t0 = Instant::now();
        for _ in 0..RING + 1 {
            let pair = Captured {
                rgb: Image::new(width, height, 3),
                ir: Image::new(width, height, 1),
                rgb_time: t0,
                ir_time: t0,
                seq: 0,
            };
            free.push(Box::new(pair)).expect("the free ring holds every buffer");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, ended2, errors2) = (stop.clone(), ended.clone(), errors.clone());
        let thread = std::thread::Builder::new()
            .name("kestrel-camera".into())
            .spawn(move || {
                let mut pending: Option<Request> = None;
                while !stop2.load(Ordering::Acquire) {
                    // The newest request wins: a camera that fell behind skips to the present.
                    while let Ok(r) = req_rx.pop() {
                        pending = Some(r);
                    }
                    let Some(req) = pending.as_ref() else {
                        std::thread::park_timeout(Duration::from_millis(1));
                        continue;
                    };
                    // Every buffer is in flight when the loop has not read for a while: wait
                    // for it to give one back.
                    let Ok(mut buf) = free_rx.pop() else {
                        std::thread::park_timeout(Duration::from_micros(500));
                        continue;
                    };
                    match camera.capture(req, &mut buf) {
                        Ok(true) => {}
                        Ok(false) => {
                            ended2.store(true, Ordering::Release);
                            break;
                        }
                        Err(e) => {
                            log::warn!("camera: {e}");
                            errors2.fetch_add(1, Ordering::Relaxed);
                            // Marked unusable; it goes back to the pool through the loop.
                            buf.seq = u64::MAX;
                        }
                    }
                    let _ = frame_tx.push(buf);
                    pending = None;
                }
            })
            .map_err(|e| Error::Io { path: "camera thread".into(), source: e })?;
        Ok(CameraLink { requests, frames, free, current: None, stop, ended, thread: Some(thread), errors })
    }

    /// Asks the camera for the next pair.
    pub fn request(&mut self, req: Request) {
        if self.requests.push(req).is_ok() {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
    }

    /// The newest pair answering request `min_seq` or later, waiting until `deadline` at most;
    /// older pairs are recycled unseen. `None`: nothing arrived in time (a missing frame).
    pub fn read(&mut self, min_seq: u64, deadline: Option<Instant>) -> Option<&Captured> {
        if let Some(b) = self.current.take() {
            let _ = self.free.push(b);
        }
        loop {
            while let Ok(b) = self.frames.pop() {
                let keep = b.seq != u64::MAX && b.seq >= min_seq;
                if keep {
                    if let Some(old) = self.current.replace(b) {
                        let _ = self.free.push(old);
                    }
                } else {
                    let _ = self.free.push(b);
                }
            }
            if self.current.is_some() || self.ended.load(Ordering::Acquire) {
                break;
            }
            match deadline {
                Some(d) if Instant::now() >= d => break,
                _ => std::thread::sleep(Duration::from_micros(200)),
            }
        }
        self.current.as_deref()
    }

    /// Whether the source has no more frames.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire) && self.frames.is_empty()
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

impl Drop for CameraLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
