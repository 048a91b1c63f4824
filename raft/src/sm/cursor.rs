//! Where a walk of the list stands: [`Cursor`], the token a page names as `next_cursor`.
//!
//! `next_after` names the page's last record by id, and the next page starts after that
//! record's place in the list, so it needs the record: once it is deleted, or an update moves
//! it (a `PUT` that sends `created`), a walk could not go on. A cursor carries the place
//! itself, the list index's key `(order, id)`, so the walk goes on from there whatever
//! became of the record. The token is opaque to clients: a version byte, the order key and
//! the id, in URL-safe base64 without padding, so it goes into a query string as it is.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::command::MAX_ID_BYTES;

/// The first byte of every token this version writes: a later layout takes another.
const VERSION: u8 = 1;

/// The bytes before the id: the version and the order key.
const HEAD: usize = 1 + 8;

/// A place in the list order: just after the record whose index key is `(order, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub(super) order: u64,
    pub(super) id: String,
}

impl Cursor {
    /// The id of the record this place follows (it may have been deleted since).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The token for `next_cursor`.
    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(HEAD + self.id.len());
        raw.push(VERSION);
        raw.extend_from_slice(&self.order.to_be_bytes());
        raw.extend_from_slice(self.id.as_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// A token [`Cursor::encode`] wrote, or `None` for anything else: the length is checked
    /// before anything is decoded, and the id must be one a record could have.
    pub fn decode(token: &str) -> Option<Self> {
        if token.len() > (HEAD + MAX_ID_BYTES).div_ceil(3) * 4 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        let (head, id) = raw.split_at_checked(HEAD)?;
        if head[0] != VERSION || id.is_empty() || id.len() > MAX_ID_BYTES {
            return None;
        }
        Some(Cursor {
            order: u64::from_be_bytes(head[1..].try_into().ok()?),
            id: String::from_utf8(id.to_vec()).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tables::order_key;
    use super::*;

    impl Cursor {
        /// The place of a record created at `created` (Unix seconds) with id `id`.
        fn of(created: i64, id: String) -> Self {
            Cursor {
                order: order_key(created),
                id,
            }
        }
    }

    #[test]
    fn a_token_names_the_place_it_was_made_from() {
        for (created, id) in [
            (1_749_658_366, "a"),
            (0, "with space/and?query&chars=é"),
            (-5, "negative created"),
            (i64::MAX, &*"x".repeat(MAX_ID_BYTES)),
        ] {
            let c = Cursor::of(created, id.into());
            let token = c.encode();
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{token} needs no escaping in a query"
            );
            assert_eq!(Cursor::decode(&token), Some(c));
        }
    }

    #[test]
    fn anything_else_is_no_token() {
        let ok = Cursor::of(7, "id".into()).encode();
        let raw = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let mut v2 = URL_SAFE_NO_PAD.decode(&ok).unwrap();
        v2[0] = 2;
        let too_long = {
            let mut r = vec![VERSION; HEAD];
            r.extend(std::iter::repeat_n(b'x', MAX_ID_BYTES + 1));
            raw(&r)
        };
        for bad in [
            String::new(),
            "not base64!".into(),
            ok.clone() + "=",
            raw(&[VERSION; HEAD]),          // no id
            raw(&[VERSION, 0, 0, 0, 0, 0]), // short of an order key
            raw(&v2),
            raw(&[&[VERSION; HEAD][..], &[0xff, 0xfe]].concat()), // not UTF-8
            too_long,
            "A".repeat(10_000),
        ] {
            assert_eq!(Cursor::decode(&bad), None, "{bad:?}");
        }
    }
}
