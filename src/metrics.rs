//! Counters and gauges for `/metrics`, written in the Prometheus text format.

use std::{
    fmt::Write,
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
};

/// Process-local metrics. Every field is updated with relaxed atomics: readers only need
/// eventually right numbers, and writers sit on the delivery path.
#[derive(Default)]
pub struct Metrics {
    pub sse_connections: AtomicI64,
    pub ws_connections: AtomicI64,
    /// Events written to connections.
    pub deliveries: AtomicU64,
    /// Events committed and handed to the broker.
    pub published: AtomicU64,
    /// Stored events sent to resuming connections.
    pub replayed: AtomicU64,
    /// `resync` events sent because a resumed position was older than the retention.
    pub resyncs: AtomicU64,
    /// Events removed by the retention pruner.
    pub pruned: AtomicU64,
    /// Live events that arrived ahead of an earlier one, filled from the store.
    pub gaps: AtomicU64,
    pub disconnects_slow: AtomicU64,
    pub disconnects_expired: AtomicU64,
    pub disconnects_dead_peer: AtomicU64,
    pub disconnects_shutdown: AtomicU64,
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Renders every metric in the Prometheus text exposition format, version 0.0.4.
    pub fn render(&self, rooms: usize) -> String {
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut out = String::with_capacity(1024);
        let _ = writeln!(out, "# HELP notify_connections Open streaming connections.");
        let _ = writeln!(out, "# TYPE notify_connections gauge");
        let _ = writeln!(
            out,
            "notify_connections{{transport=\"sse\"}} {}",
            self.sse_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "notify_connections{{transport=\"websocket\"}} {}",
            self.ws_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP notify_rooms Rooms with at least one local connection.");
        let _ = writeln!(out, "# TYPE notify_rooms gauge");
        let _ = writeln!(out, "notify_rooms {rooms}");
        let _ = writeln!(out, "# HELP notify_deliveries_total Events written to connections.");
        let _ = writeln!(out, "# TYPE notify_deliveries_total counter");
        let _ = writeln!(out, "notify_deliveries_total {}", get(&self.deliveries));
        let _ = writeln!(out, "# HELP notify_published_total Events committed and handed to the broker.");
        let _ = writeln!(out, "# TYPE notify_published_total counter");
        let _ = writeln!(out, "notify_published_total {}", get(&self.published));
        for (name, help, value) in [
            ("notify_replayed_total", "Stored events sent to resuming connections.", &self.replayed),
            (
                "notify_resyncs_total",
                "Resync events sent for positions older than the retention.",
                &self.resyncs,
            ),
            ("notify_pruned_total", "Events removed by the retention pruner.", &self.pruned),
            (
                "notify_gaps_total",
                "Live events that arrived out of order and were filled from the store.",
                &self.gaps,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", get(value));
        }
        let _ = writeln!(out, "# HELP notify_disconnects_total Connections the server closed, by reason.");
        let _ = writeln!(out, "# TYPE notify_disconnects_total counter");
        for (reason, value) in [
            ("slow_consumer", &self.disconnects_slow),
            ("token_expired", &self.disconnects_expired),
            ("dead_peer", &self.disconnects_dead_peer),
            ("shutdown", &self.disconnects_shutdown),
        ] {
            let _ = writeln!(out, "notify_disconnects_total{{reason=\"{reason}\"}} {}", get(value));
        }
        out
    }
}
