//! A member's personal profile, validated field by field (every problem
//! reported at once), and partial updates by field mask.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use loyalty_common::Violations;
use loyalty_proto::loyalty::membership::v1 as pb;

use super::contact::{Email, Phone};

/// A validated profile; empty text means "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub given_name: String,
    pub family_name: String,
    pub phone: Option<Phone>,
    pub email: Option<Email>,
    pub birthday: Option<NaiveDate>,
    pub locale: String,
    pub card_number: String,
    pub preferences: BTreeMap<String, String>,
}

/// Profile fields an update mask may name.
pub const MASKABLE: [&str; 8] = [
    "given_name",
    "family_name",
    "phone",
    "email",
    "birthday",
    "locale",
    "card_number",
    "preferences",
];

const MAX_PREFERENCES: usize = 50;

fn name_ok(field: &str, s: &str, v: &mut Violations) {
    if s.chars().count() > 100 {
        v.add(field, "is longer than 100 characters");
    } else if s.chars().any(char::is_control) {
        v.add(field, "contains control characters");
    }
}

fn parse_locale(s: &str) -> Result<String, String> {
    let ok = s.len() <= 35
        && s.split('-').all(|part| {
            !part.is_empty() && part.len() <= 8 && part.bytes().all(|b| b.is_ascii_alphanumeric())
        })
        && s.split('-').next().is_some_and(|l| {
            (2..=3).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphabetic())
        });
    if ok {
        Ok(s.to_owned())
    } else {
        Err("must be a BCP 47 tag such as zh-CN".into())
    }
}

fn parse_card(s: &str) -> Result<String, String> {
    let card = s.trim().to_uppercase();
    if (4..=32).contains(&card.len()) && card.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(card)
    } else {
        Err("must be 4 to 32 letters or digits".into())
    }
}

/// Parses a birthday (YYYY-MM-DD) that is not after `today` and not before 1900.
pub fn parse_birthday(s: &str, today: NaiveDate) -> Result<NaiveDate, String> {
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| "must be a date YYYY-MM-DD".to_owned())?;
    if d > today {
        return Err("is in the future".into());
    }
    if d < NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or(NaiveDate::MIN) {
        return Err("is before 1900".into());
    }
    Ok(d)
}

/// Validates one field of `p` (by mask name) into `out`; `prefix` is the
/// request path of the profile (`profile`).
fn apply_field(
    name: &str,
    p: &pb::MemberProfile,
    out: &mut Profile,
    prefix: &str,
    today: NaiveDate,
    v: &mut Violations,
) {
    let field = format!("{prefix}.{name}");
    match name {
        "given_name" => {
            name_ok(&field, &p.given_name, v);
            p.given_name.trim().clone_into(&mut out.given_name);
        }
        "family_name" => {
            name_ok(&field, &p.family_name, v);
            p.family_name.trim().clone_into(&mut out.family_name);
        }
        "phone" => {
            out.phone = if p.phone.trim().is_empty() {
                None
            } else {
                v.check(&field, Phone::parse(&p.phone))
            };
        }
        "email" => {
            out.email = if p.email.trim().is_empty() {
                None
            } else {
                v.check(&field, Email::parse(&p.email))
            };
        }
        "birthday" => {
            out.birthday = if p.birthday.is_empty() {
                None
            } else {
                v.check(&field, parse_birthday(&p.birthday, today))
            };
        }
        "locale" => {
            out.locale = if p.locale.is_empty() {
                String::new()
            } else {
                v.check(&field, parse_locale(&p.locale)).unwrap_or_default()
            };
        }
        "card_number" => {
            out.card_number = if p.card_number.is_empty() {
                String::new()
            } else {
                v.check(&field, parse_card(&p.card_number))
                    .unwrap_or_default()
            };
        }
        "preferences" => {
            check_preferences(&field, p.preferences.iter(), v);
            out.preferences = p.preferences.clone().into_iter().collect();
        }
        _ => {}
    }
}

fn check_preferences<'a>(
    field: &str,
    prefs: impl Iterator<Item = (&'a String, &'a String)>,
    v: &mut Violations,
) {
    let mut n = 0;
    for (k, val) in prefs {
        n += 1;
        if k.is_empty()
            || k.len() > 64
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            v.add(
                format!("{field}.{k}"),
                "keys are 1 to 64 letters, digits, '_' or '-'",
            );
        }
        if val.chars().count() > 256 {
            v.add(format!("{field}.{k}"), "values are at most 256 characters");
        }
    }
    if n > MAX_PREFERENCES {
        v.add(field, format!("at most {MAX_PREFERENCES} preferences"));
    }
}

/// A whole profile given at enrolment.
pub fn parse_profile(
    p: &pb::MemberProfile,
    prefix: &str,
    today: NaiveDate,
    v: &mut Violations,
) -> Profile {
    let mut out = Profile::default();
    for name in MASKABLE {
        apply_field(name, p, &mut out, prefix, today, v);
    }
    out
}

/// Applies the fields named by `mask` from `p` onto `current`. Paths are
/// profile field names, or `preferences.<key>` for one preference (an empty
/// value removes it). Returns the new profile and the changed field names.
pub fn apply_mask(
    current: &Profile,
    p: &pb::MemberProfile,
    mask: &[String],
    today: NaiveDate,
    v: &mut Violations,
) -> (Profile, Vec<String>) {
    let mut out = current.clone();
    if mask.is_empty() {
        v.add("update_mask", "name at least one field to change");
    }
    for path in mask {
        if let Some(key) = path.strip_prefix("preferences.") {
            let val = p.preferences.get(key).cloned().unwrap_or_default();
            check_preferences(
                "profile.preferences",
                std::iter::once((&key.to_owned(), &val)),
                v,
            );
            if val.is_empty() {
                out.preferences.remove(key);
            } else {
                out.preferences.insert(key.to_owned(), val);
            }
        } else if MASKABLE.contains(&path.as_str()) {
            apply_field(path, p, &mut out, "profile", today, v);
        } else {
            v.add(
                "update_mask",
                format!("unknown field {path:?} (one of {})", MASKABLE.join(", ")),
            );
        }
    }
    if out.preferences.len() > MAX_PREFERENCES {
        v.add(
            "profile.preferences",
            format!("at most {MAX_PREFERENCES} preferences"),
        );
    }
    let changed = changed_fields(current, &out);
    (out, changed)
}

/// Names of the fields that differ (what MemberUpdated reports).
pub fn changed_fields(a: &Profile, b: &Profile) -> Vec<String> {
    let mut c = Vec::new();
    let mut diff = |name: &str, same: bool| {
        if !same {
            c.push(name.to_owned());
        }
    };
    diff("given_name", a.given_name == b.given_name);
    diff("family_name", a.family_name == b.family_name);
    diff("phone", a.phone == b.phone);
    diff("email", a.email == b.email);
    diff("birthday", a.birthday == b.birthday);
    diff("locale", a.locale == b.locale);
    diff("card_number", a.card_number == b.card_number);
    diff("preferences", a.preferences == b.preferences);
    c
}

impl Profile {
    pub fn to_proto(&self) -> pb::MemberProfile {
        pb::MemberProfile {
            given_name: self.given_name.clone(),
            family_name: self.family_name.clone(),
            phone: self
                .phone
                .as_ref()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            email: self
                .email
                .as_ref()
                .map(|e| e.as_str().to_owned())
                .unwrap_or_default(),
            birthday: self
                .birthday
                .map(|d| d.format("%Y-%m-%d").to_string())
                .unwrap_or_default(),
            locale: self.locale.clone(),
            card_number: self.card_number.clone(),
            preferences: self.preferences.clone().into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 25).unwrap()
    }

    #[test]
    fn every_bad_field_is_reported() {
        let p = pb::MemberProfile {
            phone: "12345".into(),
            email: "nope".into(),
            birthday: "2026-11-26".into(),
            locale: "x".into(),
            card_number: "!!".into(),
            ..Default::default()
        };
        let mut v = Violations::new();
        parse_profile(&p, "profile", today(), &mut v);
        let msg = v.finish().unwrap_err().to_string();
        for f in [
            "profile.phone",
            "profile.email",
            "profile.birthday: is in the future",
            "profile.locale",
            "profile.card_number",
        ] {
            assert!(msg.contains(f), "{f}: {msg}");
        }
    }

    #[test]
    fn a_valid_profile_is_normalised() {
        let p = pb::MemberProfile {
            given_name: " Na ".into(),
            phone: "+86 138 0013 8000".into(),
            email: "Li.Na@Example.com".into(),
            birthday: "1990-02-28".into(),
            locale: "zh-CN".into(),
            card_number: "ab1234".into(),
            ..Default::default()
        };
        let mut v = Violations::new();
        let out = parse_profile(&p, "profile", today(), &mut v);
        assert!(v.is_empty());
        assert_eq!(out.given_name, "Na");
        assert_eq!(out.phone.unwrap().as_str(), "+8613800138000");
        assert_eq!(out.email.unwrap().as_str(), "li.na@example.com");
        assert_eq!(out.card_number, "AB1234");
    }

    #[test]
    fn masks_change_only_named_fields_and_single_preferences() {
        let mut current = Profile {
            given_name: "A".into(),
            ..Default::default()
        };
        current.preferences.insert("store".into(), "S1".into());
        let mut p = pb::MemberProfile {
            given_name: "B".into(),
            family_name: "ignored".into(),
            ..Default::default()
        };
        p.preferences.insert("lang".into(), "zh".into());
        let mut v = Violations::new();
        let (out, changed) = apply_mask(
            &current,
            &p,
            &["given_name".into(), "preferences.lang".into()],
            today(),
            &mut v,
        );
        assert!(v.is_empty());
        assert_eq!(out.given_name, "B");
        assert_eq!(out.family_name, "");
        assert_eq!(out.preferences.len(), 2);
        assert_eq!(changed, ["given_name", "preferences"]);
        let (_, _) = apply_mask(&current, &p, &["nickname".into()], today(), &mut v);
        assert!(v.finish().unwrap_err().to_string().contains("update_mask"));
    }
}
