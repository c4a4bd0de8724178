//! The bus's wire format (`lc3`): the messages on the channels, and the
//! record every instance keeps in the registry.
//!
//! # Messages
//!
//! UTF-8 text of five `\n`-separated fields:
//!
//! ```text
//! lc3
//! <origin: 16 lowercase hex digits>   the publishing bus
//! <seq: lowercase hex>                 the origin's last invalidation number
//! <kind>                               k | p | c | t | h | a
//! <body>                               the key (k), the prefix (p), empty (c),
//!                                      "<generation: hex> <tag>" (t),
//!                                      empty (h), "<origin: 16 hex> <seq: hex>" (a)
//! ```
//!
//! - `k`, `p`, `c`, `t`: an invalidation, on the shared channel. Its `seq` is
//!   1, 2, 3, ... per origin.
//! - `h`: a heartbeat, on the sender's own inbox: it comes back only to the
//!   sender, to show that its subscriber link carries messages.
//! - `a`: an acknowledgement, on the inbox of the invalidation's origin: the
//!   sender has applied that origin's invalidation `seq` here.
//!
//! # Registry records
//!
//! `lc3 <link: n|u|d> <bound ms: hex> e<envelope> <features>`: the wire
//! version the instance speaks, its link as it sees it (`n` just subscribed,
//! `u` up, `d` down and flushing), its down-detection bound, the Redis value
//! envelope it writes, and its feature set (comma-separated, `-` for none).
//!
//! Anything that does not parse is `None`: counted and ignored, never a panic.

use std::fmt;
use std::time::Duration;

use super::Invalidation;

/// Wire format version, first line of every message and first word of a record.
pub(super) const WIRE_VERSION: &str = "lc3";

/// One message: who sent it, its number in that sender's sequence, and what
/// it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Message {
    pub(super) origin: u64,
    pub(super) seq: u64,
    pub(super) body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Body {
    Invalidate(Invalidation),
    /// Sent by an instance to its own inbox every heartbeat interval, with
    /// when it was sent (nanoseconds on the sender's own clock). Only the
    /// sender reads it.
    Heartbeat {
        sent: u64,
    },
    /// The sender applied invalidation `seq` of `origin`.
    Ack {
        origin: u64,
        seq: u64,
    },
}

/// The link state an instance reports in its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LinkReport {
    /// Subscribed; its first heartbeat has not come back yet.
    New,
    Up,
    /// Its own heartbeats stopped coming back: it is flushing its in-process
    /// tiers every interval.
    Down,
}

impl LinkReport {
    fn code(self) -> &'static str {
        match self {
            LinkReport::New => "n",
            LinkReport::Up => "u",
            LinkReport::Down => "d",
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        match code {
            "n" => Some(LinkReport::New),
            "u" => Some(LinkReport::Up),
            "d" => Some(LinkReport::Down),
            _ => None,
        }
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Message {
    /// `lc3\n<origin: 16 hex>\n<seq: hex>\n<kind>\n<body>`.
    pub(super) fn encode(&self) -> String {
        let head = format!("{WIRE_VERSION}\n{:016x}\n{:x}\n", self.origin, self.seq);
        match &self.body {
            Body::Invalidate(Invalidation::Key(k)) => format!("{head}k\n{k}"),
            Body::Invalidate(Invalidation::Prefix(p)) => format!("{head}p\n{p}"),
            Body::Invalidate(Invalidation::Clear) => format!("{head}c\n"),
            Body::Invalidate(Invalidation::Tag { tag, generation }) => {
                format!("{head}t\n{generation:x} {tag}")
            }
            Body::Heartbeat { sent } => format!("{head}h\n{sent:x}"),
            Body::Ack { origin, seq } => format!("{head}a\n{origin:016x} {seq:x}"),
        }
    }

    /// Parses a message; `None` for anything this build does not understand.
    /// Strict: lowercase hex only, no signs, no padding beyond 16 digits, no
    /// trailing fields; never panics.
    pub(super) fn decode(msg: &str) -> Option<Message> {
        let mut parts = msg.splitn(5, '\n');
        if parts.next()? != WIRE_VERSION {
            return None;
        }
        let origin = parts.next().and_then(origin_hex)?;
        let seq = hex(parts.next()?)?;
        let kind = parts.next()?;
        let body = parts.next()?;
        let body = match kind {
            "k" => Body::Invalidate(Invalidation::Key(body.to_owned())),
            "p" => Body::Invalidate(Invalidation::Prefix(body.to_owned())),
            "c" if body.is_empty() => Body::Invalidate(Invalidation::Clear),
            "t" => {
                let (generation, tag) = body.split_once(' ')?;
                Body::Invalidate(Invalidation::Tag {
                    tag: tag.to_owned(),
                    generation: hex(generation)?,
                })
            }
            "h" => Body::Heartbeat { sent: hex(body)? },
            "a" => {
                let (origin, seq) = body.split_once(' ')?;
                Body::Ack {
                    origin: origin_hex(origin)?,
                    seq: hex(seq)?,
                }
            }
            _ => return None,
        };
        Some(Message { origin, seq, body })
    }
}

/// The wire version a message that does not decode claims, if it looks like
/// one of this protocol's (`lc<digits>` on its first line): a peer of another
/// build, not noise.
pub(super) fn foreign_version(msg: &str) -> Option<&str> {
    let first = msg.split('\n').next()?;
    let digits = first.strip_prefix("lc")?;
    (first != WIRE_VERSION && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some(first)
}

/// A lowercase hex number of 1 to 16 digits.
pub(super) fn hex(s: &str) -> Option<u64> {
    let ok =
        (1..=16).contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        u64::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// An instance id: exactly 16 lowercase hex digits.
pub(super) fn origin_hex(s: &str) -> Option<u64> {
    Some(s).filter(|o| o.len() == 16).and_then(hex)
}

/// What an instance writes, as announced in its record: two instances that
/// share a channel must announce the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Build {
    /// The Redis value envelope it writes (see `RedisTier`'s "Values").
    pub(super) envelope: u8,
    /// Its cache-server features that change what it writes or reads.
    pub(super) features: Vec<String>,
}

impl Build {
    /// This build: `tags` when compiled with it.
    pub(super) fn this() -> Build {
        let mut features = Vec::new();
        if cfg!(feature = "tags") {
            features.push("tags".to_owned());
        }
        Build {
            envelope: crate::redis::ENVELOPE_FAMILY,
            features,
        }
    }

    /// Why `self` (this instance) cannot share a channel with `peer`, if it
    /// cannot.
    pub(super) fn incompatibility(&self, peer: &Build) -> Option<String> {
        if self.envelope != peer.envelope {
            return Some(format!(
                "it writes Redis values in envelope family {}, this build in {}",
                peer.envelope, self.envelope
            ));
        }
        let missing_here: Vec<&str> = peer
            .features
            .iter()
            .filter(|f| !self.features.contains(f))
            .map(String::as_str)
            .collect();
        let missing_there: Vec<&str> = self
            .features
            .iter()
            .filter(|f| !peer.features.contains(f))
            .map(String::as_str)
            .collect();
        match (missing_here.is_empty(), missing_there.is_empty()) {
            (true, true) => None,
            (false, _) => Some(format!(
                "it is built with the cache-server feature(s) `{}` and this instance without: \
                 enable `{}` on every instance that shares this channel and its Redis",
                missing_here.join("`, `"),
                missing_here.join("`, `"),
            )),
            (true, false) => Some(format!(
                "this instance is built with the cache-server feature(s) `{}` and it without: \
                 enable `{}` on every instance that shares this channel and its Redis",
                missing_there.join("`, `"),
                missing_there.join("`, `"),
            )),
        }
    }
}

/// One instance's entry in the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) link: LinkReport,
    pub(super) bound: Duration,
    pub(super) build: Build,
}

impl Record {
    pub(super) fn encode(&self) -> String {
        let features = if self.build.features.is_empty() {
            "-".to_owned()
        } else {
            self.build.features.join(",")
        };
        format!(
            "{WIRE_VERSION} {} {:x} e{} {features}",
            self.link.code(),
            millis(self.bound),
            self.build.envelope
        )
    }

    /// A record; `Err` with the wire version it claims when it is not this
    /// build's, `Err(None)` when it does not parse.
    pub(super) fn decode(raw: &str) -> Result<Record, Option<String>> {
        let mut words = raw.split(' ');
        let version = words.next().unwrap_or_default();
        if version != WIRE_VERSION {
            return Err(Some(version.chars().take(16).collect()));
        }
        let mut parse = || -> Option<Record> {
            let link = LinkReport::from_code(words.next()?)?;
            let bound = Duration::from_millis(hex(words.next()?)?);
            let envelope = words.next()?.strip_prefix('e')?.parse().ok()?;
            let features = match words.next()? {
                "-" => Vec::new(),
                list => list.split(',').map(str::to_owned).collect(),
            };
            if words.next().is_some() || features.iter().any(String::is_empty) {
                return None;
            }
            Some(Record {
                link,
                bound,
                build: Build { envelope, features },
            })
        };
        parse().ok_or(None)
    }
}

impl fmt::Display for Build {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "envelope family {}, features [", self.envelope)?;
        write!(f, "{}]", self.features.join(", "))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn msg(body: Body) -> Message {
        Message {
            origin: 0x0123_4567_89ab_cdef,
            seq: 7,
            body,
        }
    }

    #[test]
    fn wire_format_roundtrips() {
        for inv in [
            Invalidation::Key("user:1\nnot-a-field".into()),
            Invalidation::Key("".into()),
            Invalidation::Prefix("".into()),
            Invalidation::Clear,
            Invalidation::Tag {
                tag: "user:1 with spaces\nand a newline".into(),
                generation: u64::MAX,
            },
            Invalidation::Tag {
                tag: "".into(),
                generation: 0,
            },
        ] {
            let m = msg(Body::Invalidate(inv));
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
        let m = Message {
            origin: u64::MAX,
            seq: u64::MAX,
            body: Body::Invalidate(Invalidation::Clear),
        };
        assert_eq!(Message::decode(&m.encode()), Some(m));
        for (origin, seq) in [(0, 0), (u64::MAX, u64::MAX), (0xabc, 1)] {
            let m = msg(Body::Ack { origin, seq });
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
        assert_eq!(
            msg(Body::Ack {
                origin: 0xfeed,
                seq: 0x1f
            })
            .encode(),
            "lc3\n0123456789abcdef\n7\na\n000000000000feed 1f"
        );
        let m = msg(Body::Heartbeat { sent: 0x2a });
        assert_eq!(Message::decode(&m.encode()), Some(m));
        assert_eq!(
            msg(Body::Invalidate(Invalidation::Key("a".into()))).encode(),
            "lc3\n0123456789abcdef\n7\nk\na"
        );
        assert_eq!(
            msg(Body::Heartbeat { sent: 0x2a }).encode(),
            "lc3\n0123456789abcdef\n7\nh\n2a"
        );
    }

    #[test]
    fn wire_format_rejects_garbage() {
        let o = "0123456789abcdef";
        for bad in [
            String::new(),
            "garbage".into(),
            "\n\n\n\n".into(),
            format!("lc2\n{o}\n1\nk\nx"),
            format!("lc3\n{o}\n1\nq\nx"),
            format!("lc3\n{o}\n1\nk"),
            format!("lc3\n{o}\n1"),
            "lc3\nzz\n1\nk\nx".into(),
            "lc3\n123\n1\nk\nx".into(),
            format!("lc3\n{o}0\n1\nk\nx"),
            format!("lc3\n{}\n1\nk\nx", o.to_uppercase()),
            format!("lc3\n{o}\n\nk\nx"),
            format!("lc3\n{o}\n+1\nk\nx"),
            format!("lc3\n{o}\n-1\nk\nx"),
            format!("lc3\n{o}\n11111111111111111\nk\nx"),
            format!("lc3\n{o}\n1 \nk\nx"),
            format!("lc3\n{o}\n1\nc\nx"),
            format!("LC3\n{o}\n1\nk\nx"),
            format!("lc3\n{o}\n1\nh\nu 10"),
            format!("lc3\n{o}\n1\nh"),
            format!("lc3\n{o}\n1\nh\n"),
            format!("lc3\n{o}\n1\nh\n2a "),
            format!("lc3\n{o}\n1\na\n"),
            format!("lc3\n{o}\n1\na\n{o}"),
            format!("lc3\n{o}\n1\na\n{o} "),
            format!("lc3\n{o}\n1\na\nfeed 1"),
            format!("lc3\n{o}\n1\na\n{o} 1 "),
            format!("lc3\n{o}\n1\na\n{o} +1"),
            format!("lc3\n{o}\n1\na\n{o}\n1"),
            format!("lc3\n{o}\n1\nt\nzz tag"),
            format!("lc3\n{o}\n1\nt\nnospace"),
            "lc3\n\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\n1\nk\nx".into(),
        ] {
            assert_eq!(Message::decode(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn another_builds_messages_are_told_apart_from_noise() {
        assert_eq!(foreign_version("lc2\n0123\n1\nk\nx"), Some("lc2"));
        assert_eq!(foreign_version("lc4"), Some("lc4"));
        assert_eq!(foreign_version("lc3\n..."), None, "ours");
        assert_eq!(foreign_version("garbage"), None);
        assert_eq!(foreign_version("lc"), None);
        assert_eq!(foreign_version("lcx\n"), None);
    }

    #[test]
    fn wire_decoder_never_panics_on_arbitrary_bytes() {
        // A small deterministic fuzz: mutate valid messages byte by byte.
        let seeds = [
            msg(Body::Invalidate(Invalidation::Key("user:1".into()))).encode(),
            msg(Body::Invalidate(Invalidation::Clear)).encode(),
            msg(Body::Heartbeat { sent: 0x2a }).encode(),
            msg(Body::Ack {
                origin: 0xfeed,
                seq: 0x1f,
            })
            .encode(),
            Record {
                link: LinkReport::Up,
                bound: Duration::from_secs(3),
                build: Build::this(),
            }
            .encode(),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for seed in seeds {
            for _ in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut bytes = seed.clone().into_bytes();
                let at = (x as usize) % bytes.len();
                bytes[at] = (x >> 32) as u8;
                if x.is_multiple_of(3) {
                    bytes.truncate((x >> 40) as usize % bytes.len());
                }
                let text = String::from_utf8_lossy(&bytes);
                let _ = Message::decode(&text);
                let _ = Record::decode(&text);
                let _ = foreign_version(&text);
            }
        }
    }

    #[test]
    fn records_roundtrip_and_refuse_other_versions() {
        for link in [LinkReport::New, LinkReport::Up, LinkReport::Down] {
            for features in [
                vec![],
                vec!["tags".to_owned()],
                vec!["a".into(), "b".into()],
            ] {
                let r = Record {
                    link,
                    bound: Duration::from_millis(3000),
                    build: Build {
                        envelope: 1,
                        features,
                    },
                };
                assert_eq!(Record::decode(&r.encode()), Ok(r));
            }
        }
        assert_eq!(
            Record {
                link: LinkReport::Up,
                bound: Duration::from_secs(3),
                build: Build {
                    envelope: 1,
                    features: vec!["tags".into()]
                }
            }
            .encode(),
            "lc3 u bb8 e1 tags"
        );
        assert_eq!(Record::decode("lc4 u bb8 e1 -"), Err(Some("lc4".into())));
        for bad in [
            "lc3",
            "lc3 x bb8 e1 -",
            "lc3 u bb8 1 -",
            "lc3 u bb8 e1",
            "lc3 u bb8 e1 - x",
            "lc3 u bb8 e1 a,,b",
        ] {
            assert_eq!(Record::decode(bad), Err(None), "{bad}");
        }
    }

    #[test]
    fn builds_with_other_features_are_incompatible_and_the_message_names_them() {
        let tagged = Build {
            envelope: 1,
            features: vec!["tags".into()],
        };
        let plain = Build {
            envelope: 1,
            features: vec![],
        };
        assert_eq!(tagged.incompatibility(&tagged), None);
        assert_eq!(plain.incompatibility(&plain), None);
        let why = plain.incompatibility(&tagged).unwrap();
        assert!(
            why.contains("`tags`") && why.contains("this instance without"),
            "{why}"
        );
        let why = tagged.incompatibility(&plain).unwrap();
        assert!(
            why.contains("`tags`") && why.contains("this instance is built with"),
            "{why}"
        );
        let other = Build {
            envelope: 2,
            features: vec![],
        };
        assert!(plain.incompatibility(&other).unwrap().contains("envelope"));
    }

    #[test]
    fn this_build_announces_tags_exactly_when_compiled_with_them() {
        assert_eq!(
            Build::this().features.contains(&"tags".to_owned()),
            cfg!(feature = "tags")
        );
    }
}
