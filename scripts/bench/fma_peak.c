// Peak f32 FMA throughput of this CPU, the ceiling docs/benchmarks.md measures compute floors
// against: each thread runs 10 independent 8-lane FMA chains (enough to cover the FMA latency on
// two pipes), all threads at once.
//
//   gcc -O3 -mavx2 -mfma -pthread scripts/bench/fma_peak.c -o fma_peak && ./fma_peak [THREADS]
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ITERS 200000000L
#define CHAINS 10
#define MAX_THREADS 256

static void *run(void *out) {
  __m256 a[CHAINS];
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int i = 0; i < CHAINS; i++) a[i] = _mm256_set1_ps((float)i);
  for (long n = 0; n < ITERS; n++)
    for (int i = 0; i < CHAINS; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
  float sum = 0;
  for (int i = 0; i < CHAINS; i++) sum += a[i][0];
  *(float *)out = sum;  // keeps the chains live
  return NULL;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 2;
  if (threads < 1 || threads > MAX_THREADS) {
    fprintf(stderr, "THREADS must be 1 to %d, got %s\n", MAX_THREADS, argv[1]);
    return 2;
  }
  pthread_t t[MAX_THREADS];
  float out[MAX_THREADS];
  struct timespec start, end;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, run, &out[i]);
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  clock_gettime(CLOCK_MONOTONIC, &end);
  double seconds = (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) * 1e-9;
  double flops = 2.0 * ITERS * CHAINS * 8 * threads;
  printf("%.1f GFLOP/s f32 FMA peak on %d threads (%.2f s; checksum %g)\n", flops / seconds / 1e9,
         threads, seconds, out[0]);
  return 0;
}
