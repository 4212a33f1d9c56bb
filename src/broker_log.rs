//! What the daemon tells a person about broker failures (issue 16, items
//! 14 to 16): each failure in words an installer can act on, the first
//! failed attempt and then every [`WARN_EVERY`]th at warn with the delay
//! before the next, and a hint when the broker keeps closing sessions
//! right after they start (another client with the same client id).
//!
//! Sans-I/O: [`Failures`] decides from what happened, the MQTT task logs.

use std::time::Duration;

/// After the first failed attempt in a row, every this many are logged at warn.
pub const WARN_EVERY: u32 = 10;

/// A session that ends sooner than this after CONNACK counts as cut short.
const SHORT_SESSION: Duration = Duration::from_secs(5);

/// Sessions cut short in a row before the duplicate-client-id hint.
const SHORT_SESSIONS_HINT: u32 = 3;

/// A broker failure in words, without Rust debug text.
pub fn describe(e: &rumqttc::ConnectionError) -> String {
    use rumqttc::{ConnectReturnCode as Code, ConnectionError as E, StateError as S};
    match e {
        E::Io(io) | E::MqttState(S::Io(io)) => describe_io(io),
        E::NetworkTimeout => "no answer from the broker in time".into(),
        E::FlushTimeout => "the broker did not take what was sent in time".into(),
        E::MqttState(S::AwaitPingResp) => {
            "the broker did not answer a ping within mqtt.keep_alive_s".into()
        }
        E::MqttState(S::Deserialization(d)) => {
            format!("the broker sent a packet that cannot be read ({d})")
        }
        E::MqttState(other) => format!("MQTT protocol error: {other}"),
        E::ConnectionRefused(code) => match code {
            Code::BadUserNamePassword => {
                "the broker refused the connection: wrong mqtt.username or mqtt.password".into()
            }
            Code::NotAuthorized => "the broker refused the connection: not authorized".into(),
            Code::BadClientId => {
                "the broker refused the connection: it does not accept the client id (gateway_id)"
                    .into()
            }
            Code::ServiceUnavailable => {
                "the broker refused the connection: service unavailable".into()
            }
            Code::RefusedProtocolVersion => {
                "the broker refused the connection: it does not speak MQTT 3.1.1".into()
            }
            Code::Success => "the broker refused the connection".into(),
        },
        E::NotConnAck(_) => {
            "the broker answered the connect with something other than CONNACK".into()
        }
        E::RequestsDone => "the connection was closed".into(),
    }
}

fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => {
            "connection refused: is the broker running, on this host and port?".into()
        }
        K::NotFound => "no broker socket at that path (mqtt.socket)".into(),
        K::PermissionDenied => "permission denied opening the broker connection".into(),
        K::TimedOut => "the connection to the broker timed out".into(),
        K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe => {
            "the broker closed the connection".into()
        }
        K::AddrNotAvailable | K::HostUnreachable | K::NetworkUnreachable => {
            "the broker's address cannot be reached".into()
        }
        _ => match e.get_ref() {
            // rumqttc wraps its own messages in `Custom`: take the message.
            Some(inner) => inner.to_string(),
            None => e.to_string(),
        },
    }
}

/// How to log one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Log at warn (else debug).
    pub warn: bool,
    /// Failed attempts in a row (0 for a lost session).
    pub attempt: u32,
    /// The duplicate-client-id hint, when it applies.
    pub hint: Option<String>,
}

/// The run of failures since the last good session.
#[derive(Debug, Default)]
pub struct Failures {
    attempts: u32,
    short_sessions: u32,
}

impl Failures {
    /// A session that had been up for `lived` ended.
    pub fn lost(&mut self, lived: Duration, client_id: &str) -> Report {
        self.attempts = 0;
        if lived < SHORT_SESSION {
            self.short_sessions += 1;
        } else {
            self.short_sessions = 0;
        }
        let hint = (self.short_sessions >= SHORT_SESSIONS_HINT).then(|| {
            format!(
                "the broker closed {} sessions in a row within {} s of accepting them: \
                 another client may be connected with the same client id `{client_id}` \
                 (two gateways with the same gateway_id?)",
                self.short_sessions,
                SHORT_SESSION.as_secs()
            )
        });
        Report {
            warn: true,
            attempt: 0,
            hint,
        }
    }

    /// A connection attempt failed.
    pub fn attempt_failed(&mut self) -> Report {
        self.attempts = self.attempts.saturating_add(1);
        Report {
            warn: self.attempts == 1 || self.attempts.is_multiple_of(WARN_EVERY),
            attempt: self.attempts,
            hint: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_attempt_and_every_tenth_warn() {
        let mut f = Failures::default();
        let warned: Vec<u32> = (0..25)
            .map(|_| f.attempt_failed())
            .filter(|r| r.warn)
            .map(|r| r.attempt)
            .collect();
        assert_eq!(warned, [1, 10, 20]);
        f.lost(Duration::from_secs(60), "gw");
        assert_eq!(f.attempt_failed().attempt, 1, "a session resets the count");
    }

    #[test]
    fn sessions_cut_short_in_a_row_give_the_client_id_hint() {
        let mut f = Failures::default();
        assert!(f.lost(Duration::from_secs(1), "gw-1").hint.is_none());
        assert!(f.lost(Duration::from_secs(1), "gw-1").hint.is_none());
        let hint = f
            .lost(Duration::from_secs(1), "gw-1")
            .hint
            .unwrap_or_default();
        assert!(
            hint.contains("`gw-1`") && hint.contains("same gateway_id"),
            "{hint}"
        );
        assert!(f.lost(Duration::from_secs(40), "gw-1").hint.is_none());
    }

    #[test]
    fn failures_read_as_sentences() {
        use rumqttc::{ConnectReturnCode, ConnectionError, StateError};
        let aborted = std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "connection closed by peer",
        );
        let cases = [
            (
                ConnectionError::MqttState(StateError::Io(aborted)),
                "the broker closed the connection",
            ),
            (
                ConnectionError::Io(std::io::ErrorKind::ConnectionRefused.into()),
                "connection refused: is the broker running, on this host and port?",
            ),
            (
                ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
                "the broker refused the connection: wrong mqtt.username or mqtt.password",
            ),
        ];
        for (e, expected) in cases {
            let text = describe(&e);
            assert_eq!(text, expected);
            assert!(
                !text.contains("Custom {") && !text.contains("kind:"),
                "{text}"
            );
        }
    }
}
