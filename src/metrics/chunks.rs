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

/// One part's samples per family (indexed as [`State::headers`]) and the
/// version they show.
struct Chunks {
    version: u64,
    samples: Vec<String>,
}

#[derive(Default)]
struct State {
    /// Every family's name and HELP/TYPE/UNIT lines, in exposition order.
    headers: Vec<(String, String)>,
    index: HashMap<String, usize>,
    process: Option<Chunks>,
    /// The probes' chunks, in probe order.
    probes: Vec<(Arc<ProbeSeries>, Chunks)>,
    /// The last whole exposition and the generation it shows.
    body: Option<(u64, Bytes)>,
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
fn split(text: &str, index: &HashMap<String, usize>) -> Result<Vec<String>, std::fmt::Error> {
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
    Ok(samples)
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
    pub fn encode(&self) -> Result<Bytes, std::fmt::Error> {
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
            Ok(text) => text,
            Err(_) => {
                // Should not happen (every part has the header's families);
                // start over from a whole encoding.
                *state = State::default();
                self.encode_whole()?
            }
        };
        let body = Bytes::from(body);
        state.body = Some((generation, body.clone()));
        Ok(body)
    }

    fn reencode(&self, state: &mut State) -> Result<String, std::fmt::Error> {
        if state.headers.is_empty() {
            let text = encode_part(&self.shared, Select::Headers, self.format)?;
            for line in text.split_inclusive('\n') {
                match help_name(line) {
                    Some(name) => state.headers.push((name.to_string(), line.to_string())),
                    None => state
                        .headers
                        .last_mut()
                        .ok_or(std::fmt::Error)?
                        .1
                        .push_str(line),
                }
            }
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
        let capacity = state.body.as_ref().map_or(0, |(_, b)| b.len() + 1024);
        let mut out = String::with_capacity(capacity);
        for (f, (_, header)) in state.headers.iter().enumerate() {
            let any = !process.samples[f].is_empty()
                || state.probes.iter().any(|(_, c)| !c.samples[f].is_empty());
            if !any {
                continue;
            }
            out.push_str(header);
            for (_, c) in &state.probes {
                out.push_str(&c.samples[f]);
            }
            out.push_str(&process.samples[f]);
        }
        if self.format == Format::OpenMetrics {
            out.push_str("# EOF\n");
        }
        Ok(out)
    }
}
