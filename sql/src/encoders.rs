//! Encoders in SQL: `phenix_fingerprint`, `phenix_model_load`, the `phenix_models` table,
//! `phenix_embed_molecule`, `phenix_embed_phenomics` and the batched `phenix_embed_molecules`.
//!
//! Models live in a process-wide registry by name. `default` is there when the `default-model` cargo
//! feature is on (the default): the bundle `phenix_models::default_bundle` compiles in, loaded from
//! memory on first use, writing nothing to disk, so it works wherever the library goes (read-only
//! installs, sandboxes, no `HOME`).

use crate::args::{int, number, text_arg};
use crate::error::{create_scalar, sql_error};
use crate::functions::create_path_function;
use crate::tvf::{TableFunction, Tvf};
use crate::vector::{encode_f16, parse_vector, SUBTYPE_F16};
use phenix_core::ElemType;
use phenix_models::{ExecutionProvider, Model, MorganFeaturizer, RuntimeOptions};
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::Module;
use rusqlite::Connection;
use std::collections::BTreeMap;
use std::ffi::{c_int, CStr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// Where a registered model comes from.
enum Source {
    /// A bundle directory given to `phenix_model_load`.
    Dir(PathBuf),
    /// The compiled-in `default` bundle (cargo feature `default-model`).
    Default,
}

/// A registered model: where it came from and, once loaded, the sessions.
struct Entry {
    source: Source,
    options: RuntimeOptions,
    model: Option<Arc<Model>>,
}

fn registry() -> &'static Mutex<BTreeMap<String, Entry>> {
    static R: OnceLock<Mutex<BTreeMap<String, Entry>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Options of models loaded without a `threads` option: [`crate::settings::onnx_threads`] threads.
fn default_options() -> RuntimeOptions {
    RuntimeOptions::default().intra_threads(crate::settings::onnx_threads())
}

/// Whether this build has the `default` model compiled in.
const HAS_DEFAULT: bool = cfg!(feature = "default-model");

/// Loads the compiled-in bundle from memory (nothing is written to disk).
#[cfg(feature = "default-model")]
fn load_default(options: &RuntimeOptions) -> Result<Arc<Model>, phenix_models::Error> {
    phenix_models::default_bundle::load(options)
}

#[cfg(not(feature = "default-model"))]
fn load_default(_: &RuntimeOptions) -> Result<Arc<Model>, phenix_models::Error> {
    unreachable!("model() refuses 'default' in builds without it")
}

/// The loaded model `name` (loading it on first use).
pub fn model(name: &str) -> rusqlite::Result<Arc<Model>> {
    let (source, options) = {
        let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = r.get(name) {
            if let Some(m) = &e.model {
                return Ok(m.clone());
            }
            let source = match &e.source {
                Source::Dir(p) => Source::Dir(p.clone()),
                Source::Default => Source::Default,
            };
            (source, e.options.clone())
        } else if name == "default" && HAS_DEFAULT {
            r.insert(
                "default".into(),
                Entry {
                    source: Source::Default,
                    options: default_options(),
                    model: None,
                },
            );
            (Source::Default, default_options())
        } else if name == "default" {
            return Err(sql_error(
                "model 'default' is not compiled into this build of phenix (it was built without the \
                 `default-model` cargo feature); load a bundle with phenix_model_load(name, path)",
            ));
        } else {
            let names: Vec<&str> = HAS_DEFAULT
                .then_some("default")
                .into_iter()
                .chain(r.keys().map(String::as_str).filter(|n| *n != "default"))
                .collect();
            return Err(sql_error(format!(
                "no model named '{name}'; load one with phenix_model_load(name, path) (loaded: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        }
    };
    let m = match source {
        Source::Dir(path) => Model::load_cached(&path, &options),
        Source::Default => load_default(&options),
    }
    .map_err(|e| sql_error(format!("model '{name}': {e}")))?;
    if let Some(e) = registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(name)
    {
        e.model = Some(m.clone());
    }
    Ok(m)
}

/// Registers the encoder functions.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    let pure = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS;
    create_scalar(conn, "phenix_fingerprint", 3, pure, |ctx| {
        let f = "phenix_fingerprint";
        let smiles = text_arg(ctx.get_raw(0), f, "argument 1 (SMILES)")?;
        let radius = int(ctx.get_raw(1), f, "argument 2 (radius)")?;
        let n_bits = int(ctx.get_raw(2), f, "argument 3 (number of bits)")?;
        if !(0..=16).contains(&radius) || !(1..=1 << 20).contains(&n_bits) {
            return Err(sql_error(format!(
                "{f}: radius {radius} / {n_bits} bits are out of range; supported: radius 0-3, 128/256/512/1024/2048 bits"
            )));
        }
        // A featurizer holds no state: making one per call costs nothing.
        let fp = MorganFeaturizer::new(radius as u32, n_bits as usize)
            .map_err(|e| sql_error(format!("{f}: {e}")))?;
        let bits = fp
            .on_bits(smiles)
            .map_err(|e| sql_error(format!("{f}: {e}")))?;
        Ok(serde_json::to_string(&bits).expect("bits serialise"))
    })?;
    create_path_function(conn, "phenix_model_load", 2, |ctx| load_fn(ctx, None))?;
    create_path_function(conn, "phenix_model_load", 3, |ctx| {
        let opts = text_arg(
            ctx.get_raw(2),
            "phenix_model_load",
            "argument 3 (options JSON)",
        )?
        .to_string();
        load_fn(ctx, Some(opts))
    })?;
    // Embedding functions stay usable in triggers (auto-embedding on insert), so they are not
    // DIRECTONLY; they read only bundles an application registered directly.
    // Their float16 results carry phenix's float16 subtype (crate::vector::SUBTYPE_F16).
    let embed_flags = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS
        | FunctionFlags::SQLITE_RESULT_SUBTYPE;
    create_scalar(conn, "phenix_embed_molecule", 3, embed_flags, |ctx| {
        let f = "phenix_embed_molecule";
        let name = text_arg(ctx.get_raw(0), f, "argument 1 (model)")?;
        let smiles = text_arg(ctx.get_raw(1), f, "argument 2 (SMILES)")?;
        let conc = number(ctx.get_raw(2), f, "argument 3 (concentration in µM)")?;
        let m = model(name)?;
        let v = m
            .embed_molecules(&[(smiles, conc)])
            .map_err(|e| sql_error(format!("{f}: {e}")))?;
        Ok((Value::Blob(encode_f16(&v)), Some(SUBTYPE_F16)))
    })?;
    create_scalar(conn, "phenix_embed_phenomics", 2, embed_flags, |ctx| {
        let f = "phenix_embed_phenomics";
        let name = text_arg(ctx.get_raw(0), f, "argument 1 (model)")?;
        let m = model(name)?;
        let d = m.manifest().phenomics.input_dim;
        // A profile is JSON or a float32 blob. A float16 reading of a blob of 2·d bytes would
        // silently accept a float32 profile with half the features, so only 4·d bytes pass.
        if let ValueRef::Blob(b) = ctx.get_raw(1) {
            if b.len() != 4 * d {
                let n = if b.len() % 4 == 0 {
                    format!("a float32 profile of {} features", b.len() / 4)
                } else {
                    "not a float32 profile (length not a multiple of 4)".to_string()
                };
                let hint = if b.len() == 2 * d {
                    " (a float16 profile? convert it with phenix_f32(profile, 'float16'))"
                } else {
                    ""
                };
                return Err(sql_error(format!(
                    "{f} argument 2 (profile) expects float32[{d}]: got a {}-byte blob, {n}; \
                     the model's profiles have {d} features ({} bytes){hint}",
                    b.len(),
                    4 * d
                )));
            }
        }
        let profile = parse_vector(
            ctx.get_raw(1),
            &format!("{f} argument 2 (profile)"),
            Some((d, ElemType::F32)),
        )
        .map_err(sql_error)?;
        let v = m
            .embed_phenomics(&profile)
            .map_err(|e| sql_error(format!("{f}: {e}")))?;
        Ok((Value::Blob(encode_f16(&v)), Some(SUBTYPE_F16)))
    })?;
    const MODELS: Module<'static, Tvf<ModelsFn>> = Module::eponymous_only_module();
    const EMBED: Module<'static, Tvf<EmbedMoleculesFn>> = Module::eponymous_only_module();
    conn.create_module("phenix_models", &MODELS, None)?;
    conn.create_module("phenix_embed_molecules", &EMBED, None)?;
    Ok(())
}

/// The largest `threads` option of `phenix_model_load`.
const MAX_THREADS: u64 = 1024;

fn load_fn(
    ctx: &rusqlite::functions::Context<'_>,
    opts: Option<String>,
) -> rusqlite::Result<String> {
    let f = "phenix_model_load";
    let name = text_arg(ctx.get_raw(0), f, "argument 1 (name)")?.to_string();
    if name == "default" {
        return Err(sql_error(format!(
            "{f}: the name 'default' is reserved for the shipped model"
        )));
    }
    let path = crate::functions::path_arg(ctx, 1, f)?;
    let mut options = default_options();
    if let Some(o) = opts {
        let v: serde_json::Value = serde_json::from_str(&o)
            .map_err(|e| sql_error(format!("{f}: options are not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| {
            sql_error(format!(
                "{f}: options must be a JSON object like {{\"provider\": \"cpu\", \"threads\": 2}}"
            ))
        })?;
        for (k, v) in obj {
            match (k.as_str(), v) {
                ("provider", serde_json::Value::String(p)) => {
                    options = options.execution_provider(
                        ExecutionProvider::parse(p).map_err(|e| sql_error(format!("{f}: {e}")))?,
                    )
                }
                ("threads", serde_json::Value::Number(n))
                    if n.as_u64().is_some_and(|t| (1..=MAX_THREADS).contains(&t)) =>
                {
                    options = options.intra_threads(n.as_u64().expect("checked") as usize)
                }
                // ONNX Runtime starts every intra-op thread when the session is made: a huge count
                // would try to start that many OS threads.
                ("threads", _) => {
                    return Err(sql_error(format!(
                        "{f}: option threads={v} is out of range; expected an integer in 1..={MAX_THREADS}"
                    )))
                }
                _ => {
                    return Err(sql_error(format!(
                        "{f}: unknown option {k}={v}; expected \"provider\": \"cpu\"|\"cuda\"|\"cuda:N\", \"threads\": N in 1..={MAX_THREADS}"
                    )))
                }
            }
        }
    }
    // Load now, so a bad bundle fails here with its reason.
    let m = Model::load_cached(&path, &options).map_err(|e| sql_error(format!("{f}: {e}")))?;
    let dim = m.dim();
    registry().lock().unwrap_or_else(|e| e.into_inner()).insert(
        name.clone(),
        Entry {
            source: Source::Dir(path),
            options,
            model: Some(m),
        },
    );
    Ok(format!("loaded model '{name}' (dim {dim})"))
}

// ------------------------------------------------------------------------------------------------
// phenix_models: name, path, dim, provider, featurizer

/// `phenix_models`: the registered models.
pub struct ModelsFn;

impl TableFunction for ModelsFn {
    const NAME: &'static str = "phenix_models";
    const DECL: &'static CStr =
        c"CREATE TABLE x(name TEXT, path TEXT, dim INTEGER, provider TEXT, featurizer TEXT)";
    const VISIBLE: c_int = 5;
    const ARGS: c_int = 0;
    const COST: f64 = 10.0;
    const ROWS: i64 = 2;
    fn rows(_conn: &Connection, _args: &[ValueRef<'_>]) -> rusqlite::Result<Vec<Vec<Value>>> {
        models_rows()
    }
}

/// `phenix_embed_molecules(model, query)`: batched embedding of a query's rows.
pub struct EmbedMoleculesFn;

impl TableFunction for EmbedMoleculesFn {
    const NAME: &'static str = "phenix_embed_molecules";
    const DECL: &'static CStr = c"CREATE TABLE x(id, smiles TEXT, concentration REAL, embedding BLOB, model HIDDEN, query HIDDEN)";
    const VISIBLE: c_int = 4;
    const ARGS: c_int = 2;
    // It runs SQL given as text: only from top-level SQL, never from a view or trigger.
    const DIRECT_ONLY: bool = true;
    // It embeds every row of its query: the most expensive thing in any join it is part of.
    const COST: f64 = 1e9;
    const ROWS: i64 = 100_000;
    fn rows(conn: &Connection, args: &[ValueRef<'_>]) -> rusqlite::Result<Vec<Vec<Value>>> {
        embed_rows(conn, args)
    }
}

fn models_rows() -> rusqlite::Result<Vec<Vec<Value>>> {
    // `default` is always listed when compiled in (loading it here reports its real dimension).
    if HAS_DEFAULT {
        model("default")?;
    }
    let r = registry().lock().unwrap_or_else(|e| e.into_inner());
    Ok(r.iter()
        .map(|(name, e)| {
            let (dim, feat) = match &e.model {
                Some(m) => {
                    let f = m.featurizer();
                    (
                        Value::Integer(m.dim() as i64),
                        Value::Text(format!(
                            "morgan radius={} bits={}{}{}",
                            f.radius(),
                            f.n_bits(),
                            if f.counts() { " counts" } else { "" },
                            if f.chirality() { " chirality" } else { "" }
                        )),
                    )
                }
                None => (Value::Null, Value::Null),
            };
            let provider = match e.options.get_execution_provider() {
                ExecutionProvider::Cpu => "cpu".to_string(),
                other => format!("{other:?}").to_lowercase(),
            };
            vec![
                Value::Text(name.clone()),
                match &e.source {
                    Source::Dir(p) => Value::Text(p.display().to_string()),
                    Source::Default => Value::Null,
                },
                dim,
                Value::Text(provider),
                feat,
            ]
        })
        .collect())
}

/// `text`, `a blob`, ... for messages.
fn type_name(v: ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "an integer",
        ValueRef::Real(_) => "a real number",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "a blob",
    }
}

/// Molecules embedded per model call by `phenix_embed_molecules`.
const EMBED_BATCH: usize = 128;

/// Rows of the inner query, embedded in batches.
fn embed_rows(conn: &Connection, args: &[ValueRef<'_>]) -> rusqlite::Result<Vec<Vec<Value>>> {
    let f = "phenix_embed_molecules";
    let name = text_arg(args[0], f, "argument 1 (model)")?.to_string();
    let sql = text_arg(args[1], f, "argument 2 (query)")?.to_string();
    let m = model(&name)?;
    let mut stmt = conn
        .prepare(&sql)
        .map_err(|e| sql_error(format!("{f}: the query does not prepare: {e}")))?;
    // The query is run before any embedding fails or succeeds: one that writes (DELETE … RETURNING,
    // INSERT … RETURNING, PRAGMA with side effects) would change the database even when the call
    // then fails. Only statements that leave the database unchanged are run.
    if !stmt.readonly() {
        return Err(sql_error(format!(
            "{f}: the query must only read the database (a SELECT or VALUES); it would change it: {sql}"
        )));
    }
    let ncol = stmt.column_count();
    if !(2..=3).contains(&ncol) {
        return Err(sql_error(format!(
            "{f}: the query must return (smiles, concentration) or (id, smiles, concentration); it returns {ncol} columns"
        )));
    }
    let off = ncol - 2;
    let mut items: Vec<(Value, String, f64)> = Vec::new();
    let mut q = stmt.query([])?;
    while let Some(r) = q.next()? {
        let row = items.len() + 1;
        let id: Value = if off == 1 {
            r.get(0)?
        } else {
            Value::Integer(row as i64)
        };
        let smiles = match r.get_ref(off)? {
            ValueRef::Text(t) => std::str::from_utf8(t)
                .map_err(|_| sql_error(format!("{f}: row {row}: the SMILES is not UTF-8")))?
                .to_string(),
            ValueRef::Null => return Err(sql_error(format!("{f}: row {row} has a NULL SMILES"))),
            other => {
                return Err(sql_error(format!(
                    "{f}: row {row}: the SMILES (column {}) must be text, got {}",
                    off + 1,
                    type_name(other)
                )))
            }
        };
        let conc = match r.get_ref(off + 1)? {
            ValueRef::Integer(i) => i as f64,
            ValueRef::Real(x) => x,
            ValueRef::Null => {
                return Err(sql_error(format!(
                    "{f}: row {row} ({smiles}) has a NULL concentration"
                )))
            }
            other => {
                return Err(sql_error(format!(
                "{f}: row {row} ({smiles}): the concentration (column {}) must be a number, got {}",
                off + 2,
                type_name(other)
            )))
            }
        };
        items.push((id, smiles, conc));
    }
    let dim = m.dim();
    let mut rows = Vec::with_capacity(items.len());
    // Progress counts molecules; an interrupt stops the work between batches. A batch of 128 takes
    // tens of milliseconds and already fills the model's threads.
    // SAFETY: only the handle's address is used (to read its interrupt flag).
    let op = crate::control::Op::begin(
        unsafe { conn.handle() },
        "embed_molecules",
        items.len() as u64,
    );
    op.check()?;
    for chunk in items.chunks(EMBED_BATCH) {
        let pairs: Vec<(&str, f64)> = chunk.iter().map(|(_, s, c)| (s.as_str(), *c)).collect();
        let emb = m
            .embed_molecules(&pairs)
            .map_err(|e| sql_error(format!("{f}: {e}")))?;
        for ((id, s, c), e) in chunk.iter().zip(emb.chunks_exact(dim)) {
            rows.push(vec![
                id.clone(),
                Value::Text(s.clone()),
                Value::Real(*c),
                Value::Blob(encode_f16(e)),
            ]);
        }
        op.step(chunk.len() as u64)?;
    }
    op.finish();
    Ok(rows)
}
