/*
 * A desktop application in C on the system SQLite (libsqlite3), using phenix through include/phenix.h:
 * registration both ways, a table, inserts, a KNN query checked against brute force, an embedding with
 * the compiled-in model, the version and ONNX Runtime calls. Built and run by tools/test
 * (tests/embedding/run); exits non-zero with a message on the first failure.
 *
 *   cc -Iinclude tests/embedding/phenix_demo.c -Ltarget/release -lphenix -lsqlite3 \
 *      -Wl,-rpath,$PWD/target/release -o phenix_demo && ./phenix_demo
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "phenix.h"

static int failures = 0;

#define CHECK(cond, ...)                                  \
    do {                                                  \
        if (!(cond)) {                                    \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                 \
            fprintf(stderr, "\n");                        \
            failures++;                                   \
        }                                                 \
    } while (0)

static void exec(sqlite3 *db, const char *sql) {
    char *err = 0;
    if (sqlite3_exec(db, sql, 0, 0, &err) != SQLITE_OK) {
        fprintf(stderr, "FAIL: %s: %s\n", sql, err ? err : "?");
        sqlite3_free(err);
        exit(1);
    }
}

static unsigned long long rng = 0x9E3779B97F4A7C15ull;
static float rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

#define N 500
#define DIM 16

/* A progress display: what a desktop app's progress bar would get. */
struct progress {
    int calls;
    int stop;                /* non-zero: ask phenix to stop at the first report */
    int went_back;           /* done decreased or passed total: must stay 0 */
    uint64_t done, total;
    char op[32];
};

static int on_progress(void *ctx, sqlite3 *db, const char *op, uint64_t done, uint64_t total) {
    struct progress *p = ctx;
    (void)db; /* which connection; the callback must not use it */
    if (p->calls > 0 && strcmp(p->op, op) == 0 && done < p->done) p->went_back = 1;
    if (done > total) p->went_back = 1;
    p->calls++;
    p->done = done;
    p->total = total;
    snprintf(p->op, sizeof p->op, "%s", op);
    return p->stop; /* non-zero: the statement fails with SQLITE_INTERRUPT */
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "phenix_demo.db";
    sqlite3 *db;
    char *err = 0;
    int rc;

    /* The header and the library agree. */
    CHECK(strcmp(phenix_version(), PHENIX_VERSION) == 0, "header %s, library %s", PHENIX_VERSION,
          phenix_version());

    /* ONNX Runtime from code (NULL: the documented search; ORT_DYLIB_PATH is set by the runner). */
    char *info = 0;
    rc = phenix_load_onnxruntime(NULL, &info, &err);
    CHECK(rc == 0, "phenix_load_onnxruntime: %s", err ? err : "?");
    if (info) printf("onnxruntime: %s\n", info);
    phenix_free(info);
    phenix_free(err);
    err = 0;
    rc = phenix_set_threads(2, 1, &err);
    CHECK(rc == 0, "phenix_set_threads: %s", err ? err : "?");
    rc = phenix_set_threads(-1, 100000, &err);
    CHECK(rc == 1 && err && strstr(err, "100000 threads"), "an absurd thread count must be refused");
    phenix_free(err);
    err = 0;

    /* Registration 1: an already-open connection. */
    remove(path);
    CHECK(sqlite3_open(path, &db) == SQLITE_OK, "open %s", path);
    rc = phenix_register(db, &err);
    CHECK(rc == SQLITE_OK, "phenix_register: %s", err ? err : "?");
    sqlite3_free(err);
    err = 0;

    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, "SELECT phenix_version()", -1, &st, 0);
    CHECK(sqlite3_step(st) == SQLITE_ROW && strcmp((const char *)sqlite3_column_text(st, 0), PHENIX_VERSION) == 0,
          "SELECT phenix_version()");
    sqlite3_finalize(st);

    /* A table, N random rows, a KNN query against brute force. */
    exec(db, "CREATE VIRTUAL TABLE items USING phenix(v float32[16] distance=l2, label TEXT)");
    static float data[N][DIM];
    exec(db, "BEGIN");
    sqlite3_prepare_v2(db, "INSERT INTO items(rowid, v, label) VALUES (?, ?, ?)", -1, &st, 0);
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < DIM; j++) data[i][j] = rnd();
        sqlite3_bind_int(st, 1, i + 1);
        sqlite3_bind_blob(st, 2, data[i], sizeof data[i], SQLITE_STATIC);
        sqlite3_bind_text(st, 3, i % 2 ? "odd" : "even", -1, SQLITE_STATIC);
        CHECK(sqlite3_step(st) == SQLITE_DONE, "insert %d: %s", i, sqlite3_errmsg(db));
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    exec(db, "COMMIT");

    float q[DIM];
    for (int j = 0; j < DIM; j++) q[j] = rnd();
    /* Brute force in double: the 5 nearest. */
    int best[5];
    double bestd[5];
    for (int k = 0; k < 5; k++) bestd[k] = INFINITY, best[k] = -1;
    for (int i = 0; i < N; i++) {
        double d = 0;
        for (int j = 0; j < DIM; j++) d += ((double)data[i][j] - q[j]) * ((double)data[i][j] - q[j]);
        d = sqrt(d);
        for (int k = 0; k < 5; k++) {
            if (d < bestd[k]) {
                for (int m = 4; m > k; m--) bestd[m] = bestd[m - 1], best[m] = best[m - 1];
                bestd[k] = d, best[k] = i + 1;
                break;
            }
        }
    }
    sqlite3_prepare_v2(db, "SELECT rowid, distance FROM items WHERE v MATCH ? AND k = 5", -1, &st, 0);
    sqlite3_bind_blob(st, 1, q, sizeof q, SQLITE_STATIC);
    for (int k = 0; k < 5; k++) {
        CHECK(sqlite3_step(st) == SQLITE_ROW, "KNN row %d: %s", k, sqlite3_errmsg(db));
        int id = sqlite3_column_int(st, 0);
        double d = sqlite3_column_double(st, 1);
        CHECK(id == best[k], "KNN rank %d: rowid %d, brute force %d", k, id, best[k]);
        CHECK(fabs(d - bestd[k]) < 1e-5 * (1 + bestd[k]), "KNN rank %d: distance %g, brute force %g", k, d, bestd[k]);
    }
    CHECK(sqlite3_step(st) == SQLITE_DONE, "KNN returns 5 rows");
    sqlite3_finalize(st);

    /* Progress: every chunk here (0 ms); a desktop app would pass 100 or so. */
    struct progress prog = {0};
    phenix_set_progress(on_progress, &prog, 0);
    sqlite3_prepare_v2(db, "SELECT count(*) FROM phenix_retrieve_all('items', 'items', 3)", -1, &st, 0);
    rc = sqlite3_step(st);
    CHECK(rc == SQLITE_ROW && sqlite3_column_int(st, 0) == 3 * N, "retrieve_all: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    CHECK(prog.calls >= 2 && !prog.went_back, "progress reported in order (%d calls)", prog.calls);
    CHECK(strcmp(prog.op, "retrieve_all") == 0 && prog.done == prog.total && prog.total == 2 * N,
          "progress ends at the total: %s %llu/%llu", prog.op, (unsigned long long)prog.done,
          (unsigned long long)prog.total);

    /* Cancelling from the callback works on every SQLite (this one may be older than 3.41). */
    prog = (struct progress){.stop = 1};
    sqlite3_prepare_v2(db, "SELECT count(*) FROM phenix_retrieve_all('items', 'items', 3)", -1, &st, 0);
    rc = sqlite3_step(st);
    CHECK(rc == SQLITE_INTERRUPT, "stopped by the callback: %d %s", rc, sqlite3_errmsg(db));
    printf("stopped by the progress callback: %s\n", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    CHECK(prog.calls == 1, "one report, then stopped (%d)", prog.calls);
    phenix_set_progress(NULL, NULL, 0);

    /* The table is unchanged and usable. */
    sqlite3_prepare_v2(db, "SELECT count(*) FROM items WHERE v MATCH ? AND k = 5", -1, &st, 0);
    sqlite3_bind_blob(st, 1, q, sizeof q, SQLITE_STATIC);
    CHECK(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == 5, "after the stop: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);

    /* An embedding with the compiled-in model, stored and searched. */
    exec(db, "CREATE VIRTUAL TABLE mols USING phenix(e float16[256], smiles TEXT)");
    exec(db, "INSERT INTO mols(e, smiles) SELECT embedding, smiles FROM phenix_embed_molecules('default', "
             "'SELECT ''CCO'', 1.0 UNION ALL SELECT ''c1ccccc1O'', 10.0 UNION ALL SELECT ''CC(=O)Oc1ccccc1C(=O)O'', 10.0')");
    sqlite3_prepare_v2(db,
                       "SELECT smiles FROM mols WHERE e MATCH phenix_embed_molecule('default', 'CCO', 1.0) AND k = 1",
                       -1, &st, 0);
    CHECK(sqlite3_step(st) == SQLITE_ROW && strcmp((const char *)sqlite3_column_text(st, 0), "CCO") == 0,
          "the nearest molecule to CCO's embedding is CCO: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);

    /* Registration 2: every connection opened from now on. */
    CHECK(sqlite3_auto_extension((void (*)(void))sqlite3_phenix_init) == SQLITE_OK, "auto extension");
    CHECK(sqlite3_open(path, &db) == SQLITE_OK, "reopen");
    sqlite3_prepare_v2(db, "SELECT count(*) FROM items WHERE label = 'odd'", -1, &st, 0);
    CHECK(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == N / 2, "reopened table: %s",
          sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
    sqlite3_reset_auto_extension();

    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("phenix_demo: ok (SQLite %s, phenix %s)\n", sqlite3_libversion(), phenix_version());
    return 0;
}
