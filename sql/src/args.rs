//! Reading SQL arguments: the helpers every phenix function and xMethod uses to take a value apart and
//! say, when it is wrong, which argument of which function it was and what was expected.

use crate::error::{sql_error, Error};
use rusqlite::types::{Value, ValueRef};

/// Argument `i` of a vtab call (NULL past the end).
pub(crate) fn arg<'a>(v: &'a rusqlite::vtab::Values<'a>, i: usize) -> ValueRef<'a> {
    v.iter().nth(i).unwrap_or(ValueRef::Null)
}

/// An owned copy of a value (text must be UTF-8).
pub(crate) fn owned(v: ValueRef<'_>) -> rusqlite::Result<Value> {
    Value::try_from(v).map_err(|e| sql_error(format!("invalid value ({e}); text must be UTF-8")))
}

/// `b` as UTF-8 (`what` names it in the message).
pub(crate) fn utf8<'a>(b: &'a [u8], what: &str) -> rusqlite::Result<&'a str> {
    std::str::from_utf8(b).map_err(|_| sql_error(format!("{what} is not UTF-8")))
}

/// An error about table `name`: `phenix: phenix table <name>: <e>` (one `phenix: ` prefix); the class
/// (and so the SQLite code) of `e` is kept.
pub(crate) fn table_err(name: &str, e: impl Into<Error>) -> rusqlite::Error {
    e.into().in_table(name).into()
}

/// A text argument of function `f` (`what` names it, e.g. `argument 1 (model)`), as UTF-8.
pub(crate) fn text_arg<'a>(v: ValueRef<'a>, f: &str, what: &str) -> rusqlite::Result<&'a str> {
    match v {
        ValueRef::Text(t) => {
            std::str::from_utf8(t).map_err(|_| sql_error(format!("{f}: {what} is not UTF-8")))
        }
        ValueRef::Null => Err(sql_error(format!("{f}: {what} is NULL; expected text"))),
        _ => Err(sql_error(format!("{f}: {what} must be text"))),
    }
}

/// A positive integer `k` (`what` names it in the message, e.g. `phenix table t: k`).
pub(crate) fn positive_k(v: ValueRef<'_>, what: &str) -> rusqlite::Result<usize> {
    let got = match v {
        ValueRef::Integer(k) if k > 0 => return Ok(k as usize),
        ValueRef::Integer(k) => k.to_string(),
        ValueRef::Null => "NULL".to_string(),
        // `{:?}` keeps the point: `k = 2.0` says "got 2.0", not "got 2".
        ValueRef::Real(r) => format!("{r:?}"),
        ValueRef::Text(_) => "text".to_string(),
        ValueRef::Blob(_) => "a blob".to_string(),
    };
    Err(sql_error(format!(
        "{what} must be a positive integer, got {got}"
    )))
}

/// A number argument of function `f` (integer or real).
pub(crate) fn number(v: ValueRef<'_>, f: &str, what: &str) -> rusqlite::Result<f64> {
    match v {
        ValueRef::Integer(i) => Ok(i as f64),
        ValueRef::Real(r) => Ok(r),
        ValueRef::Null => Err(sql_error(format!("{f}: {what} is NULL; expected a number"))),
        _ => Err(sql_error(format!("{f}: {what} must be a number"))),
    }
}

/// An integer argument of function `f`.
pub(crate) fn int(v: ValueRef<'_>, f: &str, what: &str) -> rusqlite::Result<i64> {
    match v {
        ValueRef::Integer(i) => Ok(i),
        _ => Err(sql_error(format!("{f}: {what} must be an integer"))),
    }
}
