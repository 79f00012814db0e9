//! One request's comparison as the nginx thread starts it: the endpoint label, the
//! primary's latch (its capture is made with the first compared copy) and the
//! baseline's. The nginx layer makes one of these per compared request and asks it for
//! each copy's part; it never handles latches itself.

use std::sync::Arc;
use std::time::Instant;

use super::fields::CompareSettings;
use super::join::{BaselineState, Comparison, Primary, PrimaryCapture, Role, primary_channel};
use super::latch::{Latch, Setter, latch};
use super::verdict::bounded_name;
use crate::engine::capture::{Backlog, Charge};

pub struct RequestComparison {
    settings: Arc<CompareSettings>,
    endpoint: String,
    conditional: bool,
    primary: Option<Latch<Arc<Primary>>>,
    baseline_tx: Option<Setter<BaselineState>>,
    baseline_rx: Option<Latch<BaselineState>>,
}

impl RequestComparison {
    /// `endpoint` is the label (`async_mirror_compare_key`, or the location's name), cut to
    /// its bound; `baseline` whether the location has a baseline target; `conditional`
    /// whether the request has `Range` or `If-*` headers.
    pub fn new(
        settings: &Arc<CompareSettings>,
        endpoint: &[u8],
        baseline: bool,
        conditional: bool,
    ) -> RequestComparison {
        let endpoint = bounded_name(&String::from_utf8_lossy(endpoint)).to_string();
        let (baseline_tx, baseline_rx) = match baseline {
            true => {
                let (tx, rx) = latch();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        RequestComparison {
            settings: settings.clone(),
            endpoint,
            conditional,
            primary: None,
            baseline_tx,
            baseline_rx,
        }
    }

    /// The comparison part of one copy. The first one also returns the capture the
    /// response filters feed (charged to `backlog`): keep it with the request.
    pub fn part(&mut self, backlog: &Arc<Backlog>, baseline: bool) -> (Comparison, Option<PrimaryCapture>) {
        let (primary, capture) = self.primary(backlog);
        let role = match self.baseline_tx.take_if(|_| baseline) {
            Some(tx) => Role::Baseline(tx),
            None => Role::Candidate(self.baseline_rx.clone()),
        };
        let part = Comparison {
            settings: self.settings.clone(),
            endpoint: self.endpoint.clone(),
            conditional: self.conditional,
            primary,
            role,
        };
        (part, capture)
    }

    /// A capture copy's wait for the client's answer; the first wait or part also returns
    /// the capture the response filters feed.
    pub fn answer(&mut self, backlog: &Arc<Backlog>) -> (PrimaryAnswer, Option<PrimaryCapture>) {
        let (primary, capture) = self.primary(backlog);
        (PrimaryAnswer(primary), capture)
    }

    fn primary(&mut self, backlog: &Arc<Backlog>) -> (Latch<Arc<Primary>>, Option<PrimaryCapture>) {
        let mut capture = None;
        let primary = self
            .primary
            .get_or_insert_with(|| {
                let (tx, rx) = primary_channel();
                capture = Some(PrimaryCapture::new(tx, self.settings.clone(), Charge::new(backlog)));
                rx
            })
            .clone();
        (primary, capture)
    }
}

/// A capture copy's wait for the client's answer (set once on the nginx thread).
pub struct PrimaryAnswer(Latch<Arc<Primary>>);

impl PrimaryAnswer {
    /// The answer, or `None` when the response ended badly or `deadline` passed first.
    pub async fn get(&self, deadline: Instant) -> Option<Arc<Primary>> {
        tokio::time::timeout_at(deadline.into(), self.0.get()).await.ok().flatten()
    }
}
