//! Keyed pseudonyms of patron ids, for the `pseudonym` strategy of action pseudonymize.
//!
//! A pseudonym is `-(n + 1)`, where `n` is the first 31 bits (big-endian) of
//! HMAC-SHA-256(key, `"lethe-pseudonym-v1:" || decimal id`). So:
//! - it fits a signed 32-bit integer column (Koha's `statistics.borrowernumber` is
//!   `int(11)`), and is negative, so it can never be mistaken for a real patron id (those
//!   are positive auto-increments) and a pseudonymized row is recognisable: the
//!   engine treats only values `>= 0` as still to change, which makes a second run a no-op;
//! - one patron's rows share a pseudonym, so counts of distinct borrowers survive; two
//!   patrons share one only by chance, about `N² / 2³²` pairs among `N` patrons
//!   (100,000 patrons: about 2 pairs), which shifts a distinct count by that much;
//! - without the key the id cannot be recovered by trying every id (the id space is
//!   small and sequential, which is why a plain hash would not do: Koha's own
//!   pseudonymization relies likewise on its secret `bcrypt_settings`).
//!
//! The key is a secret of the installation (`pseudonyms.key_env` or `key_file`, see
//! [`crate::config::Config::pseudonym_key`]); it is never logged, stored in the ledger or
//! shown. Changing it breaks the link between pseudonyms made before and after.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// The shortest key accepted, in bytes (`openssl rand -hex 32` gives 64).
pub const MIN_KEY_BYTES: usize = 32;

/// Domain separation: a pseudonym made here cannot collide by construction with another
/// use of the same key.
const CONTEXT: &[u8] = b"lethe-pseudonym-v1:";

/// The pseudonym of the patron id `id` under `key`: a number in `[-2^31, -1]`.
pub fn pseudonym(key: &SecretString, id: i64) -> i64 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes()) else {
        return i64::from(i32::MIN);
    };
    mac.update(CONTEXT);
    mac.update(id.to_string().as_bytes());
    let out = mac.finalize().into_bytes();
    let n = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) & 0x7fff_ffff;
    -i64::from(n) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn pseudonyms_are_negative_stable_and_keyed() {
        let k = key("0123456789abcdef0123456789abcdef");
        let other = key("fedcba9876543210fedcba9876543210");
        let p = pseudonym(&k, 42);
        assert!(p < 0 && p >= i64::from(i32::MIN), "{p}");
        assert_eq!(p, pseudonym(&k, 42));
        assert_ne!(p, pseudonym(&k, 43));
        assert_ne!(p, pseudonym(&other, 42));
    }

    #[test]
    fn distinct_ids_keep_distinct_pseudonyms_at_library_scale() {
        // 20,000 patrons: the expected number of colliding pairs is 20000²/2³² ≈ 0.05.
        let k = key("0123456789abcdef0123456789abcdef");
        let set: std::collections::HashSet<i64> = (1..=20_000).map(|i| pseudonym(&k, i)).collect();
        assert_eq!(set.len(), 20_000);
    }
}
