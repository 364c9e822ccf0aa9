/* inspect.c: `quern inspect FILE`: what a model file holds (format, layers
 * with their representation, shapes, activation, sparsity and bytes, the
 * parameter count, the tensors) or, for an invalid file, why it would not
 * load. It uses the same loader as the worker, so "inspect says OK" means
 * "the worker will load it". It never writes anything. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "model.h"
#include "safetensors.h"

static void human(size_t n, char *buf, size_t len)
{
    if (n < 1024) snprintf(buf, len, "%zu B", n);
    else if (n < 1024 * 1024) snprintf(buf, len, "%.1f KiB", n / 1024.0);
    else if (n < 1024ull * 1024 * 1024) snprintf(buf, len, "%.1f MiB", n / (1024.0 * 1024));
    else snprintf(buf, len, "%.2f GiB", n / (1024.0 * 1024 * 1024));
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: quern inspect FILE.safetensors\n\n"
            "Prints a model file's format, layers (representation, in -> out, activation,\n"
            "bias, non-zeros for sparse layers, bytes), parameter count, size and tensors.\n"
            "Exits 1 when the file is not a valid quern model, with the reason.\n");
}

static int inspect_run(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        return 0;
    }
    if (argc != 2 || argv[1][0] == '-') {
        usage(stderr);
        return 2;
    }
    const char *path = argv[1];
    char err[512] = "";
    qn_st_file *st = NULL;
    qn_model *m = NULL;
    int rc = qn_st_open(path, &st, err, sizeof err);
    if (rc) {
        if (rc == QN_EIO) fprintf(stderr, "quern inspect: %s\n", err);
        else fprintf(stderr, "quern inspect: %s: not a valid safetensors file: %s\n", path, err);
        return 1;
    }
    rc = qn_model_load(path, "", 0, &m, err, sizeof err);
    if (rc) {
        fprintf(stderr, "quern inspect: %s: not a valid quern model (%s): %s\n", path,
                qn_strerror(rc), err);
        qn_st_close(&st);
        return 1;
    }

    char hs[32];
    human(m->file_bytes, hs, sizeof hs);
    printf("file:        %s\n", path);
    printf("size:        %zu bytes (%s)\n", m->file_bytes, hs);
    printf("format:      %s\n", qn_st_meta(st, "format"));
    printf("input:       %lld\n", (long long)m->in_dim);
    printf("output:      %lld\n", (long long)m->out_dim);
    printf("layers:      %d\n", m->nlayers);
    printf("  %-3s %-9s %17s  %-10s %-5s %-22s %12s\n", "#", "repr", "in -> out", "activation",
           "bias", "nnz (sparsity)", "bytes");
    size_t weight_bytes = 0;
    for (int i = 0; i < m->nlayers; i++) {
        const qn_layer *l = &m->layers[i];
        char io[48], nnz[48] = "-";
        snprintf(io, sizeof io, "%lld -> %lld", (long long)l->in, (long long)l->out);
        if (l->rep == QN_REP_CSR_F32 || l->rep == QN_REP_CSR_I8) {
            double dense = (double)l->in * (double)l->out;
            snprintf(nnz, sizeof nnz, "%lld (%.1f%%)", (long long)l->nnz,
                     100.0 * (1.0 - (double)l->nnz / dense));
        }
        size_t b = qn_layer_bytes(l);
        weight_bytes += b;
        printf("  %-3d %-9s %17s  %-10s %-5s %-22s %12zu\n", i, qn_rep_name(l->rep), io,
               qn_act_name(l->act), l->bias ? "yes" : "no", nnz, b);
    }
    human(weight_bytes, hs, sizeof hs);
    printf("parameters:  %zu\n", m->param_count);
    printf("weights:     %zu bytes (%s) as stored\n", weight_bytes, hs);
    printf("tensors:     %zu\n", qn_st_count(st));
    for (size_t i = 0; i < qn_st_count(st); i++) {
        const qn_st_tensor *t = qn_st_at(st, i);
        char shape[160] = "[";
        size_t at = 1;
        for (int d = 0; d < t->ndim && at < sizeof shape; d++)
            at += (size_t)snprintf(shape + at, sizeof shape - at, "%s%lld", d ? ", " : "",
                                   (long long)t->shape[d]);
        if (at < sizeof shape - 1) strcat(shape, "]");
        printf("  %-32s %-4s %-20s %12zu\n", t->name, qn_dtype_st_name(t->dtype), shape, t->nbytes);
    }
    qn_model_unref(&m);
    qn_st_close(&st);
    return 0;
}

QN_CLI_COMMAND(inspect, "inspect", "inspect FILE.safetensors", inspect_run)
