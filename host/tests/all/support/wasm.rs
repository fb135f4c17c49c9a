//! Component bytes for tests and benches: the same component under another digest.

/// Appends a custom section named `name` holding `data`: the component behaves the same, its
/// bytes (and digest) differ.
pub fn custom_section(bytes: &mut Vec<u8>, name: &str, data: &[u8]) {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { b } else { b | 0x80 });
            if n == 0 {
                break;
            }
        }
    }
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(data);
    bytes.push(0);
    leb(payload.len(), bytes);
    bytes.extend_from_slice(&payload);
}
