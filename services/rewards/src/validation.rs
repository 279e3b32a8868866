//! Input rules shared by every rewards API, points core and engagement
//! alike, so that one id or one page size is accepted or refused the same
//! way whichever call carries it.

use loyalty_common::paging::PageLimits;
use loyalty_common::{ServiceError, Violations};

/// Longest id a caller may send (member, order, item, pool, rule ids, and
/// references), in bytes.
pub(crate) const MAX_ID_LEN: usize = 128;

/// Page sizes of every rewards list call: the default, and the cap above
/// which a page_size is refused.
pub(crate) const PAGE_LIMITS: PageLimits = PageLimits::new(50, 500);

/// Why `value` is not an acceptable id, if it is not.
pub(crate) fn id_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() || value.len() > MAX_ID_LEN {
        Some("must be 1 to 128 characters")
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}

/// Records a violation of `field` when `value` is not an acceptable id.
pub(crate) fn check_id(v: &mut Violations, field: &str, value: &str) {
    if let Some(problem) = id_problem(value) {
        v.add(field, problem);
    }
}

/// INVALID_ARGUMENT naming `field` when `value` is not an acceptable id.
pub(crate) fn require_id(field: &str, value: &str) -> Result<(), ServiceError> {
    id_problem(value).map_or(Ok(()), |problem| Err(ServiceError::invalid(field, problem)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_to_max_bytes_without_control_characters() {
        assert_eq!(id_problem("m-1"), None);
        assert_eq!(id_problem(&"a".repeat(MAX_ID_LEN)), None);
        assert!(id_problem("").is_some());
        assert!(id_problem(&"a".repeat(MAX_ID_LEN + 1)).is_some());
        assert!(id_problem("a\u{0}b").is_some());
        assert!(id_problem("line\nbreak").is_some());
    }
}
