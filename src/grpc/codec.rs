//! The codec every consent.v1 service and client uses: prost's, with two
//! changes on the way in. A request's lists are counted in the raw bytes
//! before prost decodes anything ([`super::lists`]), so an over-long list
//! costs no allocation per item. And a request that is not valid protobuf is
//! the caller's mistake, answered INVALID_ARGUMENT with a `BadRequest`, not
//! INTERNAL (tonic-prost's choice, which would page an operator for a
//! client's garbage).

use std::marker::PhantomData;

use prost::{Message, Name, bytes::Buf as _};
use tonic::{
    Status,
    codec::{BufferSettings, DecodeBuf, Decoder},
};
use tonic_prost::{ProstDecoder, ProstEncoder};

use super::lists;
use crate::error::Error;

/// The violation of a message that does not decode. It names no field: a
/// message that does not parse has none, and prost's text says where it
/// stopped (never the bytes it read).
pub fn undecodable(error: prost::DecodeError) -> Error {
    Error::invalid("", format!("is not a valid protobuf message: {error}"))
}

/// Decodes one whole request as the served methods do: lists first, then
/// prost, with [`undecodable`] for its errors. Shared by the codec and by
/// request validation without a server (`grpc::validate`).
pub fn decode_request<U: Message + Name + Default>(bytes: &[u8]) -> Result<U, Error> {
    lists::check_lists(U::NAME, bytes)?;
    U::decode(bytes).map_err(undecodable)
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
    U: Message + Name + Default + Send + 'static,
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

/// prost's decoder, after the list check, with [`undecodable`] for its
/// errors.
#[derive(Debug)]
pub struct RequestDecoder<U>(ProstDecoder<U>);

impl<U: Message + Name + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // tonic hands over one message, whole, in one contiguous buffer.
        debug_assert_eq!(buf.chunk().len(), buf.remaining());
        let message = decode_request(buf.chunk()).map_err(Status::from)?;
        buf.advance(buf.remaining());
        Ok(Some(message))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
