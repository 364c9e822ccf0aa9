/* compress.c: `quern compress IN OUT [--int8] [--fp16] [--prune F]
 * [--structured | --csr] [--eval X.npy [--labels Y.npy]]`: writes a compressed
 * "quern.mlp.c1" model (lib/compress.h says what each option does), prints
 * the size before and after and each layer's representation and sparsity,
 * and with --eval measures the error (and with --labels the accuracy) of the
 * written file, loaded back through the worker's loader, against IN. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "compress.h"
#include "error.h"
#include "model.h"
#include "npy.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: quern compress IN.safetensors OUT.safetensors [--int8 | --fp16] [--prune F]\n"
            "                      [--structured | --csr] [--eval X.npy [--labels Y.npy]]\n\n"
            "  --int8        int8 weights, symmetric per-output-channel scales\n"
            "  --fp16        fp16 weights\n"
            "  --prune F     zero the fraction F (0 <= F < 1) of the model's weights with the\n"
            "                smallest magnitude (one global threshold); a layer is stored as\n"
            "                CSR where that is smaller than dense\n"
            "  --csr         with --prune: store every pruned layer as CSR, even where\n"
            "                dense would be smaller\n"
            "  --structured  with --prune: remove the fraction F of neurons of every hidden\n"
            "                layer (smallest L2 norm) and shrink the next layer to match\n"
            "  --eval X      report max and mean |error| of OUT against IN on the rows of X\n"
            "                (.npy or CSV)\n"
            "  --labels Y    with --eval: class labels (one per row, or one-hot rows);\n"
            "                report accuracy before and after\n");
}

static void human(size_t n, char *buf, size_t len)
{
    if (n < 1024) snprintf(buf, len, "%zu B", n);
    else if (n < 1024 * 1024) snprintf(buf, len, "%.1f KiB", n / 1024.0);
    else snprintf(buf, len, "%.2f MiB", n / (1024.0 * 1024));
}

/* A hidden name beside path (same directory, so the rename is atomic):
 * DIR/.BASE.quern-compress-PID. malloc'd; NULL on allocation failure. */
static char *temp_beside(const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t dirlen = slash ? (size_t)(slash - path + 1) : 0;
    size_t n = strlen(path) + 48;
    char *t = malloc(n);
    if (t) snprintf(t, n, "%.*s.%s.quern-compress-%ld", (int)dirlen, path, path + dirlen, (long)getpid());
    return t;
}

/* The rename is durable once the directory is on disk too. Best effort:
 * the file itself was fsynced before the rename. */
static void sync_dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    char dir[4096];
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path + (slash == path)) : 1, slash ? path : ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static int compress_run(int argc, char **argv)
{
    qn_compress_opts o = {0};
    const char *in = NULL, *out = NULL, *xpath = NULL, *ypath = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--int8")) o.int8 = 1;
        else if (!strcmp(a, "--fp16")) o.fp16 = 1;
        else if (!strcmp(a, "--structured")) o.structured = 1;
        else if (!strcmp(a, "--csr")) o.force_csr = 1;
        else if (!strcmp(a, "--prune") && i + 1 < argc) {
            char *end;
            o.prune = strtod(argv[++i], &end);
            if (*end || end == argv[i]) { fprintf(stderr, "quern compress: --prune %s is not a number\n", argv[i]); return 2; }
        } else if (!strcmp(a, "--eval") && i + 1 < argc) xpath = argv[++i];
        else if (!strcmp(a, "--labels") && i + 1 < argc) ypath = argv[++i];
        else if (a[0] == '-') { usage(stderr); return 2; }
        else if (!in) in = a;
        else if (!out) out = a;
        else { usage(stderr); return 2; }
    }
    if (!in || !out || (ypath && !xpath)) { usage(stderr); return 2; }

    int status = 1, rc;
    char err[512] = "";
    qn_model *m = NULL, *c = NULL;
    qn_compress_layer *info = NULL;
    qn_matrix x = {0}, y = {0};
    qn_npy_error nerr;
    char *tmp = NULL;
    if ((rc = qn_model_load(in, "", 0, &m, err, sizeof err))) {
        fprintf(stderr, "quern compress: %s: %s\n", in, err);
        goto done;
    }
    /* Every check on the inputs comes before anything is written: OUT may
     * be a version directory a worker is watching. */
    if (xpath) {
        if ((rc = qn_matrix_read(xpath, &x, &nerr))) {
            fprintf(stderr, "quern compress: --eval %s: %s\n", xpath, nerr.message);
            goto done;
        }
        if (x.cols != m->in_dim) {
            fprintf(stderr, "quern compress: --eval %s has %lld columns, the model takes %lld\n", xpath, (long long)x.cols,
                    (long long)m->in_dim);
            goto done;
        }
        if (ypath) {
            if ((rc = qn_matrix_read(ypath, &y, &nerr))) {
                fprintf(stderr, "quern compress: --labels %s: %s\n", ypath, nerr.message);
                goto done;
            }
            if (y.rows == 1 && y.cols == x.rows) { y.rows = y.cols; y.cols = 1; } /* a 1-D array reads as one row */
            if (y.rows != x.rows || (y.cols != 1 && y.cols != m->out_dim)) {
                fprintf(stderr, "quern compress: --labels %s: want %lld labels (or one-hot rows), got %lld x %lld\n",
                        ypath, (long long)x.rows, (long long)y.rows, (long long)y.cols);
                goto done;
            }
        }
    }
    {
        /* the temporary name would otherwise be what the error names */
        const char *slash = strrchr(out, '/');
        char dir[4096];
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - out + (slash == out)) : 1, slash ? out : ".");
        struct stat st;
        if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
            fprintf(stderr, "quern compress: %s: no such directory (create it first)\n", dir);
            goto done;
        }
    }
    info = calloc((size_t)m->nlayers, sizeof *info);
    if (!info || !(tmp = temp_beside(out))) goto done;
    /* Written under a hidden temporary name in OUT's directory (no worker
     * loads it: only model.safetensors is a model), loaded back and
     * evaluated there, and renamed to OUT only when all of that passed. */
    if ((rc = qn_compress_write(m, &o, tmp, info, err, sizeof err))) {
        fprintf(stderr, "quern compress: %s\n", err);
        if (rc == QN_EINVAL) status = 2;
        goto done;
    }
    /* load it back as the worker would: proves the file is valid and gives
     * the true size */
    if ((rc = qn_model_load(tmp, "", 0, &c, err, sizeof err))) {
        fprintf(stderr, "quern compress: the compressed model does not load: %s\n", err);
        goto done;
    }
    qn_compress_eval ev = {0};
    if (xpath) {
        rc = qn_compress_evaluate(m, c, x.data, x.rows, ypath ? y.data : NULL, ypath ? y.cols : 0, &ev);
        if (rc) {
            fprintf(stderr, "quern compress: evaluation failed: %s%s\n", qn_strerror(rc),
                    rc == QN_EINVAL ? " (a label is not a class index of this model)" : "");
            goto done;
        }
    }
    if (rename(tmp, out) != 0) {
        fprintf(stderr, "quern compress: cannot rename %s to %s: %s\n", tmp, out, strerror(errno));
        goto done;
    }
    free(tmp);
    tmp = NULL;
    sync_dir_of(out);
    char hb[32], ha[32];
    human(m->file_bytes, hb, sizeof hb);
    human(c->file_bytes, ha, sizeof ha);
    printf("%s: %zu bytes (%s) -> %s: %zu bytes (%s), %.2fx smaller\n", in, m->file_bytes, hb, out, c->file_bytes,
           ha, (double)m->file_bytes / (double)c->file_bytes);
    printf("  %-3s %-9s %17s  %-10s %12s %9s %14s %14s\n", "#", "repr", "in -> out", "activation", "nnz", "sparsity",
           "bytes before", "bytes after");
    for (int i = 0; i < m->nlayers; i++) {
        const qn_compress_layer *L = &info[i];
        char io[48];
        snprintf(io, sizeof io, "%lld -> %lld", (long long)L->in, (long long)L->out);
        printf("  %-3d %-9s %17s  %-10s %12lld %8.1f%% %14zu %14zu\n", i, qn_rep_name(L->rep), io,
               qn_act_name(c->layers[i].act), (long long)L->nnz, 100.0 * (1.0 - (double)L->nnz / ((double)L->in * (double)L->out)),
               L->bytes_before, L->bytes_after);
    }
    if (xpath) {
        printf("eval on %s (%lld rows): max |error| %.6g, mean |error| %.6g\n", xpath, (long long)x.rows, ev.max_abs,
               ev.mean_abs);
        if (ev.has_accuracy)
            printf("accuracy: %.4f -> %.4f (%+.2f points)\n", ev.acc_ref, ev.acc_cmp, 100.0 * (ev.acc_cmp - ev.acc_ref));
    }
    status = 0;
done:
    if (tmp) {
        unlink(tmp); /* nothing half-checked is left behind */
        free(tmp);
    }
    qn_matrix_free(&x);
    qn_matrix_free(&y);
    free(info);
    qn_model_unref(&m);
    qn_model_unref(&c);
    return status;
}

QN_CLI_COMMAND(compress, "compress",
               "compress IN OUT [--int8|--fp16] [--prune F] [--structured|--csr] [--eval X.npy [--labels Y.npy]]",
               compress_run)
