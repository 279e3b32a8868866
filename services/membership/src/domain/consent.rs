//! Consent per purpose and channel: the known purposes and channels, and
//! the decision whether a member may be contacted.

/// Purposes a consent can be given for.
pub const PURPOSES: [&str; 4] = ["marketing", "analytics", "profiling", "service"];
/// Channels; "any" covers every channel of its purpose.
pub const CHANNELS: [&str; 6] = ["sms", "email", "push", "phone", "mail", "any"];

pub fn check_purpose(p: &str) -> Result<(), String> {
    if PURPOSES.contains(&p) {
        Ok(())
    } else {
        Err(format!("must be one of {}", PURPOSES.join(", ")))
    }
}

pub fn check_channel(c: &str) -> Result<(), String> {
    if CHANNELS.contains(&c) {
        Ok(())
    } else {
        Err(format!("must be one of {}", CHANNELS.join(", ")))
    }
}

/// A recorded consent state, as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentState<'a> {
    pub channel: &'a str,
    pub granted: bool,
}

/// The consent that decides for `channel`: the channel's own record, else
/// the purpose's "any" record. None when nothing was ever recorded (which
/// means no: consent is opt-in).
pub fn deciding<'a, 'b>(
    states: &'b [ConsentState<'a>],
    channel: &str,
) -> Option<&'b ConsentState<'a>> {
    states
        .iter()
        .find(|s| s.channel == channel)
        .or_else(|| states.iter().find(|s| s.channel == "any"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_record_wins_over_any_and_nothing_means_no() {
        let states = [
            ConsentState {
                channel: "any",
                granted: true,
            },
            ConsentState {
                channel: "sms",
                granted: false,
            },
        ];
        assert!(!deciding(&states, "sms").unwrap().granted);
        assert!(deciding(&states, "email").unwrap().granted);
        assert!(deciding(&[], "email").is_none());
        assert!(check_purpose("marketing").is_ok() && check_purpose("spam").is_err());
        assert!(check_channel("push").is_ok() && check_channel("fax").is_err());
    }
}
