"""The analysis functions (sql/src/analysis/) against their references: pycytominer 1.7 (normalize,
feature_select, modz), copairs 0.5 (average precision, mean average precision), numpy otherwise (the
activity null's documented random stream, top-x % recall, not-same-compound MoA accuracy).

Profiles are float32; inputs are float32-representable so both sides see the same numbers. Tolerances:
relative 1e-5 (plus 1e-5 absolute on unit-scale outputs), identical kept-feature lists, identical
activity calls at a fixed seed.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import HostError

from copairs import map as copairs_map  # noqa: E402
from pycytominer import feature_select, normalize  # noqa: E402
from pycytominer.cyto_utils.modz import modz_base  # noqa: E402

FEATS = [f"Cells_F{i}" for i in range(6)] + [f"Nuclei_F{i}" for i in range(4)]


def plate_frame(seed=0, plates=2, n_ctrl=40, n_trt=30, d=None):
    rng = np.random.default_rng(seed)
    feats = FEATS if d is None else [f"Cells_F{i}" for i in range(d)]
    rows = []
    for p in range(plates):
        off = rng.normal(0, 3, len(feats))
        scale = rng.uniform(0.5, 2, len(feats))
        mix = np.eye(len(feats)) + 0.3 * rng.normal(size=(len(feats), len(feats)))
        for i in range(n_ctrl + n_trt):
            x = (rng.normal(size=len(feats)) @ mix) * scale + off
            rows.append({"Metadata_Plate": f"P{p}", "Metadata_role": "DMSO" if i < n_ctrl else "trt",
                         "Metadata_well": f"P{p}_{i}", **dict(zip(feats, x.astype(np.float32).astype(float)))})
    return pd.DataFrame(rows), feats


def load(conn, df: pd.DataFrame, feats):
    cols = ", ".join(f'"{c}"' for c in df.columns)
    conn.execute(f"CREATE TABLE wells({cols})")
    conn.executemany(f"INSERT INTO wells VALUES ({', '.join('?' * len(df.columns))})", df.itertuples(index=False))
    conn.execute(
        "CREATE TABLE prof AS SELECT w.rowid AS id, w.Metadata_Plate AS plate, w.Metadata_role AS role, p.profile "
        "FROM phenix_pack('wells', 'Cells_%,Nuclei_%', '') p JOIN wells w ON w.rowid = p.rowid"
    )


def blob(b):
    return np.frombuffer(b, dtype="<f4")


def assert_close(got, want, rtol=1e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


def normalized(conn, method, options=None):
    opt = "" if options is None else f", '{json.dumps(options)}'"
    conn.execute("DROP TABLE IF EXISTS fits")
    conn.execute(f"CREATE TABLE fits AS SELECT plate, phenix_norm_fit('{method}', profile{opt}) AS fit "
                 "FROM prof WHERE role = 'DMSO' GROUP BY plate")
    rows = conn.execute("SELECT p.id, phenix_norm_apply(f.fit, p.profile) FROM prof p JOIN fits f USING (plate) ORDER BY p.id").fetchall()
    return np.stack([blob(b) for _, b in rows])


def reference(df, feats, **kw):
    out = []
    for _, g in df.groupby("Metadata_Plate", sort=True):
        r = normalize(g, features=feats, meta_features=["Metadata_Plate", "Metadata_role", "Metadata_well"],
                      samples="Metadata_role == 'DMSO'", **kw)
        out.append(r)
    r = pd.concat(out)
    r = r.set_index("Metadata_well").loc[df["Metadata_well"]]
    return r[[c for c in r.columns if not c.startswith("Metadata_")]].to_numpy()


def test_pack_matches_the_table_and_lists_features(py_host):
    df, feats = plate_frame()
    df["Cells_Location_Center_X"] = 1.0
    load(py_host.conn, df, feats)
    c = py_host.conn
    got = np.stack([blob(b) for (b,) in c.execute("SELECT profile FROM phenix_pack('wells', 'Cells_%,Nuclei_%', '%_Location_%') ORDER BY rowid")])
    assert_close(got, df[feats].to_numpy(np.float32), rtol=0)
    assert [n for _, n in c.execute("SELECT * FROM phenix_features('wells', 'Cells_%, Nuclei_%', '%_Location_%')")] == feats
    assert json.loads(c.execute("SELECT phenix_features_json('wells', 'Cells_%,Nuclei_%', '%_Location_%')").fetchone()[0]) == feats


@pytest.mark.parametrize("value,needle", [(None, "is NULL"), ("abc", "is 'abc', not a number"), ("", "empty string"),
                                           ("nan", "is NaN"), ("inf", "is inf"), (float("inf"), "is inf"), (1e39, "too large")])
def test_pack_names_row_and_column_of_a_bad_cell(py_host, value, needle):
    c = py_host.conn
    c.execute("CREATE TABLE w(Cells_a, Cells_b)")
    c.executemany("INSERT INTO w VALUES (?, ?)", [(1, 2), (3, value), (5, 6)])
    with pytest.raises(Exception) as e:
        c.execute("SELECT count(*) FROM phenix_pack('w', 'Cells_%', NULL)").fetchall()
    assert "row 2 of main.w, column Cells_b" in str(e.value) and needle in str(e.value), str(e.value)


@pytest.mark.parametrize("method,kw", [("robust", dict(method="mad_robustize")), ("standardize", dict(method="standardize"))])
def test_normalize_matches_pycytominer(py_host, method, kw):
    df, feats = plate_frame()
    load(py_host.conn, df, feats)
    assert_close(normalized(py_host.conn, method), reference(df, feats, **kw))


@pytest.mark.parametrize("sph", ["ZCA", "ZCA-cor", "PCA", "PCA-cor"])
def test_sphere_matches_pycytominer(py_host, sph):
    df, feats = plate_frame(seed=3)
    load(py_host.conn, df, feats)
    got = normalized(py_host.conn, "sphere", {"method": sph.lower(), "epsilon": 1e-6})
    want = reference(df, feats, method="spherize", spherize_method=sph, spherize_epsilon=1e-6)
    if sph.startswith("PCA"):
        # Principal axes have no sign of their own (numpy's SVD and faer's eigensolver pick either):
        # compare each output column up to sign.
        for plate in df["Metadata_Plate"].unique():
            m = (df["Metadata_Plate"] == plate).to_numpy()
            got[m] *= np.sign((got[m] * want[m]).sum(0))
    assert_close(got, want, rtol=1e-4 if sph.startswith("PCA") else 1e-5)


def test_sphere_with_too_few_controls_says_what_works_and_pads_like_pycytominer(py_host):
    df, feats = plate_frame(seed=4, plates=1, n_ctrl=6, n_trt=4)
    load(py_host.conn, df, feats)
    with pytest.raises(Exception) as e:
        normalized(py_host.conn, "sphere", {"method": "zca"})
    msg = str(e.value)
    assert "needs at least 11 control rows" in msg and '"pad": true' in msg and "robust" in msg, msg
    got = normalized(py_host.conn, "sphere", {"method": "zca", "pad": True})
    want = reference(df, feats, method="spherize", spherize_method="ZCA", spherize_epsilon=1e-6)
    assert_close(got, want, rtol=1e-4)


def test_feature_select_matches_pycytominer(py_host):
    rng = np.random.default_rng(7)
    n = 200
    x = rng.normal(size=(n, 12)).astype(np.float32)
    x[:, 3] = 1.0  # constant
    x[:, 4] = np.where(rng.random(n) < 0.02, 2.0, 1.0)  # near-constant (frequency)
    x[:, 5] = (x[:, 0] * 2 + rng.normal(scale=0.05, size=n)).astype(np.float32)  # correlated with 0
    x[:, 6] = (x[:, 1] - x[:, 2] * 0.1 + rng.normal(scale=0.01, size=n)).astype(np.float32)
    x[:, 7] = np.float32(1e-4) * rng.normal(size=n).astype(np.float32)  # tiny variance
    names = [f"Cells_F{i}" for i in range(12)]
    df = pd.DataFrame(x.astype(float), columns=names)
    c = py_host.conn
    c.execute("CREATE TABLE p(profile)")
    c.executemany("INSERT INTO p VALUES (?)", [(r.astype("<f4").tobytes(),) for r in x])
    ops = ["variance_threshold", "frequency_threshold", "correlation_threshold"]
    for op in [["variance_threshold"], ["frequency_threshold"], ["correlation_threshold"], ops]:
        want = feature_select(df, features=names, operation=op).columns.tolist()
        got = json.loads(c.execute("SELECT phenix_feature_select(profile, ?, ?) FROM p", (json.dumps(names), json.dumps({"operations": op}))).fetchone()[0])
        assert got == want, (op, got, want)
    kept = json.dumps(want)
    proj = blob(c.execute("SELECT phenix_select(profile, ?, ?) FROM p LIMIT 1", (json.dumps(names), kept)).fetchone()[0])
    assert_close(proj, df[want].to_numpy()[0], rtol=0)


def test_median_and_modz_match_pandas_and_pycytominer(py_host):
    rng = np.random.default_rng(11)
    c = py_host.conn
    c.execute("CREATE TABLE p(t, profile)")
    groups = {}
    for t in range(6):
        base = rng.normal(size=20)
        r = 2 + t % 3
        reps = (base + rng.normal(size=(r, 20)) * np.array([0.2, 0.5, 1.0, 2.0])[:r, None]).astype(np.float32)
        groups[t] = reps
        c.executemany("INSERT INTO p VALUES (?, ?)", [(t, r.astype("<f4").tobytes()) for r in reps])
    for t, reps in groups.items():
        med = blob(c.execute("SELECT phenix_median(profile) FROM p WHERE t = ?", (t,)).fetchone()[0])
        assert_close(med, np.median(reps.astype(np.float64), axis=0))
        modz = blob(c.execute("SELECT phenix_modz(profile) FROM p WHERE t = ?", (t,)).fetchone()[0])
        want = modz_base(pd.DataFrame(reps.astype(np.float64)), method="spearman", min_weight=0.01, precision=4)
        assert_close(modz, want.to_numpy())


# --- activity: numpy reimplementation of the documented stream -------------------------------------

MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.s = seed & MASK

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & MASK
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def index(self, n):
        return (self.next() * n) >> 64


def activity_reference(treatments, profiles, n_null, seed):
    order = sorted(range(len(treatments)), key=lambda i: (treatments[i], tuple(profiles[i].tolist())))
    t = [treatments[i] for i in order]
    u = profiles[order].astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)

    def cons(idx):
        g = u[idx] @ u[idx].T
        r = len(idx)
        return g[np.triu_indices(r, 1)].mean()

    groups = {}
    for i, k in enumerate(t):
        groups.setdefault(k, []).append(i)
    rng = SplitMix64(seed)
    nulls = {}
    for r in sorted({len(v) for v in groups.values() if len(v) >= 2}):
        null = []
        while len(null) < n_null:
            s = [rng.index(len(t)) for _ in range(r)]
            if len({t[i] for i in s}) == r:
                null.append(cons(s))
        nulls[r] = np.sort(null)
    out = {}
    for k in sorted(groups):
        idx = groups[k]
        if len(idx) < 2:
            out[k] = None
            continue
        c = cons(idx)
        ge = len(nulls[len(idx)]) - np.searchsorted(nulls[len(idx)], c, side="left")
        out[k] = (c, (1 + ge) / (1 + n_null))
    ks = [k for k in out if out[k]]
    p = np.array([out[k][1] for k in ks])
    o = np.argsort(p, kind="stable")
    q = np.minimum.accumulate((p[o] * len(p) / np.arange(1, len(p) + 1))[::-1])[::-1]
    qq = np.empty_like(q)
    qq[o] = np.minimum(q, 1)
    return {k: (out[k][0], out[k][1], qq[i]) for i, k in enumerate(ks)}


def test_activity_equals_numpy_with_the_documented_stream(py_host):
    rng = np.random.default_rng(5)
    c = py_host.conn
    c.execute("CREATE TABLE w(t, profile)")
    tr, pr = [], []
    for k in range(40):
        base = rng.normal(size=16) * (2.0 if k < 10 else 0.0)
        n_rep = 3 if k % 7 else 4
        for _ in range(n_rep):
            tr.append(f"cmpd{k:02d}")
            pr.append((base + rng.normal(size=16)).astype(np.float32))
    tr.append("single")
    pr.append(rng.normal(size=16).astype(np.float32))
    c.executemany("INSERT INTO w VALUES (?, ?)", [(a, b.astype("<f4").tobytes()) for a, b in zip(tr, pr)])
    got = json.loads(c.execute("SELECT phenix_activity(t, profile, 2000, 42) FROM w").fetchone()[0])
    want = activity_reference(tr, np.stack(pr), 2000, 42)
    by = {g["treatment"]: g for g in got}
    assert by["single"]["p_value"] is None and by["single"]["n_replicates"] == 1
    for k, (cons, p, q) in want.items():
        g = by[k]
        assert abs(g["consistency"] - cons) < 1e-9
        assert g["p_value"] == pytest.approx(p, abs=1e-12), k
        assert g["q_value"] == pytest.approx(q, abs=1e-12), k
    active = {k for k, v in want.items() if v[2] < 0.05}
    assert {g["treatment"] for g in got if g["q_value"] is not None and g["q_value"] < 0.05} == active
    assert {f"cmpd{k:02d}" for k in range(10)} <= active


# --- mAP against copairs ----------------------------------------------------------------------------

def activity_data(seed=9, n_trt=12, reps=4, n_ctrl=30, d=24):
    rng = np.random.default_rng(seed)
    rows, feats = [], []
    for i in range(n_ctrl):
        rows.append(("DMSO", 1))
        feats.append(rng.normal(size=d))
    for k in range(n_trt):
        base = rng.normal(size=d) * (1.5 if k % 3 == 0 else 0.3)
        for _ in range(reps):
            rows.append((f"c{k}", 0))
            feats.append(base + rng.normal(size=d))
    return rows, np.stack(feats).astype(np.float32)


def test_activity_map_equals_copairs(py_host):
    rows, x = activity_data()
    c = py_host.conn
    c.execute("CREATE TABLE w(id INTEGER PRIMARY KEY, t, ctrl, profile)")
    c.executemany("INSERT INTO w(t, ctrl, profile) VALUES (?, ?, ?)", [(t, k, v.astype("<f4").tobytes()) for (t, k), v in zip(rows, x)])
    got = json.loads(c.execute("SELECT phenix_activity_map(id, t, ctrl, profile, '{\"null_size\": 20000, \"seed\": 0}') FROM w").fetchone()[0])
    meta = pd.DataFrame({"Metadata_t": [t for t, _ in rows]})
    meta["Metadata_ref"] = np.where(meta["Metadata_t"] == "DMSO", np.arange(len(meta)), -1)
    ap = copairs_map.average_precision(meta, x, ["Metadata_t", "Metadata_ref"], [], [], ["Metadata_t", "Metadata_ref"], progress_bar=False)
    ap = ap.query("Metadata_t != 'DMSO'")
    mp = copairs_map.mean_average_precision(ap, ["Metadata_t"], null_size=20000, threshold=0.05, seed=0, progress_bar=False)
    q = {r["id"]: r for r in got["queries"]}
    for i, r in ap.iterrows():
        assert q[i + 1]["average_precision"] == pytest.approx(r["average_precision"], rel=1e-5, abs=1e-6)
        assert q[i + 1]["n_pos_pairs"] == r["n_pos_pairs"] and q[i + 1]["n_total_pairs"] == r["n_total_pairs"]
    g = {r["treatment"]: r for r in got["groups"]}
    for _, r in mp.iterrows():
        mine = g[r["Metadata_t"]]
        assert mine["mean_average_precision"] == pytest.approx(r["mean_average_precision"], rel=1e-5, abs=1e-6)
        # Independent Monte Carlo nulls of 20,000 draws: p-values agree within a few standard errors.
        assert abs(mine["p_value"] - r["p_value"]) < 0.01 + 4 * math.sqrt(r["p_value"] * (1 - r["p_value"]) / 20000)


def test_label_map_equals_copairs(py_host):
    rows, x = activity_data(seed=10, n_ctrl=0)
    labels = [f"moa{int(t[1:]) % 4}" for t, _ in rows]
    c = py_host.conn
    c.execute("CREATE TABLE w(id INTEGER PRIMARY KEY, moa, profile)")
    c.executemany("INSERT INTO w(moa, profile) VALUES (?, ?)", [(m, v.astype("<f4").tobytes()) for m, v in zip(labels, x)])
    got = json.loads(c.execute("SELECT phenix_map(id, moa, profile) FROM w").fetchone()[0])
    meta = pd.DataFrame({"Metadata_moa": labels})
    ap = copairs_map.average_precision(meta, x, ["Metadata_moa"], [], [], ["Metadata_moa"], progress_bar=False)
    mp = copairs_map.mean_average_precision(ap, ["Metadata_moa"], null_size=1000, threshold=0.05, seed=0, progress_bar=False)
    q = {r["id"]: r for r in got["queries"]}
    for i, r in ap.iterrows():
        assert q[i + 1]["average_precision"] == pytest.approx(r["average_precision"], rel=1e-5, abs=1e-6)
    g = {r["label"]: r for r in got["groups"]}
    for _, r in mp.iterrows():
        assert g[r["Metadata_moa"]]["mean_average_precision"] == pytest.approx(r["mean_average_precision"], rel=1e-5)


def test_recall_and_moa_accuracy_equal_numpy(py_host):
    rng = np.random.default_rng(2)
    nc, nq, d = 200, 120, 16
    cand = rng.normal(size=(nc, d)).astype(np.float32)
    cand[5] = cand[4]  # an exact tie
    truth = rng.integers(0, nc, nq)
    truth[0] = 4
    qv = (cand[truth] + rng.normal(scale=1.0, size=(nq, d))).astype(np.float32)
    qv[0] = cand[4]
    c = py_host.conn
    c.execute("CREATE TABLE r(role, id, key, v)")
    c.executemany("INSERT INTO r VALUES ('candidate', NULL, ?, ?)", [(i, v.astype("<f4").tobytes()) for i, v in enumerate(cand)])
    c.executemany("INSERT INTO r VALUES ('query', ?, ?, ?)", [(100 + i, int(t), v.astype("<f4").tobytes()) for i, (t, v) in enumerate(zip(truth, qv))])
    got = json.loads(c.execute("SELECT phenix_recall(role, id, key, v, 5) FROM r").fetchone()[0])
    un = lambda a: a / np.linalg.norm(a.astype(np.float64), axis=1, keepdims=True)
    S = un(qv).astype(np.float32) @ un(cand).astype(np.float32).T
    t = S[np.arange(nq), truth][:, None]
    ranks = (S > t).sum(1) + 0.5 * ((S == t).sum(1) - 1)
    assert ranks[0] == 0.5
    mine = np.array([r["rank"] for r in got["queries"]])
    assert np.array_equal(mine, ranks)
    assert got["summary"]["recall"] == pytest.approx(np.mean(ranks < math.ceil(0.05 * nc)))
    # MoA accuracy: 30 compounds x 3 replicates, 5 MoAs.
    comp = np.repeat(np.arange(30), 3)
    moa = comp % 5
    centers = rng.normal(size=(5, d))
    x = (centers[moa] + rng.normal(scale=1.2, size=(90, d))).astype(np.float32)
    c.execute("CREATE TABLE m(id, cpd, moa, v)")
    c.executemany("INSERT INTO m VALUES (?, ?, ?, ?)", [(i, int(a), int(b), v.astype("<f4").tobytes()) for i, (a, b, v) in enumerate(zip(comp, moa, x))])
    got = json.loads(c.execute("SELECT phenix_moa_accuracy(id, cpd, moa, v) FROM m").fetchone()[0])
    S = un(x) @ un(x).T
    S[comp[:, None] == comp[None, :]] = -np.inf
    nn = S.argmax(1)
    assert got["summary"]["accuracy"] == pytest.approx(np.mean(moa[nn] == moa))


BAD = [
    ("SELECT phenix_norm_fit('robust', profile) FROM prof WHERE 0", "no control rows to fit on"),
    ("SELECT phenix_norm_fit('robust', v) FROM (SELECT '[1,2]' v UNION ALL SELECT '[1,2,3]')", "has 3 elements, the ones before it have 2"),
    ("SELECT phenix_norm_fit('standardize', v) FROM (SELECT '[1,2]' v UNION ALL SELECT '[1,3]')", "feature 0 is constant"),
    ("SELECT phenix_norm_fit('robust', v) FROM (SELECT '[1,2]' v UNION ALL SELECT '[1,3]' UNION ALL SELECT '[1,4]')", "feature 0 has MAD 0"),
    ("SELECT phenix_norm_fit('sphere', v, '{\"method\":\"zca\"}') FROM (SELECT '[1,2,3]' v UNION ALL SELECT '[2,3,5]')", "needs at least 4 control rows"),
    ("SELECT phenix_norm_fit('whiten', '[1]')", "unknown method 'whiten'"),
    ("SELECT phenix_norm_fit('sphere', '[1]', '{\"epsilon\": \"x\"}')", "option \"epsilon\" must be a number"),
    ("SELECT phenix_norm_apply(x'00112233', '[1]')", "is not a fitted normalisation"),
    ("SELECT phenix_norm_apply(NULL, '[1]')", "argument 1 (the fit) is NULL"),
    ("SELECT phenix_norm_apply(f, '[1,2,3]') FROM (SELECT phenix_norm_fit('standardize', v) f FROM (SELECT '[1,2]' v UNION ALL SELECT '[2,5]'))", "the fit is for profiles of 2 features, the profile has 3"),
    ("SELECT phenix_norm_apply(f, '[1,2]', '[\"a\",\"c\"]') FROM (SELECT phenix_norm_fit('standardize', v, '{\"features\":[\"a\",\"b\"]}') f FROM (SELECT '[1,2]' v UNION ALL SELECT '[2,5]'))", "differs from the one the fit was made on"),
    ("SELECT phenix_norm_fit('robust', x'0000c07f')", "element 0 is NaN"),
    ("SELECT phenix_median(v) FROM (SELECT '[1,2]' v UNION ALL SELECT '[1]')", "has 1 elements, the ones before it have 2"),
    ("SELECT phenix_feature_select(v, '[\"a\"]') FROM (SELECT '[1,2]' v)", "has 2 elements, the ones before it have 1"),
    ("SELECT phenix_activity(t, v, 10, 1) FROM (SELECT 'a' t, '[0,0]' v UNION ALL SELECT 'a', '[1,0]')", "all zeros"),
    ("SELECT phenix_activity_map(1, 'a', 0, '[1,0]')", "no control wells"),
    ("SELECT phenix_recall('query', 1, 'k', '[1,0]', 1)", "needs query rows and candidate rows"),
    ("SELECT phenix_recall('probe', 1, 'k', '[1,0]', 1)", "must be 'query' or 'candidate'"),
]


@pytest.mark.parametrize("sql,needle", BAD)
def test_bad_input_is_a_clear_error(py_host, sql, needle):
    py_host.conn.execute("CREATE TABLE prof(plate, role, profile)")
    with pytest.raises(HostError) as e:
        py_host.run(sql)
    assert needle in str(e.value) and str(e.value).startswith("phenix: "), str(e.value)
