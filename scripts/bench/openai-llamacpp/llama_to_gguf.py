"""Writes a GGUF file of a small f32 Llama checkpoint in the Hugging Face layout (the bundled
models/stories260K), so llama.cpp can serve the same weights as Glimpse.

llama.cpp's own converter (convert_hf_to_gguf.py) needs torch; this one needs only numpy and the
`gguf` package. It handles what stories260K uses and refuses the rest: LlamaForCausalLM, f32
safetensors, tied embeddings, a BPE tokenizer with byte fallback (written as llama.cpp's "llama"
SentencePiece vocabulary, scores falling with id as SentencePiece orders merges).

    python llama_to_gguf.py MODEL_DIR OUT.gguf
"""

import json
import struct
import sys
from pathlib import Path

import gguf
import numpy as np


def read_safetensors(path):
    """Tensors of an f32 safetensors file by name (the format: u64 header length, JSON header,
    then raw little-endian data)."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    data = raw[8 + header_len :]
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            sys.exit(f"{path}: {name} is {meta['dtype']}, only F32 is handled")
        start, end = meta["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(meta["shape"])
    return tensors


def unpermute(weight, n_head):
    """Hugging Face stores q/k rows in rotate-half order; llama.cpp's Llama expects the
    interleaved pairs of the original checkpoint (the inverse of HF's conversion permutation,
    as convert_hf_to_gguf.py applies it)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_vocab(writer, model_dir, config):
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    model = tokenizer["model"]
    if model["type"] != "BPE" or not model.get("byte_fallback"):
        sys.exit("only BPE tokenizers with byte_fallback are handled")
    by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(config["vocab_size"])):
        sys.exit("tokenizer ids are not 0..vocab_size")
    special = {t["id"]: t["content"] for t in tokenizer.get("added_tokens", [])}
    tokens, scores, types = [], [], []
    for token, token_id in by_id:
        tokens.append(token)
        if token_id in special:
            kind = gguf.TokenType.UNKNOWN if token == "<unk>" else gguf.TokenType.CONTROL
            score = 0.0
        elif token.startswith("<0x") and token.endswith(">") and len(token) == 6:
            kind, score = gguf.TokenType.BYTE, 0.0
        else:
            kind, score = gguf.TokenType.NORMAL, -float(token_id)
        types.append(kind)
        scores.append(score)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)


def main(model_dir, out):
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("architectures") != ["LlamaForCausalLM"] or not config.get("tie_word_embeddings"):
        sys.exit("only LlamaForCausalLM with tied embeddings is handled")
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim", config["hidden_size"] // n_head)
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(model_dir.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    write_vocab(writer, model_dir, config)

    tensors = read_safetensors(model_dir / "model.safetensors")
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    layer_names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for layer in range(config["num_hidden_layers"]):
        for hf, ours in layer_names.items():
            names[f"model.layers.{layer}.{hf}.weight"] = f"blk.{layer}.{ours}.weight"
    if set(tensors) != set(names):
        sys.exit(f"unexpected tensors: {sorted(set(tensors) ^ set(names))}")
    for hf, ours in names.items():
        weight = tensors[hf]
        if hf.endswith("q_proj.weight"):
            weight = unpermute(weight, n_head)
        elif hf.endswith("k_proj.weight"):
            weight = unpermute(weight, n_kv)
        writer.add_tensor(ours, np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
