//! A one-file `tar.gz`, written without a compression library.
//!
//! YARN cluster-mode Spark specs ship the launcher with the job (`--archives`), and YARN
//! keeps the executable bit of files unpacked from an archive. The archive needs nothing but
//! one ustar entry, so it is built here: a ustar header and the file, inside a gzip member
//! whose deflate stream uses stored (uncompressed) blocks. Every gzip reader accepts stored
//! blocks; the archive is as large as the binary, which is small and sent once per kernel.

/// The gzip'ed tar of one regular file `name` (mode `mode`, owner 0:0, mtime 0).
pub fn tar_gz(name: &str, mode: u32, data: &[u8]) -> Vec<u8> {
    gzip(&tar(name, mode, data))
}

fn octal(field: &mut [u8], value: u64) {
    // Width-1 octal digits, then NUL, as ustar wants.
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

fn tar(name: &str, mode: u32, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    let n = name.as_bytes();
    h[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], data.len() as u64);
    octal(&mut h[136..148], 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is taken with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    octal(&mut h[148..155], sum);
    h[155] = b' ';
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    // Two zero blocks end the archive.
    out.resize(out.len() + 1024, 0);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

fn gzip(data: &[u8]) -> Vec<u8> {
    // Header: magic, deflate, no flags, mtime 0, no extra flags, OS "unix".
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        // A stored block starts byte-aligned: BFINAL bit, BTYPE 00, LEN, NLEN.
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn tar_header_fields() {
        let t = tar("kernel-launcher", 0o755, b"abc");
        assert_eq!(t.len(), 512 + 512 + 1024);
        assert_eq!(&t[..15], b"kernel-launcher");
        assert_eq!(&t[100..108], b"0000755\0");
        assert_eq!(&t[124..136], b"00000000003\0");
        assert_eq!(&t[257..263], b"ustar\0");
        assert_eq!(&t[512..515], b"abc");
        let mut h = t[..512].to_vec();
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        let field = std::str::from_utf8(&t[148..154]).unwrap();
        assert_eq!(u64::from_str_radix(field, 8).unwrap(), sum);
    }

    #[test]
    fn system_tar_unpacks_it() {
        // Larger than one stored block, to cover the block split.
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let dir = std::env::temp_dir().join(format!("kl-archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("a.tar.gz");
        std::fs::write(&archive, tar_gz("kernel-launcher", 0o755, &data)).unwrap();
        let st = std::process::Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&dir)
            .status()
            .expect("tar runs");
        assert!(st.success());
        let out = dir.join("kernel-launcher");
        assert_eq!(std::fs::read(&out).unwrap(), data);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "executable bits kept: {mode:o}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
