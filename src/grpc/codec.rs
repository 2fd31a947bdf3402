//! The protobuf codec of every consent.v1 method: prost's, with the list
//! check of [`super::lists`] run on the raw bytes before prost decodes.

use std::marker::PhantomData;

use prost::{Message, Name, bytes::Buf as _};
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstDecoder, ProstEncoder};

use super::lists;

/// Encodes `T` and decodes `U` as prost does; the generated servers and
/// clients name it through `codec_path` in build.rs.
#[derive(Debug, Clone)]
pub struct ListCheckingCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ListCheckingCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ListCheckingCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ListCheckingDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ListCheckingDecoder(ProstDecoder::default())
    }
}

/// prost's decoder, after the list check.
#[derive(Debug)]
pub struct ListCheckingDecoder<U>(ProstDecoder<U>);

impl<U: Message + Name + Default> Decoder for ListCheckingDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // tonic hands over one message, whole, in one contiguous buffer.
        debug_assert_eq!(buf.chunk().len(), buf.remaining());
        lists::check_lists(U::NAME, buf.chunk()).map_err(Status::from)?;
        self.0.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
