"""The Dynamo releases the launcher renders for, and the engines each one pins (pure data).

A ``dynamo_version`` is accepted only when the conformance suite (``tests/conformance``) runs
every rendered argv through that release's real argument parsers: flag spellings change between
releases (``--is-prefill-worker`` was removed in 1.4, ``--headless`` appeared in 1.0), so an
unverified version would be a plan the engine may reject, or worse, read differently.
Adding a release means adding it here, to ``scripts/engines-env`` and passing the suite.
"""

from __future__ import annotations

__all__ = ["ENGINE_PINS", "SUPPORTED_DYNAMO_VERSIONS"]

# ai-dynamo's own extras pin these (its METADATA: [vllm], [sglang], [trtllm]).
ENGINE_PINS: dict[str, dict[str, str]] = {
    "1.6.0": {"vllm": "0.31.0", "sglang": "0.5.21", "tensorrt-llm": "1.3.0rc29"},
    "1.6.1": {"vllm": "0.31.0", "sglang": "0.5.21", "tensorrt-llm": "1.3.0rc29"},
}
# Oldest first: the last one is the default. (1.5.x pins vLLM 0.28.0 / SGLang 0.5.18: another
# engines environment, not built yet, so not accepted.)

SUPPORTED_DYNAMO_VERSIONS: tuple[str, ...] = tuple(ENGINE_PINS)
"""Every ``dynamo_version`` the inventory accepts: exactly the ones the conformance suite verifies."""
