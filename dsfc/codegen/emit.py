"""``emit_torch(ModulePlan) -> str`` and atomic writing of generated files."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import black
import jinja2

from .plan import ModulePlan, py_name

TEMPLATES = Path(__file__).with_name("templates")


@functools.lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    """One Jinja environment per process: templates are parsed once, not per compiled spec."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = repr
    env.filters["pyname"] = py_name
    env.filters["self_dim"] = lambda s: f"self.{s}" if s.isidentifier() else s
    env.filters["replace_dims"] = lambda s: s
    env.filters["pytuple"] = lambda items: "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    return env


def emit_torch(plan: ModulePlan) -> str:
    """Render the module template and format it with black (pinned: output must be reproducible)."""
    source = _env().get_template(plan.template).render(plan=plan)
    try:
        return black.format_str(source, mode=black.Mode(line_length=120))
    except black.InvalidInput as exc:  # pragma: no cover - a template bug, never the user's
        raise RuntimeError(f"dsfc generated invalid Python for {plan.model}: {exc}\n{source}") from exc


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and os.replace, so a failed run never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; generated sources are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
