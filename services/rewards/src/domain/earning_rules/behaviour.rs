//! Evaluation of a behaviour (check-in, review, survey, referral,
//! birthday, profile completed) and check-in streaks.

use chrono::{DateTime, NaiveDate, Utc};

use super::{Application, Behaviour, CapUsage, Evaluation, Rule, RuleKind};

/// Everything a behaviour's evaluation depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BehaviourFacts {
    pub behaviour: Behaviour,
    pub at: DateTime<Utc>,
    /// Check-in streak including today (check-ins only; else 0).
    pub streak_days: u32,
}

/// The streak after a check-in on `today`, given the last check-in date and
/// the streak then; `None` when the member already checked in today.
pub fn next_streak(last: Option<NaiveDate>, streak: u32, today: NaiveDate) -> Option<u32> {
    match last {
        Some(d) if d == today => None,
        Some(d) if d.succ_opt() == Some(today) => Some(streak.saturating_add(1)),
        _ => Some(1),
    }
}

/// What a behaviour earns under `rules`, each rule cut to its caps.
pub fn evaluate_behaviour(rules: &[Rule], facts: &BehaviourFacts, used: &CapUsage) -> Evaluation {
    let mut sorted: Vec<&Rule> = rules.iter().filter(|r| r.applies_at(facts.at)).collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut applications = Vec::new();
    for rule in sorted {
        let RuleKind::Behaviour {
            behaviour,
            points,
            streak_bonuses,
        } = &rule.kind
        else {
            continue;
        };
        if *behaviour != facts.behaviour {
            continue;
        }
        let bonus: i64 = streak_bonuses
            .iter()
            .filter(|(days, _)| *days == facts.streak_days)
            .map(|(_, b)| *b)
            .sum();
        let want = points + bonus;
        let granted = rule.cap_room(used).map_or(want, |room| want.min(room));
        let detail = if bonus > 0 {
            format!(
                "{points} + streak bonus {bonus} on day {}",
                facts.streak_days
            )
        } else {
            format!("{points} per {}", behaviour.as_str())
        };
        applications.push(Application {
            rule_id: rule.id.clone(),
            version: rule.version,
            name: rule.name.clone(),
            points: granted,
            capped: want - granted,
            detail,
        });
    }
    Evaluation {
        total: applications.iter().map(|a| a.points).sum(),
        lines: Vec::new(),
        applications,
    }
}
