//! Calls a fake node takes in and leaves unanswered, as a leader that froze would, until the
//! test releases them ([`Faults::hold`]). The node still answers everything else, and its
//! connection stays up: only the call waits.

use super::*;

/// Counts a held call as open until its handler ends: released, or dropped because its
/// client gave up on it.
struct HeldOpen(Arc<Mutex<State>>);

impl Drop for HeldOpen {
    fn drop(&mut self) {
        self.0.lock().expect("fake state lock").held_open -= 1;
    }
}

impl FakeNode {
    /// Waits until [`FakeCluster::release_held`] when `method` is held at this node; logs the
    /// call as held.
    pub(super) async fn hold_if_asked(&self, method: &'static str) {
        let release = Arc::clone(&self.lock().release);
        // Registered before the check, so that a release after it is not missed.
        let released = release.notified();
        let _open = {
            let mut state = self.lock();
            if state.faults.hold.get(method) != Some(&self.id) {
                return;
            }
            state.calls.push(Call {
                node: self.id,
                method,
                shard: None,
                records: 0,
                at_leader: false,
                held: true,
            });
            state.held_open += 1;
            HeldOpen(Arc::clone(&self.state))
        };
        released.await;
    }
}

impl FakeCluster {
    /// Holds `method` at node `node` from now on.
    pub fn hold(&self, method: &'static str, node: u64) {
        self.lock().faults.hold.insert(method, node);
    }

    /// Ends every hold: held calls go on to be served.
    pub fn release_held(&self) {
        let mut state = self.lock();
        state.faults.hold.clear();
        state.release.notify_waiters();
    }

    /// Calls held and still open.
    pub fn held_open(&self) -> usize {
        self.lock().held_open
    }
}
