//! The `/metrics` exposition kept as encoded chunks, one per (family,
//! probe) plus the process-wide series, so that a change re-encodes only
//! what changed: a run's end changes one probe's series, and at a thousand
//! probes re-encoding everything for it was most of a scrape's cost.
//!
//! Each part (one probe, or the process-wide series) is encoded on its own
//! by the same collector as the whole exposition ([`super::Part`]) and split
//! at its `# HELP` lines into the samples of each family. A scrape after a
//! change re-encodes the parts whose version moved and concatenates, per
//! family in exposition order, the family's HELP/TYPE/UNIT lines, then every
//! probe's samples in probe order, then the process-wide ones: both text
//! formats require a family's samples to follow its metadata contiguously.
//! The result is byte for byte what encoding the whole registry gives
//! (tested in `tests::chunked_equals_whole`).
//!
//! The exposition is never joined into one buffer: an [`Exposition`] is the
//! list of shared chunks, and a response copies them into frames as the
//! client reads (at a thousand probes a joined body was 6.6 MiB, and the
//! cached one, the one being built and those in flight were all alive).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prometheus_client::registry::Registry;

use super::{Metrics, Part, ProbeSeries, Select, Shared, PREFIX};

/// The two text formats served on `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 (ends with `# EOF`).
    OpenMetrics,
    /// Prometheus text 0.0.4 (no exemplars).
    PrometheusText,
}

/// An encoded exposition: its chunks in order, shared with the cache (a
/// clone copies no text).
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pieces: Arc<[Bytes]>,
    len: usize,
}

/// The size of the frames a response body is copied into.
const FRAME: usize = 64 * 1024;

impl Exposition {
    fn new(pieces: Vec<Bytes>) -> Exposition {
        let len = pieces.iter().map(Bytes::len).sum();
        Exposition {
            pieces: pieces.into(),
            len,
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole text in one buffer.
    pub fn to_bytes(&self) -> Bytes {
        match &*self.pieces {
            [one] => one.clone(),
            pieces => {
                let mut out = bytes::BytesMut::with_capacity(self.len);
                for p in pieces {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        }
    }

    /// The text as frames of about 64 KiB, each copied when it is asked
    /// for (a chunk of that size or more goes as it is).
    pub fn frames(self) -> impl Iterator<Item = Bytes> + Send + 'static {
        let mut at = 0;
        std::iter::from_fn(move || {
            let first = self.pieces.get(at)?;
            if first.len() >= FRAME {
                at += 1;
                return Some(first.clone());
            }
            let mut frame = bytes::BytesMut::with_capacity(FRAME);
            while let Some(p) = self.pieces.get(at) {
                if !frame.is_empty() && frame.len() + p.len() > FRAME {
                    break;
                }
                frame.extend_from_slice(p);
                at += 1;
            }
            Some(frame.freeze())
        })
    }
}

impl From<Bytes> for Exposition {
    fn from(b: Bytes) -> Exposition {
        Exposition::new(vec![b])
    }
}

/// One part's samples per family (indexed as [`State::headers`]) and the
/// version they show.
struct Chunks {
    version: u64,
    samples: Vec<Bytes>,
}

#[derive(Default)]
struct State {
    /// Every family's name and HELP/TYPE/UNIT lines, in exposition order.
    headers: Vec<(String, Bytes)>,
    index: HashMap<String, usize>,
    process: Option<Chunks>,
    /// The probes' chunks, in probe order.
    probes: Vec<(Arc<ProbeSeries>, Chunks)>,
    /// The last exposition and the generation it shows.
    body: Option<(u64, Exposition)>,
}

/// The exposition of [`Metrics`] in one format, re-encoded per part.
pub struct ChunkedExposition {
    shared: Arc<Shared>,
    format: Format,
    state: Mutex<State>,
    /// Parts encoded so far (each probe's and the process-wide series').
    parts_encoded: AtomicU64,
}

impl std::fmt::Debug for ChunkedExposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedExposition")
            .field("format", &self.format)
            .finish()
    }
}

fn encode_part(
    shared: &Arc<Shared>,
    select: Select,
    format: Format,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry
        .sub_registry_with_prefix(PREFIX)
        .register_collector(Box::new(Part {
            shared: shared.clone(),
            select,
        }));
    let mut out = String::new();
    match format {
        Format::OpenMetrics => {
            prometheus_client::encoding::text::encode_registry(&mut out, &registry)?
        }
        Format::PrometheusText => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?
        }
    }
    Ok(out)
}

/// The family a `# HELP name ...` line starts.
fn help_name(line: &str) -> Option<&str> {
    line.strip_prefix("# HELP ")?.split(' ').next()
}

/// Split an encoded part into each family's samples; an unknown family is
/// an error (the caller then encodes the whole exposition).
fn split(text: &str, index: &HashMap<String, usize>) -> Result<Vec<Bytes>, std::fmt::Error> {
    let mut samples = vec![String::new(); index.len()];
    let mut at: Option<usize> = None;
    for line in text.split_inclusive('\n') {
        if let Some(name) = help_name(line) {
            at = Some(*index.get(name).ok_or(std::fmt::Error)?);
        } else if line.starts_with("# ") {
            // TYPE and UNIT lines: part of the header.
        } else {
            samples[at.ok_or(std::fmt::Error)?].push_str(line);
        }
    }
    // Shrunk to their length: a pushed-to String has up to twice the
    // capacity it needs, and the chunks are kept until the probe changes.
    Ok(samples
        .into_iter()
        .map(|s| Bytes::from(s.into_bytes().into_boxed_slice()))
        .collect())
}

impl ChunkedExposition {
    /// The exposition of `metrics` in `format`.
    pub fn new(metrics: &Metrics, format: Format) -> Self {
        ChunkedExposition {
            shared: metrics.shared().clone(),
            format,
            state: Mutex::new(State::default()),
            parts_encoded: AtomicU64::new(0),
        }
    }

    /// How many parts (a probe's series, or the process-wide ones) were
    /// encoded so far: what a scrape after a change costs.
    pub fn parts_encoded(&self) -> u64 {
        self.parts_encoded.load(Ordering::Relaxed)
    }

    /// The whole exposition encoded from scratch (for comparison and as
    /// the fallback).
    pub fn encode_whole(&self) -> Result<String, std::fmt::Error> {
        let mut out = encode_part(&self.shared, Select::All, self.format)?;
        if self.format == Format::OpenMetrics {
            out.push_str("# EOF\n");
        }
        Ok(out)
    }

    /// The current exposition: the cached bytes while nothing changed, else
    /// the changed parts re-encoded and every part concatenated.
    pub fn encode(&self) -> Result<Exposition, std::fmt::Error> {
        // Read every version before encoding: a change during the encoding
        // moves it again, so the next scrape re-encodes that part.
        let generation = self.shared.generation.get();
        // Encoding is synchronous: holding the lock makes concurrent scrapes
        // of a stale exposition wait for one encoding instead of each doing one.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, body)) = &state.body {
            if *g == generation {
                return Ok(body.clone());
            }
        }
        let body = match self.reencode(&mut state) {
            Ok(pieces) => Exposition::new(pieces),
            Err(_) => {
                // Should not happen (every part has the header's families);
                // start over from a whole encoding.
                *state = State::default();
                Exposition::from(Bytes::from(self.encode_whole()?))
            }
        };
        state.body = Some((generation, body.clone()));
        Ok(body)
    }

    fn reencode(&self, state: &mut State) -> Result<Vec<Bytes>, std::fmt::Error> {
        if state.headers.is_empty() {
            let text = encode_part(&self.shared, Select::Headers, self.format)?;
            let mut headers: Vec<(String, String)> = Vec::new();
            for line in text.split_inclusive('\n') {
                match help_name(line) {
                    Some(name) => headers.push((name.to_string(), line.to_string())),
                    None => headers.last_mut().ok_or(std::fmt::Error)?.1.push_str(line),
                }
            }
            state.headers = headers
                .into_iter()
                .map(|(name, lines)| (name, Bytes::from(lines)))
                .collect();
            state.index = state
                .headers
                .iter()
                .enumerate()
                .map(|(i, (name, _))| (name.clone(), i))
                .collect();
        }
        let version = self.shared.process_version();
        if state.process.as_ref().is_none_or(|c| c.version != version) {
            let text = encode_part(&self.shared, Select::Process, self.format)?;
            self.parts_encoded.fetch_add(1, Ordering::Relaxed);
            state.process = Some(Chunks {
                version,
                samples: split(&text, &state.index)?,
            });
        }
        let probes = self.shared.probes();
        // Probes are only ever added, at the end; keep the matching prefix.
        let keep = state
            .probes
            .iter()
            .zip(&probes)
            .take_while(|((a, _), b)| Arc::ptr_eq(a, b))
            .count();
        state.probes.truncate(keep);
        for (i, p) in probes.iter().enumerate() {
            let version = p.version();
            if state
                .probes
                .get(i)
                .is_some_and(|(_, c)| c.version == version)
            {
                continue;
            }
            let text = encode_part(&self.shared, Select::Probe(p.clone()), self.format)?;
            self.parts_encoded.fetch_add(1, Ordering::Relaxed);
            let chunks = Chunks {
                version,
                samples: split(&text, &state.index)?,
            };
            match state.probes.get_mut(i) {
                Some(slot) => slot.1 = chunks,
                None => state.probes.push((p.clone(), chunks)),
            }
        }
        let process = state.process.as_ref().ok_or(std::fmt::Error)?;
        let mut out = Vec::with_capacity(state.body.as_ref().map_or(0, |(_, b)| b.pieces.len()));
        for (f, (_, header)) in state.headers.iter().enumerate() {
            let samples = state
                .probes
                .iter()
                .map(|(_, c)| &c.samples[f])
                .chain([&process.samples[f]])
                .filter(|s| !s.is_empty());
            out.push(header.clone());
            let start = out.len();
            out.extend(samples.cloned());
            if out.len() == start {
                // No samples: no header either.
                out.pop();
            }
        }
        if self.format == Format::OpenMetrics {
            out.push(Bytes::from_static(b"# EOF\n"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_the_text_in_order_and_about_64_kib() {
        let piece = |n: usize, c: u8| Bytes::from(vec![c; n]);
        let pieces = vec![
            piece(10, b'a'),
            piece(FRAME - 5, b'b'),
            piece(3 * FRAME, b'c'),
            piece(7, b'd'),
            piece(FRAME, b'e'),
            piece(1, b'f'),
        ];
        let e = Exposition::new(pieces);
        let whole = e.to_bytes();
        assert_eq!(whole.len(), e.len());
        let frames: Vec<Bytes> = e.clone().frames().collect();
        assert_eq!(frames.concat(), whole.to_vec());
        // Small pieces are joined up to a frame; a big one goes alone.
        let sizes: Vec<usize> = frames.iter().map(Bytes::len).collect();
        assert_eq!(sizes, vec![10, FRAME - 5, 3 * FRAME, 7, FRAME, 1]);
        let small = Exposition::new((0..1000).map(|_| piece(100, b'x')).collect());
        let sizes: Vec<usize> = small.frames().map(|f| f.len()).collect();
        assert!(sizes.iter().all(|s| *s <= FRAME), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 100_000);
        assert_eq!(sizes.len(), 2);
    }
}
