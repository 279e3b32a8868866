//! gRPC adapter of the catalog: decode, check the caller, delegate, encode.

use std::sync::Arc;

use loyalty_common::auth::{self, Principal, Role};
use loyalty_common::db::Tx;
use loyalty_common::idempotency::run_idempotent;
use loyalty_common::paging;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::{ServiceError, Violations};
use loyalty_proto::common::ErrorReason;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{CouponIssued, RewardRedeemed};
use loyalty_proto::loyalty::rewards::v1::catalog_service_server::CatalogService;
use loyalty_proto::loyalty::rewards::v1::{
    CancelRedemptionRequest, CancelRedemptionResponse, CatalogItem, CatalogItemKind,
    CreateCatalogItemRequest, CreateCatalogItemResponse, FulfilRedemptionRequest,
    FulfilRedemptionResponse, GetCatalogItemRequest, GetCatalogItemResponse, GetRedemptionRequest,
    GetRedemptionResponse, ListCatalogItemsRequest, ListCatalogItemsResponse,
    ListRedemptionsRequest, ListRedemptionsResponse, RedeemRewardRequest, RedeemRewardResponse,
    Redemption, RedemptionState, RestockCatalogItemRequest, RestockCatalogItemResponse,
    UpdateCatalogItemRequest, UpdateCatalogItemResponse,
};
use tonic::{Request, Response, Status};

use super::eligibility::{self, ItemTerms, Refusal};
use super::store::{self, ItemRow, RedemptionRow};
use crate::engagement::codes;
use crate::engagement::coupons::store as coupon_store;
use crate::engagement::coupons::vault::CodeVault;
use crate::engagement::points;
use crate::engagement::support::{
    check_id, check_text, emit, from_ts, new_id, now_micros, opt_ts, page, page_response, ts,
};

pub(crate) struct CatalogApi {
    pub rt: Arc<ServiceRuntime>,
}

const ADMIN: &[Role] = &[Role::ProgramAdmin];
const OPERATORS: &[Role] = &[Role::ProgramAdmin, Role::SupportAgent, Role::Backend];
const STAFF: &[Role] = &[
    Role::ProgramAdmin,
    Role::SupportAgent,
    Role::Analyst,
    Role::Backend,
];
const MAX_STOCK: i64 = 1_000_000_000;
const MAX_TIERS: usize = 20;

const RESERVED: &str = "reserved";
const FULFILLED: &str = "fulfilled";
const CANCELLED: &str = "cancelled";

fn kind_str(kind: CatalogItemKind) -> Option<&'static str> {
    match kind {
        CatalogItemKind::Goods => Some("goods"),
        CatalogItemKind::Coupon => Some("coupon"),
        CatalogItemKind::Service => Some("service"),
        CatalogItemKind::Experience => Some("experience"),
        CatalogItemKind::Unspecified => None,
    }
}

fn kind_proto(kind: &str) -> CatalogItemKind {
    match kind {
        "goods" => CatalogItemKind::Goods,
        "coupon" => CatalogItemKind::Coupon,
        "service" => CatalogItemKind::Service,
        "experience" => CatalogItemKind::Experience,
        _ => CatalogItemKind::Unspecified,
    }
}

fn state_proto(state: &str) -> RedemptionState {
    match state {
        RESERVED => RedemptionState::Reserved,
        FULFILLED => RedemptionState::Fulfilled,
        CANCELLED => RedemptionState::Cancelled,
        _ => RedemptionState::Unspecified,
    }
}

fn item_proto(i: &ItemRow) -> CatalogItem {
    CatalogItem {
        item_id: i.item_id.clone(),
        program_id: i.program_id.clone(),
        kind: kind_proto(&i.kind).into(),
        name: i.name.clone(),
        description: i.description.clone(),
        points_cost: i.points_cost,
        unlimited_stock: i.unlimited_stock,
        stock_remaining: if i.unlimited_stock {
            0
        } else {
            i.stock_remaining
        },
        per_member_limit: i.per_member_limit,
        eligible_tiers: i.eligible_tiers.clone(),
        valid_from: opt_ts(i.valid_from),
        valid_until: opt_ts(i.valid_until),
        coupon_pool_id: i.coupon_pool_id.clone().unwrap_or_default(),
        active: i.active,
        created_at: Some(ts(i.created_at)),
    }
}

fn redemption_proto(r: &RedemptionRow) -> Redemption {
    Redemption {
        redemption_id: r.redemption_id.clone(),
        program_id: r.program_id.clone(),
        member_id: r.member_id.clone(),
        item_id: r.item_id.clone(),
        quantity: r.quantity,
        points: r.points,
        state: state_proto(&r.state).into(),
        coupon_id: r.coupon_id.clone().unwrap_or_default(),
        debit_entry_id: r.debit_entry_id.clone(),
        created_at: Some(ts(r.created_at)),
        updated_at: Some(ts(r.updated_at)),
    }
}

/// The changeable fields of an item, checked; `v` collects violations.
struct Editable {
    name: String,
    description: String,
    points_cost: i64,
    per_member_limit: i64,
    eligible_tiers: Vec<String>,
    valid_from: Option<i64>,
    valid_until: Option<i64>,
    active: bool,
}

fn check_editable(v: &mut Violations, i: &CatalogItem) -> Editable {
    check_text(v, "item.name", &i.name, true);
    check_text(v, "item.description", &i.description, false);
    if i.points_cost <= 0 {
        v.add("item.points_cost", "must be a positive number of points");
    }
    if i.per_member_limit < 0 {
        v.add(
            "item.per_member_limit",
            "must not be negative (0 = no limit)",
        );
    }
    if i.eligible_tiers.len() > MAX_TIERS {
        v.add(
            "item.eligible_tiers",
            format!("must list at most {MAX_TIERS} tiers"),
        );
    }
    for (n, t) in i.eligible_tiers.iter().enumerate() {
        check_id(v, &format!("item.eligible_tiers[{n}]"), t);
    }
    let valid_from = from_ts(v, "item.valid_from", i.valid_from.as_ref());
    let valid_until = from_ts(v, "item.valid_until", i.valid_until.as_ref());
    if let (Some(f), Some(u)) = (valid_from, valid_until)
        && u <= f
    {
        v.add("item.valid_until", "must be after valid_from");
    }
    Editable {
        name: i.name.trim().to_owned(),
        description: i.description.clone(),
        points_cost: i.points_cost,
        per_member_limit: i.per_member_limit,
        eligible_tiers: i.eligible_tiers.clone(),
        valid_from,
        valid_until,
        active: i.active,
    }
}

fn refusal(r: &Refusal) -> ServiceError {
    match r {
        Refusal::Quantity => ServiceError::invalid("quantity", r.to_string()),
        _ => ServiceError::precondition(r.to_string()),
    }
}

/// Announces a fulfilled order: a reward counts as redeemed only once it
/// is handed over, so a reserved order that is cancelled never announces.
async fn emit_redeemed(tx: &mut Tx, row: &RedemptionRow, kind: &str) -> Result<(), ServiceError> {
    emit(
        tx,
        &row.program_id,
        &row.member_id,
        Payload::RewardRedeemed(RewardRedeemed {
            redemption_id: row.redemption_id.clone(),
            item_id: row.item_id.clone(),
            points: row.points,
            quantity: row.quantity,
            item_kind: kind.to_owned(),
        }),
    )
    .await
}

fn insufficient(message: &str) -> ServiceError {
    ServiceError::FailedPrecondition {
        reason: ErrorReason::InsufficientBalance,
        message: message.to_owned(),
    }
}

impl CatalogApi {
    /// Loads an order the caller may see: a member only its own; a member
    /// asking for another's (or a missing) order is denied alike.
    async fn visible_redemption(
        &self,
        p: &Principal,
        program_id: &str,
        redemption_id: &str,
    ) -> Result<RedemptionRow, ServiceError> {
        p.authorize_program(program_id)?;
        let row = store::get_redemption(self.rt.db.pool(), program_id, redemption_id).await?;
        match (p, row) {
            (Principal::Member { member_id, .. }, Some(r)) if *member_id == r.member_id => Ok(r),
            (Principal::Member { .. }, _) => Err(ServiceError::PermissionDenied(
                "the caller may not perform this call on this resource".into(),
            )),
            (_, Some(r)) => Ok(r),
            (_, None) => Err(ServiceError::not_found("redemption", redemption_id)),
        }
    }

    async fn redeem(
        &self,
        p: &Principal,
        req: RedeemRewardRequest,
    ) -> Result<RedeemRewardResponse, ServiceError> {
        p.authorize_member(&req.program_id, &req.member_id)?;
        let mut v = Violations::new();
        check_id(&mut v, "member_id", &req.member_id);
        check_id(&mut v, "item_id", &req.item_id);
        let quantity = if req.quantity == 0 { 1 } else { req.quantity };
        if !(1..=eligibility::MAX_QUANTITY).contains(&quantity) {
            v.add(
                "quantity",
                format!("must be between 1 and {}", eligibility::MAX_QUANTITY),
            );
        }
        v.finish()?;
        let now = now_micros(&self.rt);
        // keys are the caller's own: scoped to the member, never shared across members
        let scope = format!("rewards.RedeemReward/{}/{}", req.program_id, req.member_id);
        let key = req.idempotency_key.clone();
        let vault = Arc::new(CodeVault::of(&self.rt)?);
        let sealing = vault.clone();
        let program_id = req.program_id.clone();
        let mut response = run_idempotent(&self.rt.db, &scope, &key, &req.clone(), move |tx| {
            Box::pin(async move {
                let program = req.program_id.as_str();
                let member = req.member_id.as_str();
                let item = store::get_item_tx(tx, program, &req.item_id)
                    .await?
                    .ok_or_else(|| ServiceError::not_found("catalog item", &req.item_id))?;
                let tier = store::member_tier(tx, program, member).await?;
                let terms = ItemTerms {
                    active: item.active,
                    points_cost: item.points_cost,
                    valid_from: item.valid_from,
                    valid_until: item.valid_until,
                    eligible_tiers: item.eligible_tiers.clone(),
                };
                let cost =
                    eligibility::check(&terms, &tier, quantity, now).map_err(|r| refusal(&r))?;
                if !store::take_stock(tx, program, &item.item_id, quantity).await? {
                    return Err(insufficient("not enough stock left for this quantity"));
                }
                if !store::hold(
                    tx,
                    program,
                    &item.item_id,
                    member,
                    quantity,
                    item.per_member_limit,
                )
                .await?
                {
                    return Err(ServiceError::precondition(format!(
                        "the member may hold at most {} of this item",
                        item.per_member_limit
                    )));
                }
                let redemption_id = new_id();
                let debit_entry_id = points::debit(
                    tx,
                    program,
                    member,
                    points::Purpose::Redemption,
                    cost,
                    &format!("redemption:{redemption_id}"),
                )
                .await?;
                let mut row = RedemptionRow {
                    redemption_id: redemption_id.clone(),
                    program_id: program.to_owned(),
                    member_id: member.to_owned(),
                    item_id: item.item_id.clone(),
                    quantity,
                    points: cost,
                    state: RESERVED.to_owned(),
                    coupon_id: None,
                    debit_entry_id,
                    created_at: now,
                    updated_at: now,
                };
                if item.kind == "coupon" {
                    // digital goods: issued and fulfilled in the same transaction
                    let pool_id = item.coupon_pool_id.clone().unwrap_or_default();
                    let (coupon, _) = coupon_store::issue(
                        tx,
                        &sealing,
                        &coupon_store::IssueRequest {
                            program_id: program,
                            pool_id: &pool_id,
                            member_id: member,
                            source: "redemption",
                            issue_key: Some(format!("redemption:{redemption_id}")),
                            campaign_id: None,
                            now,
                        },
                    )
                    .await?;
                    emit(
                        tx,
                        program,
                        member,
                        Payload::CouponIssued(CouponIssued {
                            coupon_id: coupon.coupon_id.clone(),
                            pool_id: coupon.pool_id.clone(),
                            expires_at: Some(ts(coupon.expires_at)),
                            source: "redemption".into(),
                            campaign_id: String::new(),
                        }),
                    )
                    .await?;
                    row.coupon_id = Some(coupon.coupon_id);
                    FULFILLED.clone_into(&mut row.state);
                }
                store::insert_redemption(tx, &row).await?;
                if row.state == FULFILLED {
                    emit_redeemed(tx, &row, &item.kind).await?;
                }
                // the answer kept for replays holds no coupon code: it
                // is opened from the coupon when answering
                Ok(RedeemRewardResponse {
                    redemption: Some(redemption_proto(&row)),
                    coupon_code: String::new(),
                })
            })
        })
        .await?;
        self.rt.outbox.notify();
        if let Some(coupon_id) = response
            .redemption
            .as_ref()
            .map(|r| r.coupon_id.as_str())
            .filter(|id| !id.is_empty())
        {
            let coupon = coupon_store::by_id(self.rt.db.pool(), &vault, &program_id, coupon_id)
                .await?
                .ok_or_else(|| ServiceError::internal("a redemption's coupon is gone"))?;
            response.coupon_code = codes::display(&coupon.code);
        }
        Ok(response)
    }

    async fn cancel(
        &self,
        p: &Principal,
        req: CancelRedemptionRequest,
    ) -> Result<CancelRedemptionResponse, ServiceError> {
        let mut v = Violations::new();
        check_id(&mut v, "redemption_id", &req.redemption_id);
        check_text(&mut v, "reason", &req.reason, false);
        v.finish()?;
        let row = self
            .visible_redemption(p, &req.program_id, &req.redemption_id)
            .await?;
        if !super::super::support::is_member(p) {
            p.require_role(&req.program_id, OPERATORS)?;
        }
        let now = now_micros(&self.rt);
        let mut tx = self.rt.db.begin().await?;
        if store::transition(
            &mut tx,
            &row.program_id,
            &row.redemption_id,
            RESERVED,
            CANCELLED,
            now,
        )
        .await?
        {
            let reason = if req.reason.is_empty() {
                "redemption cancelled".to_owned()
            } else {
                req.reason.clone()
            };
            let entry =
                points::reverse(&mut tx, &row.program_id, &row.debit_entry_id, &reason).await?;
            store::set_reversal(&mut tx, &row.redemption_id, &entry).await?;
            store::return_stock(&mut tx, &row.program_id, &row.item_id, row.quantity).await?;
            store::release(
                &mut tx,
                &row.program_id,
                &row.item_id,
                &row.member_id,
                row.quantity,
            )
            .await?;
        }
        let after = store::get_redemption_tx(&mut tx, &row.program_id, &row.redemption_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("redemption", &row.redemption_id))?;
        tx.commit().await?;
        self.rt.outbox.notify();
        if after.state == CANCELLED {
            Ok(CancelRedemptionResponse {
                redemption: Some(redemption_proto(&after)),
            })
        } else {
            Err(ServiceError::precondition(format!(
                "only a reserved order can be cancelled; this one is {}",
                after.state
            )))
        }
    }

    async fn fulfil(
        &self,
        p: &Principal,
        req: FulfilRedemptionRequest,
    ) -> Result<FulfilRedemptionResponse, ServiceError> {
        p.require_role(&req.program_id, OPERATORS)?;
        let mut v = Violations::new();
        check_id(&mut v, "redemption_id", &req.redemption_id);
        v.finish()?;
        let now = now_micros(&self.rt);
        let mut tx = self.rt.db.begin().await?;
        let fulfilled = store::transition(
            &mut tx,
            &req.program_id,
            &req.redemption_id,
            RESERVED,
            FULFILLED,
            now,
        )
        .await?;
        let after = store::get_redemption_tx(&mut tx, &req.program_id, &req.redemption_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("redemption", &req.redemption_id))?;
        if fulfilled {
            // only the call that moved the order announces it (a replay does not)
            let kind = store::get_item_tx(&mut tx, &after.program_id, &after.item_id)
                .await?
                .map(|i| i.kind)
                .unwrap_or_default();
            emit_redeemed(&mut tx, &after, &kind).await?;
        }
        tx.commit().await?;
        self.rt.outbox.notify();
        if after.state == FULFILLED {
            Ok(FulfilRedemptionResponse {
                redemption: Some(redemption_proto(&after)),
            })
        } else {
            Err(ServiceError::precondition(format!(
                "only a reserved order can be fulfilled; this one is {}",
                after.state
            )))
        }
    }

    async fn create(
        &self,
        p: &Principal,
        req: CreateCatalogItemRequest,
    ) -> Result<CreateCatalogItemResponse, ServiceError> {
        p.require_role(&req.program_id, ADMIN)?;
        let mut v = Violations::new();
        let Some(item) = req.item.as_ref() else {
            return Err(ServiceError::invalid("item", "is required"));
        };
        let e = check_editable(&mut v, item);
        let kind = CatalogItemKind::try_from(item.kind).ok().and_then(kind_str);
        if kind.is_none() {
            v.add("item.kind", "must be GOODS, COUPON, SERVICE or EXPERIENCE");
        }
        if !item.unlimited_stock && !(0..=MAX_STOCK).contains(&item.stock_remaining) {
            v.add(
                "item.stock_remaining",
                format!("must be between 0 and {MAX_STOCK}"),
            );
        }
        if kind == Some("coupon") {
            check_id(&mut v, "item.coupon_pool_id", &item.coupon_pool_id);
        } else if !item.coupon_pool_id.is_empty() {
            v.add("item.coupon_pool_id", "is only for coupon items");
        }
        v.finish()?;
        let now = now_micros(&self.rt);
        let row = ItemRow {
            item_id: new_id(),
            program_id: req.program_id.clone(),
            kind: kind.unwrap_or_default().to_owned(),
            name: e.name,
            description: e.description,
            points_cost: e.points_cost,
            unlimited_stock: item.unlimited_stock,
            stock_remaining: if item.unlimited_stock {
                0
            } else {
                item.stock_remaining
            },
            per_member_limit: e.per_member_limit,
            eligible_tiers: e.eligible_tiers,
            valid_from: e.valid_from,
            valid_until: e.valid_until,
            coupon_pool_id: (!item.coupon_pool_id.is_empty()).then(|| item.coupon_pool_id.clone()),
            active: e.active,
            created_at: now,
        };
        let scope = format!("rewards.CreateCatalogItem/{}", req.program_id);
        let key = req.idempotency_key.clone();
        run_idempotent(&self.rt.db, &scope, &key, &req, move |tx| {
            Box::pin(async move {
                if let Some(pool_id) = &row.coupon_pool_id
                    && coupon_store::get_pool_tx(tx, &row.program_id, pool_id)
                        .await?
                        .is_none()
                {
                    return Err(ServiceError::invalid(
                        "item.coupon_pool_id",
                        "names no coupon pool of this program",
                    ));
                }
                store::insert_item(tx, &row).await?;
                Ok(CreateCatalogItemResponse {
                    item: Some(item_proto(&row)),
                })
            })
        })
        .await
    }

    async fn update(
        &self,
        p: &Principal,
        req: UpdateCatalogItemRequest,
    ) -> Result<UpdateCatalogItemResponse, ServiceError> {
        p.require_role(&req.program_id, ADMIN)?;
        let mut first = Violations::new();
        check_id(&mut first, "item_id", &req.item_id);
        let Some(item) = req.item.as_ref() else {
            return Err(ServiceError::invalid("item", "is required"));
        };
        let paths = req
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        if paths.is_empty() {
            first.add("update_mask", "must name at least one field");
        }
        first.finish()?;
        let mut v = Violations::new();
        let mut tx = self.rt.db.begin().await?;
        let mut row = store::get_item_tx(&mut tx, &req.program_id, &req.item_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("catalog item", &req.item_id))?;
        // start from the stored item, apply the named fields, check the whole
        let mut merged = item_proto(&row);
        for path in &paths {
            match path.as_str() {
                "name" => merged.name.clone_from(&item.name),
                "description" => merged.description.clone_from(&item.description),
                "points_cost" => merged.points_cost = item.points_cost,
                "per_member_limit" => merged.per_member_limit = item.per_member_limit,
                "eligible_tiers" => merged.eligible_tiers.clone_from(&item.eligible_tiers),
                "valid_from" => merged.valid_from = item.valid_from,
                "valid_until" => merged.valid_until = item.valid_until,
                "active" => merged.active = item.active,
                other => v.add(
                    "update_mask",
                    format!(
                        "{other:?} cannot be changed (stock changes through RestockCatalogItem)"
                    ),
                ),
            }
        }
        let e = check_editable(&mut v, &merged);
        v.finish()?;
        row.name = e.name;
        row.description = e.description;
        row.points_cost = e.points_cost;
        row.per_member_limit = e.per_member_limit;
        row.eligible_tiers = e.eligible_tiers;
        row.valid_from = e.valid_from;
        row.valid_until = e.valid_until;
        row.active = e.active;
        store::update_item(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(UpdateCatalogItemResponse {
            item: Some(item_proto(&row)),
        })
    }

    async fn restock(
        &self,
        p: &Principal,
        req: RestockCatalogItemRequest,
    ) -> Result<RestockCatalogItemResponse, ServiceError> {
        p.require_role(&req.program_id, ADMIN)?;
        let mut v = Violations::new();
        check_id(&mut v, "item_id", &req.item_id);
        if req.delta == 0 || req.delta.abs() > MAX_STOCK {
            v.add(
                "delta",
                format!("must be non-zero and at most {MAX_STOCK} units either way"),
            );
        }
        v.finish()?;
        let scope = format!("rewards.RestockCatalogItem/{}", req.program_id);
        let key = req.idempotency_key.clone();
        run_idempotent(&self.rt.db, &scope, &key, &req.clone(), move |tx| {
            Box::pin(async move {
                let item = store::get_item_tx(tx, &req.program_id, &req.item_id)
                    .await?
                    .ok_or_else(|| ServiceError::not_found("catalog item", &req.item_id))?;
                if item.unlimited_stock {
                    return Err(ServiceError::precondition("the item has unlimited stock"));
                }
                if !store::add_stock(tx, &req.program_id, &req.item_id, req.delta).await? {
                    return Err(ServiceError::invalid(
                        "delta",
                        "would take the stock below zero",
                    ));
                }
                let after = store::get_item_tx(tx, &req.program_id, &req.item_id)
                    .await?
                    .ok_or_else(|| ServiceError::not_found("catalog item", &req.item_id))?;
                Ok(RestockCatalogItemResponse {
                    item: Some(item_proto(&after)),
                })
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl CatalogService for CatalogApi {
    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn create_catalog_item(
        &self,
        request: Request<CreateCatalogItemRequest>,
    ) -> Result<Response<CreateCatalogItemResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        Ok(Response::new(self.create(&p, request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn get_catalog_item(
        &self,
        request: Request<GetCatalogItemRequest>,
    ) -> Result<Response<GetCatalogItemResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.authorize_program(&req.program_id)?;
        let mut v = Violations::new();
        check_id(&mut v, "item_id", &req.item_id);
        v.finish()?;
        let item = store::get_item(self.rt.db.pool(), &req.program_id, &req.item_id)
            .await?
            .filter(|i| i.active || !super::super::support::is_member(&p))
            .ok_or_else(|| ServiceError::not_found("catalog item", &req.item_id))?;
        Ok(Response::new(GetCatalogItemResponse {
            item: Some(item_proto(&item)),
        }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn list_catalog_items(
        &self,
        request: Request<ListCatalogItemsRequest>,
    ) -> Result<Response<ListCatalogItemsResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.authorize_program(&req.program_id)?;
        if req.include_inactive {
            p.require_role(&req.program_id, STAFF)?;
        }
        let print = format!("catalog:{}:{}", req.program_id, req.include_inactive);
        let pg = page(req.page.as_ref(), &print)?;
        let rows = store::list_items(
            self.rt.db.pool(),
            &req.program_id,
            req.include_inactive,
            pg.after.as_deref().unwrap_or_default(),
            pg.fetch_limit(),
        )
        .await
        .map_err(Status::from)?;
        let (rows, next) = paging::finish(rows, &pg, &print, |r| r.item_id.clone());
        Ok(Response::new(ListCatalogItemsResponse {
            items: rows.iter().map(item_proto).collect(),
            page: Some(page_response(next)),
        }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn update_catalog_item(
        &self,
        request: Request<UpdateCatalogItemRequest>,
    ) -> Result<Response<UpdateCatalogItemResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        Ok(Response::new(self.update(&p, request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn restock_catalog_item(
        &self,
        request: Request<RestockCatalogItemRequest>,
    ) -> Result<Response<RestockCatalogItemResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        Ok(Response::new(self.restock(&p, request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id, member_id = %request.get_ref().member_id))]
    async fn redeem_reward(
        &self,
        request: Request<RedeemRewardRequest>,
    ) -> Result<Response<RedeemRewardResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        Ok(Response::new(self.redeem(&p, request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn get_redemption(
        &self,
        request: Request<GetRedemptionRequest>,
    ) -> Result<Response<GetRedemptionResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        let mut v = Violations::new();
        check_id(&mut v, "redemption_id", &req.redemption_id);
        v.finish()?;
        let row = self
            .visible_redemption(&p, &req.program_id, &req.redemption_id)
            .await?;
        Ok(Response::new(GetRedemptionResponse {
            redemption: Some(redemption_proto(&row)),
        }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id, member_id = %request.get_ref().member_id))]
    async fn list_redemptions(
        &self,
        request: Request<ListRedemptionsRequest>,
    ) -> Result<Response<ListRedemptionsResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.authorize_member(&req.program_id, &req.member_id)?;
        let print = format!("redemptions:{}:{}", req.program_id, req.member_id);
        let pg = page(req.page.as_ref(), &print)?;
        let rows = store::list_redemptions(
            self.rt.db.pool(),
            &req.program_id,
            &req.member_id,
            pg.after.as_deref(),
            pg.fetch_limit(),
        )
        .await?;
        let (rows, next) = paging::finish(rows, &pg, &print, |r| r.redemption_id.clone());
        Ok(Response::new(ListRedemptionsResponse {
            redemptions: rows.iter().map(redemption_proto).collect(),
            page: Some(page_response(next)),
        }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn fulfil_redemption(
        &self,
        request: Request<FulfilRedemptionRequest>,
    ) -> Result<Response<FulfilRedemptionResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        Ok(Response::new(self.fulfil(&p, request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn cancel_redemption(
        &self,
        request: Request<CancelRedemptionRequest>,
    ) -> Result<Response<CancelRedemptionResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        Ok(Response::new(self.cancel(&p, request.into_inner()).await?))
    }
}
