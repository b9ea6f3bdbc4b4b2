/*
 * phenix: contrastive molecule <-> cell-phenotype retrieval inside SQLite.
 *
 * The C interface of libphenix.so / libphenix.a (crate phenix-extension). phenix reaches SQLite only
 * through the API table of the SQLite library that registers it, so it works with any SQLite >= 3.40:
 * the system libsqlite3, one compiled into your program, or the one inside a Rust crate. Which way to
 * pick, and why registration goes through SQLite's own extension mechanism: docs/embedding.md.
 *
 *   #include <sqlite3.h>
 *   #include "phenix.h"
 *
 *   sqlite3_auto_extension((void (*)(void))sqlite3_phenix_init);  // every connection opened later
 *   sqlite3_open("lab.db", &db);                                    // ... has phenix
 *
 *   phenix_register(db, &err);   // or: one connection that is already open
 *
 * One process uses phenix with one SQLite library (a second one is refused with an error).
 */
#ifndef PHENIX_H
#define PHENIX_H

/* sqlite3.h declares the opaque sqlite3_api_routines; sqlite3ext.h is for extensions, not for you. */
#include <sqlite3.h>
#include <stdint.h>

/* The version of this header; phenix_version() returns the library's. */
#define PHENIX_VERSION "0.1.0"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The extension entry point (SQLite's loadable-extension signature). Register it with
 * sqlite3_auto_extension(), or let sqlite3_load_extension() find it in libphenix.so. Checks the host's
 * SQLite version (>= 3.40.0), then installs the phenix virtual table and functions on `db`. On failure
 * returns an SQLite error code and, if pzErrMsg is not NULL, a message to free with sqlite3_free().
 */
int sqlite3_phenix_init(sqlite3 *db, char **pzErrMsg, const sqlite3_api_routines *pApi);

/* The library's version, e.g. "0.1.0" (static; do not free). */
const char *phenix_version(void);

/*
 * Loads ONNX Runtime now: from `path`, or when NULL from the places docs/models.md lists
 * (ORT_DYLIB_PATH, next to libphenix / the executable, .ort/ directories, the system loader).
 * Optional: the first embedding loads it anyway. Returns 0 and "<version> <file>" in *info (if not
 * NULL), or 1 and the reason in *err (if not NULL). Free both with phenix_free().
 */
int phenix_load_onnxruntime(const char *path, char **info, char **err);

/*
 * Process-wide thread caps: knn_threads for one exact KNN scan or batched retrieval, onnx_threads for
 * ONNX Runtime's intra-op pool (and the featurizer) of models loaded afterwards. 0 = one per core;
 * negative = unchanged. Returns 0, or 1 and the reason in *err (if not NULL; free with phenix_free()).
 */
int phenix_set_threads(int knn_threads, int onnx_threads, char **err);

/*
 * Progress and cancellation of long phenix work: KNN scans, phenix_retrieve_all,
 * phenix_embed_molecules, compaction ('optimize') and phenix_backup.
 *
 * sqlite3_interrupt(db) stops them within a chunk of rows (the statement fails with SQLITE_INTERRUPT,
 * changing nothing) on SQLite >= 3.41; older SQLite cannot tell phenix, so the work runs to its end
 * and SQLite then reports the interrupt. The progress callback works on every SQLite and can stop the
 * work on any of them.
 *
 * The callback is process-wide (one for all connections; `db` says which one) and is called on the
 * thread running the statement, from operations that run at least interval_ms: at most once per
 * interval_ms while they run, and once more with done == total when such an operation finishes.
 * `op` is "knn", "retrieve_all", "embed_molecules", "optimize" or "backup" (valid during the call);
 * done never decreases and never exceeds total; only done / total is meant to be shown. Return 0 to
 * go on, non-zero to stop the operation (SQLITE_INTERRUPT). The callback must not use `db`. NULL
 * removes it. Returns 0.
 */
typedef int (*phenix_progress_fn)(void *ctx, sqlite3 *db, const char *op, uint64_t done,
                                  uint64_t total);
int phenix_set_progress(phenix_progress_fn cb, void *ctx, unsigned interval_ms);

/* Frees a string returned by phenix_load_onnxruntime() or phenix_set_threads(); NULL is ignored. */
void phenix_free(char *p);

/*
 * Installs phenix on one open connection of the SQLite library this file is compiled against.
 * SQLite gives an extension its API table only when it calls the extension itself, so this registers a
 * capturing auto-extension, opens and closes a private in-memory connection (SQLite runs the
 * auto-extensions then, on this thread, handing over the table), cancels it, and calls
 * sqlite3_phenix_init(db, ...) with the table. Returns SQLITE_OK, or an error code and, if err is not
 * NULL, a message to free with sqlite3_free(). Safe to call from several threads.
 */
#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define PHENIX__THREAD_LOCAL _Thread_local
#elif defined(__cplusplus) && __cplusplus >= 201103L
#define PHENIX__THREAD_LOCAL thread_local
#else
#define PHENIX__THREAD_LOCAL __thread
#endif

static PHENIX__THREAD_LOCAL const sqlite3_api_routines *phenix__captured_api;

static inline int phenix__capture_api(sqlite3 *db, char **pzErrMsg, const sqlite3_api_routines *pApi) {
    (void)db;
    (void)pzErrMsg;
    phenix__captured_api = pApi;
    return SQLITE_OK;
}

static inline int phenix_register(sqlite3 *db, char **err) {
    sqlite3 *probe = 0;
    int rc;
    if (err) *err = 0;
    phenix__captured_api = 0;
    rc = sqlite3_auto_extension((void (*)(void))phenix__capture_api);
    if (rc != SQLITE_OK) return rc;
    rc = sqlite3_open(":memory:", &probe);
    sqlite3_close(probe);
    sqlite3_cancel_auto_extension((void (*)(void))phenix__capture_api);
    if (rc != SQLITE_OK) return rc;
    if (!phenix__captured_api) {
        if (err) *err = sqlite3_mprintf("phenix: SQLite did not run the auto-extension");
        return SQLITE_ERROR;
    }
    return sqlite3_phenix_init(db, err, phenix__captured_api);
}

#ifdef __cplusplus
}
#endif

#endif /* PHENIX_H */
