"""Reading a policy file: YAML in, a validated :class:`Policy` out, or a :class:`PolicyError`.

There is no fallback. A path that is given and cannot be read or validated
raises; only ``path=None`` means "the packaged default". Error messages name
the key path (``tiers[2].handling.retention.cache``) and the problem, and
never echo a whole document.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from imaging_lifecycle.policy.schema import Policy

DEFAULT_POLICY = "default.yaml"


class PolicyError(ValueError):
    """The policy is missing, unreadable or invalid; the message names the key and the problem."""


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "literal[")):
            continue  # pydantic's internal step names, not keys
        else:
            out += ("." if out else "") + str(part)
    return out


def _format(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors(include_url=False, include_input=True):
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not in the policy schema)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] != "value_error" and isinstance(e.get("input"), (str, int, float, bool)):
            msg += f" (got {e['input']!r})"  # a policy holds no patient data; the offending value helps
        where = _loc(tuple(e["loc"]))
        lines.append(f"{where}: {msg}" if where else msg)
    return f"invalid policy {source}: " + "; ".join(lines)


def parse_policy(text: str, source: str = "<string>") -> Policy:
    """Validate policy YAML given as text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PolicyError(f"invalid policy {source}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"invalid policy {source}: the document must be a mapping of keys, got {type(data).__name__}")
    if "schema_version" not in data:
        raise PolicyError(f"invalid policy {source}: schema_version: required key is missing")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        raise PolicyError(_format(e, source)) from None
    policy._source = source
    return policy


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy at ``path``, or the packaged default when ``path`` is None."""
    if path is None:
        text = resources.files("imaging_lifecycle.policy").joinpath(DEFAULT_POLICY).read_text("utf-8")
        return parse_policy(text, f"(packaged {DEFAULT_POLICY})")
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise PolicyError(f"policy file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"policy file {p} cannot be read: {type(e).__name__}") from None
    return parse_policy(text, str(p))
