//! The ids messages are known by: the AMQP `message_id` every postage producer sets (a
//! fresh random one per message), and, for a message that arrived without one (Python
//! Postage sets none), an id derived from what it is, so that its redeliveries and
//! copies are known as the same message.
//!
//! ```
//! use postage_core::message_id;
//!
//! let fresh = message_id::generate();
//! assert_eq!(fresh.len(), 32);
//! assert_ne!(fresh, message_id::generate());
//!
//! let a = message_id::derive(b"{\"type\": \"command\"}", "jobs-exchange", "job");
//! assert_eq!(a, message_id::derive(b"{\"type\": \"command\"}", "jobs-exchange", "job"));
//! assert!(a.starts_with("fnv1a128:"));
//! assert_ne!(a, message_id::derive(b"{\"type\": \"command\"}", "jobs-exchange", "other"));
//! ```

/// A fresh id: 128 random bits as 32 lowercase hex digits.
pub fn generate() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The id of a message that came without one: `fnv1a128:` and the 32 hex digits of the
/// 128-bit FNV-1a hash of the exchange it was published to, a zero byte, its routing
/// key, a zero byte and its body, as delivered. The same bytes sent the same way always
/// get the same id, on every platform and version; so two deliveries of the same body
/// with the same routing are taken for one message (a Python Postage body names its
/// sender's process but carries no time or counter: two identical commands sent from
/// one process within an inbox's window count once).
pub fn derive(body: &[u8], exchange: &str, routing_key: &str) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut hash = OFFSET;
    let parts: [&[u8]; 5] = [
        exchange.as_bytes(),
        &[0],
        routing_key.as_bytes(),
        &[0],
        body,
    ];
    for byte in parts.into_iter().flatten() {
        hash ^= u128::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    format!("fnv1a128:{hash:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_id_is_fnv1a_128_of_exchange_key_and_body() {
        // FNV-1a 128 of the empty input is its offset basis.
        let empty = "fnv1a128:6c62272e07bb014262b821756295c58d";
        assert_ne!(derive(b"", "", ""), empty);
        // The published test vector of "a" (FNV-1a 128).
        let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
        hash ^= u128::from(b'a');
        hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
        assert_eq!(format!("{hash:032x}"), "d228cb696f1a8caf78912b704e4a8964");
        assert_ne!(derive(b"x", "e", "k"), derive(b"x", "ek", ""));
    }
}
