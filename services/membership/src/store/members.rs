//! Members: the record, lookups by every unique key, optimistic updates
//! (`WHERE version = $n`), tags, listing and erasure.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use loyalty_common::ServiceError;
use loyalty_common::calendar::{ProgramTz, from_micros, to_micros, to_timestamp};
use loyalty_common::db::{Engine, Tx};
use loyalty_proto::loyalty::membership::v1 as pb;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::domain::contact::{Email, Phone};
use crate::domain::profile::Profile;
use crate::domain::segment::MemberFacts;
use crate::store::programs::{self, ProgramRecord};

/// A member as stored.
#[derive(Debug, Clone)]
pub struct MemberRecord {
    pub member_id: String,
    pub program_id: String,
    pub external_id: Option<String>,
    pub profile: Profile,
    pub status: String,
    pub enrolment_channel: String,
    pub tier_code: String,
    pub tier_since: i64,
    pub next_evaluation_at: i64,
    pub last_purchase_at: Option<i64>,
    pub enrol_fingerprint: String,
    pub version: i64,
    pub enrolled_at: i64,
    pub updated_at: i64,
}

pub(crate) const COLUMNS: &str = "member_id, program_id, external_id, given_name, family_name, phone, email, \
     birthday, locale, card_number, preferences, status, enrolment_channel, tier_code, tier_since, \
     next_evaluation_at, last_purchase_at, enrol_fingerprint, version, enrolled_at, updated_at";

/// [`COLUMNS`] of the members table named `m` (for joins).
fn m_columns() -> String {
    COLUMNS
        .split(", ")
        .map(|col| format!("m.{col}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn from_row(r: &AnyRow) -> Result<MemberRecord, ServiceError> {
    let err = |e: sqlx::Error| super::decode_err("member", e);
    let phone: Option<String> = r.try_get(5).map_err(err)?;
    let email: Option<String> = r.try_get(6).map_err(err)?;
    let birthday: Option<String> = r.try_get(7).map_err(err)?;
    let card: Option<String> = r.try_get(9).map_err(err)?;
    let prefs: String = r.try_get(10).map_err(err)?;
    let preferences: BTreeMap<String, String> =
        serde_json::from_str(&prefs).map_err(|e| super::decode_err("member preferences", e))?;
    Ok(MemberRecord {
        member_id: r.try_get(0).map_err(err)?,
        program_id: r.try_get(1).map_err(err)?,
        external_id: r.try_get(2).map_err(err)?,
        profile: Profile {
            given_name: r.try_get(3).map_err(err)?,
            family_name: r.try_get(4).map_err(err)?,
            phone: phone
                .as_deref()
                .map(Phone::parse)
                .transpose()
                .map_err(|e| super::decode_err("phone", e))?,
            email: email
                .as_deref()
                .map(Email::parse)
                .transpose()
                .map_err(|e| super::decode_err("email", e))?,
            birthday: birthday
                .as_deref()
                .map(|b| NaiveDate::parse_from_str(b, "%Y-%m-%d"))
                .transpose()
                .map_err(|e| super::decode_err("birthday", e))?,
            locale: r.try_get(8).map_err(err)?,
            card_number: card.unwrap_or_default(),
            preferences,
        },
        status: r.try_get(11).map_err(err)?,
        enrolment_channel: r.try_get(12).map_err(err)?,
        tier_code: r.try_get(13).map_err(err)?,
        tier_since: r.try_get(14).map_err(err)?,
        next_evaluation_at: r.try_get(15).map_err(err)?,
        last_purchase_at: r.try_get(16).map_err(err)?,
        enrol_fingerprint: r.try_get(17).map_err(err)?,
        version: r.try_get(18).map_err(err)?,
        enrolled_at: r.try_get(19).map_err(err)?,
        updated_at: r.try_get(20).map_err(err)?,
    })
}

impl MemberRecord {
    pub fn to_proto(&self, tags: Vec<String>) -> pb::Member {
        pb::Member {
            program_id: self.program_id.clone(),
            member_id: self.member_id.clone(),
            external_id: self.external_id.clone().unwrap_or_default(),
            profile: Some(self.profile.to_proto()),
            status: status_to_proto(&self.status) as i32,
            enrolment_channel: self.enrolment_channel.clone(),
            tier_code: self.tier_code.clone(),
            tags,
            version: self.version,
            enrolled_at: Some(to_timestamp(from_micros(self.enrolled_at))),
            updated_at: Some(to_timestamp(from_micros(self.updated_at))),
            last_purchase_at: self.last_purchase_at.map(|t| to_timestamp(from_micros(t))),
        }
    }

    /// The member's facts for segment rules, dated in the program's zone.
    pub fn facts(&self, tags: &[String], tz: &ProgramTz) -> MemberFacts {
        MemberFacts {
            tier: self.tier_code.clone(),
            status: self.status.clone(),
            tags: tags.iter().cloned().collect(),
            enrolled_on: tz.local_date(from_micros(self.enrolled_at)),
            last_purchase_on: self.last_purchase_at.map(|t| tz.local_date(from_micros(t))),
            enrolment_channel: self.enrolment_channel.clone(),
            locale: self.profile.locale.clone(),
            birth_month: self.profile.birthday.map(|b| i64::from(b.month())),
        }
    }
}

pub fn status_to_proto(s: &str) -> pb::MemberStatus {
    match s {
        "active" => pb::MemberStatus::Active,
        "suspended" => pb::MemberStatus::Suspended,
        "closed" => pb::MemberStatus::Closed,
        "erased" => pb::MemberStatus::Erased,
        _ => pb::MemberStatus::Unspecified,
    }
}

pub async fn get(
    c: &mut AnyConnection,
    program_id: &str,
    member_id: &str,
) -> Result<Option<MemberRecord>, ServiceError> {
    let sql = format!("SELECT {COLUMNS} FROM members WHERE member_id = $1 AND program_id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(member_id)
        .bind(program_id)
        .fetch_optional(c)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The member, or NOT_FOUND.
pub async fn require(
    c: &mut AnyConnection,
    program_id: &str,
    member_id: &str,
) -> Result<MemberRecord, ServiceError> {
    get(c, program_id, member_id)
        .await?
        .ok_or_else(|| ServiceError::not_found("member", member_id))
}

/// The tags of member `m`, in order and comma-separated (NULL without
/// tags): a member and its tags in one statement. Tags never hold a comma.
const TAGS_OF_M: &str = "(SELECT string_agg(t.tag, ',' ORDER BY t.tag) FROM member_tags t \
     WHERE t.member_id = m.member_id)";

/// A member with its tags, from a row of [`COLUMNS`] followed by
/// [`TAGS_OF_M`] (the last column).
fn tagged_from_row(r: &AnyRow) -> Result<(MemberRecord, Vec<String>), ServiceError> {
    let joined: Option<String> = r
        .try_get(r.len() - 1)
        .map_err(|e| super::decode_err("member tags", e))?;
    let tags = joined
        .map(|j| j.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    Ok((from_row(r)?, tags))
}

/// The member with its tags (one round trip).
pub async fn get_tagged(
    c: &mut AnyConnection,
    program_id: &str,
    member_id: &str,
) -> Result<Option<(MemberRecord, Vec<String>)>, ServiceError> {
    let sql = format!(
        "SELECT {COLUMNS}, {TAGS_OF_M} FROM members m WHERE member_id = $1 AND program_id = $2"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(member_id)
        .bind(program_id)
        .fetch_optional(c)
        .await?;
    row.as_ref().map(tagged_from_row).transpose()
}

/// The member with its tags, or NOT_FOUND.
pub async fn require_tagged(
    c: &mut AnyConnection,
    program_id: &str,
    member_id: &str,
) -> Result<(MemberRecord, Vec<String>), ServiceError> {
    get_tagged(c, program_id, member_id)
        .await?
        .ok_or_else(|| ServiceError::not_found("member", member_id))
}

/// The program and one of its members, in one round trip: NOT_FOUND for
/// the program first, then for the member.
pub async fn require_with_program(
    c: &mut AnyConnection,
    program_id: &str,
    member_id: &str,
) -> Result<(ProgramRecord, MemberRecord), ServiceError> {
    let cols = m_columns();
    let sql = format!(
        "SELECT {cols}, p.definition, p.version, p.created_at, p.updated_at FROM programs p \
         LEFT JOIN members m ON m.program_id = p.program_id AND m.member_id = $2 WHERE p.program_id = $1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(program_id)
        .bind(member_id)
        .fetch_optional(c)
        .await?
        .ok_or_else(|| ServiceError::not_found("program", program_id))?;
    let err = |e: sqlx::Error| super::decode_err("program", e);
    let program = programs::record(
        &row.try_get::<Vec<u8>, _>(21).map_err(err)?,
        row.try_get(22).map_err(err)?,
        row.try_get(23).map_err(err)?,
        row.try_get(24).map_err(err)?,
    )?;
    let found: Option<String> = row.try_get(0).map_err(|e| super::decode_err("member", e))?;
    if found.is_none() {
        return Err(ServiceError::not_found("member", member_id));
    }
    Ok((program, from_row(&row)?))
}

/// Takes the member's row lock for the rest of the transaction (a no-op
/// update: PostgreSQL locks the row, SQLite's writer is already exclusive),
/// so that read-then-write operations on one member run one after the
/// other. Reads after it see what the previous holder committed.
pub async fn lock(tx: &mut Tx, member_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE members SET version = version WHERE member_id = $1")
        .bind(member_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A unique key of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Phone,
    Email,
    ExternalId,
    CardNumber,
}

impl Key {
    pub fn field(self) -> &'static str {
        match self {
            Self::Phone => "phone",
            Self::Email => "email",
            Self::ExternalId => "external_id",
            Self::CardNumber => "card_number",
        }
    }
}

/// Finds a member by a normalised unique key.
pub async fn find_by(
    c: &mut AnyConnection,
    program_id: &str,
    key: Key,
    value: &str,
) -> Result<Option<MemberRecord>, ServiceError> {
    let col = key.field(); // fixed column names, never caller text
    let sql = format!("SELECT {COLUMNS} FROM members WHERE program_id = $1 AND {col} = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(program_id)
        .bind(value)
        .fetch_optional(c)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Finds a member with its tags by a normalised unique key (one round
/// trip).
pub async fn find_tagged(
    c: &mut AnyConnection,
    program_id: &str,
    key: Key,
    value: &str,
) -> Result<Option<(MemberRecord, Vec<String>)>, ServiceError> {
    let col = key.field(); // fixed column names, never caller text
    let sql = format!(
        "SELECT {COLUMNS}, {TAGS_OF_M} FROM members m WHERE program_id = $1 AND {col} = $2"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(program_id)
        .bind(value)
        .fetch_optional(c)
        .await?;
    row.as_ref().map(tagged_from_row).transpose()
}

fn opt(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Which unique keys of `profile` (and `external_id`) another member of
/// the program holds already.
pub async fn taken_key(
    c: &mut AnyConnection,
    program_id: &str,
    member_id: &str,
    external_id: Option<&str>,
    profile: &Profile,
) -> Result<Option<Key>, ServiceError> {
    let checks = [
        (Key::ExternalId, external_id),
        (Key::Phone, profile.phone.as_ref().map(Phone::as_str)),
        (Key::Email, profile.email.as_ref().map(Email::as_str)),
        (Key::CardNumber, opt(&profile.card_number)),
    ];
    for (key, value) in checks {
        if let Some(v) = value
            && let Some(other) = find_by(c, program_id, key, v).await?
            && other.member_id != member_id
        {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

/// Inserts a new member (unique keys checked by the caller, and by the
/// database's constraints).
pub async fn insert(tx: &mut Tx, m: &MemberRecord) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO members ({COLUMNS}, birth_month, name_search) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"
    );
    let p = &m.profile;
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&m.member_id)
        .bind(&m.program_id)
        .bind(m.external_id.as_deref())
        .bind(&p.given_name)
        .bind(&p.family_name)
        .bind(p.phone.as_ref().map(Phone::as_str))
        .bind(p.email.as_ref().map(Email::as_str))
        .bind(p.birthday.map(|b| b.format("%Y-%m-%d").to_string()))
        .bind(&p.locale)
        .bind(opt(&p.card_number))
        .bind(serde_json::to_string(&p.preferences).unwrap_or_else(|_| "{}".into()))
        .bind(&m.status)
        .bind(&m.enrolment_channel)
        .bind(&m.tier_code)
        .bind(m.tier_since)
        .bind(m.next_evaluation_at)
        .bind(m.last_purchase_at)
        .bind(&m.enrol_fingerprint)
        .bind(m.version)
        .bind(m.enrolled_at)
        .bind(m.updated_at)
        .bind(p.birthday.map(|b| i64::from(b.month())))
        .bind(name_search(p))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The searchable form of a member's name: "given family", lower-cased
/// (Unicode-aware, so "Ö" finds "ö").
pub fn name_search(p: &Profile) -> String {
    format!("{} {}", p.given_name, p.family_name).to_lowercase()
}

/// A LIKE pattern finding `text` anywhere (lower-cased; the wildcards
/// `%` and `_` and the escape `\` match themselves).
pub fn contains_pattern(text: &str) -> String {
    let mut out = String::from("%");
    for ch in text.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

/// Writes a new profile if the member still has `version`; false when it
/// changed meanwhile.
pub async fn update_profile(
    tx: &mut Tx,
    m: &MemberRecord,
    p: &Profile,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE members SET given_name = $1, family_name = $2, phone = $3, email = $4, birthday = $5, \
         birth_month = $6, locale = $7, card_number = $8, preferences = $9, version = version + 1, updated_at = $10, \
         name_search = $13 WHERE member_id = $11 AND version = $12",
    )
    .bind(&p.given_name)
    .bind(&p.family_name)
    .bind(p.phone.as_ref().map(Phone::as_str))
    .bind(p.email.as_ref().map(Email::as_str))
    .bind(p.birthday.map(|b| b.format("%Y-%m-%d").to_string()))
    .bind(p.birthday.map(|b| i64::from(b.month())))
    .bind(&p.locale)
    .bind(opt(&p.card_number))
    .bind(serde_json::to_string(&p.preferences).unwrap_or_else(|_| "{}".into()))
    .bind(to_micros(now))
    .bind(&m.member_id)
    .bind(m.version)
    .bind(name_search(p))
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Sets the status if the member still has `version`.
pub async fn set_status(
    tx: &mut Tx,
    member_id: &str,
    version: i64,
    status: &str,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE members SET status = $1, version = version + 1, updated_at = $2 WHERE member_id = $3 AND version = $4",
    )
    .bind(status)
    .bind(to_micros(now))
    .bind(member_id)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves a member to `tier` (tier changes are serialised per member by the
/// version check too).
pub async fn set_tier(
    tx: &mut Tx,
    member_id: &str,
    version: i64,
    tier: &str,
    tier_since: i64,
    next_evaluation_at: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE members SET tier_code = $1, tier_since = $2, next_evaluation_at = $3, version = version + 1 \
         WHERE member_id = $4 AND version = $5",
    )
    .bind(tier)
    .bind(tier_since)
    .bind(next_evaluation_at)
    .bind(member_id)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves the next evaluation date of many members in one statement (a
/// chunk of reviews that kept their tiers).
pub async fn set_next_evaluations(tx: &mut Tx, rows: &[(String, i64)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // only placeholders are generated; every value is bound
    let mut cases = String::new();
    let mut ids = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let _ = write!(cases, " WHEN ${} THEN ${}", 2 * i + 1, 2 * i + 2);
        ids.push(format!("${}", 2 * i + 1));
    }
    let sql = format!(
        "UPDATE members SET next_evaluation_at = CASE member_id{cases} ELSE next_evaluation_at END WHERE member_id IN ({})",
        ids.join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (id, next) in rows {
        q = q.bind(id).bind(*next);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Records a purchase time if later than the last one seen.
pub async fn touch_last_purchase(tx: &mut Tx, member_id: &str, at: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE members SET last_purchase_at = $1 WHERE member_id = $2 AND (last_purchase_at IS NULL OR last_purchase_at < $1)",
    )
    .bind(at)
    .bind(member_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Anonymises every personal field and marks the member erased.
pub async fn erase(tx: &mut Tx, member_id: &str, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE members SET external_id = NULL, given_name = '', family_name = '', phone = NULL, email = NULL, \
         birthday = NULL, birth_month = NULL, locale = '', card_number = NULL, preferences = '{}', name_search = '', \
         enrol_fingerprint = '', status = 'erased', version = version + 1, updated_at = $1 WHERE member_id = $2",
    )
    .bind(to_micros(now))
    .bind(member_id)
    .execute(&mut **tx)
    .await?;
    for sql in [
        "DELETE FROM member_tags WHERE member_id = $1",
        "DELETE FROM group_members WHERE member_id = $1",
    ] {
        sqlx::query(sql).bind(member_id).execute(&mut **tx).await?;
    }
    Ok(())
}

pub async fn tags(c: &mut AnyConnection, member_id: &str) -> Result<Vec<String>, ServiceError> {
    Ok(
        sqlx::query_scalar("SELECT tag FROM member_tags WHERE member_id = $1 ORDER BY tag")
            .bind(member_id)
            .fetch_all(c)
            .await?,
    )
}

/// Adds a tag; false when the member had it already.
pub async fn add_tag(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    tag: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("INSERT INTO member_tags (program_id, member_id, tag) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(program_id)
        .bind(member_id)
        .bind(tag)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes a tag; false when the member did not have it.
pub async fn remove_tag(tx: &mut Tx, member_id: &str, tag: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM member_tags WHERE member_id = $1 AND tag = $2")
        .bind(member_id)
        .bind(tag)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Filters of ListMembers.
#[derive(Debug, Default)]
pub struct ListFilter {
    pub status: Option<&'static str>,
    pub tier_code: Option<String>,
    pub tag: Option<String>,
    pub name_prefix: Option<String>,
    /// Text the lower-cased "given family" name contains.
    pub name_contains: Option<String>,
}

/// The FTS5 query finding members whose name_search holds `text`
/// (lower-cased like name_search), when the trigram index can answer it:
/// text of 3 or more characters. One quoted phrase, so that the index's
/// query syntax never applies to the text.
fn name_index_query(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    (lower.chars().count() >= 3).then(|| format!("\"{}\"", lower.replace('"', "\"\"")))
}

/// Up to this many members holding the text (in any program), a name
/// search starts from the trigram index; beyond, the text is common enough
/// that walking the program's members in id order fills a page sooner.
const NAME_INDEX_MAX_HITS: i64 = 2000;

/// The FTS5 query to start a name search from, on SQLite, when the index
/// holds few enough members with the text.
async fn name_index_start(
    c: &mut AnyConnection,
    engine: Engine,
    f: &ListFilter,
) -> Result<Option<String>, ServiceError> {
    let Some(query) = (match engine {
        Engine::Sqlite => f.name_contains.as_deref().and_then(name_index_query),
        Engine::Postgres => None, // pg_trgm serves the LIKE itself
    }) else {
        return Ok(None);
    };
    let hits: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM (SELECT 1 FROM member_names_fts \
         WHERE member_names_fts MATCH $1 LIMIT $2) AS h",
    )
    .bind(&query)
    .bind(NAME_INDEX_MAX_HITS + 1)
    .fetch_one(&mut *c)
    .await?;
    Ok((hits <= NAME_INDEX_MAX_HITS).then_some(query))
}

/// A page of members after `after` (member id order), with their tags.
///
/// On SQLite a name search of 3 or more characters that few members match
/// starts from the trigram index (`member_names_fts`, see migration 0003)
/// and looks those members up; the LIKE stays the exact test either way,
/// so both ways answer the same.
pub async fn list(
    c: &mut AnyConnection,
    engine: Engine,
    program_id: &str,
    f: &ListFilter,
    after: &str,
    limit: i64,
) -> Result<Vec<(MemberRecord, Vec<String>)>, ServiceError> {
    let indexed = name_index_start(c, engine, f).await?;
    // CROSS JOIN: SQLite keeps this join order (index first)
    let (from, by_index) = if indexed.is_some() {
        (
            "member_names_fts x CROSS JOIN member_names n ON n.doc = x.rowid \
             CROSS JOIN members m ON m.member_id = n.member_id",
            "AND member_names_fts MATCH $9 ",
        )
    } else {
        ("members m", "")
    };
    let cols = m_columns();
    // Every optional filter is bound; a NULL parameter switches it off.
    let sql = format!(
        "SELECT {cols}, {TAGS_OF_M} FROM {from} WHERE m.program_id = $1 AND m.member_id > $2 \
         AND ($3 IS NULL OR m.status = $3) AND ($4 IS NULL OR m.tier_code = $4) \
         AND ($5 IS NULL OR EXISTS (SELECT 1 FROM member_tags t WHERE t.member_id = m.member_id AND t.tag = $5)) \
         AND ($6 IS NULL OR substr(m.given_name, 1, length($6)) = $6 OR substr(m.family_name, 1, length($6)) = $6) \
         AND ($8 IS NULL OR m.name_search LIKE $8 ESCAPE '\\') {by_index}\
         ORDER BY m.member_id LIMIT $7"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(program_id)
        .bind(after)
        .bind(f.status)
        .bind(f.tier_code.as_deref())
        .bind(f.tag.as_deref())
        .bind(f.name_prefix.as_deref())
        .bind(limit)
        .bind(f.name_contains.as_deref().map(contains_pattern));
    if let Some(text) = indexed {
        q = q.bind(text);
    }
    let rows = q.fetch_all(c).await?;
    rows.iter().map(tagged_from_row).collect()
}
