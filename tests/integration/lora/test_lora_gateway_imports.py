"""A gateway serving LoRA adapters checks their files without importing torch or peft."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from llmserve.llm.tiny_model import cached_tiny_model

GATEWAY = textwrap.dedent("""
    import json, shutil, sys
    from pathlib import Path

    import httpx
    from llmserve import serve
    from llmserve.llm import LLMConfig, build_openai_app

    model, folder = Path(sys.argv[1]), Path(sys.argv[2])
    config = LLMConfig(
        model_loading_config={"model_id": "tiny", "model_source": str(model)},
        llm_engine="sim",
        lora_config={"dynamic_lora_loading_path": str(folder),
                     "lora_modules": {"static-one": str(model / "loras" / "lora-1")}})
    serve.run(build_openai_app({"llm_configs": [config]}), port=0)
    url = serve.http_url()
    try:
        for name in ("tiny:lora-0", "static-one", "tiny:broken"):
            answer = httpx.post(f"{url}/v1/completions", timeout=60,
                                json={"model": name, "prompt": "hi", "max_tokens": 2})
            print("STATUS", name, answer.status_code, answer.json().get("error", {}).get(
                "message", ""))
    finally:
        serve.shutdown()
    heavy = sorted(m for m in ("torch", "peft", "transformers", "safetensors")
                   if m in sys.modules)
    print("HEAVY", heavy)
""")


def test_a_lora_gateway_never_imports_torch_or_peft(tmp_path: object) -> None:
    import shutil
    from pathlib import Path

    model = cached_tiny_model(num_loras=2)
    folder = Path(str(tmp_path)) / "adapters"
    shutil.copytree(model / "loras" / "lora-0", folder / "lora-0")
    broken = Path(shutil.copytree(model / "loras" / "lora-0", folder / "broken"))
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    done = subprocess.run([sys.executable, "-c", GATEWAY, str(model), str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "STATUS tiny:lora-0 200" in done.stdout, done.stdout
    assert "STATUS static-one 200" in done.stdout, done.stdout
    # the adapter files were checked: a truncated weights file is refused
    assert "STATUS tiny:broken 400 adapter `tiny:broken` has a corrupt" in done.stdout
    assert "HEAVY []" in done.stdout, done.stdout
