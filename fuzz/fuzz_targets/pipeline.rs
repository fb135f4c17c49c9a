//! The pipeline loader over arbitrary YAML, as `pipeline.yaml` and as Serverless-cd's
//! `serverless-pipeline.yaml` (which keeps the network for `run:` steps).
//!
//! Nothing may panic; every problem must point at a line and column that exist.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Relative `uses:` paths start here; none exists, so none is read.
    let dir = Path::new("/nonexistent/skiff-fuzz");
    for file in ["pipeline.yaml", "serverless-pipeline.yaml"] {
        match skiff_pipeline::load_str(text, file, dir) {
            Ok(plan) => {
                let _ = plan.render();
            }
            Err(diags) => {
                assert!(!diags.0.is_empty(), "a refused pipeline says why");
                // YAML 1.1 also breaks lines at a lone `\r`, NEL, U+2028 and U+2029; the end of
                // the text may be one past the last line.
                let lines = text.matches(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']).count() + 2;
                for d in &diags.0 {
                    assert_eq!(d.file, file);
                    assert!(d.pos.line <= lines, "{d} is past the end ({lines} lines)");
                }
                let _ = diags.to_string();
            }
        }
    }
});
