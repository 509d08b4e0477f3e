//! Large deterministic bodies, produced and verified as streams so no test holds one whole.
//!
//! Byte `i` of every pattern body is `BLOCK[i % BLOCK_LEN]`, where `BLOCK` is pseudo-random and
//! `BLOCK_LEN` is a prime: consecutive 64 KiB chunks all differ, so a lost, repeated or reordered
//! chunk breaks the comparison at its offset. [`Checker`] compares what arrives against the
//! pattern with slice comparisons (memcmp), cheap even in debug builds. [`Fnv64`] is the digest
//! the mock upstream reports for `/echo`, for bodies that are not pattern bodies.

use std::sync::OnceLock;

use bytes::Bytes;
use futures_util::Stream;

/// A prime, so the pattern never lines up with power-of-two chunk sizes.
const BLOCK_LEN: usize = 65_521;

/// The chunk size streams are produced in.
pub const CHUNK: usize = 64 * 1024;

pub const MIB: u64 = 1024 * 1024;

fn block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        // xorshift64*: deterministic and good enough to make every chunk unique.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut out = Vec::with_capacity(BLOCK_LEN + 8);
        while out.len() < BLOCK_LEN {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(BLOCK_LEN);
        out
    })
}

fn position(offset: u64) -> usize {
    usize::try_from(offset % BLOCK_LEN as u64).expect("remainder fits usize")
}

/// `len` pattern bytes starting at `offset`.
pub fn bytes_at(offset: u64, len: usize) -> Bytes {
    let block = block();
    let mut out = Vec::with_capacity(len);
    let mut pos = position(offset);
    while out.len() < len {
        let take = (len - out.len()).min(BLOCK_LEN - pos);
        out.extend_from_slice(&block[pos..pos + take]);
        pos = 0;
    }
    Bytes::from(out)
}

/// A stream of `total` pattern bytes in [`CHUNK`]-sized pieces, generated on demand.
pub fn stream<E>(total: u64) -> impl Stream<Item = Result<Bytes, E>> + Send + 'static
where
    E: Send + 'static,
{
    futures_util::stream::unfold(0u64, move |offset| async move {
        if offset >= total {
            return None;
        }
        let len = usize::try_from((total - offset).min(CHUNK as u64)).expect("chunk fits usize");
        Some((Ok(bytes_at(offset, len)), offset + len as u64))
    })
}

/// Verifies a pattern body piece by piece as it arrives.
#[derive(Debug, Default)]
pub struct Checker {
    offset: u64,
    /// The first offset where the received bytes differ from the pattern.
    first_mismatch: Option<u64>,
    pieces: u64,
}

impl Checker {
    pub fn feed(&mut self, data: &[u8]) {
        self.pieces += 1;
        let block = block();
        let mut rest = data;
        while !rest.is_empty() {
            let pos = position(self.offset);
            let take = rest.len().min(BLOCK_LEN - pos);
            if self.first_mismatch.is_none() && rest[..take] != block[pos..pos + take] {
                self.first_mismatch = Some(self.offset);
            }
            self.offset += take as u64;
            rest = &rest[take..];
        }
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.offset
    }

    /// How many pieces (reads) the body arrived in.
    pub fn pieces(&self) -> u64 {
        self.pieces
    }

    /// Panics unless exactly `total` bytes arrived and all matched the pattern.
    pub fn assert_complete(&self, total: u64) {
        assert_eq!(
            self.first_mismatch, None,
            "body differs from the pattern at this offset"
        );
        assert_eq!(self.offset, total, "body length");
    }
}

/// FNV-1a, 64 bit: the digest `/echo` reports as `bodyFnv`.
#[derive(Debug, Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn hex(self) -> String {
        format!("{:016x}", self.0)
    }

    pub fn of(data: &[u8]) -> String {
        let mut h = Self::default();
        h.update(data);
        h.hex()
    }
}
