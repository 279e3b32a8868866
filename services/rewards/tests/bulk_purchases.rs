//! Purchases that arrive together are recorded together (one set-based
//! write per group commit batch): whatever the batching, every member ends
//! with exactly what the same purchases give one after the other. Two
//! services on fresh databases get the same purchases, one all at once and
//! one sequentially, and are compared through gRPC.

#[path = "ledger_support/mod.rs"]
mod ledger_support;

use std::collections::{BTreeMap, HashSet};

use ledger_support::{PROGRAM, Rewards, cny, line, policy, purchase};
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::TestEngine;
use loyalty_proto::common::Money;
use loyalty_proto::loyalty::rewards::v1 as pb;
use tonic::Code;

test_on_both_engines!(purchases_recorded_together_give_what_they_give_one_by_one);

const MEMBERS: usize = 24;
const PURCHASES: usize = 192;

/// An extra point per yuan of food, at most 300 a day: capped rules make
/// a member's total depend on every purchase of the day, wherever it ran.
fn capped_food_bonus() -> pb::EarningRule {
    pb::EarningRule {
        program_id: PROGRAM.into(),
        name: "food bonus".into(),
        enabled: true,
        kind: Some(pb::earning_rule::Kind::Purchase(pb::PurchaseRule {
            condition: Some(pb::PurchaseCondition {
                categories: vec!["food".into()],
                ..Default::default()
            }),
            reward: Some(pb::purchase_rule::Reward::ExtraPointsPerUnit(1)),
        })),
        caps: vec![pb::RuleCap {
            period: pb::CapPeriod::Day as i32,
            max_points: 300,
        }],
        ..Default::default()
    }
}

/// The i-th purchase: members get several each (so batches hold a member
/// twice), every 16th is sent twice as is (a client retry), every 23rd is
/// in a currency the program does not earn on.
fn request(i: usize) -> pb::RecordPurchaseRequest {
    let mut p = purchase(
        &format!("o{i}"),
        vec![
            line("a", "food", 4_000 + 137 * i as i64),
            line("b", "toys", 1_500 + 11 * i as i64),
        ],
    );
    if i % 23 == 7 {
        let usd = |m: &Option<Money>| {
            Some(Money {
                minor_units: m.as_ref().map_or(0, |m| m.minor_units),
                currency: "USD".into(),
            })
        };
        p.amount = usd(&p.amount);
        for l in &mut p.lines {
            l.amount = usd(&l.amount);
        }
    }
    pb::RecordPurchaseRequest {
        program_id: PROGRAM.into(),
        member_id: format!("m{}", i % MEMBERS),
        purchase: Some(p),
    }
}

fn requests() -> Vec<pb::RecordPurchaseRequest> {
    let mut all = Vec::new();
    for i in 0..PURCHASES {
        all.push(request(i));
        if i % 16 == 3 {
            all.push(request(i));
        }
    }
    all
}

/// What a call came to: points and entry, or the error code.
type Outcome = Result<(i64, String), Code>;

async fn start(engine: TestEngine) -> Rewards {
    let r = Rewards::start(engine).await;
    let mut p = policy();
    p.clawback_policy = pb::ClawbackPolicy::NegativeBalance as i32;
    r.set_policy(p).await;
    r.client()
        .create_earning_rule(r.as_staff(pb::CreateEarningRuleRequest {
            rule: Some(capped_food_bonus()),
        }))
        .await
        .unwrap();
    r
}

/// Each member's (available, pending, lifetime earned).
async fn balances(r: &Rewards) -> BTreeMap<String, (i64, i64, i64)> {
    let mut out = BTreeMap::new();
    for m in 0..MEMBERS {
        let id = format!("m{m}");
        let b = r.balance(&id).await;
        out.insert(id, (b.available, b.pending, b.lifetime_earned));
    }
    out
}

async fn purchases_recorded_together_give_what_they_give_one_by_one(engine: TestEngine) {
    let together = start(engine).await;
    let alone = start(engine).await;
    // a member in debt before the purchases (spent, then refunded):
    // earnings pay it off first
    for r in [&together, &alone] {
        r.buy("m5", purchase("debt", vec![line("a", "toys", 20_000)]))
            .await;
        r.redeem("m5", 200, "spend").await.unwrap();
        r.refund(pb::RecordRefundRequest {
            program_id: PROGRAM.into(),
            order_id: "debt".into(),
            refund_id: "r".into(),
            lines: vec![],
            amount: cny(20_000),
            refunded_at: None,
        })
        .await
        .unwrap();
        assert_eq!(r.balance("m5").await.available, -200);
    }

    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(together.own_client().await);
    }
    let calls: Vec<_> = requests()
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            let mut c = clients[i % clients.len()].clone();
            let q = together.as_backend(q);
            tokio::spawn(async move { c.record_purchase(q).await })
        })
        .collect();
    let mut at_once: Vec<(String, String, Outcome)> = Vec::new();
    for (call, q) in calls.into_iter().zip(requests()) {
        let order = q.purchase.as_ref().unwrap().order_id.clone();
        let outcome = call
            .await
            .unwrap()
            .map(|r| {
                let r = r.into_inner();
                (r.points, r.entry_id)
            })
            .map_err(|s| s.code());
        at_once.push((q.member_id, order, outcome));
    }
    let mut one_by_one = Vec::new();
    for q in requests() {
        let order = q.purchase.as_ref().unwrap().order_id.clone();
        let outcome = alone
            .client()
            .record_purchase(alone.as_backend(q.clone()))
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.points, r.entry_id)
            })
            .map_err(|s| s.code());
        one_by_one.push((q.member_id, order, outcome));
    }

    // the same calls succeed and fail alike
    let codes = |v: &[(String, String, Outcome)]| -> Vec<Result<(), Code>> {
        v.iter()
            .map(|(_, _, o)| o.as_ref().map(drop).map_err(|c| *c))
            .collect()
    };
    assert_eq!(codes(&at_once), codes(&one_by_one));
    assert!(
        at_once
            .iter()
            .any(|(_, _, o)| *o == Err(Code::InvalidArgument)),
        "the foreign-currency purchases are refused"
    );
    // a retried order answers what the first attempt recorded
    let mut first: BTreeMap<&str, &Outcome> = BTreeMap::new();
    for (_, order, outcome) in &at_once {
        if let Some(seen) = first.insert(order, outcome) {
            assert_eq!(seen, outcome, "order {order} answered twice alike");
        }
    }
    // every member earned the same, cap included, and holds the same
    let per_member = |v: &[(String, String, Outcome)]| {
        let mut points: BTreeMap<String, i64> = BTreeMap::new();
        let mut seen = HashSet::new();
        for (m, order, o) in v {
            if let Ok((p, _)) = o
                && seen.insert(order.clone())
            {
                *points.entry(m.clone()).or_default() += p;
            }
        }
        points
    };
    assert_eq!(per_member(&at_once), per_member(&one_by_one));
    assert_eq!(balances(&together).await, balances(&alone).await);
    let (m5, _, _) = balances(&together).await["m5"];
    assert!(m5 > 0, "m5's debt was paid off by its earnings");

    // both ledgers verify, with one entry per earning order
    together.assert_ledger_ok().await;
    alone.assert_ledger_ok().await;
    let mut stamps = BTreeMap::<i64, usize>::new();
    let mut entries = 0;
    for m in 0..MEMBERS {
        let id = format!("m{m}");
        let listed = together.entries(&id).await;
        assert_eq!(listed.len(), alone.entries(&id).await.len(), "{id}");
        for e in listed {
            entries += 1;
            let at = e.created_at.unwrap();
            *stamps
                .entry(at.seconds * 1_000_000 + i64::from(at.nanos) / 1_000)
                .or_default() += 1;
        }
    }
    // the concurrent calls were in fact written together: entries of one
    // set-based write share its instant
    assert!(
        stamps.len() < entries,
        "{entries} entries, {} instants: no purchases were written together",
        stamps.len()
    );
    together.t.stop().await;
    alone.t.stop().await;
}
