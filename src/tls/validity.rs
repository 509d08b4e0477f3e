//! The end of a certificate's validity (`notAfter`), read from its DER encoding for the
//! `scoregate_certificate_expiry_timestamp_seconds` gauge.
//!
//! Only the path to `tbsCertificate.validity` is walked (RFC 5280 §4.1): no extension, name or
//! signature is interpreted, so a small reader does the job a full X.509 parser would.
//! Anything unexpected yields `None`, never a panic.

/// `notAfter` of a DER certificate as Unix seconds.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] EXPLICIT version, absent for v1 certificates.
    if let Some((0xA0, _, after)) = tlv(rest) {
        rest = after;
    }
    // serialNumber, signature, issuer: skipped.
    for expected in [0x02, 0x30, 0x30] {
        let (tag, _, after) = tlv(rest)?;
        if tag != expected {
            return None;
        }
        rest = after;
    }
    let (0x30, validity, _) = tlv(rest)? else {
        return None;
    };
    let (_, _, after_not_before) = tlv(validity)?;
    let (tag, time, _) = tlv(after_not_before)?;
    parse_time(tag, time)
}

/// One DER tag-length-value: (tag, contents, the bytes after it). Single-byte tags only, which
/// is all the path above contains.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// `UTCTime` (`YYMMDDHHMMSSZ`, years 1950–2049) or `GeneralizedTime` (`YYYYMMDDHHMMSSZ`), the two
/// forms RFC 5280 §4.1.2.5 allows.
fn parse_time(tag: u8, text: &[u8]) -> Option<i64> {
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    let (year, rest) = match (tag, text.len()) {
        (0x17, 13) => {
            let yy = digits(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (0x18, 15) => (digits(0..4)?, 4),
        _ => return None,
    };
    if text.last() != Some(&b'Z') {
        return None;
    }
    let month = digits(rest..rest + 2)?;
    let day = digits(rest + 2..rest + 4)?;
    let hour = digits(rest + 4..rest + 6)?;
    let minute = digits(rest + 6..rest + 8)?;
    let second = digits(rest + 8..rest + 10)?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_until(year: i32, month: u8, day: u8) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        // Expected values from Python: calendar.timegm(datetime(2031, 5, 17).timetuple()).
        assert_eq!(not_after(&cert_until(2031, 5, 17)), Some(1_936_742_400));
        // From 2050 on, RFC 5280 requires GeneralizedTime.
        assert_eq!(not_after(&cert_until(2051, 1, 2)), Some(2_556_230_400));
    }

    #[test]
    fn utc_time_years_before_1950_wrap_to_the_next_century() {
        assert_eq!(parse_time(0x17, b"991231000000Z"), Some(946_598_400));
        assert_eq!(parse_time(0x17, b"310517000000Z"), Some(1_936_742_400));
        assert_eq!(parse_time(0x17, b"311317000000Z"), None, "month 13");
        assert_eq!(parse_time(0x17, b"3105170000000"), None, "no Z");
        assert_eq!(parse_time(0x04, b"310517000000Z"), None, "not a time");
    }

    #[test]
    fn garbage_and_truncation_are_none() {
        let der = cert_until(2031, 5, 17);
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(b"not a certificate"), None);
        for cut in [1, 10, 100, der.len() / 2] {
            assert_eq!(not_after(&der[..cut]), None, "cut at {cut}");
        }
    }
}
