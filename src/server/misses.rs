//! What the artifact server does when asked for a revision its store lacks: it tells the
//! follower loop (which copies in what status names at its next tick), and on a follower
//! it waits a little for that copy instead of answering 404 at once, so an agent sent to
//! a replica a moment behind the leader gets the revision rather than a retry backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

/// The longest a request waits for a missing revision to be copied in.
pub const WAIT: Duration = Duration::from_secs(5);
/// Requests waiting at once; others are answered 404 at once (anyone may ask for digests
/// that do not exist: waiting is bounded in time and in connections held).
pub const WAITERS: usize = 16;
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct Misses {
    /// Woken by every miss.
    pub notify: Notify,
    /// This replica follows (fills its store from status), so a miss may be filled soon.
    following: AtomicBool,
    waiters: Semaphore,
}

impl Default for Misses {
    fn default() -> Self {
        Misses {
            notify: Notify::new(),
            following: AtomicBool::new(false),
            waiters: Semaphore::new(WAITERS),
        }
    }
}

impl Misses {
    pub fn set_following(&self, following: bool) {
        self.following.store(following, Ordering::Release);
    }

    /// Reports a miss; on a follower, waits up to [`WAIT`] for `present` to say the
    /// revision arrived. `true`: it did.
    pub async fn missed<F, Fut>(&self, mut present: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        self.notify.notify_one();
        if !self.following.load(Ordering::Acquire) {
            return false;
        }
        let Ok(_permit) = self.waiters.try_acquire() else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
            if present().await {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    #[tokio::test(start_paused = true)]
    async fn only_a_follower_waits_and_only_so_long_and_so_many() {
        let m = Arc::new(Misses::default());
        assert!(
            !m.missed(|| async { true }).await,
            "a leader answers at once"
        );
        m.set_following(true);
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let arrives = m
            .missed(move || {
                let n = c.fetch_add(1, Ordering::Relaxed);
                async move { n >= 3 }
            })
            .await;
        assert!(arrives);
        let start = tokio::time::Instant::now();
        assert!(!m.missed(|| async { false }).await);
        assert!(start.elapsed() >= WAIT && start.elapsed() < WAIT + Duration::from_secs(1));
        // with every slot held, a miss is answered at once
        let held: Vec<_> = (0..WAITERS).map(|_| m.waiters.try_acquire()).collect();
        assert!(held.iter().all(Result::is_ok));
        let start = tokio::time::Instant::now();
        assert!(!m.missed(|| async { true }).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
