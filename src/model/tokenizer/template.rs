//! Chat templates rendered with minijinja the way HF transformers renders them with
//! jinja2: its settings, `raise_exception`, `strftime_now` and Python's `tojson`, within a
//! memory and an instruction budget.

use anyhow::{anyhow, Result};
use minijinja::value::{Kwargs, Value as JValue, ValueKind};
use minijinja::{Environment, Error as JError, ErrorKind};

/// The most bytes rendering one conversation may allocate (counted cumulatively, 256 MiB):
/// real templates use kilobytes; a template that grows a string without end stops here.
pub const TEMPLATE_MEMORY: usize = 256 << 20;

/// The most template instructions one rendering may run (minijinja's fuel): a real
/// template runs some per message; nested loops over huge ranges are stopped here.
pub const TEMPLATE_FUEL: u64 = 50_000_000;

/// Render a chat template with the jinja2 settings HF uses (trim_blocks, lstrip_blocks, loop
/// controls, python string methods, `raise_exception`, `strftime_now`, HF's `tojson`).
pub fn render_chat_template(template: &str, ctx: JValue) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<JValue, JError> {
        Err(JError::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| -> Result<String, JError> {
        Ok(strftime_now(&fmt))
    });
    env.add_filter("tojson", tojson);
    env.add_template("chat_template", template)
        .map_err(|e| anyhow!("parsing the chat template: {e:#}"))?;
    let t = env
        .get_template("chat_template")
        .map_err(|e| anyhow!("{e}"))?;
    t.render(ctx)
        .map_err(|e| anyhow!("rendering the chat template: {e:#}"))
}

/// `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`, as HF's `tojson`.
fn tojson(v: JValue, kwargs: Kwargs) -> Result<JValue, JError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    py_json(&v, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(JValue::from_safe_string(out))
}

fn py_json(
    v: &JValue,
    indent: Option<usize>,
    sort: bool,
    level: usize,
    out: &mut String,
) -> Result<(), JError> {
    let newline = |out: &mut String, lvl: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * lvl));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                out.push_str(&i.to_string());
            } else {
                let f: f64 = v.clone().try_into()?;
                out.push_str(&py_float(f));
            }
        }
        ValueKind::String => {
            out.push_str(
                &serde_json::to_string(v.as_str().unwrap_or("")).map_err(|e| {
                    JError::new(ErrorKind::InvalidOperation, format!("tojson: {e}"))
                })?,
            );
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<JValue> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                py_json(x, indent, sort, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<JValue> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                let ks = match k.as_str() {
                    Some(s) => s.to_string(),
                    None => k.to_string(),
                };
                out.push_str(&serde_json::to_string(&ks).unwrap_or_default());
                out.push_str(": ");
                py_json(&v.get_item(k)?, indent, sort, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => {
            return Err(JError::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize {v:?}"),
            ));
        }
    }
    Ok(())
}

/// Python's `repr(float)` for the values JSON can carry.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let s = format!("{f:?}");
    // Rust's Debug already gives the shortest round-trip digits ("1.0", "1e-7"); python writes
    // exponents as "1e-07" and uses them from 1e16 up.
    if let Some((m, e)) = s.split_once('e') {
        let exp: i32 = e.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{m}e{sign}{:02}", exp.abs());
    }
    if f.abs() >= 1e16 {
        let s = format!("{f:e}");
        if let Some((m, e)) = s.split_once('e') {
            let exp: i32 = e.parse().unwrap_or(0);
            return format!("{m}e+{exp:02}");
        }
    }
    s
}

/// `datetime.now().strftime(fmt)` (UTC) for the common directives.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    let weekday = (days + 4).rem_euclid(7) as usize; // 0 = Sunday
    const DAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    let month = crate::util::MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{:02}", tod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", tod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", tod % 60)),
            Some('j') => out.push_str(&format!("{:03}", doy_of(y, m, d))),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

fn doy_of(y: i64, m: i64, d: i64) -> i64 {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    cum[(m - 1) as usize] + d + if leap && m > 2 { 1 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_floats() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(1e-7), "1e-07");
        assert_eq!(py_float(0.5), "0.5");
    }

    #[test]
    fn tojson_like_python() {
        let ctx = JValue::from_iter([(
            "x",
            JValue::from_iter([("b", JValue::from(1)), ("a", JValue::from("é\"\n"))]),
        )]);
        let s = render_chat_template("{{ x | tojson }}", ctx).unwrap();
        assert_eq!(s, "{\"b\": 1, \"a\": \"é\\\"\\n\"}");
    }
}
