/* The machine's clock and fp32 FMA throughput, measured (compiled and run by benchmarks/machine.py).
 *
 *   peak clock N     N iterations of 8 dependent integer adds (1 cycle each): prints cycles/s
 *   peak fma N       N iterations of 16 independent vector FMA chains: prints fp32 FLOP/s
 *
 * Under a hypervisor /proc/cpuinfo shows the nominal (TSC) clock; the cores may run faster.
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static double clock_hz(long n) {
  unsigned long x = 0;
  double t = now();
  for (long i = 0; i < n; i++) {
    __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                     "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t" : "+r"(x));
  }
  t = now() - t;
  return 8.0 * n / t;
}

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define STORE _mm256_storeu_ps
#endif

static double fma_flops(long n) {
  vec acc[16];
  for (int k = 0; k < 16; k++) acc[k] = SET1(1.0f + k * 1e-3f);
  const vec b = SET1(0.999999f), c = SET1(1e-6f);
  double t = now();
  for (long i = 0; i < n; i++) {
#pragma GCC unroll 16
    for (int k = 0; k < 16; k++) acc[k] = FMA(acc[k], b, c);
  }
  t = now() - t;
  float sink[LANES];
  float total = 0;
  for (int k = 0; k < 16; k++) {
    STORE(sink, acc[k]);
    total += sink[0];
  }
  if (total == 12345.f) puts("");  /* keep the result alive */
  return 2.0 * LANES * 16 * n / t;
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  long n = atol(argv[2]);
  if (!strcmp(argv[1], "clock")) printf("%.6e\n", clock_hz(n));
  else if (!strcmp(argv[1], "fma")) printf("%.6e %d\n", fma_flops(n), LANES * 32);
  else return 2;
  return 0;
}
