/* dispatch.c: which kernel path this process runs. Detects CPU features once
 * (gcc's __builtin_cpu_supports, which also checks that the OS saves the
 * AVX/AVX-512 register state), honours QN_KERNEL=avx512vnni|avxvnni|avx2|
 * portable|auto so CI can force the slower paths on a fast machine, and logs
 * the choice once. It must never pick a path the CPU cannot run: a forced
 * path the CPU lacks falls back to the best one, with a warning. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/kernels.h"
#include "cpu/kernels_impl.h"
#include "error.h"
#include "log.h"

static const char *const g_names[QN_KPATH_COUNT] = {
    [QN_KPATH_PORTABLE] = "portable",
    [QN_KPATH_AVX2] = "avx2",
    [QN_KPATH_AVXVNNI] = "avxvnni",
    [QN_KPATH_AVX512VNNI] = "avx512vnni",
};

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static atomic_int g_path = QN_KPATH_PORTABLE;

const char *qn_kpath_name(qn_kpath p) { return (unsigned)p < QN_KPATH_COUNT ? g_names[p] : "?"; }

int qn_kpath_from_name(const char *name, qn_kpath *out)
{
    for (int i = 0; i < QN_KPATH_COUNT; i++)
        if (name && strcmp(name, g_names[i]) == 0) { *out = (qn_kpath)i; return 0; }
    return QN_EINVAL;
}

int qn_kernel_path_supported(qn_kpath p)
{
    __builtin_cpu_init();
    /* f16 and CSR kernels of the avx2/avxvnni paths use FMA and F16C too */
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    switch (p) {
    case QN_KPATH_PORTABLE: return 1;
    case QN_KPATH_AVX2: return avx2;
    case QN_KPATH_AVXVNNI: return avx2 && __builtin_cpu_supports("avxvnni");
    case QN_KPATH_AVX512VNNI:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    default: return 0;
    }
}

static qn_kpath best_path(void)
{
    for (int p = QN_KPATH_COUNT - 1; p > QN_KPATH_PORTABLE; p--)
        if (qn_kernel_path_supported((qn_kpath)p)) return (qn_kpath)p;
    return QN_KPATH_PORTABLE;
}

static void init_once(void)
{
    qn_kpath best = best_path(), p = best;
    const char *env = getenv("QN_KERNEL");
    const char *why = "best this CPU supports";
    if (env && *env && strcmp(env, "auto") != 0) {
        qn_kpath want;
        if (qn_kpath_from_name(env, &want) != 0)
            QN_LOGW("kernels", "QN_KERNEL=%s is not one of avx512vnni|avxvnni|avx2|portable|auto; using %s",
                    env, g_names[best]);
        else if (!qn_kernel_path_supported(want))
            QN_LOGW("kernels", "QN_KERNEL=%s: this CPU cannot run it; using %s", env, g_names[best]);
        else { p = want; why = "forced by QN_KERNEL"; }
    }
    atomic_store(&g_path, (int)p);
    QN_LOGI("kernels", "kernel path %s (%s)", g_names[p], why);
}

qn_kpath qn_kernel_path_init(void)
{
    pthread_once(&g_once, init_once);
    return (qn_kpath)atomic_load(&g_path);
}

qn_kpath qn_kernel_path(void) { return qn_kernel_path_init(); }

const char *qn_kernel_path_name(void) { return g_names[qn_kernel_path_init()]; }

int qn_kernel_set_path(qn_kpath p)
{
    qn_kernel_path_init(); /* so a later first use does not overwrite the choice */
    if (!qn_kernel_path_supported(p)) return QN_ENOTSUP;
    atomic_store(&g_path, (int)p);
    return 0;
}
