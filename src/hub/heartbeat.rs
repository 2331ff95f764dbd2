//! One shared timer for every connection's heartbeat and ping, instead of one per connection.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A tick that every connection watches. Cloning is cheap; an idle connection holds only
/// its receiver.
#[derive(Clone)]
pub struct Heartbeat {
    ticks: watch::Receiver<u64>,
}

impl Heartbeat {
    /// Starts the timer task; it stops when `shutdown` is cancelled.
    pub fn start(interval: Duration, shutdown: CancellationToken) -> Self {
        let (sender, ticks) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(interval);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = timer.tick() => {
                        sender.send_modify(|n| *n = n.wrapping_add(1));
                    }
                }
            }
        });
        Heartbeat { ticks }
    }

    /// Waits for the next tick. Pending forever once the timer has stopped, because the
    /// connection's own shutdown branch ends it then.
    pub async fn tick(&mut self) {
        if self.ticks.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
