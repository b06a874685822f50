"""SymPy -> PyTorch source, over named index axes. The only place (with the templates) that knows torch syntax.

An expression is printed *over axes*: its value must broadcast to ``[B, T, *axes]`` (time-varying) or ``[*axes]``
(static). A tensor entry whose subscripts are distinct bare axis symbols becomes a view (permute + ``None``
insertions); any other subscript becomes a gather with index grids. ``Sum``s of products become ``torch.einsum``;
other sums broadcast over one more axis and reduce. An unknown node is an internal error, never ``str(expr)``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import sympy as sp

from ..analysis.log_space import power_as_exp
from ..ir.functions import Elu, Elu1p, Expm1, Gelu, LogSigmoid, Relu, Sigmoid, Silu, Softplus, TaylorRange


class PrinterError(Exception):
    """Internal: the printer met a node it does not know. A bug in dsfc, not in the spec."""


@dataclass(frozen=True)
class TensorRef:
    code: str  # Python expression holding the tensor
    rank: int  # number of spec axes
    batched: bool  # leading [B, T] dims
    extents: tuple = ()  # the spec axes' extents (SymPy, over dims) where known: lets a flat read be a reshape


# the precedence the base of ** is printed at: above any operator's (3, **'s operands), so that a negative number
# there is parenthesised, and only there (an exponent -0.5 stays x ** -0.5)
_POW_BASE = 4
_UNARY = {
    sp.exp: "torch.exp",
    Expm1: "expm1",  # dsfc.runtime's: torch.expm1 is inexact under Inductor
    sp.log: "torch.log",
    sp.tanh: "torch.tanh",
    sp.sin: "torch.sin",
    sp.cos: "torch.cos",
    sp.Abs: "torch.abs",
    Softplus: "F.softplus",
    Sigmoid: "torch.sigmoid",
    LogSigmoid: "F.logsigmoid",
    Relu: "torch.relu",
    Silu: "F.silu",
    Elu: "F.elu",
    Elu1p: "elu1p",
    Gelu: "F.gelu",
}

_LETTERS = "ijklmnopqrsuvwxyabcdefgh"  # einsum letters for axes; "t" and the batch letter are reserved


class TorchPrinter:
    """Prints expressions of one spec. ``tensors``: base name -> TensorRef; ``dims``: dim symbol -> code."""

    def __init__(self, tensors: dict[str, TensorRef], dims: dict[sp.Symbol, str], device: str = "_dev",
                 dtype: str = "_dtype"):
        self.tensors = tensors
        self.dims = dims
        self.device = device
        self.dtype = dtype
        self.infinite = None  # code for the size of an infinite feature range (its slot count), where one is used
        self.helpers: set[str] = set()  # dsfc.runtime.features functions the printed code calls (l2_norm)
        # ``radix(subscript, {axis: extent}, total)``: the row-major digits [(stride, extent, axis)] of a subscript
        # that tiles a tensor axis of extent ``total`` exactly, or None (``ir.digits.radix_digits`` over the spec's
        # dims; the printer itself knows no dims). None: every compound subscript is a gather.
        self.radix = None
        self.axis_extents: dict = {}  # index symbol -> its extent (SymPy) in the expression being printed
        self.same_extent = None  # same_extent(a, b): two SymPy extents equal over the spec's dims (None: as printed)
        self.batch = "_B, _T"  # the generated code's locals for the batch and time sizes
        # the object that caches dim-only index tensors (``cached_index``: the generated module's ``self``), or None
        # (built where used)
        self.index_owner: str | None = None

    # -- helpers -------------------------------------------------------------------------------------------------
    def size(self, e) -> str:
        return self.index(sp.S(e), (), {})

    def grid(self, sym, axes, sizes) -> str:
        k = axes.index(sym)
        return f"axis({sizes[sym]}, {k}, {len(axes)}, {self.device})"

    def index(self, e, axes, sizes) -> str:
        """Integer expression (subscript, extent) -> code: ints, dims, or index grids."""
        if e.is_Integer:
            return str(int(e))
        if isinstance(e, TaylorRange) and e.args[1] is sp.oo and self.infinite is not None:
            return self.infinite
        if isinstance(e, sp.Symbol):
            if e in axes:
                return self.grid(e, axes, sizes)
            if e in self.dims:
                return self.dims[e]
            raise PrinterError(f"unbound index symbol {e}")
        if isinstance(e, sp.Add):
            return self._index_sum(e, axes, sizes)
        if isinstance(e, sp.Mul):
            num, den = sp.fraction(e)
            if den != 1:
                raise PrinterError(f"non-integer subscript {e}")
            return "(" + " * ".join(self.index(a, axes, sizes) for a in e.args) + ")"
        if isinstance(e, sp.Pow) and e.exp.is_Integer and e.exp > 0:
            # SymPy folds K * K (an extent, a subscript such as a * a) into K**2: print it back as a product
            return "(" + " * ".join([self.index(e.base, axes, sizes)] * int(e.exp)) + ")"
        if isinstance(e, sp.floor):
            num, den = sp.fraction(sp.together(e.args[0]))
            return f"({self.index(num, axes, sizes)} // {self.index(den, axes, sizes)})"
        if isinstance(e, sp.Mod):
            return f"({self.index(e.args[0], axes, sizes)} % {self.index(e.args[1], axes, sizes)})"
        if isinstance(e, TaylorRange) and e.args[1] is not sp.oo:
            return f"taylor_dim({self.index(e.args[0], axes, sizes)}, {self.index(e.args[1], axes, sizes)})"
        raise PrinterError(f"unsupported subscript {e}")

    def _index_sum(self, e: sp.Add, axes, sizes) -> str:
        """A sum of integer terms the way one writes it, ``(H - 1)`` rather than SymPy's ``(-1 + H)``: the constant
        last, terms with a negative coefficient subtracted."""
        terms = sorted(e.args, key=lambda a: bool(a.is_Number))  # stable: SymPy's order otherwise
        signed = [("-", self.index(-a, axes, sizes)) if a.could_extract_minus_sign()
                  else ("+", self.index(a, axes, sizes)) for a in terms]
        first = ("-" if signed[0][0] == "-" else "") + signed[0][1]
        return "(" + first + "".join(f" {sign} {text}" for sign, text in signed[1:]) + ")"

    def _is_batched(self, e) -> bool:
        for node in sp.preorder_traversal(e):
            name = None
            if isinstance(node, sp.Indexed):
                name = str(node.base.label)
            elif isinstance(node, sp.Symbol):
                name = str(node)
            if name in self.tensors and self.tensors[name].batched:
                return True
        return False

    # -- entry point ---------------------------------------------------------------------------------------------
    def print(self, e, axes: tuple, sizes: dict, extents: dict | None = None) -> str:
        """``extents``: the axes' SymPy extents, which let a mixed-radix subscript print as a reshaped view."""
        with self._extents(extents):
            return self._p(sp.S(e), tuple(axes), sizes, 0)

    def print_tensor(self, e, axes: tuple, sizes: dict, extents: dict | None = None) -> str:
        """Like ``print``, but the code always evaluates to a tensor (a constant such as A = 0.5 I or a query of
        1 would otherwise print as a Python number, which has no ``.expand``)."""
        with self._extents(extents):
            return self._tensor(sp.S(e), tuple(axes), sizes)

    def print_split(self, split, axes: tuple, sizes: dict, new_sizes: dict) -> str:
        """The value over ``axes`` of an expression that ``ir.digits.split_axes`` rewrote over block axes (a run of
        axes replaced by (L // s, L % s)): printed over the block axes, expanded to their full shape and reshaped
        back (row-major, so the reshape is the flattening L = g s + j, then L's own digits)."""
        inner = self.print_tensor(split.expr, split.new_index, new_sizes, dict(zip(split.new_index, split.new_extents)))
        lead = [self.batch] if self._is_batched(split.expr) else []
        full = ", ".join(lead + [new_sizes[a] for a in split.new_index])
        old = ", ".join(lead + [sizes[a] for a in axes])
        return f"({inner}).expand({full}).reshape({old})"

    @contextmanager
    def _extents(self, extents):
        saved = self.axis_extents
        self.axis_extents = {**saved, **(extents or {})}
        try:
            yield
        finally:
            self.axis_extents = saved

    def _paren(self, code: str) -> str:
        return f"({code})"

    def _p(self, e, axes, sizes, prec) -> str:
        if e.is_Rational or e.is_Float:
            code = str(int(e)) if e.is_Integer else repr(float(e))
            # a negative number as the base of ** (precedence _POW_BASE) needs parentheses: Python reads -1 ** n as
            # -(1 ** n), which printed LegT's (-1)^(i - j + 1) as -1 for every i, j
            return f"({code})" if prec >= _POW_BASE and e.is_negative else code
        if e is sp.pi:
            return "math.pi"
        if isinstance(e, sp.Symbol):
            if e in axes:
                return f"axis({sizes[e]}, {axes.index(e)}, {len(axes)}, {self.device}, {self.dtype})"
            if e in self.dims:
                return self.dims[e]
            ref = self.tensors.get(str(e))
            if ref is None:
                raise PrinterError(f"unknown symbol {e}")
            if ref.batched and axes:
                return f"{ref.code}[:, :{', None' * len(axes)}]"
            return ref.code
        if isinstance(e, sp.Indexed):
            return self._indexed(e, axes, sizes)
        if isinstance(e, sp.Add):
            parts = []
            for k, a in enumerate(sorted(e.args, key=sp.default_sort_key)):
                code = self._p(a, axes, sizes, 1)
                if k and code.startswith("-"):
                    parts.append(f"- {code[1:]}")
                elif k:
                    parts.append(f"+ {code}")
                else:
                    parts.append(code)
            out = " ".join(parts)
            return f"({out})" if prec > 0 else out
        if isinstance(e, sp.Mul):
            return self._mul(e, axes, sizes, prec)
        if isinstance(e, sp.Pow):
            base, ex = e.args
            if not self._has_tensor(e) and not (e.free_symbols & set(axes)):
                return f"{self._p(base, axes, sizes, _POW_BASE)} ** {self._p(ex, axes, sizes, 3)}"
            stable = power_as_exp(e)
            if stable is not None:  # sigmoid(z)^(1/4) as exp(logsigmoid(z) / 4): no NaN gradient once it underflows
                return self._p(stable, axes, sizes, prec)
            norm = self._l2_norm(base, ex, axes, sizes) if ex in (sp.Rational(1, 2), -sp.Rational(1, 2)) else None
            if norm is not None:
                return norm
            if ex == sp.Rational(1, 2):
                return self._sqrt(base, axes, sizes)
            if ex == -sp.Rational(1, 2):
                return f"torch.rsqrt({self._tensor(base, axes, sizes)})"
            if ex == -1:
                return f"(1 / {self._p(base, axes, sizes, _POW_BASE)})"
            if ex == 2:
                b = self._p(base, axes, sizes, _POW_BASE)
                return f"({b} * {b})" if len(b) < 40 else f"{b} ** 2"
            return f"{self._p(base, axes, sizes, _POW_BASE)} ** {self._p(ex, axes, sizes, 3)}"
        if isinstance(e, sp.KroneckerDelta):
            a, b = (self.index(x, axes, sizes) for x in e.args)
            return f"({a} == {b}).to({self.dtype})"
        if isinstance(e, sp.Sum):
            return self._sum(e, axes, sizes)
        if isinstance(e, (sp.Max, sp.Min)):
            fn = "torch.maximum" if isinstance(e, sp.Max) else "torch.minimum"
            nums = [a for a in e.args if a.is_Number]
            rest = [a for a in e.args if not a.is_Number]
            out = self._tensor(rest[0], axes, sizes) if rest else None
            for a in rest[1:]:
                out = f"{fn}({out}, {self._p(a, axes, sizes, 0)})"
            for n in nums:
                kw = "min" if isinstance(e, sp.Max) else "max"
                out = f"torch.clamp({out}, {kw}={float(n)!r})"
            return out
        for cls, fn in _UNARY.items():
            if isinstance(e, cls):
                return f"{fn}({self._tensor(e.args[0], axes, sizes)})"
        if isinstance(e, (sp.floor, sp.Mod)):
            return f"({self.index(e, axes, sizes)}).to({self.dtype})"
        raise PrinterError(f"the torch printer does not know {type(e).__name__}: {e}")

    def _tensor(self, e, axes, sizes) -> str:
        """Print, making sure the result is a tensor (torch functions reject Python numbers)."""
        code = self._p(e, axes, sizes, 0)
        if not e.free_symbols or all(s in self.dims for s in e.free_symbols):
            return f"torch.as_tensor({code}, dtype={self.dtype}, device={self.device})"
        return code

    def _has_tensor(self, e) -> bool:
        return any(str(s) in self.tensors for s in e.free_symbols) or e.has(sp.Indexed)

    def _l2_norm(self, base, ex, axes, sizes) -> str | None:
        """``sqrt(sum(j, x^2))`` (one summed index, x real and depending on it) as ``l2_norm(x)`` (its inverse as
        ``inv_l2_norm(x)``), scaled by
        max |x| (dsfc.runtime.features): the plain form squares x first, 0 in fp32 once |x| < 1e-19 (DeltaNet's
        ``k / sqrt(sum(k^2))`` was then 0 / 0 where float64's is a unit vector) and inf above 1.8e19. Same value
        and gradient otherwise; an exactly-zero x is still 0 (the spec's own 0 / 0 stays NaN)."""
        if not isinstance(base, sp.Sum) or len(base.limits) != 1:
            return None
        var, lo, hi = base.limits[0]
        body = base.function
        if lo != 0 or not (isinstance(body, sp.Pow) and body.exp == 2) or var not in body.base.free_symbols:
            return None
        if not body.base.is_real:
            return None
        fn = "l2_norm" if ex > 0 else "inv_l2_norm"
        self.helpers.add(fn)
        body_sizes = {**sizes, var: self.size(hi + 1)}
        return f"{fn}({self._tensor(body.base, axes + (var,), body_sizes)})"

    def _sqrt(self, base, axes, sizes) -> str:
        if not base.free_symbols or all(s in self.dims for s in base.free_symbols):
            return f"math.sqrt({self._p(base, axes, sizes, 0)})"
        return f"torch.sqrt({self._tensor(base, axes, sizes)})"

    def _mul(self, e, axes, sizes, prec) -> str:
        coeff, rest = e.as_coeff_Mul()
        num, den = [], []
        for f in sp.Mul.make_args(rest):
            if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0 and f.exp != -sp.Rational(1, 2):
                den.append(f.base if f.exp == -1 else sp.Pow(f.base, -f.exp))
            else:
                num.append(f)
        num.sort(key=sp.default_sort_key)
        parts = [self._p(f, axes, sizes, 2) for f in num]
        sign = ""
        if coeff == -1:
            sign = "-"
        elif coeff != 1:
            parts.insert(0, self._p(abs(coeff), axes, sizes, 2) if coeff > 0 else self._p(-coeff, axes, sizes, 2))
            sign = "-" if coeff < 0 else ""
        out = " * ".join(parts) if parts else "1"
        for d in den:
            out += f" / {self._p(d, axes, sizes, 3)}"
        out = sign + out if not sign or len(parts) + len(den) <= 1 else f"-({out})"
        return f"({out})" if prec > 2 or (prec > 0 and sign) else out

    def _indexed(self, e: sp.Indexed, axes, sizes) -> str:
        name = str(e.base.label)
        ref = self.tensors.get(name)
        if ref is None:
            raise PrinterError(f"unknown tensor {name}")
        subs = list(e.indices)
        lead = ":, :, " if ref.batched else ""
        if all(isinstance(s, sp.Symbol) and s in axes for s in subs) and len(set(subs)) == len(subs):
            return self._as_view(self._narrowed(ref, subs, sizes), ref, [axes.index(s) for s in subs], axes)
        flat = self._flat_read(ref, subs, axes, sizes) if axes else None
        if flat is not None:
            return flat
        block = self._block_read(ref, subs, axes, sizes) if axes else None
        if block is not None:
            return block
        selected = self._selected(ref, subs, axes, sizes) if axes else None
        if selected is not None:
            return selected
        idx = ", ".join(self.index(s, axes, sizes) for s in subs)
        # subscripts free of the axes (integers, dims: u[d - 1]) pick one entry, which broadcasts over every axis;
        # only ``is_Integer`` was tested here, and a dim subscript then lost the axes' size-1 dims ([B, T] where
        # [B, T, H] was expanded: a scalar gate sigmoid(u[d - 1]) of a chunked scan crashed)
        if not axes or not any(self._axis_free(s, axes) is False for s in subs):
            return f"{ref.code}[{lead}{idx}]" + (f"[:, :{', None' * len(axes)}]" if ref.batched and axes else "")
        return f"{ref.code}[{lead}{idx}]"

    @staticmethod
    def _axis_free(s, axes) -> bool:
        """True when subscript ``s`` uses none of ``axes`` (an integer or an expression of dims only)."""
        return not (sp.S(s).free_symbols & set(axes))

    def _narrowed(self, ref: TensorRef, subs, sizes) -> str:
        """``ref``'s code, cut to the ranges of the index symbols that subscript it. An index over fewer values than
        its axis (``y[h, b + 0]`` with b in range(V) into an axis of V + 1, which SymPy folds to ``y[h, b]``; the
        checker accepts such compound subscripts inside the axis) reads the axis' first entries only: printed as
        the whole tensor it broadcast V + 1 entries against V, or gave the result the wrong shape."""
        code = ref.code
        if len(ref.extents) != len(subs):
            return code
        off = 2 if ref.batched else 0
        for k, (s, extent) in enumerate(zip(subs, ref.extents)):
            size = sizes.get(s)
            if size is None or sp.S(extent).has(TaylorRange):  # a feature range is sized by the compiler
                continue
            if size != self.size(extent):
                code = f"{code}.narrow({off + k}, 0, {size})"
        return code

    def _as_view(self, code, ref: TensorRef, pos: list[int], axes) -> str:
        """``code`` (a tensor whose spec dims are, in order, the axes at positions ``pos``) as a view over ``axes``:
        permuted into axis order, with ``None`` for the axes it lacks."""
        order = sorted(range(len(pos)), key=lambda k: pos[k])
        if order != list(range(len(pos))):
            off = 2 if ref.batched else 0
            perm = ([0, 1] if ref.batched else []) + [off + k for k in order]
            code = f"{code}.permute({', '.join(map(str, perm))})"
        present = sorted(pos)
        if present == list(range(len(axes))):
            return code
        if ref.batched:
            sl = ", ".join(":" if k in present else "None" for k in range(len(axes)))
            return f"{code}[:, :, {sl}]"
        # trailing None dims after the last present axis are needed; leading ones broadcast
        return self._static_view(code, axes, present)

    def _selected(self, ref: TensorRef, subs, axes, sizes) -> str | None:
        """A tensor entry whose every subscript is an integer, or a function of one axis that no other subscript
        uses (``B[h // R, i]``, ``w[n - 1 - i]``, ``m[0, i]``), printed as basic indexing plus one ``index_select``
        per non-trivial subscript, then a view; None for any other entry (a general gather). A gather with index grids
        has an accumulating ``index_put`` as its backward, over every element (on CUDA it sorts the indices);
        ``index_select``'s is an ``index_add`` along one dim. SSD's ``C[h // R, i]`` head broadcast, forward and
        backward at B=8, T=1024, H=16, n=64 on 2 CPU cores: 54 ms as a gather, 20 ms as ``index_select``. (On an
        H100 the generated SSD module took 15.9 ms forward+backward with the gather, its kernels 3.7 ms.)"""
        if all(self._axis_free(s, axes) for s in subs):
            return None
        owners = []
        for s in subs:
            if self._axis_free(s, axes):  # an integer or a dim expression (w[n - 1, i]): basic indexing
                if not all(d in self.dims for d in s.free_symbols):
                    return None
                owners.append(None)
                continue
            free = s.free_symbols & set(axes)
            if len(free) != 1 or not all(d in self.dims for d in s.free_symbols - free):
                return None
            owners.append(next(iter(free)))
        kept = [a for a in owners if a is not None]
        if len(set(kept)) != len(kept):
            return None
        code = ref.code
        if any(a is None for a in owners):  # integer subscripts: basic indexing drops those dims (a view)
            lead = ":, :, " if ref.batched else ""
            picks = ", ".join(self.index(s, axes, sizes) if a is None else ":" for s, a in zip(subs, owners))
            code = f"{code}[{lead}{picks}]"
        off = 2 if ref.batched else 0
        for dim, (s, a) in enumerate((s, a) for s, a in zip(subs, owners) if a is not None):
            if s != a:
                code = f"{code}.index_select({off + dim}, {self._dim_index(s, a, sizes)})"
        return self._as_view(code, ref, [axes.index(a) for a in kept], axes)

    def _dim_index(self, s, a, sizes) -> str:
        """The index tensor of subscript ``s`` over the one axis ``a`` (dims only otherwise): made once per module
        and device when the printer has an ``index_owner`` (per call it was an arange and the subscript's ops)."""
        code = self.index(s, (a,), {a: sizes[a]})
        if self.index_owner is None:
            return code
        dims = sorted({self.dims[d] for d in s.free_symbols if d in self.dims})
        key = f"({code!r}, {', '.join([sizes[a], *dims])})"
        return f"cached_index({self.index_owner}, {key}, {self.device}, lambda: {code})"

    def _flat_read(self, ref: TensorRef, subs, axes, sizes) -> str | None:
        """A tensor read through one axis m as its row-major flattening, ``u[m // P, m % P]`` over m in [0, H * P)
        for u [H, P] (in general subscript i = (m // prod(extents after i)) % extent_i, the first without the %),
        printed as ``flatten`` and a view; None for anything else. As a gather it was an index-grid copy whose
        backward is an accumulating ``index_put`` over every element (SSD's projections read u this way three
        times). Conservative: m's extent must print exactly as the product of the tensor's extents."""
        r = len(subs)
        if r < 2 or len(ref.extents) != r:
            return None
        free = set().union(*(sp.S(x).free_symbols for x in subs)) & set(axes)
        if len(free) != 1:
            return None
        m = next(iter(free))
        if sizes.get(m) != self.size(sp.Mul(*ref.extents)) and not (
                self.same_extent is not None and m in self.axis_extents
                and self.same_extent(self.axis_extents[m], sp.Mul(*ref.extents))):
            return None  # (mLSTM's sum(e: E, .. q[e // DH, e % DH]) with dim E = H * DH: E prints as E, not H * DH)
        for i, (x, extent) in enumerate(zip(subs, ref.extents)):
            inner = sp.Mul(*ref.extents[i + 1:])
            digit = sp.floor(m / inner) if i < r - 1 else m
            # the first digit may come with or without its (redundant) % extent
            wants = (sp.Mod(digit, extent), digit) if i == 0 else (sp.Mod(digit, extent),)
            if not any(sp.simplify(x - want) == 0 for want in wants):
                return None
        off = 2 if ref.batched else 0
        code = f"{ref.code}.flatten({off}, {off + r - 1})"
        return self._as_view(code, TensorRef(code, 1, ref.batched), [axes.index(m)], axes)

    def _block_read(self, ref: TensorRef, subs, axes, sizes) -> str | None:
        """A tensor read where every subscript is a bare axis or a row-major mixed-radix combination of bare axes
        that tiles its tensor axis exactly (``x[bw*g + i]`` over g < nh, i < bw, x's axis W = nh bw), all the axes
        distinct: printed as ``unflatten`` of those tensor axes into the digits, then a view. As a gather it
        materialised one entry per combination of the axes (RG-LRU's block-diagonal gates: [B, T, W, bw], bw times
        the input) and its backward was an accumulating ``index_put``. None for anything else."""
        if self.radix is None or len(ref.extents) != len(subs):
            return None
        known = {a: self.axis_extents[a] for a in axes if a in self.axis_extents}
        groups = []
        for s, extent in zip(subs, ref.extents):
            if isinstance(s, sp.Symbol) and s in axes:
                if sizes.get(s) != self.size(extent):
                    return None  # a narrowed read: the general paths handle it
                groups.append([s])
                continue
            digits = self.radix(s, known, extent) if s.free_symbols & set(known) else None
            if digits is None:
                return None
            groups.append([x for _, _, x in digits])
        flat = [x for g in groups for x in g]
        if len(set(flat)) != len(flat) or all(len(g) == 1 for g in groups):
            return None
        code, off = ref.code, (2 if ref.batched else 0)
        for k in reversed(range(len(groups))):  # from the last tensor axis: the earlier dims keep their positions
            if len(groups[k]) > 1:
                code = f"{code}.unflatten({off + k}, ({', '.join(sizes[x] for x in groups[k])}))"
        return self._as_view(code, TensorRef(code, len(flat), ref.batched), [axes.index(x) for x in flat], axes)

    def _static_view(self, code, axes, present) -> str:
        first = present[0]
        if present == list(range(first, len(axes))):  # leading axes broadcast: nothing to add (was a no-op [:])
            return code
        sl = ", ".join(":" if k in present else "None" for k in range(first, len(axes)))
        return f"{code}[{sl}]"

    def _sum(self, e: sp.Sum, axes, sizes) -> str:
        with self._extents({var: hi + 1 for var, _, hi in e.limits}):  # a summed index can be a digit of a read
            return self._sum_over(e, axes, sizes)

    def _sum_over(self, e: sp.Sum, axes, sizes) -> str:
        # SymPy merges nested sums into one Sum with several limits; all are bound at once
        unused = [lim for lim in e.limits if lim[0] not in e.function.free_symbols]
        if unused:  # sum(k: n, x) with x free of k is n * x: no [.., n] broadcast to add up (n may be huge)
            count = sp.Mul(*(hi - lo + 1 for _, lo, hi in unused))
            used = [lim for lim in e.limits if lim not in unused]
            return self._p(count * (sp.Sum(e.function, *used) if used else e.function), axes, sizes, 0)
        svars, body_sizes = [], dict(sizes)
        for var, lo, hi in e.limits:
            if lo != 0:
                raise PrinterError("sums start at 0")
            svars.append(var)
            body_sizes[var] = self.size(hi + 1)
        body_axes = axes + tuple(svars)
        fs = sp.Mul.make_args(e.function)
        coeff = [f for f in fs if f.is_Number]
        tens = [f for f in fs if not f.is_Number]
        # Every factor must be a tensor over axes it really has: a plain subscript of a tensor, or a composite
        # (a nested sum, a function of a let) that is printed first over its own free axes and then handed to
        # einsum as one operand. Without the composite case a low-rank projection W2 (W1 u) would broadcast a
        # [B, T, d, r] product before summing (measured: 30 ms of a 60 ms S6 forward at d=256, r=16).
        operands = [self._einsum_operand(f, body_axes, body_sizes) for f in tens]
        if tens and any(op is None for op in operands):
            # A factor einsum cannot take alone (a block mask such as (e // bs == (h*DH + b) // bs), a grid) is
            # folded with the other per-step-constant factors into one operand over their own axes, printed
            # without batch or time: mLSTM's block-diagonal value projection otherwise broadcast a
            # [B, T, H, DH, E] product before summing (1 GB at T = 2048, E = 256, and ~7 s of its backward).
            static = [f for f in tens if not self._is_batched(f)]
            moving = [f for f in tens if self._is_batched(f)]
            # (a sum of static factors alone stays a broadcast sum: it is small and has no [B, T] to avoid)
            folded = self._einsum_operand(sp.Mul(*static), body_axes, body_sizes) if static and moving else None
            if folded is not None:
                tens = moving + [sp.Mul(*static)]
                operands = [self._einsum_operand(f, body_axes, body_sizes) for f in moving] + [folded]
        if (tens and all(op is not None for op in operands) and len(tens) <= 4
                and all(any(v in op[1] for op in operands) for v in svars)):
            return self._einsum(coeff, operands, axes, tuple(svars))
        body = self._p(e.function, body_axes, body_sizes, 0)
        k = len(svars)
        full = ", ".join(body_sizes[v] for v in svars)
        # expand so that summed axes the body does not depend on still count their extent
        return f"({body}).expand(*({body}).shape[: ({body}).dim() - {k}], {full}).sum(dim={tuple(range(-k, 0))})" \
            if any(v not in e.function.free_symbols for v in svars) else \
            f"({body}).sum(dim={tuple(range(-k, 0)) if k > 1 else -1})"

    def _depends(self, e, var) -> bool:
        return var in e.free_symbols

    def _einsum_operand(self, f, body_axes, body_sizes):
        """(code, axes, batched) of one factor of a summed product, or None when einsum cannot take it."""
        if isinstance(f, sp.Indexed) and all(isinstance(s, sp.Symbol) and s in body_axes for s in f.indices):
            if len(set(f.indices)) != len(f.indices):
                return None  # a diagonal read such as W[k, k]: einsum letters cannot repeat within one operand
            ref = self.tensors[str(f.base.label)]
            return self._narrowed(ref, f.indices, body_sizes), tuple(f.indices), ref.batched
        if not self._has_tensor(f):
            return None  # grids and dims: the broadcast form prints them more simply
        own = tuple(s for s in body_axes if s in f.free_symbols)
        if not own:
            return None
        code = self._p(f, own, {s: body_sizes[s] for s in own}, 0)
        return f"({code})", own, self._is_batched(f)

    def _einsum(self, coeff, operands, axes, svars) -> str:
        all_axes = axes + tuple(svars)
        letter = {s: _LETTERS[k] for k, s in enumerate(all_axes)}
        specs, ops, batched = [], [], False
        for code, own, is_batched in operands:
            batched |= is_batched
            specs.append(("zt" if is_batched else "") + "".join(letter[s] for s in own))
            ops.append(code)
        used = [s for s in axes if any(s in own for _, own, _ in operands)]
        out = ("zt" if batched else "") + "".join(letter[s] for s in used)
        code = self._projection(operands, used, svars)
        if code is None:
            code = f"torch.einsum(\"{','.join(specs)}->{out}\", {', '.join(ops)})"
        if coeff:
            code = f"{self._p(sp.Mul(*coeff), axes, {}, 2)} * {code}"
        present = [axes.index(s) for s in used]
        if len(used) != len(axes):
            if batched:
                sl = ", ".join(":" if k in present else "None" for k in range(len(axes)))
                code = f"({code})[:, :, {sl}]"
            elif present:
                code = f"({code}){self._static_suffix(axes, present)}"
        return code

    @staticmethod
    def _projection(operands, used, svars) -> str | None:
        """A projection ``sum(j, W[i, j] * x[..., j])`` of a batched operand by a static matrix as ``F.linear`` /
        ``torch.matmul`` (one ``mm``), or None for any other sum. ``torch.einsum`` spent 12 aten ops (permutes,
        views, a ``bmm``) on the same product: 18 us against 3.5 us on CPU, four of them per S6 decoding step."""
        if len(operands) != 2 or len(svars) != 1:
            return None
        (x, xo, xb), (w, wo, wb) = sorted(operands, key=lambda op: not op[2])  # the batched operand first
        j = svars[0]
        if not xb or wb or len(wo) != 2 or j not in wo or not xo or xo[-1] != j or j in xo[:-1]:
            return None
        i = wo[0] if wo[1] == j else wo[1]
        if i in xo or list(used) != [*xo[:-1], i]:
            return None
        return f"F.linear({x}, {w})" if wo == (i, j) else f"torch.matmul({x}, {w})"

    def _static_suffix(self, axes, present) -> str:
        first = present[0]
        sl = ", ".join(":" if k in present else "None" for k in range(first, len(axes)))
        return f"[{sl}]"
