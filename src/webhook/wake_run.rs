//! The life of one woken source: a patch, then a watch until the source can be let go
//! (another patch for wakes after the send, or for a check that found status unchanged).

use std::sync::Arc;
use std::time::Instant;

use super::{
    CONFIRMS, Entry, Expect, HANDLE_TIMEOUT, PATCH_TIMEOUT, POLL, PatchError, RequestCheck, Shared,
    requested_at_value,
};
use crate::webhook::matching::SourceKey;

/// After a patch: send another, or the source is let go.
enum Next {
    Patch,
    Done,
}

/// What the check of the last patch says.
#[derive(PartialEq, Eq)]
enum Verdict {
    /// It has not handled the request yet.
    Waiting,
    /// Status moved (or there is nothing to expect, or no more waiting).
    Settled,
    /// It handled the request and status names the digest it named before the push.
    Stale,
}

impl<P: RequestCheck> Shared<P> {
    /// Patches `key` until the follow-up lets it go; the entry is gone when this returns.
    pub(super) async fn run(self: Arc<Self>, key: SourceKey) {
        let mut confirms = 0;
        loop {
            let permit = tokio::select! {
                _ = self.stop.cancelled() => break,
                permit = self.slots.acquire() => permit,
            };
            let Ok(permit) = permit else { break };
            let expect = self.mark_sent(&key);
            let sent = Instant::now();
            let value = self.patch(&key).await;
            drop(permit);
            let expect = value.as_ref().and(expect);
            let followed = self.follow_up(&key, value.as_deref(), expect, sent, &mut confirms);
            match followed.await {
                Next::Patch => continue,
                Next::Done => return,
            }
        }
        self.forget(&key);
    }

    /// The pending entry becomes sent; what it expected.
    fn mark_sent(&self, key: &SourceKey) -> Option<Expect> {
        let Ok(mut entries) = self.entries.lock() else {
            return None;
        };
        let sent = Entry::Sent {
            again: false,
            expect: None,
        };
        match entries.insert(key.clone(), sent) {
            Some(Entry::Pending { expect }) => expect,
            _ => None,
        }
    }

    fn forget(&self, key: &SourceKey) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(key);
        }
    }

    /// Watches the source after a patch sent at `sent` with `value`: patches again for
    /// wakes that came after the send (once the window is over) or for a stale check
    /// (at once, [`CONFIRMS`] times at most); lets it go once neither can happen.
    async fn follow_up(
        &self,
        key: &SourceKey,
        value: Option<&str>,
        mut expect: Option<Expect>,
        sent: Instant,
        confirms: &mut u32,
    ) -> Next {
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    self.forget(key);
                    return Next::Done;
                }
                _ = tokio::time::sleep(POLL) => {}
            }
            let verdict = self.verdict(key, value, expect.as_ref(), sent);
            let stale = verdict == Verdict::Stale && *confirms < CONFIRMS;
            let Ok(mut entries) = self.entries.lock() else {
                return Next::Done;
            };
            let window_over = sent.elapsed() >= self.window;
            let again = matches!(entries.get(key), Some(Entry::Sent { again: true, .. }));
            if stale || again && window_over {
                let newer = match entries.get_mut(key) {
                    Some(Entry::Sent { expect, .. }) => expect.take(),
                    _ => None,
                };
                let next = Expect::merge(expect.take(), newer);
                entries.insert(key.clone(), Entry::Pending { expect: next });
                *confirms = if again { 0 } else { *confirms + 1 };
                if stale && !again {
                    tracing::info!(source = %key, "webhook: the check found status unchanged; asking again");
                }
                return Next::Patch;
            }
            if verdict != Verdict::Waiting {
                expect = None;
            }
            if !again && expect.is_none() && window_over {
                entries.remove(key);
                return Next::Done;
            }
        }
    }

    /// What the check of the patch with `value` says of `expect`.
    fn verdict(
        &self,
        key: &SourceKey,
        value: Option<&str>,
        expect: Option<&Expect>,
        sent: Instant,
    ) -> Verdict {
        let (Some(expect), Some(value)) = (expect, value) else {
            return Verdict::Settled;
        };
        let Some(now) = self.observer.get(key) else {
            return Verdict::Settled; // gone
        };
        if now.handled.as_deref() != Some(value) {
            if sent.elapsed() > HANDLE_TIMEOUT {
                return Verdict::Settled; // the interval is the fallback
            }
            return Verdict::Waiting;
        }
        if now.digest == expect.before && now.digest != expect.pushed {
            Verdict::Stale
        } else {
            Verdict::Settled
        }
    }

    /// Sends one patch; the value written, or `None` when it did not apply.
    async fn patch(&self, key: &SourceKey) -> Option<String> {
        let value = requested_at_value();
        let patched =
            tokio::time::timeout(PATCH_TIMEOUT, self.patcher.request_check(key, &value)).await;
        match patched {
            Ok(Ok(())) => {
                tracing::info!(source = %key, requested_at = %value, "webhook: check requested");
                self.metrics.webhook_wakes(1);
                return Some(value);
            }
            Ok(Err(PatchError::NotFound)) => {
                tracing::debug!(source = %key, "webhook: source gone before its check was requested");
            }
            Ok(Err(PatchError::Failed(e))) => {
                tracing::warn!(source = %key, error = %e, "webhook: cannot request a check; the interval applies");
            }
            Err(_) => {
                tracing::warn!(source = %key, "webhook: requesting a check timed out; the interval applies");
            }
        }
        None
    }
}
