use kestrel::format::*;
fn raw(meta: &[u8]) -> Vec<u8> {
    let table_end = 64 + 96;
    let meta_off = table_end;
    let t_off = (meta_off + meta.len() + 7) / 8 * 8;
    let tensors = [0u8; 8];
    let d_off = (t_off + 8 + 255) / 256 * 256;
    let mut b = vec![0u8; d_off];
    b[meta_off..meta_off + meta.len()].copy_from_slice(meta);
    b[0..8].copy_from_slice(&MAGIC);
    b[8..10].copy_from_slice(&1u16.to_le_bytes());
    b[16..24].copy_from_slice(&(d_off as u64).to_le_bytes());
    b[24..28].copy_from_slice(&3u32.to_le_bytes());
    let secs = [(1u32, meta_off, meta.len()), (2, t_off, 8), (3, d_off, 0)];
    let _ = tensors;
    for (i, (k, o, l)) in secs.iter().enumerate() {
        let e = 64 + 32 * i;
        let crc = crc32(&b[*o..o + l]);
        b[e..e + 4].copy_from_slice(&k.to_le_bytes());
        b[e + 4..e + 8].copy_from_slice(&crc.to_le_bytes());
        b[e + 8..e + 16].copy_from_slice(&(*o as u64).to_le_bytes());
        b[e + 16..e + 24].copy_from_slice(&(*l as u64).to_le_bytes());
    }
    let c = crc32(&b[16..table_end]);
    b[12..16].copy_from_slice(&c.to_le_bytes());
    b
}
#[test]
fn quad() {
    for n in [4096u32, 16384, 65536] {
        let mut meta = n.to_le_bytes().to_vec();
        for i in 0..n {
            let key = format!("{:04x}", i);
            meta.extend_from_slice(&4u32.to_le_bytes());
            meta.extend_from_slice(&0u32.to_le_bytes());
            meta.extend_from_slice(key.as_bytes());
        }
        let b = raw(&meta);
        let t = std::time::Instant::now();
        let r = Kpak::from_bytes(&b, Verify::Full);
        println!("n {n} bytes {} ok {} {:?}", b.len(), r.is_ok(), t.elapsed());
    }
}
