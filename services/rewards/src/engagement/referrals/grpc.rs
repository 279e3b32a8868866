//! gRPC adapter of referrals: decode, check the caller, delegate, encode.

use std::collections::HashSet;
use std::sync::Arc;

use loyalty_common::auth::{self, Principal, Role};
use loyalty_common::money::Money;
use loyalty_common::paging;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::{ServiceError, Violations};
use loyalty_proto::loyalty::rewards::v1::referral_service_server::ReferralService;
use loyalty_proto::loyalty::rewards::v1::{
    ApplyReferralCodeRequest, ApplyReferralCodeResponse, GetReferralCodeRequest,
    GetReferralCodeResponse, GetReferralTermsRequest, GetReferralTermsResponse,
    ListReferralsRequest, ListReferralsResponse, Referral, ReferralState, ReferralTerms,
    SetReferralTermsRequest, SetReferralTermsResponse,
};
use tonic::{Request, Response, Status};

use super::rules::{self, Applicant, Refusal};
use super::store::{self, ReferralRow, TermsRow};
use crate::engagement::codes;
use crate::engagement::support::{check_id, new_id, now_micros, opt_ts, page, page_response, ts};

pub(crate) struct ReferralApi {
    pub rt: Arc<ServiceRuntime>,
}

/// Most points one side of a referral may be credited.
const MAX_REWARD: i64 = 1_000_000;

fn terms_proto(t: &TermsRow) -> ReferralTerms {
    ReferralTerms {
        program_id: t.program_id.clone(),
        enabled: t.enabled,
        referrer_points: t.referrer_points,
        referee_points: t.referee_points,
        min_purchase: match (t.min_purchase_minor, &t.min_purchase_currency) {
            (Some(minor), Some(currency)) => Some(loyalty_proto::common::Money {
                minor_units: minor,
                currency: currency.clone(),
            }),
            _ => None,
        },
    }
}

fn referral_proto(r: &ReferralRow) -> Referral {
    Referral {
        referral_id: r.referral_id.clone(),
        program_id: r.program_id.clone(),
        referrer_member_id: r.referrer_id.clone(),
        referee_member_id: r.referee_id.clone(),
        state: match r.state.as_str() {
            "pending" => ReferralState::Pending,
            "qualified" => ReferralState::Qualified,
            "clawed_back" => ReferralState::ClawedBack,
            _ => ReferralState::Unspecified,
        }
        .into(),
        referrer_points: r.referrer_points,
        referee_points: r.referee_points,
        qualifying_order_id: r.qualifying_order_id.clone().unwrap_or_default(),
        created_at: Some(ts(r.created_at)),
        qualified_at: opt_ts(r.qualified_at),
        clawed_back_at: opt_ts(r.clawed_back_at),
    }
}

impl ReferralApi {
    async fn set_terms(
        &self,
        p: &Principal,
        req: SetReferralTermsRequest,
    ) -> Result<SetReferralTermsResponse, ServiceError> {
        p.require_role(&req.program_id, &[Role::ProgramAdmin])?;
        let Some(t) = req.terms.as_ref() else {
            return Err(ServiceError::invalid("terms", "is required"));
        };
        let mut v = Violations::new();
        for (field, value) in [
            ("terms.referrer_points", t.referrer_points),
            ("terms.referee_points", t.referee_points),
        ] {
            if !(0..=MAX_REWARD).contains(&value) {
                v.add(field, format!("must be between 0 and {MAX_REWARD}"));
            }
        }
        let min = t.min_purchase.as_ref().and_then(|m| {
            v.check(
                "terms.min_purchase",
                Money::from_proto("terms.min_purchase", Some(m)),
            )
        });
        v.finish()?;
        let row = TermsRow {
            program_id: req.program_id.clone(),
            enabled: t.enabled,
            referrer_points: t.referrer_points,
            referee_points: t.referee_points,
            min_purchase_minor: min.map(|m| m.minor),
            min_purchase_currency: min.map(|m| m.currency.as_str().to_owned()),
        };
        let mut tx = self.rt.db.begin().await?;
        store::put_terms(&mut tx, &row, now_micros(&self.rt)).await?;
        tx.commit().await?;
        Ok(SetReferralTermsResponse {
            terms: Some(terms_proto(&row)),
        })
    }

    async fn apply(
        &self,
        p: &Principal,
        req: ApplyReferralCodeRequest,
    ) -> Result<ApplyReferralCodeResponse, ServiceError> {
        p.authorize_member(&req.program_id, &req.member_id)?;
        let mut v = Violations::new();
        check_id(&mut v, "member_id", &req.member_id);
        let code = v.check(
            "code",
            codes::normalise(&req.code, codes::REFERRAL_CODE_LEN),
        );
        v.finish()?;
        let code = code.unwrap_or_default();
        let (program, referee) = (req.program_id.as_str(), req.member_id.as_str());
        let now = now_micros(&self.rt);
        let mut tx = self.rt.db.begin().await?;
        let referrer = store::holder_of(&mut tx, program, &code)
            .await?
            .ok_or_else(|| ServiceError::not_found("referral code", &code))?;
        if let Some(existing) = store::referral_of_referee(&mut tx, program, referee).await? {
            tx.rollback().await?;
            // the same code again is a replay; another code is refused
            return if existing.referrer_id == referrer {
                Ok(ApplyReferralCodeResponse {
                    referral: Some(referral_proto(&existing)),
                })
            } else {
                Err(ServiceError::AlreadyExists {
                    resource: "referral",
                    field: "member_id".into(),
                })
            };
        }
        let terms = store::get_terms_tx(&mut tx, program).await?;
        let referee_hashes: HashSet<String> = store::contact_hashes(&mut tx, program, referee)
            .await?
            .into_iter()
            .collect();
        let mut already = HashSet::new();
        for h in &referee_hashes {
            if store::hash_already_referred(&mut tx, program, h, referee).await? {
                already.insert(h.clone());
            }
        }
        let applicant = Applicant {
            referrer_id: &referrer,
            referee_id: referee,
            referrer_hashes: store::contact_hashes(&mut tx, program, &referrer)
                .await?
                .into_iter()
                .collect(),
            referee_hashes,
            hashes_already_referred: already,
            referee_has_purchased: store::has_purchased(&mut tx, program, referee).await?,
            program_open: terms.as_ref().is_some_and(|t| t.enabled),
        };
        if let Err(refusal) = rules::check(&applicant) {
            tx.rollback().await?;
            return Err(match refusal {
                Refusal::SelfReferral => ServiceError::invalid("code", refusal.to_string()),
                _ => ServiceError::precondition(refusal.to_string()),
            });
        }
        let row = ReferralRow {
            referral_id: new_id(),
            program_id: program.to_owned(),
            referrer_id: referrer,
            referee_id: referee.to_owned(),
            state: "pending".to_owned(),
            referrer_points: 0,
            referee_points: 0,
            qualifying_order_id: None,
            created_at: now,
            qualified_at: None,
            clawed_back_at: None,
        };
        if !store::insert_referral(&mut tx, &row).await? {
            return Err(ServiceError::AlreadyExists {
                resource: "referral",
                field: "member_id".into(),
            });
        }
        tx.commit().await?;
        Ok(ApplyReferralCodeResponse {
            referral: Some(referral_proto(&row)),
        })
    }
}

#[tonic::async_trait]
impl ReferralService for ReferralApi {
    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn set_referral_terms(
        &self,
        request: Request<SetReferralTermsRequest>,
    ) -> Result<Response<SetReferralTermsResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        Ok(Response::new(
            self.set_terms(&p, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn get_referral_terms(
        &self,
        request: Request<GetReferralTermsRequest>,
    ) -> Result<Response<GetReferralTermsResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.authorize_program(&req.program_id)?;
        let terms = store::get_terms(self.rt.db.pool(), &req.program_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("referral terms", &req.program_id))?;
        Ok(Response::new(GetReferralTermsResponse {
            terms: Some(terms_proto(&terms)),
        }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id, member_id = %request.get_ref().member_id))]
    async fn get_referral_code(
        &self,
        request: Request<GetReferralCodeRequest>,
    ) -> Result<Response<GetReferralCodeResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.authorize_member(&req.program_id, &req.member_id)?;
        let mut v = Violations::new();
        check_id(&mut v, "member_id", &req.member_id);
        v.finish()?;
        let mut tx = self.rt.db.begin().await.map_err(ServiceError::from)?;
        let code = store::code_of(
            &mut tx,
            &req.program_id,
            &req.member_id,
            now_micros(&self.rt),
        )
        .await?;
        tx.commit().await.map_err(ServiceError::from)?;
        Ok(Response::new(GetReferralCodeResponse { code }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id, member_id = %request.get_ref().member_id))]
    async fn apply_referral_code(
        &self,
        request: Request<ApplyReferralCodeRequest>,
    ) -> Result<Response<ApplyReferralCodeResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        Ok(Response::new(self.apply(&p, request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id, member_id = %request.get_ref().member_id))]
    async fn list_referrals(
        &self,
        request: Request<ListReferralsRequest>,
    ) -> Result<Response<ListReferralsResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.authorize_member(&req.program_id, &req.member_id)?;
        let print = format!("referrals:{}:{}", req.program_id, req.member_id);
        let pg = page(req.page.as_ref(), &print)?;
        let rows = store::list_referrals(
            self.rt.db.pool(),
            &req.program_id,
            &req.member_id,
            pg.after.as_deref(),
            pg.fetch_limit(),
        )
        .await?;
        let (rows, next) = paging::finish(rows, &pg, &print, |r| r.referral_id.clone());
        Ok(Response::new(ListReferralsResponse {
            referrals: rows.iter().map(referral_proto).collect(),
            page: Some(page_response(next)),
        }))
    }
}
