"""``py_name``: spec names -> Python identifiers of the generated module.

Spec names are ``[A-Za-z_][A-Za-z_0-9]*'*``. The generated module stores params and dims as ``self.<name>`` and binds
params and lets as locals next to its own (``h0``, ``env``, ``out``, ``m``, ``_B``, ...), so the mapping must give
valid identifiers, leave no spec name on a keyword, a reserved name or an nn.Module member, and never send two spec
names to the same identifier.
"""

from __future__ import annotations

import keyword

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsfc.codegen.plan import _RESERVED, py_name
from dsfc.lang.errors import SpecErrors
from dsfc.pipeline import compile_text

TRICKY = sorted(_RESERVED) + [
    "x", "x_", "x__", "_x", "_x_", "s_x", "x'", "x''", "x_p", "x_p_", "x_pp_", "lambda", "lambda_", "None", "None_",
    "u", "u_", "u__", "h0", "h0_", "out", "out_", "m", "forward", "forward_", "_B", "_B_", "_dtype", "dt_bias",
    "dt_bias_", "training", "W_Q", "A_log", "D",
]

names = st.from_regex(r"\A[A-Za-z_][A-Za-z_0-9]{0,6}'{0,2}\Z") | st.sampled_from(TRICKY)


def test_safe_names_are_kept():
    for name in ("W_Q", "A_log", "dt", "kf", "D", "x", "eta_prev"):
        assert py_name(name) == name


def test_tricky_names_are_identifiers_and_distinct():
    seen = {}
    for name in TRICKY:
        ident = py_name(name)
        assert ident.isidentifier() and not keyword.iskeyword(ident), (name, ident)
        assert ident not in _RESERVED, (name, ident)
        assert seen.setdefault(ident, name) == name, f"{name!r} and {seen[ident]!r} both become {ident!r}"


def test_no_spec_name_shadows_an_nn_module_member():
    for member in dir(torch.nn.Module):
        if not member.startswith("_"):
            assert py_name(member) != member, member


@settings(max_examples=300, deadline=None)
@given(a=names, b=names)
def test_py_name_is_injective(a, b):
    ident = py_name(a)
    assert ident.isidentifier() and not keyword.iskeyword(ident)
    # the only collisions are between a primed name and a plain one that both start with '_' (_x' and _x_p)
    if a != b and not (a.startswith("_") and b.startswith("_")):
        assert py_name(a) != py_name(b)


def test_the_contrived_collision_is_a_spec_error():
    text = """
dim d = 3
input u[d]
state h[c: d]
param _x'[d] ~ normal(0, 1)
param _x_p[d] ~ normal(0, 1)
A[c, c2] = delta(c, c2) * sigmoid(_x'[c] + _x_p[c])
B[c, k] = delta(c, k)
C[o, c] = delta(o, c)
"""
    assert py_name("_x'") == py_name("_x_p")
    with pytest.raises(SpecErrors) as info:
        compile_text(text, "x.dsf")
    err = info.value.errors[0]
    assert "would both be '_x_p_'" in str(err) and err.span.line == 6


def test_every_module_level_name_of_a_generated_module_is_reserved():
    """The generated methods call the module's imports (expm1, empty_output, check_finite_input, ...) where spec
    names are locals: a let named expm1 was read before it was bound (UnboundLocalError). Every name a generated
    module binds at module level (the catalog's modules and one per family of helpers) must be reserved."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "generated"
    missing = set()
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            bound = []
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                bound = [(a.asname or a.name).split(".")[0] for a in node.names]
            elif isinstance(node, ast.FunctionDef):
                bound = [node.name]
            elif isinstance(node, ast.Assign):
                bound = [x.id for t in node.targets for x in ast.walk(t) if isinstance(x, ast.Name)]
            elif isinstance(node, ast.Try):  # optional imports (triton)
                bound = [(a.asname or a.name).split(".")[0] for x in ast.walk(node)
                         if isinstance(x, (ast.Import, ast.ImportFrom)) for a in x.names]
            missing |= {name for name in bound if not name.startswith("_") and name not in _RESERVED}
    assert not missing, sorted(missing)
