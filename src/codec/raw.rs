//! The identity codec: the final fallback when nothing else pays.

use super::{Codec, CodecError, CodecId, EncodeParams, RAW};

pub struct Raw;

impl Codec for Raw {
    fn id(&self) -> CodecId {
        RAW
    }
    fn name(&self) -> &'static str {
        "raw"
    }
    fn encode(&self, raw: &[u8], _p: &EncodeParams, out: &mut Vec<u8>) -> Result<u32, CodecError> {
        out.clear();
        out.extend_from_slice(raw);
        Ok(0)
    }
    fn decode(
        &self,
        payload: &[u8],
        _params: u32,
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        CodecError::check_len(payload.len(), raw_len)?;
        out.clear();
        out.extend_from_slice(payload);
        Ok(())
    }
}
