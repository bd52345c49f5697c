//! The device plane's gRPC codec: prost encoding with buffers sized for a fleet.
//!
//! tonic's default codec gives every stream an 8 KiB encode buffer (and every decoding stream
//! an 8 KiB read buffer) for the stream's whole life. A cloud replica holds one Subscribe
//! stream per connected device, and that stream carries a few tiny notices a day, so at
//! 100,000 devices the default spends 800 MB on buffers that hold nothing (measured with
//! massif: `bench/RESULTS.md`). This codec starts each buffer at [`INITIAL_BUFFER_BYTES`]: a
//! notice fits, and a larger message (a sync response, a 64 KiB bundle chunk) grows the buffer
//! for as long as it is needed, as tonic's does past 8 KiB. The yield threshold, which bounds
//! how much is batched before a write, stays tonic's default.
//!
//! The generated client and server use it (`codec_path` in `build.rs`), so the cloud, the
//! device and the fleet simulator all speak through it; the bytes on the wire are the same.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The bytes each stream's encode and decode buffer starts with.
pub const INITIAL_BUFFER_BYTES: usize = 256;

/// Above this many buffered bytes a stream's encoder yields them to the connection
/// (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// Prost encoding with small starting buffers; see the module doc.
#[derive(Debug, Clone, Copy)]
pub struct DevicePlaneCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for DevicePlaneCodec<T, U> {
    fn default() -> Self {
        DevicePlaneCodec {
            _types: PhantomData,
        }
    }
}

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for DevicePlaneCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffer_settings())
    }
}
