//! The `multipart/form-data` body of a version upload, part for part as wrangler's (undici's)
//! `FormData` writes it: `metadata` as a plain field, then each module as a file whose
//! filename is its name.

use serde_json::Value;

use crate::worker::Worker;

/// The body and its `content-type` header.
pub fn multipart(worker: &Worker, metadata: &Value) -> (String, Vec<u8>) {
    let meta = metadata.to_string();
    let parts: Vec<&[u8]> = std::iter::once(meta.as_bytes())
        .chain(std::iter::once(worker.main.bytes.as_slice()))
        .chain(worker.modules.iter().map(|m| m.bytes.as_slice()))
        .collect();
    let boundary = boundary(&parts);
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(meta.as_bytes());
    body.extend_from_slice(b"\r\n");
    for m in std::iter::once(&worker.main).chain(&worker.modules) {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{0}\"; filename=\"{0}\"\r\nContent-Type: {1}\r\n\r\n",
                m.name,
                m.kind.content_type()
            )
            .as_bytes(),
        );
        body.extend_from_slice(&m.bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A boundary that occurs in none of the parts: a hash of them, changed until it does not.
fn boundary(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    loop {
        let b = format!("----skiff-formdata-{h:016x}");
        if !parts.iter().any(|p| p.windows(b.len()).any(|w| w == b.as_bytes())) {
            return b;
        }
        h = h.wrapping_add(1);
    }
}

/// The parts of a `multipart/form-data` body.
#[cfg(test)]
fn parse(content_type: &str, body: &[u8]) -> Option<Vec<Part>> {
    let boundary = content_type.split("boundary=").nth(1)?.trim_matches('"');
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    let mut rest = body;
    let start = find(rest, delim.as_bytes())?;
    rest = &rest[start + delim.len()..];
    loop {
        if rest.starts_with(b"--") {
            return Some(out);
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        rest = &rest[head_end + 4..];
        let end = find(rest, format!("\r\n{delim}").as_bytes())?;
        let bytes = rest[..end].to_vec();
        rest = &rest[end + 2 + delim.len()..];
        let mut part = Part { bytes, ..Part::default() };
        for line in head.split("\r\n") {
            let (k, v) = line.split_once(':')?;
            if k.eq_ignore_ascii_case("content-disposition") {
                part.name = attr(v, "name").unwrap_or_default();
                part.filename = attr(v, "filename");
            } else if k.eq_ignore_ascii_case("content-type") {
                part.content_type = Some(v.trim().to_string());
            }
        }
        out.push(part);
    }
}

/// One part of a form.
#[cfg(test)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Part {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    bytes: Vec<u8>,
}

#[cfg(test)]
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
fn attr(header: &str, key: &str) -> Option<String> {
    header.split(';').map(str::trim).find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::{Module, ModuleKind};

    #[test]
    fn a_form_parses_back_into_its_parts() {
        let w = Worker {
            main: Module { name: "index.js".into(), kind: ModuleKind::EsModule, bytes: b"export default {}".to_vec() },
            main_path: "src/index.js".into(),
            modules: vec![Module { name: "add.wasm".into(), kind: ModuleKind::Wasm, bytes: b"\0asm\r\n--x".to_vec() }],
            compatibility_date: "2024-09-23".into(),
            compatibility_flags: vec![],
            bindings: vec![],
        };
        let meta = serde_json::json!({"main_module": "index.js"});
        let (ct, body) = multipart(&w, &meta);
        let parts = parse(&ct, &body).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            (parts[0].name.as_str(), parts[0].filename.as_deref(), parts[0].content_type.as_deref()),
            ("metadata", None, None)
        );
        assert_eq!(serde_json::from_slice::<Value>(&parts[0].bytes).unwrap(), meta);
        assert_eq!(parts[1].content_type.as_deref(), Some("application/javascript+module"));
        assert_eq!((parts[2].filename.as_deref(), parts[2].bytes.as_slice()), (Some("add.wasm"), &b"\0asm\r\n--x"[..]));
    }
}
