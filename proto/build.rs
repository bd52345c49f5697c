//! Compiles the device-plane `.proto` files with `protox` (pure Rust), so no system `protoc` is
//! needed, and generates tonic client and server code from them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "walle/device/v1/device.proto",
        "walle/device/v1/event.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    // The device profile is one type everywhere: the message on the wire, the device's
    // `[profile]` config and the JSON the cloud stores (`profile::DeviceProfile`). Missing fields
    // read as empty, as on the wire; the device applies its own defaults on top.
    // Every stream's buffers start small (`codec.rs`): a replica holds one idle Subscribe
    // stream per connected device.
    tonic_prost_build::configure()
        .codec_path("crate::codec::DevicePlaneCodec")
        .type_attribute(
            ".walle.device.v1.DeviceProfile",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
