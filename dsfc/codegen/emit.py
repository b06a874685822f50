"""``emit_torch(ModulePlan) -> str`` and atomic writing of generated files."""

from __future__ import annotations

import functools
import os
import stat
import tempfile
from pathlib import Path

import black
import jinja2

from .plan import ModulePlan, py_name

TEMPLATES = Path(__file__).with_name("templates")


def printable(text: str) -> str:
    """Text from outside (a spec's file name) fit for one line of generated source: control characters (a newline,
    a form feed, ESC) as Python escapes. A spec file named ``odd\\nname.dsf`` broke the ``# Generated ... from``
    comment in two, and the generated module did not parse ("dsfc generated invalid Python")."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def docstring_text(text: str) -> str:
    """Spec text (the model's description) as the body of a generated ``\"\"\"`` docstring that reads back as the same
    text: a backslash is doubled and a control character escaped. ``model M "C:\\new\\Nope"`` wrote ``\\N`` into the
    docstring, a SyntaxError on import ("malformed \\N character escape"), and a form feed or ESC went in raw."""
    return printable(text.replace("\\", "\\\\"))


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
    env.filters["docstring"] = docstring_text
    env.filters["pytuple"] = lambda items: "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    return env


@functools.lru_cache(maxsize=256)
def _formatted(source: str, format_str) -> str:
    """black's output for ``source``, once per process: black is ~80% of compiling a spec, and a process that compiles
    the same spec again (the test suite: the catalog in a dozen modules) renders the same text. Keyed on the format
    function too, so a stand-in for black (a test's monkeypatch) neither reads nor fills the real formatter's
    entries."""
    return format_str(source, mode=black.Mode(line_length=120))


def emit_torch(plan: ModulePlan) -> str:
    """Render the module template and format it with black (pinned: output must be reproducible)."""
    source = _env().get_template(plan.template).render(plan=plan)
    try:
        return _formatted(source, black.format_str)
    except black.InvalidInput as exc:  # pragma: no cover - a template bug, never the user's
        raise RuntimeError(f"dsfc generated invalid Python for {plan.model}: {exc}\n{source}") from exc


def replace_target(path: Path) -> Path | None:
    """Where an atomic write of ``path`` should os.replace, or None for a special file to write as a stream.

    os.replace swaps the directory entry itself: ``-o /dev/stdout`` or ``-o /dev/full`` replaced the device node
    (run as root: for the whole system) by a regular file holding the output, a FIFO was replaced instead of read, and
    a symlinked output (docs/catalog.md linked elsewhere) became a file and left its target stale. A FIFO, a character
    device or a terminal (anything that exists and is neither a file nor a directory) is written directly; a symlink
    is followed to the file it names.
    """
    if path.exists() and not path.is_file() and not path.is_dir():
        return None
    return Path(os.path.realpath(path))


def new_file_mode(path: Path) -> int:
    """The permission bits the written file gets: an existing file's own (a fixed 0644 turned a group-writable
    generated/ file 0664 into 0644, and a file the user made read-only writable again), else what ``open`` would
    give a new file under the process's umask (0666 & ~umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and os.replace, so a failed run never leaves a half-written file (a special file
    such as a FIFO or /dev/stdout is written directly; a symlink's target is replaced, not the link)."""
    target = replace_target(path)
    if target is None:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        return
    path = target
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, new_file_mode(path))  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
