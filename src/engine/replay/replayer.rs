//! `async-mirror-replay`: the requests of capture records sent again, through the engine's
//! own lanes, client (pools, HTTP/2) and outcome counting, paced as recorded (or faster),
//! and with `--compare` each answer compared with the recorded one by the comparison
//! `async_mirror_compare` uses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::replay_args::{ReplayArgs, USAGE, parse_args};
use crate::engine::capture::{HeaderEdits, RequestHead};
use crate::engine::client::{
    ALPN_H2, ALPN_HTTP1, BreakerSettings, ClientSettings, CopyOptions, TlsSettings, client_config,
};
use crate::engine::compare::{CompareSettings, PrimaryCapture, RequestComparison, Verdict};
use crate::engine::config::{PPM, SinkKind, parse_mirror_line};
use crate::engine::ids::{Table, TargetId};
use crate::engine::outcome::{Outcome, slot};
use crate::engine::record::{Payload, PayloadReader, REQUEST, RESPONSE, parse_http, parse_payload};
use crate::engine::{Engine, EngineSettings};

/// Copies waiting at most (the replayer waits for room rather than drop).
const QUEUE: usize = 8192;
/// Answers kept for requests not read yet, and requests waiting for their answer.
const UNPAIRED_MAX: usize = 100_000;

/// Runs the replayer with the command line's arguments; the process's exit code.
pub fn replay_main(args: Vec<String>) -> i32 {
    let args = match parse_args(&args) {
        Ok(a) => a,
        Err(e) if e == USAGE => {
            print!("{e}");
            return 0;
        }
        Err(e) => {
            eprintln!("async-mirror-replay: {e}");
            return 2;
        }
    };
    match run(&args) {
        Ok(summary) => {
            print!("{summary}");
            0
        }
        Err(e) => {
            eprintln!("async-mirror-replay: {e}");
            1
        }
    }
}

/// What was read.
#[derive(Debug, Default)]
struct ReadCounts {
    records: u64,
    requests: u64,
    answers: u64,
    malformed: u64,
    /// Requests the client cannot send (not valid HTTP for it).
    unsendable: u64,
    compared: u64,
    /// First and last request time in the records (per round).
    span_ns: u64,
}

fn run(a: &ReplayArgs) -> Result<String, String> {
    let line = parse_mirror_line(&[a.to.as_str()])?;
    if line.sink.is_some() {
        return Err(format!("--to \"{}\" must be an http:// or https:// URL", a.to));
    }
    let mut spec = line.spec()?;
    spec.http2 = a.http2;
    if spec.https {
        let tls = TlsSettings { verify: !a.insecure, trusted: None, client_cert: None };
        spec.tls = Some(client_config(&tls, if a.http2 { ALPN_H2 } else { ALPN_HTTP1 })?);
    }
    let mut specs = Table::default();
    let id = specs.push(spec);
    let settings = EngineSettings {
        threads: 2,
        queue_size: QUEUE,
        queue_bytes: 512 << 20,
        client: ClientSettings {
            keepalive_timeout: Duration::from_secs(60),
            max_connections: a.connections,
            hosts_file: None,
        },
        compare_logs: Vec::new(),
        sinks: Vec::new(),
    };
    let engine = Engine::start(settings, &specs, || {}).map_err(|e| format!("cannot start: {e}"))?;
    let driver = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start: {e}"))?;
    let started = Instant::now();
    let tally = driver.block_on(drive(a, &engine, id))?;
    // Every copy ends within its timeout; the comparisons just after.
    let settled = Instant::now() + a.timeout * 2 + Duration::from_secs(1);
    while Instant::now() < settled {
        let (attempted, ended) = counts(&engine);
        let verdicts: u64 = verdict_totals(&engine, id).iter().sum();
        if ended >= attempted && verdicts >= tally.compared {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(summary(a, &engine, id, &tally, started.elapsed()))
}

fn counts(engine: &Engine) -> (u64, u64) {
    engine.targets().fold((0, 0), |(att, end), (_, _, stats)| {
        let v = stats.snapshot();
        (att + v[slot::ATTEMPTED], end + v[..Outcome::COUNT].iter().sum::<u64>())
    })
}

fn verdict_totals(engine: &Engine, id: TargetId) -> [u64; Verdict::COUNT] {
    let mut out = [0; Verdict::COUNT];
    for e in engine.verdicts(id).unwrap_or_default() {
        out.iter_mut().zip(e.verdicts).for_each(|(o, v)| *o += v);
    }
    out
}

fn summary(a: &ReplayArgs, engine: &Engine, id: TargetId, t: &ReadCounts, took: Duration) -> String {
    let (attempted, _) = counts(engine);
    let secs = took.as_secs_f64();
    let mut out = format!(
        "replayed {attempted} requests from {} to {} in {secs:.3} s ({:.0} requests/s)\n",
        a.from,
        a.to,
        attempted as f64 / secs.max(1e-9)
    );
    if let Some(ppm) = a.speed_ppm {
        let paced = t.span_ns as f64 / 1e9 * f64::from(PPM) / ppm as f64;
        out.push_str(&format!(
            "pacing: the records span {:.3} s; at {}% one round takes {paced:.3} s\n",
            t.span_ns as f64 / 1e9,
            ppm as f64 / 1e4
        ));
    }
    let stats = engine.targets().map(|(_, _, s)| s.snapshot()).next().unwrap_or([0; slot::COUNTERS]);
    let outcomes: Vec<String> = (0..Outcome::COUNT)
        .filter(|&i| stats[i] > 0)
        .map(|i| format!("{}={}", Outcome::from_slot(i), stats[i]))
        .collect();
    out.push_str(&format!("outcomes: {}\n", outcomes.join(" ")));
    if a.compare {
        let totals = verdict_totals(engine, id);
        let verdicts: Vec<String> = Verdict::ALL
            .iter()
            .zip(totals)
            .filter(|(_, n)| *n > 0)
            .map(|(v, n)| match v.reason() {
                "" => format!("{}={n}", v.label()),
                r => format!("{}:{r}={n}", v.label()),
            })
            .collect();
        out.push_str(&format!("verdicts: {}\n", verdicts.join(" ")));
        let mut fields: Vec<(String, u64)> = Vec::new();
        for e in engine.verdicts(id).unwrap_or_default() {
            for (name, [n, _]) in e.fields {
                fields.push((name, n));
            }
        }
        fields.sort_by_key(|f| std::cmp::Reverse(f.1));
        let shown: Vec<String> = fields.iter().take(20).map(|(f, n)| format!("{f}={n}")).collect();
        out.push_str(&format!("differing fields: {}\n", shown.join(" ")));
    }
    out.push_str(&format!(
        "read: {} records, {} requests, {} answers, {} malformed, {} not sendable\n",
        t.records, t.requests, t.answers, t.malformed, t.unsendable
    ));
    out
}

/// Where records come from.
enum Source {
    File(PayloadReader<std::io::BufReader<std::fs::File>>),
    #[cfg(feature = "kafka")]
    Topic(crate::engine::record::TopicReader, Duration),
}

impl Source {
    fn open(a: &ReplayArgs) -> Result<Source, String> {
        if !a.from.starts_with("kafka://") {
            let f = std::fs::File::open(&a.from).map_err(|e| format!("cannot open \"{}\": {e}", a.from))?;
            return Ok(Source::File(PayloadReader::new(std::io::BufReader::with_capacity(1 << 20, f))));
        }
        let line = parse_mirror_line(&[a.from.as_str()])?;
        let Some(SinkKind::Kafka { brokers, topic }) = line.sink.map(|s| s.kind) else {
            return Err(format!("invalid source \"{}\"", a.from));
        };
        #[cfg(feature = "kafka")]
        return Ok(Source::Topic(
            crate::engine::record::TopicReader::new(&brokers, &topic, &a.group)?,
            a.idle,
        ));
        #[cfg(not(feature = "kafka"))]
        {
            let _ = (brokers, topic);
            Err("this replayer was built without Kafka (the kafka feature)".into())
        }
    }

    async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self {
            Source::File(r) => r.next_payload().map_err(|e| e.to_string()),
            #[cfg(feature = "kafka")]
            Source::Topic(r, idle) => r.next(*idle).await,
        }
    }
}

/// Sleeps until the record's time, scaled by the speed, has come.
async fn pace(clock: &mut Option<(u64, Instant)>, at_ns: u64, speed_ppm: Option<u64>) -> u64 {
    let (first, start) = *clock.get_or_insert((at_ns, Instant::now()));
    let offset = at_ns.saturating_sub(first);
    if let Some(ppm) = speed_ppm {
        let scaled = u128::from(offset) * u128::from(PPM) / u128::from(ppm.max(1));
        let at = start + Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX));
        tokio::time::sleep_until(at.into()).await;
    }
    offset
}

/// Gives a request's comparison the recorded answer.
fn feed(c: &mut PrimaryCapture, answer: &Payload) {
    let Ok(m) = parse_http(&answer.http) else {
        c.abort();
        return;
    };
    let status = m.start[1].parse().unwrap_or(0);
    let get = |n: &str| m.header(n).map(<[u8]>::to_vec);
    let listed = c.settings().headers.iter().map(|h| get(h)).collect();
    c.head(status, listed, get("content-type"), get("content-encoding"));
    let length = m.header("content-length").and_then(|v| std::str::from_utf8(v).ok()?.parse::<usize>().ok());
    // A body the capture cut at its limit cannot be compared.
    if length.is_some_and(|l| l > m.body.len()) {
        c.file();
    } else {
        c.data(&m.body);
    }
    c.finish();
}

async fn drive(a: &ReplayArgs, engine: &Engine, id: TargetId) -> Result<ReadCounts, String> {
    let compare = a.compare.then(|| {
        Arc::new(CompareSettings {
            headers: a.compare_headers.clone(),
            ignore: a.ignore_json.clone(),
            max_body: a.compare_max_body,
            log: None,
            record: None,
        })
    });
    let opts = CopyOptions {
        connect_timeout: a.timeout.min(Duration::from_secs(1)),
        timeout: a.timeout,
        // A replay sends everything it reads: no breaker.
        breaker: BreakerSettings { max_fails: 0, fail_timeout: Duration::from_secs(10) },
    };
    let mut t = ReadCounts::default();
    let mut waiting: HashMap<String, PrimaryCapture> = HashMap::new();
    let mut early: HashMap<String, Payload> = HashMap::new();
    for _ in 0..a.repeat {
        let mut source = Source::open(a)?;
        let mut clock = None;
        while let Some(raw) = source.next().await? {
            t.records += 1;
            let Ok(p) = parse_payload(&raw) else {
                t.malformed += 1;
                continue;
            };
            match p.kind {
                REQUEST => {
                    t.requests += 1;
                    t.span_ns = t.span_ns.max(pace(&mut clock, p.at_ns, a.speed_ppm).await);
                    // No more waiting than the connections take at once: a copy that waited
                    // past its timeout would be dropped, never sent.
                    while engine.queued_jobs() >= a.connections.min(QUEUE) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    match send(engine, id, &p, opts, compare.as_ref()) {
                        Err(()) => t.unsendable += 1,
                        Ok(None) => {}
                        Ok(Some(mut capture)) => {
                            t.compared += 1;
                            match early.remove(&p.id) {
                                Some(answer) => feed(&mut capture, &answer),
                                None if waiting.len() < UNPAIRED_MAX => drop(waiting.insert(p.id, capture)),
                                None => {}
                            }
                        }
                    }
                }
                RESPONSE => {
                    t.answers += 1;
                    match waiting.remove(&p.id) {
                        Some(mut capture) => feed(&mut capture, &p),
                        None if compare.is_some() && early.len() < UNPAIRED_MAX => {
                            drop(early.insert(p.id.clone(), p))
                        }
                        None => {}
                    }
                }
                _ => {}
            }
        }
    }
    // Requests whose answer was never recorded: compared as incomplete.
    drop(waiting);
    Ok(t)
}

/// Hands one recorded request to the engine; with a comparison, the capture that takes
/// the recorded answer. `Err` when the request is not valid HTTP for the client.
fn send(
    engine: &Engine,
    id: TargetId,
    p: &Payload,
    opts: CopyOptions,
    compare: Option<&Arc<CompareSettings>>,
) -> Result<Option<PrimaryCapture>, ()> {
    let m = parse_http(&p.http).map_err(|_| ())?;
    let headers: Vec<(&[u8], &[u8])> = m.headers.iter().map(|(n, v)| (&n[..], &v[..])).collect();
    let head = RequestHead::capture(
        m.start[0].as_bytes(),
        m.start[1].as_bytes(),
        headers.into_iter(),
        &HeaderEdits::default(),
    )
    .map_err(|_| ())?;
    let lanes = engine.lanes();
    // Refusals are counted by the engine (and shown in the outcomes).
    let Ok(admission) = lanes.admit(id, Ok(()), opts, false) else { return Ok(None) };
    let body = match m.body.is_empty() {
        true => None,
        false => lanes.body_channel(id, u64::MAX, Some(m.body.len() as u64)).map(|(mut tx, rx)| {
            let _ = tx.send(&m.body);
            tx.finish();
            rx
        }),
    };
    let Ok(mut copy) = admission.into_copy(Arc::new(head), None, body) else { return Ok(None) };
    let mut capture = None;
    if let (Some(settings), Some(backlog)) = (compare, lanes.backlog(id)) {
        let conditional =
            ["range", "if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since"]
                .iter()
                .any(|h| m.header(h).is_some());
        let (part, c) = RequestComparison::new(settings, b"replay", false, conditional).part(backlog, false);
        copy.compare = Some(part);
        capture = c;
    }
    // Handed over at once: the replayer has no nginx timer to flush batches.
    if lanes.submit(copy).is_ok() {
        lanes.flush();
    }
    Ok(capture)
}
