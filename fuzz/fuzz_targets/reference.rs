//! Shared component references (`uses: REGISTRY/NS/NAME:TAG@sha256:…`, `https://…#sha256=…`)
//! and lock files (`.skiff/lock.yaml`): both come from pushed commits, and a reference becomes
//! registry URLs.
//!
//! Input, in NUL-separated parts: a reference, a lock file.
//!
//! Nothing may panic; a parsed reference prints back to itself; a parsed lock renders to text
//! that parses to the same lock, and pins only references without a digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_pipeline::component_ref::{ComponentRef, looks_like_reference};
use skiff_pipeline::lock::Lock;

fuzz_target!(|data: &[u8]| {
    let p = skiff_fuzz::parts(data, 2);
    let Ok(text) = std::str::from_utf8(p[0]) else { return };
    let _ = looks_like_reference(text);
    let parsed = ComponentRef::parse(text);
    if let Ok(r) = &parsed {
        let again = ComponentRef::parse(&r.to_string()).expect("a printed reference parses");
        assert_eq!(&again, r);
        let _ = (r.lock_key(), r.repository_ref(), r.digest());
    }
    if let Some(lock_text) = p.get(1).and_then(|l| std::str::from_utf8(l).ok())
        && let Ok(lock) = Lock::parse(lock_text)
    {
        assert_eq!(Lock::parse(&lock.render()).expect("a rendered lock parses"), lock);
        if let Ok(r) = &parsed {
            let pinned = lock.pin(r);
            if r.digest().is_some() {
                assert_eq!(&pinned, r, "a pinned reference keeps its own digest");
            }
        }
    }
});
