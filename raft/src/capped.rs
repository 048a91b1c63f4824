//! A peer's answer read with a bound on its length. Every byte from the network is hostile
//! until checked: a stale address now served by something else can answer with any amount,
//! and buffering it whole would let it take a node's memory. So an answer is refused by its
//! declared length before anything is read, else as soon as the chunks read pass the bound.
//! `network::read_capped` (reqwest's answers) and `link` (hyper's) both read through this.

/// An answer longer than the bound it was read with.
#[derive(Debug, thiserror::Error)]
#[error("the answer is longer than {limit} bytes")]
pub struct TooLong {
    pub limit: usize,
}

/// The bytes of an answer read so far, never more than `limit`.
#[derive(Debug)]
pub struct Capped {
    bytes: Vec<u8>,
    limit: usize,
}

impl Capped {
    /// Start reading an answer that says it holds at least `declared` bytes (its
    /// `Content-Length`, or 0 when it does not say): refused at once when that passes
    /// `limit`.
    pub fn new(declared: u64, limit: usize) -> Result<Self, TooLong> {
        if declared > limit as u64 {
            return Err(TooLong { limit });
        }
        Ok(Capped {
            bytes: Vec::new(),
            limit,
        })
    }

    /// Add the next chunk, or refuse the answer if it would pass the bound (nothing of the
    /// chunk is kept then).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), TooLong> {
        if chunk.len() > self.limit - self.bytes.len() {
            return Err(TooLong { limit: self.limit });
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_length_past_the_bound_is_refused_before_reading() {
        assert!(Capped::new(11, 10).is_err());
        assert!(Capped::new(10, 10).is_ok());
        assert!(Capped::new(u64::MAX, usize::MAX >> 1).is_err());
    }

    #[test]
    fn chunks_are_kept_up_to_the_bound_and_refused_past_it() {
        let mut c = Capped::new(0, 10).unwrap();
        c.push(b"hello").unwrap();
        c.push(b"").unwrap();
        c.push(b"world").unwrap();
        let err = c.push(b"!").unwrap_err();
        assert_eq!(err.to_string(), "the answer is longer than 10 bytes");
        assert_eq!(c.into_bytes(), b"helloworld");

        // One chunk alone longer than the bound, into an empty answer.
        let mut c = Capped::new(0, 4).unwrap();
        assert!(c.push(b"hello").is_err());
        assert!(c.into_bytes().is_empty());
    }
}
