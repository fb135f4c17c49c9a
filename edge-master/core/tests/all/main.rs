//! One integration-test binary for `skiff-edge-core`: recorded webhooks replayed through
//! verification, normalization, trigger matching and dispatch signing.

mod bad_input;
mod dispatch;
mod fixtures;
mod props;
mod providers;
mod triggers;
