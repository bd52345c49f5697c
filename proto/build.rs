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
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
