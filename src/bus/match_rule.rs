//! Match rules (`AddMatch`/`RemoveMatch`): the text grammar, typed rules, RemoveMatch
//! equality, the canonical form, and the per-message predicate.
//!
//! The parser follows dbus-daemon's tokenizer byte for byte where clients can observe it
//! (no whitespace skipped after `=`, `\'` escapes outside quotes, adjacent pieces
//! concatenated, only the first 16 pairs read), and validates values per key.
//!
//! Eavesdropping (who may see unicasts) is not decided here: [`MatchRule::matches`] only
//! evaluates the rule's own keys. A caller must apply a rule whose `eavesdrop` is false only
//! to messages without a DESTINATION; [`crate::bus::match_index::MatchIndex`] does that.

use super::error::{BusError, ErrorKind};
use crate::wire::message::{self, Arg, Message};
use crate::wire::names;
use std::fmt;
use std::rc::Rc;

/// Longest accepted rule text in bytes; longer is `LimitsExceeded`, not `MatchRuleInvalid`.
pub const MAX_RULE_LEN: usize = 1024;
/// dbus-daemon reads at most this many `key=value` pairs and silently ignores the rest.
pub const MAX_PAIRS: usize = 16;
/// Highest argument index an `argN` key may name.
pub const MAX_ARG_INDEX: u8 = 63;

/// Bus name of the driver; a `sender` rule with this value matches messages the bus emits.
pub const DRIVER_NAME: &str = "org.freedesktop.DBus";

/// Why `AddMatch`/`RemoveMatch` refused a rule text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchError {
    /// Syntax error, unknown key, bad value, duplicate key: `org.freedesktop.DBus.Error.MatchRuleInvalid`.
    Invalid(String),
    /// Rule text longer than [`MAX_RULE_LEN`] bytes: `org.freedesktop.DBus.Error.LimitsExceeded`.
    TooLong,
}

impl MatchError {
    /// The error kind to reply with (a too-long rule is a limit, as in dbus-daemon).
    pub fn kind(&self) -> ErrorKind {
        match self {
            MatchError::Invalid(_) => ErrorKind::MatchRuleInvalid,
            MatchError::TooLong => ErrorKind::LimitsExceeded,
        }
    }
}

impl From<MatchError> for BusError {
    fn from(e: MatchError) -> Self {
        BusError::new(e.kind(), e.to_string())
    }
}

impl fmt::Display for MatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatchError::Invalid(why) => f.write_str(why),
            MatchError::TooLong => write!(f, "Match rule text is longer than {MAX_RULE_LEN} bytes"),
        }
    }
}

impl std::error::Error for MatchError {}

fn invalid(why: impl Into<String>) -> MatchError {
    MatchError::Invalid(why.into())
}

/// The `path` / `path_namespace` key (mutually exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// `path`: PATH equal to the value.
    Exact(Rc<str>),
    /// `path_namespace`: PATH equal to the value or below it; `/` matches every path.
    Namespace(Rc<str>),
}

impl PathMatch {
    /// The object path value.
    pub fn value(&self) -> &Rc<str> {
        match self {
            PathMatch::Exact(v) | PathMatch::Namespace(v) => v,
        }
    }
}

/// How an `argN…` key compares the body argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArgKind {
    /// `argN`: a STRING equal to the value.
    Str,
    /// `argNpath`: a STRING or OBJECT_PATH equal to the value, or one of the two ends with `/`
    /// and is a prefix of the other.
    Path,
    /// `arg0namespace`: a STRING equal to the value or starting with value + `.`.
    Namespace,
}

/// One `argN…` key of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArgMatch {
    /// Argument index, 0..=63.
    pub index: u8,
    /// Comparison kind.
    pub kind: ArgKind,
    /// Value to compare with (any string; validated for `arg0namespace`).
    pub value: Rc<str>,
}

/// A parsed match rule. Absent keys match everything.
///
/// `PartialEq` is RemoveMatch equality: rules compare by their parsed keys, so key order,
/// quoting and spacing of the text do not matter (unlike dbus-daemon, the `path_namespace`
/// value is compared too).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MatchRule {
    /// `type`: message type code (1-4).
    pub msg_type: Option<u8>,
    /// `sender`: bus name (unique or well-known) or `org.freedesktop.DBus`.
    pub sender: Option<Rc<str>>,
    /// `interface`.
    pub interface: Option<Rc<str>>,
    /// `member`.
    pub member: Option<Rc<str>>,
    /// `path` or `path_namespace`.
    pub path: Option<PathMatch>,
    /// `destination` (only ever matches for eavesdropping rules).
    pub destination: Option<Rc<str>>,
    /// `argN`, `argNpath`, `arg0namespace`, sorted by index, each index at most once.
    pub args: Vec<ArgMatch>,
    /// `eavesdrop='true'` (the last `eavesdrop` pair wins).
    pub eavesdrop: bool,
}

/// The parts of a message a match rule looks at. [`Message`] implements it; tests and the
/// index's per-message cache implement it too.
pub trait MatchSubject {
    /// Message type code.
    fn msg_type(&self) -> u8;
    /// PATH header field.
    fn path(&self) -> Option<&str>;
    /// INTERFACE header field.
    fn interface(&self) -> Option<&str>;
    /// MEMBER header field.
    fn member(&self) -> Option<&str>;
    /// DESTINATION header field.
    fn destination(&self) -> Option<&str>;
    /// Top-level body argument `n`, `None` when the body has fewer.
    fn arg(&self, n: usize) -> Option<Arg<'_>>;
}

impl MatchSubject for Message {
    fn msg_type(&self) -> u8 {
        self.msg_type
    }
    fn path(&self) -> Option<&str> {
        Message::path(self)
    }
    fn interface(&self) -> Option<&str> {
        Message::interface(self)
    }
    fn member(&self) -> Option<&str> {
        Message::member(self)
    }
    fn destination(&self) -> Option<&str> {
        Message::destination(self)
    }
    fn arg(&self, n: usize) -> Option<Arg<'_>> {
        Message::arg(self, n)
    }
}

/// Whitespace the tokenizer skips before a key and between key and `=`.
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// Read one value starting at `pos`; returns the unescaped value and the position after the
/// terminating `,` (or the end of input).
fn read_value(b: &[u8], mut pos: usize) -> Result<(String, usize), MatchError> {
    #[derive(PartialEq)]
    enum St {
        Plain,
        Quoted,
        Backslash,
    }
    let mut out = Vec::new();
    let mut st = St::Plain;
    while let Some(&c) = b.get(pos) {
        pos += 1;
        match st {
            St::Plain => match c {
                b'\'' => st = St::Quoted,
                b',' => break,
                b'\\' => st = St::Backslash,
                _ => out.push(c),
            },
            // A backslash only escapes an apostrophe; otherwise both bytes are literal (and a
            // following `,` or `'` loses its meaning, as in dbus-daemon).
            St::Backslash => {
                if c != b'\'' {
                    out.push(b'\\');
                }
                out.push(c);
                st = St::Plain;
            }
            St::Quoted => {
                if c == b'\'' {
                    st = St::Plain;
                } else {
                    out.push(c);
                }
            }
        }
    }
    match st {
        St::Quoted => return Err(invalid("Unbalanced quotation marks in match rule")),
        St::Backslash => out.push(b'\\'),
        St::Plain => {}
    }
    // Only whole UTF-8 sequences were copied (all delimiters are ASCII), so this cannot fail
    // for input that came from a &str; still no panic path.
    let s = String::from_utf8(out).map_err(|_| invalid("Match rule value is not UTF-8"))?;
    Ok((s, pos))
}

fn type_from_str(v: &str) -> Option<u8> {
    match v {
        "method_call" => Some(message::METHOD_CALL),
        "method_return" => Some(message::METHOD_RETURN),
        "error" => Some(message::ERROR),
        "signal" => Some(message::SIGNAL),
        _ => None,
    }
}

fn type_to_str(t: u8) -> &'static str {
    match t {
        message::METHOD_CALL => "method_call",
        message::METHOD_RETURN => "method_return",
        message::ERROR => "error",
        message::SIGNAL => "signal",
        _ => "invalid",
    }
}

/// Append `key='value'` with apostrophes written as `'\''`.
fn push_pair(out: &mut String, key: fmt::Arguments<'_>, value: &str) {
    use fmt::Write;
    if !out.is_empty() {
        out.push(',');
    }
    let _ = out.write_fmt(key);
    out.push_str("='");
    let mut first = true;
    for piece in value.split('\'') {
        if !first {
            out.push_str("'\\''");
        }
        out.push_str(piece);
        first = false;
    }
    out.push('\'');
}

/// `argNpath` comparison: equal, or one side ends with `/` and is a prefix of the other.
fn arg_path_matches(actual: &str, expected: &str) -> bool {
    let (a, e) = (actual.as_bytes(), expected.as_bytes());
    if a.len() < e.len() {
        a.last() == Some(&b'/') && e.starts_with(a)
    } else if e.len() < a.len() {
        e.last() == Some(&b'/') && a.starts_with(e)
    } else {
        a == e
    }
}

/// `path_namespace` comparison; `/` covers every path.
pub(crate) fn in_path_namespace(path: &str, ns: &str) -> bool {
    ns == "/"
        || (path.starts_with(ns) && matches!(path.as_bytes().get(ns.len()), None | Some(b'/')))
}

/// `arg0namespace` comparison.
fn in_name_namespace(actual: &str, ns: &str) -> bool {
    actual.starts_with(ns) && matches!(actual.as_bytes().get(ns.len()), None | Some(b'.'))
}

impl MatchRule {
    /// Parse rule text as `AddMatch`/`RemoveMatch` receive it.
    pub fn parse(text: &str) -> Result<MatchRule, MatchError> {
        if text.len() > MAX_RULE_LEN {
            return Err(MatchError::TooLong);
        }
        let b = text.as_bytes();
        let mut rule = MatchRule::default();
        let mut pos = 0;
        let mut pairs = 0;
        while pairs < MAX_PAIRS && pos < b.len() {
            while b.get(pos).is_some_and(|&c| is_ws(c)) {
                pos += 1;
            }
            let key_start = pos;
            while b.get(pos).is_some_and(|&c| c != b'=' && !is_ws(c)) {
                pos += 1;
            }
            let key = text.get(key_start..pos).unwrap_or("");
            while b.get(pos).is_some_and(|&c| is_ws(c)) {
                pos += 1;
            }
            if key.is_empty() {
                if pos >= b.len() {
                    break; // trailing whitespace (or an empty rule)
                }
                // dbus-daemon silently drops everything from here on; an empty key is a
                // syntax error by the grammar, so say so instead.
                return Err(invalid("Match rule has an empty key"));
            }
            if b.get(pos) != Some(&b'=') {
                return Err(invalid(format!(
                    "Match rule key '{key}' has no subsequent '=' character"
                )));
            }
            let (value, next) = read_value(b, pos + 1)?;
            pos = next;
            rule.apply(key, value)?;
            pairs += 1;
        }
        Ok(rule)
    }

    fn apply(&mut self, key: &str, value: String) -> Result<(), MatchError> {
        fn once<T>(slot: &Option<T>, key: &str) -> Result<(), MatchError> {
            match slot {
                Some(_) => Err(invalid(format!(
                    "Key '{key}' specified twice in match rule"
                ))),
                None => Ok(()),
            }
        }
        fn checked(
            value: String,
            ok: fn(&str) -> bool,
            what: &str,
        ) -> Result<Option<Rc<str>>, MatchError> {
            if ok(&value) {
                Ok(Some(Rc::from(value)))
            } else {
                Err(invalid(format!(
                    "{what} '{value}' in match rule is invalid"
                )))
            }
        }
        match key {
            "type" => {
                once(&self.msg_type, key)?;
                let t = type_from_str(&value).ok_or_else(|| {
                    invalid(format!("Invalid message type '{value}' in match rule"))
                })?;
                self.msg_type = Some(t);
            }
            "sender" => {
                once(&self.sender, key)?;
                self.sender = checked(value, names::is_valid_bus_name, "Sender name")?;
            }
            "interface" => {
                once(&self.interface, key)?;
                self.interface = checked(value, names::is_valid_interface, "Interface name")?;
            }
            "member" => {
                once(&self.member, key)?;
                self.member = checked(value, names::is_valid_member, "Member name")?;
            }
            "destination" => {
                once(&self.destination, key)?;
                self.destination = checked(value, names::is_valid_bus_name, "Destination name")?;
            }
            "path" | "path_namespace" => {
                if self.path.is_some() {
                    return Err(invalid(
                        "path or path_namespace specified twice in match rule",
                    ));
                }
                let v = checked(value, names::is_valid_object_path, "Path")?;
                self.path = v.map(|v| {
                    if key == "path" {
                        PathMatch::Exact(v)
                    } else {
                        PathMatch::Namespace(v)
                    }
                });
            }
            "eavesdrop" => {
                self.eavesdrop = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(invalid(format!(
                            "eavesdrop='{value}' is invalid, it should be 'true' or 'false'"
                        )))
                    }
                };
            }
            _ if key.starts_with("arg") => self.apply_arg(key, value)?,
            _ => return Err(invalid(format!("Unknown key '{key}' in match rule"))),
        }
        Ok(())
    }

    fn apply_arg(&mut self, key: &str, value: String) -> Result<(), MatchError> {
        let rest = key.get(3..).unwrap_or("");
        let n_digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if n_digits == 0 {
            return Err(invalid(format!(
                "Key '{key}' in match rule starts with 'arg' but lacks an argument number"
            )));
        }
        let (digits, suffix) = rest.split_at(n_digits);
        // Saturating so absurdly long numbers are simply "too big", never an overflow.
        let n = digits.bytes().fold(0u32, |n, d| {
            n.saturating_mul(10).saturating_add(u32::from(d - b'0'))
        });
        let kind = match suffix {
            "" => ArgKind::Str,
            "path" => ArgKind::Path,
            // Only the exact spelling: dbus-daemon compares the whole key.
            "namespace" if key == "arg0namespace" => ArgKind::Namespace,
            _ => {
                return Err(invalid(format!(
                    "Key '{key}' in match rule has junk after the argument number; only \
                     'argNpath' and 'arg0namespace' are valid"
                )))
            }
        };
        let index = match u8::try_from(n) {
            Ok(i) if i <= MAX_ARG_INDEX => i,
            _ => {
                return Err(invalid(format!(
                    "Key '{key}' in match rule has an argument number above {MAX_ARG_INDEX}"
                )))
            }
        };
        if kind == ArgKind::Namespace && !names::is_valid_namespace(&value) {
            return Err(invalid(format!(
                "arg0namespace='{value}' is not a valid prefix of a bus name"
            )));
        }
        let at = match self.args.binary_search_by_key(&index, |a| a.index) {
            Ok(_) => {
                return Err(invalid(format!(
                    "Argument {index} matched more than once in match rule"
                )))
            }
            Err(at) => at,
        };
        self.args.insert(
            at,
            ArgMatch {
                index,
                kind,
                value: Rc::from(value),
            },
        );
        Ok(())
    }

    /// The canonical text (GetAllMatchRules, logs): keys in the order `type, interface,
    /// member, path|path_namespace, sender, destination, eavesdrop, args…`, values in single
    /// quotes with apostrophes written as `'\''`. Parsing it gives back an equal rule.
    pub fn canonical(&self) -> String {
        let mut out = String::with_capacity(64);
        if let Some(t) = self.msg_type {
            push_pair(&mut out, format_args!("type"), type_to_str(t));
        }
        if let Some(v) = &self.interface {
            push_pair(&mut out, format_args!("interface"), v);
        }
        if let Some(v) = &self.member {
            push_pair(&mut out, format_args!("member"), v);
        }
        match &self.path {
            Some(PathMatch::Exact(v)) => push_pair(&mut out, format_args!("path"), v),
            Some(PathMatch::Namespace(v)) => push_pair(&mut out, format_args!("path_namespace"), v),
            None => {}
        }
        if let Some(v) = &self.sender {
            push_pair(&mut out, format_args!("sender"), v);
        }
        if let Some(v) = &self.destination {
            push_pair(&mut out, format_args!("destination"), v);
        }
        if self.eavesdrop {
            push_pair(&mut out, format_args!("eavesdrop"), "true");
        }
        for a in &self.args {
            let suffix = match a.kind {
                ArgKind::Str => "",
                ArgKind::Path => "path",
                ArgKind::Namespace => "namespace",
            };
            push_pair(&mut out, format_args!("arg{}{}", a.index, suffix), &a.value);
        }
        out
    }

    /// Does `msg` satisfy every key of this rule?
    ///
    /// `sender_is(v)` must say whether the message's sender answers to bus name `v` (is its
    /// current primary owner or has that unique name; for messages the bus emits, whether
    /// `v` is `org.freedesktop.DBus`). `dest_is(v)` must say whether the addressed recipient
    /// answers to `v` (or, when it is not known yet, whether DESTINATION equals `v`); it is
    /// only called for messages that have a DESTINATION, since `destination` never matches
    /// broadcasts.
    ///
    /// Eavesdropping is the caller's job: a rule with `eavesdrop == false` must only be
    /// applied to messages without DESTINATION.
    pub fn matches<M: MatchSubject + ?Sized>(
        &self,
        msg: &M,
        sender_is: impl Fn(&str) -> bool,
        dest_is: impl Fn(&str) -> bool,
    ) -> bool {
        if self.msg_type.is_some_and(|t| t != msg.msg_type()) {
            return false;
        }
        if let Some(want) = &self.interface {
            if msg.interface() != Some(&**want) {
                return false;
            }
        }
        if let Some(want) = &self.member {
            if msg.member() != Some(&**want) {
                return false;
            }
        }
        match &self.path {
            Some(PathMatch::Exact(want)) if msg.path() != Some(&**want) => return false,
            Some(PathMatch::Namespace(ns)) => match msg.path() {
                Some(p) if in_path_namespace(p, ns) => {}
                _ => return false,
            },
            Some(PathMatch::Exact(_)) | None => {}
        }
        if let Some(want) = &self.sender {
            if !sender_is(want) {
                return false;
            }
        }
        if let Some(want) = &self.destination {
            if msg.destination().is_none() || !dest_is(want) {
                return false;
            }
        }
        self.args
            .iter()
            .all(|a| match (a.kind, msg.arg(usize::from(a.index))) {
                (ArgKind::Str, Some(Arg::Str(s))) => s == &*a.value,
                (ArgKind::Path, Some(Arg::Str(s) | Arg::Path(s))) => arg_path_matches(s, &a.value),
                (ArgKind::Namespace, Some(Arg::Str(s))) => in_name_namespace(s, &a.value),
                _ => false,
            })
    }
}

impl fmt::Display for MatchRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plain message for tests (Message::parse lives elsewhere).
    #[derive(Debug, Clone, Default)]
    pub(crate) struct TestMsg {
        pub msg_type: u8,
        pub path: Option<String>,
        pub interface: Option<String>,
        pub member: Option<String>,
        pub destination: Option<String>,
        /// (is_path, value); `None` entries stand for a non-string argument.
        pub args: Vec<Option<(bool, String)>>,
    }

    impl MatchSubject for TestMsg {
        fn msg_type(&self) -> u8 {
            self.msg_type
        }
        fn path(&self) -> Option<&str> {
            self.path.as_deref()
        }
        fn interface(&self) -> Option<&str> {
            self.interface.as_deref()
        }
        fn member(&self) -> Option<&str> {
            self.member.as_deref()
        }
        fn destination(&self) -> Option<&str> {
            self.destination.as_deref()
        }
        fn arg(&self, n: usize) -> Option<Arg<'_>> {
            Some(match self.args.get(n)? {
                Some((false, s)) => Arg::Str(s),
                Some((true, s)) => Arg::Path(s),
                None => Arg::Other,
            })
        }
    }

    fn sig() -> TestMsg {
        TestMsg {
            msg_type: message::SIGNAL,
            path: Some("/a/b".into()),
            interface: Some("org.ex.I".into()),
            member: Some("Changed".into()),
            ..Default::default()
        }
    }

    fn p(s: &str) -> MatchRule {
        match MatchRule::parse(s) {
            Ok(r) => r,
            Err(e) => panic!("{s:?} failed: {e}"),
        }
    }

    fn bad(s: &str) {
        match MatchRule::parse(s) {
            Err(MatchError::Invalid(_)) => {}
            other => panic!("{s:?} should be MatchRuleInvalid, got {other:?}"),
        }
    }

    fn arg0(r: &MatchRule) -> &str {
        &r.args[0].value
    }

    fn any(_: &str) -> bool {
        true
    }
    fn none(_: &str) -> bool {
        false
    }

    #[test]
    fn empty_and_whitespace_rules_match_everything() {
        for s in ["", "   ", " \t\r\n", "type=signal,", "type=signal,  "] {
            let r = p(s);
            assert!(r.matches(&sig(), none, none), "{s:?}");
        }
        assert_eq!(p(""), MatchRule::default());
    }

    #[test]
    fn no_whitespace_after_equals() {
        bad("type='signal'  ,member='X'");
        bad("type= signal");
        bad("type=signal ");
        let r = p("  type  ='signal',\tmember\n=X");
        assert_eq!(r.msg_type, Some(message::SIGNAL));
        assert_eq!(r.member.as_deref(), Some("X"));
        assert_eq!(p("type=signal"), p("type='signal'"));
    }

    #[test]
    fn quoting_and_escapes() {
        assert_eq!(arg0(&p(r"arg0='it'\''s'")), "it's");
        assert_eq!(arg0(&p("arg0='it''s'")), "its");
        assert_eq!(arg0(&p(r"arg0=it\'s")), "it's");
        assert_eq!(arg0(&p(r"arg0=a\b")), r"a\b");
        assert_eq!(arg0(&p(r"arg0=a\")), r"a\");
        assert_eq!(arg0(&p(r"arg0='a\b'")), r"a\b");
        // A backslash makes the next byte literal, even a comma.
        assert_eq!(arg0(&p(r"arg0=a\,b")), r"a\,b");
        assert_eq!(arg0(&p("arg0='a,b'")), "a,b");
        assert_eq!(arg0(&p("arg0=ab'c d'e")), "abc de");
        assert_eq!(arg0(&p("arg0=")), "");
        assert_eq!(arg0(&p("arg0=''")), "");
        assert_eq!(arg0(&p("arg0='héllo ✓'")), "héllo ✓");
        bad("arg0='unbalanced");
        bad("arg0=x'");
        bad(r"arg0='a\'b'"); // inside quotes \ is literal, so the quote closes, then reopens
    }

    #[test]
    fn key_errors() {
        bad("type");
        bad("type signal");
        bad("type='signal',member");
        bad("=signal");
        bad("type=signal,,member=X");
        bad(",type=signal");
        bad("Type=signal");
        bad("foo=bar");
        bad("type=signal,type=signal");
        bad("sender=a.b,sender=a.b");
        bad("interface=a.b,interface=a.b");
        bad("member=M,member=M");
        bad("destination=a.b,destination=a.b");
        bad("path=/a,path=/a");
        bad("path=/a,path_namespace=/a");
        bad("path_namespace=/a,path=/a");
        bad("path_namespace=/a,path_namespace=/b");
    }

    #[test]
    fn value_validation() {
        for t in ["signal", "method_call", "method_return", "error"] {
            p(&format!("type={t}"));
        }
        bad("type=bogus");
        bad("type=");
        bad("type=Signal");
        p("sender=:1.0");
        p("sender=org.freedesktop.DBus");
        bad("sender='not valid'");
        bad("sender=");
        bad("sender=single");
        p("interface=a.b");
        bad("interface=a");
        bad("interface=a-b.c");
        p("member=Foo_1");
        bad("member=a.b");
        bad("member=1a");
        p("path=/");
        p("path=/a/b_c");
        bad("path=/a/");
        bad("path=a");
        bad("path=");
        p("path_namespace=/");
        bad("path_namespace=/a//b");
        p("destination=:1.5");
        bad("destination=x");
        assert!(p("eavesdrop=true").eavesdrop);
        assert!(!p("eavesdrop=false").eavesdrop);
        bad("eavesdrop=yes");
        bad("eavesdrop=");
        // Repeatable, last wins.
        assert!(!p("eavesdrop=true,eavesdrop=false").eavesdrop);
        assert!(p("eavesdrop=false,eavesdrop='true'").eavesdrop);
    }

    #[test]
    fn arg_keys() {
        let r = p("arg63=x,arg5path=/p/,arg0namespace=a.b");
        assert_eq!(
            r.args.iter().map(|a| (a.index, a.kind)).collect::<Vec<_>>(),
            vec![
                (0, ArgKind::Namespace),
                (5, ArgKind::Path),
                (63, ArgKind::Str)
            ]
        );
        assert_eq!(p("arg00=x"), p("arg0=x"));
        bad("arg64=x");
        bad("arg99999999999999999999999=x");
        bad("arg=x");
        bad("argx=x");
        bad("arg0foo=x");
        bad("arg1namespace=a");
        bad("arg00namespace=a");
        bad("arg0Path=/");
        bad("arg0=x,arg0=y");
        bad("arg0=x,arg0path=/x");
        bad("arg0path=/x,arg0namespace=a");
        bad("arg0namespace=a,arg0=a");
        p("arg0namespace=a");
        p("arg0namespace=a-b.c_d");
        bad("arg0namespace=1a");
        bad("arg0namespace=");
        bad("arg0namespace=a.");
        bad("arg0namespace=a..b");
        // argN and argNpath take any string.
        p("arg3='any thing, really'");
        p("arg3path=not/a/path");
    }

    #[test]
    fn only_first_16_pairs() {
        let text: String = (0..20)
            .map(|i| format!("arg{i}='v{i}'"))
            .collect::<Vec<_>>()
            .join(",");
        let r = p(&text);
        assert_eq!(r.args.len(), 16);
        assert_eq!(r.args.last().map(|a| a.index), Some(15));
        // Garbage after the 16th pair is never looked at.
        let text: String = (0..16)
            .map(|i| format!("arg{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        p(&format!("{text},bogus=1,type=nope,'unbalanced"));
        bad(&format!("{}bogus=1", &text[..text.len() - "arg15=v".len()]));
    }

    #[test]
    fn length_limit() {
        let at_limit = format!("arg0='{}'", "x".repeat(MAX_RULE_LEN - 7));
        assert_eq!(at_limit.len(), MAX_RULE_LEN);
        p(&at_limit);
        let over = format!("arg0='{}'", "x".repeat(MAX_RULE_LEN - 6));
        assert_eq!(MatchRule::parse(&over), Err(MatchError::TooLong));
        // Length wins over syntax errors.
        assert_eq!(
            MatchRule::parse(&"'".repeat(2000)),
            Err(MatchError::TooLong)
        );
        assert_eq!(MatchError::TooLong.kind(), ErrorKind::LimitsExceeded);
        assert_eq!(invalid("x").kind(), ErrorKind::MatchRuleInvalid);
        assert_eq!(
            BusError::from(invalid("why")),
            BusError::new(ErrorKind::MatchRuleInvalid, "why")
        );
        assert!(MatchError::TooLong.to_string().contains("1024"));
        assert_eq!(invalid("why").to_string(), "why");
    }

    #[test]
    fn canonical_form() {
        let r = p(
            "arg2='x',arg0namespace='z',eavesdrop='true',destination=':1.1',\
                   sender=':1.0',path_namespace='/o',member='M',interface='a.b',type='signal'",
        );
        let c = "type='signal',interface='a.b',member='M',path_namespace='/o',sender=':1.0',\
                 destination=':1.1',eavesdrop='true',arg0namespace='z',arg2='x'";
        assert_eq!(r.canonical(), c);
        assert_eq!(r.to_string(), c);
        assert_eq!(p(c), r);
        let r = p(r"arg0='it'\''s',arg1path='/a/',path='/p',eavesdrop=false");
        assert_eq!(r.canonical(), r"path='/p',arg0='it'\''s',arg1path='/a/'");
        assert_eq!(p(&r.canonical()), r);
        assert_eq!(p("").canonical(), "");
        assert_eq!(p("arg0=''''").canonical(), "arg0=''");
        assert_eq!(p(r"arg0=\'\'").canonical(), r"arg0=''\'''\'''");
        for t in ["signal", "method_call", "method_return", "error"] {
            let r = p(&format!("type={t}"));
            assert_eq!(p(&r.canonical()), r);
        }
    }

    #[test]
    fn remove_match_equality() {
        assert_eq!(p("type='signal',member='Q'"), p("member=Q,type=signal"));
        assert_eq!(p(" interface ='a.b', "), p("interface=a.b"));
        assert_ne!(p("path_namespace='/a'"), p("path_namespace='/b'"));
        assert_ne!(p("path='/a'"), p("path_namespace='/a'"));
        assert_ne!(p("arg0='a'"), p("arg0path='a'"));
        assert_ne!(p("arg0='a'"), p("arg0namespace='a'"));
        assert_ne!(p("arg0path='a'"), p("arg0namespace='a'"));
        assert_ne!(p("arg0='a'"), p("arg1='a'"));
        assert_eq!(p("eavesdrop=false"), p(""));
        assert_ne!(p("eavesdrop=true"), p(""));
        assert_ne!(p("type=signal"), p("type=error"));
        assert_eq!(p("arg1=b,arg0=a"), p("arg0=a,arg1=b"));
    }

    #[test]
    fn header_keys_match() {
        let m = sig();
        assert!(p("type=signal").matches(&m, none, none));
        assert!(!p("type=method_call").matches(&m, none, none));
        assert!(p("interface=org.ex.I").matches(&m, none, none));
        assert!(!p("interface=org.ex.J").matches(&m, none, none));
        let mut no_iface = m.clone();
        no_iface.interface = None;
        assert!(!p("interface=org.ex.I").matches(&no_iface, none, none));
        assert!(p("member=Changed").matches(&no_iface, none, none));
        assert!(!p("member=Other").matches(&m, none, none));
        let mut no_member = m.clone();
        no_member.member = None;
        assert!(!p("member=Changed").matches(&no_member, none, none));
        assert!(p("path=/a/b").matches(&m, none, none));
        assert!(!p("path=/a").matches(&m, none, none));
        for ns in ["/", "/a", "/a/b"] {
            assert!(
                p(&format!("path_namespace={ns}")).matches(&m, none, none),
                "{ns}"
            );
        }
        for ns in ["/a/b/c", "/a/bb", "/b"] {
            assert!(
                !p(&format!("path_namespace={ns}")).matches(&m, none, none),
                "{ns}"
            );
        }
        let mut ab = m.clone();
        ab.path = Some("/ab".into());
        assert!(!p("path_namespace=/a").matches(&ab, none, none));
        let mut no_path = m.clone();
        no_path.path = None;
        assert!(!p("path_namespace=/").matches(&no_path, none, none));
        assert!(!p("path=/a/b").matches(&no_path, none, none));
        // Unknown message types only match rules without `type`.
        let mut odd = m.clone();
        odd.msg_type = 9;
        assert!(p("member=Changed").matches(&odd, none, none));
        assert!(!p("type=signal").matches(&odd, none, none));
    }

    #[test]
    fn sender_and_destination_use_callbacks() {
        let m = sig();
        let r = p("sender=org.ex.Svc");
        assert!(r.matches(&m, |s| s == "org.ex.Svc", none));
        assert!(!r.matches(&m, |s| s == ":1.4", none));
        let r = p("destination=:1.7,eavesdrop=true");
        // Broadcasts never match a destination key, whatever the callback says.
        assert!(!r.matches(&m, none, any));
        let mut uni = m.clone();
        uni.destination = Some("org.ex.Other".into());
        assert!(r.matches(&uni, none, |d| d == ":1.7"));
        assert!(!r.matches(&uni, none, |d| d == ":1.8"));
    }

    fn with_arg(is_path: bool, v: &str) -> TestMsg {
        let mut m = sig();
        m.args = vec![Some((is_path, v.to_string()))];
        m
    }

    #[test]
    fn arg_string_match() {
        let r = p("arg0=foo");
        assert!(r.matches(&with_arg(false, "foo"), none, none));
        assert!(!r.matches(&with_arg(false, "foobar"), none, none));
        assert!(!r.matches(&with_arg(false, "fo"), none, none));
        assert!(
            !r.matches(&with_arg(true, "foo"), none, none),
            "object paths are not strings"
        );
        assert!(!r.matches(&sig(), none, none), "missing argument");
        let mut other = sig();
        other.args = vec![None];
        assert!(!r.matches(&other, none, none));
        let r = p("arg2=z");
        let mut m = sig();
        m.args = vec![None, Some((false, "y".into())), Some((false, "z".into()))];
        assert!(r.matches(&m, none, none));
        assert!(!p("arg1=z").matches(&m, none, none));
        assert!(p("arg0=''").matches(&with_arg(false, ""), none, none));
    }

    #[test]
    fn arg_path_examples() {
        let r = p("arg0path='/aa/bb/'");
        for yes in ["/", "/aa/", "/aa/bb/", "/aa/bb/cc/", "/aa/bb/cc"] {
            assert!(r.matches(&with_arg(false, yes), none, none), "{yes}");
            assert!(r.matches(&with_arg(true, yes), none, none), "{yes} as path");
        }
        for no in ["/aa/b", "/aa", "/aa/bb", "", "/ab/"] {
            assert!(!r.matches(&with_arg(false, no), none, none), "{no}");
        }
        let r = p("arg0path='/aa/bb'");
        assert!(r.matches(&with_arg(true, "/aa/bb"), none, none));
        assert!(r.matches(&with_arg(true, "/aa/"), none, none));
        assert!(!r.matches(&with_arg(true, "/aa/bb/cc"), none, none));
        assert!(!r.matches(&with_arg(true, "/aa/bb/"), none, none));
        let mut other = sig();
        other.args = vec![None];
        assert!(!p("arg0path=/").matches(&other, none, none));
        assert!(p("arg0path=''").matches(&with_arg(false, ""), none, none));
        assert!(!p("arg0path=''").matches(&with_arg(false, "/"), none, none));
    }

    #[test]
    fn arg0namespace_match() {
        let r = p("arg0namespace=org.ex");
        assert!(r.matches(&with_arg(false, "org.ex"), none, none));
        assert!(r.matches(&with_arg(false, "org.ex.App"), none, none));
        assert!(!r.matches(&with_arg(false, "org.exa"), none, none));
        assert!(!r.matches(&with_arg(false, "org"), none, none));
        assert!(!r.matches(&with_arg(true, "org.ex"), none, none));
        assert!(p("arg0namespace=a").matches(&with_arg(false, "a.b"), none, none));
    }

    #[test]
    fn all_keys_are_anded() {
        let r = p(
            "type=signal,interface=org.ex.I,member=Changed,path_namespace=/a,\
                   sender=:1.1,arg0=x",
        );
        let mut m = sig();
        m.args = vec![Some((false, "x".into()))];
        assert!(r.matches(&m, |s| s == ":1.1", none));
        assert!(!r.matches(&m, |s| s == ":1.2", none));
        m.args = vec![Some((false, "y".into()))];
        assert!(!r.matches(&m, |s| s == ":1.1", none));
    }

    /// Random texts built from the grammar's special pieces: parsing never panics, and every
    /// accepted rule survives a trip through its canonical form.
    #[test]
    fn random_texts_roundtrip() {
        const PIECES: &[&str] = &[
            "'",
            "\\",
            ",",
            "=",
            " ",
            "\t",
            "a",
            "arg0",
            "arg1path",
            "arg0namespace",
            "type",
            "signal",
            "sender",
            ":1.2",
            "interface",
            "a.b",
            "member",
            "M",
            "path",
            "/",
            "path_namespace",
            "/x",
            "destination",
            "eavesdrop",
            "true",
            "é",
            "''",
            "\\'",
        ];
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let len = next(12);
            let text: String = (0..len).map(|_| PIECES[next(PIECES.len())]).collect();
            if let Ok(rule) = MatchRule::parse(&text) {
                accepted += 1;
                let c = rule.canonical();
                assert_eq!(
                    MatchRule::parse(&c).as_ref(),
                    Ok(&rule),
                    "{text:?} -> {c:?}"
                );
            }
        }
        assert!(accepted > 500, "only {accepted} accepted");
    }

    #[test]
    fn helpers_edge_cases() {
        assert!(in_path_namespace("/", "/"));
        assert!(!in_path_namespace("/", "/a"));
        assert!(in_path_namespace("/a", "/a"));
        assert!(arg_path_matches("", ""));
        assert!(!arg_path_matches("", "/"));
        assert!(!arg_path_matches("/", ""));
        assert!(in_name_namespace("a", "a"));
        assert!(!in_name_namespace("", "a"));
        assert_eq!(PathMatch::Exact("/x".into()).value().as_ref(), "/x");
    }
}
