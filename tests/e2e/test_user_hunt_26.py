"""Input hunt 26: a new user reading README.md and trying what it documents, then what it does not, on specs and
inputs nobody tested.

Tested (probed; the ones that found something are tests below): a catalog spec broken as a user breaks it (a typo'd
keyword, a missing dim, a param / let / input with the wrong number of indices, A / B / C with the wrong number of
index names, unicode minus, a full-width parenthesis, a no-break space, a Greek letter in a name, a ';' at the end of
a line, tabs, CRLF, an empty file, a file of comments, a dim of 0, -3, 2.5, 4 - 4, 16 / 3, 10**9, a dim defined by
itself, a literal subscript out of range (64, -1), ``k + 1`` / ``k - 1`` / ``k + 0.5`` subscripts, an unknown or
misspelt function, an initialiser with a wrong argument count, a negative std, ``uniform(1, -1)``, ``0 / 0`` and
``sqrt(-1)`` initialisers, a model named ``class`` / ``6S`` / ``Module``, no model line): every one a positioned error
or a working module; every CLI subcommand with edge arguments (``bench -T 0 / 1 / -5``, ``--batch 0``,
``--repeats 0``, ``--dims d=0``, a dim given twice, ``--memory`` at T = 4; ``plot -T 0 / 1 / 100000``, ``--dims
n=1000000000``, softmax attention; ``check --dims n=1000000000``; ``compile -o`` a file, a missing nested directory);
the generated modules (17 of the catalog at dims of 2, float64) with u of rank 2 / 4, a Python list, a numpy array,
``step`` with u_t of rank 1 / 3, an integer, fp16, list, int or batch-1 state, ``output_final_state=1``, T = 0 with a
leaf u and with a state that requires grad, deepcopy + pickle, a ``.half()`` module fed float64, bf16 input; the
constructors with ``d=True / 2.0 / '4' / None / -1 / 4.5 / torch.tensor(4) / np.int64(4)``.

Found and fixed (each test failed before its fix, except those marked as pinning what held or what a fix keeps):

- A constructor at dims whose parameters do not fit in memory (``S6(n=10**9)``, a typo'd extra zero) raised torch's
  "DefaultCPUAllocator: can't allocate memory: you tried to allocate 256000000000 bytes", naming no parameter, no dims
  (the CLI's ``check`` / ``plot`` / ``bench`` already refused such dims by name). And where the parameters fit but the
  spec's initialisers' temporaries did not (``S6(d=1, n=10**8, r=1)`` with 1.4 GiB to spare), the allocator's error
  became "S6: the spec's parameter initialisers fail at ...", a ValueError blaming the spec. Both are now a
  ``dsfc.runtime.checks.ParameterMemoryError`` (a MemoryError, and a RuntimeError as the error it replaces) naming
  the parameter that did not fit with its shape and size, the dims, the parameters' total and the way out
  (``new_parameters.py.jinja``, ``reset_parameters.py.jinja``; ``out_of_memory`` moved from the CLI to the runtime).
- A dim beyond what a tensor holds (``S6(n=10**30)``) was torch's TypeError "Overflow when unpacking long long" with a
  C++ stack, and a parameter whose byte size overflows 64 bits (``S6(n=2**62)``, ``S6(d=2**40, n=2**40)`` also on
  meta, a derived dim ``E = e * d`` past 2^63) torch's "Storage size calculation overflowed": a dim above 2^62 is
  now refused by ``check_dim_arguments`` in the compiler's words, and such a parameter is a ValueError naming it.
- A '"' inside the model description (``model S6 "has \\" inside"``, quoted words) was "unexpected 'inside' after the
  end of the statement" with the hint listing the statement keywords: the hint now says the description ended at its
  second '"' and has no escape (docs/language.md, "Strings"). A description in curly (U+201C / U+201D, a word
  processor's), full-width or single quotes had the hint "names are ASCII letters, digits and '_'": the curly and
  full-width ones join the lookalike table ("is not '\"'"), and a single quote says descriptions take double quotes.
- A dim written as an integer literal above 2^53 that float64 rounds (``dim n = 9007199254740993``, or ``--dims
  n=4611686018427387905``) was "dim 'n' must be a positive integer, got 9.0072e+15": the compiler compared the int
  with its float; an int is now taken as exact (the second is "too large ... at most 2^62", as it should be).

Pinned (held): S6 and RG-LRU at T = 20000 with inputs scaled by 30 (saturated gates, S6 decays below 1e-100 per step,
RG-LRU's recurrence gate closed so that ``a`` rounds to 1), float64, against loops written here from the equations:
within 1e-11 / 1e-13 at every row and for the final state. The float64 reference (``backend="reference"``) differs
from RG-LRU's module there by 3e-8 of the output scale: it evaluates ``sqrt(1 - a^2)`` as written, the module as
``sqrt(-expm1(2 log a))`` (documented in README, "No cancellation in 1 - P"); the module is the accurate one. The
13 other catalog modules probed (dims 2, float64; FoX and softmax attention have no reference backend) matched the
reference at T = 20000, inputs x30, within 5.2e-13 per row.

Not done: a spec dim of 10**9 compiles (a default the user may mean; the module names it if it does not fit); the
stability prover was probed with 48 scalar decays (none claimed a bound the expression breaks; some are weaker than
the truth, e.g. ``exp(x - softplus(x))``, a sigmoid, is "(0, inf)"); this branch was not run on a GPU (the CUDA
error it converts was seen with main's code on an H200).
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_limited(body: str, spare_gib: float) -> dict:
    """Run ``body`` (which sets ``out``, a dict) in a fresh interpreter whose address space is capped at what it
    holds after importing torch plus ``spare_gib``: an allocation beyond that fails as it would on a small machine,
    whatever this one has (a 256 GB request could succeed on a large host with overcommit)."""
    script = textwrap.dedent("""\
        import json, resource, sys
        import torch
        def _vm():
            for line in open("/proc/self/status"):
                if line.startswith("VmSize"):
                    return int(line.split()[1]) * 1024
        def attempt(make):
            try:
                make()
                return {"ok": True}
            except BaseException as exc:
                return {"type": type(exc).__name__, "msg": str(exc), "memory": isinstance(exc, MemoryError),
                        "runtime": isinstance(exc, RuntimeError)}
        """) + f"import generated.s6, generated.softmax_attention, generated.mamba_block\n" + textwrap.dedent(f"""\
        resource.setrlimit(resource.RLIMIT_AS, (_vm() + int({spare_gib} * 2**30), resource.RLIM_INFINITY))
        out = {{}}
        """) + textwrap.dedent(body) + "print(json.dumps(out))\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_parameters_that_do_not_fit_are_named_with_their_shape_and_the_dims():
    out = _run_limited("""
        out["s6"] = attempt(lambda: generated.s6.S6(n=10**9))
        out["mamba"] = attempt(lambda: generated.mamba_block.MambaBlock(d=4, n=10**9))
        out["softmax"] = attempt(lambda: generated.softmax_attention.SoftmaxAttention(d=10**9))
        out["fits"] = attempt(lambda: generated.s6.S6(d=4, n=2, r=2))
    """, spare_gib=1.0)
    assert out["fits"] == {"ok": True}
    s6 = out["s6"]
    assert s6["type"] == "ParameterMemoryError" and s6["memory"] and s6["runtime"], s6
    # was torch's "DefaultCPUAllocator: can't allocate memory: you tried to allocate 256000000000 bytes", no name
    assert s6["msg"].startswith("S6: out of memory at d=64, n=1000000000, r=4: cannot allocate parameter 'A_log' "
                                "of shape (64, 1000000000) (238 GiB in float32)"), s6["msg"]
    assert "use smaller dims" in s6["msg"]
    # 64 * 10**9 * 3 (A_log, W_B, W_C) + 64 * (4 + 4 + 3) numbers
    assert f"the parameters hold {64 * 3 * 10**9 + 64 * 11:.3g} numbers" in s6["msg"]
    mamba = out["mamba"]  # derived dims (E = e * d) in the shapes
    assert mamba["type"] == "ParameterMemoryError" and "n=1000000000" in mamba["msg"], mamba
    # the first parameter the spec declares with n (W_B[n, E], E = e * d = 8)
    assert "cannot allocate parameter 'W_B' of shape (1000000000, 8) (29.8 GiB in float32)" in mamba["msg"], mamba
    softmax = out["softmax"]  # the quadratic family's template
    assert softmax["type"] == "ParameterMemoryError" and "d=1000000000" in softmax["msg"], softmax


def test_initialisers_out_of_memory_do_not_blame_the_spec():
    # d=1, n=10**8, r=1: 3 * 10**8 + 4 fp32 numbers = 1.12 GiB of parameters fit in 1.4 GiB; A_log's initialiser
    # log(1 + j) then needs 0.37 GiB temporaries, which do not
    out = _run_limited("""
        out["init"] = attempt(lambda: generated.s6.S6(d=1, n=10**8, r=1))
    """, spare_gib=1.4)
    init = out["init"]
    assert init["type"] == "ParameterMemoryError" and init["runtime"], init
    # was ValueError "S6: the spec's parameter initialisers fail at d=1, n=100000000, r=1: ... can't allocate memory"
    assert "initialisers fail" not in init["msg"]
    assert init["msg"].startswith("S6: out of memory at d=1, n=100000000, r=1: cannot initialise the parameters"), init


@pytest.mark.parametrize("make, message", [
    # was torch's TypeError "empty(): argument 'size' failed to unpack ... Overflow when unpacking long long" and a
    # C++ stack; the compiler refuses such a dim in a spec with these words
    (lambda: _s6()(n=10**30), r"^S6: dim n is too large: 1e\+30 \(a tensor size is at most 2\^62\)$"),
    # was torch's RuntimeError "Storage size calculation overflowed with sizes=[64, 4611686018427387904]"
    (lambda: _s6()(n=2**62), r"^S6: at d=64, n=4611686018427387904, r=4: parameter 'A_log' of shape "
                             r"\(64, 4611686018427387904\) \(1\.1e\+12 GiB in float32\) is too large for a tensor "
                             r"\(its size in bytes overflows 64 bits\); use smaller dims$"),
    (lambda: _s6()(d=2**40, n=2**40, device="meta"), r"parameter 'A_log' of shape \(1099511627776, 1099511627776\)"),
    # a derived dim (E = e * d = 2^64) beyond what torch can unpack, each free dim within 2^62
    (lambda: _mamba()(e=2**62, d=4), r"^MambaBlock: at d=4, e=4611686018427387904, .*parameter 'W_x' of shape "
                                     r"\(18446744073709551616, 4\) .* is too large for a tensor"),
    (lambda: _softmax()(d=2**62), r"^SoftmaxAttention: at d=4611686018427387904, .*parameter 'W_Q'"),
])
def test_parameters_too_large_for_a_tensor_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def _s6():
    from generated.s6 import S6
    return S6


def _mamba():
    from generated.mamba_block import MambaBlock
    return MambaBlock


def _softmax():
    from generated.softmax_attention import SoftmaxAttention
    return SoftmaxAttention


def test_a_meta_module_at_large_dims_still_builds():
    """What the checks keep: 2^40 parameters on the meta device (shapes only) are not refused."""
    model = _s6()(d=2**10, n=2**30, device="meta")
    assert model.A_log.shape == (2**10, 2**30) and model.A_log.is_meta


# ---- a long sequence with strong decays, float64, against loops written here from the specs' equations ----

T_LONG = 20000


def _long_input(width: int) -> "torch.Tensor":
    import torch

    gen = torch.Generator().manual_seed(26)
    # scale 30: gates and step sizes saturate (decays from ~1 - 1e-17 to ~e^-400 per step)
    return 30 * torch.randn(1, T_LONG, width, generator=gen, dtype=torch.float64)


def test_s6_over_a_long_sequence_with_strong_decays_matches_a_loop():
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = _s6()(d=3, n=2, r=2).double()
    u = _long_input(3)
    with torch.no_grad():
        y, h_T = model(u, output_final_state=True)
        p = {k: v.detach() for k, v in model.named_parameters()}
        x = u[0]
        dt = F.softplus(x @ p["W_xdt"].T @ p["W_dt"].T + p["b_dt"])  # [T, d]
        decay = torch.exp(-dt[:, :, None] * torch.exp(p["A_log"]))  # [T, d, n]
        b, cq = x @ p["W_B"].T, x @ p["W_C"].T  # [T, n]
        h, rows = torch.zeros(3, 2, dtype=torch.float64), []
        for t in range(T_LONG):
            h = decay[t] * h + (dt[t] * x[t])[:, None] * b[t][None, :]
            rows.append(h @ cq[t] + p["D"] * x[t])
    want = torch.stack(rows)
    assert bool(torch.isfinite(y).all()) and float(decay.min()) < 1e-100  # strong decays did occur
    err = (y[0] - want).abs().amax(-1) / want.abs().amax(-1).clamp_min(1e-300)
    assert float(err.max()) < 1e-11, float(err.max())
    assert float((h_T[0] - h).abs().max() / h.abs().max()) < 1e-12


def test_rg_lru_over_a_long_sequence_with_closed_gates_matches_an_expm1_loop():
    """RG-LRU's sqrt(1 - a^2) with a = exp(-8 r softplus(Lambda)) and the gate r ~ 1e-17 (a rounds to 1): the module
    writes it -expm1(2 log a), exactly as this loop does; the float64 reference evaluates the spec as written
    (README, "No cancellation in 1 - P"), so it loses the input at such steps (here 3e-8 of the output scale off):
    the module is compared with this loop, not with it."""
    import torch
    import torch.nn.functional as F

    from generated.rg_lru import RGLRU

    torch.manual_seed(0)
    model = RGLRU(W=2, nh=2).double()  # block width 1: r[c] = sigmoid(x[c] W_a[c, 0, 0] + b_a[c, 0])
    u = _long_input(2)
    with torch.no_grad():
        model.Lambda.copy_(torch.tensor([5.0, -3.0]))  # a strong decay (a >= e^-40) on one channel, weak on the other
        y, h_T = model(u, output_final_state=True)
        p = {k: v.detach() for k, v in model.named_parameters()}
        x = u[0]
        r = torch.sigmoid(x * p["W_a"][:, 0, 0] + p["b_a"][:, 0])
        ig = torch.sigmoid(x * p["W_i"][:, 0, 0] + p["b_i"][:, 0])
        log_a = -8 * r * F.softplus(p["Lambda"])
        a, gain = torch.exp(log_a), torch.sqrt(-torch.expm1(2 * log_a))
        h, rows = torch.zeros(2, dtype=torch.float64), []
        for t in range(T_LONG):
            h = a[t] * h + gain[t] * ig[t] * x[t]
            rows.append(h)
    want = torch.stack(rows)
    assert float(r.min()) < 1e-16 and float(a.min()) < 1e-15  # closed gates (a rounds to 1) and strong decays
    assert bool(torch.isfinite(y).all())
    assert float((y[0] - want).abs().max() / want.abs().max()) < 1e-13
    assert float((h_T[0] - h).abs().max() / h.abs().max()) < 1e-13


# ---- the spec language ----

@pytest.mark.parametrize("model_line, column, token", [
    ('model S6 "has \\" inside"', 18, "inside"),  # a backslash escape, as in Python or C
    ('model S6 "a "quoted" word"', 14, "quoted"),
    ('model S6 "has """ inside"', 16, '""'),
])
def test_a_quote_inside_the_description_is_named(tmp_path, model_line, column, token):
    """It was "unexpected 'inside' after the end of the statement" with the hint listing the statement keywords."""
    from dsfc.lang.errors import SpecErrors
    from dsfc.lang.parse import parse_spec

    with pytest.raises(SpecErrors) as info:
        parse_spec(model_line + "\ninput u[d]\n", "m.dsf")
    err = info.value.errors[0]
    assert (err.span.line, err.span.column) == (1, column) and repr(token) in err.message
    assert "cannot contain '\"' (there is no escape)" in err.hint


def test_extra_words_after_a_description_keep_the_statement_hint():
    """What the hint keeps: a word after a closed description (and a quote in a comment after it) is not a quote
    inside the description."""
    from dsfc.lang.errors import SpecErrors
    from dsfc.lang.parse import parse_spec

    with pytest.raises(SpecErrors) as info:
        parse_spec('model S6 "ok" extra  # a "quoted" comment\n', "m.dsf")
    assert "each statement starts with a keyword" in info.value.errors[0].hint


def test_a_cuda_out_of_memory_is_named_too():
    """On a GPU the allocator raises torch.OutOfMemoryError ("CUDA out of memory. Tried to allocate 238.42 GiB ...",
    seen on an H200 with main's S6(n=10**9, device="cuda")); the constructor's helper names the parameter for it as
    for the CPU allocator's error. No GPU here: the helper is given the exception torch raises."""
    import torch

    from dsfc.runtime.checks import ParameterMemoryError, parameter_allocation_error

    exc = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 238.42 GiB. GPU 0 has a total capacity of "
                                 "139.80 GiB of which 139.29 GiB is free.")
    module = torch.nn.Module()
    err = parameter_allocation_error("S6", exc, module, {"A_log": (64, 10**9), "D": (64,)}, None, "d=64, n=1000000000")
    assert isinstance(err, ParameterMemoryError)
    assert str(err).startswith("S6: out of memory at d=64, n=1000000000: cannot allocate parameter 'A_log' of shape "
                               "(64, 1000000000) (238 GiB in float32)"), str(err)
    other = RuntimeError("some other failure")  # not an allocation failure: given back unchanged
    assert parameter_allocation_error("S6", other, module, {"D": (64,)}, None, "d=64") is other


@pytest.mark.parametrize("model_line, hint", [
    # pasted from a word processor: the hint was "names are ASCII letters, digits and '_'; comments start with '#'"
    ("model S6 \u201ccurly\u201d", "'\u201c' (U+201C) is not '\"': type the ASCII '\"'"),
    ("model S6 \uff02full width\uff02", "(U+FF02) is not '\"'"),
    ("model S6 'single quoted'", "a description is written in double quotes (model S6 \"...\")"),
    ("model S6 \u2018single curly\u2019", "a description is written in double quotes"),
])
def test_a_description_in_other_quotes_is_named(model_line, hint):
    from dsfc.lang.errors import SpecErrors
    from dsfc.lang.parse import parse_spec

    with pytest.raises(SpecErrors) as info:
        parse_spec(model_line + "\ninput u[d]\n", "m.dsf")
    err = info.value.errors[0]
    assert (err.span.line, err.span.column) == (1, 10) and err.message.startswith("unexpected character")
    assert hint in err.hint, err.hint


def test_curly_quotes_inside_a_description_still_parse():
    """What the lookalike table keeps: inside the (straight-quoted) description any character is text."""
    from dsfc.lang.parse import parse_spec

    spec = parse_spec('model S6 "Mamba \u2014 \u201cselective\u201d, it\'s \u2018S6\u2019"\n'
                      "dim d = 2\ninput u[d]\nstate h[c: d]\noutput y[d]\nA[c, c2] = 0.5 * delta(c, c2)\n"
                      "B[c, m] = delta(c, m)\nC[o, c] = delta(o, c)\n", "m.dsf")
    from dsfc.lang.ast import ModelDecl

    model = next(st for st in spec.statements if isinstance(st, ModelDecl))
    assert "\u201cselective\u201d" in model.description and "it's" in model.description


@pytest.mark.parametrize("value, error", [
    ("2**53 + 1", None),  # held: the power and the sum are exact
    ("9007199254740993", None),  # an integer literal float64 rounds (to 2**53): was "must be a positive integer"
    ("4611686018427387905", r"dim 'n' is too large: 4\.61169e\+18 \(a tensor size is at most 2\^62\)"),
    ("2.5", r"dim 'n' must be a positive integer, got 2\.5"),
])
def test_a_dim_above_2_to_the_53_is_an_integer(value, error):
    from dsfc.lang.errors import SpecErrors
    from dsfc.pipeline import compile_text

    spec = (f"model M\ndim d = 2\ndim n = {value}\ninput u[d]\nstate h[c: d]\noutput y[d]\nparam w[n] = 1\n"
            "A[c, c2] = 0.5 * delta(c, c2) * w[0]\nB[c, m] = delta(c, m)\nC[o, c] = delta(o, c)\n")
    if error is None:
        result = compile_text(spec, "m.dsf")
        assert result.spec is not None
    else:
        with pytest.raises(SpecErrors, match=error):
            compile_text(spec, "m.dsf")
