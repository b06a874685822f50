"""``dsfc plot``: one figure per spec with its kernel form, the eigenvalues of A_t over time, and its structure facts.

Three panels, computed from the generated module at small dims on one random input ``u`` ``[1, T, d]`` (float64):

1. ``|Phi|`` of the kernel (convolution) form ``y = Phi u`` (``kernel_form``), log colour scale, with the T x T time
   blocks outlined. Phi is lower block-triangular: the blocks above the diagonal are exactly zero (shown blank).
2. ``|lambda|`` of every A_t (``torch.linalg.eigvals`` of the dense ``dsf_matrices``) against t. For a large state
   only some time steps and some eigenvalues (evenly spaced in sorted order) are drawn.
3. The state size N (symbolic, at the default dims and at the plotted dims), recurrent-state bytes, the A class and
   the eigenvalue bound of the :class:`~dsfc.analysis.report.StructureReport`.

Rendering uses matplotlib's Agg canvas directly (no pyplot, no display). The PNG is written atomically.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch

from .check import load_module, small_dims
from .pipeline import CompileResult
from .codegen.plan import constructor_kwargs

MAX_EIG_N = 256  # above this state size, eigenvalues are computed for only MAX_EIG_STEPS time steps
MAX_EIG_STEPS = 8
MAX_EIG_TRACES = 48  # eigenvalues drawn per time step (evenly spaced in sorted order)
MAX_DENSE_BYTES = 1 << 30  # refuse to materialise dense A_t above this (float64)


class PlotError(ValueError):
    """A bad plot request (unknown dim, non-integer derived dim, a state too large for dense matrices)."""


@dataclass
class PlotData:
    """What the figure shows; computed separately from the drawing so that tests can check the numbers."""

    model: str
    dims: dict[str, int]  # free dims the module was built with
    T: int
    d_in: int  # width of the driven input (B's columns)
    d_out: int  # width of the DSF output y (C's rows), before any post-ops
    n_state: int  # N at the plotted dims
    phi: torch.Tensor  # [T*p, T*d] (batch 0)
    eig_steps: list[int]  # time steps whose eigenvalues were computed
    eig_abs: torch.Tensor  # [len(eig_steps), N] |lambda|, sorted descending per step
    seed: int = 0


def resolve_dims(result: CompileResult, overrides: dict[str, int] | None) -> dict[str, int]:
    """small_dims(result) with user overrides; every free dim named must exist and every derived dim be a positive
    integer."""
    sym = result.sym
    if result.report.state_size_default is None:
        raise PlotError(f"{result.sym.model}: the state is infinite (a feature range of exp), so there is no fixed "
                        "N x N transition to plot; see dsf_matrices(u) for the slot form of a short sequence")
    return override_dims(result, small_dims(result), overrides)


def override_dims(result: CompileResult, base: dict[str, int], overrides: dict[str, int] | None) -> dict[str, int]:
    """``base`` with the user's ``--dims`` overrides; PlotError naming an unknown dim, a dim < 1 or a derived dim that
    is not a positive integer at the result (``dsfc plot`` and ``dsfc bench``)."""
    sym = result.sym
    dims = dict(base)
    for k, v in (overrides or {}).items():
        if k not in sym.free_dims:
            derived = " (a derived dim: set the free dims it is computed from)" if k in sym.dim_defs else ""
            raise PlotError(f"unknown dim '{k}'{derived}; {sym.model} has dims {', '.join(sym.free_dims)}")
        if v <= 0:
            raise PlotError(f"dim {k} must be positive, got {v}")
        dims[k] = v
    try:
        values = sym.dim_values(dims)
    except ValueError as exc:  # a // that does not divide exactly
        raise PlotError(f"{exc}; choose dims that divide exactly") from None
    for k, v in values.items():
        if not (float(v).is_integer() and v > 0):
            raise PlotError(f"derived dim {k} = {sym.dim_defs.get(k)} is {v} at dims {dims}; "
                            "choose dims that divide exactly")
    if overrides:
        from .check import spec_errors_at

        problems = spec_errors_at(result, dims)
        if problems is not None:  # a subscript leaving its range there: the module would index past a tensor
            raise PlotError(f"{sym.model} is not valid at the dims {dims}:\n{problems}")
    return dims


def compute(result: CompileResult, T: int = 32, dims: dict[str, int] | None = None, seed: int = 0) -> PlotData:
    if T < 1:
        raise PlotError(f"T must be at least 1, got {T}")
    dims = resolve_dims(result, dims)
    module = load_module(result, name=f"dsfc_plot_{result.module_name}")
    cls = getattr(module, result.plan.model)
    torch.manual_seed(seed)
    from .check import MAX_CHECK_ELEMENTS, param_elements

    n_params = param_elements(result.sym, result.sym.dim_values(dims))
    if n_params > MAX_CHECK_ELEMENTS:
        raise PlotError(f"the parameters hold {n_params:.3g} numbers at dims {dims}; use smaller --dims (a size "
                        "that is not a free dim cannot be shrunk)")
    try:
        model = cls(**constructor_kwargs(dims), dtype=torch.float64)
    except ValueError as exc:  # the generated constructor checks divisibility of derived dims
        raise PlotError(f"dims {dims}: {exc}") from None
    d_in, N = model._in_features(), model._state_size()
    if T * N * N * 8 > MAX_DENSE_BYTES:
        raise PlotError(f"N = {N} at dims {dims} needs {T * N * N * 8 / 2**30:.1f} GiB for the dense A_t of {T} steps; "
                        f"use smaller --dims or --T")
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(1, T, d_in, generator=g, dtype=torch.float64)
    with torch.no_grad():  # Phi's block sizes from one step: --T 100000 was an internal error (a 2 TB allocation)
        _, B1, C1, _ = model.dsf_matrices(u[:, :1])
    phi_bytes = T * C1.shape[-2] * T * B1.shape[-1] * 8
    if phi_bytes > MAX_DENSE_BYTES:
        raise PlotError(f"the kernel form Phi of {T} steps is [{T} x {C1.shape[-2]}, {T} x {B1.shape[-1]}] at dims "
                        f"{dims}, {phi_bytes / 2**30:.1f} GiB; use a smaller --T (or --dims)")
    with torch.no_grad():
        # detached: a matrix that is a parameter as it stands (a time-invariant A = W) comes back as a view of it,
        # which still requires grad under no_grad (numpy() then raised: an internal error of dsfc plot)
        A, B, C, D = (x.detach() for x in model.dsf_matrices(u))
        phi = kernel_form(model, u, result.sym.readout)[0].detach()
    for name, x in (("A_t", A), ("Phi", phi)):
        if not bool(torch.isfinite(x).all()):
            raise PlotError(f"{name} overflows float64 at dims {dims}, T = {T} (inf / NaN entries): the spec's A grows "
                            "the state without bound (see `dsfc analyze`, eigenvalues); try a smaller --T")
    if N <= MAX_EIG_N:
        steps = list(range(T))
    else:
        k = min(T, MAX_EIG_STEPS)
        steps = sorted({round(i * (T - 1) / max(k - 1, 1)) for i in range(k)})
    eig = torch.linalg.eigvals(A[0, steps]).abs()  # [steps, N]
    eig = eig.sort(dim=-1, descending=True).values
    # Phi's blocks are p x (driven width): B multiplies the driven input (the raw input, or a 'drive' let)
    return PlotData(result.sym.model, dims, T, B.shape[-1], C.shape[-2], N, phi, steps, eig, seed)


def kernel_form(model, u: torch.Tensor, readout: str = "post") -> torch.Tensor:
    """The module's ``kernel_form`` (every generated module has one); kernel_matrix of dsf_matrices as a fallback."""
    if hasattr(model, "kernel_form"):
        return model.kernel_form(u)
    from .runtime.kernel_form import kernel_matrix

    return kernel_matrix(*model.dsf_matrices(u), pre_readout=readout == "pre")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def facts_lines(result: CompileResult, data: PlotData) -> list[tuple[str, str]]:
    rep = result.report
    a_class = (rep.a_kind + (" (I - rank-1 blocks)" if rep.a_low_rank else "")
               + (", input-dependent" if rep.a_time_varying else ""))
    return [
        ("N (symbolic)", f"{rep.state_size}  [{', '.join(rep.state_shape)}]"),
        ("N (default dims)", rep.state_size_text.split(" = ")[-1]),
        ("N (plotted dims)", f"{data.n_state:,}  at {', '.join(f'{k}={v}' for k, v in data.dims.items())}"),
        ("state bytes", f"{rep.state_bytes_default:,} ({_fmt_bytes(rep.state_bytes_default)}, fp32/seq, default dims)"),
        ("A class", a_class),
        ("eigenvalues", rep.eigen_bound + (f"  {rep.eigen_interval}" if rep.eigen_interval else "")),
        ("  why", rep.eigen_reason),
        ("B u / C", f"{rep.b_form} / {rep.c_form}"),
        ("coupling A/B", ", ".join(rep.coupling) or "none"),
        ("family", rep.family),
    ]


def draw(result: CompileResult, data: PlotData, dpi: int = 80):
    """The matplotlib Figure (Agg canvas attached, nothing shown)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 5.2), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax_phi, ax_eig, ax_txt = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.1, 1.0, 1.2]})
    dims = ", ".join(f"{k}={v}" for k, v in data.dims.items())
    fig.suptitle(f"{data.model} ({Path(result.spec.path).name}) at {dims}, T = {data.T}, "
                 f"random input (seed {data.seed})", fontsize=11)

    # 1. |Phi|, log colour scale; exact zeros (above the block diagonal) are masked and drawn blank
    mag = data.phi.abs().numpy()
    nz = mag[mag > 0]
    masked = np.ma.masked_where(mag <= 0, mag)
    if nz.size:
        hi = float(nz.max())
        lo = max(float(nz.min()), hi * 1e-12)
        im = ax_phi.imshow(masked, norm=LogNorm(vmin=lo, vmax=hi), cmap="viridis", aspect="auto",
                           interpolation="nearest")
        fig.colorbar(im, ax=ax_phi, shrink=0.85, label="|Phi| (log scale)")
    else:  # a blank panel with no colour bar read as a failed plot (ReBased at K = 1: its LayerNorm'd q is 0)
        ax_phi.imshow(np.zeros_like(mag), cmap="Greys", aspect="auto")
        ax_phi.text(0.5, 0.5, "Phi = 0 exactly: y is 0 at these dims\nand this input",
                    transform=ax_phi.transAxes, ha="center", va="center", fontsize=9)
    p, d, T = data.d_out, data.d_in, data.T
    step = max(1, T // 16)  # at most ~16 outlined blocks per axis
    for t in range(step, T, step):
        ax_phi.axhline(t * p - 0.5, color="0.75", lw=0.4)
        ax_phi.axvline(t * d - 0.5, color="0.75", lw=0.4)
    ax_phi.set_title(f"kernel form y = Phi u: |Phi|  [{T}*{p} x {T}*{d}]", fontsize=10)
    ticks = list(range(0, T, max(1, T // 8)))
    ax_phi.set_xticks([t * d + (d - 1) / 2 for t in ticks], [str(t) for t in ticks])
    ax_phi.set_yticks([t * p + (p - 1) / 2 for t in ticks], [str(t) for t in ticks])
    sym = result.sym
    driven = getattr(sym, "driven", None)
    driven = sym.input.name if driven is None else driven.name
    ax_phi.set_xlabel(f"input time j (blocks of the driven input {driven}, width {d})")
    before_posts = ", before post-ops" if getattr(sym, "posts", ()) else ""
    ax_phi.set_ylabel(f"output time i (blocks of y, width {p}{before_posts})")

    # 2. |eigenvalues of A_t| over time
    eig = data.eig_abs.numpy()
    N = eig.shape[1]
    idx = np.unique(np.linspace(0, N - 1, min(N, MAX_EIG_TRACES)).round().astype(int))
    steps = np.asarray(data.eig_steps)
    for k in idx:
        ax_eig.plot(steps, eig[:, k], color="tab:blue", lw=0.7, alpha=0.5, marker="." if len(steps) <= 8 else None)
    ax_eig.plot(steps, eig[:, 0], color="tab:red", lw=1.3, label="max |lambda|")
    ax_eig.plot(steps, eig[:, -1], color="tab:green", lw=1.3, label="min |lambda|")
    ax_eig.axhline(1.0, color="k", ls="--", lw=0.8, label="|lambda| = 1", zorder=0)
    if eig.size and float(eig.max() - eig.min()) < 1e-9:
        ax_eig.text(0.5, 0.5, f"all N = {N} eigenvalues have |lambda| = {float(eig[0, 0]):.6g} at every t",
                    transform=ax_eig.transAxes, ha="center", va="center", fontsize=9)
    top = max(1.05, float(eig.max()) * 1.05) if eig.size else 1.05
    ax_eig.set_ylim(min(0.0, float(eig.min())) if eig.size else 0.0, top)
    ax_eig.set_xlim(-0.5, T - 0.5)
    shown = f"{len(idx)} of N = {N}" if len(idx) < N else f"all N = {N}"
    sub = "" if len(steps) == T else f", {len(steps)} of {T} steps"
    ax_eig.set_title(f"|eigenvalues of A_t| ({shown}{sub}); bound {result.report.eigen_bound}", fontsize=10)
    ax_eig.set_xlabel("time t")
    ax_eig.set_ylabel("|lambda(A_t)|")
    ax_eig.legend(loc="lower left", fontsize=8)
    ax_eig.grid(alpha=0.3)

    # 3. structure facts (StructureReport)
    ax_txt.axis("off")
    ax_txt.set_title("structure (dsfc analyze)", fontsize=10)
    lines = []
    for k, v in facts_lines(result, data):
        wrapped = textwrap.wrap(v, 40, break_on_hyphens=False) or [""]
        lines.append(f"{k:<17}{wrapped[0]}")
        lines.extend(" " * 17 + w for w in wrapped[1:])
    ax_txt.text(0.0, 1.0, "\n".join(lines), family="monospace", fontsize=9, va="top", ha="left",
                transform=ax_txt.transAxes)
    return fig


def image_format(out: Path) -> str:
    """The image format ``out``'s suffix names: png, or another one matplotlib writes (pdf, svg, ...).

    ``-o plot.pdf`` wrote PNG bytes into a file named .pdf and ``-o plot.txt`` a PNG named .txt, without a word;
    ``-o some_dir`` failed after the whole plot was computed with "Is a directory" ("Device or resource busy" for
    ``-o .``). Raises PlotError for those, before anything is computed."""
    if out.is_dir():
        raise PlotError(f"{out} is a directory; give a file name, e.g. {out / 'plot.png'}")
    fmt = out.suffix[1:].lower()
    from matplotlib.figure import Figure

    supported = sorted(Figure().canvas.get_supported_filetypes())
    if fmt not in supported:
        got = f"suffix {out.suffix!r}" if fmt else "no suffix"
        raise PlotError(f"{out} has {got}; the output's suffix picks the image format, one of "
                        f"{', '.join('.' + s for s in supported)}")
    return fmt


def save_png(fig, out: Path, fmt: str = "png") -> None:
    """Render to a temporary file next to ``out`` and os.replace it: no half-written image on failure (a FIFO or
    another special file is written directly, a symlink's target replaced: ``replace_target``)."""
    from .codegen.emit import new_file_mode, replace_target

    target = replace_target(out)
    if target is None:
        with open(out, "wb") as f:
            fig.savefig(f, format=fmt)
        return
    out = target
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=str(out.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt)
        os.chmod(tmp, new_file_mode(out))  # mkstemp creates 0600: an existing image's mode, else the umask's
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def plot_spec(result: CompileResult, out: str | Path, T: int = 32, dims: dict[str, int] | None = None,
              seed: int = 0, dpi: int = 80) -> Path:
    out = Path(out)
    fmt = image_format(out)  # before the compute: a bad -o is refused at once
    data = compute(result, T=T, dims=dims, seed=seed)
    fig = draw(result, data, dpi=dpi)
    save_png(fig, out, fmt)
    return out
