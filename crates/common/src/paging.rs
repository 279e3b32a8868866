//! Paging, one way for every list call: `page_size` checked against the
//! service's cap (0 means the default), and opaque page tokens that carry a
//! keyset cursor (the last row's sort key), so pages stay stable while rows
//! are added and cost the same at any depth. Tokens are bound to the query
//! they came from: a token replayed against another query is refused. (The
//! check catches mistakes, it is not a security boundary: authorisation
//! applies to the query itself, whatever cursor a caller sends.)

use sha2::{Digest, Sha256};

use crate::ServiceError;

/// Page size limits of one list call.
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    pub default: u32,
    pub max: u32,
}

impl PageLimits {
    pub const fn new(default: u32, max: u32) -> Self {
        Self { default, max }
    }
}

/// A checked page request: how many rows, and after which cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub size: u32,
    /// The sort key of the last row of the previous page, if any.
    pub after: Option<String>,
}

impl Page {
    /// Rows to fetch: one more than the page, to know whether another follows.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.size) + 1
    }
}

/// Checks `page_size` and decodes `page_token` for the query described by
/// `query_fingerprint` (e.g. the list call's filter, serialised).
pub fn parse(
    page_size: i32,
    page_token: &str,
    limits: PageLimits,
    query_fingerprint: &str,
) -> Result<Page, ServiceError> {
    let size = match page_size {
        0 => limits.default,
        n if n < 0 => return Err(ServiceError::invalid("page_size", "must not be negative")),
        n if n.unsigned_abs() > limits.max => {
            return Err(ServiceError::invalid(
                "page_size",
                format!("must be at most {}", limits.max),
            ));
        }
        n => n.unsigned_abs(),
    };
    let after = if page_token.is_empty() {
        None
    } else {
        Some(decode_token(page_token, query_fingerprint)?)
    };
    Ok(Page { size, after })
}

/// Cuts the extra row off `rows` and returns the next page token (empty on
/// the last page), built from `key` of the last row kept.
pub fn finish<T>(
    mut rows: Vec<T>,
    page: &Page,
    query_fingerprint: &str,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, String) {
    let size = page.size as usize;
    if rows.len() > size {
        rows.truncate(size);
        let token = rows
            .last()
            .map(|r| encode_token(&key(r), query_fingerprint))
            .unwrap_or_default();
        (rows, token)
    } else {
        (rows, String::new())
    }
}

fn binding(cursor: &str, query: &str) -> String {
    let digest = Sha256::digest(format!("{query}\u{0}{cursor}").as_bytes());
    hex::encode(&digest[..8])
}

/// `hex(cursor).binding`: opaque to callers, checked on the way back.
fn encode_token(cursor: &str, query: &str) -> String {
    format!(
        "{}.{}",
        hex::encode(cursor.as_bytes()),
        binding(cursor, query)
    )
}

fn decode_token(token: &str, query: &str) -> Result<String, ServiceError> {
    let bad = || {
        ServiceError::invalid(
            "page_token",
            "is not a token returned by this list call with the same filters",
        )
    };
    let (body, check) = token.split_once('.').ok_or_else(bad)?;
    let cursor = hex::decode(body)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    if binding(&cursor, query) != check {
        return Err(bad());
    }
    Ok(cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PageLimits = PageLimits::new(50, 500);

    fn field_of(err: ServiceError) -> String {
        match err {
            ServiceError::InvalidArgument(v) => v[0].field.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn page_size_defaults_and_is_capped() {
        assert_eq!(parse(0, "", LIMITS, "q").unwrap().size, 50);
        assert_eq!(parse(500, "", LIMITS, "q").unwrap().size, 500);
        assert_eq!(
            field_of(parse(501, "", LIMITS, "q").unwrap_err()),
            "page_size"
        );
        assert_eq!(
            field_of(parse(-1, "", LIMITS, "q").unwrap_err()),
            "page_size"
        );
    }

    #[test]
    fn pages_walk_every_row_once() {
        let all: Vec<u32> = (1..=23).collect();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = parse(10, &token, LIMITS, "q").unwrap();
            let after: u32 = page.after.as_deref().map_or(0, |a| a.parse().unwrap());
            let rows: Vec<u32> = all
                .iter()
                .copied()
                .filter(|r| *r > after)
                .take(usize::try_from(page.fetch_limit()).unwrap())
                .collect();
            let (rows, next) = finish(rows, &page, "q", ToString::to_string);
            seen.extend(rows);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, all);
    }

    #[test]
    fn tokens_are_bound_to_their_query() {
        let page = parse(1, "", LIMITS, "tier=GOLD").unwrap();
        let (_, token) = finish(vec![1, 2], &page, "tier=GOLD", ToString::to_string);
        assert_eq!(
            parse(1, &token, LIMITS, "tier=GOLD")
                .unwrap()
                .after
                .unwrap(),
            "1"
        );
        assert_eq!(
            field_of(parse(1, &token, LIMITS, "tier=SILVER").unwrap_err()),
            "page_token"
        );
        let forged = format!(
            "{}{}",
            hex::encode("999"),
            &token[token.find('.').unwrap()..]
        );
        assert_eq!(
            field_of(parse(1, &forged, LIMITS, "tier=GOLD").unwrap_err()),
            "page_token"
        );
        assert_eq!(
            field_of(parse(1, "garbage", LIMITS, "tier=GOLD").unwrap_err()),
            "page_token"
        );
    }
}
