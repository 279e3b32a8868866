//! gRPC adapter of badges: decode, check the caller, delegate, encode.

use std::sync::Arc;

use loyalty_common::auth::{self, Role};
use loyalty_common::paging;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::{ServiceError, Violations};
use loyalty_proto::loyalty::rewards::v1::badge_service_server::BadgeService;
use loyalty_proto::loyalty::rewards::v1::{
    Badge, BadgeCondition, BadgeCounter, CreateBadgeRequest, CreateBadgeResponse,
    ListBadgesRequest, ListBadgesResponse, ListMemberBadgesRequest, ListMemberBadgesResponse,
    MemberBadge,
};
use tonic::{Request, Response, Status};

use super::rules::{self, Condition, Counter};
use super::store::{self, BadgeRow};
use crate::engagement::support::{check_id, check_text, now_micros, page, page_response, ts};

pub(crate) struct BadgeApi {
    pub rt: Arc<ServiceRuntime>,
}

fn counter_from(c: BadgeCounter) -> Option<Counter> {
    match c {
        BadgeCounter::Purchases => Some(Counter::Purchases),
        BadgeCounter::Reviews => Some(Counter::Reviews),
        BadgeCounter::CheckIns => Some(Counter::CheckIns),
        BadgeCounter::CheckInStreak => Some(Counter::CheckInStreak),
        BadgeCounter::Unspecified => None,
    }
}

fn counter_proto(c: Counter) -> BadgeCounter {
    match c {
        Counter::Purchases => BadgeCounter::Purchases,
        Counter::Reviews => BadgeCounter::Reviews,
        Counter::CheckIns => BadgeCounter::CheckIns,
        Counter::CheckInStreak => BadgeCounter::CheckInStreak,
    }
}

fn badge_proto(b: &BadgeRow) -> Badge {
    Badge {
        code: b.code.clone(),
        program_id: b.program_id.clone(),
        name: b.name.clone(),
        description: b.description.clone(),
        conditions: b
            .conditions
            .iter()
            .map(|c| BadgeCondition {
                counter: counter_proto(c.counter).into(),
                at_least: c.at_least,
            })
            .collect(),
        created_at: Some(ts(b.created_at)),
    }
}

impl BadgeApi {
    async fn create(
        &self,
        p: &auth::Principal,
        req: CreateBadgeRequest,
    ) -> Result<CreateBadgeResponse, ServiceError> {
        p.require_role(&req.program_id, &[Role::ProgramAdmin])?;
        let Some(b) = req.badge.as_ref() else {
            return Err(ServiceError::invalid("badge", "is required"));
        };
        let mut v = Violations::new();
        check_id(&mut v, "badge.code", &b.code);
        check_text(&mut v, "badge.name", &b.name, true);
        check_text(&mut v, "badge.description", &b.description, false);
        let mut conditions = Vec::new();
        for (i, c) in b.conditions.iter().enumerate() {
            match BadgeCounter::try_from(c.counter)
                .ok()
                .and_then(counter_from)
            {
                Some(counter) => conditions.push(Condition {
                    counter,
                    at_least: c.at_least,
                }),
                None => v.add(
                    format!("badge.conditions[{i}].counter"),
                    "must be PURCHASES, REVIEWS, CHECK_INS or CHECK_IN_STREAK",
                ),
            }
        }
        if v.is_empty() {
            for (i, problem) in rules::validate(&conditions) {
                match i {
                    Some(i) => v.add(format!("badge.conditions[{i}]"), problem),
                    None => v.add("badge.conditions", problem),
                }
            }
        }
        v.finish()?;
        let row = BadgeRow {
            program_id: req.program_id.clone(),
            code: b.code.clone(),
            name: b.name.trim().to_owned(),
            description: b.description.clone(),
            conditions,
            created_at: now_micros(&self.rt),
        };
        let mut tx = self.rt.db.begin().await?;
        if !store::insert_badge(&mut tx, &row).await? {
            // the code is the natural key: the same definition is a replay
            let existing = store::get_badge(&mut tx, &row.program_id, &row.code)
                .await?
                .ok_or_else(|| ServiceError::internal("badge vanished"))?;
            tx.rollback().await?;
            let same = existing.name == row.name
                && existing.description == row.description
                && existing.conditions == row.conditions;
            return if same {
                Ok(CreateBadgeResponse {
                    badge: Some(badge_proto(&existing)),
                })
            } else {
                Err(ServiceError::AlreadyExists {
                    resource: "badge",
                    field: "badge.code".into(),
                })
            };
        }
        tx.commit().await?;
        Ok(CreateBadgeResponse {
            badge: Some(badge_proto(&row)),
        })
    }
}

#[tonic::async_trait]
impl BadgeService for BadgeApi {
    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn create_badge(
        &self,
        request: Request<CreateBadgeRequest>,
    ) -> Result<Response<CreateBadgeResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        Ok(Response::new(self.create(&p, request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn list_badges(
        &self,
        request: Request<ListBadgesRequest>,
    ) -> Result<Response<ListBadgesResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.authorize_program(&req.program_id)?;
        let print = format!("badges:{}", req.program_id);
        let pg = page(req.page.as_ref(), &print)?;
        let rows = store::list_badges(
            self.rt.db.pool(),
            &req.program_id,
            pg.after.as_deref().unwrap_or_default(),
            pg.fetch_limit(),
        )
        .await?;
        let (rows, next) = paging::finish(rows, &pg, &print, |r| r.code.clone());
        Ok(Response::new(ListBadgesResponse {
            badges: rows.iter().map(badge_proto).collect(),
            page: Some(page_response(next)),
        }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id, member_id = %request.get_ref().member_id))]
    async fn list_member_badges(
        &self,
        request: Request<ListMemberBadgesRequest>,
    ) -> Result<Response<ListMemberBadgesResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.authorize_member(&req.program_id, &req.member_id)?;
        let print = format!("member-badges:{}:{}", req.program_id, req.member_id);
        let pg = page(req.page.as_ref(), &print)?;
        let before = match pg.after.as_deref() {
            None => None,
            Some(cursor) => {
                let parsed = cursor
                    .split_once('/')
                    .and_then(|(at, code)| Some((at.parse::<i64>().ok()?, code.to_owned())));
                Some(
                    parsed
                        .ok_or_else(|| ServiceError::invalid("page.page_token", "is malformed"))?,
                )
            }
        };
        let rows = store::list_awards(
            self.rt.db.pool(),
            &req.program_id,
            &req.member_id,
            before,
            pg.fetch_limit(),
        )
        .await?;
        let (rows, next) = paging::finish(rows, &pg, &print, |r| {
            format!("{}/{}", r.awarded_at, r.code)
        });
        Ok(Response::new(ListMemberBadgesResponse {
            badges: rows
                .iter()
                .map(|r| MemberBadge {
                    code: r.code.clone(),
                    name: r.name.clone(),
                    description: r.description.clone(),
                    awarded_at: Some(ts(r.awarded_at)),
                })
                .collect(),
            page: Some(page_response(next)),
        }))
    }
}
