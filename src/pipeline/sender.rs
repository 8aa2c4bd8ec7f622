//! The sender of one tenant: reads the head of the outbox, turns each row into what RudderStack receives,
//! posts it, and deletes exactly the rows RudderStack answered 2xx for.
//!
//! Crash semantics, step by step: a crash between a POST and the delete that follows it resends those rows,
//! with the same deterministic `messageId`s, so RudderStack's dedup (or the warehouse's) drops the copies. A
//! row the gateway refuses on its own, or that cannot be transformed, becomes a dead letter in the same
//! transaction that deletes the delivered rows. After a shutdown signal no new request starts; the one in
//! flight may finish within [`SHUTDOWN_GRACE`] and its rows are then deleted as usual.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::{Error, Next, RunMode, TenantRun};
use crate::config::{Mode, PollInterval};
use crate::rudderstack::Item;
use crate::store::Handle;
use crate::transform;

/// How long an in-flight POST may still run after a shutdown signal before it is abandoned. Abandoned rows
/// stay in the outbox and are resent on the next start with the same ids.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How many outbox rows the sender reads per round; they are packed into several requests, and the delete
/// that follows is one transaction, so a larger window means fewer commits.
const SEND_WINDOW_BATCHES: usize = 5;
/// The most entry bytes one round reads, whatever the row count: huge entries must not fill memory.
const SEND_WINDOW_BYTES: usize = 8 << 20;
/// How long an idle sender waits before it looks at the outbox again unasked (see [`Sender::next`]).
const IDLE_RECHECK: Duration = Duration::from_secs(300);

/// What one send step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Rows were delivered or set aside; look for more at once.
    Progress,
    /// The outbox is empty.
    Idle,
    /// The outbox is empty and the fetcher is done (`sync`).
    Finished,
    /// Shutdown.
    Cancelled,
}

/// The sender of one tenant.
pub struct Sender {
    t: Arc<TenantRun>,
    store: Handle,
    mode: RunMode,
    window: usize,
}

impl Sender {
    /// A sender for one tenant, on the sending connection.
    pub fn new(t: Arc<TenantRun>, store: Handle, mode: RunMode) -> Sender {
        let window = t.cfg.rudderstack.max_batch_events.saturating_mul(SEND_WINDOW_BATCHES).clamp(1, 10_000);
        Sender { t, store, mode, window }
    }

    /// What the loop does after an outcome.
    pub fn next(&self, outcome: Sent) -> Next {
        match outcome {
            Sent::Progress => Next::Again,
            // New rows wake the sender at once: the fetcher's own, and (through the watcher) those another
            // process queued. The timeout is only a safety net, long enough that a hundred idle senders do not
            // wake the daemon every poll interval.
            Sent::Idle => Next::Wait {
                duration: if self.mode == RunMode::Sync {
                    Duration::from_millis(200)
                } else {
                    match self.t.cfg.auth0.poll_interval {
                        PollInterval::Every(poll) => IDLE_RECHECK.max(poll),
                        PollInterval::Auto => IDLE_RECHECK,
                    }
                },
                wake: Some(self.t.wake_sender.clone()),
            },
            Sent::Finished | Sent::Cancelled => Next::Done,
        }
    }

    /// The longest one step may take: every request of the window may run into the timeout.
    pub fn budget(&self) -> Duration {
        let per_request = self.t.cfg.rudderstack.timeout * 2;
        per_request * (self.window as u32 / 50 + 10) + Duration::from_secs(30)
    }

    /// One round: read the head of the outbox, deliver it, record the outcome.
    pub async fn step(
        &mut self,
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<Sent, Error> {
        if stop.is_cancelled() {
            return Ok(Sent::Cancelled);
        }
        let (d, window) = (self.t.domain.clone(), self.window);
        let rows = self.store.call(move |s| s.outbox_window(&d, window, SEND_WINDOW_BYTES)).await?;
        if rows.is_empty() {
            if self.mode == RunMode::Sync && self.t.fetch_done.load(Ordering::SeqCst) {
                // The fetcher may have committed between our read and its flag; look once more.
                let d = self.t.domain.clone();
                if self.store.call(move |s| s.outbox_depth(&d)).await? == 0 {
                    return Ok(Sent::Finished);
                }
                return Ok(Sent::Progress);
            }
            return Ok(Sent::Idle);
        }

        let tenant = &self.t.domain;
        let mut rejected: Vec<(i64, String)> = Vec::new();
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            match self.t.cfg.rudderstack.mode {
                // The row's log_id is the one the entry came with (an imported wrapper's may differ from the
                // entry's own); the event carries it, as RudderStack's source would.
                Mode::Batch => match RawValue::from_string(row.raw) {
                    Ok(raw) => match if row.log_id.is_empty() {
                        transform::transform_entry(tenant, &raw)
                    } else {
                        transform::transform_entry_with_log_id(tenant, &row.log_id, &raw)
                    } {
                        Ok(event) => items.push(Item { seq: row.seq, json: event.json }),
                        Err(e) => rejected.push((row.seq, format!("transform: {e}"))),
                    },
                    Err(e) => rejected.push((row.seq, format!("stored entry is not valid JSON: {e}"))),
                },
                Mode::Webhook => items.push(Item::webhook(row.seq, &row.log_id, &row.raw)),
            }
        }
        // Rows the transform refuses become dead letters with the delivery's outcome below, each logged there
        // by the id `dead-letter list` shows, so none is set aside silently.

        // A shutdown lets the request in flight finish (up to the grace period) so its rows can be deleted;
        // no new request starts after it.
        let deliver = self.t.sink.deliver(items, shutdown);
        tokio::pin!(deliver);
        let report = tokio::select! {
            r = &mut deliver => Some(r),
            _ = async { stop.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => None,
        };
        let Some(report) = report else {
            tracing::warn!(tenant = %tenant, grace = %humantime::format_duration(SHUTDOWN_GRACE), "shutdown: abandoned a delivery still in flight; its entries stay in the outbox and will be resent with the same ids");
            return Ok(Sent::Cancelled);
        };
        rejected.extend(report.rejected);
        let (delivered_n, rejected_n) = (report.delivered.len() as u64, rejected.len() as u64);
        if delivered_n + rejected_n > 0 {
            let (d, delivered) = (self.t.domain.clone(), report.delivered);
            // If this fails (say the file is locked by another process), the rows stay in the outbox and go
            // out again, with the same ids, on a later round.
            let letters = self.store.call(move |s| s.complete(&d, &delivered, &rejected)).await?;
            for (id, log_id, reason) in &letters {
                tracing::warn!(
                    tenant = %tenant,
                    dead_letter = id,
                    log_id = %if log_id.is_empty() { "-" } else { log_id.as_str() },
                    reason = %reason,
                    "event set aside as dead letter {id} (see `dead-letter list`)"
                );
            }
            let c = &self.t.counters;
            c.add_delivered(delivered_n);
            c.dead_lettered.fetch_add(rejected_n, Ordering::Relaxed);
            self.t.space.notify_one();
            tracing::debug!(tenant = %tenant, delivered = delivered_n, dead_letters = rejected_n, "delivery committed");
        }
        if let Some(e) = report.error {
            return Err(e.into());
        }
        if report.interrupted || shutdown.is_cancelled() {
            return Ok(Sent::Cancelled);
        }
        Ok(Sent::Progress)
    }
}
