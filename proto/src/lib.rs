//! The contract between Walle's cloud, devices and SDK.
//!
//! - [`v1`]: the device-plane gRPC protocol (`walle/device/v1/device.proto`), compiled with
//!   `protox` so no system `protoc` is needed: messages plus tonic client and server.
//! - [`codec`]: the codec the generated client and server use: prost with small starting
//!   buffers, as a replica holds one mostly idle stream per device.
//! - [`profile`]: the device profile (the `DeviceProfile` message, also the device's
//!   `[profile]` config and the cloud's stored JSON) and the limits the cloud applies to it.
//! - [`manifest`]: `walle.toml`, the task manifest, with validation that names the field at
//!   fault, and the [`manifest::ReleaseManifest`] the cloud signs.
//! - [`cron`]: the five-field cron schedules of task timers, evaluated in UTC.
//! - [`bundle`]: the task bundle file format (tar + zstd), packed deterministically and read
//!   back with every entry checked.
//! - [`signing`]: ed25519 signing of release manifests and their verification on devices.
//! - [`event`]: the protobuf form of user-behaviour events, converted to the pipeline's `Event`
//!   and validated like the JSON form.
//! - [`tunnel`]: the tunnel's compressed record batch, bounded when read.
//! - [`report`]: free text a device reports, cut in the middle to fit (a traceback keeps its
//!   exception line).
//! - [`crash`]: the crash points (fault injection by environment variable) that the cloud's and
//!   the device's crash tests use; inert unless `WALLE_CRASH_AT` is set.
//!
//! This crate holds formats and their validation only: no I/O beyond reading a task directory,
//! no networking, no storage.

pub mod bundle;
pub mod codec;
pub mod crash;
pub mod cron;
pub mod event;
pub mod manifest;
pub mod profile;
pub mod report;
pub mod signing;
pub mod tunnel;

/// Device plane, version 1: generated messages, `device_plane_client` and `device_plane_server`.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("walle.device.v1");
}
