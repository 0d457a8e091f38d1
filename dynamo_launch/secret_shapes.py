"""What a secret written into a command line looks like (pure).

A process's argv is readable by every local user (``/proc/PID/cmdline``, ``ps``), so a token there
leaks on every node it runs on. :func:`argv_secrets` finds the two tell-tales in an argv — a value
after a credential flag (``--api-key X``, ``--hf-token=X``), and a word shaped like a token under
any flag (``hf_…``, ``sk-…``, a JWT, a long random-looking word) — and says, for each, how to give
it instead: through an environment variable the program reads, set by reference
(``${VAR}`` / ``file:``), which travels only inside the agent's spawn request.
"""

from __future__ import annotations

import collections
import math
import re

__all__ = ["SECRET_VALUE", "argv_secrets", "looks_like_token"]

SECRET_VALUE = re.compile(
    r"^(hf_[A-Za-z0-9]{20,}|nvapi-[A-Za-z0-9_-]{20,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,})$"
)
"""Well-known token shapes as a whole value (an ``env`` value under any name)."""

# The same shapes, and a few more, anywhere inside an argument (a `sh -c` line holds several words).
_TOKEN_IN_TEXT = re.compile(
    r"(?<![A-Za-z0-9])("
    r"hf_[A-Za-z0-9]{20,}|nvapi-[A-Za-z0-9_-]{20,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # a JWT: header.payload.signature
    r")"
)
_KIND = re.compile(r"hf_|nvapi-|sk-|gh[pousr]_|github_pat_|xox[abposr]-|AKIA|eyJ")  # shown instead of the value
_WORD = re.compile(r"[A-Za-z0-9+/=_-]{32,}")

# Flags that take a credential, from the engines' real parsers (vLLM 0.31 `--api-key`,
# `--hf-token`; SGLang 0.5 `--api-key`, `--admin-api-key`) and the usual spellings of other
# programs; the value is what an environment variable should carry instead.
_ENGINE_ENV = {
    "--hf-token": 'env = { HF_TOKEN = "${HF_TOKEN}" } (Hugging Face reads HF_TOKEN; vLLM\'s --hf-token without a '
                  "value uses it too)",
    "--api-key": 'env = { VLLM_API_KEY = "${VLLM_API_KEY}" } for vLLM (it reads VLLM_API_KEY), or the variable '
                 "your program reads",
}
_CREDENTIAL_FLAGS = frozenset({
    "--hf-token", "--api-key", "--admin-api-key", "--token", "--auth-token", "--access-token", "--api-token",
    "--nats-token", "--password", "--passwd", "--secret", "--secret-key", "--access-key", "--client-secret",
    "--private-key", "--bearer-token",
})  # fmt: skip
# Any other flag whose last word names a credential (`--registry-password`), unless it is a
# count or a path (`--kv-bytes-per-token 2`, `--client-secret /run/secrets/x` is a path).
_CREDENTIAL_WORD = re.compile(r"^--(?:[a-z0-9]+-)*(token|password|passwd|secret|api-key|apikey|credentials?)$")
_PLAIN_VALUE = re.compile(r"^([0-9.]+|true|false|none|[/~.].*)$", re.IGNORECASE)


def looks_like_token(word: str) -> bool:
    """A long random-looking word: 32+ letters and digits of mixed case, high entropy, few separators
    (model names, paths, hex digests and UUIDs do not qualify)."""
    if len(word) < 32 or not (re.search(r"[a-z]", word) and re.search(r"[A-Z]", word) and re.search(r"[0-9]", word)):
        return False
    if sum(word.count(c) for c in "-_/.") > len(word) / 10:
        return False
    counts = collections.Counter(word)
    entropy = -sum(n / len(word) * math.log2(n / len(word)) for n in counts.values())
    return entropy >= 4.4


def _advice(flag: str | None) -> str:
    how = _ENGINE_ENV.get(flag or "", 'env = { NAME = "${NAME}" } or NAME = "file:/path", NAME being the '
                                      "environment variable the program reads")
    return (f"a command line is readable by every local user (/proc/PID/cmdline); give it through the environment, "
            f"by reference: {how}")


def argv_secrets(argv: tuple[str, ...] | list[str]) -> list[tuple[int, str]]:
    """``(index, message)`` for each argument of ``argv`` that carries a secret inline.

    The message names the flag or the shape, never the value."""
    found: list[tuple[int, str]] = []
    for i, arg in enumerate(argv):
        flag, value = (arg.split("=", 1) + [None])[:2] if arg.startswith("--") else (None, None)
        if flag is not None and value is None and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            taken = argv[i + 1]  # `--api-key VALUE`: reported at the value
        else:
            taken = None
        credential = flag is not None and (flag in _CREDENTIAL_FLAGS or bool(_CREDENTIAL_WORD.match(flag)))
        if credential and value and not _PLAIN_VALUE.match(value):
            found.append((i, f"inline secret after {flag}: {_advice(flag)}"))
            continue
        if credential and taken and not _PLAIN_VALUE.match(taken) and not taken.startswith("$"):
            found.append((i + 1, f"inline secret after {flag}: {_advice(flag)}"))
            continue
        if i > 0 and found and found[-1][0] == i:
            continue  # this value was reported with its flag
        shape = _TOKEN_IN_TEXT.search(arg)
        if shape is not None or any(looks_like_token(w) for w in _WORD.findall(arg)):
            kind = _KIND.match(shape.group()) if shape is not None else None
            what = f"a token ({kind.group()}…)" if kind is not None else "a long random-looking word"
            found.append((i, f"{what} looks like an inline secret: {_advice(None)}"))
    return found
