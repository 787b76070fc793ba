// C ABI launcher of paged decode attention under the host shim: the partition launch, then the
// reduce, with the partitions' scratch arrays between them.
#include "shim.h"

#include "decode_attention.cu"

extern "C" void glimpse_shim_decode_attention(
    const float *q, const glimpse_bf16 *key_cache, const glimpse_bf16 *value_cache,
    const int *block_tables, int max_blocks_per_seq, const int *context_lens,
    const int *skip_starts, const int *skip_ends, float *out, int num_seqs, int num_heads,
    int num_kv_heads, int head_dim, int block_size, float scale, int partition_size,
    unsigned int threads) {
    int longest = 0;
    for (int s = 0; s < num_seqs; ++s) {
        longest = max(longest, context_lens[s]);
    }
    const int partitions = max(1, (longest + partition_size - 1) / partition_size);
    const std::size_t heads = static_cast<std::size_t>(num_seqs) * num_heads * partitions;
    std::vector<float> partial_max(heads), partial_sum(heads), partial_out(heads * head_dim);
    float *maxes = partial_max.data();
    float *sums = partial_sum.data();
    float *outs = partial_out.data();
    const std::size_t group = static_cast<std::size_t>(num_heads / num_kv_heads);
    const std::size_t shared_bytes =
        8 * threads + 4 * (2 * group * head_dim + 2 * group * threads + 3 * group);
    glimpse_shim::launch(dim3{static_cast<unsigned int>(num_seqs),
                              static_cast<unsigned int>(num_kv_heads),
                              static_cast<unsigned int>(partitions)},
                         dim3{threads}, shared_bytes, [=] {
                             glimpse_decode_attention(q, key_cache, value_cache, block_tables,
                                                      max_blocks_per_seq, context_lens,
                                                      skip_starts, skip_ends, partition_size,
                                                      maxes, sums, outs, num_heads, head_dim,
                                                      block_size, scale);
                         });
    glimpse_shim::launch(
        dim3{static_cast<unsigned int>(num_seqs), static_cast<unsigned int>(num_heads)},
        dim3{threads}, 0, [=] {
            glimpse_decode_attention_reduce(maxes, sums, outs, out, partitions, head_dim);
        });
}
