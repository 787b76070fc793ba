// Prefill attention with a planted causal off-by-one (each prompt row also sees the next row's
// key): the tests show that the shim catches it.
#define GLIMPSE_TEST_CAUSAL_OFF_BY_ONE
#define GLIMPSE_SHIM_PREFILL_ATTENTION glimpse_shim_prefill_attention_off_by_one
#include "prefill_attention.cpp"
