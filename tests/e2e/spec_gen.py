"""Hypothesis strategies that write random, well-formed DSF specs as text, from building blocks.

Four generators:

* ``diagonal_specs``: a state of 1-3 axes, A = product of deltas times a decay over a random subset of the axes
  (S6-like exp(-softplus(z) exp(a)), sigmoid(z), exp(-c relu(z)), constants, param-only decays, identity), B u in an
  elementwise / per-channel outer / dense form (optionally sharing the decay's let: A/B coupling), C a per-channel
  contraction or a dense readout, optional D, optional pre-update readout; optionally a decay that uses an index as a
  value, a running quantity (cumsum / scan / prev / window) gating B, a driven input that is a let ('drive': a
  projection, a chain of lets, a function of u itself or a shifted read) and post-ops after the core ('post', maybe
  reading a let chain at a shifted index). Decays also come as users write them (``_let_chain_decay``): chains of
  elementwise lets z -> f = F(z) -> exp(-softplus(lam) f) with F a random safe function (``NONNEG``), static lets
  (lo = -softplus(lam)), scalar params and scalar lets, and lets read at (c + 1) % D or D - 1 - c; a let is
  sometimes read by A, B and C at once (``shared``: A * (0.5 + 0.5 g), B * (1 - g), C * g). The Triton path inlines
  such lets into its kernels (triton_plan._inline_lets), so these shapes are what its property tests must see.
* ``outer_specs``: multi-head linear-attention forms, state S[h, a, b] (or S[a, b]) with q/k/v lets and feature maps
  (elu+1, silu, tanh, sigmoid, relu, identity), optional L2-normalised keys, a decay that is absent, per head, per
  key or per value channel, optional beta gate, output axes possibly permuted relative to the state; state axes in
  any order; keys and queries shared by groups of heads (k[h // R, a]), static or absent; the normalised form with a
  running normaliser (cumsum / prev); one in five reads the state through an out-projection written into C.
* ``dense_specs``: A with coupled state axes: a dense (time-invariant) param matrix, a diagonal plus dense mix,
  a Kronecker product of two matrices, a constant or Toeplitz matrix written with index values, or DeltaNet-like
  (gated) identity-minus-rank-one blocks.
* ``ssd_specs``: Mamba-2 SSD-like, with a two-axis input u[h, p] read through flat indices (u[m // P, m % P]), B and
  C shared by groups of heads (Bm[h // R, j]) and a per-head decay.

Params and lets sometimes get names that are legal in a spec but collide with something in Python or in the
generated module (``RISKY_NAMES``: keywords, ``forward``, ``to``, ``h0``, ``_B``, ...), and sums sometimes read the
input through computed subscripts (``u[(m + 1) % M]``). Each strategy returns a ``GenSpec``: the text plus what the
generator intended (for labelling and for the assertions that only hold by construction, e.g. "a dense generator
gives the dense family").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

FMAPS = {  # feature maps / gates, applied to a pre-activation X
    "elu1": "elu({X}) + 1",
    "silu": "silu({X})",
    "tanh": "tanh({X})",
    "sigmoid": "sigmoid({X})",
    "relu": "relu({X})",
    "id": "{X}",
}


@dataclass
class GenSpec:
    text: str
    kind: str  # "diagonal" | "outer" | "dense" | "ssd"
    labels: dict = field(default_factory=dict)  # generator choices, for hypothesis.event and failure notes

    def __str__(self) -> str:
        return self.text


def _idx(names) -> str:
    return ", ".join(names)


def _sub(name: str, names) -> str:
    """name[i, j] or the bare name for a scalar."""
    return f"{name}[{_idx(names)}]" if names else name


def _decl_axes(axes) -> str:
    """[c: M, j: N] or '' for a scalar."""
    return "[" + ", ".join(f"{n}: {d}" for n, d in axes) + "]" if axes else ""


def _param_shape(dims) -> str:
    return "[" + ", ".join(dims) + "]" if dims else ""


# Names that are legal in a spec but collide with something in Python or in the generated module (keywords, torch
# aliases, locals and arguments of the generated methods, nn.Module members). Params and lets sometimes get one.
RISKY_NAMES = [
    "lambda", "None", "def", "torch", "F", "nn", "math", "self", "axis", "step", "forward", "to", "training",
    "backend", "dsf_matrices", "kernel_form", "parameters", "state_dict", "eval", "type", "float", "h0", "env",
    "out", "running0", "running_final", "factory", "shape", "states", "read", "final", "bu", "q", "k", "v",
    "log_decay", "blocks", "chunks", "t0", "t1", "x", "ys", "core", "driven", "_dev", "_B", "_T", "_dtype", "_a",
    "s_a", "u_", "dt_bias_", "kernel_matrix", "diagonal_scan", "chunked_outer_scan", "BACKENDS",
]


class _Builder:
    """Collects dims, params and lets with unique names; renders the spec."""

    def __init__(self, model: str, draw=None):
        self.model = model
        self.draw = draw
        self.used: set[str] = set()
        self.dims: dict[str, int | str] = {}  # value or an expression over earlier dims
        self.lines: list[str] = []
        self.params: list[str] = []
        self.lets: list[str] = []
        self.matrices: list[str] = []
        self.extra: list[str] = []
        self._n = 0

    def fresh(self, stem: str) -> str:
        self._n += 1
        if self.draw is not None and self.draw(st.integers(0, 3)) == 0:
            free = [n for n in RISKY_NAMES if n not in self.used]
            if free:
                name = self.draw(st.sampled_from(free))
                self.used.add(name)
                return name
        return f"{stem}{self._n}"

    def dim(self, name: str, value: int | str) -> str:
        self.dims[name] = value
        return name

    def param(self, stem: str, dims, init: str) -> str:
        name = self.fresh(stem)
        self.params.append(f"param {name}{_param_shape(dims)} {init}")
        return name

    def let(self, stem: str, axes, expr: str) -> str:
        name = self.fresh(stem)
        self.lets.append(f"let {name}{_decl_axes(axes)} = {expr}")
        return name

    def render(self, io: list[str]) -> str:
        out = [f'model {self.model} "generated by tests/e2e/spec_gen.py"', ""]
        out += [f"dim {k} = {v}" for k, v in self.dims.items()]
        out += [""] + io + [""] + self.params + self.lets + [""] + self.matrices + self.extra
        return "\n".join(out) + "\n"


def _projection(b: _Builder, axes, m: str = "m", input_name: str = "u", bias: bool = False) -> str:
    """sum(m, W[axes..., m] * u[m]) (+ bias[axes]) over the named axes: a linear function of the input."""
    names = [n for n, _ in axes]
    if getattr(b, "flat_input", False):  # input u[h: H, p: P]: one sum over the flat index m = h * P + p
        w = b.param("W", [d for _, d in axes] + ["H * P"], "~ normal(0, 0.5)")
        x = f"sum({m}: H * P, {w}[{_idx(names + [m])}] * u[{m} // P, {m} % P])"
        if bias:
            bb = b.param("bias", [d for _, d in axes], "~ uniform(-1, 1)")
            x = f"{x} + {_sub(bb, names)}"
        return x
    w = b.param("W", [d for _, d in axes] + ["M"], "~ normal(0, 0.7)")
    sub = m
    if input_name == "u" and b.draw is not None:  # computed subscripts: a gather instead of a view
        sub = b.draw(st.sampled_from([m, m, m, f"({m} + 1) % M", f"M - 1 - {m}"]))
    x = f"sum({m}, {w}[{_idx(names + [m])}] * {input_name}[{sub}])"
    if bias:
        bb = b.param("bias", [d for _, d in axes], "~ uniform(-1, 1)")
        x = f"{x} + {_sub(bb, names)}"
    return x


@st.composite
def _decay(draw, b: _Builder, axes, allow_identity=True):
    """A decay expression over ``axes`` (a list of (name, dim)); returns (expr, let_name or None, kind). Sometimes the
    decay is a let of its own that A reads (as GLA's alpha, RWKV-6's w, mLSTM's f): the log-space scans must look
    through it rather than take log(let), which underflows (kind gets a "+let" suffix)."""
    expr, z, kind = draw(_decay_expr(b, axes, allow_identity))
    if kind in ("identity", "const") or not draw(st.booleans()):
        return expr, z, kind
    return _sub(b.let("dec", axes, expr), [n for n, _ in axes]), z, kind + "+let"


@st.composite
def _decay_expr(draw, b: _Builder, axes, allow_identity=True):
    kinds = ["s6", "sigmoid", "relu", "relu_param", "softplus", "one_minus_sigmoid", "const", "param", "pow",
             "logsigmoid", "clamp", "static_let", "chain", "static_chain", "scalar", "func"]
    if axes:
        kinds += ["index", "shifted"]  # index: S4D-real-like, the decay rate grows with an index used as a value
    if allow_identity:
        kinds.append("identity")
    kind = draw(st.sampled_from(kinds))
    names = [n for n, _ in axes]
    if kind == "identity":
        return "1", None, kind
    if kind == "const":
        return draw(st.sampled_from(["0.5", "0.9", "0.25 + 0.5"])), None, kind
    if kind == "param":
        p = b.param("g", [d for _, d in axes], "~ normal(0, 1)")
        return f"sigmoid({_sub(p, names)})", None, kind
    if kind == "static_let":  # a let over params only: the same value at every step
        p = b.param("g", [d for _, d in axes], "~ normal(0, 1)")
        g = b.let("gs", axes, f"exp(-softplus({_sub(p, names)}))")
        return _sub(g, names), None, kind
    if kind in ("chain", "static_chain", "scalar", "func", "shifted"):
        return draw(_let_chain_decay(b, axes, kind))
    z = b.let("z", axes, _projection(b, axes, bias=draw(st.booleans())))
    Z = _sub(z, names)
    if kind == "s6":
        a = b.param("A_log", [d for _, d in axes], "~ normal(0, 0.5)")
        return f"exp(-softplus({Z}) * exp({_sub(a, names)}))", z, kind
    if kind == "sigmoid":
        return f"sigmoid({Z})", z, kind
    if kind == "relu":
        c = draw(st.sampled_from(["0.5", "2"]))
        return f"exp(-{c} * relu({Z}))", z, kind
    if kind == "softplus":
        return f"exp(-softplus({Z}))", z, kind
    if kind == "relu_param":  # qLSTM-S6 form: an eigenvalue of exactly 1 wherever the param is <= 0
        p = b.param("alpha", [d for _, d in axes], "~ normal(0, 1)")
        return f"exp(-relu({_sub(p, names)}) * softplus({Z}))", z, kind
    if kind == "pow":  # a fractional power, as GLA's sigmoid(.)^(1/16)
        return f"sigmoid({Z}) ^ 0.25", z, kind
    if kind == "logsigmoid":
        return f"exp(logsigmoid({Z}) / 4)", z, kind
    if kind == "clamp":
        return f"min(sigmoid({Z}), 0.9)", z, kind
    if kind == "index":
        return f"exp(-(0.5 + {names[-1]}) * sigmoid({Z}))", z, kind
    return f"1 - sigmoid({Z})", z, kind


# Elementwise functions of a pre-activation z that are >= 0 and finite with finite derivatives everywhere (also for
# |z| ~ 300, fp32): exp(-softplus(lam) * F(z)) is then a decay in (0, 1]. Every function of check.FUNCTIONS that
# can be made safe appears (delta only in A's deltas; log only of something >= 1).
NONNEG = [
    "sigmoid({X})", "softplus({X})", "relu({X})", "abs({X})", "tanh({X}) ^ 2", "sin({X}) ^ 2", "(1 + cos({X})) / 2",
    "elu({X}) + 1", "gelu({X}) + 0.2", "silu({X}) + 0.3", "exp(logsigmoid({X}))", "sqrt(1 + {X} ^ 2) - 1",
    "max({X}, 0)", "min(softplus({X}), 3)", "pow(sigmoid({X}), 2)", "log(1 + sigmoid({X}))", "exp(-abs({X}))",
]


def _shifted(draw, axes) -> list[str]:
    """The subscripts of a let over ``axes`` read at a shifted index: one axis n becomes (n + 1) % D, D - 1 - n or
    (n + D - 1) % D (a gather / flip of the let along that axis), the others stay."""
    names = [n for n, _ in axes]
    k = draw(st.integers(0, len(axes) - 1))
    n, d = axes[k]
    names[k] = draw(st.sampled_from([f"({n} + 1) % {d}", f"{d} - 1 - {n}", f"({n} + {d} - 1) % {d}"]))
    return names


@st.composite
def _let_chain_decay(draw, b: _Builder, axes, kind):
    """Decays written as users write them, through chains of elementwise lets (returns expr, z let, kind):
    chain:        z = sum(..) + bias;  f = F(z);  exp(-softplus(lam) * f)      (F from NONNEG, maybe a let more)
    static_chain: lo = -softplus(lam) (params only, a static let);  exp(lo * F(z))
    scalar:       a scalar param and a scalar let, s = sigmoid(p) or a scalar projection, times a per-axis gate
    func:         a random NONNEG function of z, inline in A
    shifted:      the gate let read at (c + 1) % D (or D - 1 - c): the decay of entry c reads another entry's let."""
    names = [n for n, _ in axes]
    dims = [d for _, d in axes]
    fn = draw(st.sampled_from(NONNEG))
    z = b.let("z", axes, _projection(b, axes, bias=draw(st.booleans())))
    Z = _sub(z, names)
    if kind == "scalar":
        if draw(st.booleans()):
            sp_ = b.param("s", [], "~ normal(0, 1)")
            s = b.let("sc", [], f"sigmoid({sp_})")  # static scalar let
        else:
            s = b.let("sc", [], f"sigmoid({_projection(b, [])})")  # time-varying scalar let
        return f"{s} * sigmoid({Z})", z, kind
    if kind == "shifted":
        f = b.let("f", axes, fn.format(X=Z))
        lam = b.param("lam", dims, "~ normal(0, 1)")
        return f"exp(-softplus({_sub(lam, names)}) * {_sub(f, _shifted(draw, axes))})", z, kind
    if kind == "func":
        return f"exp(-{fn.format(X=Z)} / 2)", z, kind
    f = b.let("f", axes, fn.format(X=Z))
    F = _sub(f, names)
    if draw(st.booleans()):  # one more link: g = f * 0.5 + 0.25 * f ^ 2 (>= 0)
        F = _sub(b.let("g", axes, f"{F} * 0.5 + 0.25 * {F} ^ 2"), names)
    lam = b.param("lam", dims, "~ normal(0, 1)")
    if kind == "static_chain":
        lo = b.let("lo", axes, f"-softplus({_sub(lam, names)})")
        return f"exp({_sub(lo, names)} * {F})", z, kind
    return f"exp(-softplus({_sub(lam, names)}) * {F})", z, kind


def _subset(draw, axes, min_size=0):
    keep = [a for a in axes if draw(st.booleans())]
    if len(keep) < min_size:
        keep = list(axes[:min_size])
    return keep


@st.composite
def _running_gate(draw, b: _Builder, axes):
    """A running quantity over ``axes`` used as a gate (a factor of B u); returns (expr, kind)."""
    kind = draw(st.sampled_from(["cumsum", "scan", "prev", "window"]))
    names = [n for n, _ in axes]
    if kind == "cumsum":
        r = b.let("run", axes, f"cumsum(sigmoid({_projection(b, axes)}))")
    elif kind == "scan":
        r = b.let("run", axes, f"scan(sigmoid({_projection(b, axes)}), {_projection(b, axes)})")
    elif kind == "prev":
        r = b.let("run", axes, f"prev(tanh({_projection(b, axes)}))")
    else:  # a causal conv of width 3 over a projection of the input
        x = b.let("xw", axes, _projection(b, axes))
        xs = b.let("win", axes + [("w", "3")], f"window({_sub(x, names)})")
        wc = b.param("W_conv", [d for _, d in axes] + ["3"], "~ normal(0, 0.7)")
        r = b.let("conv", axes, f"silu(sum(w, {wc}[{_idx(names + ['w'])}] * {xs}[{_idx(names + ['w'])}]))")
    return _sub(r, names), kind


def _output_gate(draw, b: _Builder, labels, gate_axes, out_names) -> str:
    """Sometimes (1 in 3) a gate on the outputs written into C (Mamba-2's silu(z), fla's output gates), over the value
    axis alone or with the head axis: OuterSplit.gate. Returns the C factor (" * og[o, e]") or ""."""
    if draw(st.integers(0, 2)) != 0:
        return ""
    k = draw(st.integers(0, len(gate_axes) - 1))  # gate over gate_axes[k:] (the last is the value axis)
    fg = draw(st.sampled_from(["silu", "sigmoid", "tanh"]))
    og = b.let("og", gate_axes[k:], FMAPS[fg].format(X=_projection(b, gate_axes[k:])))
    labels["gate"] = "".join(n for n, _ in gate_axes[k:])
    return f" * {og}[{_idx(out_names[k:])}]"


@st.composite
def diagonal_specs(draw) -> GenSpec:
    b = _Builder("RandDiag", draw)
    labels = {}
    b.dim("M", draw(st.integers(1, 4)))
    first_over_input = draw(st.booleans())
    if first_over_input:
        first = ("c", "M")
    else:  # its own dim, maybe derived from M
        first = ("c", b.dim("P", draw(st.sampled_from([1, 2, 3, "M + 1", "2 * M"]))))
    axes = [first]
    n_more = draw(st.integers(0, 2))
    if n_more >= 1:
        axes.append(("j", b.dim("N", draw(st.integers(1, 3)))))
    if n_more >= 2:
        axes.append(("l", b.dim("L", draw(st.integers(1, 3)))))
    names = [n for n, _ in axes]
    labels["state_rank"] = len(axes)

    # A: deltas times a decay over a random subset of the state axes
    dax = _subset(draw, axes)
    decay, zlet, dkind = draw(_decay(b, dax))
    labels["decay"] = f"{dkind}/{len(dax)}"
    shared = None
    if draw(st.integers(0, 3)) == 0:  # a let read by A, B and C at once (HGRN / RG-LRU style: B gets 1 - it)
        shared = _sub(b.let("sh", dax, f"sigmoid({_projection(b, dax, bias=draw(st.booleans()))})"),
                      [n for n, _ in dax])
        decay = f"({decay}) * (0.5 + 0.5 * {shared})"
        labels["shared"] = True
    deltas = " * ".join(f"delta({n}, {n}2)" for n in names)
    cols = [f"{n}2" for n in names]
    rows_s = f"({_idx(names)})" if len(names) > 1 else names[0]
    cols_s = f"({_idx(cols)})" if len(cols) > 1 else cols[0]
    b.matrices.append(f"A[{rows_s}, {cols_s}] = {deltas} * ({decay})")

    # B u
    bkinds = ["dense", "gated_dense", "two_terms"] + (["elem", "elem_coupled"] if first_over_input else [])
    bkind = draw(st.sampled_from(bkinds))
    labels["B"] = bkind
    if bkind.startswith("elem"):
        rest = [a for a in axes[1:]]
        factor = ""
        if rest:
            bl = b.let("bl", rest, _projection(b, rest))
            factor = f" * {_sub(bl, [n for n, _ in rest])}"
        if bkind == "elem_coupled" and zlet is not None:
            factor += f" * softplus({_sub(zlet, [n for n, _ in dax])})"  # shares the decay's let: coupling
        elif bkind == "elem_coupled":
            gl = b.let("gl", [first], _projection(b, [first]))
            factor += f" * silu({gl}[c])"
        b.matrices.append(f"B[{rows_s}, m] = delta(c, m){factor}")
    elif bkind == "two_terms":  # a sum of two differently gated input maps
        terms_ = []
        for _ in range(2):
            wb = b.param("W_B", [d for _, d in axes] + ["M"], "~ normal(0, 1)")
            gax = _subset(draw, axes, min_size=0)
            g = b.let("gate", gax, f"sigmoid({_projection(b, gax)})")
            terms_.append(f"{wb}[{_idx(names + ['m'])}] * {_sub(g, [n for n, _ in gax])}")
        b.matrices.append(f"B[{rows_s}, m] = {' - '.join(terms_)}")
    else:
        wb = b.param("W_B", [d for _, d in axes] + ["M"], "~ normal(0, 1)")
        expr = f"{wb}[{_idx(names + ['m'])}]"
        if bkind == "gated_dense":
            gax = _subset(draw, axes, min_size=0)
            fm = draw(st.sampled_from(sorted(FMAPS)))
            g = b.let("gate", gax, FMAPS[fm].format(X=_projection(b, gax)))
            gsub = _shifted(draw, gax) if gax and draw(st.booleans()) else [n for n, _ in gax]  # maybe a gather
            expr += f" * {_sub(g, gsub)}"
            labels["B"] += f"/{fm}"
        b.matrices.append(f"B[{rows_s}, m] = {expr}")
    if draw(st.integers(0, 3)) == 0:
        gax = _subset(draw, axes, min_size=0)
        gate, gkind = draw(_running_gate(b, gax))
        labels["running"] = f"{gkind}/{len(gax)}"
        b.matrices[-1] += f" * {gate}"
    if shared is not None:
        b.matrices[-1] += f" * (1 - {shared})"

    # C h (+ D u)
    ckinds = ["dense"] + (["contract"] if first_over_input else [])
    ckind = draw(st.sampled_from(ckinds))
    labels["C"] = ckind
    if ckind == "contract":
        out_decl, out_dim = "output y[o: M]", "M"
        rest = axes[1:]
        factor = ""
        if rest:
            fm = draw(st.sampled_from(sorted(FMAPS)))
            q = b.let("q", rest, FMAPS[fm].format(X=_projection(b, rest)))
            factor = f" * {_sub(q, [n for n, _ in rest])}"
        b.matrices.append(f"C[o, {rows_s}] = delta(o, c){factor}")
    else:
        out_dim = b.dim("Q", draw(st.integers(1, 3)))
        out_decl = "output y[o: Q]"
        wc = b.param("W_C", ["Q"] + [d for _, d in axes], "~ normal(0, 1)")
        b.matrices.append(f"C[o, {rows_s}] = {wc}[{_idx(['o'] + names)}]")
    if shared is not None:
        b.matrices[-1] += f" * {shared}"
    if draw(st.booleans()):
        labels["D"] = True
        if out_dim == "M" and draw(st.booleans()):
            dp = b.param("Dskip", ["M"], "= 1")
            b.matrices.append(f"D[o, m] = delta(o, m) * {dp}[m]")
        else:
            wd = b.param("W_D", [out_dim, "M"], "~ normal(0, 1)")
            b.matrices.append(f"D[o, m] = {wd}[o, m]")
    if draw(st.integers(0, 3)) == 0:
        b.extra.append("readout pre")
        labels["readout"] = "pre"
    if draw(st.integers(0, 3)) == 0:  # B and D multiply a let of the input instead of the input itself
        dkind_ = draw(st.sampled_from(["proj", "chain", "elementwise", "shifted"]))
        if dkind_ == "proj":
            xd = b.let("xd", [("i", "M")], f"silu({_projection(b, [('i', 'M')])})")
        elif dkind_ == "chain":  # xr = W u + bias; xd = silu(xr) (Mamba's in-projection, then the activation)
            xr = b.let("xr", [("i", "M")], _projection(b, [("i", "M")], bias=True))
            xd = b.let("xd", [("i", "M")], f"silu({xr}[i])")
        elif dkind_ == "elementwise":  # no sum at all: a function of u itself
            xd = b.let("xd", [("i", "M")], draw(st.sampled_from(["u[i] * sigmoid(u[i])", "tanh(u[i])",
                                                                   "u[i] * (1 + 0.5 * sin(u[i]))"])))
        else:
            xd = b.let("xd", [("i", "M")], "tanh(u[(i + 1) % M]) + 0.5 * u[i]")
        b.extra.append(f"drive {xd}")
        labels["drive"] = dkind_
    if draw(st.integers(0, 3)) == 0:  # post-ops after the core: a gate, then maybe an out-projection
        g = b.param("W_gate", [out_dim, "M"], "~ normal(0, 0.7)")
        gated = b.fresh("gated")
        if draw(st.booleans()):
            b.extra.append(f"post {gated}[o: {out_dim}] = y[o] * sigmoid(sum(m, {g}[o, m] * u[m]))")
        else:  # the post reads a let (Mamba's silu(z) gate), maybe through a chain and at a shifted index
            pz = b.let("pz", [("i", out_dim)], _projection(b, [("i", out_dim)], bias=True))
            fm = draw(st.sampled_from(["silu", "sigmoid", "tanh"]))
            pg = b.let("pg", [("i", out_dim)], FMAPS[fm].format(X=f"{pz}[i]"))
            sub = draw(st.sampled_from(["o", f"(o + 1) % {out_dim}"]))
            b.extra.append(f"post {gated}[o: {out_dim}] = y[o] * {pg}[{sub}]")
            labels["post_let"] = True
        if draw(st.booleans()):
            b.dim("Z", draw(st.integers(1, 3)))
            w = b.param("W_out", ["Z", out_dim], "~ normal(0, 0.7)")
            b.extra.append(f"post {b.fresh('out')}[z: Z] = sum(o, {w}[z, o] * {gated}[o])")
        labels["post"] = True
    io = ["input u[M]", f"state h{_decl_axes(axes)}", out_decl]
    return GenSpec(b.render(io), "diagonal", labels)


@st.composite
def outer_specs(draw) -> GenSpec:
    b = _Builder("RandOuter", draw)
    labels = {}
    b.dim("M", draw(st.integers(1, 4)))
    heads = draw(st.booleans())
    grouped = heads and draw(st.booleans())  # keys and queries shared by groups of R heads (Mamba-2 / GQA style)
    if grouped:
        b.dim("G", draw(st.integers(1, 2)))
        b.dim("R", draw(st.integers(1, 2)))
        b.dim("H", "G * R")
    elif heads:
        b.dim("H", draw(st.integers(1, 3)))
    b.dim("K", draw(st.integers(1, 3)))
    b.dim("V", draw(st.integers(1, 3)))
    hax = [("h", "H")] if heads else []
    hn = [n for n, _ in hax]
    kax = [("g", "G")] if grouped else hax  # the axes the q/k lets live on
    ksub = ["h // R"] if grouped else hn  # how the matrices index them
    state_axes = draw(st.permutations(hax + [("a", "K"), ("b", "V")]))  # any axis order
    labels["heads"] = "grouped" if grouped else heads
    labels["order"] = "".join(n for n, _ in state_axes)

    normalized = draw(st.integers(0, 4)) == 0  # A = (eta_prev / eta) I, B = k v^T / eta, with z = cumsum(k)
    pos = ["elu1", "sigmoid"]
    fq = draw(st.sampled_from(pos if normalized else sorted(FMAPS)))
    fk = draw(st.sampled_from(pos if normalized else sorted(FMAPS)))
    qkind = "let" if normalized else draw(st.sampled_from(["let", "let", "none"]))
    kkind = "let" if normalized else draw(st.sampled_from(["let", "let", "l2", "param", "none"]))
    labels["q/k"] = f"{qkind}:{fq}/{kkind}:{fk}"
    q = b.let("q", kax + [("a", "K")], FMAPS[fq].format(X=_projection(b, kax + [("a", "K")]))) \
        if qkind == "let" else None
    if kkind == "param":
        k = b.param("Kp", [d for _, d in kax] + ["K"], "~ normal(0, 1)")
    elif kkind != "none":
        k = b.let("k", kax + [("a", "K")], FMAPS[fk].format(X=_projection(b, kax + [("a", "K")], bias=True)))
        if kkind == "l2":  # L2-normalised keys (DeltaNet / GLA style); +1 keeps the norm away from 0
            kn = [n for n, _ in kax]
            k = b.let("kn", kax + [("a", "K")],
                      f"{_sub(k, kn + ['a'])} / sqrt(1 + sum(a3, {_sub(k, kn + ['a3'])} ^ 2))")
    inline_v = draw(st.booleans())

    # A
    beta = None
    if normalized:
        dkind = "normalized"
        kn = [n for n, _ in kax]
        z = b.let("z", kax + [("a", "K")], f"cumsum({_sub(k, kn + ['a'])})")
        eta = b.let("eta", hax, f"sum(a, {_sub(q, ksub + ['a'])} * {_sub(z, ksub + ['a'])})")
        eta_prev = b.let("eta_prev", hax, f"prev({_sub(eta, hn)})")
        decay = f"{_sub(eta_prev, hn)} / {_sub(eta, hn)}"
        beta_expr = f"1 / {_sub(eta, hn)}"
    else:
        dkind = draw(st.sampled_from(["none", "head", "key", "value", "head_beta"]))
        if dkind in ("head_beta",) or draw(st.booleans()):
            beta = b.let("beta", hax, f"sigmoid({_projection(b, hax)})")
        if dkind == "none":
            decay = "1"
        elif dkind == "head":
            decay, _, _ = draw(_decay(b, hax, allow_identity=False))
        elif dkind == "key":
            decay, _, _ = draw(_decay(b, hax + [("a", "K")], allow_identity=False))
        elif dkind == "value":
            decay, _, _ = draw(_decay(b, hax + [("b", "V")], allow_identity=False))
        else:  # shares beta with B: coupling
            decay = f"1 - 0.5 * {_sub(beta, hn)}"
        beta_expr = _sub(beta, hn) if beta is not None else None
    labels["decay"] = dkind
    rows = [n for n, _ in state_axes]
    cols = [f"{n}2" for n in rows]
    deltas = " * ".join(f"delta({n}, {n}2)" for n in rows)
    b.matrices.append(f"A[({_idx(rows)}), ({_idx(cols)})] = {deltas} * ({decay})")

    # B u = key (x) value
    factors = []
    if beta_expr is not None:
        factors.append(beta_expr)
    if kkind != "none":
        factors.append(_sub(k, ksub + ["a"]))
    if inline_v:
        wv = b.param("W_V", [d for _, d in hax] + ["V", "M"], "~ normal(0, 1)")
        factors.append(f"{wv}[{_idx(hn + ['b', 'm'])}]")
    else:
        fv = draw(st.sampled_from(["id", "silu", "tanh"]))
        v = b.let("v", hax + [("b", "V")], FMAPS[fv].format(X=_projection(b, hax + [("b", "V")])))
        factors.append(_sub(v, hn + ["b"]))
    b.matrices.append(f"B[({_idx(rows)}), m] = {' * '.join(factors)}")

    # C: y[o, e] = sum_a q[h, a] S[h, a, b] with o <-> h, e <-> b; output axes maybe swapped; or (1 in 5) a whole
    # layer's out-projection written into C, y[o] = sum W_O[o, h, b] q[h, a] S[h, a, b] (ir/out_projection.py)
    scale = draw(st.sampled_from(["", " / sqrt(K)", " * 0.5"]))
    qq = f" * {_sub(q, ksub + ['a'])}" if q is not None else ""
    outproj = draw(st.integers(0, 4)) == 0
    gate = "" if outproj else _output_gate(draw, b, labels, hax + [("b", "V")], ["o", "e"] if heads else ["e"])
    if outproj:
        labels["outproj"] = True
        b.dim("Z", draw(st.integers(1, 3)))
        out_axes = [("o", "Z")]
        on = ["o"]
        if draw(st.booleans()):  # over the flat (head, value) index, as nn.Linear's weight is stored
            wo = b.param("W_O", ["Z", "H * V" if heads else "V"], "~ normal(0, 1)")
            wread = f"{wo}[o, {'h * V + b' if heads else 'b'}]"
        else:
            wo = b.param("W_O", ["Z"] + [d for _, d in hax] + ["V"], "~ normal(0, 1)")
            wread = f"{wo}[{_idx(['o'] + hn + ['b'])}]"
        b.matrices.append(f"C[o, ({_idx(rows)})] = {wread}{qq}{scale}")
    elif heads:
        swap = draw(st.booleans())
        labels["out_swap"] = swap
        out_axes = [("e", "V"), ("o", "H")] if swap else [("o", "H"), ("e", "V")]
        on = [n for n, _ in out_axes]
        b.matrices.append(f"C[({_idx(on)}), ({_idx(rows)})] = delta(o, h) * delta(e, b){qq}{gate}{scale}")
    else:
        out_axes = [("e", "V")]
        on = ["e"]
        b.matrices.append(f"C[e, ({_idx(rows)})] = delta(e, b){qq}{gate}{scale}")
    if draw(st.booleans()):
        labels["D"] = True
        wd = b.param("W_D", [d for _, d in out_axes] + ["M"], "~ normal(0, 1)")
        lhs = f"({_idx(on)})" if len(on) > 1 else on[0]
        b.matrices.append(f"D[{lhs}, m] = {wd}[{_idx(on + ['m'])}]")
    if draw(st.integers(0, 4)) == 0:
        b.extra.append("readout pre")
        labels["readout"] = "pre"
    io = ["input u[M]", f"state S{_decl_axes(state_axes)}", f"output y{_decl_axes(out_axes)}"]
    return GenSpec(b.render(io), "outer", labels)


@st.composite
def dense_specs(draw) -> GenSpec:
    b = _Builder("RandDense", draw)
    labels = {}
    b.dim("M", draw(st.integers(1, 4)))
    kind = draw(st.sampled_from(["param", "diag_plus_param", "kronecker", "const", "toeplitz", "delta_rule",
                                 "gated_delta_rule"]))
    labels["A"] = kind
    if kind in ("delta_rule", "gated_delta_rule"):
        b.dim("H", draw(st.integers(1, 2)))
        b.dim("K", draw(st.integers(1, 3)))
        b.dim("V", draw(st.integers(1, 3)))
        axes = [("h", "H"), ("a", "K"), ("b", "V")]
        fk = draw(st.sampled_from(["silu", "tanh", "elu1"]))
        kr = b.let("kr", axes[:2], FMAPS[fk].format(X=_projection(b, axes[:2])))
        k = b.let("k", axes[:2], f"{kr}[h, a] / sqrt(1 + sum(a3, {kr}[h, a3] ^ 2))")
        beta = b.let("beta", axes[:1], f"sigmoid({_projection(b, axes[:1])})")
        gate = ""
        if kind == "gated_delta_rule":
            dec, _, _ = draw(_decay(b, axes[:1], allow_identity=False))
            gate = f"({dec}) * "
        b.matrices.append(f"A[(h, a, b), (h2, a2, b2)] = {gate}delta(h, h2) * delta(b, b2) * "
                          f"(delta(a, a2) - {beta}[h] * {k}[h, a] * {k}[h, a2])")
        wv = b.param("W_V", ["H", "V", "M"], "~ normal(0, 1)")
        # the delta rule writes along the key it erases (chunked WY form); another write key makes A and B
        # unrelated, which only the dense scan handles
        labels["write"] = draw(st.sampled_from(["same_key", "same_key_beta_in_value", "other_key"]))
        if labels["write"] == "same_key":
            b.matrices.append(f"B[(h, a, b), m] = {beta}[h] * {k}[h, a] * {wv}[h, b, m]")
        elif labels["write"] == "same_key_beta_in_value":
            vv = b.let("vv", [axes[0], axes[2]], f"{beta}[h] * {_projection(b, [axes[0], axes[2]])}")
            b.matrices.append(f"B[(h, a, b), m] = {k}[h, a] * {vv}[h, b] * {wv}[h, b, m]")
        else:
            k2 = b.let("kw", axes[:2], FMAPS[fk].format(X=_projection(b, axes[:2])))
            b.matrices.append(f"B[(h, a, b), m] = {beta}[h] * {k2}[h, a] * {wv}[h, b, m]")
        fq = draw(st.sampled_from(sorted(FMAPS)))
        q = b.let("q", axes[:2], FMAPS[fq].format(X=_projection(b, axes[:2])))
        gate = _output_gate(draw, b, labels, [axes[0], axes[2]], ["o", "e"])
        b.matrices.append(f"C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * {q}[h, a]{gate}")
        out_decl = "output y[o: H, e: V]"
        out_axes = ["H", "V"]
        state_decl = "state S[h: H, a: K, b: V]"
    else:
        b.dim("N", draw(st.integers(1, 4)))
        axes = [("i", "N")]
        if kind == "kronecker":
            axes.append(("j", b.dim("N2", draw(st.integers(1, 3)))))
        elif draw(st.booleans()):  # an extra axis on which A is diagonal: block-diagonal
            axes.insert(0, ("c", b.dim("P", draw(st.integers(1, 3)))))
        names = [n for n, _ in axes]
        cols = [f"{n}2" for n in names]
        rows_s = f"({_idx(names)})" if len(names) > 1 else names[0]
        cols_s = f"({_idx(cols)})" if len(cols) > 1 else cols[0]
        extra_delta = "delta(c, c2) * " if names[0] == "c" else ""
        if kind == "param":
            w = b.param("W", ["N", "N"], "~ uniform(-0.4, 0.4)")
            a_expr = f"{extra_delta}{w}[i, i2]"
        elif kind == "diag_plus_param":
            w = b.param("W", ["N", "N"], "~ uniform(-0.2, 0.2)")
            dec, _, _ = draw(_decay(b, [("i", "N")], allow_identity=True))
            a_expr = f"{extra_delta}(delta(i, i2) * ({dec}) + {w}[i, i2])"
        elif kind == "const":  # every entry equal: rank one, |lambda| = 0.9
            a_expr = f"{extra_delta}0.9 / N"
        elif kind == "toeplitz":  # entries from index values: 0.5 / (1 + |i - i2|)
            a_expr = f"{extra_delta}0.5 / (N * (1 + abs(i - i2)))"
        else:
            w1 = b.param("W", ["N", "N"], "~ uniform(-0.5, 0.5)")
            w2 = b.param("W", ["N2", "N2"], "~ uniform(-0.5, 0.5)")
            a_expr = f"{w1}[i, i2] * {w2}[j, j2]"
        b.matrices.append(f"A[{rows_s}, {cols_s}] = {a_expr}")
        wb = b.param("W_B", [d for _, d in axes] + ["M"], "~ normal(0, 1)")
        bexpr = f"{wb}[{_idx(names + ['m'])}]"
        if draw(st.booleans()):
            g = b.let("gate", axes[-1:], f"sigmoid({_projection(b, axes[-1:])})")
            bexpr += f" * {g}[{axes[-1][0]}]"
        b.matrices.append(f"B[{rows_s}, m] = {bexpr}")
        b.dim("Q", draw(st.integers(1, 3)))
        wc = b.param("W_C", ["Q"] + [d for _, d in axes], "~ normal(0, 1)")
        b.matrices.append(f"C[o, {rows_s}] = {wc}[{_idx(['o'] + names)}]")
        out_decl = "output y[o: Q]"
        out_axes = ["Q"]
        state_decl = f"state h{_decl_axes(axes)}"
    if draw(st.booleans()):
        labels["D"] = True
        wd = b.param("W_D", out_axes + ["M"], "~ normal(0, 1)")
        on = ["o", "e"][: len(out_axes)]
        lhs = f"({_idx(on)})" if len(on) > 1 else on[0]
        b.matrices.append(f"D[{lhs}, m] = {wd}[{_idx(on + ['m'])}]")
    if draw(st.integers(0, 3)) == 0:
        b.extra.append("readout pre")
        labels["readout"] = "pre"
    io = ["input u[M]", state_decl, out_decl]
    return GenSpec(b.render(io), "dense", labels)


@st.composite
def ssd_specs(draw) -> GenSpec:
    """Mamba-2 SSD-like: a two-axis input u[h, p], B and C shared by groups of heads, per-head decays."""
    b = _Builder("RandSSD", draw)
    b.flat_input = True
    labels = {}
    b.dim("G", draw(st.integers(1, 2)))
    b.dim("R", draw(st.integers(1, 2)))
    b.dim("H", "G * R")
    b.dim("P", draw(st.integers(1, 3)))
    b.dim("N", draw(st.integers(1, 3)))
    decay, zlet, dkind = draw(_decay(b, [("h", "H")], allow_identity=True))
    labels["decay"] = dkind
    bm = b.let("Bm", [("g", "G"), ("j", "N")], _projection(b, [("g", "G"), ("j", "N")]))
    cm = b.let("Cm", [("g", "G"), ("j", "N")], _projection(b, [("g", "G"), ("j", "N")]))
    gate = f" * softplus({zlet}[h])" if zlet is not None and draw(st.booleans()) else ""  # dt-style coupling
    b.matrices.append(f"A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * ({decay})")
    b.matrices.append(f"B[(h, p, j), (h2, p2)] = delta(h, h2) * delta(p, p2){gate} * {bm}[h // R, j]")
    gate = _output_gate(draw, b, labels, [("h", "H"), ("p", "P")], ["o", "e"])
    b.matrices.append(f"C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * {cm}[h // R, j]{gate}")
    if draw(st.booleans()):
        dp = b.param("Dskip", ["H"], "= 1")
        b.matrices.append(f"D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * {dp}[h]")
        labels["D"] = True
    if draw(st.integers(0, 4)) == 0:
        b.extra.append("readout pre")
        labels["readout"] = "pre"
    io = ["input u[h: H, p: P]", "state S[h: H, p: P, j: N]", "output y[h: H, p: P]"]
    return GenSpec(b.render(io), "ssd", labels)


any_specs = st.one_of(diagonal_specs(), outer_specs(), dense_specs(), ssd_specs())


# -- the families and grammar the four generators above do not draw ------------------------------------------------
# (tests/e2e/test_properties_2.py checks them; each GenSpec's labels["family"] is the family the analysis must pick)

KEY_DIMS = [1, 2, 3, 5]  # odd key widths: 1 (a scalar key) and 5 (no power of two), as the chunked scans must take


def _heads(draw, b: _Builder, labels, allow_none=True):
    """Head axes: none, H heads, or H = G * R heads whose keys / queries are shared by groups of R (GQA / Mamba-2
    style). Returns (hax, kax, ksub, hn): the head axes, the axes the shared lets live on, how matrices index them,
    the head names."""
    kind = draw(st.sampled_from(["none", "heads", "grouped"] if allow_none else ["heads", "grouped"]))
    labels["heads"] = kind
    if kind == "none":
        return [], [], [], []
    if kind == "grouped":
        b.dim("G", draw(st.integers(1, 2)))
        b.dim("R", draw(st.integers(1, 2)))
        b.dim("H", "G * R")
        return [("h", "H")], [("g", "G")], ["h // R"], ["h"]
    b.dim("H", draw(st.integers(1, 3)))
    return [("h", "H")], [("h", "H")], ["h"], ["h"]


def _l2_key(b: _Builder, kax, stem="k") -> str:
    """An L2-normalised key over kax + [a] (the +1 keeps the norm away from 0); returns the let's name."""
    kn = [n for n, _ in kax]
    kr = b.let(stem + "r", kax + [("a", "K")], _projection(b, kax + [("a", "K")]))
    return b.let(stem, kax + [("a", "K")], f"{_sub(kr, kn + ['a'])} / sqrt(1 + sum(a3, {_sub(kr, kn + ['a3'])} ^ 2))")


def _value(draw, b: _Builder, hax, rank=()) -> str:
    """The value factor of B u over hax (+ rank axes) + [b]: a let of a projection or W_V[.., b, m] inline."""
    hn = [n for n, _ in hax] + [n for n, _ in rank]
    if draw(st.booleans()):
        wv = b.param("W_V", [d for _, d in hax] + [d for _, d in rank] + ["V", "M"], "~ normal(0, 1)")
        return f"{wv}[{_idx(hn + ['b', 'm'])}]"
    fv = draw(st.sampled_from(["id", "silu", "tanh"]))
    v = b.let("v", hax + list(rank) + [("b", "V")], FMAPS[fv].format(X=_projection(b, hax + list(rank) + [("b", "V")])))
    return _sub(v, hn + ["b"])


def _posts(draw, b: _Builder, labels, out_axes) -> None:
    """Sometimes (1 in 3) post-ops on an output y[out_axes]: a sigmoid / silu gate of a projection, an RMSNorm over
    the last axis (with a learned weight), then maybe an out-projection to Z features."""
    if draw(st.integers(0, 2)) != 0:
        return
    names = [n for n, _ in out_axes]
    decl = ", ".join(f"{n}: {d}" for n, d in out_axes)
    cur = "y"
    kinds = draw(st.lists(st.sampled_from(["gate", "rmsnorm"]), min_size=1, max_size=2))
    for kind in kinds:
        new = b.fresh("p")
        if kind == "gate":
            fm = draw(st.sampled_from(["silu", "sigmoid"]))
            gate = FMAPS[fm].format(X=_projection(b, out_axes))
            b.extra.append(f"post {new}[{decl}] = {cur}[{_idx(names)}] * {gate}")
        else:  # RMSNorm over the last output axis, eps 1e-5, weight per feature
            last, dl = out_axes[-1]
            w = b.param("norm_w", [dl], "~ uniform(0.5, 1.5)")
            ms = f"sum(x9, {cur}[{_idx(names[:-1] + ['x9'])}] ^ 2) / {dl}"
            b.extra.append(f"post {new}[{decl}] = {cur}[{_idx(names)}] / sqrt({ms} + 1e-5) * {w}[{last}]")
        cur = new
    if draw(st.booleans()):
        b.dim("Z", draw(st.integers(1, 3)))
        w = b.param("W_out", ["Z"] + [d for _, d in out_axes], "~ normal(0, 0.7)")
        body = f"{w}[{_idx(['z'] + names)}] * {cur}[{_idx(names)}]"
        for n in reversed(names):
            body = f"sum({n}, {body})"
        b.extra.append(f"post {b.fresh('out')}[z: Z] = {body}")
    labels["posts"] = "+".join(kinds)


def _c_rows(heads: bool, rows, query: str, gate: str, qaxes=()) -> tuple[str, list]:
    """C of a multi-head (or single-head) outer-product state: y[o, (r,) e] = q . S[h, :, b]; returns (C line, the
    output axes)."""
    out = ([("o", "H")] if heads else []) + list(qaxes) + [("e", "V")]
    on = [n for n, _ in out]
    lhs = f"({_idx(on)})" if len(on) > 1 else on[0]
    deltas = ("delta(o, h) * " if heads else "") + "delta(e, b)"
    return f"C[{lhs}, ({_idx(rows)})] = {deltas}{query}{gate}", out


@st.composite
def dplr_specs(draw) -> GenSpec:
    """Chunked diagonal-plus-rank-1 (DPLR): A = diag(al) + x y^T per head on the key axis, identity on the value axis,
    with a per-key decay al drawn from the decay grammar (``_decay_expr``) as a let. Forms: Kimi Delta Attention in
    the paper's order ((I - be k k^T) diag(al)) and the other (diag(al) (I - be k k^T)), both writing be k v^T; and
    RWKV-7's diag(w) - kap (ia kap)^T with B writing another key. Keys shared by groups of heads, value-first state
    layouts, odd key widths, D, output gates and posts. A decay that is constant along the keys ('const') makes the
    KDA forms a gated delta rule (chunked delta-rule family); every other draw must be the DPLR family."""
    b = _Builder("RandDPLR", draw)
    labels = {}
    b.dim("M", draw(st.integers(1, 4)))
    hax, kax, ksub, hn = _heads(draw, b, labels)
    b.dim("K", draw(st.sampled_from(KEY_DIMS)))
    b.dim("V", draw(st.integers(1, 3)))
    value_first = draw(st.booleans())
    state_axes = hax + ([("b", "V"), ("a", "K")] if value_first else [("a", "K"), ("b", "V")])
    labels["value_first"] = value_first
    form = draw(st.sampled_from(["kda", "kda_other", "rwkv7"]))
    labels["form"] = form
    k = _l2_key(b, kax)

    def K_(i):
        return _sub(k, ksub + [i])

    if draw(st.integers(0, 5)) == 0:  # a per-key decay that may be negative: documented to keep the dense scan
        dec, dkind = f"tanh({_projection(b, hax + [('a', 'K')], bias=True)})", "signed"
    else:
        dec, _, dkind = draw(_decay_expr(b, hax + [("a", "K")], allow_identity=False))
    labels["decay"] = dkind
    al = b.let("al", hax + [("a", "K")], dec)

    def AL(i):
        return _sub(al, hn + [i])

    be = b.let("be", hax, f"sigmoid({_projection(b, hax)})")
    BE = _sub(be, hn)
    if form == "kda":
        block = f"(delta(a, a2) - {BE} * {K_('a')} * {K_('a2')}) * {AL('a2')}"
    elif form == "kda_other":
        block = f"{AL('a')} * (delta(a, a2) - {BE} * {K_('a')} * {K_('a2')})"
    else:
        ia = b.let("ia", hax + [("a", "K")], f"sigmoid({_projection(b, hax + [('a', 'K')])})")
        block = f"(delta(a, a2) * {AL('a')} - {K_('a')} * {_sub(ia, hn + ['a2'])} * {K_('a2')})"
    rows = [n for n, _ in state_axes]
    cols = [f"{n}2" for n in rows]
    deltas = ("delta(h, h2) * " if hax else "") + "delta(b, b2)"
    b.matrices.append(f"A[({_idx(rows)}), ({_idx(cols)})] = {deltas} * {block}")
    v = _value(draw, b, hax)
    if form == "rwkv7":
        kw = b.let("kw", kax + [("a", "K")], _projection(b, kax + [("a", "K")]))
        b.matrices.append(f"B[({_idx(rows)}), m] = {v} * {_sub(kw, ksub + ['a'])}")
    else:
        b.matrices.append(f"B[({_idx(rows)}), m] = {BE} * {K_('a')} * {v}")
    fq = draw(st.sampled_from(sorted(FMAPS)))
    q = b.let("q", kax + [("a", "K")], FMAPS[fq].format(X=_projection(b, kax + [("a", "K")])))
    gate = _output_gate(draw, b, labels, hax + [("b", "V")], (["o"] if hax else []) + ["e"])
    line, out_axes = _c_rows(bool(hax), rows, f" * {_sub(q, ksub + ['a'])}", gate)
    b.matrices.append(line)
    if draw(st.booleans()):
        labels["D"] = True
        wd = b.param("W_D", [d for _, d in out_axes] + ["M"], "~ normal(0, 1)")
        on = [n for n, _ in out_axes]
        b.matrices.append(f"D[{'(' + _idx(on) + ')' if len(on) > 1 else on[0]}, m] = {wd}[{_idx(on + ['m'])}]")
    if draw(st.integers(0, 3)) == 0:
        b.extra.append("readout pre")
        labels["readout"] = "pre"
    _posts(draw, b, labels, out_axes)
    family = "chunked delta-rule scan" if dkind == "const" and form != "rwkv7" else \
        "chunked diagonal-plus-rank-1 scan"
    if dkind == "signed":
        family = "dense scan"
    labels["family"] = family
    io = ["input u[M]", f"state S{_decl_axes(state_axes)}", f"output y{_decl_axes(out_axes)}"]
    return GenSpec(b.render(io), "dplr", labels)


@st.composite
def rank_specs(draw) -> GenSpec:
    """Rank-R inputs and R queries per step (Mamba-3's MIMO SSD): B u = beta sum_r k_r v_r^T and / or C reading the
    state with R queries (output y[o, r, e]), with a decay per head, per key, none, or signed (tanh, not provably
    >= 0), keys maybe L2-normalised or shared by groups of heads, readout pre sometimes. At least one of the two rank
    forms; the family must stay the chunked outer-product scan."""
    b = _Builder("RandRank", draw)
    labels = {}
    b.dim("M", draw(st.integers(1, 4)))
    hax, kax, ksub, hn = _heads(draw, b, labels, allow_none=False)
    b.dim("K", draw(st.sampled_from(KEY_DIMS)))
    b.dim("V", draw(st.integers(1, 3)))
    rank_b, multi_q = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    labels["rank"] = f"B{int(rank_b)}/Q{int(multi_q)}"
    b.dim("Rk", draw(st.integers(1, 3)))
    b.dim("Rq", draw(st.integers(1, 3)))
    rk = [("r", "Rk")] if rank_b else []
    rq = [("s", "Rq")] if multi_q else []
    kr = b.let("k", kax + rk + [("a", "K")], FMAPS[draw(st.sampled_from(sorted(FMAPS)))].format(
        X=_projection(b, kax + rk + [("a", "K")])))
    ksubs = ksub + [n for n, _ in rk] + ["a"]
    key = _sub(kr, ksubs)
    q = b.let("q", kax + rq + [("a", "K")], _projection(b, kax + rq + [("a", "K")]))
    state_axes = draw(st.permutations([("h", "H"), ("a", "K"), ("b", "V")]))
    rows = [n for n, _ in state_axes]
    cols = [f"{n}2" for n in rows]
    dkind = draw(st.sampled_from(["head", "key", "none", "signed_head", "signed_key"]))
    labels["decay"] = dkind
    if dkind == "none":
        decay = "1"
    elif dkind.startswith("signed"):
        dax = hax + ([("a", "K")] if dkind == "signed_key" else [])
        decay = f"tanh({_projection(b, dax, bias=True)})"
    else:
        decay, _, _ = draw(_decay(b, hax + ([("a", "K")] if dkind == "key" else []), allow_identity=False))
    deltas = " * ".join(f"delta({n}, {n}2)" for n in rows)
    b.matrices.append(f"A[({_idx(rows)}), ({_idx(cols)})] = {deltas} * ({decay})")
    beta = ""
    if draw(st.booleans()):
        dt = b.let("dt", hax, f"softplus({_projection(b, hax)})")
        beta = f"{_sub(dt, hn)} * "
    v = _value(draw, b, hax, rk)
    term = f"{key} * {v}"
    b.matrices.append(f"B[({_idx(rows)}), m] = {beta}" + (f"sum(r, {term})" if rank_b else term))
    gate = _output_gate(draw, b, labels, hax + [("b", "V")], ["o", "e"])  # broadcast along the query axis
    line, out_axes = _c_rows(True, rows, f" * {_sub(q, ksub + [n for n, _ in rq] + ['a'])}", gate, rq)
    b.matrices.append(line)
    if draw(st.integers(0, 2)) == 0:
        labels["D"] = True
        on = [n for n, _ in out_axes]
        wd = b.param("W_D", [d for _, d in out_axes] + ["M"], "~ normal(0, 1)")
        b.matrices.append(f"D[({_idx(on)}), m] = {wd}[{_idx(on + ['m'])}]")
    _posts(draw, b, labels, out_axes)
    if draw(st.integers(0, 3)) == 0:
        b.extra.append("readout pre")
        labels["readout"] = "pre"
    labels["family"] = "chunked outer-product scan"
    io = ["input u[M]", f"state S{_decl_axes(state_axes)}", f"output y{_decl_axes(out_axes)}"]
    return GenSpec(b.render(io), "rank", labels)


@st.composite
def attention_specs(draw) -> GenSpec:
    """Quadratic attention: a state on the infinite feature range taylor(K, inf). Softmax (cumsum normaliser,
    A = eta_prev / eta), decayed softmax (FoX: a data-dependent forget gate f, scan(f, kf) normaliser,
    A = f eta_prev / eta), ALiBi (a constant per-head gate) and the un-normalised decayed kernel (A = f I, no
    normaliser); keys / queries maybe shared by groups of heads, values inline or a let, output gates and posts.
    The family must be quadratic attention."""
    b = _Builder("RandAttn", draw)
    labels = {}
    b.dim("M", draw(st.integers(1, 4)))
    hax, kax, ksub, hn = _heads(draw, b, labels, allow_none=False)
    b.dim("K", draw(st.sampled_from(KEY_DIMS)))
    b.dim("V", draw(st.integers(1, 3)))
    kind = draw(st.sampled_from(["softmax", "fox", "alibi", "unnormalised"]))
    labels["attention"] = kind
    q = b.let("q", kax + [("a", "K")], _projection(b, kax + [("a", "K")]))
    k = b.let("k", kax + [("a", "K")], _projection(b, kax + [("a", "K")], bias=draw(st.booleans())))
    feat = [("h", "H"), ("e", "taylor(K, inf)")]
    qf = b.let("qf", feat, f"taylor(a, {_sub(q, ksub + ['a'])})")
    kf = b.let("kf", feat, f"taylor(a, {_sub(k, ksub + ['a'])})")
    f = None
    if kind == "fox" or kind == "unnormalised":
        fm = draw(st.sampled_from(["sigmoid({X})", "exp(-softplus({X}))", "exp(logsigmoid({X}) / 2)"]))
        f = _sub(b.let("f", hax, fm.format(X=_projection(b, hax, bias=True))), hn)
    elif kind == "alibi":
        s = b.param("slope", ["H"], "~ uniform(0.1, 1)")
        f = f"exp(-{s}[h])"
    rows = ["h", "e", "b"]
    state = [("h", "H"), ("e", "taylor(K, inf)"), ("b", "V")]
    v = _value(draw, b, hax)
    deltas = "delta(h, h2) * delta(e, e2) * delta(b, b2)"
    if kind == "unnormalised":
        a_expr = f
        b_expr = f"{kf}[h, e] * {v}"
    else:
        z = b.let("z", feat, f"cumsum({kf}[h, e])" if f is None else f"scan({f}, {kf}[h, e])")
        eta = b.let("eta", hax, f"sum(e, {qf}[h, e] * {z}[h, e])")
        eta_prev = b.let("eta_prev", hax, f"prev({eta}[h])")
        a_expr = (f"{f} * " if f is not None else "") + f"{eta_prev}[h] / {eta}[h]"
        b_expr = f"{kf}[h, e] * {v} / {eta}[h]"
    b.matrices.append(f"A[(h, e, b), (h2, e2, b2)] = {deltas} * {a_expr}")
    b.matrices.append(f"B[(h, e, b), m] = {b_expr}")
    gate = _output_gate(draw, b, labels, hax + [("b", "V")], ["o", "c"])
    b.matrices.append(f"C[(o, c), (h, e, b)] = delta(o, h) * delta(c, b) * {qf}[h, e]{gate}")
    out_axes = [("o", "H"), ("c", "V")]
    _posts(draw, b, labels, out_axes)
    labels["family"] = "quadratic attention"
    io = ["input u[M]", f"state S{_decl_axes(state)}", f"output y{_decl_axes(out_axes)}"]
    return GenSpec(b.render(io), "attention", labels)


@st.composite
def linear_attention_specs(draw) -> GenSpec:
    """Chunked outer-product scan forms outer_specs does not draw: signed decays (tanh per head or per key: scanned
    as log|decay| with the signs folded into q and k), a decayed running normaliser (z = scan(f, k), eta = q . z,
    A = f eta_prev / eta, B = k v^T / eta), readout pre, posts (gates, RMSNorm, out-projection), odd key widths and
    keys shared by groups of heads. The family must be the chunked outer-product scan."""
    b = _Builder("RandLin", draw)
    labels = {}
    b.dim("M", draw(st.integers(1, 4)))
    hax, kax, ksub, hn = _heads(draw, b, labels)
    b.dim("K", draw(st.sampled_from(KEY_DIMS)))
    b.dim("V", draw(st.integers(1, 3)))
    state_axes = draw(st.permutations(hax + [("a", "K"), ("b", "V")]))
    rows = [n for n, _ in state_axes]
    cols = [f"{n}2" for n in rows]
    kind = draw(st.sampled_from(["signed_head", "signed_key", "signed_static", "scan_norm"]))
    labels["decay"] = kind
    pos = kind == "scan_norm"
    fq = draw(st.sampled_from(["elu1", "sigmoid"] if pos else sorted(FMAPS)))
    fk = draw(st.sampled_from(["elu1", "sigmoid"] if pos else sorted(FMAPS)))
    q = b.let("q", kax + [("a", "K")], FMAPS[fq].format(X=_projection(b, kax + [("a", "K")])))
    k = b.let("k", kax + [("a", "K")], FMAPS[fk].format(X=_projection(b, kax + [("a", "K")], bias=True)))
    v = _value(draw, b, hax)
    Q, Kk = _sub(q, ksub + ["a"]), _sub(k, ksub + ["a"])
    if kind == "scan_norm":
        f = _sub(b.let("f", hax, f"sigmoid({_projection(b, hax, bias=True)})"), hn)
        z = b.let("z", hax + [("a", "K")], f"scan({f}, {Kk})")  # the decayed history of the keys, per head
        eta = _sub(b.let("eta", hax, f"sum(a, {Q} * {_sub(z, hn + ['a'])})"), hn)
        eta_prev = _sub(b.let("eta_prev", hax, f"prev({eta})"), hn)
        decay = f"{f} * {eta_prev} / {eta}"
        bexpr = f"{Kk} * {v} / {eta}"
    else:
        if kind == "signed_static":  # a learned factor in (-1, 1) per head (or a scalar)
            p = b.param("rho", [d for _, d in hax], "~ uniform(-1, 1)")
            decay = f"tanh({_sub(p, hn)})"
        else:
            dax = hax + ([("a", "K")] if kind == "signed_key" else [])
            decay = f"tanh({_projection(b, dax, bias=True)})"
        beta = ""
        if draw(st.booleans()):
            beta = f"{_sub(b.let('beta', hax, f'sigmoid({_projection(b, hax)})'), hn)} * "
        bexpr = f"{beta}{Kk} * {v}"
    deltas = " * ".join(f"delta({n}, {n}2)" for n in rows)
    b.matrices.append(f"A[({_idx(rows)}), ({_idx(cols)})] = {deltas} * ({decay})")
    b.matrices.append(f"B[({_idx(rows)}), m] = {bexpr}")
    gate = _output_gate(draw, b, labels, hax + [("b", "V")], (["o"] if hax else []) + ["e"])
    line, out_axes = _c_rows(bool(hax), rows, f" * {Q}", gate)
    b.matrices.append(line)
    if kind != "scan_norm" and draw(st.integers(0, 2)) == 0:
        b.extra.append("readout pre")
        labels["readout"] = "pre"
    _posts(draw, b, labels, out_axes)
    labels["family"] = "chunked outer-product scan"
    io = ["input u[M]", f"state S{_decl_axes(state_axes)}", f"output y{_decl_axes(out_axes)}"]
    return GenSpec(b.render(io), "linear", labels)


@st.composite
def rotating_key_specs(draw) -> GenSpec:
    """A rotating (complex) decay per key pair with an outer-product input (GateLoop, retention with a complex decay):
    state S[h, a, r: 2, b] (the pair axis r first or last among the key axes, heads none / per head / grouped keys),
    A = rho R(theta) on r, written as rho cos / rho sin (rho per head or per key pair, a constant, a sigmoid gate, a
    relu that is 0 at some steps, a signed tanh; theta static, per head or per key pair from the input) or as x, y
    lets with no cos / sin; B u = k[.., a, r] v[.., b]; C q[.., a, r], sometimes with GateLoop's sign (1 - 2 r);
    readout pre sometimes. With ranks (Mamba-3's MIMO with its rotary): R_k outer products per step, B u =
    sum(p, k[.., p, a, r] v[.., p, b]), and / or R_q queries, output y[o, j, e], the rank axis before or after the
    key and pair axes in the lets. Family: the chunked outer-product scan (the rotation moved into q and k, the
    rank axes into sub-steps)."""
    b = _Builder("RandRotKey", draw)
    labels = {}
    b.dim("M", draw(st.integers(1, 4)))
    b.dim("K", draw(st.sampled_from([1, 2, 3])))
    b.dim("V", draw(st.integers(1, 3)))
    hax, kax, ksub, hn = _heads(draw, b, labels, allow_none=False)
    pair_first = draw(st.booleans())
    labels["pair"] = "first" if pair_first else "last"
    keys = ["r", "a"] if pair_first else ["a", "r"]
    rows = hn + keys + ["b"]
    cols = [n + "2" for n in rows]
    ranks = draw(st.sampled_from(["none", "none", "keys", "queries", "both"]))
    labels["ranks"] = ranks
    rk = [("p", "Rk")] if ranks in ("keys", "both") else []
    rq = [("j", "Rq")] if ranks in ("queries", "both") else []
    for ax in rk + rq:
        b.dim(ax[1], draw(st.integers(1, 3)))
    rank_last = draw(st.booleans())  # the rank axis after the key and pair axes in the lets, else before them
    if rk or rq:
        labels["rank axis"] = "last" if rank_last else "first"

    def with_rank(ax, rank):
        return ax + [("a", "K"), ("r", "2")] + rank if rank_last else ax + rank + [("a", "K"), ("r", "2")]

    k = b.let("k", with_rank(kax, rk), _projection(b, with_rank(kax, rk)))
    q = b.let("q", with_rank(hax, rq), _projection(b, with_rank(hax, rq)))
    ksubs = [n for n, _ in with_rank([(n, "") for n in ksub], rk)]
    qsubs = [n for n, _ in with_rank([(n, "") for n in hn], rq)]
    form = draw(st.sampled_from(["polar", "polar", "xy"]))
    labels["form"] = form
    rot = "(delta(r, 1) * delta(r2, 0) - delta(r, 0) * delta(r2, 1))"
    if form == "xy":
        x = b.let("x", hax + [("a", "K")], f"0.6 * tanh({_projection(b, hax + [('a', 'K')], bias=True)})")
        y = b.let("y", hax + [("a", "K")], f"0.6 * tanh({_projection(b, hax + [('a', 'K')], bias=True)})")
        block = f"(delta(r, r2) * {_sub(x, hn + ['a'])} + {rot} * {_sub(y, hn + ['a'])})"
    else:
        rkind = draw(st.sampled_from(["const", "gate_head", "gate_key", "relu", "tanh"]))
        tkind = draw(st.sampled_from(["static", "head", "key"]))
        labels["rho/theta"] = f"{rkind}/{tkind}"
        if rkind == "const":
            rho = "0.9"
        elif rkind == "gate_head":
            rho = _sub(b.let("rho", hax, f"sigmoid({_projection(b, hax, bias=True)} + 1)"), hn)
        else:
            fn = {"gate_key": "sigmoid({X} + 1)", "relu": "relu(2 * sigmoid({X}) - 1)", "tanh": "tanh({X})"}[rkind]
            rho = _sub(b.let("rho", hax + [("a", "K")], fn.format(X=_projection(b, hax + [("a", "K")], bias=True))),
                       hn + ["a"])
        if tkind == "static":
            th = b.param("theta", ["K"], "~ uniform(0, 3)") + "[a]"
        elif tkind == "head":
            th = _sub(b.let("th", hax, _projection(b, hax)), hn)
        else:
            th = _sub(b.let("th", hax + [("a", "K")], _projection(b, hax + [("a", "K")])), hn + ["a"])
        block = f"{rho} * (delta(r, r2) * cos({th}) + {rot} * sin({th}))"
    deltas = " * ".join(f"delta({n}, {n}2)" for n in hn + ["a", "b"])
    b.matrices.append(f"A[({_idx(rows)}), ({_idx(cols)})] = {deltas} * {block}")
    v = _value(draw, b, hax, rk)
    term = f"{_sub(k, ksubs)} * {v}"
    b.matrices.append(f"B[({_idx(rows)}), m] = " + (f"sum(p, {term})" if rk else term))
    sign = draw(st.booleans())
    labels["sign"] = sign
    query = f" * {_sub(q, qsubs)}" + (" * (1 - 2 * r)" if sign else "")
    line, out = _c_rows(True, rows, query, "", rq)
    b.matrices.append(line)
    if draw(st.integers(0, 3)) == 0:
        b.extra.append("readout pre")
        labels["readout"] = "pre"
    labels["family"] = "chunked outer-product scan"
    io = ["input u[M]", f"state S{_decl_axes(hax + [(n, 'K' if n == 'a' else '2') for n in keys] + [('b', 'V')])}",
          f"output y{_decl_axes(out)}"]
    return GenSpec(b.render(io), "rotating", labels)


@st.composite
def complex_specs(draw) -> GenSpec:
    """Complex-diagonal states written as real 2x2 rotation-scaling blocks (LRU): state h[j: N, s: 2], A =
    delta(j, j2) r[j] (delta(s, s2) cos(th[j]) + (s - s2) sin(th[j])), with r and th static (params) or
    input-dependent. Family: the dense scan (A couples the s axis), with |lambda| = r."""
    b = _Builder("RandComplex", draw)
    labels = {}
    b.dim("M", draw(st.integers(1, 4)))
    b.dim("N", draw(st.integers(1, 3)))
    rkind = draw(st.sampled_from(["static", "input"]))
    tkind = draw(st.sampled_from(["static", "input"]))
    labels["r/th"] = f"{rkind}/{tkind}"
    if rkind == "static":
        p = b.param("nu", ["N"], "~ normal(0, 1)")
        r = b.let("r", [("j", "N")], f"exp(-exp({p}[j]))")
    else:
        r = b.let("r", [("j", "N")], f"sigmoid({_projection(b, [('j', 'N')], bias=True)})")
    if tkind == "static":
        th = b.param("theta", ["N"], "~ uniform(0, 3)")
    else:
        th = b.let("th", [("j", "N")], _projection(b, [("j", "N")]))
    b.matrices.append(f"A[(j, s), (j2, s2)] = delta(j, j2) * {r}[j] * (delta(s, s2) * cos({th}[j]) + "
                      f"(s - s2) * sin({th}[j]))")
    wr = b.param("B_re", ["N", "M"], "~ normal(0, 0.7)")
    wi = b.param("B_im", ["N", "M"], "~ normal(0, 0.7)")
    b.matrices.append(f"B[(j, s), m] = delta(s, 0) * {wr}[j, m] + delta(s, 1) * {wi}[j, m]")
    b.dim("Q", draw(st.integers(1, 3)))
    cr = b.param("C_re", ["Q", "N"], "~ normal(0, 0.7)")
    ci = b.param("C_im", ["Q", "N"], "~ normal(0, 0.7)")
    b.matrices.append(f"C[o, (j, s)] = delta(s, 0) * {cr}[o, j] - delta(s, 1) * {ci}[o, j]")
    if draw(st.booleans()):
        b.extra.append("readout pre")
        labels["readout"] = "pre"
    _posts(draw, b, labels, [("o", "Q")])
    labels["family"] = "dense scan"
    io = ["input u[M]", "state h[j: N, s: 2]", "output y[o: Q]"]
    return GenSpec(b.render(io), "complex", labels)
