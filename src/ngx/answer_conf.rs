//! How a location captures the client's answer, as configured: the comparison's settings,
//! and what capture targets (`file:`, `kafka://`) add: the registry of sinks by URL (a
//! file target's file opened by nginx like its logs), and each location's record settings
//! (the headers hidden in records, the whole answer kept for response records).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ngx::ffi::ngx_conf_t;

use super::conf::{LocConf, MainConf, RESPONSE_FILTERS, SinkEntry};
use super::setter::{ConfError, open_log};
use super::strings::str_bytes;
use crate::engine::compare::CompareSettings;
use crate::engine::config::{SinkKind, SinkSpec, defaults};
use crate::engine::record::RecordSettings;

/// A capture target of an `async_mirror` line: a file target's file is opened the nginx
/// way, relative to the prefix, and its path made absolute.
///
/// # Errors
/// A `kafka://` target in a build without Kafka; a file nginx cannot open.
pub fn sink_entry(cf: &mut ngx_conf_t, url: &str, spec: &SinkSpec) -> Result<SinkEntry, ConfError> {
    let mut spec = spec.clone();
    let mut file = None;
    match &mut spec.kind {
        SinkKind::Kafka { .. } if !cfg!(feature = "kafka") => {
            return Err(format!("\"{url}\": this module was built without Kafka (the kafka feature)").into());
        }
        SinkKind::Kafka { .. } => {}
        SinkKind::File { path, .. } => {
            // nginx keeps the name it is given: the argument itself, in the configuration's pool.
            let written = url
                .get(5..)
                .filter(|w| w == path)
                .ok_or(ConfError::Msg(format!("invalid target \"{url}\"")))?;
            let opened = open_log(cf, written)?;
            // SAFETY: nginx filled in the file's full name when it registered it.
            let name = str_bytes(unsafe { &opened.as_ref().name });
            *path = String::from_utf8_lossy(name).into_owned();
            file = Some(opened);
        }
    }
    Ok(SinkEntry { url: url.to_string(), spec, file })
}

/// Adds a capture target to the registry; the same URL twice must say the same.
///
/// # Errors
/// The URL was written before with other parameters.
pub fn register(mc: &mut MainConf, entry: SinkEntry) -> Result<(), ConfError> {
    match mc.sinks.iter().find(|s| s.url == entry.url) {
        Some(s) if s.spec != entry.spec => {
            Err(format!("\"{}\" is used with different parameters", entry.url).into())
        }
        Some(_) => Ok(()),
        None => {
            mc.sinks.push(entry);
            Ok(())
        }
    }
}

/// A merged level's comparison settings; the response filters are woken once any location
/// compares or holds copies for the primary's status.
pub fn merged(lc: &mut LocConf) {
    lc.compare_settings = compare_settings(lc);
    if (lc.compare_settings.is_some() || lc.primary_status.is_some()) && !lc.mirrors().is_empty() {
        RESPONSE_FILTERS.store(true, Ordering::Relaxed);
    }
}

fn compare_settings(lc: &LocConf) -> Option<Arc<CompareSettings>> {
    if !lc.compare.unwrap_or(defaults::COMPARE) {
        return None;
    }
    let headers = match &lc.compare_headers {
        Some(h) => h.clone(),
        None => defaults::COMPARE_HEADERS.iter().map(|h| h.to_string()).collect(),
    };
    Some(Arc::new(CompareSettings {
        headers,
        ignore: lc.compare_ignore_json.clone().unwrap_or_default(),
        max_body: lc.compare_max_body.unwrap_or(defaults::COMPARE_MAX_BODY) as usize,
        log: lc.compare_log.flatten(),
        record: None,
    }))
}

/// The record settings of a level with capture targets: what records hide (the scrub list,
/// the credentials' headers by default) and, when a target records answers, the primary's
/// capture keeping the whole answer (shared with the comparison, if the level compares).
pub fn resolved(lc: &mut LocConf, mc: &MainConf) {
    let sinks: Vec<&SinkEntry> =
        lc.mirrors().iter().filter_map(|m| mc.sinks.iter().find(|s| s.url == mc.specs[m.spec].url)).collect();
    if sinks.is_empty() {
        lc.record = None;
        return;
    }
    let answer = sinks.iter().filter_map(|s| s.spec.response).max().map(|max| {
        let base = lc.compare_settings.as_deref().cloned().unwrap_or_default();
        Arc::new(CompareSettings { record: Some(max), ..base })
    });
    if let Some(a) = &answer {
        if lc.compare_settings.is_some() {
            lc.compare_settings = Some(a.clone());
        }
        RESPONSE_FILTERS.store(true, Ordering::Relaxed);
    }
    let scrub = match &lc.scrub_headers {
        Some(list) => list.clone(),
        None => defaults::CAPTURE_SCRUB.iter().map(|h| h.to_string()).collect(),
    };
    lc.record = Some(Arc::new(RecordSettings { scrub, mark: lc.mark_header().map(str::to_string), answer }));
}
