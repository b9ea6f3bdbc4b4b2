//! Parsing `CREATE VIRTUAL TABLE t USING phenix(...)` arguments.
//!
//! ```sql
//! CREATE VIRTUAL TABLE molecules USING phenix(
//!   embedding float16[256] distance=cosine,  -- exactly one vector column: float16[N] | float32[N] | float[N]
//!   smiles TEXT,                             -- metadata: stored in SQLite, pre-filtered in KNN
//!   concentration REAL,
//!   +note TEXT,                              -- auxiliary: stored and returned, not pre-filtered
//!   index=ivf(lists=1024, codes=sq8)         -- optional: an IVF index (see `super::index`)
//! )
//! ```

use phenix_core::store::{Layout, MAX_DIM};
use phenix_core::{ElemType, Metric};

/// How a column definition is wrong in `CREATE VIRTUAL TABLE … USING phenix(…)` (each message names the
/// table, the argument and what was expected). Reaches SQL as `SQLITE_ERROR` through
/// [`crate::Error::Schema`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The table's name is one of its hidden or row-id columns.
    #[error("phenix table {table}: a phenix table cannot be named `{table}`: distance, k, rank, rowid, oid and _rowid_ name its hidden and row-id columns")]
    ReservedTableName {
        /// The table.
        table: String,
    },
    /// A column name that is not an identifier.
    #[error("phenix table {table}: `{arg}`: column name `{name}` must be letters, digits and _ (not starting with a digit); {USAGE}")]
    BadColumnName {
        /// The table.
        table: String,
        /// The column definition.
        arg: String,
        /// The name found.
        name: String,
    },
    /// A column named like a hidden column or the table.
    #[error("phenix table {table}: column name `{name}` is reserved (distance, k, rank, rowid and the table's own name are phenix's)")]
    ReservedColumnName {
        /// The table.
        table: String,
        /// The name found.
        name: String,
    },
    /// A column declared twice (names compare case-insensitively).
    #[error("phenix table {table}: column `{name}` is declared twice")]
    DuplicateColumn {
        /// The table.
        table: String,
        /// The second declaration's name.
        name: String,
    },
    /// `+name float16[N]`.
    #[error("phenix table {table}: `{arg}`: the vector column cannot be auxiliary (+)")]
    AuxiliaryVector {
        /// The table.
        table: String,
        /// The column definition.
        arg: String,
    },
    /// A dimension that is not an integer in 1..=MAX_DIM.
    #[error(
        "phenix table {table}: `{arg}`: dimension in `{ty}` must be an integer in 1..={MAX_DIM}"
    )]
    BadDimension {
        /// The table.
        table: String,
        /// The column definition.
        arg: String,
        /// The type given.
        ty: String,
    },
    /// A vector-column option without `=`.
    #[error(
        "phenix table {table}: `{arg}`: option `{opt}` must be key=value (distance=cosine|l2|dot)"
    )]
    OptionNotKeyValue {
        /// The table.
        table: String,
        /// The column definition.
        arg: String,
        /// The option found.
        opt: String,
    },
    /// `distance=` given twice.
    #[error("phenix table {table}: `{arg}`: the distance is given twice; give one of distance=cosine|l2|dot")]
    DistanceTwice {
        /// The table.
        table: String,
        /// The column definition.
        arg: String,
    },
    /// A distance other than cosine, l2 or dot.
    #[error(
        "phenix table {table}: `{arg}`: unknown distance `{distance}`; expected cosine, l2 or dot"
    )]
    UnknownDistance {
        /// The table.
        table: String,
        /// The column definition.
        arg: String,
        /// The distance given.
        distance: String,
    },
    /// An option other than `distance=`.
    #[error(
        "phenix table {table}: `{arg}`: unknown option `{key}`; expected distance=cosine|l2|dot"
    )]
    UnknownOption {
        /// The table.
        table: String,
        /// The column definition.
        arg: String,
        /// The option's key.
        key: String,
    },
    /// A second vector column.
    #[error("phenix table {table}: `{arg}`: a phenix table has exactly one vector column")]
    SecondVector {
        /// The table.
        table: String,
        /// The column definition.
        arg: String,
    },
    /// A vector layout the store refuses.
    #[error("phenix table {table}: {source}")]
    Layout {
        /// The table.
        table: String,
        /// The store's reason.
        #[source]
        source: phenix_core::Error,
    },
    /// A column type phenix does not know.
    #[error("phenix table {table}: `{arg}`: unknown column type `{ty}`; expected float16[N], float32[N], float[N], TEXT, INTEGER, REAL, BLOB or NUMERIC")]
    UnknownType {
        /// The table.
        table: String,
        /// The column definition.
        arg: String,
        /// The type given.
        ty: String,
    },
    /// No vector column.
    #[error("phenix table {table}: no vector column; declare one, e.g. `embedding float16[256] distance=cosine`")]
    NoVector {
        /// The table.
        table: String,
    },
    /// A bad `index=` declaration (an unknown kind or option, a value out of range, a second index).
    #[error("phenix table {table}: `{arg}`: {reason}")]
    BadIndex {
        /// The table.
        table: String,
        /// The declaration.
        arg: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// A column named `nprobe` or `exact` in a table with an index (its hidden columns).
    #[error("phenix table {table}: column name `{name}` is reserved in a table with an index (nprobe and exact are its hidden columns)")]
    ReservedIndexColumn {
        /// The table.
        table: String,
        /// The name found.
        name: String,
    },
}

/// What a column definition looks like, for messages.
const USAGE: &str =
    "expected `name float16[N] [distance=cosine|l2|dot]`, `name TYPE` or `+name TYPE`";

/// A metadata or auxiliary column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Its name as declared.
    pub name: String,
    /// Its declared SQL type (`TEXT`, `INTEGER`, `REAL`, `BLOB`, `NUMERIC`, or empty).
    pub decl_type: String,
    /// Auxiliary (`+name`): not used for pre-filtering.
    pub aux: bool,
}

/// The parsed table definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDef {
    /// The vector column's name.
    pub vector: String,
    /// Its layout.
    pub layout: Layout,
    /// Metadata columns first, then auxiliary ones, in declaration order within each group.
    pub columns: Vec<Column>,
    /// The declared IVF index (`index=ivf(...)`), if any. Not part of [`TableDef::canonical`]: the
    /// declaration lives in the schema's `CREATE VIRTUAL TABLE` statement, which cannot change.
    pub index: Option<super::index::IndexDecl>,
}

const TYPES: &[&str] = &[
    "TEXT", "INTEGER", "INT", "REAL", "FLOAT", "DOUBLE", "BLOB", "NUMERIC",
];
const RESERVED: &[&str] = &["distance", "k", "rowid", "oid", "_rowid_", "rank"];
/// The hidden columns of a table with an index (reserved only there, so that tables without an index
/// keep columns of these names).
const INDEX_RESERVED: &[&str] = &["nprobe", "exact"];

fn is_ident(s: &str) -> bool {
    let mut ch = s.chars();
    matches!(ch.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && ch.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses the module arguments (everything after the table name).
pub fn parse(table: &str, args: &[&str]) -> Result<TableDef, SchemaError> {
    let mut vector: Option<(String, Layout)> = None;
    let mut meta = Vec::new();
    let mut aux = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut index: Option<super::index::IndexDecl> = None;
    let t = || table.to_string();
    if RESERVED.contains(&table.to_ascii_lowercase().as_str()) {
        return Err(SchemaError::ReservedTableName { table: t() });
    }
    for raw in args {
        let arg = raw.trim();
        if arg.is_empty() {
            continue;
        }
        if let Some((k, v)) = arg.split_once('=') {
            if k.trim().eq_ignore_ascii_case("index") {
                if index.is_some() {
                    return Err(SchemaError::BadIndex {
                        table: t(),
                        arg: arg.to_string(),
                        reason: "the index is declared twice; declare one index=ivf(...)".into(),
                    });
                }
                index = Some(super::index::IndexDecl::parse(v.trim()).map_err(|reason| {
                    SchemaError::BadIndex {
                        table: t(),
                        arg: arg.to_string(),
                        reason,
                    }
                })?);
                continue;
            }
        }
        let toks: Vec<&str> = arg.split_whitespace().collect();
        let (name, is_aux) = match toks[0].strip_prefix('+') {
            Some(n) => (n, true),
            None => (toks[0], false),
        };
        let a = || arg.to_string();
        if !is_ident(name) {
            return Err(SchemaError::BadColumnName {
                table: t(),
                arg: a(),
                name: name.to_string(),
            });
        }
        let lname = name.to_ascii_lowercase();
        if RESERVED.contains(&lname.as_str()) || lname == table.to_ascii_lowercase() {
            return Err(SchemaError::ReservedColumnName {
                table: t(),
                name: name.to_string(),
            });
        }
        if index.is_some() && INDEX_RESERVED.contains(&lname.as_str()) {
            return Err(SchemaError::ReservedIndexColumn {
                table: t(),
                name: name.to_string(),
            });
        }
        if seen.contains(&lname) {
            return Err(SchemaError::DuplicateColumn {
                table: t(),
                name: name.to_string(),
            });
        }
        seen.push(lname);
        let ty = toks.get(1).copied().unwrap_or("");
        if let Some((elem, dim)) = parse_vector_type(ty) {
            if is_aux {
                return Err(SchemaError::AuxiliaryVector {
                    table: t(),
                    arg: a(),
                });
            }
            let dim = dim.ok_or_else(|| SchemaError::BadDimension {
                table: t(),
                arg: a(),
                ty: ty.to_string(),
            })?;
            let mut metric = Metric::Cosine;
            let mut metric_given = false;
            for opt in &toks[2..] {
                let (k, v) = opt
                    .split_once('=')
                    .ok_or_else(|| SchemaError::OptionNotKeyValue {
                        table: t(),
                        arg: a(),
                        opt: opt.to_string(),
                    })?;
                match k.to_ascii_lowercase().as_str() {
                    "distance" | "distance_metric" if metric_given => {
                        return Err(SchemaError::DistanceTwice {
                            table: t(),
                            arg: a(),
                        })
                    }
                    "distance" | "distance_metric" => {
                        metric_given = true;
                        metric = Metric::parse(v).ok_or_else(|| SchemaError::UnknownDistance {
                            table: t(),
                            arg: a(),
                            distance: v.to_string(),
                        })?
                    }
                    _ => {
                        return Err(SchemaError::UnknownOption {
                            table: t(),
                            arg: a(),
                            key: k.to_string(),
                        })
                    }
                }
            }
            if vector.is_some() {
                return Err(SchemaError::SecondVector {
                    table: t(),
                    arg: a(),
                });
            }
            let layout = Layout::new(dim, elem, metric)
                .map_err(|source| SchemaError::Layout { table: t(), source })?;
            vector = Some((name.to_string(), layout));
            continue;
        }
        if toks.len() > 2 || (!ty.is_empty() && !TYPES.contains(&ty.to_ascii_uppercase().as_str()))
        {
            return Err(SchemaError::UnknownType {
                table: t(),
                arg: a(),
                ty: toks[1..].join(" "),
            });
        }
        let c = Column {
            name: name.to_string(),
            decl_type: ty.to_ascii_uppercase(),
            aux: is_aux,
        };
        if is_aux {
            aux.push(c)
        } else {
            meta.push(c)
        }
    }
    let (vname, layout) = vector.ok_or_else(|| SchemaError::NoVector { table: t() })?;
    meta.extend(aux);
    if index.is_some() {
        // A column declared before the index is checked here.
        if let Some(c) = meta
            .iter()
            .find(|c| INDEX_RESERVED.contains(&c.name.to_ascii_lowercase().as_str()))
        {
            return Err(SchemaError::ReservedIndexColumn {
                table: t(),
                name: c.name.clone(),
            });
        }
    }
    Ok(TableDef {
        vector: vname,
        layout,
        columns: meta,
        index,
    })
}

/// `float16[N]` / `float32[N]` / `float[N]` → element type and dimension (`None`: not an integer in
/// 1..=MAX_DIM).
fn parse_vector_type(ty: &str) -> Option<(ElemType, Option<usize>)> {
    let lower = ty.to_ascii_lowercase();
    let (elem, rest) = if let Some(r) = lower.strip_prefix("float16[") {
        (ElemType::F16, r)
    } else if let Some(r) = lower.strip_prefix("float32[") {
        (ElemType::F32, r)
    } else if let Some(r) = lower.strip_prefix("float[") {
        (ElemType::F32, r)
    } else {
        return None;
    };
    let dim = rest
        .strip_suffix(']')
        .and_then(|d| d.parse::<usize>().ok())
        .filter(|&d| (1..=MAX_DIM).contains(&d));
    Some((elem, dim))
}

impl TableDef {
    /// The `CREATE TABLE` statement declared to SQLite (hidden columns `distance` and `k` last, then
    /// `nprobe` and `exact` in a table with an index).
    ///
    /// The last hidden column carries the table's own name: `INSERT INTO t(t) VALUES ('optimize')` runs a
    /// command (FTS5's convention).
    pub fn declare(&self, table: &str) -> String {
        let mut s = format!("CREATE TABLE x(\"{}\"", self.vector);
        for c in &self.columns {
            s.push_str(&format!(", \"{}\" {}", c.name, c.decl_type));
        }
        s.push_str(", distance HIDDEN, k HIDDEN");
        if self.index.is_some() {
            s.push_str(", nprobe HIDDEN, exact HIDDEN");
        }
        s.push_str(&format!(", \"{}\" HIDDEN)", table.replace('"', "\"\"")));
        s
    }
    /// Index of the vector column in the declared table.
    pub const VECTOR_COL: i32 = 0;
    /// Index in the declared table of `columns[i]` (metadata and aux columns follow the vector).
    pub fn meta_col(i: usize) -> i32 {
        1 + i as i32
    }
    /// The `columns` index of declared column `col` (`col` >= 1).
    pub fn meta_index(col: i32) -> usize {
        (col - 1) as usize
    }
    /// The `columns` index of declared column `col`, if it is a metadata or aux column.
    pub fn column_at(&self, col: i32) -> Option<usize> {
        (col >= 1 && col <= self.columns.len() as i32).then(|| Self::meta_index(col))
    }
    /// Number of metadata (filterable) columns.
    pub fn n_meta(&self) -> usize {
        self.columns.iter().filter(|c| !c.aux).count()
    }
    /// Index of the hidden `distance` column.
    pub fn distance_col(&self) -> i32 {
        1 + self.columns.len() as i32
    }
    /// Index of the hidden `k` column.
    pub fn k_col(&self) -> i32 {
        2 + self.columns.len() as i32
    }
    /// Index of the hidden `nprobe` column (a table with an index only).
    pub fn nprobe_col(&self) -> Option<i32> {
        self.index.is_some().then(|| 3 + self.columns.len() as i32)
    }
    /// Index of the hidden `exact` column (a table with an index only).
    pub fn exact_col(&self) -> Option<i32> {
        self.index.is_some().then(|| 4 + self.columns.len() as i32)
    }
    /// Index of the hidden command column (named after the table).
    pub fn command_col(&self) -> i32 {
        3 + self.columns.len() as i32 + if self.index.is_some() { 2 } else { 0 }
    }
    /// A canonical text form of the definition, stored in the info shadow table and compared on connect.
    pub fn canonical(&self) -> String {
        let mut s = format!(
            "{} {}[{}] distance={}",
            self.vector,
            self.layout.elem(),
            self.layout.dim(),
            self.layout.metric()
        );
        for c in &self.columns {
            s.push_str(&format!(
                ", {}{} {}",
                if c.aux { "+" } else { "" },
                c.name,
                c.decl_type
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let d = parse(
            "molecules",
            &[
                "embedding float16[256] distance=cosine",
                "smiles TEXT",
                "concentration REAL",
                "+note TEXT",
            ],
        )
        .unwrap();
        assert_eq!(d.vector, "embedding");
        assert_eq!(
            d.layout,
            Layout::new(256, ElemType::F16, Metric::Cosine).unwrap()
        );
        assert_eq!(d.n_meta(), 2);
        assert_eq!(d.columns[2].name, "note");
        assert!(d.columns[2].aux);
        assert_eq!(
            d.declare("molecules"),
            "CREATE TABLE x(\"embedding\", \"smiles\" TEXT, \"concentration\" REAL, \"note\" TEXT, distance HIDDEN, k HIDDEN, \"molecules\" HIDDEN)"
        );
        let f = parse("t", &["v float[3]"]).unwrap();
        assert_eq!(f.layout.elem(), ElemType::F32);
        assert_eq!(f.layout.metric(), Metric::Cosine);
        assert_eq!(
            parse("t", &["v float32[3] distance=l2"])
                .unwrap()
                .layout
                .metric(),
            Metric::L2
        );
    }

    #[test]
    fn rejects_bad_definitions_with_a_reason() {
        let cases: &[(&[&str], &str)] = &[
            (&["smiles TEXT"], "no vector column"),
            (
                &["a float16[4]", "b float16[4]"],
                "exactly one vector column",
            ),
            (&["a float16[0]"], "dimension"),
            (&["a float16[x]"], "dimension"),
            (&["a float16[4] distance=manhattan"], "unknown distance"),
            (&["a float16[4] metric=l2"], "unknown option"),
            (&["a float16[4]", "b VARCHAR"], "unknown column type"),
            (&["a float16[4]", "distance REAL"], "reserved"),
            (&["a float16[4]", "A TEXT"], "declared twice"),
            (&["a float16[4]", "1x TEXT"], "column name"),
            (&["a float16[4]", "x\"y TEXT"], "column name"),
            (&["+a float16[4]"], "auxiliary"),
        ];
        for (args, want) in cases {
            let e = parse("t", args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    /// The errors are typed: a caller can tell what was wrong without reading the message.
    #[test]
    fn errors_are_typed() {
        use super::SchemaError as E;
        assert!(
            matches!(parse("k", &["a float16[4]"]), Err(E::ReservedTableName { table }) if table == "k")
        );
        assert!(matches!(parse("t", &[]), Err(E::NoVector { .. })));
        assert!(matches!(
            parse("t", &["a float16[0]"]),
            Err(E::BadDimension { ty, .. }) if ty == "float16[0]"
        ));
        assert!(matches!(
            parse("t", &["a float16[4] distance=x"]),
            Err(E::UnknownDistance { distance, .. }) if distance == "x"
        ));
        assert!(matches!(
            parse("t", &["a float16[4] distance"]),
            Err(E::OptionNotKeyValue { .. })
        ));
        assert!(matches!(
            parse("t", &["a float16[4] distance=l2 distance=dot"]),
            Err(E::DistanceTwice { .. })
        ));
        let e: crate::Error = parse("t", &["a TEXT"]).unwrap_err().into();
        assert_eq!(e.code(), rusqlite::ffi::SQLITE_ERROR);
        assert!(
            e.to_string()
                .starts_with("phenix: phenix table t: no vector column"),
            "{e}"
        );
    }
}
