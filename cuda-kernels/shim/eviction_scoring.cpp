// C ABI launchers of eviction scoring under the host shim: the three launches with their scratch
// arrays between them, and the pooling launch alone (for its bit-for-bit test).
#include "shim.h"

#include "eviction_scoring.cu"

extern "C" void glimpse_shim_score_pool(const float *reduced, float *scores, int scored,
                                        int num_heads, int num_kv_heads, int pool, int kernel,
                                        unsigned int threads) {
    const unsigned int tiles = static_cast<unsigned int>(max(1, (scored + static_cast<int>(threads) - 1) /
                                                                    static_cast<int>(threads)));
    glimpse_shim::launch(dim3{tiles, static_cast<unsigned int>(num_kv_heads)}, dim3{threads}, 0,
                         [=] { glimpse_score_pool(reduced, scores, scored, num_heads, pool, kernel); });
}

extern "C" void glimpse_shim_eviction_scores(
    const float *queries, const float *extra_keys, int row_stride, int n_q,
    const glimpse_bf16 *key_cache, const int *block_table, int prompt_len, int scored,
    int suffix, int with_extra, int mean, int pool, int kernel, float *scores, int num_heads,
    int num_kv_heads, int head_dim, int block_size, float scale, unsigned int threads) {
    const std::size_t rows = static_cast<std::size_t>(num_heads) * n_q;
    std::vector<float> maxes(rows), inv_sums(rows),
        reduced(static_cast<std::size_t>(num_heads) * scored);
    float *row_max = maxes.data();
    float *row_inv_sum = inv_sums.data();
    float *reduced_rows = reduced.data();
    const unsigned int heads = static_cast<unsigned int>(num_heads);
    glimpse_shim::launch(dim3{static_cast<unsigned int>(n_q), heads}, dim3{threads},
                         4 * (static_cast<std::size_t>(head_dim) + 2 * threads), [=] {
                             glimpse_score_softmax_stats(queries, extra_keys, row_stride,
                                                         key_cache, block_table, prompt_len,
                                                         suffix, with_extra, row_max, row_inv_sum,
                                                         num_kv_heads, head_dim, block_size, scale);
                         });
    const unsigned int tiles = static_cast<unsigned int>(
        max(1, (scored + static_cast<int>(threads) - 1) / static_cast<int>(threads)));
    glimpse_shim::launch(dim3{tiles, heads}, dim3{threads},
                         4 * static_cast<std::size_t>(n_q) * head_dim, [=] {
                             glimpse_score_reduce(queries, row_stride, n_q, key_cache, block_table,
                                                  prompt_len, scored, suffix, mean, row_max,
                                                  row_inv_sum, reduced_rows, num_kv_heads,
                                                  head_dim, block_size, scale);
                         });
    glimpse_shim_score_pool(reduced_rows, scores, scored, num_heads, num_kv_heads, pool, kernel,
                            threads);
}
