//! Command checks, in the order protocol section 4 gives them.
//!
//! Pure: the caller passes the state the checks need (links snapshot, the
//! cloud clock, a rate-limit callback, whether the broker is up) and gets a
//! decision. The order matters: a command spends a rate-limit token only
//! after it passed every earlier check (edge rule 8.7).

use crate::links::Snapshot;
use crate::protocol::{Command, Reason, Source};
use crate::topic::{self, FilterSet};

/// What the relay must do with a decoded command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Publish it to the broker.
    Publish,
    /// Answer `rejected` with this reason and message.
    Reject(Reason, String),
}

/// The inputs of the checks that do not come from the frame.
pub struct Context<'a> {
    pub max_payload_bytes: usize,
    /// Cloud-clock unix ms.
    pub now_ms: i64,
    pub links: &'a Snapshot,
    pub command_topics: &'a FilterSet,
    pub broker_connected: bool,
}

/// Runs every check after the frame-shape check (done by the decoder).
pub fn decide(
    cmd: &Command,
    ctx: &Context<'_>,
    spend_token: impl FnOnce(&str) -> bool,
) -> Decision {
    use Decision::Reject;
    if cmd.payload.len() > ctx.max_payload_bytes {
        return Reject(
            Reason::TooLarge,
            format!(
                "payload is {} bytes, relay.max_payload_bytes is {}",
                cmd.payload.len(),
                ctx.max_payload_bytes
            ),
        );
    }
    if let Some(exp) = cmd.expires_at {
        if exp < ctx.now_ms {
            return Reject(
                Reason::Expired,
                format!(
                    "expired {} ms ago (gateway clock with cloud offset)",
                    ctx.now_ms - exp
                ),
            );
        }
    }
    let link = match &cmd.source {
        Source::Link(id) => match ctx.links.get(id) {
            Some(l) => Some(l),
            None => return Reject(Reason::Revoked, "link is revoked or unknown".into()),
        },
        Source::App(_) => None,
    };
    if let Err(e) = topic::validate_name(&cmd.topic) {
        return Reject(Reason::Forbidden, format!("not a valid topic name: {e}"));
    }
    if !ctx.command_topics.matches(&cmd.topic) {
        return Reject(
            Reason::Forbidden,
            "topic not allowed by relay.command_topics".into(),
        );
    }
    if let Some(l) = link {
        if !l.commands.matches(&cmd.topic) {
            return Reject(Reason::Forbidden, "topic not allowed for this link".into());
        }
    }
    if !spend_token(&cmd.source_raw) {
        return Reject(
            Reason::RateLimited,
            "command rate limit of this source exceeded".into(),
        );
    }
    if !ctx.broker_connected {
        return Reject(Reason::Unavailable, "broker not connected".into());
    }
    Decision::Publish
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::{Kind, LinksFile, Origin, Registry};

    fn cmd(source: Source, topic: &str, payload: &[u8], expires_at: Option<i64>) -> Command {
        let source_raw = match &source {
            Source::App(s) => s.clone(),
            Source::Link(l) => format!("link:{l}"),
        };
        Command {
            id: "c-1".into(),
            source_raw,
            source,
            topic: topic.into(),
            payload: payload.to_vec(),
            qos: 1,
            expires_at,
        }
    }

    fn setup() -> (Registry, FilterSet) {
        let r = Registry::from_file(LinksFile::default()).expect("registry");
        r.upsert(
            "alexa-1",
            Kind::Alexa,
            vec![],
            vec!["ampio/to/+/o/+/cmd".into()],
        )
        .expect("link");
        r.upsert("gone", Kind::Google, vec![], vec!["#".into()])
            .expect("link");
        r.revoke("gone", Origin::Cloud, 0);
        (r, FilterSet::new(["ampio/to/#"]).expect("filters"))
    }

    fn run(c: &Command, broker: bool, tokens: bool) -> Decision {
        let (r, f) = setup();
        let snap = r.snapshot();
        let ctx = Context {
            max_payload_bytes: 8,
            now_ms: 1_000,
            links: &snap,
            command_topics: &f,
            broker_connected: broker,
        };
        decide(c, &ctx, |_| tokens)
    }

    fn reason(d: Decision) -> Option<Reason> {
        match d {
            Decision::Publish => None,
            Decision::Reject(r, _) => Some(r),
        }
    }

    #[test]
    fn each_reason_in_order() {
        let app = || Source::App("app".into());
        let ok_topic = "ampio/to/ab/o/1/cmd";
        assert_eq!(
            reason(run(&cmd(app(), ok_topic, b"1", None), true, true)),
            None
        );
        assert_eq!(
            reason(run(
                &cmd(app(), ok_topic, b"123456789", Some(0)),
                true,
                true
            )),
            Some(Reason::TooLarge)
        );
        assert_eq!(
            reason(run(&cmd(app(), "bad/#", b"1", Some(999)), true, true)),
            Some(Reason::Expired)
        );
        assert_eq!(
            reason(run(
                &cmd(Source::Link("gone".into()), "x", b"1", None),
                true,
                true
            )),
            Some(Reason::Revoked)
        );
        assert_eq!(
            reason(run(
                &cmd(Source::Link("never".into()), ok_topic, b"1", None),
                true,
                true
            )),
            Some(Reason::Revoked)
        );
        assert_eq!(
            reason(run(&cmd(app(), "ampio/to/+", b"1", None), false, false)),
            Some(Reason::Forbidden)
        );
        assert_eq!(
            reason(run(&cmd(app(), "ampio/from/x", b"1", None), false, false)),
            Some(Reason::Forbidden)
        );
        assert_eq!(
            reason(run(
                &cmd(
                    Source::Link("alexa-1".into()),
                    "ampio/to/ab/scene",
                    b"1",
                    None
                ),
                true,
                true
            )),
            Some(Reason::Forbidden)
        );
        assert_eq!(
            reason(run(&cmd(app(), ok_topic, b"1", None), false, false)),
            Some(Reason::RateLimited)
        );
        assert_eq!(
            reason(run(&cmd(app(), ok_topic, b"1", None), false, true)),
            Some(Reason::Unavailable)
        );
        assert_eq!(
            reason(run(
                &cmd(Source::Link("alexa-1".into()), ok_topic, b"1", Some(1_000)),
                true,
                true
            )),
            None
        );
    }

    #[test]
    fn rejected_commands_spend_no_token() {
        let (r, f) = setup();
        let snap = r.snapshot();
        let ctx = Context {
            max_payload_bytes: 8,
            now_ms: 0,
            links: &snap,
            command_topics: &f,
            broker_connected: true,
        };
        let mut spent = 0;
        decide(
            &cmd(Source::App("app".into()), "ampio/from/x", b"1", None),
            &ctx,
            |_| {
                spent += 1;
                true
            },
        );
        assert_eq!(spent, 0);
    }
}
