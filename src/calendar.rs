//! Windows aligned to the calendar: a day from midnight, a month from the first, in UTC or at a
//! fixed offset from it. Pure arithmetic on nanoseconds since the Unix epoch (what the crate's
//! clocks count); the Redis scripts follow the same rules in Lua ([`WINDOW_END_LUA`]).
//!
//! A calendar quota is kept as a GCRA state read at a *virtual now*, the end of the current
//! window: a key's state is `end + used × 1 µs`, so that a new window (a later end) finds the
//! old state behind it, a bucket full again, and a store forgets the state once its window is
//! over, as it forgets a full GCRA bucket (see [`crate::gcra`]).

/// Nanoseconds in a day.
const DAY: i128 = 86_400_000_000_000;

/// The largest offset from UTC a calendar quota may have, in seconds (±14 h, as the world's
/// time zones).
pub(crate) const MAX_OFFSET: i32 = 14 * 3600;

/// A calendar period and the offset from UTC its windows start at.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Calendar {
    pub(crate) month: bool,
    /// Seconds east of UTC, within ±[`MAX_OFFSET`].
    pub(crate) offset: i32,
}

impl Calendar {
    /// The end of the window holding `now` (nanoseconds since the Unix epoch): the next
    /// midnight, or the first of the next month, at the calendar's offset.
    pub(crate) fn end(self, now: u64) -> u64 {
        let offset = i128::from(self.offset) * 1_000_000_000;
        let local = i128::from(now) + offset;
        let days = local.div_euclid(DAY);
        let end_day = if self.month {
            let (year, month, day) = civil_from_days(days);
            days - i128::from(day) + 1 + i128::from(days_in_month(year, month))
        } else {
            days + 1
        };
        u64::try_from(end_day * DAY - offset).unwrap_or(u64::MAX)
    }

    /// The longest a window lasts, in seconds: a day, or 31 days.
    pub(crate) fn longest_secs(self) -> u64 {
        if self.month {
            31 * 86_400
        } else {
            86_400
        }
    }

    /// The calendar as one number for the Redis scripts (never 0, under 2¹⁸): the period in
    /// the lowest bit, the offset above it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn code(self) -> u64 {
        let offset = u64::try_from(i64::from(self.offset) + i64::from(MAX_OFFSET)).unwrap_or(0);
        1 + u64::from(self.month) + 2 * offset
    }
}

/// The Lua function of the Redis scripts that [`Calendar::end`] is, on microseconds and the
/// calendar's [`code`](Calendar::code).
#[cfg_attr(not(feature = "redis"), allow(unused_macros))]
macro_rules! window_end_lua {
    () => {
        r#"
-- The end of the calendar window holding now (microseconds since the Unix epoch): the next
-- midnight, or the first of the next month, at the calendar's offset (see calendar.rs).
local function window_end(now, code)
  code = code - 1
  local month = code % 2
  local offset = ((code - month) / 2 - 50400) * 1000000
  local day = 86400000000
  local days = math.floor((now + offset) / day)
  if month == 1 then
    local z = days + 719468
    local era = math.floor(z / 146097)
    local doe = z - era * 146097
    local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
      - math.floor(doe / 146096)) / 365)
    local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
    local mp = math.floor((5 * doy + 2) / 153)
    local d = doy - math.floor((153 * mp + 2) / 5) + 1
    local m = mp < 10 and mp + 3 or mp - 9
    local y = yoe + era * 400 + (m <= 2 and 1 or 0)
    local len = ({ 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 })[m]
    if m == 2 and y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then
      len = 29
    end
    days = days - d + len
  end
  return (days + 1) * day - offset
end
"#
    };
}
#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use window_end_lua;

/// Year, month (1–12) and day (1–31) of the day `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, proleptic Gregorian).
fn civil_from_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i128, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    /// 2026-12-03T09:30:00Z.
    const NOW: u64 = 1_796_290_200 * SEC;

    fn day(offset: i32) -> Calendar {
        Calendar {
            month: false,
            offset,
        }
    }

    fn month(offset: i32) -> Calendar {
        Calendar {
            month: true,
            offset,
        }
    }

    #[test]
    fn a_day_ends_at_the_next_midnight() {
        // 2026-12-04T00:00:00Z.
        assert_eq!(day(0).end(NOW), 1_796_342_400 * SEC);
        // Midnight itself starts the next window.
        assert_eq!(
            day(0).end(1_796_342_400 * SEC),
            (1_796_342_400 + 86_400) * SEC
        );
        assert_eq!(day(0).end(1_796_342_400 * SEC - 1), 1_796_342_400 * SEC);
        // At UTC+10, 09:30Z is 19:30 local: midnight local is 14:00Z.
        assert_eq!(day(36_000).end(NOW), (1_796_342_400 - 36_000) * SEC);
        // At UTC−10, 09:30Z is 23:30 the day before: midnight local is 10:00Z.
        assert_eq!(day(-36_000).end(NOW), (1_796_256_000 + 36_000) * SEC);
        // Before the epoch's first midnight, with a negative offset.
        assert_eq!(day(-3600).end(0), 3600 * SEC);
    }

    #[test]
    fn a_month_ends_on_the_first_of_the_next() {
        // 2027-01-01T00:00:00Z.
        assert_eq!(month(0).end(NOW), 1_798_761_600 * SEC);
        let first = |y: i32, m: u32| -> u64 {
            // Days from 1970-01-01 to the first of (y, m), counted by hand.
            let mut days = 0i64;
            for year in 1970..y {
                days += if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 {
                    366
                } else {
                    365
                };
            }
            for mo in 1..m {
                days += i64::from(days_in_month(i128::from(y), mo));
            }
            u64::try_from(days).unwrap() * 86_400 * SEC
        };
        for (y, m) in [
            (2024, 1),
            (2024, 2),
            (2024, 3),
            (2100, 2),
            (2000, 2),
            (2026, 12),
            (1970, 1),
        ] {
            let start = first(y, m);
            let next = if m == 12 {
                first(y + 1, 1)
            } else {
                first(y, m + 1)
            };
            assert_eq!(month(0).end(start), next, "{y}-{m}");
            assert_eq!(month(0).end(next - 1), next, "{y}-{m}");
        }
        // February 2024 has 29 days, 2100's 28, 2000's 29.
        assert_eq!(first(2024, 3) - first(2024, 2), 29 * 86_400 * SEC);
        assert_eq!(first(2100, 3) - first(2100, 2), 28 * 86_400 * SEC);
        // At UTC+14 the first of January comes 14 h early.
        assert_eq!(month(MAX_OFFSET).end(NOW), (1_798_761_600 - 50_400) * SEC);
    }

    #[test]
    fn codes_are_distinct_and_never_zero() {
        let mut seen = std::collections::HashSet::new();
        for offset in [-MAX_OFFSET, -1, 0, 1, 19_800, MAX_OFFSET] {
            for c in [day(offset), month(offset)] {
                assert!(c.code() > 0 && c.code() < 1 << 18);
                assert!(seen.insert(c.code()));
            }
        }
    }
}
