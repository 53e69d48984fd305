"""Peak memory of ``python -m sft.convert`` on a synthetic multi-GB THUDM checkpoint (a benchmark, not a test).

    python bench/convert_memory.py [--layers 4] [--shard_mb 1000] [--workdir /tmp]

Writes a ChatGLM2-6B-shaped checkpoint (hidden 4096, 32 query heads, 2 key/value groups of 128,
SwiGLU 13696, vocabulary 65024, fp16 random values) with ``--layers`` layers, in ``.bin`` shards of
at most ``--shard_mb`` MB cut at tensor boundaries as THUDM's are, with its
``pytorch_model.bin.index.json``. Then it converts it in a child process (``--skip_tokenizer``) and
prints the child's peak RSS (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``, read by a small
parent process that only launches it) beside the largest
source shard, the largest output shard and the totals, and the peak RSS of a child that only
imports what the converter imports (the floor). Everything is written under a temporary directory
in ``--workdir`` and removed at the end. 4 layers: 2.7 GB of weights in 3 shards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

REPO = Path(__file__).resolve().parents[1]
CHATGLM2_6B = {
    "model_type": "chatglm", "architectures": ["ChatGLMModel"], "num_layers": 28, "hidden_size": 4096,
    "num_attention_heads": 32, "kv_channels": 128, "multi_query_attention": True, "multi_query_group_num": 2,
    "ffn_hidden_size": 13696, "padded_vocab_size": 65024, "seq_length": 32768, "layernorm_epsilon": 1e-5,
    "rmsnorm": True, "apply_residual_connection_post_layernorm": False, "post_layer_norm": True,
    "add_bias_linear": False, "add_qkv_bias": True, "quantization_bit": 0, "torch_dtype": "float16",
    "eos_token_id": 2, "pad_token_id": 0,
}


@dataclass
class BenchArguments:
    layers: int = field(default=4, metadata={"help": "Transformer layers (each 408 MB in fp16; ChatGLM2-6B has 28)."})
    shard_mb: int = field(default=1000, metadata={"help": "Largest source shard, MB (THUDM's are about 1.9 GB)."})
    workdir: str = field(default=tempfile.gettempdir(), metadata={"help": "Where the temporary directory goes."})


def thudm_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """THUDM's keys, in its order, and their shapes."""
    hidden, ffn, vocab = config["hidden_size"], config["ffn_hidden_size"], config["padded_vocab_size"]
    qkv = (config["num_attention_heads"] + 2 * config["multi_query_group_num"]) * config["kv_channels"]
    shapes = {"transformer.embedding.word_embeddings.weight": (vocab, hidden),
              "transformer.rotary_pos_emb.inv_freq": (config["kv_channels"] // 4,)}
    for layer in range(config["num_layers"]):
        pre = f"transformer.encoder.layers.{layer}."
        shapes.update({
            pre + "input_layernorm.weight": (hidden,),
            pre + "self_attention.query_key_value.weight": (qkv, hidden),
            pre + "self_attention.query_key_value.bias": (qkv,),
            pre + "self_attention.dense.weight": (hidden, config["num_attention_heads"] * config["kv_channels"]),
            pre + "post_attention_layernorm.weight": (hidden,),
            pre + "mlp.dense_h_to_4h.weight": (2 * ffn, hidden),
            pre + "mlp.dense_4h_to_h.weight": (hidden, ffn),
        })
    shapes["transformer.encoder.final_layernorm.weight"] = (hidden,)
    shapes["transformer.output_layer.weight"] = (vocab, hidden)
    return shapes


def make_tensor(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if key.endswith("inv_freq"):  # THUDM's buffer: base 10000, rotary on half of each head
        rotary = 2 * shape[0]
        return (1.0 / 10000 ** (torch.arange(0, rotary, 2, dtype=torch.float32) / rotary)).half()
    return (torch.randn(shape, generator=generator) * 0.02).half()


def write_checkpoint(directory: Path, config: dict, shard_bytes: int) -> list[int]:
    """Write config.json, the shards and the index, one shard in memory at a time; returns shard sizes."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ChatGLMTokenizer"}))
    runs, run, size = [], [], 0
    shapes = thudm_shapes(config)
    for key, shape in shapes.items():
        nbytes = 2 * torch.Size(shape).numel()
        if run and size + nbytes > shard_bytes:
            runs.append(run)
            run, size = [], 0
        run.append(key)
        size += nbytes
    runs.append(run)
    generator, weight_map, sizes = torch.Generator().manual_seed(0), {}, []
    for number, keys in enumerate(runs, start=1):
        name = f"pytorch_model-{number:05d}-of-{len(runs):05d}.bin"
        torch.save({key: make_tensor(key, shapes[key], generator) for key in keys}, directory / name)
        weight_map.update(dict.fromkeys(keys, name))
        sizes.append((directory / name).stat().st_size)
        print(f"wrote {name}: {sizes[-1] / 1e6:,.0f} MB", file=sys.stderr)
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return sizes


# A small process (no torch) runs the command and reports its child's peak RSS (KB). Asking here instead
# would count this process's own pages, which a child shares from fork until exec.
MEASURE = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss_of(command: list[str]) -> tuple[int, float]:
    """Run ``command`` in the repository; ``(its peak RSS in bytes, seconds)``."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], cwd=REPO, check=True, stdout=subprocess.PIPE,
                          text=True)  # the command's log (stderr) shows
    return int(done.stdout.split()[-1]) * 1024, time.perf_counter() - start


def main() -> None:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses()
    config = {**CHATGLM2_6B, "num_layers": args.layers}
    work = Path(tempfile.mkdtemp(prefix="convert-memory-", dir=args.workdir))
    try:
        source_sizes = write_checkpoint(work / "thudm", config, args.shard_mb * 1_000_000)
        floor, _ = peak_rss_of([sys.executable, "-c", "import sft.convert, sft.conversion.weights, safetensors.torch, "
                                                      "transformers, torch"])
        peak, seconds = peak_rss_of([sys.executable, "-m", "sft.convert", "--source", str(work / "thudm"),
                                     "--output_dir", str(work / "out"), "--family", "chatglm2", "--skip_tokenizer"])
        out_sizes = [path.stat().st_size for path in sorted((work / "out").glob("*.safetensors"))]
        mb = 1e6
        print(f"source: {len(source_sizes)} .bin shards, {sum(source_sizes) / mb:,.0f} MB in all, largest "
              f"{max(source_sizes) / mb:,.0f} MB ({args.layers} layers of ChatGLM2-6B's shape, fp16)")
        print(f"output: {len(out_sizes)} safetensors shards, {sum(out_sizes) / mb:,.0f} MB in all, largest "
              f"{max(out_sizes) / mb:,.0f} MB")
        print(f"conversion: {seconds:.1f} s, peak RSS {peak / mb:,.0f} MB = {peak / max(source_sizes):.2f} x the "
              f"largest shard, {peak / sum(source_sizes):.2f} x the checkpoint; imports alone: {floor / mb:,.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
