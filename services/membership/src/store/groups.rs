//! Member groups (clubs, communities) and who is in them.

use chrono::{DateTime, Utc};
use loyalty_common::ServiceError;
use loyalty_common::calendar::{from_micros, to_micros, to_timestamp};
use loyalty_common::db::Tx;
use loyalty_proto::loyalty::membership::v1 as pb;
use sqlx::AnyConnection;

type GroupRow = (String, String, String, String, i64);

fn group((program_id, group_id, name, description, at): GroupRow) -> pb::Group {
    pb::Group {
        program_id,
        group_id,
        name,
        description,
        created_at: Some(to_timestamp(from_micros(at))),
    }
}

pub async fn get(
    c: &mut AnyConnection,
    program_id: &str,
    group_id: &str,
) -> Result<Option<pb::Group>, ServiceError> {
    let row: Option<GroupRow> = sqlx::query_as(
        "SELECT program_id, group_id, name, description, created_at FROM member_groups WHERE program_id = $1 AND group_id = $2",
    )
    .bind(program_id)
    .bind(group_id)
    .fetch_optional(c)
    .await?;
    Ok(row.map(group))
}

pub async fn list(
    c: &mut AnyConnection,
    program_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<pb::Group>, ServiceError> {
    let rows: Vec<GroupRow> = sqlx::query_as(
        "SELECT program_id, group_id, name, description, created_at FROM member_groups WHERE program_id = $1 AND group_id > $2 \
         ORDER BY group_id LIMIT $3",
    )
    .bind(program_id)
    .bind(after)
    .bind(limit)
    .fetch_all(c)
    .await?;
    Ok(rows.into_iter().map(group).collect())
}

/// Inserts a group; false when the id is taken.
pub async fn insert(tx: &mut Tx, g: &pb::Group, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO member_groups (program_id, group_id, name, description, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&g.program_id)
    .bind(&g.group_id)
    .bind(&g.name)
    .bind(&g.description)
    .bind(to_micros(now))
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Adds a member; the existing membership when already in.
/// Adds the member to the group; true when it was not in it yet.
pub async fn join(
    tx: &mut Tx,
    program_id: &str,
    group_id: &str,
    member_id: &str,
    now: DateTime<Utc>,
) -> Result<(pb::GroupMembership, bool), ServiceError> {
    let inserted = sqlx::query(
        "INSERT INTO group_members (program_id, group_id, member_id, joined_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(program_id)
    .bind(group_id)
    .bind(member_id)
    .bind(to_micros(now))
    .execute(&mut **tx)
    .await?;
    let at: i64 = sqlx::query_scalar("SELECT joined_at FROM group_members WHERE program_id = $1 AND group_id = $2 AND member_id = $3")
        .bind(program_id)
        .bind(group_id)
        .bind(member_id)
        .fetch_one(&mut **tx)
        .await?;
    let membership = pb::GroupMembership {
        group_id: group_id.to_owned(),
        member_id: member_id.to_owned(),
        joined_at: Some(to_timestamp(from_micros(at))),
    };
    Ok((membership, inserted.rows_affected() == 1))
}

pub async fn leave(
    tx: &mut Tx,
    program_id: &str,
    group_id: &str,
    member_id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM group_members WHERE program_id = $1 AND group_id = $2 AND member_id = $3",
    )
    .bind(program_id)
    .bind(group_id)
    .bind(member_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Members of a group after `after` (member id order).
pub async fn members(
    c: &mut AnyConnection,
    program_id: &str,
    group_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<pb::GroupMembership>, ServiceError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT member_id, joined_at FROM group_members WHERE program_id = $1 AND group_id = $2 AND member_id > $3 \
         ORDER BY member_id LIMIT $4",
    )
    .bind(program_id)
    .bind(group_id)
    .bind(after)
    .bind(limit)
    .fetch_all(c)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(member_id, at)| pb::GroupMembership {
            group_id: group_id.to_owned(),
            member_id,
            joined_at: Some(to_timestamp(from_micros(at))),
        })
        .collect())
}

/// Groups a member is in (for the export).
pub async fn of_member(
    c: &mut AnyConnection,
    member_id: &str,
) -> Result<Vec<pb::GroupMembership>, ServiceError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT group_id, joined_at FROM group_members WHERE member_id = $1 ORDER BY group_id",
    )
    .bind(member_id)
    .fetch_all(c)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(group_id, at)| pb::GroupMembership {
            group_id,
            member_id: member_id.to_owned(),
            joined_at: Some(to_timestamp(from_micros(at))),
        })
        .collect())
}
