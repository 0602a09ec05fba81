//! A small seeded PRNG (xorshift64*, seeded through splitmix64), so the random choices of the
//! soak and reset scenarios (which fixture event a stream starts at, where a stream is cut)
//! are replayed exactly by `--seed`. Not for anything that needs unpredictability.

/// splitmix64's output function: spreads any seed (0 included) over all 64 bits.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for one run, derived from the bench's seed and what the run is (its scenario and
/// transport), so one run can be repeated alone and runs do not share a sequence.
pub fn derive(seed: u64, a: u64, b: u64) -> u64 {
    splitmix64(seed ^ splitmix64(a.wrapping_mul(0x1_0000).wrapping_add(b)))
}

/// xorshift64*: small, fast, and good enough for choosing test cases.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift's state must not be zero.
        Rng(splitmix64(seed).max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0), by multiply-shift (bias below 2^-32 for the sizes used).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}
