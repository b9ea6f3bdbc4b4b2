//! Names: quoting `schema.table`, splitting a user's `schema.table`, and the process-registry key of a
//! connected table.

/// `"schema"."name"` with quotes escaped.
pub(crate) fn qualified(schema: &str, name: &str) -> String {
    format!(
        "\"{}\".\"{}\"",
        schema.replace('"', "\"\""),
        name.replace('"', "\"\"")
    )
}

/// `"name"` with quotes escaped (a column name in SQL).
pub(crate) fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Splits `schema.table` (or `table`, schema `main`).
pub(crate) fn split_name(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((s, t)) if !s.is_empty() && !t.is_empty() => (s.to_string(), t.to_string()),
        _ => ("main".to_string(), name.to_string()),
    }
}

/// A connected table in the process: (database handle address, schema, table), case-folded.
pub(crate) type Key = (usize, String, String);

/// The registry key of a table.
pub(crate) fn key(db: usize, schema: &str, name: &str) -> Key {
    (db, schema.to_ascii_lowercase(), name.to_ascii_lowercase())
}

/// 32 lowercase hex digits of a table id.
pub(crate) fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A table id from 32 hex digits.
pub(crate) fn unhex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}
