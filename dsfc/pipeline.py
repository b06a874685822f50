"""``compile_spec(path) -> CompileResult``: the whole pipeline, every intermediate kept for tests and debugging.

    text --parse_spec--> Spec --check_spec--> CheckedSpec --lower_to_sympy--> SymSpec
         --unflatten_state--> SymSpec (flat state axes read through digits split; the module keeps the declared view)
         --unflatten_output--> SymSpec (flat output axes split; the reference keeps the original)
         --gather_output_reads--> SymSpec (an output read at a formula f(e) of its index: a post y[e] = y_core[f(e)])
         --canonical_matrices--> SymSpec (deltas under sums contracted: the same model read the same)
         --analyse_structure--> StructureReport --plan_module--> ModulePlan --emit_torch--> source
"""

from __future__ import annotations

import contextlib
import hashlib
import keyword
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from . import __version__
from .analysis.report import StructureReport, analyse_structure
from .analysis.facts import Family
from .analysis.structure import Structure, analyse_structure_of
from .codegen.emit import emit_torch, printable, write_atomic
from .codegen.plan import ModulePlan, plan_module
from .ir.lower import lower_to_sympy
from .ir.symspec import SymSpec
from .ir.cancelled import cancelled_reads
from .ir.canonical import canonical_matrices
from .ir.gathered_reads import gather_output_reads
from .ir.out_projection import out_projection_splits
from .ir.product_as_matrix import product_as_matrix
from .ir.unflatten import unflatten_output, unflatten_state
from .lang.ast import Spec
from .lang.check import CheckedSpec, check_spec, too_deep_error
from .lang.errors import SpecErrors
from .lang.parse import parse_file, parse_spec


@dataclass(frozen=True)
class CompileResult:
    spec: Spec
    checked: CheckedSpec
    sym: SymSpec  # the spec as written (what the reference evaluates)
    structure: Structure
    report: StructureReport
    plan: ModulePlan
    source: str  # the generated PyTorch module
    core: SymSpec | None = None  # what the analysis and codegen saw: flat state / output axes split (ir/unflatten.py)

    @property
    def module_name(self) -> str:
        """The spec file's stem as an importable Python module name (``my-spec.dsf`` -> ``my_spec``, ``9lives.dsf``
        -> ``m9lives``, ``class.dsf`` -> ``class_``, ``torch.dsf`` -> ``torch_``): the generated file must be
        importable and must not shadow a module it imports."""
        return python_module_name(Path(self.spec.path).stem)


# the top-level modules every generated file imports: a generated torch.py or dsfc.py next to a script (or in the
# current directory of `python -c`) is imported in their place, and the file itself then fails on its own imports
IMPORTED_BY_GENERATED = frozenset({"math", "torch", "triton", "dsfc"})


def python_module_name(stem: str) -> str:
    name = re.sub(r"\W", "_", stem, flags=re.ASCII) or "spec"
    if name[0].isdigit():
        name = "m" + name
    return name + "_" if keyword.iskeyword(name) or name in IMPORTED_BY_GENERATED else name


def spec_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def display_path(path: str) -> str:
    """The spec path as stamped into generated files: relative, with forward slashes, never absolute."""
    p = Path(path)
    try:
        p = p.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        p = Path(p.name)
    return p.as_posix()


@contextlib.contextmanager
def _recursion_is_a_spec_error(spec: Spec):
    """Python's recursion limit reached by a pass (a long chain of lets, inlined into one another) is the spec's depth,
    reported at the spec's deepest let chain, not an internal error."""
    try:
        yield
    except RecursionError:
        raise SpecErrors([too_deep_error(spec)], spec.path, spec.source) from None


def analyse(spec: Spec) -> tuple[CheckedSpec, SymSpec, Structure, StructureReport]:
    """The spec's SymSpec as written, and the structure and report of its core (see ``_analyse_core``)."""
    with _recursion_is_a_spec_error(spec):
        checked, sym, _core, structure, report = _analyse_core(spec)
    return checked, sym, structure, report


def _analyse_core(spec: Spec) -> tuple[CheckedSpec, SymSpec, SymSpec, Structure, StructureReport]:
    checked = check_spec(spec)  # Spec -> CheckedSpec
    sym = lower_to_sympy(checked)  # CheckedSpec -> SymSpec
    for w in cancelled_reads(sym):  # a param read only in terms SymPy folded to 0 (the checker saw it read)
        warnings.warn(w, stacklevel=3)
    for w in product_as_matrix(sym):  # B u written where B was meant: B's entry reads u but not its column index
        warnings.warn(w, stacklevel=3)
    split = unflatten_state(sym)  # SymSpec -> SymSpec: S[i: H * K * V] read through i // (K * V), .. as S[H, K, V]
    try:
        core, structure = _structure_of(split)
    except SpecErrors:
        if split is sym:
            raise
        core, structure = _structure_of(sym)  # the split state refused by the analysis: the state as declared
    report = analyse_structure(core, structure)  # Structure -> StructureReport
    if core.output.name != sym.output.name:  # the out-projection was hoisted: say so where the report reads C and D
        report = replace(report, c_form=f"{report.c_form}, then an out-projection to {sym.output.name} (applied "
                                        "after the scan)", d_present="D" in sym.matrices)
    return checked, sym, core, structure, report


def _structure_of(core: SymSpec) -> tuple[SymSpec, Structure]:
    """The core the structure was found on, and the structure."""
    core = unflatten_output(core)  # SymSpec -> SymSpec: delta(o, h*V + b) read as delta(o_0, h) delta(o_1, b)
    core = gather_output_reads(core)  # SymSpec -> SymSpec: delta(b, (e + 1) % V) read as a post y[e] = y_core[f(e)]
    core = canonical_matrices(core)  # SymSpec -> SymSpec: sum(a3, delta(a3, a) * q[a3]) read as q[a]
    try:
        structure = analyse_structure_of(core)  # SymSpec -> Structure
    except SpecErrors as refused:  # e.g. softmax attention whose C holds an out-projection: not the kernelised form
        core, structure = _with_out_projection_hoisted(core, None)
        if structure is None:
            raise refused
    else:
        if structure.family in (Family.DIAGONAL_SCAN, Family.DENSE_SCAN):
            core, structure = _with_out_projection_hoisted(core, structure)
    return core, structure


def _with_out_projection_hoisted(core: SymSpec, structure: Structure | None
                                 ) -> tuple[SymSpec, Structure | None]:
    """An out-projection written into C, applied after the scan instead (ir/out_projection.py), where that lets the
    layer run a chunked algorithm; ``(core, structure)`` unchanged otherwise (``structure`` None: the spec as written
    was refused by the analysis)."""
    for hoisted in out_projection_splits(core):
        try:
            found = analyse_structure_of(hoisted)
        except SpecErrors:
            continue
        if found.family not in (Family.DIAGONAL_SCAN, Family.DENSE_SCAN):
            break
    else:
        return core, structure
    why = (f"{found.family_reason}; C's output projection (the factors of C that read the output index) is applied "
           f"after the scan, as a post: {hoisted.posts[0].tensor.name} = (projection) {hoisted.output.name}"
           f"{' + D u' if 'D' in core.matrices else ''}")
    return hoisted, replace(found, family_reason=why)


def compile_text(text: str, path: str = "<spec>") -> CompileResult:
    spec = parse_spec(text, path)  # text -> Spec
    return _compile(spec)


def compile_spec(path: str | Path) -> CompileResult:
    spec = parse_file(path)
    return _compile(spec)


def _compile(spec: Spec) -> CompileResult:
    with _recursion_is_a_spec_error(spec):
        checked, sym, core, structure, report = _analyse_core(spec)  # core: the view the structure was found on
        stamp = (f"# Generated by dsfc {__version__} from {printable(display_path(spec.path))} "
                 f"(spec sha256 {spec_hash(spec.source)}). Do not edit.")
        plan = plan_module(core, structure, report, stamp)  # -> ModulePlan
        source = emit_torch(plan)  # ModulePlan -> Python source
    return CompileResult(spec, checked, sym, structure, report, plan, source, core)


def write_result(result: CompileResult, out_dir: str | Path) -> Path:
    out = Path(out_dir) / f"{result.module_name}.py"
    write_atomic(out, result.source)
    return out
