//! Encoders in SQL: `phenix_fingerprint`, `phenix_model_load`, the `phenix_models` table,
//! `phenix_embed_molecule`, `phenix_embed_phenomics` and the batched `phenix_embed_molecules`.
//!
//! Models live in a process-wide registry by name. `default` is always there: the bundle in
//! `models/default/` is compiled into the library (`include_bytes!`), written once to a cache directory
//! named by its content hash, and loaded from there on first use, so it works wherever the `.so` goes.

use crate::args::{int, number, text_arg};
use crate::error::{create_scalar, sql_error};
use crate::functions::create_path_function;
use crate::tvf::{TableFunction, Tvf};
use crate::vector::{encode_f16, parse_vector};
use phenix_core::ElemType;
use phenix_models::{ExecutionProvider, Model, MorganFeaturizer, RuntimeOptions};
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::Module;
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_int, CStr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

const DEFAULT_MANIFEST: &[u8] = include_bytes!("../../models/default/phenix-model.json");
const DEFAULT_MOLECULE: &[u8] = include_bytes!("../../models/default/molecule.onnx");
const DEFAULT_PHENOMICS: &[u8] = include_bytes!("../../models/default/phenomics.onnx");

/// A registered model: where it came from and, once loaded, the sessions.
struct Entry {
    path: PathBuf,
    options: RuntimeOptions,
    model: Option<Arc<Model>>,
}

fn registry() -> &'static Mutex<BTreeMap<String, Entry>> {
    static R: OnceLock<Mutex<BTreeMap<String, Entry>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(BTreeMap::new()))
}

fn default_options() -> RuntimeOptions {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    RuntimeOptions::default().intra_threads(threads)
}

/// FNV-1a over the bundle bytes, naming its cache directory.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for &b in *p {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Writes the compiled-in default bundle to `<cache>/phenix/default-<hash>/` (once) and returns it.
fn default_bundle_dir() -> rusqlite::Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let hash = fnv(&[DEFAULT_MANIFEST, DEFAULT_MOLECULE, DEFAULT_PHENOMICS]);
    let dir = base.join("phenix").join(format!("default-{hash:016x}"));
    if dir.join("phenix-model.json").is_file() {
        return Ok(dir);
    }
    // Write into a private temporary directory, then rename into place (atomic; a concurrent writer
    // of the same content loses the race harmlessly).
    let tmp = base
        .join("phenix")
        .join(format!(".default-{hash:016x}-{}", std::process::id()));
    let io = |e: std::io::Error| {
        sql_error(format!(
            "cannot write the default model to {}: {e}",
            tmp.display()
        ))
    };
    std::fs::create_dir_all(&tmp).map_err(io)?;
    std::fs::write(tmp.join("molecule.onnx"), DEFAULT_MOLECULE).map_err(io)?;
    std::fs::write(tmp.join("phenomics.onnx"), DEFAULT_PHENOMICS).map_err(io)?;
    std::fs::write(tmp.join("phenix-model.json"), DEFAULT_MANIFEST).map_err(io)?;
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if dir.join("phenix-model.json").is_file() {
        Ok(dir)
    } else {
        Err(sql_error(format!(
            "cannot install the default model in {}",
            dir.display()
        )))
    }
}

/// The loaded model `name` (loading it on first use).
pub fn model(name: &str) -> rusqlite::Result<Arc<Model>> {
    let (path, options) = {
        let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = r.get(name) {
            if let Some(m) = &e.model {
                return Ok(m.clone());
            }
            (e.path.clone(), e.options.clone())
        } else if name == "default" {
            let p = default_bundle_dir()?;
            r.insert(
                "default".into(),
                Entry {
                    path: p.clone(),
                    options: default_options(),
                    model: None,
                },
            );
            (p, default_options())
        } else {
            let names: Vec<&str> = std::iter::once("default")
                .chain(r.keys().map(String::as_str).filter(|n| *n != "default"))
                .collect();
            return Err(sql_error(format!(
                "no model named '{name}'; load one with phenix_model_load(name, path) (loaded: {})",
                names.join(", ")
            )));
        }
    };
    let m = Model::load_cached(&path, &options)
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

fn featurizer(radius: u32, n_bits: usize) -> Result<Arc<MorganFeaturizer>, phenix_models::Error> {
    type Featurizers = Mutex<HashMap<(u32, usize), Arc<MorganFeaturizer>>>;
    static F: OnceLock<Featurizers> = OnceLock::new();
    let mut m = F
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(f) = m.get(&(radius, n_bits)) {
        return Ok(f.clone());
    }
    let f = Arc::new(MorganFeaturizer::new(radius, n_bits)?);
    m.insert((radius, n_bits), f.clone());
    Ok(f)
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
        let fp = featurizer(radius as u32, n_bits as usize)
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
    let embed_flags = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS;
    create_scalar(conn, "phenix_embed_molecule", 3, embed_flags, |ctx| {
        let f = "phenix_embed_molecule";
        let name = text_arg(ctx.get_raw(0), f, "argument 1 (model)")?;
        let smiles = text_arg(ctx.get_raw(1), f, "argument 2 (SMILES)")?;
        let conc = number(ctx.get_raw(2), f, "argument 3 (concentration in µM)")?;
        let m = model(name)?;
        let v = m
            .embed_molecules(&[(smiles, conc)])
            .map_err(|e| sql_error(format!("{f}: {e}")))?;
        Ok(Value::Blob(encode_f16(&v)))
    })?;
    create_scalar(conn, "phenix_embed_phenomics", 2, embed_flags, |ctx| {
        let f = "phenix_embed_phenomics";
        let name = text_arg(ctx.get_raw(0), f, "argument 1 (model)")?;
        let m = model(name)?;
        let d = m.manifest().phenomics.input_dim;
        let profile = parse_vector(
            ctx.get_raw(1),
            &format!("{f} argument 2 (profile)"),
            Some((d, ElemType::F32)),
        )
        .map_err(sql_error)?;
        let v = m
            .embed_phenomics(&profile)
            .map_err(|e| sql_error(format!("{f}: {e}")))?;
        Ok(Value::Blob(encode_f16(&v)))
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
            path,
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
    // `default` is always listed (loading it here reports its real dimension).
    model("default")?;
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
                Value::Text(e.path.display().to_string()),
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

/// Rows of the inner query, embedded in batches.
fn embed_rows(conn: &Connection, args: &[ValueRef<'_>]) -> rusqlite::Result<Vec<Vec<Value>>> {
    let f = "phenix_embed_molecules";
    let name = text_arg(args[0], f, "argument 1 (model)")?.to_string();
    let sql = text_arg(args[1], f, "argument 2 (query)")?.to_string();
    let m = model(&name)?;
    let mut stmt = conn
        .prepare(&sql)
        .map_err(|e| sql_error(format!("{f}: the query does not prepare: {e}")))?;
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
    for chunk in items.chunks(1024) {
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
    }
    Ok(rows)
}
