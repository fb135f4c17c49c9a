//! One integration-test binary for `skiff-edge-core`: recorded webhooks replayed through
//! verification, normalization, trigger matching and dispatch signing.

mod accept;
mod bad_input;
mod dispatch;
mod fixtures;
mod forward;
mod props;
mod providers;
mod triggers;
