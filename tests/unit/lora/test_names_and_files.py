"""Adapter names, adapter file checks (real peft/safetensors files) and engine flags."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from llmserve.llm import LLMConfig
from llmserve.llm.tiny_model import cached_tiny_model
from llmserve.lora.adapter_files import check_fits, engine_rank, inspect_adapter
from llmserve.lora.errors import InvalidAdapter, InvalidAdapterName
from llmserve.lora.folder import LocalFolder, open_folder
from llmserve.lora.names import check_adapter_name


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "..", ".hidden", "", "a" * 300,
                                  "x/../../etc"])
def test_names_that_could_leave_the_folder_are_400(name: str) -> None:
    with pytest.raises(InvalidAdapterName) as error:
        check_adapter_name(name)
    assert error.value.status_code == 400


def test_plain_names_pass() -> None:
    assert check_adapter_name("lora-1") == "lora-1"
    assert check_adapter_name("sql_v2.1") == "sql_v2.1"


def test_engine_rank_rounds_up_to_a_rank_vllm_accepts() -> None:
    assert [engine_rank(r) for r in (1, 4, 8, 9, 64, 300)] == [1, 8, 8, 16, 64, 320]
    with pytest.raises(ValueError, match="512"):
        engine_rank(1024)


@pytest.fixture(scope="module")
def adapter() -> Path:
    return cached_tiny_model(num_loras=3) / "loras" / "lora-0"


def copy(adapter: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(adapter, tmp_path / "a"))


def test_a_good_adapter_reports_rank_and_no_base(adapter: Path) -> None:
    facts = inspect_adapter("t:a", adapter)
    assert facts.rank == 8 and facts.base_model is None
    check_fits("t:a", facts, 8, ("tiny", "/models/tiny"))


def test_rank_above_max_lora_rank_is_400(adapter: Path) -> None:
    with pytest.raises(InvalidAdapter, match="rank 8, above this model's max_lora_rank of 1"):
        check_fits("t:a", inspect_adapter("t:a", adapter), 1, ("tiny",))


def test_other_base_model_is_400(adapter: Path, tmp_path: Path) -> None:
    path = copy(adapter, tmp_path)
    config = json.loads((path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "meta-llama/Llama-3.1-8B"
    (path / "adapter_config.json").write_text(json.dumps(config))
    facts = inspect_adapter("t:a", path)
    reason = re.escape("trained for base model `meta-llama/Llama-3.1-8B`")
    with pytest.raises(InvalidAdapter, match=reason):
        check_fits("t:a", facts, 8, ("tiny", "/models/tiny"))
    check_fits("t:a", facts, 8, ("x", "/hub/meta-llama/Llama-3.1-8B"))  # same model, a path


def test_missing_weights_is_400(adapter: Path, tmp_path: Path) -> None:
    path = copy(adapter, tmp_path)
    (path / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidAdapter, match=re.escape("missing adapter_model.safetensors")):
        inspect_adapter("t:a", path)


def test_truncated_weights_are_400(adapter: Path, tmp_path: Path) -> None:
    path = copy(adapter, tmp_path)
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(InvalidAdapter, match=re.escape("corrupt adapter_model.safetensors")):
        inspect_adapter("t:a", path)


def test_unreadable_config_is_400(adapter: Path, tmp_path: Path) -> None:
    path = copy(adapter, tmp_path)
    (path / "adapter_config.json").write_text("{not json")
    with pytest.raises(InvalidAdapter, match=re.escape("unreadable adapter_config.json")):
        inspect_adapter("t:a", path)


def test_missing_config_is_400(tmp_path: Path) -> None:
    with pytest.raises(InvalidAdapter, match=re.escape("missing adapter_config.json")):
        inspect_adapter("t:a", tmp_path)


def test_folder_lists_only_subfolders_with_a_config(adapter: Path, tmp_path: Path) -> None:
    shutil.copytree(adapter, tmp_path / "one")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert LocalFolder(tmp_path).list_adapters() == {"one": str(tmp_path / "one")}
    assert open_folder(f"file://{tmp_path}").list_adapters() == {"one": str(tmp_path / "one")}


def test_a_symlink_out_of_the_folder_is_refused(adapter: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to(adapter)
    with pytest.raises(Exception, match="outside"):
        LocalFolder(root).local_copy("escape")
    assert LocalFolder(adapter.parent).local_copy("lora-0") == (adapter.resolve(), False)


def test_unsupported_scheme_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="unsupported scheme 'gs'"):
        LLMConfig(model_loading_config={"model_id": "m"},
                  lora_config={"dynamic_lora_loading_path": "gs://bucket/x"})


def test_lora_config_turns_on_the_engine_lora(adapter: Path) -> None:
    config = LLMConfig(model_loading_config={"model_id": "m"},
                       lora_config={"dynamic_lora_loading_path": str(adapter.parent),
                                    "max_num_adapters_per_replica": 4})
    assert config.with_lora_enabled().engine_kwargs == {
        "enable_lora": True, "max_loras": 4, "max_lora_rank": 8}
    given = LLMConfig(model_loading_config={"model_id": "m"}, engine_kwargs={"max_loras": 2,
                      "max_lora_rank": 64}, lora_config={})
    assert given.with_lora_enabled().engine_kwargs == {
        "enable_lora": True, "max_loras": 2, "max_lora_rank": 64}
    plain = LLMConfig(model_loading_config={"model_id": "m"})
    assert plain.with_lora_enabled().engine_kwargs == {}
