/* csr_avx2.c: the CSR SpMM body (csr_impl.h) compiled for AVX2 + FMA
 * (CMakeLists.txt), used on the avx2 and avxvnni paths. */
#define QN_CSR_FN qn_csr_spmm_avx2
#include "cpu/csr_impl.h"
