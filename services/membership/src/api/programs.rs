//! CreateProgram, GetProgram, UpdateProgram.

use loyalty_common::ServiceError;
use loyalty_common::auth::Principal;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_proto::loyalty::membership::v1 as pb;

use super::{ADMIN, now, required, write_once};
use crate::store::programs;

#[tracing::instrument(skip_all, fields(program_id = %req.program.as_ref().map_or("", |p| p.program_id.as_str())))]
pub async fn create(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::CreateProgramRequest,
) -> Result<pb::CreateProgramResponse, ServiceError> {
    let program = req
        .program
        .ok_or_else(|| ServiceError::invalid("program", "is required"))?;
    p.require_role(&program.program_id, ADMIN)?;
    programs::validate(&program)?;
    let at = now(rt);
    let key = req.idempotency_key.clone();
    let request = pb::CreateProgramRequest {
        program: Some(program.clone()),
        idempotency_key: key.clone(),
    };
    let program_id = program.program_id.clone();
    write_once(
        rt,
        "CreateProgram",
        &program_id,
        &key,
        &request,
        move |tx| {
            Box::pin(async move {
                if !programs::insert(tx, &program, at).await? {
                    let existing = programs::require(tx, &program.program_id).await?;
                    // the same definition again is a replay; another one is a conflict
                    if programs::definition(&existing.proto) == programs::definition(&program) {
                        return Ok(pb::CreateProgramResponse {
                            program: Some(existing.proto),
                            created: false,
                        });
                    }
                    return Err(ServiceError::AlreadyExists {
                        resource: "program",
                        field: "program_id".into(),
                    });
                }
                let stored = programs::require(tx, &program.program_id).await?;
                Ok(pb::CreateProgramResponse {
                    program: Some(stored.proto),
                    created: true,
                })
            })
        },
    )
    .await
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id))]
pub async fn get(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::GetProgramRequest,
) -> Result<pb::GetProgramResponse, ServiceError> {
    required("program_id", &req.program_id)?;
    p.authorize_program(&req.program_id)?;
    let mut c = rt.db.pool().acquire().await?;
    Ok(pb::GetProgramResponse {
        program: Some(programs::require(&mut c, &req.program_id).await?.proto),
    })
}

const PROGRAM_FIELDS: [&str; 7] = [
    "name",
    "currency",
    "time_zone",
    "tiers",
    "qualifying_metric",
    "qualifying_window",
    "evaluation_policy",
];

#[tracing::instrument(skip_all, fields(program_id = %req.program.as_ref().map_or("", |p| p.program_id.as_str())))]
pub async fn update(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::UpdateProgramRequest,
) -> Result<pb::UpdateProgramResponse, ServiceError> {
    let patch = req
        .program
        .ok_or_else(|| ServiceError::invalid("program", "is required"))?;
    required("program.program_id", &patch.program_id)?;
    p.require_role(&patch.program_id, ADMIN)?;
    let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(ServiceError::invalid(
            "update_mask",
            "name at least one field to change",
        ));
    }
    if let Some(bad) = paths.iter().find(|f| !PROGRAM_FIELDS.contains(&f.as_str())) {
        return Err(ServiceError::invalid(
            "update_mask",
            format!(
                "unknown field {bad:?} (one of {})",
                PROGRAM_FIELDS.join(", ")
            ),
        ));
    }
    let at = now(rt);
    let key = req.idempotency_key.clone();
    let request = pb::UpdateProgramRequest {
        program: Some(patch.clone()),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.clone(),
        }),
        expected_version: req.expected_version,
        idempotency_key: key.clone(),
    };
    let program_id = patch.program_id.clone();
    let expected_version = req.expected_version;
    write_once(
        rt,
        "UpdateProgram",
        &program_id,
        &key,
        &request,
        move |tx| {
            Box::pin(async move {
                let current = programs::require(tx, &patch.program_id).await?;
                if expected_version != 0 && expected_version != current.proto.version {
                    return Err(ServiceError::Conflict(format!(
                        "program has version {}, not {expected_version}",
                        current.proto.version
                    )));
                }
                let mut next = programs::definition(&current.proto);
                for f in &paths {
                    match f.as_str() {
                        "name" => next.name.clone_from(&patch.name),
                        "currency" => next.currency.clone_from(&patch.currency),
                        "time_zone" => next.time_zone.clone_from(&patch.time_zone),
                        "tiers" => next.tiers.clone_from(&patch.tiers),
                        "qualifying_metric" => next.qualifying_metric = patch.qualifying_metric,
                        "qualifying_window" => next.qualifying_window = patch.qualifying_window,
                        "evaluation_policy" => next.evaluation_policy = patch.evaluation_policy,
                        _ => {}
                    }
                }
                programs::validate(&next)?;
                // version checked under the transaction's write lock
                if !programs::update(tx, &next, current.proto.version, at).await? {
                    return Err(ServiceError::Conflict(
                        "the program changed meanwhile; read it again".into(),
                    ));
                }
                let stored = programs::require(tx, &next.program_id).await?;
                Ok(pb::UpdateProgramResponse {
                    program: Some(stored.proto),
                })
            })
        },
    )
    .await
}
