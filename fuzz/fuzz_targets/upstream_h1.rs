//! The upstream HTTP/1.1 codec (src/upstream/h1.rs): what an upstream
//! sends, read as the gateway reads it. Must never panic.
//!
//! Input: the first byte picks the request method (odd: HEAD) and how the
//! bytes arrive (the read size, 1–16); the rest is the upstream's answer.
//! It is fed to `parse_head` in pieces of that size, then, for a chunked
//! body, to `ChunkedDecoder` the same way. Checked:
//! - the answer does not depend on how the bytes were split: one piece at
//!   a time and everything at once give the same head (status, framing,
//!   keep-alive, fields) or the same error, and the same body bytes,
//!   trailers and end;
//! - a `Length` framing is the value of every `Content-Length` field;
//! - `Empty` for HEAD, 204 and 304; never a 1xx head; `UntilClose` is never
//!   kept alive;
//! - the decoded body is never longer than what followed the head.

#![no_main]

use bytes::BytesMut;
use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use portcullis::upstream::h1::{parse_head, ChunkedDecoder, Decoded, ResponseFraming};

/// What reading `input` `step` bytes at a time came to.
#[derive(Debug, PartialEq)]
enum Read {
    /// The head never completed.
    Partial,
    HeadError(String),
    Head {
        status: u16,
        framing: ResponseFraming,
        keep_alive: bool,
        headers: HeaderMap,
        body: Body,
    },
}

#[derive(Debug, PartialEq)]
enum Body {
    /// Not chunked: not decoded here.
    NotChunked,
    Chunked {
        data: Vec<u8>,
        trailers: Option<HeaderMap>,
        /// "ended", "partial" (the input ran out) or why it was refused.
        end: String,
    },
}

fn read(input: &[u8], method: &Method, step: usize) -> Read {
    let mut buf = BytesMut::new();
    let mut spans = Vec::new();
    let mut fed = 0;
    let head = loop {
        match parse_head(&mut buf, method, &mut spans) {
            Ok(Some(head)) => break head,
            Ok(None) if fed < input.len() => {
                let n = step.min(input.len() - fed);
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
            }
            Ok(None) => return Read::Partial,
            Err(e) => return Read::HeadError(e.to_string()),
        }
    };
    let after_head = buf.len() + (input.len() - fed);
    let body = if head.framing == ResponseFraming::Chunked {
        let mut decoder = ChunkedDecoder::default();
        let mut data = Vec::new();
        let mut trailers = None;
        let end = loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(d)) => {
                    assert!(!d.is_empty(), "an empty data frame");
                    data.extend_from_slice(&d);
                }
                Ok(Decoded::Trailers(t)) => {
                    trailers = Some(t);
                    assert!(decoder.is_done());
                    break "ended".to_string();
                }
                Ok(Decoded::End) => {
                    assert!(decoder.is_done());
                    break "ended".to_string();
                }
                Ok(Decoded::NeedMore) if fed < input.len() => {
                    let n = step.min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
                Ok(Decoded::NeedMore) => break "partial".to_string(),
                Err(e) => break e.to_string(),
            }
        };
        assert!(data.len() <= after_head, "more body than bytes");
        Body::Chunked {
            data,
            trailers,
            end,
        }
    } else {
        Body::NotChunked
    };
    Read::Head {
        status: head.status.as_u16(),
        framing: head.framing,
        keep_alive: head.keep_alive,
        headers: head.headers,
        body,
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, answer)) = input.split_first() else {
        return;
    };
    let method = if first & 1 == 1 {
        Method::HEAD
    } else {
        Method::GET
    };
    let step = usize::from(first >> 1 & 0x0f) + 1;
    let piecewise = read(answer, &method, step);
    let whole = read(answer, &method, answer.len().max(1));
    // A head that is only partial at the end of the input may be refused
    // as too large in one reading and not the other; everything else must
    // agree.
    if !matches!(piecewise, Read::Partial) && !matches!(whole, Read::Partial) {
        assert_eq!(piecewise, whole, "split into pieces of {step}");
    }
    if let Read::Head {
        status,
        framing,
        keep_alive,
        headers,
        ..
    } = &whole
    {
        assert!(*status >= 200, "a 1xx head was handed over");
        if method == Method::HEAD || *status == 204 || *status == 304 {
            assert_eq!(*framing, ResponseFraming::Empty);
        }
        if let ResponseFraming::Length(n) = framing {
            for v in headers.get_all(http::header::CONTENT_LENGTH) {
                for part in v.to_str().unwrap_or("").split(',') {
                    assert_eq!(part.trim_matches([' ', '\t']).parse::<u64>().ok(), Some(*n));
                }
            }
        }
        if *framing == ResponseFraming::UntilClose {
            assert!(!keep_alive);
        }
    }
});
