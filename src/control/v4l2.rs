//! A visible + thermal camera pair read through Linux's Video4Linux2 (V4L2) streaming API, as a
//! [`Camera`](super::source::Camera) for the camera thread (feature `v4l2`, Linux only).
//!
//! What it does: opens both devices non-blocking, negotiates a pixel format and size with
//! `VIDIOC_S_FMT`, memory-maps four driver buffers per device and starts streaming. Each capture
//! takes the newest finished frame of each device (older ready frames go straight back to the
//! driver unseen: a robot wants the present, not a backlog), converts it into the pair's recycled
//! images (no allocation once they have their size) and queues the buffer again. A frame that
//! does not come within 200 ms, or a device that vanishes (`ENODEV`, `EIO`, `POLLERR`), is an
//! [`Error::Camera`](crate::error::Error::Camera) naming the device, so a dead camera never hangs
//! the camera thread: the thread logs the error, marks the pair unusable and the loop emits the
//! safe action.
//!
//! Formats: visible YUYV (preferred; BT.601 limited range to RGB in integer math) or RGB24;
//! thermal GREY (preferred: the camera's own 8-bit contrast), Y16 (raw counts, stretched linearly
//! from the frame's min..max to 0..255) or YUYV (its luma). Drivers may change the requested size;
//! the images take whatever size the driver gives (the detector letterboxes any size). Padded
//! rows (`bytesperline` above the row size) are honoured. Any other format is refused by name.
//!
//! What it does not do: no controls (exposure, gain, white balance, flat-field correction), no
//! frame-rate setting, no multi-planar API (`*_MPLANE` devices are refused), no `USERPTR` or
//! `DMABUF` buffers, no compressed (MJPEG, H.264) or Bayer formats, and no reconnection: a device
//! that vanished stays an error until the camera is opened again. Frames are stamped with the
//! moment they were dequeued, not the driver's capture timestamp.
//!
//! Why raw ioctls: the handful of structs and the eight ioctls it needs are declared here, field for field
//! from `linux/videodev2.h`, with their sizes asserted at compile time. No bindgen means no
//! libclang or kernel headers at build time and no new crates, which keeps cross-compiling to a
//! Jetson (aarch64) a plain `cargo build --target`.
//!
//! The pixel conversions (`pixels`) are plain functions compiled and tested even without the
//! feature, so CI, which has no camera, still checks them.

#[cfg(all(feature = "v4l2", target_os = "linux"))]
pub use device::V4l2Camera;

/// Pixel conversions from V4L2 frames into kestrel's 8-bit images, stride-aware and allocation
/// free. Each returns `false` (leaving `dst` unspecified) when the sizes do not fit: a source
/// shorter than the frame, a destination of the wrong length, a zero or (for YUYV) odd width.
pub(crate) mod pixels {
    /// Bytes needed for `height` rows of `row_bytes` each, rows starting `stride` bytes apart
    /// (the last row needs no padding). `None` on overflow or a stride below the row size.
    pub fn frame_bytes(row_bytes: usize, height: usize, stride: usize) -> Option<usize> {
        if stride < row_bytes {
            return None;
        }
        stride.checked_mul(height.checked_sub(1)?)?.checked_add(row_bytes)
    }

    /// The `height` rows of `src`, each `row_bytes` long, or `None` when `src` is too short.
    fn rows(src: &[u8], row_bytes: usize, height: usize, stride: usize) -> Option<impl Iterator<Item = &[u8]>> {
        if row_bytes == 0 || src.len() < frame_bytes(row_bytes, height, stride)? {
            return None;
        }
        Some((0..height).map(move |y| &src[y * stride..y * stride + row_bytes]))
    }

    /// One pixel from BT.601 limited-range Y'CbCr (Y 16..235, Cb/Cr 16..240), `d` = Cb - 128,
    /// `e` = Cr - 128. The coefficients are the float ones times 256, rounded: 298 = 255/219,
    /// 409 = 1.402 * 255/224, 100 and 208 from Kr = 0.299 and Kb = 0.114, 516 = 1.772 * 255/224.
    #[inline]
    fn bt601_limited(y: u8, d: i32, e: i32) -> [u8; 3] {
        let c = 298 * (y as i32 - 16) + 128;
        let clamp = |v: i32| (v >> 8).clamp(0, 255) as u8;
        [clamp(c + 409 * e), clamp(c - 100 * d - 208 * e), clamp(c + 516 * d)]
    }

    /// YUYV 4:2:2 (Y0 Cb Y1 Cr per two pixels) to interleaved RGB24, `dst` = width x height x 3.
    pub fn yuyv_to_rgb(src: &[u8], width: usize, height: usize, stride: usize, dst: &mut [u8]) -> bool {
        if !width.is_multiple_of(2) || dst.len() != width * height * 3 {
            return false;
        }
        let Some(rows) = rows(src, width * 2, height, stride) else { return false };
        for (row, out) in rows.zip(dst.chunks_exact_mut(width * 3)) {
            for (yuyv, rgb) in row.chunks_exact(4).zip(out.chunks_exact_mut(6)) {
                let (d, e) = (yuyv[1] as i32 - 128, yuyv[3] as i32 - 128);
                rgb[..3].copy_from_slice(&bt601_limited(yuyv[0], d, e));
                rgb[3..].copy_from_slice(&bt601_limited(yuyv[2], d, e));
            }
        }
        true
    }

    /// The luma of a YUYV frame as 8-bit gray, `dst` = width x height.
    pub fn yuyv_luma(src: &[u8], width: usize, height: usize, stride: usize, dst: &mut [u8]) -> bool {
        if !width.is_multiple_of(2) || dst.len() != width * height {
            return false;
        }
        let Some(rows) = rows(src, width * 2, height, stride) else { return false };
        for (row, out) in rows.zip(dst.chunks_exact_mut(width)) {
            for (yy, o) in row.chunks_exact(2).zip(out) {
                *o = yy[0];
            }
        }
        true
    }

    /// 16-bit little-endian samples (a thermal core's raw counts) to 8 bits by a linear stretch
    /// of this frame's min..max onto 0..255, rounded. A constant frame (the shutter closed for a
    /// flat-field correction) gives all zeros.
    pub fn y16_to_gray(src: &[u8], width: usize, height: usize, stride: usize, dst: &mut [u8]) -> bool {
        if dst.len() != width * height {
            return false;
        }
        let sample = |p: &[u8]| u16::from_le_bytes([p[0], p[1]]) as u32;
        let Some(scan) = rows(src, width * 2, height, stride) else { return false };
        let (mut lo, mut hi) = (u32::MAX, 0);
        for row in scan {
            for v in row.chunks_exact(2).map(sample) {
                (lo, hi) = (lo.min(v), hi.max(v));
            }
        }
        let range = hi.saturating_sub(lo);
        let Some(rows) = rows(src, width * 2, height, stride) else { return false };
        for (row, out) in rows.zip(dst.chunks_exact_mut(width)) {
            for (p, o) in row.chunks_exact(2).zip(out) {
                // (v - lo) * 255 < 2^24: no overflow. A zero range (constant frame) gives 0.
                *o = ((sample(p) - lo) * 255 + range / 2).checked_div(range).unwrap_or(0) as u8;
            }
        }
        true
    }

    /// Packed rows of `row_bytes` (GREY, RGB24) copied without their padding, `dst` = rows x height.
    pub fn copy_rows(src: &[u8], row_bytes: usize, height: usize, stride: usize, dst: &mut [u8]) -> bool {
        if dst.len() != row_bytes * height {
            return false;
        }
        let Some(rows) = rows(src, row_bytes, height, stride) else { return false };
        for (row, out) in rows.zip(dst.chunks_exact_mut(row_bytes)) {
            out.copy_from_slice(row);
        }
        true
    }

    /// A fourcc as its four characters ("YUYV", "Y16 "), non-printable bytes as `\xNN`.
    pub fn fourcc_text(code: u32) -> String {
        let mut text = String::new();
        for b in code.to_le_bytes() {
            if b.is_ascii_graphic() || b == b' ' {
                text.push(b as char);
            } else {
                text.push_str(&format!("\\x{b:02x}"));
            }
        }
        text
    }
}

#[cfg(all(feature = "v4l2", target_os = "linux"))]
mod device {
    use std::ffi::c_int;
    use std::fs::File;
    use std::io;
    use std::marker::PhantomData;
    use std::mem::{offset_of, size_of};
    use std::os::fd::{AsRawFd, RawFd};
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;
    use std::ptr::NonNull;
    use std::time::{Duration, Instant};

    use super::pixels;
    use crate::control::source::{Camera, Captured, Request};
    use crate::error::{Error, Result};
    use crate::vision::image::{Image, MAX_SIDE};
    use crate::vision::preprocess::resize_bilinear_into;

    // The layouts and ioctl numbers below are checked for LP64 with the generic ioctl encoding;
    // other targets (32-bit ARM's time64 v4l2_buffer, powerpc's ioctl bits) would need their own.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    compile_error!("the v4l2 feature supports x86_64 and aarch64 Linux only (struct layouts and ioctl numbers)");

    /// How long a capture waits for each camera's next frame before calling it stalled.
    const FRAME_TIMEOUT: Duration = Duration::from_millis(200);
    /// Driver buffers per device: one held while converting, the rest filling.
    const BUFFERS: u32 = 4;

    // ---- linux/videodev2.h (the UAPI header), field for field ----

    const BUF_TYPE_VIDEO_CAPTURE: u32 = 1; // enum v4l2_buf_type
    const MEMORY_MMAP: u32 = 1; // enum v4l2_memory
    const FIELD_NONE: u32 = 1; // enum v4l2_field: progressive
    const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
    const CAP_VIDEO_CAPTURE_MPLANE: u32 = 0x0000_1000;
    const CAP_STREAMING: u32 = 0x0400_0000;
    const CAP_DEVICE_CAPS: u32 = 0x8000_0000;
    const BUF_FLAG_ERROR: u32 = 0x0000_0040;

    const fn fourcc(code: &[u8; 4]) -> u32 {
        u32::from_le_bytes(*code)
    }

    /// `struct v4l2_capability`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    #[allow(dead_code)] // mirrors the C struct; not every field is read
    struct V4l2Capability {
        driver: [u8; 16],
        card: [u8; 32],
        bus_info: [u8; 32],
        version: u32,
        capabilities: u32,
        device_caps: u32,
        reserved: [u32; 3],
    }

    /// `struct v4l2_pix_format` (single-planar).
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    #[allow(dead_code)]
    struct V4l2PixFormat {
        width: u32,
        height: u32,
        pixelformat: u32,
        field: u32,
        bytesperline: u32,
        sizeimage: u32,
        colorspace: u32,
        priv_: u32,
        flags: u32,
        ycbcr_enc: u32, // union with hsv_enc
        quantization: u32,
        xfer_func: u32,
    }

    /// The `fmt` union of `struct v4l2_format`: 200 bytes, pointer-aligned (its `v4l2_window`
    /// member holds pointers), so on LP64 it starts at byte 8.
    #[repr(C)]
    #[derive(Clone, Copy)]
    union V4l2FormatUnion {
        pix: V4l2PixFormat,
        raw_data: [u8; 200],
        _align: [libc::c_ulong; 200 / size_of::<libc::c_ulong>()],
    }

    /// `struct v4l2_format`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct V4l2Format {
        type_: u32,
        fmt: V4l2FormatUnion,
    }

    /// `struct v4l2_requestbuffers`.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    #[allow(dead_code)]
    struct V4l2RequestBuffers {
        count: u32,
        type_: u32,
        memory: u32,
        capabilities: u32,
        flags: u8,
        reserved: [u8; 3],
    }

    /// `struct timeval` as the UAPI header sees it in user space.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    #[allow(dead_code)]
    struct Timeval {
        tv_sec: libc::time_t,
        tv_usec: libc::suseconds_t,
    }

    /// `struct v4l2_timecode`.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    #[allow(dead_code)]
    struct V4l2Timecode {
        type_: u32,
        flags: u32,
        frames: u8,
        seconds: u8,
        minutes: u8,
        hours: u8,
        userbits: [u8; 4],
    }

    /// The `m` union of `struct v4l2_buffer`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    #[allow(dead_code)]
    union V4l2BufferM {
        offset: u32,
        userptr: libc::c_ulong,
        planes: *mut libc::c_void,
        fd: i32,
    }

    /// `struct v4l2_buffer`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    #[allow(dead_code)]
    struct V4l2Buffer {
        index: u32,
        type_: u32,
        bytesused: u32,
        flags: u32,
        field: u32,
        timestamp: Timeval,
        timecode: V4l2Timecode,
        sequence: u32,
        memory: u32,
        m: V4l2BufferM,
        length: u32,
        reserved2: u32,
        request_fd: i32, // union with `__u32 reserved`
    }

    impl V4l2Buffer {
        /// An mmap capture buffer: what QUERYBUF, QBUF and DQBUF are given.
        fn mmap_capture(index: u32) -> V4l2Buffer {
            V4l2Buffer {
                index,
                type_: BUF_TYPE_VIDEO_CAPTURE,
                bytesused: 0,
                flags: 0,
                field: 0,
                timestamp: Timeval::default(),
                timecode: V4l2Timecode::default(),
                sequence: 0,
                memory: MEMORY_MMAP,
                m: V4l2BufferM { userptr: 0 },
                length: 0,
                reserved2: 0,
                request_fd: 0,
            }
        }
    }

    // A layout mistake fails the build, not a robot. Sizes and offsets from linux/videodev2.h on
    // x86_64 and aarch64.
    const _: () = {
        assert!(size_of::<V4l2Capability>() == 104);
        assert!(size_of::<V4l2PixFormat>() == 48);
        assert!(size_of::<V4l2Format>() == 208);
        assert!(offset_of!(V4l2Format, fmt) == 8);
        assert!(size_of::<V4l2RequestBuffers>() == 20);
        assert!(size_of::<V4l2Buffer>() == 88);
        assert!(offset_of!(V4l2Buffer, timestamp) == 24);
        assert!(offset_of!(V4l2Buffer, sequence) == 56);
        assert!(offset_of!(V4l2Buffer, m) == 64);
        assert!(offset_of!(V4l2Buffer, length) == 72);
        assert!(offset_of!(V4l2Buffer, request_fd) == 80);
    };

    /// Types the kernel may fill with any bytes: `repr(C)` integers, integer arrays and unions
    /// of them (a raw pointer takes any bit pattern).
    ///
    /// # Safety
    /// Implementors must be plain old data of exactly the C layout their ioctl expects.
    unsafe trait IoctlArg: Copy {}
    // SAFETY: each is repr(C), integer-only (or raw pointers), with its size asserted above.
    unsafe impl IoctlArg for V4l2Capability {}
    unsafe impl IoctlArg for V4l2Format {}
    unsafe impl IoctlArg for V4l2RequestBuffers {}
    unsafe impl IoctlArg for V4l2Buffer {}
    unsafe impl IoctlArg for c_int {}

    /// An ioctl whose number encodes the size of its argument type, so a call cannot pass the
    /// kernel a smaller struct than it writes.
    struct Ioctl<T> {
        request: u32,
        name: &'static str,
        arg: PhantomData<fn(&mut T)>,
    }

    impl<T> Ioctl<T> {
        /// Linux's generic `_IOC(dir, 'V', nr, sizeof(T))`: nr in bits 0..8, type in 8..16,
        /// size in 16..30, direction (1 write, 2 read) in 30..32.
        const fn new(dir: u32, nr: u32, name: &'static str) -> Ioctl<T> {
            assert!(size_of::<T>() < 1 << 14);
            let request = (dir << 30) | ((size_of::<T>() as u32) << 16) | ((b'V' as u32) << 8) | nr;
            Ioctl { request, name, arg: PhantomData }
        }
        const fn ior(nr: u32, name: &'static str) -> Ioctl<T> {
            Ioctl::new(2, nr, name)
        }
        const fn iow(nr: u32, name: &'static str) -> Ioctl<T> {
            Ioctl::new(1, nr, name)
        }
        const fn iowr(nr: u32, name: &'static str) -> Ioctl<T> {
            Ioctl::new(3, nr, name)
        }
    }

    const VIDIOC_QUERYCAP: Ioctl<V4l2Capability> = Ioctl::ior(0, "VIDIOC_QUERYCAP");
    const VIDIOC_S_FMT: Ioctl<V4l2Format> = Ioctl::iowr(5, "VIDIOC_S_FMT");
    const VIDIOC_REQBUFS: Ioctl<V4l2RequestBuffers> = Ioctl::iowr(8, "VIDIOC_REQBUFS");
    const VIDIOC_QUERYBUF: Ioctl<V4l2Buffer> = Ioctl::iowr(9, "VIDIOC_QUERYBUF");
    const VIDIOC_QBUF: Ioctl<V4l2Buffer> = Ioctl::iowr(15, "VIDIOC_QBUF");
    const VIDIOC_DQBUF: Ioctl<V4l2Buffer> = Ioctl::iowr(17, "VIDIOC_DQBUF");
    const VIDIOC_STREAMON: Ioctl<c_int> = Ioctl::iow(18, "VIDIOC_STREAMON");
    const VIDIOC_STREAMOFF: Ioctl<c_int> = Ioctl::iow(19, "VIDIOC_STREAMOFF");

    // The numbers the 64-bit headers give (printed from linux/videodev2.h with a C compiler).
    const _: () = {
        assert!(VIDIOC_QUERYCAP.request == 0x8068_5600);
        assert!(VIDIOC_S_FMT.request == 0xc0d0_5605);
        assert!(VIDIOC_REQBUFS.request == 0xc014_5608);
        assert!(VIDIOC_QUERYBUF.request == 0xc058_5609);
        assert!(VIDIOC_QBUF.request == 0xc058_560f);
        assert!(VIDIOC_DQBUF.request == 0xc058_5611);
        assert!(VIDIOC_STREAMON.request == 0x4004_5612);
        assert!(VIDIOC_STREAMOFF.request == 0x4004_5613);
    };

    /// Runs `op` on `fd`, retrying when a signal interrupts it.
    fn ioctl<T: IoctlArg>(fd: RawFd, op: &Ioctl<T>, arg: &mut T) -> io::Result<()> {
        loop {
            // SAFETY: `arg` is a live, exclusive `T`, and `op.request` encodes `size_of::<T>()`,
            // which bounds what the kernel reads and writes; `IoctlArg` makes any bytes it
            // writes a valid `T`.
            let r = unsafe { libc::ioctl(fd, op.request as _, arg as *mut T) };
            if r != -1 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The pixel formats taken, by fourcc.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum PixelFormat {
        Yuyv,
        Rgb24,
        Grey,
        Y16,
    }

    impl PixelFormat {
        const ALL: [PixelFormat; 4] = [PixelFormat::Yuyv, PixelFormat::Rgb24, PixelFormat::Grey, PixelFormat::Y16];

        fn fourcc(self) -> u32 {
            match self {
                PixelFormat::Yuyv => fourcc(b"YUYV"),
                PixelFormat::Rgb24 => fourcc(b"RGB3"),
                PixelFormat::Grey => fourcc(b"GREY"),
                PixelFormat::Y16 => fourcc(b"Y16 "),
            }
        }

        fn from_fourcc(code: u32) -> Option<PixelFormat> {
            PixelFormat::ALL.into_iter().find(|f| f.fourcc() == code)
        }

        fn bytes_per_pixel(self) -> usize {
            match self {
                PixelFormat::Yuyv | PixelFormat::Y16 => 2,
                PixelFormat::Rgb24 => 3,
                PixelFormat::Grey => 1,
            }
        }
    }

    /// Which camera of the pair a device is: what it should deliver and in what order of taste.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Role {
        Visible,
        Thermal,
    }

    impl Role {
        fn preferences(self) -> &'static [PixelFormat] {
            match self {
                Role::Visible => &[PixelFormat::Yuyv, PixelFormat::Rgb24],
                // GREY first: a thermal core's own 8-bit output (its AGC) beats a plain stretch.
                Role::Thermal => &[PixelFormat::Grey, PixelFormat::Y16, PixelFormat::Yuyv],
            }
        }

        fn channels(self) -> usize {
            match self {
                Role::Visible => 3,
                Role::Thermal => 1,
            }
        }
    }

    /// One driver buffer mapped into this process (read-only).
    struct Mapping {
        ptr: NonNull<u8>,
        len: usize,
    }

    // SAFETY: a mapping is owned by exactly one `Device`, only read through it and unmapped once
    // in its `Drop`; nothing about it is tied to the thread that created it.
    unsafe impl Send for Mapping {}

    /// One streaming V4L2 capture device.
    struct Device {
        name: String,
        file: File,
        role: Role,
        format: PixelFormat,
        width: usize,
        height: usize,
        /// Bytes from one row's start to the next (`bytesperline`).
        stride: usize,
        maps: Vec<Mapping>,
        streaming: bool,
    }

    impl Device {
        fn open(path: &Path, role: Role, width: u32, height: u32) -> Result<Device> {
            // std opens with O_CLOEXEC; O_NONBLOCK makes DQBUF return EAGAIN instead of waiting,
            // so the only wait is `poll` with a timeout.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            // Built before any buffer exists, so its Drop cleans up whatever a failing step left.
            let mut dev = Device {
                name: path.display().to_string(),
                file,
                role,
                format: role.preferences()[0],
                width: 0,
                height: 0,
                stride: 0,
                maps: Vec::new(),
                streaming: false,
            };
            dev.check_capabilities()?;
            dev.negotiate(width, height)?;
            dev.map_buffers()?;
            for index in 0..dev.maps.len() as u32 {
                dev.enqueue(&V4l2Buffer::mmap_capture(index))?;
            }
            let mut kind = BUF_TYPE_VIDEO_CAPTURE as c_int;
            ioctl(dev.fd(), &VIDIOC_STREAMON, &mut kind).map_err(|e| dev.os_error(VIDIOC_STREAMON.name, e))?;
            dev.streaming = true;
            log::info!(
                "camera {}: {:?} {} {}x{} ({} bytes per row, {} buffers)",
                dev.name,
                role,
                pixels::fourcc_text(dev.format.fourcc()),
                dev.width,
                dev.height,
                dev.stride,
                dev.maps.len()
            );
            Ok(dev)
        }

        fn fd(&self) -> RawFd {
            self.file.as_raw_fd()
        }

        fn error(&self, reason: impl Into<String>) -> Error {
            Error::Camera { device: self.name.clone(), reason: reason.into() }
        }

        /// An OS error from `op`, with what it usually means for a camera.
        fn os_error(&self, op: &str, e: io::Error) -> Error {
            let hint = match e.raw_os_error() {
                Some(libc::ENOTTY) => " (not a V4L2 device)",
                Some(libc::ENODEV) => " (the device is gone: unplugged?)",
                Some(libc::EIO) => " (I/O error: cable, power or driver?)",
                Some(libc::EBUSY) => " (busy: another program is using it?)",
                _ => "",
            };
            self.error(format!("{op} failed: {e}{hint}"))
        }

        fn check_capabilities(&self) -> Result<()> {
            let mut cap = V4l2Capability {
                driver: [0; 16],
                card: [0; 32],
                bus_info: [0; 32],
                version: 0,
                capabilities: 0,
                device_caps: 0,
                reserved: [0; 3],
            };
            ioctl(self.fd(), &VIDIOC_QUERYCAP, &mut cap).map_err(|e| self.os_error(VIDIOC_QUERYCAP.name, e))?;
            let caps = if cap.capabilities & CAP_DEVICE_CAPS != 0 { cap.device_caps } else { cap.capabilities };
            if caps & CAP_VIDEO_CAPTURE == 0 {
                let why = if caps & CAP_VIDEO_CAPTURE_MPLANE != 0 {
                    "a multi-planar capture device, which this source does not support"
                } else {
                    "not a video capture device"
                };
                return Err(self.error(format!("{why} (device capabilities {caps:#010x})")));
            }
            if caps & CAP_STREAMING == 0 {
                return Err(self.error("the driver does not support streaming I/O"));
            }
            Ok(())
        }

        /// Asks for each acceptable format in order of preference until the driver answers
        /// with one this role takes; keeps the size the driver chose.
        fn negotiate(&mut self, width: u32, height: u32) -> Result<()> {
            let wanted = self.role.preferences();
            let mut offered: Vec<u32> = Vec::new();
            for &format in wanted {
                let pix = V4l2PixFormat {
                    width,
                    height,
                    pixelformat: format.fourcc(),
                    field: FIELD_NONE,
                    ..V4l2PixFormat::default()
                };
                let mut fmt = V4l2Format { type_: BUF_TYPE_VIDEO_CAPTURE, fmt: V4l2FormatUnion { raw_data: [0; 200] } };
                fmt.fmt.pix = pix;
                ioctl(self.fd(), &VIDIOC_S_FMT, &mut fmt).map_err(|e| self.os_error(VIDIOC_S_FMT.name, e))?;
                // SAFETY: the union is fully initialised (raw_data) and `pix` is plain u32s.
                let got = unsafe { fmt.fmt.pix };
                match PixelFormat::from_fourcc(got.pixelformat).filter(|f| wanted.contains(f)) {
                    Some(f) => return self.accept(f, &got),
                    None if !offered.contains(&got.pixelformat) => offered.push(got.pixelformat),
                    None => {}
                }
            }
            let names = |codes: &mut dyn Iterator<Item = u32>| {
                codes.map(|c| format!("'{}'", pixels::fourcc_text(c))).collect::<Vec<_>>().join(", ")
            };
            Err(self.error(format!(
                "unsupported pixel format {} (the {:?} camera takes {})",
                names(&mut offered.into_iter()),
                self.role,
                names(&mut wanted.iter().map(|f| f.fourcc()))
            )))
        }

        /// Takes the driver's format answer, checking that its size and row pitch make sense.
        fn accept(&mut self, format: PixelFormat, pix: &V4l2PixFormat) -> Result<()> {
            let (width, height) = (pix.width as usize, pix.height as usize);
            if width == 0 || height == 0 || pix.width > MAX_SIDE || pix.height > MAX_SIDE {
                return Err(self.error(format!("the driver chose a {width}x{height} frame (outside 1..={MAX_SIDE})")));
            }
            if format == PixelFormat::Yuyv && !width.is_multiple_of(2) {
                return Err(self.error(format!("the driver chose an odd YUYV width {width}")));
            }
            let row = width * format.bytes_per_pixel();
            let stride = if pix.bytesperline == 0 { row } else { pix.bytesperline as usize };
            if stride < row {
                return Err(self.error(format!("{stride} bytes per row is less than a {width}-pixel row ({row})")));
            }
            (self.format, self.width, self.height, self.stride) = (format, width, height, stride);
            Ok(())
        }

        fn map_buffers(&mut self) -> Result<()> {
            let mut req = V4l2RequestBuffers {
                count: BUFFERS,
                type_: BUF_TYPE_VIDEO_CAPTURE,
                memory: MEMORY_MMAP,
                ..Default::default()
            };
            ioctl(self.fd(), &VIDIOC_REQBUFS, &mut req).map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => self.error("the driver does not support memory-mapped streaming"),
                _ => self.os_error(VIDIOC_REQBUFS.name, e),
            })?;
            // One buffer is held while converting; with fewer than two the driver could stall.
            if req.count < 2 {
                return Err(self.error(format!("the driver granted {} buffers (at least 2 are needed)", req.count)));
            }
            for index in 0..req.count {
                let mut buf = V4l2Buffer::mmap_capture(index);
                ioctl(self.fd(), &VIDIOC_QUERYBUF, &mut buf).map_err(|e| self.os_error(VIDIOC_QUERYBUF.name, e))?;
                let len = buf.length as usize;
                // SAFETY: reading the union member the driver sets for MMAP buffers (an integer).
                let offset = unsafe { buf.m.offset };
                // SAFETY: a new shared read-only mapping of the driver's buffer `index`, at the
                // offset and length QUERYBUF gave; it aliases no Rust memory.
                let ptr = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ,
                        libc::MAP_SHARED,
                        self.fd(),
                        offset as libc::off_t,
                    )
                };
                if ptr == libc::MAP_FAILED {
                    return Err(self.os_error("mmap", io::Error::last_os_error()));
                }
                let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| self.error("mmap returned null"))?;
                self.maps.push(Mapping { ptr, len });
            }
            Ok(())
        }

        fn enqueue(&self, buf: &V4l2Buffer) -> Result<()> {
            let mut buf = V4l2Buffer::mmap_capture(buf.index);
            ioctl(self.fd(), &VIDIOC_QBUF, &mut buf).map_err(|e| self.os_error(VIDIOC_QBUF.name, e))
        }

        /// Waits (at most until `deadline`) until a frame is ready to dequeue.
        fn wait_readable(&self, deadline: Instant) -> Result<()> {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(self.error(format!(
                        "no frame within {} ms (stalled or disconnected?)",
                        FRAME_TIMEOUT.as_millis()
                    )));
                }
                let ms = left.as_micros().div_ceil(1000).min(c_int::MAX as u128) as c_int;
                let mut pfd = libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd, alive for the call.
                let r = unsafe { libc::poll(&mut pfd, 1, ms) };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(self.os_error("poll", e));
                }
                if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                    return Err(self.error(format!(
                        "poll reported an error (revents {:#x}): the device stopped streaming or was unplugged",
                        pfd.revents
                    )));
                }
                if pfd.revents & libc::POLLIN != 0 {
                    return Ok(());
                }
            }
        }

        /// Dequeues every ready frame and keeps the newest (the rest go straight back to the
        /// driver), waiting for one if none is ready. Returns it with the moment it was dequeued.
        fn dequeue_newest(&self) -> Result<(V4l2Buffer, Instant)> {
            let deadline = Instant::now() + FRAME_TIMEOUT;
            let mut newest: Option<(V4l2Buffer, Instant)> = None;
            loop {
                let mut buf = V4l2Buffer::mmap_capture(0);
                match ioctl(self.fd(), &VIDIOC_DQBUF, &mut buf) {
                    Ok(()) => {
                        let now = Instant::now();
                        if let Some((older, _)) = newest.replace((buf, now)) {
                            if let Err(e) = self.enqueue(&older) {
                                let _ = self.enqueue(&buf);
                                return Err(e);
                            }
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => match newest {
                        Some(frame) => return Ok(frame),
                        None => self.wait_readable(deadline)?,
                    },
                    Err(e) => {
                        if let Some((held, _)) = newest {
                            let _ = self.enqueue(&held);
                        }
                        return Err(self.os_error(VIDIOC_DQBUF.name, e));
                    }
                }
            }
        }

        /// Converts the dequeued `buf` into `out` (reshaped to the negotiated size first).
        fn convert(&self, buf: &V4l2Buffer, out: &mut Image) -> Result<()> {
            if buf.flags & BUF_FLAG_ERROR != 0 {
                return Err(self.error("the driver flagged the frame as corrupt (V4L2_BUF_FLAG_ERROR)"));
            }
            let map = self.maps.get(buf.index as usize).ok_or_else(|| {
                self.error(format!("the driver returned buffer {} of {}", buf.index, self.maps.len()))
            })?;
            let used = (buf.bytesused as usize).min(map.len);
            let (w, h, stride) = (self.width, self.height, self.stride);
            let needed = pixels::frame_bytes(w * self.format.bytes_per_pixel(), h, stride).unwrap_or(usize::MAX);
            if used < needed {
                return Err(self.error(format!(
                    "short frame: {used} bytes, a {w}x{h} '{}' frame needs {needed}",
                    pixels::fourcc_text(self.format.fourcc())
                )));
            }
            // SAFETY: `buf` is dequeued, so the driver does not write this buffer until it is
            // queued again, which the caller does only after this slice's last use; the mapping
            // is `map.len` >= `used` bytes and lives until Drop.
            let src = unsafe { std::slice::from_raw_parts(map.ptr.as_ptr(), used) };
            out.reshape(w, h, self.role.channels());
            let dst = &mut out.data[..];
            let done = match (self.role, self.format) {
                (Role::Visible, PixelFormat::Yuyv) => pixels::yuyv_to_rgb(src, w, h, stride, dst),
                (Role::Visible, PixelFormat::Rgb24) => pixels::copy_rows(src, w * 3, h, stride, dst),
                (Role::Thermal, PixelFormat::Grey) => pixels::copy_rows(src, w, h, stride, dst),
                (Role::Thermal, PixelFormat::Y16) => pixels::y16_to_gray(src, w, h, stride, dst),
                (Role::Thermal, PixelFormat::Yuyv) => pixels::yuyv_luma(src, w, h, stride, dst),
                (role, format) => {
                    return Err(self.error(format!("no conversion of {format:?} for the {role:?} camera")))
                }
            };
            if !done {
                return Err(self.error(format!("frame of {used} bytes does not fit {w}x{h}")));
            }
            Ok(())
        }

        /// The newest frame into `out`; returns when it was dequeued. The buffer goes back to
        /// the driver whether or not the conversion worked.
        fn capture(&self, out: &mut Image) -> Result<Instant> {
            let (buf, time) = self.dequeue_newest()?;
            let converted = self.convert(&buf, out);
            let requeued = self.enqueue(&buf);
            converted?;
            requeued?;
            Ok(time)
        }
    }

    impl Drop for Device {
        fn drop(&mut self) {
            if self.streaming {
                let mut kind = BUF_TYPE_VIDEO_CAPTURE as c_int;
                if let Err(e) = ioctl(self.fd(), &VIDIOC_STREAMOFF, &mut kind) {
                    log::debug!("camera {}: {} failed: {e}", self.name, VIDIOC_STREAMOFF.name);
                }
            }
            for map in self.maps.drain(..) {
                // SAFETY: mapped in `map_buffers` with this length, unmapped once here; no slice
                // into it outlives a `convert` call.
                unsafe { libc::munmap(map.ptr.as_ptr().cast(), map.len) };
            }
            // `file` closes the descriptor after this, which frees the driver's buffers.
        }
    }

    /// A visible (RGB) + thermal (single-channel infrared) V4L2 camera pair.
    ///
    /// Thermal cores rarely share the visible sensor's resolution (160x120, 640x512 against
    /// 640x480), but a pair must have one size: the thermal frame is resampled (bilinear) to the
    /// visible frame's size. That assumes boresighted cameras with the same field of view;
    /// registration beyond that (a homography from calibration) is the integrator's.
    pub struct V4l2Camera {
        visible: Device,
        thermal: Device,
        raw_thermal: Image,
        scratch: Image,
    }

    impl V4l2Camera {
        /// Opens both devices (e.g. `/dev/video0`, `/dev/video2`), asks each for `width` x
        /// `height` (the driver may choose another size; the images follow it) and starts
        /// streaming.
        pub fn open(visible: &Path, thermal: &Path, width: u32, height: u32) -> Result<V4l2Camera> {
            if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
                return Err(Error::InvalidArgument {
                    reason: format!("camera size {width}x{height} is outside 1..={MAX_SIDE}"),
                });
            }
            let visible = Device::open(visible, Role::Visible, width, height)?;
            let thermal = Device::open(thermal, Role::Thermal, width, height)?;
            Ok(V4l2Camera { visible, thermal, raw_thermal: Image::default(), scratch: Image::default() })
        }
    }

    impl Camera for V4l2Camera {
        /// Fills `into` with the newest frame of each camera; never ends (`Ok(false)`), and any
        /// stall or failure of either camera is an error for this pair.
        fn capture(&mut self, req: &Request, into: &mut Captured) -> Result<bool> {
            into.rgb_time = self.visible.capture(&mut into.rgb)?;
            into.ir_time = self.thermal.capture(&mut self.raw_thermal)?;
            let (w, h) = (into.rgb.width, into.rgb.height);
            resize_bilinear_into(&self.raw_thermal, w, h, &mut self.scratch, &mut into.ir);
            into.seq = req.seq;
            Ok(true)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn v4l2_open_missing_path_is_an_io_error() {
            let missing = Path::new("/nonexistent/kestrel/video0");
            let err = V4l2Camera::open(missing, missing, 640, 480).err().expect("a missing device must not open");
            match &err {
                Error::Io { path, source } => {
                    assert_eq!(path, missing);
                    assert_eq!(source.kind(), io::ErrorKind::NotFound);
                }
                other => panic!("expected Error::Io, got {other:?}"),
            }
            assert!(err.to_string().contains("/nonexistent/kestrel/video0"), "{err}");
        }

        #[test]
        fn v4l2_open_dev_null_is_not_a_v4l2_device() {
            let null = Path::new("/dev/null");
            let err = V4l2Camera::open(null, null, 640, 480).err().expect("/dev/null is not a camera");
            match &err {
                Error::Camera { device, reason } => {
                    assert_eq!(device, "/dev/null");
                    assert!(reason.contains("VIDIOC_QUERYCAP") && reason.contains("not a V4L2 device"), "{reason}");
                }
                other => panic!("expected Error::Camera, got {other:?}"),
            }
        }

        #[test]
        fn v4l2_open_rejects_an_empty_size() {
            let null = Path::new("/dev/null");
            assert!(matches!(V4l2Camera::open(null, null, 0, 480), Err(Error::InvalidArgument { .. })));
        }

        #[test]
        fn v4l2_formats_round_trip_their_fourcc() {
            for f in PixelFormat::ALL {
                assert_eq!(PixelFormat::from_fourcc(f.fourcc()), Some(f));
            }
            assert_eq!(PixelFormat::Yuyv.fourcc(), 0x5659_5559);
            assert_eq!(PixelFormat::Y16.fourcc(), 0x2036_3159);
            assert_eq!(PixelFormat::from_fourcc(fourcc(b"MJPG")), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pixels::*;

    /// Conversions are held to a float64 reference within one 8-bit step.
    const LSB_TOL: i32 = 1;

    /// BT.601 limited range (Y 16..235, Cb/Cr 16..240) to RGB 0..255 in float64, from Kr and Kb.
    fn bt601_reference(y: u8, cb: u8, cr: u8) -> [f64; 3] {
        let (kr, kb) = (0.299, 0.114);
        let kg = 1.0 - kr - kb;
        let l = (y as f64 - 16.0) / 219.0;
        let (pb, pr) = ((cb as f64 - 128.0) / 224.0, (cr as f64 - 128.0) / 224.0);
        let r = l + 2.0 * (1.0 - kr) * pr;
        let b = l + 2.0 * (1.0 - kb) * pb;
        let g = (l - kr * r - kb * b) / kg;
        [r * 255.0, g * 255.0, b * 255.0]
    }

    fn quantize(v: f64) -> i32 {
        v.round().clamp(0.0, 255.0) as i32
    }

    /// One YUYV macropixel (two pixels sharing chroma) through the converter.
    fn convert_pair(y0: u8, cb: u8, y1: u8, cr: u8) -> [u8; 6] {
        let mut rgb = [0u8; 6];
        assert!(yuyv_to_rgb(&[y0, cb, y1, cr], 2, 1, 4, &mut rgb));
        rgb
    }

    #[test]
    fn v4l2_yuyv_black_and_white() {
        assert_eq!(convert_pair(16, 128, 235, 128), [0, 0, 0, 255, 255, 255]);
        // Footroom and headroom clip rather than wrap.
        assert_eq!(convert_pair(0, 128, 255, 128), [0, 0, 0, 255, 255, 255]);
    }

    #[test]
    fn v4l2_yuyv_saturated_red() {
        // Pure red in BT.601 limited range: Y = 16 + 219 * 0.299 = 81.5, Cb = 128 - 224 * 0.299 /
        // 1.772 = 90.2, Cr = 128 + 224 / 2 = 240. By hand with the integer coefficients:
        // R = (298 * 65 + 409 * 112 + 128) >> 8 = 255, G = (19370 + 3800 - 23296 + 128) >> 8 = 0,
        // B = (19370 - 19608 + 128) >> 8 = -1 -> 0.
        let rgb = convert_pair(81, 90, 81, 240);
        assert_eq!(rgb[..3], [255, 0, 0]);
        let reference = bt601_reference(81, 90, 240);
        for (c, &r) in rgb[..3].iter().zip(&reference) {
            assert!((*c as i32 - quantize(r)).abs() <= LSB_TOL, "{rgb:?} vs {reference:?}");
        }
    }

    #[test]
    fn v4l2_yuyv_matches_float_reference_for_every_input() {
        let mut worst = 0;
        for y in 0..=255u8 {
            for cb in 0..=255u8 {
                for cr in 0..=255u8 {
                    let rgb = convert_pair(y, cb, y, cr);
                    let reference = bt601_reference(y, cb, cr);
                    for (c, &r) in rgb[..3].iter().zip(&reference) {
                        worst = worst.max((*c as i32 - quantize(r)).abs());
                    }
                }
            }
        }
        assert!(worst <= LSB_TOL, "worst error {worst} steps");
    }

    #[test]
    fn v4l2_yuyv_pixels_share_chroma_and_skip_row_padding() {
        // 2x2 frame, 4 bytes per row plus 3 bytes of padding (stride 7) the converter must skip.
        let src = [16, 128, 235, 128, 9, 9, 9, 81, 90, 81, 240];
        let mut rgb = [0u8; 12];
        assert!(yuyv_to_rgb(&src, 2, 2, 7, &mut rgb));
        assert_eq!(rgb, [0, 0, 0, 255, 255, 255, 255, 0, 0, 255, 0, 0]);
        let mut luma = [0u8; 4];
        assert!(yuyv_luma(&src, 2, 2, 7, &mut luma));
        assert_eq!(luma, [16, 235, 81, 81]);
    }

    fn y16_frame(samples: &[u16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn v4l2_y16_stretches_min_to_0_and_max_to_255() {
        let src = y16_frame(&[7000, 7100, 7200, 7050]);
        let mut gray = [0u8; 4];
        assert!(y16_to_gray(&src, 2, 2, 4, &mut gray));
        // (7050 - 7000) * 255 / 200 = 63.75 -> 64; 7100 is the midpoint: 127.5 -> 128.
        assert_eq!(gray, [0, 128, 255, 64]);
        // Full 16-bit range, little endian.
        let src = y16_frame(&[0, 65535]);
        let mut gray = [0u8; 2];
        assert!(y16_to_gray(&src, 2, 1, 4, &mut gray));
        assert_eq!(gray, [0, 255]);
    }

    #[test]
    fn v4l2_y16_constant_frame_is_black_not_a_divide_by_zero() {
        let src = y16_frame(&[4242; 6]);
        let mut gray = [7u8; 6];
        assert!(y16_to_gray(&src, 3, 2, 6, &mut gray));
        assert_eq!(gray, [0; 6]);
    }

    #[test]
    fn v4l2_short_or_misshapen_frames_are_refused_not_panics() {
        let (w, h) = (4, 3);
        let full = vec![128u8; w * h * 2];
        let short = &full[..full.len() - 1];
        let (mut rgb, mut gray) = (vec![0u8; w * h * 3], vec![0u8; w * h]);
        assert!(yuyv_to_rgb(&full, w, h, w * 2, &mut rgb));
        assert!(!yuyv_to_rgb(short, w, h, w * 2, &mut rgb));
        assert!(!yuyv_luma(short, w, h, w * 2, &mut gray));
        assert!(!y16_to_gray(short, w, h, w * 2, &mut gray));
        assert!(!copy_rows(&full[..w * h - 1], w, h, w, &mut gray));
        // Odd YUYV width, a stride below the row, a destination of the wrong size, empty frames.
        assert!(!yuyv_to_rgb(&full, 3, 2, 6, &mut rgb[..18]));
        assert!(!yuyv_to_rgb(&full, w, h, w * 2 - 1, &mut rgb));
        assert!(!yuyv_to_rgb(&full, w, h, w * 2, &mut rgb[1..]));
        assert!(!y16_to_gray(&full, w, h, w * 2, &mut gray[1..]));
        assert!(!yuyv_to_rgb(&full, 0, h, 0, &mut []));
        assert!(!y16_to_gray(&full, w, 0, w * 2, &mut []));
        assert!(!copy_rows(&[], 0, 0, 0, &mut []));
        // Sizes whose byte count overflows.
        assert_eq!(frame_bytes(2, usize::MAX, usize::MAX / 2), None);
    }

    #[test]
    fn v4l2_copy_rows_drops_padding() {
        let src = [1, 2, 3, 0, 4, 5, 6];
        let mut dst = [0u8; 6];
        assert!(copy_rows(&src, 3, 2, 4, &mut dst));
        assert_eq!(dst, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn v4l2_fourcc_text_names_the_format() {
        assert_eq!(fourcc_text(u32::from_le_bytes(*b"MJPG")), "MJPG");
        assert_eq!(fourcc_text(u32::from_le_bytes(*b"Y16 ")), "Y16 ");
        assert_eq!(fourcc_text(0x8000_0041), "A\\x00\\x00\\x80");
    }
}
