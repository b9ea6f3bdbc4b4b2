//! Query planning (xBestIndex) and the plan's travel to xFilter.
//!
//! xBestIndex picks a [`Plan`] and lists, in argv order, what each constraint argument is
//! ([`IdxArg`]); [`encode`] turns that into SQLite's `idxNum` (the plan) and `idxStr` (the arguments),
//! and xFilter gets it back with [`parse`], which rejects anything it did not write.
//!
//! `idxNum`: 1 = KNN (MATCH on the vector column), 2 = point lookup by rowid, 3 = scan.
//! `idxStr`: comma-separated tokens, one per argument: `m` (query vector), `k`, `l` (LIMIT),
//! `d<` / `d<=` (distance bound), `p` (`nprobe =`), `e` (`exact =`; both only in a table with an
//! index), `r` (rowid =), `R` (rowid IN, all values at once), and
//! `c<col>:<op>` (metadata constraint on metadata column `col`, 0-based; `op` one of [`MetaOp`]'s tokens
//! `= > >= < <= != is isnot null notnull`, or `in` for an IN list handled all at once).
//!
//! What a KNN plan filters *before* the k nearest are chosen (pre-filters): the metadata comparisons
//! above with SQLite's default BINARY collation, IN lists on metadata columns and on rowid, `rowid =`,
//! and the distance bound. Everything else SQLite applies to the k rows afterwards (post-filters, which
//! can leave fewer than k rows): OR, functions of columns (`lower(s) = …`), LIKE/GLOB/REGEXP,
//! comparisons with another collation (`COLLATE NOCASE`), constraints on `+aux` columns, and rowid
//! ranges.
//!
//! To add a metadata operator: a [`MetaOp`] variant with its token, its SQLite constraint in
//! [`best_index`], its SQL in [`MetaOp::sql`], and its ordering mask in `prefilter.rs`
//! (`MetaCond::new`).

use super::schema::TableDef;
use crate::error::Error;
use rusqlite::vtab::{IndexConstraintOp, IndexInfo};
use std::ffi::c_int;

/// How a query runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// `MATCH` on the vector column: exact top-k over the (pre-filtered) live rows.
    Knn,
    /// `rowid = ?`: one row.
    Point,
    /// Everything else: `<t>_rows` in rowid order, metadata constraints applied in SQLite.
    Scan,
}

impl Plan {
    fn idx_num(self) -> c_int {
        match self {
            Plan::Knn => 1,
            Plan::Point => 2,
            Plan::Scan => 3,
        }
    }
    fn from_idx_num(n: c_int) -> Option<Plan> {
        match n {
            1 => Some(Plan::Knn),
            2 => Some(Plan::Point),
            3 => Some(Plan::Scan),
            _ => None,
        }
    }
}

/// A metadata comparison pushed into the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaOp {
    /// `=`
    Eq,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `!=`
    Ne,
    /// `IS`
    Is,
    /// `IS NOT`
    IsNot,
    /// `IS NULL` (no argument)
    Null,
    /// `IS NOT NULL` (no argument)
    NotNull,
}

const META_OPS: [(MetaOp, &str); 10] = [
    (MetaOp::Eq, "="),
    (MetaOp::Gt, ">"),
    (MetaOp::Ge, ">="),
    (MetaOp::Lt, "<"),
    (MetaOp::Le, "<="),
    (MetaOp::Ne, "!="),
    (MetaOp::Is, "is"),
    (MetaOp::IsNot, "isnot"),
    (MetaOp::Null, "null"),
    (MetaOp::NotNull, "notnull"),
];

impl MetaOp {
    fn token(self) -> &'static str {
        META_OPS
            .iter()
            .find(|(o, _)| *o == self)
            .map_or("=", |(_, t)| t)
    }
    fn from_token(t: &str) -> Option<MetaOp> {
        META_OPS.iter().find(|(_, s)| *s == t).map(|(o, _)| *o)
    }
    fn from_constraint(op: IndexConstraintOp) -> Option<MetaOp> {
        use IndexConstraintOp::*;
        Some(match op {
            SQLITE_INDEX_CONSTRAINT_EQ => MetaOp::Eq,
            SQLITE_INDEX_CONSTRAINT_GT => MetaOp::Gt,
            SQLITE_INDEX_CONSTRAINT_GE => MetaOp::Ge,
            SQLITE_INDEX_CONSTRAINT_LT => MetaOp::Lt,
            SQLITE_INDEX_CONSTRAINT_LE => MetaOp::Le,
            SQLITE_INDEX_CONSTRAINT_NE => MetaOp::Ne,
            SQLITE_INDEX_CONSTRAINT_IS => MetaOp::Is,
            SQLITE_INDEX_CONSTRAINT_ISNOT => MetaOp::IsNot,
            SQLITE_INDEX_CONSTRAINT_ISNULL => MetaOp::Null,
            SQLITE_INDEX_CONSTRAINT_ISNOTNULL => MetaOp::NotNull,
            _ => return None,
        })
    }
    /// Whether the operator takes a right-hand side argument.
    pub(crate) fn has_rhs(self) -> bool {
        !matches!(self, MetaOp::Null | MetaOp::NotNull)
    }
    /// The SQL condition on column `col` (quoted), with the argument bound as `?argn`.
    pub(crate) fn sql(self, col: &str, argn: usize) -> String {
        match self {
            MetaOp::Is => format!("{col} IS ?{argn}"),
            MetaOp::IsNot => format!("{col} IS NOT ?{argn}"),
            MetaOp::Null => format!("{col} IS NULL"),
            MetaOp::NotNull => format!("{col} IS NOT NULL"),
            o => format!("{col} {} ?{argn}", o.token()),
        }
    }
}

/// What one xFilter argument is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdxArg {
    /// The query vector (`MATCH`).
    Match,
    /// `k = ?`.
    K,
    /// `LIMIT ?`.
    Limit,
    /// `distance < ?`.
    DistLt,
    /// `distance <= ?`.
    DistLe,
    /// `nprobe = ?` (a table with an index).
    Nprobe,
    /// `exact = ?` (a table with an index).
    Exact,
    /// `rowid = ?`.
    Rowid,
    /// `rowid IN (…)`, all values at once (`sqlite3_vtab_in`).
    RowidIn,
    /// A metadata constraint on metadata column `.0` (0-based).
    Meta(usize, MetaOp),
    /// `<metadata column .0> IN (…)`, all values at once (`sqlite3_vtab_in`).
    MetaIn(usize),
    /// A metadata constraint under a built-in collation other than BINARY.
    MetaColl(usize, MetaOp, Coll),
}

/// The built-in collations a pre-filter applies in SQL (others are left to SQLite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coll {
    /// `COLLATE NOCASE`
    NoCase,
    /// `COLLATE RTRIM`
    Rtrim,
}

impl Coll {
    /// The collation's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Coll::NoCase => "NOCASE",
            Coll::Rtrim => "RTRIM",
        }
    }
    fn token(self) -> &'static str {
        match self {
            Coll::NoCase => "nocase",
            Coll::Rtrim => "rtrim",
        }
    }
    fn from_token(t: &str) -> Option<Coll> {
        match t {
            "nocase" => Some(Coll::NoCase),
            "rtrim" => Some(Coll::Rtrim),
            _ => None,
        }
    }
}

impl IdxArg {
    fn token(self) -> String {
        match self {
            IdxArg::Match => "m".into(),
            IdxArg::K => "k".into(),
            IdxArg::Limit => "l".into(),
            IdxArg::DistLt => "d<".into(),
            IdxArg::DistLe => "d<=".into(),
            IdxArg::Nprobe => "p".into(),
            IdxArg::Exact => "e".into(),
            IdxArg::Rowid => "r".into(),
            IdxArg::RowidIn => "R".into(),
            IdxArg::Meta(c, o) => format!("c{c}:{}", o.token()),
            IdxArg::MetaIn(c) => format!("c{c}:in"),
            IdxArg::MetaColl(c, o, k) => format!("c{c}:{}/{}", o.token(), k.token()),
        }
    }
    fn from_token(t: &str) -> Option<IdxArg> {
        Some(match t {
            "m" => IdxArg::Match,
            "k" => IdxArg::K,
            "l" => IdxArg::Limit,
            "d<" => IdxArg::DistLt,
            "d<=" => IdxArg::DistLe,
            "p" => IdxArg::Nprobe,
            "e" => IdxArg::Exact,
            "r" => IdxArg::Rowid,
            "R" => IdxArg::RowidIn,
            c => {
                let (col, op) = c.strip_prefix('c')?.split_once(':')?;
                if op == "in" {
                    IdxArg::MetaIn(col.parse().ok()?)
                } else if let Some((op, coll)) = op.split_once('/') {
                    IdxArg::MetaColl(
                        col.parse().ok()?,
                        MetaOp::from_token(op)?,
                        Coll::from_token(coll)?,
                    )
                } else {
                    IdxArg::Meta(col.parse().ok()?, MetaOp::from_token(op)?)
                }
            }
        })
    }
}

/// `(idxNum, idxStr)` of a plan and its arguments.
pub(crate) fn encode(plan: Plan, args: &[IdxArg]) -> (c_int, String) {
    let s: Vec<String> = args.iter().map(|a| a.token()).collect();
    (plan.idx_num(), s.join(","))
}

/// The plan and arguments [`encode`] wrote; an error for anything else, and for a metadata column
/// that is not one of the table's (`n_meta` of them).
pub(crate) fn parse(
    idx_num: c_int,
    idx_str: &str,
    n_meta: usize,
) -> Result<(Plan, Vec<IdxArg>), Error> {
    let bad = || Error::Internal(format!("unknown query plan {idx_num} `{idx_str}`"));
    let plan = Plan::from_idx_num(idx_num).ok_or_else(bad)?;
    let args = if idx_str.is_empty() {
        Vec::new()
    } else {
        idx_str
            .split(',')
            .map(|t| match IdxArg::from_token(t) {
                Some(IdxArg::Meta(c, _) | IdxArg::MetaIn(c) | IdxArg::MetaColl(c, _, _))
                    if c >= n_meta =>
                {
                    None
                }
                a => a,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?
    };
    Ok((plan, args))
}

/// xBestIndex: the plan for the usable constraints, its arguments, cost and ordering.
pub(crate) fn best_index(def: &TableDef, info: &mut IndexInfo) -> rusqlite::Result<bool> {
    let nmeta = def.n_meta() as i32;
    let (dcol, kcol) = (def.distance_col(), def.k_col());
    // (constraint index, argument, whether it is an IN list).
    let mut args: Vec<(usize, IdxArg, bool)> = Vec::new();
    let mut matches = 0;
    let mut has_rowid = false;
    for (i, c) in info.constraints().enumerate() {
        if !c.is_usable() {
            continue;
        }
        let col = c.column();
        let op = c.operator();
        use IndexConstraintOp::*;
        let a = match (col, op) {
            (TableDef::VECTOR_COL, SQLITE_INDEX_CONSTRAINT_MATCH) => {
                matches += 1;
                Some(IdxArg::Match)
            }
            (c, SQLITE_INDEX_CONSTRAINT_EQ) if c == kcol => Some(IdxArg::K),
            (_, SQLITE_INDEX_CONSTRAINT_LIMIT) => Some(IdxArg::Limit),
            (c, SQLITE_INDEX_CONSTRAINT_LT) if c == dcol => Some(IdxArg::DistLt),
            (c, SQLITE_INDEX_CONSTRAINT_LE) if c == dcol => Some(IdxArg::DistLe),
            (c, SQLITE_INDEX_CONSTRAINT_EQ) if Some(c) == def.nprobe_col() => Some(IdxArg::Nprobe),
            (c, SQLITE_INDEX_CONSTRAINT_EQ) if Some(c) == def.exact_col() => Some(IdxArg::Exact),
            (-1, SQLITE_INDEX_CONSTRAINT_EQ) => {
                has_rowid = true;
                Some(IdxArg::Rowid)
            }
            // The constraint's collation decides how it compares: BINARY (the cache's order), the
            // built-in NOCASE and RTRIM (applied in the pre-filter's SQL); any other collation is
            // left to SQLite.
            (c, op) if c >= 1 && c <= nmeta => {
                let m = TableDef::meta_index(c);
                match info.collation(i).map(str::to_ascii_uppercase).as_deref() {
                    Ok("BINARY") => MetaOp::from_constraint(op).map(|o| IdxArg::Meta(m, o)),
                    Ok("NOCASE") => {
                        MetaOp::from_constraint(op).map(|o| IdxArg::MetaColl(m, o, Coll::NoCase))
                    }
                    Ok("RTRIM") => {
                        MetaOp::from_constraint(op).map(|o| IdxArg::MetaColl(m, o, Coll::Rtrim))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(a) = a {
            let is_in = matches!(
                a,
                IdxArg::Rowid | IdxArg::Meta(_, MetaOp::Eq) | IdxArg::MetaColl(_, MetaOp::Eq, _)
            ) && super::vtab_in::is_in(info, i);
            args.push((i, a, is_in));
        }
    }
    if matches > 1 {
        return Err(Error::InvalidArgument(format!(
            "phenix: a query may have one MATCH on {} per table reference; join the table to itself to search with two vectors",
            def.vector
        ))
        .into());
    }
    let plan = if matches > 0 {
        Plan::Knn
    } else if has_rowid {
        Plan::Point
    } else {
        Plan::Scan
    };
    // Only the arguments the plan uses.
    args.retain(|(_, a, _)| match plan {
        Plan::Knn => true,
        Plan::Point => matches!(a, IdxArg::Rowid),
        Plan::Scan => matches!(a, IdxArg::Meta(..) | IdxArg::MetaColl(..)),
    });
    if plan == Plan::Knn {
        // With k, an IN list must filter as one set: SQLite would otherwise run the plan once per
        // value and return k rows for each. Take it all at once; if SQLite cannot hand it over so,
        // leave it to SQLite.
        args.retain_mut(|(i, a, is_in)| {
            if !*is_in {
                return true;
            }
            if matches!(a, IdxArg::MetaColl(..)) {
                // A collated IN list: SQLite applies it.
                return false;
            }
            if !super::vtab_in::take_all(info, *i) {
                return false;
            }
            *a = match *a {
                IdxArg::Rowid => IdxArg::RowidIn,
                IdxArg::Meta(c, _) => IdxArg::MetaIn(c),
                other => other,
            };
            true
        });
    }
    // One rowid argument is enough.
    if plan == Plan::Point {
        args.truncate(1);
    }
    for (argv, (i, a, _)) in (1..).zip(args.iter()) {
        let mut u = info.constraint_usage(*i);
        u.set_argv_index(argv);
        // Metadata and rowid constraints are re-checked by SQLite (same affinity rules, so the
        // pre-filter is exact); k, MATCH, LIMIT and the distance bound are ours alone.
        u.set_omit(!matches!(
            a,
            IdxArg::Meta(..)
                | IdxArg::MetaIn(_)
                | IdxArg::MetaColl(..)
                | IdxArg::Limit
                | IdxArg::Rowid
                | IdxArg::RowidIn
        ));
    }
    if plan == Plan::Knn {
        // Rows come out in ascending distance, ties by rowid.
        let mut ob: Vec<(i32, bool)> = info
            .order_bys()
            .map(|o| (o.column(), o.is_order_by_desc()))
            .collect();
        if ob.len() == 2 && ob[1] == (-1, false) {
            ob.pop();
        }
        if ob.len() == 1 && ob[0] == (dcol, false) {
            info.set_order_by_consumed(true);
        }
    }
    let only: Vec<IdxArg> = args.into_iter().map(|(_, a, _)| a).collect();
    let (num, s) = encode(plan, &only);
    info.set_idx_num(num);
    info.set_idx_str(&s);
    info.set_estimated_cost(match plan {
        Plan::Knn => 10.0,
        Plan::Point => 1.0,
        Plan::Scan => 1e6,
    });
    if plan == Plan::Point {
        info.set_estimated_rows(1);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_inverts_encode_and_rejects_the_rest() {
        let args = [
            IdxArg::Match,
            IdxArg::K,
            IdxArg::Limit,
            IdxArg::DistLt,
            IdxArg::DistLe,
            IdxArg::Meta(0, MetaOp::Eq),
            IdxArg::Meta(2, MetaOp::NotNull),
            IdxArg::Meta(1, MetaOp::IsNot),
            IdxArg::MetaIn(1),
            IdxArg::MetaColl(0, MetaOp::Gt, Coll::NoCase),
            IdxArg::RowidIn,
            IdxArg::Nprobe,
            IdxArg::Exact,
        ];
        let (n, s) = encode(Plan::Knn, &args);
        assert_eq!(
            (n, s.as_str()),
            (
                1,
                "m,k,l,d<,d<=,c0:=,c2:notnull,c1:isnot,c1:in,c0:>/nocase,R,p,e"
            )
        );
        assert_eq!(parse(n, &s, 3).unwrap(), (Plan::Knn, args.to_vec()));
        assert_eq!(parse(3, "", 0).unwrap(), (Plan::Scan, vec![]));
        assert_eq!(
            parse(2, "r", 0).unwrap(),
            (Plan::Point, vec![IdxArg::Rowid])
        );
        for (n, s) in [
            (0, ""),
            (4, "m"),
            (1, "x"),
            (1, "c0"),
            (1, "c0:~"),
            (1, "cx:="),
            (1, "c3:="),
            (1, "m,"),
        ] {
            assert!(parse(n, s, 3).is_err(), "{n} {s}");
        }
    }
}
