//! A session's lease: its place under a cluster-wide cap, given back when dropped.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{ClusterLimits, RELEASE_TIMEOUT};

/// A session's place under a cluster-wide cap (or its presence); dropping it frees the
/// place.
pub struct Lease {
    /// `<family>.<key>.<node>.<id>`, shared with the publisher's set of leases to refresh
    /// (`None` once given back).
    pub(super) subject: Option<Arc<str>>,
    /// The limits that gave it out.
    pub(super) limits: Arc<ClusterLimits>,
    /// Fires if reconciliation gives the place to an earlier racer (capped leases).
    pub(super) reclaimed: Option<super::Reclaimed>,
}

impl Lease {
    /// Frees the place now and waits (at most [`RELEASE_TIMEOUT`]) until the stream no
    /// longer holds it, so a count taken afterwards does not see it.
    pub async fn release(mut self) {
        let Some(subject) = self.subject.take() else {
            return;
        };
        let (done, released) = oneshot::channel();
        self.limits.give_back(subject, Some(done));
        // The release task answers within its own timeout; this one only guards against
        // a task that never ran (runtime shutting down).
        let _ = tokio::time::timeout(RELEASE_TIMEOUT * 2, released).await;
    }

    /// The lease's subject (unique in the cluster).
    pub fn subject(&self) -> &str {
        self.subject.as_deref().unwrap_or_default()
    }

    /// The signal that reconciliation reclaimed this place (once; `None` afterwards, and
    /// for leases without a cap): the session must close with the cap's code.
    pub fn reclaimed(&mut self) -> Option<super::Reclaimed> {
        self.reclaimed.take()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(subject) = self.subject.take() {
            self.limits.give_back(subject, None);
        }
    }
}
