//! The codec every consent.v1 service and client uses: prost's, except that
//! a request that is not valid protobuf is the caller's mistake, answered
//! INVALID_ARGUMENT with a `BadRequest`, not INTERNAL (tonic-prost's choice,
//! which would page an operator for a client's garbage).

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, DecodeBuf, Decoder},
};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::error::Error;

/// The violation of a message that does not decode. It names no field: a
/// message that does not parse has none, and prost's text says where it
/// stopped (never the bytes it read).
pub fn undecodable(error: prost::DecodeError) -> Error {
    Error::invalid("", format!("is not a valid protobuf message: {error}"))
}

/// Named in build.rs (`codec_path`): the generated code calls `default()`.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(ProstDecoder::default())
    }
}

/// prost's decoder with [`undecodable`] for its errors.
#[derive(Debug)]
pub struct RequestDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::from(undecodable(e)))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
