"""Turn the packaged SmolLM2 GGUF file into a plain bfloat16 Hugging Face folder that vLLM serves.

Run as ``python -m enginehost._convert GGUF_FILE OUT_DIR`` (what ``prepare_chat_model`` does, so that
torch and transformers never load into the gateway's own process). Steps, from ENGINE_NOTES:
transformers de-quantizes the GGUF file; ``save_pretrained`` refuses a GGUF-quantized model, so a plain
``LlamaForCausalLM`` is built from its config without ``quantization_config``, given its state dict,
cast to bfloat16 and saved, with the tokenizer (which carries the chat template) beside it.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any


def convert_gguf_to_hf(gguf_file: Path, out_dir: Path) -> None:
    """Write ``config.json``, ``model.safetensors``, tokenizer files and ``chat_template.jinja``."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Imported here, untyped on purpose: the gateway's type check must not need transformers installed.
    transformers: Any = importlib.import_module("transformers")

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    config = transformers.LlamaConfig.from_dict(config_dict)
    config.architectures = ["LlamaForCausalLM"]
    plain = transformers.LlamaForCausalLM(config)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    del quantized
    plain.bfloat16()
    out_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    if not (out_dir / "chat_template.jinja").is_file():
        template = getattr(tokenizer, "chat_template", None)
        if not isinstance(template, str):
            raise RuntimeError("the GGUF file's tokenizer carries no chat template")
        (out_dir / "chat_template.jinja").write_text(template, encoding="utf-8")
    for path in out_dir.iterdir():
        path.chmod(0o644)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m enginehost._convert GGUF_FILE OUT_DIR", file=sys.stderr)
        return 2
    convert_gguf_to_hf(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
