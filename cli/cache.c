/* cli/cache.c: `quern cache stats DIR`: what is in a result cache, read from
 * its LMDB environment without opening it for writing (safe next to running
 * workers). Prints one "name value" line per figure, so scripts can grep. */
#include "cli.h"

#include "cache.h"
#include "error.h"

#include <stdio.h>
#include <string.h>

static int cache_stats(const char *dir)
{
    qn_cache_stats st;
    int rc = qn_cache_stats_read(dir, &st);
    if (rc == QN_ENOTFOUND) {
        fprintf(stderr, "quern cache stats: no cache in %s (no data.mdb)\n", dir);
        return 1;
    }
    if (rc) {
        fprintf(stderr, "quern cache stats: %s: %s\n", dir,
                rc == QN_EFORMAT ? "not a quern cache" : qn_strerror(rc));
        return 1;
    }
    uint64_t lookups = st.total_hits + st.total_misses;
    printf("dir               %s\n", dir);
    printf("entries           %llu\n", (unsigned long long)st.entries);
    printf("bytes             %llu\n", (unsigned long long)st.bytes);
    printf("tree_bytes        %llu\n", (unsigned long long)st.tree_bytes);
    printf("file_bytes        %llu\n", (unsigned long long)st.file_bytes);
    printf("map_bytes         %llu\n", (unsigned long long)st.map_bytes);
    printf("hits              %llu\n", (unsigned long long)st.total_hits);
    printf("misses            %llu\n", (unsigned long long)st.total_misses);
    printf("hit_ratio         %.4f\n", lookups ? (double)st.total_hits / (double)lookups : 0.0);
    printf("inserts           %llu\n", (unsigned long long)st.total_inserts);
    printf("evictions         %llu\n", (unsigned long long)st.total_evictions);
    printf("checksum_failures %llu\n", (unsigned long long)st.total_checksum_failures);
    printf("write_failures    %llu\n", (unsigned long long)st.total_write_failures);
    return 0;
}

#define CACHE_USAGE "cache stats DIR"

static int cache_main(int argc, char **argv)
{
    /* --help wherever it is (`quern cache stats --help` too), never a DIR */
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: quern " CACHE_USAGE "\n\n"
                   "Prints entries, sizes and the counters every worker sharing the cache\n"
                   "added up (hits, misses, inserts, evictions, checksum and write failures).\n"
                   "Opens the cache read-only: safe while workers run.\n");
            return 0;
        }
    if (argc == 3 && !strcmp(argv[1], "stats")) return cache_stats(argv[2]);
    fprintf(stderr, "usage: quern " CACHE_USAGE "\n");
    return 2;
}

QN_CLI_COMMAND(cache, "cache", CACHE_USAGE, cache_main)
