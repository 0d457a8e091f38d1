"""scripts/make-tiny-model: the weight-less model directory the Dynamo mocker serves.

Needs the `tokenizers` package (requirements/dynamo.txt); the whole module is skipped without it.
The chat-template checks also need `jinja2` and are skipped on their own without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

tokenizers = pytest.importorskip(
    "tokenizers", reason="tokenizers is not installed (pip install -r requirements/dynamo.txt)"
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make-tiny-model"
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json", "generation_config.json")
# ai-dynamo 1.6.1's mocker emits random token ids in [1000, 2000), whatever the model.
MOCKER_IDS = range(1000, 2000)


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    proc = run_script(str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out.resolve())
    return out


def load(model_dir: Path, name: str) -> dict:
    return json.loads((model_dir / name).read_text(encoding="utf-8"))


def test_script_is_executable_with_env_shebang() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text(encoding="utf-8").splitlines()[0] == "#!/usr/bin/env python3"


def test_usage_without_a_directory() -> None:
    proc = run_script()
    assert proc.returncode == 2
    assert "usage" in proc.stderr


def test_writes_the_files_and_nothing_else(model_dir: Path) -> None:
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(FILES)
    for name in FILES:
        if name.endswith(".json"):
            load(model_dir, name)  # valid JSON


def test_tokenizer_loads_and_round_trips(model_dir: Path) -> None:
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    for text in ("Hello, world!", "The frontend routes requests.", "ünïcødé 😀 — 42\n\tdef f(): pass"):
        enc = tok.encode(text)
        assert enc.ids
        assert tok.decode(enc.ids) == text  # byte-level BPE: nothing is unknown


def test_vocab_matches_config_and_covers_the_mocker_ids(model_dir: Path) -> None:
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    config = load(model_dir, "config.json")
    assert config["vocab_size"] == tok.get_vocab_size(with_added_tokens=True)
    assert config["vocab_size"] >= MOCKER_IDS.stop
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    for i in MOCKER_IDS:
        assert tok.id_to_token(i) not in special
        assert tok.decode([i]).strip(), f"token {i} decodes to nothing"


def test_special_tokens_agree_across_files(model_dir: Path) -> None:
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tcfg = load(model_dir, "tokenizer_config.json")
    config = load(model_dir, "config.json")
    gen = load(model_dir, "generation_config.json")
    bos, eos, pad = (tok.token_to_id(tcfg[k]) for k in ("bos_token", "eos_token", "pad_token"))
    assert None not in (bos, eos, pad)
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (bos, eos, pad)
    assert gen["bos_token_id"] == bos
    assert eos in gen["eos_token_id"]
    for idx, entry in tcfg["added_tokens_decoder"].items():
        assert tok.token_to_id(entry["content"]) == int(idx)
        assert entry["special"] is True
    # The template's markers are single special tokens.
    assert tok.encode("<|im_start|>user\n").ids[0] == tok.token_to_id("<|im_start|>")


def test_config_is_a_tiny_llama_the_mocker_reads_without_transformers(model_dir: Path) -> None:
    config = load(model_dir, "config.json")
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["max_position_embeddings"] == 2048
    # dynamo.mocker reads these three verbatim from config.json; without them it falls back to
    # transformers.AutoConfig, which requirements/dynamo.txt does not install.
    for key in ("num_hidden_layers", "num_attention_heads", "hidden_size"):
        assert isinstance(config[key], int) and config[key] > 0
    assert config["hidden_size"] % config["num_attention_heads"] == 0
    assert config["hidden_size"] <= 256
    assert not any(p.suffix in (".safetensors", ".bin", ".pt") for p in model_dir.iterdir())


def test_rerun_is_idempotent(model_dir: Path) -> None:
    before = {name: (model_dir / name).read_bytes() for name in FILES}
    proc = run_script(str(model_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(model_dir.resolve())
    assert {name: (model_dir / name).read_bytes() for name in FILES} == before
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".")]  # no temp files left


def test_creates_missing_parents(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "c"
    proc = run_script(str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "tokenizer.json").is_file()


class TestChatTemplate:
    @pytest.fixture
    def render(self, model_dir: Path):
        jinja2 = pytest.importorskip("jinja2")
        template = jinja2.Environment().from_string(load(model_dir, "tokenizer_config.json")["chat_template"])
        return template.render

    def test_renders_chatml_with_generation_prompt(self, render) -> None:
        text = render(
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello."},
            ],
            add_generation_prompt=True,
        )
        assert text == (
            "<|im_start|>system\nYou are terse.<|im_end|>\n"
            "<|im_start|>user\nSay hello.<|im_end|>\n"
            "<|im_start|>assistant\n"
        )

    def test_without_generation_prompt(self, render) -> None:
        text = render(messages=[{"role": "user", "content": "Hi"}], add_generation_prompt=False)
        assert text == "<|im_start|>user\nHi<|im_end|>\n"

    def test_content_parts_list(self, render) -> None:
        text = render(
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}
            ],
            add_generation_prompt=True,
        )
        assert text == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"

    def test_rendered_prompt_tokenizes(self, render, model_dir: Path) -> None:
        tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        messages = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello in one word."},
        ]
        text = render(messages=messages, add_generation_prompt=True)
        ids = tok.encode(text).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
        # A live dynamo.frontend (Rust templating) reported usage.prompt_tokens == 32 for this
        # request against the mocker: it renders the template the same way.
        assert len(ids) == 32
