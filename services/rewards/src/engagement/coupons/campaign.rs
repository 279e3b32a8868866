//! CampaignActionRequested with an "issue coupon" action: one coupon per
//! action id (the dedupe key, on top of the inbox's event-id dedupe, so
//! that a campaign re-sending an action under a new event id issues nothing
//! twice).

use std::sync::Arc;

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;
use loyalty_common::events::EventHandler;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_proto::events::campaign_action_requested::Action;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{CouponIssued, EventEnvelope};

use super::store::{self, IssueError, IssueRequest};
use super::vault::CodeVault;
use crate::engagement::support::{emit, now_micros, ts};

pub(crate) struct CampaignCoupons {
    pub rt: Arc<ServiceRuntime>,
}

#[async_trait::async_trait]
impl EventHandler for CampaignCoupons {
    async fn handle(&self, tx: &mut Tx, event: &EventEnvelope) -> Result<(), ServiceError> {
        let Some(Payload::CampaignActionRequested(action)) = &event.payload else {
            return Ok(());
        };
        let Some(Action::IssueCouponPoolId(pool_id)) = &action.action else {
            return Ok(()); // other actions belong to the points core
        };
        if event.member_id.is_empty() || action.action_id.is_empty() {
            tracing::warn!(event_id = %event.event_id, "campaign coupon action without member or action id; skipped");
            return Ok(());
        }
        let request = IssueRequest {
            program_id: &event.program_id,
            pool_id,
            member_id: &event.member_id,
            source: "campaign",
            issue_key: Some(format!("campaign:{}", action.action_id)),
            campaign_id: (!action.campaign_id.is_empty()).then(|| action.campaign_id.clone()),
            now: now_micros(&self.rt),
        };
        let vault = CodeVault::of(&self.rt)?;
        match store::issue(tx, &vault, &request).await {
            Ok((coupon, true)) => {
                emit(
                    tx,
                    &event.program_id,
                    &event.member_id,
                    Payload::CouponIssued(CouponIssued {
                        coupon_id: coupon.coupon_id,
                        pool_id: coupon.pool_id,
                        expires_at: Some(ts(coupon.expires_at)),
                        source: "campaign".into(),
                        campaign_id: action.campaign_id.clone(),
                    }),
                )
                .await?;
                self.rt.outbox.notify();
                Ok(())
            }
            Ok((_, false)) => Ok(()),
            // retrying cannot make a missing or exhausted pool issue
            Err(IssueError::PoolNotFound | IssueError::PoolExhausted) => {
                tracing::warn!(event_id = %event.event_id, pool_id = %pool_id, "campaign coupon not issued: pool missing or exhausted");
                Ok(())
            }
            Err(IssueError::Store(e)) => Err(e),
        }
    }
}
