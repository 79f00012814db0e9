//! `async_mirror_api`: the control API's requests and answers, apart from nginx.
//!
//! `GET …/targets` lists every target; with `write=on`, `PATCH …/targets/{id}` sets
//! `{"paused": bool}` and/or `{"sample": percent}`, and `DELETE …/targets/{id}/override`
//! returns to the configuration. Overrides live in the shared zone, so every worker
//! applies them (within its 250 ms tick) and they survive reloads with the zone.

use serde_json::{Map, Value, json};

use crate::engine::config::PPM;

/// A target's override as the zone holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Override {
    pub paused: Option<bool>,
    /// Parts per million.
    pub sample_ppm: Option<u32>,
}

/// What the API shows of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetView {
    pub id: usize,
    pub url: String,
    /// The `sample=` of every `async_mirror` line naming the URL (ppm).
    pub configured_ppm: Vec<u32>,
    pub ov: Override,
    pub breaker_open: i64,
    pub attempted: u64,
    pub ok: u64,
    pub finished: u64,
}

impl Override {
    /// The override as one word, so that it is read and changed whole in shared memory:
    /// bits 0-1 paused (0 unset, 1 paused, 2 running), bit 2 whether a sample is set,
    /// bits 32-63 the sample in ppm.
    pub fn to_word(self) -> u64 {
        let paused = match self.paused {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        let sample = self.sample_ppm.map_or(0, |p| 4 | (u64::from(p) << 32));
        paused | sample
    }

    pub fn from_word(w: u64) -> Override {
        Override {
            paused: match w & 3 {
                1 => Some(true),
                2 => Some(false),
                _ => None,
            },
            sample_ppm: (w & 4 != 0).then_some((w >> 32) as u32),
        }
    }
}

/// Where the API reads and writes targets (the shared zone).
pub trait Targets {
    fn list(&self) -> Vec<TargetView>;
    /// Changes target `id`'s override as one step (two changes at once from two workers
    /// both apply); the override it now has, or `None` without such a target.
    fn update(&self, id: usize, change: &dyn Fn(Override) -> Override) -> Option<Override>;
}

pub struct Reply {
    pub status: u16,
    pub body: String,
}

fn error(status: u16, msg: &str) -> Reply {
    Reply { status, body: json!({"error": msg}).to_string() + "\n" }
}

fn percent(ppm: u32) -> f64 {
    f64::from(ppm) / 10_000.0
}

fn view(t: &TargetView) -> Value {
    let configured: Vec<f64> = t.configured_ppm.iter().map(|&p| percent(p)).collect();
    let effective: Vec<f64> = match t.ov.sample_ppm {
        Some(p) => vec![percent(p)],
        None => configured.clone(),
    };
    json!({
        "id": t.id,
        "url": t.url,
        "sample": {"configured": configured, "effective": effective},
        "paused": t.ov.paused.unwrap_or(false),
        "override": {"paused": t.ov.paused, "sample": t.ov.sample_ppm.map(percent)},
        "breaker_open_workers": t.breaker_open.max(0),
        "copies": {"attempted": t.attempted, "ok": t.ok, "finished": t.finished},
    })
}

/// The path after the API's location: `targets`, `targets/{id}` or `targets/{id}/override`.
fn route(path: &str) -> Option<(Option<usize>, bool)> {
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let _ = parts.by_ref().find(|p| *p == "targets")?;
    let id = match parts.next() {
        None => return Some((None, false)),
        Some(id) if id.bytes().all(|b| b.is_ascii_digit()) && id.len() <= 9 => id.parse().ok()?,
        Some(_) => return None,
    };
    match (parts.next(), parts.next()) {
        (None, _) => Some((Some(id), false)),
        (Some("override"), None) => Some((Some(id), true)),
        _ => None,
    }
}

/// Parses a PATCH body into the change it asks for: the fields it gives (the others stay).
fn patch(body: &[u8]) -> Result<Override, String> {
    let mut ov = Override::default();
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(fields) = doc else { return Err("expected a JSON object".into()) };
    if fields.is_empty() {
        return Err("nothing to change: give \"paused\" and/or \"sample\"".into());
    }
    let fields: Map<String, Value> = fields;
    for (k, v) in &fields {
        match (k.as_str(), v) {
            ("paused", Value::Bool(b)) => ov.paused = Some(*b),
            ("paused", _) => return Err("\"paused\" must be true or false".into()),
            ("sample", Value::Number(n)) => match n.as_f64() {
                Some(p) if (0.0..=100.0).contains(&p) => ov.sample_ppm = Some((p * 10_000.0).round() as u32),
                _ => return Err("\"sample\" must be a percentage from 0 to 100".into()),
            },
            ("sample", _) => return Err("\"sample\" must be a number (a percentage)".into()),
            (other, _) => return Err(format!("unknown field \"{other}\"")),
        }
    }
    debug_assert!(ov.sample_ppm.is_none_or(|p| p <= PPM));
    Ok(ov)
}

/// Answers one API request. `path` is the request's path, `write` is `write=on`.
pub fn handle(method: &str, path: &str, body: &[u8], write: bool, targets: &dyn Targets) -> Reply {
    let Some((id, override_path)) = route(path) else {
        return error(404, "no such resource: try GET .../targets");
    };
    let list = targets.list();
    let Some(target) = id.map(|id| list.iter().find(|t| t.id == id)) else {
        return match method {
            "GET" | "HEAD" => {
                let all: Vec<Value> = list.iter().map(view).collect();
                Reply { status: 200, body: json!({"targets": all}).to_string() + "\n" }
            }
            _ => error(405, "only GET is allowed here"),
        };
    };
    let Some(t) = target else { return error(404, "no such target") };
    let allowed = match (override_path, method) {
        (false, "GET" | "HEAD") => return Reply { status: 200, body: view(t).to_string() + "\n" },
        (false, "PATCH") | (true, "DELETE") => true,
        _ => false,
    };
    if !allowed {
        return error(
            405,
            if override_path { "only DELETE is allowed here" } else { "only GET and PATCH are allowed here" },
        );
    }
    if !write {
        return error(403, "this API is read-only (async_mirror_api write=on allows changes)");
    }
    let change = if override_path {
        Override::default()
    } else {
        match patch(body) {
            Ok(change) => change,
            Err(e) => return error(400, &e),
        }
    };
    let apply = |now: Override| match override_path {
        true => Override::default(),
        false => Override {
            paused: change.paused.or(now.paused),
            sample_ppm: change.sample_ppm.or(now.sample_ppm),
        },
    };
    let Some(ov) = targets.update(t.id, &apply) else {
        return error(500, "the zone could not be updated");
    };
    let mut now = t.clone();
    now.ov = ov;
    Reply { status: 200, body: view(&now).to_string() + "\n" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    struct Fake(RefCell<Vec<TargetView>>);

    impl Targets for Fake {
        fn list(&self) -> Vec<TargetView> {
            self.0.borrow().clone()
        }

        fn update(&self, id: usize, change: &dyn Fn(Override) -> Override) -> Option<Override> {
            let mut list = self.0.borrow_mut();
            let t = list.iter_mut().find(|t| t.id == id)?;
            t.ov = change(t.ov);
            Some(t.ov)
        }
    }

    fn fake() -> Fake {
        Fake(RefCell::new(vec![TargetView {
            id: 0,
            url: "http://a:1".into(),
            configured_ppm: vec![PPM],
            ov: Override::default(),
            breaker_open: 0,
            attempted: 5,
            ok: 4,
            finished: 5,
        }]))
    }

    fn json(r: &Reply) -> Value {
        serde_json::from_str(&r.body).unwrap()
    }

    #[test]
    fn lists_changes_and_resets() {
        let f = fake();
        let r = handle("GET", "/api/targets", b"", true, &f);
        assert_eq!(r.status, 200);
        assert_eq!(json(&r)["targets"][0]["sample"]["effective"][0], 100.0);
        let r = handle("PATCH", "/api/targets/0", br#"{"paused":true,"sample":12.5}"#, true, &f);
        assert_eq!((r.status, json(&r)["paused"].clone()), (200, Value::Bool(true)));
        assert_eq!(f.list()[0].ov, Override { paused: Some(true), sample_ppm: Some(125_000) });
        let r = handle("PATCH", "/api/targets/0", br#"{"paused":false}"#, true, &f);
        assert_eq!(json(&r)["sample"]["effective"][0], 12.5, "fields not given are kept");
        assert_eq!(handle("DELETE", "/api/targets/0/override", b"", true, &f).status, 200);
        assert_eq!(f.list()[0].ov, Override::default());
    }

    #[test]
    fn overrides_are_one_word() {
        for ov in [
            Override::default(),
            Override { paused: Some(true), sample_ppm: None },
            Override { paused: Some(false), sample_ppm: Some(0) },
            Override { paused: None, sample_ppm: Some(PPM) },
        ] {
            assert_eq!(Override::from_word(ov.to_word()), ov);
        }
    }

    #[test]
    fn bad_requests_get_a_json_error() {
        let f = fake();
        let cases: &[(&str, &str, &[u8], bool, u16)] = &[
            ("PATCH", "/api/targets/0", br#"{"paused":true}"#, false, 403),
            ("DELETE", "/api/targets/0/override", b"", false, 403),
            ("PATCH", "/api/targets/0", b"", true, 400),
            ("PATCH", "/api/targets/0", b"{", true, 400),
            ("PATCH", "/api/targets/0", b"[]", true, 400),
            ("PATCH", "/api/targets/0", b"{}", true, 400),
            ("PATCH", "/api/targets/0", br#"{"paused":"yes"}"#, true, 400),
            ("PATCH", "/api/targets/0", br#"{"sample":101}"#, true, 400),
            ("PATCH", "/api/targets/0", br#"{"sample":-1}"#, true, 400),
            ("PATCH", "/api/targets/0", br#"{"sample":"5"}"#, true, 400),
            ("PATCH", "/api/targets/0", br#"{"other":1}"#, true, 400),
            ("PATCH", "/api/targets/9", br#"{"paused":true}"#, true, 404),
            ("PATCH", "/api/targets/x", br#"{"paused":true}"#, true, 404),
            ("GET", "/api/nothing", b"", true, 404),
            ("GET", "/api/targets/0/override/more", b"", true, 404),
            ("POST", "/api/targets", b"", true, 405),
            ("PUT", "/api/targets/0", b"", true, 405),
            ("GET", "/api/targets/0/override", b"", true, 405),
            ("PATCH", "/api/targets/99999999999", b"", true, 404),
        ];
        for (m, p, b, w, want) in cases {
            let r = handle(m, p, b, *w, &f);
            assert_eq!(r.status, *want, "{m} {p} {:?}", String::from_utf8_lossy(b));
            assert!(json(&r)["error"].is_string());
        }
        assert_eq!(f.list()[0].ov, Override::default(), "no bad request changed anything");
    }
}
