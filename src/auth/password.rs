//! Password hashing with argon2id, stored as PHC strings.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Memory cost in KiB: OWASP's argon2id baseline (19 MiB, 2 passes, 1 lane),
/// about 20-40 ms per hash on one core: slow for guessing, cheap for a login.
const MEMORY_KIB: u32 = 19 * 1024;
/// Number of passes over the memory.
const ITERATIONS: u32 = 2;
/// Degree of parallelism: one lane, so a login burst cannot take every core.
const LANES: u32 = 1;

/// Shortest password accepted for a new account or a password change.
pub const MIN_PASSWORD_LEN: usize = 8;

fn hasher() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, LANES, None)
        .expect("argon2 parameters are compile-time constants within the allowed ranges");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into a PHC string. CPU-heavy: call it off the async workers.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::from_b64(&random_salt())
        .expect("a 16-byte salt encodes to valid base64 of the allowed length");
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .expect("hashing with valid parameters and salt cannot fail")
        .to_string()
}

fn random_salt() -> String {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    argon2::password_hash::SaltString::encode_b64(&bytes)
        .expect("16 bytes are within the salt length limits")
        .as_str()
        .to_string()
}

/// Whether `password` matches `phc`. A stored hash that cannot be parsed
/// matches nothing. CPU-heavy: call it off the async workers.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Spends the same time as a real verification, for logins whose username
/// does not exist: the answer's timing must not reveal which usernames do.
pub fn verify_against_dummy(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let phc = DUMMY.get_or_init(|| hash_password("not a real password, only for timing"));
    let _ = verify_password(password, phc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let phc = hash_password("correct horse");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
        assert!(!verify_password("correct horse", "not a phc string"));
    }
}
