/* csr_avx512.c: the CSR SpMM body (csr_impl.h) compiled for AVX-512F
 * (CMakeLists.txt), used on the avx512vnni path. */
#define QN_CSR_FN qn_csr_spmm_avx512
#include "cpu/csr_impl.h"
