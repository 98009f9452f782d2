//! Entry points of the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer): each takes the
//! fuzzer's bytes, hands them to parsers private to the crate, and asserts what those promise
//! beyond not panicking. Compiled only under `--cfg fuzzing`, which `cargo fuzz` sets; not an
//! API.
//!
//! The parsers read bytes an attacker chooses: forwarding headers (any client, relayed by a
//! trusted proxy), the rate-limit headers of a server a client calls (any server), and a Redis
//! reply (anything between the store and Redis).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::headers::{ietf, legacy, openai, retry_after, server};
use crate::key::client_ip::{parse_node, Hops};
use crate::key::{ClientIp, Forwarding};

/// The trusted proxies of the client-IP targets; the peer is always one of them.
fn trusting(header: Forwarding) -> &'static ClientIp {
    static IPS: OnceLock<[ClientIp; 3]> = OnceLock::new();
    let ips = IPS.get_or_init(|| {
        let trusted = [
            "10.0.0.0/8",
            "192.168.1.1",
            "fd00::/8",
            "::ffff:172.16.0.0/108",
        ];
        [
            Forwarding::XForwardedFor,
            Forwarding::Forwarded,
            Forwarding::XRealIp,
        ]
        .map(|h| ClientIp::trusting(trusted).expect("valid").header(h))
    });
    match header {
        Forwarding::Forwarded => &ips[1],
        Forwarding::XRealIp => &ips[2],
        _ => &ips[0],
    }
}

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

/// The client found behind the trusted peer for these field lines of `header`; `None` when
/// a line is no header value at all (the HTTP server would have refused the request).
fn client_of(header: Forwarding, lines: &[&[u8]]) -> Option<Result<IpAddr, ()>> {
    let mut headers = HeaderMap::new();
    for line in lines {
        headers.append(header.header_name(), HeaderValue::from_bytes(line).ok()?);
    }
    let ip = trusting(header);
    let found = ip.client(PEER, &headers);
    if let Ok(client) = found {
        check_walk(ip, header, &headers, client);
    }
    Some(found.map_err(|_| ()))
}

/// The walk's model: the client is the right-most hop that is not a trusted proxy, every hop
/// right of it an address of a trusted proxy; the left-most hop when all are trusted; the
/// peer when there are none. Never a trusted address while an untrusted hop exists.
fn check_walk(ip: &ClientIp, header: Forwarding, headers: &HeaderMap, client: IpAddr) {
    let mut hops = Hops::default();
    for value in headers.get_all(header.header_name()) {
        let text = value.to_str().expect("accepted values are visible ASCII");
        header
            .nodes(text, &mut hops)
            .expect("accepted values follow the grammar");
    }
    let hops = hops.as_slice();
    if hops.is_empty() {
        assert_eq!(client, PEER, "no hops: the peer");
        return;
    }
    if header == Forwarding::XRealIp {
        assert_eq!(hops.len(), 1, "X-Real-IP is one address");
    }
    let mut origin = PEER;
    for node in hops.iter().rev() {
        let hop = parse_node(node).expect("every hop up to the client is an address");
        if !ip.is_trusted(hop) {
            assert_eq!(client, hop, "the right-most untrusted hop: {hops:?}");
            assert!(!ip.is_trusted(client));
            return;
        }
        origin = hop;
    }
    assert_eq!(client, origin, "all trusted: the left-most: {hops:?}");
}

/// Where a value may be cut into field lines without changing what it says: at commas, and
/// for `Forwarded` only outside quoted strings (a comma inside one is text).
fn cut_points(value: &[u8], quoted: bool) -> Vec<usize> {
    separators(value, quoted, b',')
}

/// The positions of `separator` in `value`, outside quoted strings when `quoted`.
fn separators(value: &[u8], quoted: bool, separator: u8) -> Vec<usize> {
    let mut points = Vec::new();
    let (mut in_quote, mut escaped) = (false, false);
    for (i, &b) in value.iter().enumerate() {
        if in_quote {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_quote = false,
                _ => {}
            }
        } else if quoted && b == b'"' {
            in_quote = true;
        } else if b == separator {
            points.push(i);
        }
    }
    points
}

/// A forwarding header: no panic, the walk's model holds, and the value read as one field
/// line or cut into several at commas (RFC 9110 §5.3: the same field) finds the same client,
/// or is refused both ways. `Forwarded` is refused when not well formed: an open quote never
/// swallows what follows.
fn forwarding(header: Forwarding, data: &[u8]) {
    let Some((&mask, value)) = data.split_first() else {
        return;
    };
    let Some(whole) = client_of(header, &[value]) else {
        return;
    };
    // Cut at the commas the mask picks, cycling through its bits.
    let mut lines = Vec::new();
    let mut start = 0;
    for (k, at) in cut_points(value, header == Forwarding::Forwarded)
        .into_iter()
        .enumerate()
    {
        if mask & (1 << (k % 8)) != 0 {
            lines.push(&value[start..at]);
            start = at + 1;
        }
    }
    lines.push(&value[start..]);
    let cut = client_of(header, &lines).expect("pieces of a valid value are valid values");
    assert_eq!(whole, cut, "one line or {lines:?}");
    if header == Forwarding::Forwarded && whole.is_ok() {
        let (mut in_quote, mut escaped) = (false, false);
        for &b in value {
            match (in_quote, escaped, b) {
                (true, true, _) => escaped = false,
                (true, false, b'\\') => escaped = true,
                (_, false, b'"') => in_quote = !in_quote,
                _ => {}
            }
        }
        assert!(!in_quote, "an open quote was accepted");
        // RFC 7239 §4: no parameter twice in one element, however many it has.
        for element in pieces(value, b',') {
            let mut names: Vec<String> = Vec::new();
            for pair in pieces(element, b';') {
                let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                    continue;
                };
                let name = String::from_utf8_lossy(pair[..eq].trim_ascii()).to_ascii_lowercase();
                assert!(!names.contains(&name), "{name} twice in {value:?}");
                names.push(name);
            }
        }
    }
}

/// `value` cut at each `separator` outside quoted strings.
fn pieces(value: &[u8], separator: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for at in separators(value, true, separator) {
        out.push(&value[start..at]);
        start = at + 1;
    }
    out.push(&value[start..]);
    out
}

/// `Forwarded` (RFC 7239) from a trusted proxy.
pub fn forwarded(data: &[u8]) {
    forwarding(Forwarding::Forwarded, data);
}

/// `X-Forwarded-For` or `X-Real-IP` (the first byte's low bit) from a trusted proxy.
pub fn x_forwarded_for(data: &[u8]) {
    let Some(&first) = data.first() else {
        return;
    };
    let header = match first & 1 {
        0 => Forwarding::XForwardedFor,
        _ => Forwarding::XRealIp,
    };
    forwarding(header, &data[1..]);
}

/// What the crate reads of a `RateLimit` or `RateLimit-Policy` value, from the `sfv` crate's
/// List: the items named by a string or token, with the parameters valid.
fn sfv_reference(line: &[u8]) -> Option<(Vec<ietf::ServiceLimit>, Vec<ietf::ServicePolicy>)> {
    let list = sfv::Parser::new(line).parse::<sfv::List>().ok()?;
    let integer = |params: &sfv::Parameters, key: &str| -> Option<Option<u64>> {
        match params.get(key) {
            None => Some(None),
            Some(sfv::BareItem::Integer(i)) => u64::try_from(i64::from(*i)).ok().map(Some),
            Some(_) => None,
        }
    };
    let mut limits = Vec::new();
    let mut policies = Vec::new();
    for entry in &list {
        let sfv::ListEntry::Item(item) = entry else {
            continue;
        };
        let name = match &item.bare_item {
            sfv::BareItem::String(s) => s.as_str().to_owned(),
            sfv::BareItem::Token(t) => t.as_str().to_owned(),
            _ => continue,
        };
        if let (Some(Some(remaining)), Some(reset)) =
            (integer(&item.params, "r"), integer(&item.params, "t"))
        {
            limits.push(ietf::ServiceLimit {
                policy: name.clone(),
                remaining,
                reset: reset.map(Duration::from_secs),
            });
        }
        if let Some(Some(quota)) = integer(&item.params, "q") {
            let counts_requests = match item.params.get("qu") {
                None => true,
                Some(sfv::BareItem::String(s)) => matches!(s.as_str(), "requests" | "request"),
                Some(_) => false,
            };
            policies.push(ietf::ServicePolicy {
                name,
                quota,
                counts_requests,
            });
        }
    }
    Some((limits, policies))
}

/// `RateLimit` and `RateLimit-Policy` (structured fields), against the `sfv` crate: per field
/// line, exactly the items the reference reads from sfv's List, nothing from a value sfv
/// refuses; the same after sfv writes the list back out; and through
/// [`server::read`](crate::headers::server::read), field lines that each parse read as the
/// list joined.
pub fn ratelimit_fields(data: &[u8]) {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').take(4).collect();
    for line in &lines {
        let limits = ietf::parse_ratelimit(line);
        let policies = ietf::parse_policy(line);
        match sfv_reference(line) {
            None => assert!(
                limits.is_empty() && policies.is_empty(),
                "read what sfv refuses: {line:?}"
            ),
            Some((ref_limits, ref_policies)) => {
                assert_eq!(limits, ref_limits, "{line:?}");
                assert_eq!(policies, ref_policies, "{line:?}");
                // What the value says, not how it is written: sfv's own serialisation reads
                // the same.
                let list = sfv::Parser::new(line)
                    .parse::<sfv::List>()
                    .expect("parsed above");
                if let Some(written) = sfv::FieldType::serialize(&list) {
                    assert_eq!(ietf::parse_ratelimit(written.as_bytes()), limits);
                    assert_eq!(ietf::parse_policy(written.as_bytes()), policies);
                }
            }
        }
    }
    // Several field lines: the client reads each line alone (a documented leniency, see
    // `server::ietf_limits`); when every line parses, that is the joined list, as RFC 9651
    // §4.2 reads it. Lines that do not parse alone are skipped here, precisely that case.
    let mut headers = HeaderMap::new();
    let mut joined = Vec::new();
    for line in &lines {
        let Ok(value) = HeaderValue::from_bytes(line) else {
            return;
        };
        if sfv::Parser::new(line).parse::<sfv::List>().is_err() {
            return;
        }
        headers.append(ietf::RATELIMIT, value);
        if !line.iter().all(|&b| b == b' ') {
            if !joined.is_empty() {
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(line);
        }
    }
    let Some((ref_limits, _)) = sfv_reference(&joined) else {
        panic!("lines that parse alone, joined, do not: {joined:?}");
    };
    let per_line: Vec<_> = lines
        .iter()
        .flat_map(|l| ietf::parse_ratelimit(l))
        .collect();
    assert_eq!(per_line, ref_limits, "{joined:?}");
    headers.insert(http::header::DATE, HeaderValue::from_static(DATE));
    let said = server::read(&headers);
    let fewest = ref_limits.iter().map(|l| l.remaining).min();
    assert_eq!(said.limits.map(|l| l.remaining), fewest);
}

/// The `Date` the server-reading targets answer with, for a deterministic "now".
const DATE: &str = "Tue, 14 Nov 2023 22:13:20 GMT";

fn date_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// Seconds with decimals as the legacy readers take them: digits, at most one point, at
/// least one digit.
fn plain_decimal(text: &str) -> bool {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    !(whole.is_empty() && fraction.is_empty())
        && whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
}

/// `Retry-After` (seconds or an HTTP date): a number of seconds is exactly that; a date is
/// one httpdate reads, and reads the same once written back.
pub fn retry_after(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let now = date_now();
    let Some(wait) = retry_after::parse(&value, now) else {
        return;
    };
    let text = value
        .to_str()
        .expect("read values are visible ASCII")
        .trim();
    if text.bytes().all(|b| b.is_ascii_digit()) {
        assert_eq!(Some(wait.as_secs()), text.parse().ok(), "{text:?}");
        assert_eq!(wait.subsec_nanos(), 0);
        return;
    }
    let at = httpdate::parse_http_date(text).expect("a date");
    assert_eq!(wait, at.duration_since(now).unwrap_or(Duration::ZERO));
    let again = HeaderValue::from_str(&httpdate::fmt_http_date(at)).expect("a header value");
    assert_eq!(retry_after::parse(&again, now), Some(wait), "{text:?}");
}

/// The legacy and OpenAI duration readers, the first byte choosing: `X-RateLimit-Reset`
/// (`parse_reset`), `X-RateLimit-Reset-After` (`parse_seconds`), a Go duration.
pub fn durations(data: &[u8]) {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 | 1 => {
            let Ok(value) = HeaderValue::from_bytes(text) else {
                return;
            };
            let read = match which % 3 {
                0 => legacy::parse_reset(&value, date_now()),
                _ => legacy::parse_seconds(&value),
            };
            if read.is_some() {
                let text = value
                    .to_str()
                    .expect("read values are visible ASCII")
                    .trim();
                // No sign, exponent, `inf` or `NaN`: a non-negative integer or decimal.
                assert!(plain_decimal(text), "{text:?} read as {read:?}");
            }
        }
        _ => go_duration(text),
    }
}

/// A Go duration: never more than Go holds, and a sum of its segments: cut where a number
/// begins after a unit, the two halves read add up to the whole.
fn go_duration(text: &[u8]) {
    const GO_MAX: Duration = Duration::from_nanos(i64::MAX as u64);
    let Some(whole) = openai::parse_go_duration(text) else {
        return;
    };
    assert!(whole <= GO_MAX, "{whole:?}");
    let text = text.trim_ascii();
    for at in 1..text.len() {
        let (prev, next) = (text[at - 1], text[at]);
        if next.is_ascii_digit() && !prev.is_ascii_digit() && prev != b'.' {
            let (left, right) = (&text[..at], &text[at..]);
            let (Some(l), Some(r)) = (
                openai::parse_go_duration(left),
                openai::parse_go_duration(right),
            ) else {
                panic!("{text:?} reads, its halves {left:?} {right:?} do not");
            };
            assert_eq!(l + r, whole, "{text:?} cut at {at}");
        }
    }
}

/// The fields the server-reading target picks from (by a line's first byte).
const SERVER_FIELDS: [&str; 21] = [
    "retry-after",
    "date",
    "ratelimit",
    "ratelimit-policy",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-used",
    "x-ratelimit-reset-after",
    "x-ratelimit-resource",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "grpc-retry-pushback-ms",
    "grpc-status",
];

/// What a server says, every dialect at once (lines of `field-index value`), as the retry and
/// learn layers read it, and through the public HTTP and gRPC classifiers: no panic; "stop"
/// only from a negative gRPC pushback on a gRPC response; a delay never shorter than the
/// reset of a limit with nothing left; the classifiers' pushback is that delay.
pub fn server_said(data: &[u8]) {
    use crate::retry::{Classification, Classify, GrpcClassifier, HttpClassifier, Outcome};

    let Some((&shape, data)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&field, value)) = line.split_first() else {
            continue;
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let name = SERVER_FIELDS[usize::from(field) % SERVER_FIELDS.len()];
        headers.append(HeaderName::from_static(name), value);
    }
    // A `Date` that does not parse (or none) makes the reader take the wall clock, and two
    // reads disagree: the fixed one instead.
    let date = headers
        .get(http::header::DATE)
        .and_then(|d| d.to_str().ok());
    if date
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .is_none()
    {
        headers.insert(http::header::DATE, HeaderValue::from_static(DATE));
    }
    if shape & 1 == 1 {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
    }
    let said = server::read(&headers);
    if said.stop {
        assert!(shape & 1 == 1, "a stop from a response that is not gRPC");
    }
    if let Some(limits) = &said.limits {
        if let (0, Some(reset)) = (limits.remaining, limits.reset) {
            if !reset.is_zero() {
                assert!(said.delay >= Some(reset), "{said:?}");
            }
        }
    }
    let status = [200, 403, 408, 429, 500, 503][usize::from(shape >> 1) % 6];
    let mut response = http::Response::new(());
    *response.status_mut() = http::StatusCode::from_u16(status).expect("a status");
    *response.headers_mut() = headers;
    let http = HttpClassifier.classify(Outcome::Response(&response));
    if let Classification::RetryAfter(delay) = http {
        assert_eq!(Some(delay), said.delay);
    }
    // A status the classifier can read (visible ASCII); another is no gRPC status to it.
    let grpc_status = response
        .headers()
        .get("grpc-status")
        .is_some_and(|s| s.to_str().is_ok());
    let grpc = GrpcClassifier.classify(Outcome::Response(&response));
    if let Classification::RetryAfter(delay) = grpc {
        if grpc_status {
            // gRPC's own pushback: milliseconds of an `i64`.
            assert!(delay <= Duration::from_millis(i64::MAX as u64), "{delay:?}");
        } else {
            // No gRPC status: the HTTP status and what the server said, as for HTTP.
            assert_eq!(Some(delay), said.delay);
        }
    }
    let _ = server::forbidden_by_rate_limit(&said);
}

/// A Redis reply from the fuzzer's bytes: the RESP wire format (the first byte odd) or, to
/// reach the arithmetic faster, little-endian `i64`s.
#[cfg(feature = "redis")]
fn redis_integers(data: &[u8]) -> Option<Vec<i64>> {
    let (&mode, rest) = data.split_first()?;
    if mode & 1 == 1 {
        let value = redis::parse_redis_value(rest).ok()?;
        return redis::from_redis_value::<Vec<i64>>(value).ok();
    }
    Some(
        rest.chunks(8)
            .map(|chunk| {
                let mut bytes = [0u8; 8];
                bytes[..chunk.len()].copy_from_slice(chunk);
                i64::from_le_bytes(bytes)
            })
            .collect(),
    )
}

/// A set of `n` quotas, different rates and bursts.
#[cfg(feature = "redis")]
fn quotas(n: usize) -> crate::Quotas {
    crate::Quotas::new((0..n).map(|i| {
        crate::Quota::per_second(1 + 7 * i as u32)
            .and_then(|q| q.with_burst(1 + 3 * i as u32))
            .and_then(|q| q.named(format!("q{i}")))
            .expect("valid")
    }))
    .expect("at most MAX_QUOTAS")
}

/// The decision script's reply (`[now, one number per quota of each decision…]`), split
/// among decisions of the shapes the first bytes choose: the shape is checked, and no
/// decision is allowed where Redis said a quota denies (a negative number) or any shape is
/// wrong.
#[cfg(feature = "redis")]
pub fn redis_answer(data: &[u8]) {
    use crate::quota::MAX_QUOTAS;
    use crate::store::redis::script::Answer;

    if data.len() < 3 {
        return;
    }
    // Counts of 0..=9 quotas per decision (9 is more than a set holds), and a cost of 0..=3.
    let counts: Vec<usize> = data[..2]
        .iter()
        .flat_map(|b| [usize::from(b & 15) % 10, usize::from(b >> 4) % 10])
        .take(1 + usize::from(data[0] & 3))
        .collect();
    let cost = u32::from(data[1] >> 6);
    let Some(raw) = redis_integers(&data[2..]) else {
        return;
    };
    let Some(answers) = Answer::split(&raw, &counts) else {
        return;
    };
    assert_eq!(
        raw.len(),
        1 + counts.iter().sum::<usize>(),
        "{raw:?} {counts:?}"
    );
    assert!(raw[0] >= 0, "a negative time");
    assert!(counts.iter().all(|&n| n <= MAX_QUOTAS));
    let mut at = 1;
    for (answer, &n) in answers.iter().zip(&counts) {
        let numbers = &raw[at..at + n];
        at += n;
        // A set of another length is a wrong shape: no decision.
        if n < MAX_QUOTAS {
            assert!(answer.decision(&quotas(n + 1), cost).is_none());
        }
        if n >= 2 {
            assert!(answer.decision(&quotas(n - 1), cost).is_none());
        }
        if n == 0 || n > MAX_QUOTAS {
            continue;
        }
        let set = quotas(n);
        let decision = answer.decision(&set, cost).expect("the shape fits");
        let denies = numbers.iter().any(|&tat| tat < 0);
        assert_eq!(decision.is_allowed(), !denies, "{numbers:?} cost {cost}");
        for (i, &tat) in numbers.iter().enumerate() {
            let held = if tat >= 0 { tat } else { -(tat + 1) };
            assert_eq!(answer.tat_us(i), held.unsigned_abs());
        }
        // What the layer then writes of it.
        let _ = (
            decision.retry_after(),
            decision.wait(),
            decision.remaining(),
            decision.reset_after(),
        );
        let _ = ietf::ratelimit_value(&set, &decision);
        let _ = legacy::values(&decision, crate::rate_limit::Reset::default());
        let _ = retry_after::value(decision.retry_after());
        // Split among parts (a decision across keys): only lengths that add up.
        let lens = [n / 2, n - n / 2];
        let parts = answer.parts(&lens).expect("lengths that add up");
        assert_eq!(parts.len(), 2);
        assert!(answer.parts(&[n + 1]).is_none());
    }
}

/// `CLUSTER SLOTS` replies (RESP bytes): no panic; a map read gives every key a node among
/// those the reply names; hash tags are what Redis reads.
#[cfg(feature = "redis")]
pub fn redis_slots(data: &[u8]) {
    use crate::store::redis::slots::{parse, slot_of, tag_of, SLOTS};

    let (keys, reply) = data.split_at(data.len().min(16));
    let tag = tag_of(keys);
    assert!(usize::from(slot_of(keys)) < SLOTS);
    if tag.len() < keys.len() {
        // A tag is what the first `{…}` holds, not empty.
        let open = keys.iter().position(|&b| b == b'{').expect("a tag");
        assert!(!tag.is_empty());
        assert_eq!(&keys[open + 1..open + 1 + tag.len()], tag);
        assert_eq!(keys.get(open + 1 + tag.len()), Some(&b'}'));
    }
    let Ok(value) = redis::parse_redis_value(reply) else {
        return;
    };
    let Some(owners) = parse(&value) else {
        return;
    };
    let redis::Value::Array(ranges) = &value else {
        panic!("a map from a reply that is no array");
    };
    let node = owners.node_of(keys);
    assert!(ranges.is_empty() && node == 0 || usize::from(node) < ranges.len());
}
