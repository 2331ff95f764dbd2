//! Integration tests: each starts the real server on an ephemeral port with its own SQLite
//! file and talks to it only over HTTP, SSE and WebSocket.

mod auth;
mod cli;
mod delivery;
mod docs;
mod notifications;
mod process;
mod resilience;
mod resume;
mod rooms;
mod support;
mod validation;
