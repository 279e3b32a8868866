//! gRPC adapter of partner exchange: decode, check the caller, delegate,
//! encode.

use std::sync::Arc;

use loyalty_common::auth::{self, Principal, Role};
use loyalty_common::db::Tx;
use loyalty_common::idempotency::run_idempotent;
use loyalty_common::paging;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::{ServiceError, Violations};
use loyalty_proto::loyalty::rewards::v1::partner_service_server::PartnerService;
use loyalty_proto::loyalty::rewards::v1::{
    CreatePartnerRequest, CreatePartnerResponse, ExchangeInRequest, ExchangeInResponse,
    ExchangeOutRequest, ExchangeOutResponse, ExchangeRate, LimitPeriod,
    ListPartnerTransfersRequest, ListPartnerTransfersResponse, ListPartnersRequest,
    ListPartnersResponse, Partner, PartnerTransfer, TransferDirection,
};
use tonic::{Request, Response, Status};

use super::exchange::{self, Period, Rate};
use super::store::{self, PartnerRow, TransferRow, UsageKey};
use crate::engagement::points::{self, Purpose};
use crate::engagement::support::{
    check_id, check_text, new_id, now_micros, page, page_response, ts,
};

pub(crate) struct PartnerApi {
    pub rt: Arc<ServiceRuntime>,
}

const OUT: &str = "out";
const IN: &str = "in";

fn rate_proto(r: Option<(i64, i64)>) -> Option<ExchangeRate> {
    r.map(|(from_units, to_units)| ExchangeRate {
        from_units,
        to_units,
    })
}

fn partner_proto(p: &PartnerRow) -> Partner {
    Partner {
        code: p.code.clone(),
        program_id: p.program_id.clone(),
        name: p.name.clone(),
        unit_name: p.unit_name.clone(),
        rate_out: rate_proto(p.rate_out),
        rate_in: rate_proto(p.rate_in),
        limit_period: match Period::parse(&p.limit_period) {
            Some(Period::Day) => LimitPeriod::Day,
            Some(Period::Month) => LimitPeriod::Month,
            None => LimitPeriod::Unspecified,
        }
        .into(),
        member_limit_out: p.member_limit_out,
        member_limit_in: p.member_limit_in,
        program_limit_out: p.program_limit_out,
        program_limit_in: p.program_limit_in,
        created_at: Some(ts(p.created_at)),
    }
}

fn transfer_proto(t: &TransferRow) -> PartnerTransfer {
    PartnerTransfer {
        transfer_id: t.transfer_id.clone(),
        program_id: t.program_id.clone(),
        member_id: t.member_id.clone(),
        partner_code: t.partner_code.clone(),
        direction: if t.direction == OUT {
            TransferDirection::Out
        } else {
            TransferDirection::In
        }
        .into(),
        points: t.points,
        partner_units: t.partner_units,
        partner_reference: t.partner_reference.clone(),
        entry_id: t.entry_id.clone(),
        created_at: Some(ts(t.created_at)),
    }
}

fn check_rate(v: &mut Violations, field: &str, r: Option<&ExchangeRate>) -> Option<(i64, i64)> {
    let r = r?;
    v.check(field, Rate::new(r.from_units, r.to_units))
        .map(|r| (r.from_units, r.to_units))
}

/// Takes `points` of both allowances (the member's and the program's) for
/// this period, or refuses with RESOURCE_EXHAUSTED naming which.
async fn use_allowances(
    tx: &mut Tx,
    partner: &PartnerRow,
    member_id: &str,
    direction: &str,
    points: i64,
    period_key: &str,
) -> Result<(), ServiceError> {
    let (member_limit, program_limit) = if direction == OUT {
        (partner.member_limit_out, partner.program_limit_out)
    } else {
        (partner.member_limit_in, partner.program_limit_in)
    };
    let key = |scope| UsageKey {
        program_id: &partner.program_id,
        partner_code: &partner.code,
        direction,
        scope,
        period_key,
    };
    if !store::use_allowance(tx, key(member_id), points, member_limit).await? {
        return Err(ServiceError::ResourceExhausted(format!(
            "the member's {} exchange limit with this partner for {period_key} would be exceeded",
            partner.limit_period
        )));
    }
    if !store::use_allowance(tx, key("*"), points, program_limit).await? {
        return Err(ServiceError::ResourceExhausted(format!(
            "the program's {} exchange limit with this partner for {period_key} would be exceeded",
            partner.limit_period
        )));
    }
    Ok(())
}

impl PartnerApi {
    async fn create(
        &self,
        p: &Principal,
        req: CreatePartnerRequest,
    ) -> Result<CreatePartnerResponse, ServiceError> {
        p.require_role(&req.program_id, &[Role::ProgramAdmin])?;
        let Some(d) = req.partner.as_ref() else {
            return Err(ServiceError::invalid("partner", "is required"));
        };
        let mut v = Violations::new();
        check_id(&mut v, "partner.code", &d.code);
        check_text(&mut v, "partner.name", &d.name, true);
        check_text(&mut v, "partner.unit_name", &d.unit_name, true);
        let rate_out = check_rate(&mut v, "partner.rate_out", d.rate_out.as_ref());
        let rate_in = check_rate(&mut v, "partner.rate_in", d.rate_in.as_ref());
        if d.rate_out.is_none() && d.rate_in.is_none() {
            v.add(
                "partner.rate_out",
                "at least one of rate_out and rate_in is required",
            );
        }
        let period = match LimitPeriod::try_from(d.limit_period) {
            Ok(LimitPeriod::Day) => Some(Period::Day),
            Ok(LimitPeriod::Month) => Some(Period::Month),
            _ => {
                v.add("partner.limit_period", "must be DAY or MONTH");
                None
            }
        };
        for (field, value) in [
            ("partner.member_limit_out", d.member_limit_out),
            ("partner.member_limit_in", d.member_limit_in),
            ("partner.program_limit_out", d.program_limit_out),
            ("partner.program_limit_in", d.program_limit_in),
        ] {
            if value < 0 {
                v.add(field, "must not be negative (0 = no limit)");
            }
        }
        v.finish()?;
        let row = PartnerRow {
            program_id: req.program_id.clone(),
            code: d.code.clone(),
            name: d.name.trim().to_owned(),
            unit_name: d.unit_name.trim().to_owned(),
            rate_out,
            rate_in,
            limit_period: period.map(Period::as_str).unwrap_or_default().to_owned(),
            member_limit_out: d.member_limit_out,
            member_limit_in: d.member_limit_in,
            program_limit_out: d.program_limit_out,
            program_limit_in: d.program_limit_in,
            created_at: now_micros(&self.rt),
        };
        let mut tx = self.rt.db.begin().await?;
        if store::insert_partner(&mut tx, &row).await? {
            tx.commit().await?;
            return Ok(CreatePartnerResponse {
                partner: Some(partner_proto(&row)),
            });
        }
        // the code is the natural key: the same definition is a replay
        let existing = store::get_partner(&mut tx, &row.program_id, &row.code)
            .await?
            .ok_or_else(|| ServiceError::internal("partner vanished"))?;
        tx.rollback().await?;
        let same = PartnerRow {
            created_at: existing.created_at,
            ..row
        } == existing;
        if same {
            Ok(CreatePartnerResponse {
                partner: Some(partner_proto(&existing)),
            })
        } else {
            Err(ServiceError::AlreadyExists {
                resource: "partner",
                field: "partner.code".into(),
            })
        }
    }

    async fn exchange_out(
        &self,
        p: &Principal,
        req: ExchangeOutRequest,
    ) -> Result<ExchangeOutResponse, ServiceError> {
        p.authorize_member(&req.program_id, &req.member_id)?;
        let mut v = Violations::new();
        check_id(&mut v, "member_id", &req.member_id);
        check_id(&mut v, "partner_code", &req.partner_code);
        if req.points <= 0 {
            v.add("points", "must be a positive number of points");
        }
        v.finish()?;
        let now = self.rt.clock.now();
        let scope = format!("rewards.ExchangeOut/{}/{}", req.program_id, req.member_id);
        let key = req.idempotency_key.clone();
        let resp = run_idempotent(&self.rt.db, &scope, &key, &req.clone(), move |tx| {
            Box::pin(async move {
                let partner = store::get_partner(tx, &req.program_id, &req.partner_code)
                    .await?
                    .ok_or_else(|| ServiceError::not_found("partner", &req.partner_code))?;
                let Some((from, to)) = partner.rate_out else {
                    return Err(ServiceError::precondition(
                        "this partner takes no exchanges out",
                    ));
                };
                let rate = Rate::new(from, to).map_err(ServiceError::internal)?;
                let out = exchange::exchange_out(rate, req.points)
                    .map_err(|e| ServiceError::invalid("points", e))?;
                let period = Period::parse(&partner.limit_period).unwrap_or(Period::Day);
                use_allowances(
                    tx,
                    &partner,
                    &req.member_id,
                    OUT,
                    out.points_debited,
                    &period.key(now),
                )
                .await?;
                let transfer_id = new_id();
                let entry_id = points::debit(
                    tx,
                    &req.program_id,
                    &req.member_id,
                    Purpose::PartnerExchange,
                    out.points_debited,
                    &format!("partner:{}:{transfer_id}", partner.code),
                )
                .await?;
                let row = TransferRow {
                    transfer_id: transfer_id.clone(),
                    program_id: req.program_id.clone(),
                    member_id: req.member_id.clone(),
                    partner_code: partner.code.clone(),
                    direction: OUT.to_owned(),
                    points: out.points_debited,
                    partner_units: out.partner_units,
                    // our reference, sent to the partner with the units
                    partner_reference: transfer_id,
                    entry_id,
                    created_at: now.timestamp_micros(),
                };
                store::insert_transfer(tx, &row).await?;
                Ok(ExchangeOutResponse {
                    transfer: Some(transfer_proto(&row)),
                })
            })
        })
        .await?;
        self.rt.outbox.notify();
        Ok(resp)
    }

    async fn exchange_in(
        &self,
        p: &Principal,
        req: ExchangeInRequest,
    ) -> Result<ExchangeInResponse, ServiceError> {
        p.require_role(&req.program_id, &[Role::Backend])?;
        let mut v = Violations::new();
        check_id(&mut v, "member_id", &req.member_id);
        check_id(&mut v, "partner_code", &req.partner_code);
        check_id(
            &mut v,
            "partner_transaction_id",
            &req.partner_transaction_id,
        );
        if req.partner_units <= 0 {
            v.add("partner_units", "must be a positive number of units");
        }
        v.finish()?;
        let now = self.rt.clock.now();
        // the partner's transaction id is the idempotency key: a replay
        // answers the first transfer; other parameters are refused
        let scope = format!("rewards.ExchangeIn/{}/{}", req.program_id, req.partner_code);
        let key = req.partner_transaction_id.clone();
        let resp = run_idempotent(&self.rt.db, &scope, &key, &req.clone(), move |tx| {
            Box::pin(async move {
                let partner = store::get_partner(tx, &req.program_id, &req.partner_code)
                    .await?
                    .ok_or_else(|| ServiceError::not_found("partner", &req.partner_code))?;
                let Some((from, to)) = partner.rate_in else {
                    return Err(ServiceError::precondition(
                        "this partner sends no exchanges in",
                    ));
                };
                let rate = Rate::new(from, to).map_err(ServiceError::internal)?;
                let credited = exchange::exchange_in(rate, req.partner_units)
                    .map_err(|e| ServiceError::invalid("partner_units", e))?;
                let period = Period::parse(&partner.limit_period).unwrap_or(Period::Day);
                use_allowances(tx, &partner, &req.member_id, IN, credited, &period.key(now))
                    .await?;
                let entry_id = points::credit(
                    tx,
                    &req.program_id,
                    &req.member_id,
                    Purpose::PartnerExchange,
                    credited,
                    &format!("partner:{}:{}", partner.code, req.partner_transaction_id),
                    now,
                )
                .await?;
                let row = TransferRow {
                    transfer_id: new_id(),
                    program_id: req.program_id.clone(),
                    member_id: req.member_id.clone(),
                    partner_code: partner.code.clone(),
                    direction: IN.to_owned(),
                    points: credited,
                    partner_units: req.partner_units,
                    partner_reference: req.partner_transaction_id.clone(),
                    entry_id,
                    created_at: now.timestamp_micros(),
                };
                store::insert_transfer(tx, &row).await?;
                Ok(ExchangeInResponse {
                    transfer: Some(transfer_proto(&row)),
                })
            })
        })
        .await?;
        self.rt.outbox.notify();
        Ok(resp)
    }
}

#[tonic::async_trait]
impl PartnerService for PartnerApi {
    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn create_partner(
        &self,
        request: Request<CreatePartnerRequest>,
    ) -> Result<Response<CreatePartnerResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        Ok(Response::new(self.create(&p, request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn list_partners(
        &self,
        request: Request<ListPartnersRequest>,
    ) -> Result<Response<ListPartnersResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.authorize_program(&req.program_id)?;
        let print = format!("partners:{}", req.program_id);
        let pg = page(req.page.as_ref(), &print)?;
        let rows = store::list_partners(
            self.rt.db.pool(),
            &req.program_id,
            pg.after.as_deref().unwrap_or_default(),
            pg.fetch_limit(),
        )
        .await?;
        let (rows, next) = paging::finish(rows, &pg, &print, |r| r.code.clone());
        Ok(Response::new(ListPartnersResponse {
            partners: rows.iter().map(partner_proto).collect(),
            page: Some(page_response(next)),
        }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id, member_id = %request.get_ref().member_id))]
    async fn exchange_out(
        &self,
        request: Request<ExchangeOutRequest>,
    ) -> Result<Response<ExchangeOutResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        Ok(Response::new(
            self.exchange_out(&p, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id, member_id = %request.get_ref().member_id))]
    async fn exchange_in(
        &self,
        request: Request<ExchangeInRequest>,
    ) -> Result<Response<ExchangeInResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        Ok(Response::new(
            self.exchange_in(&p, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id, member_id = %request.get_ref().member_id))]
    async fn list_partner_transfers(
        &self,
        request: Request<ListPartnerTransfersRequest>,
    ) -> Result<Response<ListPartnerTransfersResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.authorize_member(&req.program_id, &req.member_id)?;
        let print = format!("partner-transfers:{}:{}", req.program_id, req.member_id);
        let pg = page(req.page.as_ref(), &print)?;
        let rows = store::list_transfers(
            self.rt.db.pool(),
            &req.program_id,
            &req.member_id,
            pg.after.as_deref(),
            pg.fetch_limit(),
        )
        .await?;
        let (rows, next) = paging::finish(rows, &pg, &print, |r| r.transfer_id.clone());
        Ok(Response::new(ListPartnerTransfersResponse {
            transfers: rows.iter().map(transfer_proto).collect(),
            page: Some(page_response(next)),
        }))
    }
}
