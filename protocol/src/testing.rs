//! Deterministic helpers for tests and fuzzing. Not for production use.
//!
//! Tests and fuzz targets need RSA keys and payloads that are the same on every run, so that a
//! failure or a crash input can be replayed. [`SeededRng`] supplies that: it is a
//! deterministic byte stream derived from a seed. It is labelled a cryptographic RNG only so that
//! the `*_with_rng` functions accept it; anyone who knows the seed knows every byte it produces.

use std::convert::Infallible;

use rsa::rand_core::{TryCryptoRng, TryRng};
use sha2::{Digest, Sha256};

/// Deterministic RNG: SHA-256 of (seed, block counter), concatenated. **Not secret.**
#[derive(Debug)]
pub struct SeededRng {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl SeededRng {
    /// A stream determined entirely by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        SeededRng {
            seed: key,
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    fn next_byte(&mut self) -> u8 {
        if self.used == self.block.len() {
            let digest = Sha256::new()
                .chain_update(self.seed)
                .chain_update(self.counter.to_le_bytes())
                .finalize();
            self.block.copy_from_slice(&digest);
            self.counter = self.counter.wrapping_add(1);
            self.used = 0;
        }
        let b = self.block[self.used];
        self.used += 1;
        b
    }
}

impl TryRng for SeededRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for b in dst {
            *b = self.next_byte();
        }
        Ok(())
    }
}

impl TryCryptoRng for SeededRng {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let mut a = SeededRng::new(7);
        let mut b = SeededRng::new(7);
        let mut c = SeededRng::new(8);
        let (mut x, mut y, mut z) = ([0u8; 100], [0u8; 100], [0u8; 100]);
        a.try_fill_bytes(&mut x).unwrap();
        b.try_fill_bytes(&mut y).unwrap();
        c.try_fill_bytes(&mut z).unwrap();
        assert_eq!(x, y);
        assert_ne!(x, z);
        // Blocks differ from one another.
        assert_ne!(x[..32], x[32..64]);
    }
}
