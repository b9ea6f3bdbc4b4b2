//! The vector SQL functions (`phenix_f16`, `phenix_distance_cosine`, `phenix_mean`, ...) and the helper
//! for functions that take a file path.
//!
//! The reference with examples is `docs/sql.md`; a test runs every example there.
//!
//! Conventions shared by every function here:
//! - A vector argument is JSON text or a blob (see [`crate::vector`]). Blobs are `float32` unless the
//!   optional last argument says `'float16'` (or `'float32'`, `'f16'`, `'f32'`, any case). It applies to
//!   every blob argument of the call.
//! - A NULL vector argument makes the result NULL (`phenix_mean` skips NULL rows instead).
//! - Bad arguments are `SQLITE_ERROR` with a message that starts with `phenix: `
//!   ([`crate::error::sql_error`]).
//! - All functions are `SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS`: pure, usable in indexes, views and
//!   triggers. Callbacks run inside [`catch_panic`], which turns a panic into an SQL error.

use crate::error::{catch_panic, sql_error};
use crate::vector::{
    check_f16_range, decode_vector, decode_vector_into, elem_of_subtype, subtype_of, Decoded,
    Encoding, VectorError,
};
use phenix_core::{kernels::distance_f64, ElemType, Metric};
use rusqlite::functions::{
    Aggregate, Context, FunctionFlags, SqlFnOutput, SubType, WindowAggregate,
};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, Result};
use std::os::raw::c_int;
use std::path::PathBuf;

/// Flags of the pure functions. `SQLITE_SUBTYPE`: they read their arguments' subtypes (SQLite must
/// not drop them, e.g. for window functions); `SQLITE_RESULT_SUBTYPE` (SQLite >= 3.45; older
/// versions ignore the bit): they tag their blob results.
fn pure() -> FunctionFlags {
    FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS
        | FunctionFlags::SQLITE_SUBTYPE
        | FunctionFlags::SQLITE_RESULT_SUBTYPE
}

/// Registers every vector function on `conn`.
pub fn register(conn: &Connection) -> Result<()> {
    // (name, number of vector arguments, body)
    type Body = fn(&str, &[Decoded]) -> Result<Value>;
    let scalars: [(&str, usize, Body); 9] = [
        ("phenix_f16", 1, f16_fn),
        ("phenix_f32", 1, f32_fn),
        ("phenix_to_json", 1, to_json_fn),
        ("phenix_dims", 1, dims_fn),
        ("phenix_normalize", 1, normalize_fn),
        ("phenix_distance_cosine", 2, cosine_fn),
        ("phenix_distance_l2", 2, l2_fn),
        ("phenix_dot", 2, dot_fn),
        ("phenix_version", 0, version_fn),
    ];
    for (name, n, body) in scalars {
        let arities: &[usize] = if n == 0 { &[0] } else { &[n, n + 1] };
        for &arity in arities {
            conn.create_scalar_function(name, arity as c_int, pure(), move |ctx| {
                catch_panic(name, || call_scalar(ctx, name, n, body))
            })?;
        }
    }
    for arity in [1, 2] {
        // A window function is also an ordinary aggregate (GROUP BY) in SQLite.
        conn.create_window_function("phenix_mean", arity, pure(), Mean)?;
    }
    Ok(())
}

/// Decodes the `n` vector arguments of `ctx` and runs `body`; NULL if any vector is NULL. Each blob
/// argument's element type comes from [`arg_elem`]. A blob result is tagged with its subtype.
fn call_scalar(
    ctx: &Context<'_>,
    name: &str,
    n: usize,
    body: fn(&str, &[Decoded]) -> Result<Value>,
) -> Result<(Value, SubType)> {
    let explicit = explicit_elem(ctx, n, name)?;
    // phenix_f16 rounds JSON numbers once, straight to float16.
    let json_target = if name == "phenix_f16" {
        ElemType::F16
    } else {
        ElemType::F32
    };
    let mut args = Vec::with_capacity(n);
    for i in 0..n {
        let elem = arg_elem(ctx, i, explicit, name)?;
        match decode_vector_into(ctx.get_raw(i), &arg_name(name, i), elem, json_target) {
            Ok(d) => args.push(d),
            Err(VectorError::Null { .. }) => return Ok((Value::Null, None)),
            Err(e) => return Err(e.into()),
        }
    }
    let out = body(name, &args)?;
    let elem = match name {
        "phenix_f16" => Some(ElemType::F16),
        "phenix_f32" => Some(ElemType::F32),
        _ => match args.first().map(|a| a.encoding) {
            Some(Encoding::Blob(e)) => Some(e),
            _ => None,
        },
    };
    let subtype = match (&out, elem) {
        (Value::Blob(_), Some(e)) => Some(subtype_of(e)),
        _ => None,
    };
    Ok((out, subtype))
}

/// The element type of blob argument `i`: its subtype if it carries one of phenix's (every blob a
/// phenix function returns does), else the call's element-type argument, else `float32`. A subtype
/// that contradicts the element-type argument is an error rather than a silent reinterpretation.
fn arg_elem(
    ctx: &Context<'_>,
    i: usize,
    explicit: Option<ElemType>,
    fname: &str,
) -> Result<ElemType> {
    if !matches!(ctx.get_raw(i), ValueRef::Blob(_)) {
        return Ok(explicit.unwrap_or(ElemType::F32));
    }
    match (elem_of_subtype(ctx.get_subtype(i)), explicit) {
        (Some(tagged), Some(given)) if tagged != given => Err(sql_error(format!(
            "{} is a {} blob (a phenix function made it) but the element type argument says '{}'; \
             drop the element type argument, or pass a stored blob",
            arg_name(fname, i),
            tagged.name(),
            given.name()
        ))),
        (Some(tagged), _) => Ok(tagged),
        (None, given) => Ok(given.unwrap_or(ElemType::F32)),
    }
}

fn arg_name(fname: &str, i: usize) -> String {
    format!("{fname}() argument {}", i + 1)
}

/// The element-type argument `idx` if present (`'float16'`, `'float32'`, `'f16'`, `'f32'`, any case).
fn explicit_elem(ctx: &Context<'_>, idx: usize, fname: &str) -> Result<Option<ElemType>> {
    if idx >= ctx.len() {
        return Ok(None);
    }
    let v = ctx.get_raw(idx);
    if let ValueRef::Text(t) = v {
        match std::str::from_utf8(t)
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            Ok("float16" | "f16") => return Ok(Some(ElemType::F16)),
            Ok("float32" | "f32") => return Ok(Some(ElemType::F32)),
            _ => {}
        }
    }
    let found = match v {
        ValueRef::Null => "NULL".to_string(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(r) => r.to_string(),
        ValueRef::Text(t) => format!("'{}'", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => format!("a {}-byte blob", b.len()),
    };
    Err(sql_error(format!(
        "{} is the element type of blob arguments and must be 'float32' or 'float16': got {found}",
        arg_name(fname, idx)
    )))
}

fn f16_fn(name: &str, a: &[Decoded]) -> Result<Value> {
    check_f16_range(&a[0].values, &arg_name(name, 0))?;
    Ok(Encoding::Blob(ElemType::F16).encode(&a[0].values))
}

fn f32_fn(_: &str, a: &[Decoded]) -> Result<Value> {
    Ok(Encoding::Blob(ElemType::F32).encode(&a[0].values))
}

fn to_json_fn(_: &str, a: &[Decoded]) -> Result<Value> {
    Ok(Encoding::Json.encode(&a[0].values))
}

fn dims_fn(_: &str, a: &[Decoded]) -> Result<Value> {
    Ok(Value::Integer(a[0].values.len() as i64))
}

fn normalize_fn(name: &str, a: &[Decoded]) -> Result<Value> {
    let v = &a[0].values;
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 {
        return Err(sql_error(format!(
            "{name}(): the vector has norm 0 and cannot be normalized"
        )));
    }
    let out: Vec<f32> = v.iter().map(|&x| (f64::from(x) / norm) as f32).collect();
    Ok(a[0].encoding.encode(&out))
}

/// Both vectors, checked to have the same dimension.
fn pair<'a>(name: &str, a: &'a [Decoded]) -> Result<(&'a [f32], &'a [f32])> {
    let (x, y) = (&a[0].values, &a[1].values);
    if x.len() != y.len() {
        return Err(sql_error(format!(
            "{name}(): the vectors differ in dimension (argument 1 has {} elements, argument 2 has {})",
            x.len(),
            y.len()
        )));
    }
    Ok((x, y))
}

fn cosine_fn(name: &str, a: &[Decoded]) -> Result<Value> {
    let (x, y) = pair(name, a)?;
    Ok(Value::Real(distance_f64(Metric::Cosine, x, y)))
}

fn l2_fn(name: &str, a: &[Decoded]) -> Result<Value> {
    let (x, y) = pair(name, a)?;
    Ok(Value::Real(distance_f64(Metric::L2, x, y)))
}

fn dot_fn(name: &str, a: &[Decoded]) -> Result<Value> {
    let (x, y) = pair(name, a)?;
    // Metric::Dot is the negative inner product (a distance); phenix_dot is the inner product itself.
    Ok(Value::Real(-distance_f64(Metric::Dot, x, y)))
}

fn version_fn(_: &str, _: &[Decoded]) -> Result<Value> {
    Ok(Value::Text(env!("CARGO_PKG_VERSION").to_string()))
}

/// `phenix_mean(vector [, type])`: the element-wise mean of the non-NULL vectors of a group (or window
/// frame), in the encoding of the first one; NULL if there is none. Sums in `f64`.
struct Mean;

/// The running state of one `phenix_mean` group.
#[derive(Default)]
struct MeanAcc {
    sum: Vec<f64>,
    count: u64,
    encoding: Option<Encoding>,
}

impl Aggregate<MeanAcc, (Option<Value>, SubType)> for Mean {
    fn init(&self, _: &mut Context<'_>) -> Result<MeanAcc> {
        catch_panic("phenix_mean", || Ok(MeanAcc::default()))
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut MeanAcc) -> Result<()> {
        catch_panic("phenix_mean", || acc.add(ctx, 1.0))
    }

    fn finalize(
        &self,
        _: &mut Context<'_>,
        acc: Option<MeanAcc>,
    ) -> Result<(Option<Value>, SubType)> {
        catch_panic("phenix_mean", || Ok(acc.map_or((None, None), |a| a.mean())))
    }
}

impl WindowAggregate<MeanAcc, (Option<Value>, SubType)> for Mean {
    fn value(&self, acc: Option<&mut MeanAcc>) -> Result<(Option<Value>, SubType)> {
        catch_panic("phenix_mean", || Ok(acc.map_or((None, None), |a| a.mean())))
    }

    fn inverse(&self, ctx: &mut Context<'_>, acc: &mut MeanAcc) -> Result<()> {
        catch_panic("phenix_mean", || acc.add(ctx, -1.0))
    }
}

impl MeanAcc {
    /// Adds (`sign = 1`) or removes (`sign = -1`, a row leaving a window frame) the row's vector.
    fn add(&mut self, ctx: &Context<'_>, sign: f64) -> Result<()> {
        let explicit = explicit_elem(ctx, 1, "phenix_mean")?;
        let elem = arg_elem(ctx, 0, explicit, "phenix_mean")?;
        let d = match decode_vector(ctx.get_raw(0), "phenix_mean() argument 1", elem) {
            Ok(d) => d,
            Err(VectorError::Null { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if self.encoding.is_none() {
            self.encoding = Some(d.encoding);
            self.sum = vec![0.0; d.values.len()];
        } else if d.values.len() != self.sum.len() {
            return Err(sql_error(format!(
                "phenix_mean(): vector {} of the group has {} elements, the ones before it have {}",
                self.count + 1,
                d.values.len(),
                self.sum.len()
            )));
        }
        for (s, &x) in self.sum.iter_mut().zip(&d.values) {
            *s += sign * f64::from(x);
        }
        if sign > 0.0 {
            self.count += 1;
        } else {
            self.count -= 1;
            if self.count == 0 {
                // The frame is empty: forget the rounding residue and the encoding.
                *self = MeanAcc::default();
            }
        }
        Ok(())
    }

    /// The mean in the first vector's encoding, with the blob's subtype; `None` (SQL NULL) when no
    /// vector is in.
    fn mean(&self) -> (Option<Value>, SubType) {
        let Some(encoding) = self.encoding else {
            return (None, None);
        };
        if self.count == 0 {
            return (None, None);
        }
        let n = self.count as f64;
        let mean: Vec<f32> = self.sum.iter().map(|s| (s / n) as f32).collect();
        let subtype = match encoding {
            Encoding::Blob(e) => Some(subtype_of(e)),
            Encoding::Json => None,
        };
        (Some(encoding.encode(&mean)), subtype)
    }
}

/// Registers a scalar function that takes a file path: flags `SQLITE_UTF8 | SQLITE_DIRECTONLY`, so SQL
/// stored in a database (views, triggers, CHECK constraints, generated columns) cannot call it, only SQL
/// the application runs directly. Use it for every function that reads or writes files
/// (`phenix_model_load`, `phenix_backup`, ...); read the path with [`path_arg`].
///
/// `x_func` runs inside [`catch_panic`]; return errors made with [`crate::error::sql_error`] (or an
/// [`crate::Error`] converted with `.into()`).
pub fn create_path_function<F, T>(
    conn: &Connection,
    name: &str,
    n_arg: c_int,
    x_func: F,
) -> Result<()>
where
    F: Fn(&Context<'_>) -> Result<T> + Send + 'static,
    T: SqlFnOutput,
{
    let what = name.to_string();
    conn.create_scalar_function(
        name,
        n_arg,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY,
        move |ctx| catch_panic(&what, || x_func(ctx)).map_err(crate::error::scalar_error),
    )
}

/// Argument `idx` of a path function as a path: non-empty text (bytes taken as-is, so non-UTF-8 file
/// names work). `fname` is the SQL function's name, for the message.
pub fn path_arg(ctx: &Context<'_>, idx: usize, fname: &str) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let found = match ctx.get_raw(idx) {
        ValueRef::Text(t) if !t.is_empty() => {
            return Ok(PathBuf::from(std::ffi::OsStr::from_bytes(t)))
        }
        ValueRef::Text(_) => "an empty string",
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "an integer",
        ValueRef::Real(_) => "a real number",
        ValueRef::Blob(_) => "a blob",
    };
    Err(sql_error(format!(
        "{} expects a file path (text): got {found}",
        arg_name(fname, idx)
    )))
}
