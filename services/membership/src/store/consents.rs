//! Consents: the current state per purpose and channel, and every change.

use loyalty_common::ServiceError;
use loyalty_common::calendar::{from_micros, to_timestamp};
use loyalty_common::db::Tx;
use loyalty_proto::loyalty::membership::v1 as pb;
use sqlx::AnyConnection;

type Row = (String, String, i64, String, String, i64);

fn to_proto((purpose, channel, granted, policy_version, source, at): Row) -> pb::Consent {
    pb::Consent {
        purpose,
        channel,
        granted: granted != 0,
        policy_version,
        changed_at: Some(to_timestamp(from_micros(at))),
        source,
    }
}

/// Current consents of a member, by purpose and channel.
pub async fn current(
    c: &mut AnyConnection,
    member_id: &str,
) -> Result<Vec<pb::Consent>, ServiceError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT purpose, channel, granted, policy_version, source, changed_at FROM consents \
         WHERE member_id = $1 ORDER BY purpose, channel",
    )
    .bind(member_id)
    .fetch_all(c)
    .await?;
    Ok(rows.into_iter().map(to_proto).collect())
}

/// Records a consent change (current state and history).
pub async fn set(
    tx: &mut Tx,
    member_id: &str,
    c: &pb::Consent,
    at_micros: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO consents (member_id, purpose, channel, granted, policy_version, source, changed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (member_id, purpose, channel) DO UPDATE SET \
         granted = excluded.granted, policy_version = excluded.policy_version, source = excluded.source, \
         changed_at = excluded.changed_at",
    )
    .bind(member_id)
    .bind(&c.purpose)
    .bind(&c.channel)
    .bind(i64::from(c.granted))
    .bind(&c.policy_version)
    .bind(&c.source)
    .bind(at_micros)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO consent_history (member_id, purpose, channel, granted, policy_version, source, changed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(member_id)
    .bind(&c.purpose)
    .bind(&c.channel)
    .bind(i64::from(c.granted))
    .bind(&c.policy_version)
    .bind(&c.source)
    .bind(at_micros)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// History after sequence `after`, oldest first.
pub async fn history(
    c: &mut AnyConnection,
    member_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, pb::Consent)>, ServiceError> {
    let rows: Vec<(i64, String, String, i64, String, String, i64)> = sqlx::query_as(
        "SELECT seq, purpose, channel, granted, policy_version, source, changed_at FROM consent_history \
         WHERE member_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(member_id)
    .bind(after)
    .bind(limit)
    .fetch_all(c)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, p, ch, g, v, s, at)| (seq, to_proto((p, ch, g, v, s, at))))
        .collect())
}
