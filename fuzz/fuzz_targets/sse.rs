//! The API client's Server-Sent Events parser (`host/server/src/sse.rs`, included as a file so
//! that this crate does not build the host).
//!
//! Input: the first byte seeds where the stream is cut into chunks, the rest is the stream.
//! Nothing may panic, and the events must not depend on where the network cut the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../host/server/src/sse.rs"]
#[allow(dead_code)]
mod sse;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else { return };
    let whole = sse::SseParser::default().feed(stream);

    let mut parser = sse::SseParser::default();
    let mut chunked = Vec::new();
    let mut rest = stream;
    let mut step = usize::from(seed % 7) + 1;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(step.min(rest.len()));
        chunked.extend(parser.feed(chunk));
        rest = tail;
        step = (step * 5 + usize::from(seed)) % 13 + 1;
    }
    assert_eq!(whole, chunked, "the events depend on how the stream was cut");
});
