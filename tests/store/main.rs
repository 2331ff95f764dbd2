//! The store conformance suite: every case runs against each backend, which must agree.
//!
//! SQLite always runs, on a fresh file per test. PostgreSQL runs when
//! `NOTIFY_TEST_POSTGRES_URL` names a server, e.g. `postgres://root@127.0.0.1:5432/test`.
//! Each PostgreSQL test then creates its own database from that URL and drops it afterwards.
//! Without the variable, the PostgreSQL tests pass without running, and one printed line
//! reports that they were skipped.

mod concurrency;
mod event_log;
mod harness;
mod notifications;

/// Declares one test per backend for each case, as `sqlite::CASE` and `postgres::CASE`.
macro_rules! conformance_suite {
    ($($module:ident :: $case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::harness::run_on_sqlite(crate::$module::$case).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::harness::run_on_postgres(crate::$module::$case).await;
                }
            )*
        }
    };
}

conformance_suite! {
    notifications::create_for_one_user,
    notifications::create_for_several_users,
    notifications::create_for_repeated_user,
    notifications::list_pages_newest_first,
    notifications::list_filters_by_status,
    notifications::mark_read_is_idempotent,
    notifications::mark_read_rejects_other_owners,
    notifications::mark_all_read_counts_and_appends,
    notifications::delete_appends_events,
    notifications::delete_rejects_other_owners,
    notifications::tenants_are_isolated,
    event_log::append_event_positions_per_room,
    event_log::heads_of_known_and_unknown_rooms,
    event_log::events_after_respects_limits,
    event_log::prune_by_count,
    event_log::prune_by_age,
    event_log::prune_respects_batch,
    event_log::prune_keeps_notifications_and_heads,
    event_log::ping_and_close,
    concurrency::concurrent_creates_in_opposite_orders,
    concurrency::positions_become_visible_in_order,
}
