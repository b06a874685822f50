"""``render_catalog(spec_paths) -> str``: docs/catalog.md, generated from the specs and the analysis.

Everything in the catalog is computed from the specs (header comments, spec text, ``StructureReport`` and the SymPy
DSF form of ``Structure``) except the per-model notes "What the DSF says", which are written by hand in
:data:`NOTES` from the maths reference (dsf-models.md, sections 2, 3 and 5). ``dsfc catalog`` writes the file;
tests/e2e/test_catalog_doc.py fails when the committed docs/catalog.md differs from a fresh render, so re-run
``dsfc catalog`` after changing a spec or the analysis.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import sympy as sp

from .analysis.report import StructureReport
from .analysis.structure import Structure
from .ir.symspec import SymSpec
from .lang.errors import SpecErrors
from .lang.parse import parse_file
from .pipeline import analyse, compile_spec, display_path

# What the DSF literature says about each model, keyed by spec stem (hand-written; markdown).
NOTES: dict[str, str] = {
    "s6": (
        "S6 is diagonal with `n` distinct rates per channel: eigenvalues `exp(-Delta_c exp(A_log[c, j]))` in (0, 1). "
        "`Delta_c` appears in both A and B, the coupling the paper calls S6's *recurrent normalisation*: the weight "
        "of `u_j` at time `i` is `Delta_j prod_(l=j+1..i) exp(-Delta_l A)`, a product of per-step factors, where "
        "attention divides by `eta_i` at output time. B u is a per-channel outer product `(Delta . u) (x) b` and "
        "`C = I (x) c^T`, the same shapes as linear attention's `phi(k) (x) v` and `I (x) phi(q)^T` (maths doc 3.4)."
    ),
    "ssd": (
        "Mamba-2 SSD is S6 with one scalar decay per head, `A = exp(-Delta_h exp(A_log[h])) I`, eigenvalues in "
        "(0, 1). Its input is the outer product `(Delta x) (x) B`, the attention analogue with `k <-> B`, `v <-> x`, "
        "`q <-> C`, and `Delta_h` couples A and B. It equals normalised linear attention only if `Delta_i = 1/eta_i` "
        "and `exp(-Delta_i A) = eta_(i-1)/eta_i` at every step, which forces `Delta_(i-1) = Delta_i exp(Delta_i A)`: "
        "input-dependent softplus steps do not satisfy that in general."
    ),
    "linear_attention": (
        "Unnormalised linear attention has `A = I`: every eigenvalue is exactly 1, the system is only marginally "
        "stable and `||h||` can grow like `O(t)`. B u is the outer product `phi(k) (x) v` (`W_V` mixes the input "
        "channels) and `C = I (x) phi(q)^T`, with no A/B coupling. Dropping the normaliser `eta` is what removes both "
        "the coupling and every eigenvalue other than 1; compare `linear_attention_normalized`."
    ),
    "linear_attention_normalized": (
        "With the running normaliser `z_t = z_(t-1) + phi(k_t)`, `eta_t = phi(q_t)^T z_t`, the paper's DSF form is "
        "`A_t = (eta_(t-1)/eta_t) I` per head and `B_t = phi(k_t) v_t^T / eta_t`: `eta` couples A and B. The "
        "eigenvalues `eta_(t-1)/eta_t` are positive but not bounded by 1 a priori (the paper reports [0, 1] "
        "empirically). Normalising here means dividing at output time by a quantity that needs every past key, so it "
        "costs one extra vector `z` per head of carried state, unlike S6's recurrent normalisation through `Delta`."
    ),
    "fox": (
        "The Forgetting Transformer is softmax attention (`softmax_attention`) with a forget gate `f_t` in (0, 1) "
        "per head: the normaliser's history decays, `z_t = f_t z_(t-1) + phi(k_t)` (`scan`), and `A_t = f_t "
        "(eta_(t-1)/eta_t) I`, eigenvalues `f_t eta_(t-1)/eta_t > 0`, not bounded by 1 a priori. log A splits into "
        "the telescoping `log eta_(t-1) - log eta_t` and the per-step log-decay `log f_t`, whose segment sum "
        "`G_i - G_j` (`G` its cumulative sum) is a bias on every logit: the weight of key `j` at query `i` is "
        "`exp(q_i.k_j/sqrt(K) + G_i - G_j - log eta_i)`. dsfc forms `G` in float64 and the pairwise differences "
        "before the cast, so a long, strongly gated sequence (`|G|` in the thousands) keeps fp32 accuracy; the KV "
        "cache carries one more number per head and token, each key's decay up to the last step. A constant "
        "per-head gate `exp(-s_h)` is ALiBi's linear bias `-s_h (i - j)`."
    ),
    "softmax_attention": (
        "Softmax attention is the DSF with `N = infinity`: `exp(q.k/sqrt(K))` factorises only through the infinite "
        "Taylor feature map `phi`, so the state axis `f: taylor(K, inf)` is infinite (maths doc 3.2, 5.1). The form "
        "is normalised linear attention's, `A_t = (eta_(t-1)/eta_t) I` per head with eigenvalues `eta_(t-1)/eta_t "
        "> 0` not bounded by 1 a priori, `B_t = phi(k_t) v_t^T / eta_t`, `C_t = phi(q_t)`. dsfc kernelises every "
        "contraction over `f` into `exp(q.k/sqrt(K))`: `forward` is quadratic attention with every weight "
        "`exp(score - logsumexp)`, `step` carries a KV cache of `T (K + V)` numbers per head, and `dsf_matrices` "
        "writes the bounded-T form in the basis `{phi(k_j)}` of the first `T` slots (`C_t` then depends on past "
        "inputs, which the DSF allows). `taylor_attention` is its order-`p` truncation."
    ),
    "taylor_attention": (
        "Replacing `exp(q.k/sqrt(K))` by its order-p Taylor polynomial factorises the kernel through the finite "
        "feature map `phi_p(x) = concat_(r<=p) (x/K^(1/4))^(x)r / sqrt(r!)`, of `D_p = sum_(r<=p) K^r` entries, so "
        "softmax attention's infinite state becomes `N = H * V * D_p`, growing as `K^p` (maths doc 5.1). The DSF "
        "form is normalised linear attention's: `A_t = (eta_(t-1)/eta_t) I` per head, `B_t = phi(k_t) v_t^T / "
        "eta_t`, `C_t = phi(q_t)`, with `eta` coupling A and B. Even `p` keeps the kernel, hence `eta`, positive "
        "(the even Taylor polynomial of exp has no real root); odd `p` can make `eta <= 0`. As `p` grows it "
        "converges to `softmax_attention` on inputs of small norm."
    ),
    "normalized_attention": (
        "The paper's normalized attention (eq. 21) replaces the key-history normaliser by a learned, input-only one, "
        "`eta(u_t) = exp(W_n u_t + b_n)`, inspired by S6's `Delta`: `A_t = exp(s_(t-1) - s_t) I` per head and "
        "`B_t = k_t v_t^T / eta(u_t)`, so `eta` couples A and B as `Delta` does in S6, and costs no state beyond the "
        "previous `s`. The eigenvalues `exp(s_(t-1) - s_t)` are positive but **not** bounded by 1: they exceed 1 "
        "whenever `eta` decreases. On MQAR the paper reports it above linear attention, below SSD and softmax."
    ),
    "normalized_attention_sigmoid": (
        "The sigmoid variant of normalized attention (a rebuttal normaliser): `eta(u_t) = sigmoid(W_n u_t + b_n)` in "
        "(0, 1), so `A_t = (eta_(t-1) / eta_t) I` per head still couples A and B through `eta`. A bounded normaliser "
        "does not bound the eigenvalues: `eta_(t-1) / eta_t` is any positive number (a small `eta_t` makes it large), "
        "so the analysis proves no bound (\"not proven <= 1\"), as for the exp normaliser."
    ),
    "normalized_attention_exprelu": (
        "The exp(ReLU) variant of normalized attention (a rebuttal normaliser): `eta(u_t) = exp(relu(W_n u_t + b_n))` "
        ">= 1, `A_t = exp(relu(s_(t-1)) - relu(s_t)) I` per head. Whenever both pre-activations are negative the "
        "transition is exactly the identity (linear attention's), otherwise it is an S6-like input-dependent scale; "
        "the eigenvalues are positive and unbounded (the analysis: \"not proven <= 1\")."
    ),
    "deltanet": (
        "DeltaNet's A is identity minus rank one per head, `(I - beta k k^T) (x) I_V`, and symmetric: eigenvalues 1 "
        "(multiplicity `(K-1) V`) and `1 - beta ||k||^2 = 1 - beta` (multiplicity `V`). With `beta = sigmoid(.)` in "
        "(0, 1) and L2-normalised keys A is a contraction with eigenvalues in (0, 1]; allowing `beta` in (0, 2) puts "
        "the small eigenvalue in (-1, 1), which enables state tracking. `beta` and `k` appear in both A and B, and "
        "this is the only non-diagonal A of the attention family (chunkwise WY / UT transform)."
    ),
    "gated_deltanet": (
        "Gated DeltaNet multiplies DeltaNet's transition by a Mamba-2-style scalar gate per head, "
        "`A = alpha (I - beta k k^T) (x) I_V`: eigenvalues `alpha` (multiplicity `(K-1) V`) and `alpha (1 - beta)` "
        "(multiplicity `V`), all in (0, 1). `beta` and `k` couple A and B as in DeltaNet; `alpha` appears only in A. "
        "It combines the delta rule's selective overwrite with SSD-like forgetting."
    ),
    "retnet": (
        "RetNet's `A = gamma_h I` per head is time-invariant, with fixed eigenvalues `gamma_h = 1 - 2^(-5-h)` in "
        "`[1 - 2^-5, 1 - 2^(-4-H)]` (0.96875 to 0.99976 for H = 8). B u = `k (x) v` and `C = I (x) q^T` as in "
        "unnormalised linear attention, with no coupling; the fixed decay gives the parallel form with mask "
        "`gamma^(n-m)`. A constant A does not make the layer LTI (B and C still depend on the input), and the "
        "rotary map left out here is equivalent to a complex-diagonal `A = gamma e^(i theta)`."
    ),
    "gla": (
        "GLA's `A = diag_K(alpha_t) (x) I_V` per head decays every key dimension at its own data-dependent rate "
        "`alpha = sigmoid(.)^(1/16)` in (0, 1), each eigenvalue with multiplicity `V`. B u = `k (x) v` and "
        "`C = I (x) q^T` as in linear attention, with no A/B coupling. It sits between RetNet (one fixed scalar per "
        "head) and S6 (a rate per state entry); its scalar-gate special case is simple GLA."
    ),
    "hgrn": (
        "HGRN is diagonal with a forget gate bounded below per layer: eigenvalues `f_t` in `(gamma_l, 1)`, with "
        "`gamma_l = l/L` at init, so deeper layers are forced to remember longer. The input is scaled by `1 - f_t`, "
        "so `f` couples A and B (a leaky-average normalisation, like RG-LRU's `sqrt(1 - a^2)`), and the SiLU on the "
        "input is absorbed exactly into B as `diag(sigmoid(W_i u)) W_i`. `C = I`, one state per channel (n = 1)."
    ),
    "mlstm": (
        "mLSTM has one sigmoid forget gate per head, `A = f_t I` with eigenvalues in (0, 1), and the outer-product "
        "input `exp(i~) k~ (x) v` with an exponential input gate. Its normaliser `n_t` is a running function of the "
        "inputs only, so it sits in C (division by `max(|n^T q|, 1)`) and does not couple A and B, unlike normalised "
        "linear attention where `eta` is in both. xLSTM's max-stabiliser `m` cancels exactly in `y` and is not part "
        "of the DSF."
    ),
    "rwkv6": (
        "RWKV-6 decays every key dimension at a data-dependent rate `w_t = exp(-exp(w~_t))` in (0, 1), "
        "`A = diag_K(w) (x) I_V` (GLA-like), with B u = `k (x) v` and no coupling. It reads out *before* the "
        "update, `y_t = C_t h_(t-1) + D_t u_t`, and its bonus is an input-dependent feedthrough `D_t`; the standard "
        "post-update form `C' = C A^-1`, `D' = D - C' B` is exact but divides by `w`. The token shift makes the "
        "selection signal depend on `x_(t-1)`, which is allowed because it is causal; v's own token shift is not "
        "linear in `x_t`, so the DSF is driven by the shifted signal `xv` (`drive xv`) rather than by `x`."
    ),
    "qlstm": (
        "The paper's quasi-LSTM drops the LSTM's recurrent weights, so every gate reads only the input: "
        "`A = diag(sigmoid(f_t))` with eigenvalues in (0, 1), an elementwise input gate `sigmoid(i_t)` in B, and the "
        "input-only output gate `sigmoid(o_t)` absorbed into C. `f` and `i` are independent (no A/B coupling) and "
        "there is one state per channel (n = 1). With a gate that reads `h_(t-1)` it would be the LSTM below, "
        "which is not a DSF."
    ),
    "qlstm_s6": (
        "Eq. 23 replaces qLSTM's forget gate by S6's transition with `Delta = softplus(f_t)` and scalar "
        "`A = relu(alpha)`: `a_t = exp(-relu(alpha) softplus(f_t)) = sigmoid(-f_t)^relu(alpha)`, the \"reversed "
        "sigmoid\". Eigenvalues lie in (0, 1], equal to 1 exactly when `alpha <= 0`. Unlike S6, `Delta` does not "
        "also scale B (no coupling); the paper reports better MQAR accuracy than with `sigmoid(f)`, most visibly on "
        "longer sequences."
    ),
    "rg_lru": (
        "RG-LRU is diagonal with `a_t = a^(8 r_t)`, `a = exp(-softplus(Lambda))`: eigenvalues in `(a^8, 1)`, a subset "
        "of (0, 1), initialised close to the unit circle (`a` in [0.9, 0.999]). The input is scaled by "
        "`sqrt(1 - a_t^2)`, so `a_t` couples A and B; this norm-preserving scaling keeps the state bounded as "
        "`a_t -> 1`, the role `Delta` plays in S6's B. One state per channel (n = 1), `C = I`."
    ),
    "lru": (
        "LRU is time-invariant: a complex diagonal `lambda_j = exp(-exp(nu_log_j) + i exp(theta_log_j))`, written "
        "here as real 2x2 rotation-scaling blocks with eigenvalues `r_j e^(+-i theta_j)` and "
        "`|lambda| = exp(-exp(nu_log)) < 1` strictly, guaranteed by the exponential parametrisation. B is dense "
        "(`gamma . B` mixes all channels) and `gamma = sqrt(1 - |lambda|^2)` is tied to `|lambda|` at init only: a "
        "normalisation like RG-LRU's, but fixed rather than input-dependent. Being LTI it runs as an associative scan "
        "or a convolution."
    ),
    "s4d": (
        "S4D is a time-invariant complex-diagonal SSM discretised with ZOH for A **and** B: per channel and mode "
        "`Abar = exp(dt A_n)`, here as real 2x2 blocks with "
        "`|lambda| = exp(dt Re A_n) = exp(-dt exp(log_A_real)) < 1`. "
        "`dt` appears in both `Abar` and `Bbar = (Abar - 1)/A` (a coupling through the discretisation, fixed after "
        "training). Being LTI the layer is a long convolution with kernel `K[l] = 2 Re sum_n C_n Bbar_n Abar_n^l` "
        "(FFT); S6 is what it becomes when `dt`, B and C depend on the input (with Euler for B)."
    ),
    "mamba_block": (
        "The Mamba block is the S6 recurrence of `s6.dsf` driven by the post-conv signal `x = silu(conv(W_x u))` "
        "instead of `u`: the same diagonal A with eigenvalues `exp(-Delta_c exp(A_log[c, j]))` in (0, 1) and "
        "`Delta` coupling A and B. The `silu(z)` output gate depends only on the input, so it is absorbed into C and "
        "D (`C <- diag(silu(z)) C`); `out_proj` is a post-op after the core. The convolution makes the selection "
        "signal read the last 4 inputs, which is causal and so allowed."
    ),
    "lstm": (
        "The classic LSTM's gates read `h_(t-1)`, so `A_t = diag(f_t)` depends on the state: the update is "
        "nonlinear in the state and no input-only `A_t`, `B_t` reproduce it for all inputs. Its `tanh(c)` readout "
        "is nonlinear in the state too. The same holds for GRU and sLSTM; the quasi-LSTMs above are the DSFs left "
        "when the recurrent weights are dropped."
    ),
}


# The model each note was written for: a note is shown only for a spec of that file name AND that model name, so a
# user's own layer saved as s6.dsf (an HMM, say) does not get S6's hand-written note.
NOTE_MODELS: dict[str, str] = {
    "s6": "S6", "ssd": "SSD", "linear_attention": "LinearAttention",
    "linear_attention_normalized": "LinearAttentionNormalized", "fox": "FoX", "softmax_attention": "SoftmaxAttention",
    "taylor_attention": "TaylorAttention", "normalized_attention": "NormalizedAttention",
    "normalized_attention_sigmoid": "NormalizedAttentionSigmoid",
    "normalized_attention_exprelu": "NormalizedAttentionExpRelu", "deltanet": "DeltaNet",
    "gated_deltanet": "GatedDeltaNet", "retnet": "RetNet", "gla": "GLA", "hgrn": "HGRN", "mlstm": "MLSTM",
    "rwkv6": "RWKV6", "qlstm": "QLSTM", "qlstm_s6": "QLSTMS6", "rg_lru": "RGLRU", "lru": "LRU", "s4d": "S4D",
    "mamba_block": "MambaBlock", "lstm": "LSTM",
}


def _note(stem: str, model: str) -> str | None:
    """The hand-written note "What the DSF says" of the catalog spec with this file stem and model name, or None."""
    return NOTES.get(stem) if NOTE_MODELS.get(stem) == model else None


@dataclass(frozen=True)
class _Analysed:
    """What the catalog needs of one spec (the fields ``cli.catalog_table`` reads, plus the SymPy structure)."""

    spec: object  # dsfc.lang.ast.Spec
    sym: SymSpec
    structure: Structure
    report: StructureReport

    @property
    def stem(self) -> str:
        return Path(self.spec.path).stem


def _analyse(path) -> _Analysed:
    spec = parse_file(path)
    _, sym, structure, report = analyse(spec)  # no code generation: the catalog needs the analysis only
    return _Analysed(spec, sym, structure, report)


def _header_and_body(source: str) -> tuple[list[str], str]:
    """The leading comment block (text after '#', one item per line) and the rest of the spec."""
    lines = source.replace("\r\n", "\n").split("\n")
    header = []
    i = 0
    while i < len(lines) and lines[i].lstrip().startswith("#"):
        header.append(lines[i].lstrip()[1:])
        i += 1
    return header, "\n".join(lines[i:]).strip("\n")


_MD_SPECIAL = re.compile(r"([\\`*_<\[\]|])")


def _md_escape(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text)


def _header_markdown(header: list[str]) -> str:
    """Unindented comment lines become paragraphs, indented ones (formulas, lists) fenced text blocks."""
    blocks: list[tuple[str, list[str]]] = []
    for raw in header:
        text = raw[1:] if raw.startswith(" ") else raw
        kind = "code" if text.startswith(" ") else "prose"
        if not text.strip():
            blocks.append(("break", []))
            continue
        if blocks and blocks[-1][0] == kind:
            blocks[-1][1].append(text)
        else:
            blocks.append((kind, [text]))
    out = []
    for kind, lines in blocks:
        if kind == "prose":
            out.append(_md_escape(" ".join(line.strip() for line in lines)))
        elif kind == "code":
            out.append("```text\n" + "\n".join(lines) + "\n```")
    return "\n\n".join(out)


def _tuple(syms) -> str:
    syms = tuple(syms)
    return f"({', '.join(map(str, syms))})" if len(syms) != 1 else str(syms[0])


def _dsf_form(r: _Analysed) -> str:
    """A's decay or block entry, B u, C h and D u as SymPy strings, from ``result.structure``."""
    st, sym = r.structure, r.sym
    a = st.a
    rows = a.rows
    h = sym.state.name
    out_idx = ", ".join(map(str, st.readout.out_syms))
    lines = []
    if a.decay is not None:
        lines.append((f"A[{_tuple(rows)}, {_tuple(rows)}]", sp.sstr(a.decay),
                      f"{a.kind.value}, the entry above is its diagonal"))
    else:
        cols = tuple(a.cols[k] if k in a.mixed_axes else rows[k] for k in range(len(rows)))
        mixed = ", ".join(str(rows[k]) for k in a.mixed_axes)
        per = _tuple(rows[k] for k in a.diag_axes) if a.diag_axes else "state"
        lines.append((f"A[{_tuple(rows)}, {_tuple(cols)}]", sp.sstr(a.block),
                      f"{a.kind.value}: one block per {per}, mixing {mixed}"))
    drive = sym.driven.name if sym.driven is not None else sym.input.name
    lines.append((f"(B {drive})[{', '.join(map(str, rows))}]", sp.sstr(st.bu), st.b_form.value))
    prev = "_(t-1)" if sym.readout == "pre" else "_t"
    lines.append((f"(C {h}{prev})[{out_idx}]", sp.sstr(st.readout.ch), "readout" + (" before the update (readout pre)"
                                                                                    if sym.readout == "pre" else "")))
    if st.readout.du != 0:
        lines.append((f"(D {drive})[{out_idx}]", sp.sstr(st.readout.du), "feedthrough"))
    width = max(len(k) for k, _, _ in lines)
    body = "\n".join(f"{k.ljust(width)} = {v}" for k, v, _ in lines)
    legend = "; ".join(f"`{k.split('[')[0]}`: {_md_escape(why)}" for k, _, why in lines)
    post = ""
    if sym.posts:
        post = f" Post-ops after the core: {', '.join(f'`{p.tensor.name}`' for p in sym.posts)}."
    return f"```text\n{body}\n```\n\n{legend}.{post}"


def _description(sym: SymSpec) -> str:
    """The model line's description, without a leading "<model name>:" that would repeat the title."""
    head, colon, rest = sym.description.partition(":")
    if colon and re.sub(r"[\W_]", "", head).lower() == sym.model.lower() and rest.strip():
        return rest.strip()
    return sym.description


def _model_section(r: _Analysed) -> str:
    stem = r.stem
    header, body = _header_and_body(r.spec.source)
    parts = [
        f'<a id="{stem}"></a>',
        f"## {r.sym.model}: {_md_escape(_description(r.sym))}",
        f"`{display_path(r.spec.path)}`",
    ]
    if header:
        parts.append(_header_markdown(header))
    parts += [
        "### Spec",
        f"```dsf\n{body}\n```",
        "### Analysis (`dsfc analyze`)",
        f"```text\n{r.report.table()}\n```",
        "### DSF form found by the analysis",
        _dsf_form(r),
    ]
    note = _note(stem, r.sym.model)
    if note:
        parts += ["### What the DSF says", note]
    return "\n\n".join(parts)


def _rejected_section(path) -> str:
    text = Path(path).read_text(encoding="utf-8")
    try:
        compile_spec(path)
    except SpecErrors as exc:
        error = SpecErrors(exc.errors, display_path(str(path)), exc.source).render()
    else:  # pragma: no cover - the catalog documents a rejection; say so loudly if it stops being one
        error = "(dsfc accepted this spec: it is no longer rejected)"
    stem = Path(path).stem
    header, body = _header_and_body(text)
    model = next((line for line in body.split("\n") if line.startswith("model ")), f"model {stem}")
    parts = [
        f'<a id="{stem}"></a>',
        f"## Not a DSF: `{display_path(str(path))}`",
        f"`{model}`",
    ]
    if header:
        parts.append(_header_markdown(header))
    parts += [
        "### Spec",
        f"```dsf\n{body}\n```",
        "### What dsfc says (`dsfc compile` exits with code 2, nothing is written)",
        f"```text\n{error}\n```",
    ]
    note = _note(stem, _rejected_model(body))
    if note:
        parts += ["### What the DSF says", note]
    return "\n\n".join(parts)


def _rejected_model(body: str) -> str | None:
    """The model name of a rejected spec's ``model`` line (it does not compile, so it is read from the text)."""
    match = re.search(r"^model\s+(\w+)", body, re.M)
    return match.group(1) if match else None


INTRO = """\
# dsfc model catalog

<!-- Generated by `dsfc catalog` (dsfc/catalog.py). Do not edit: re-run `dsfc catalog` after changing a spec or the
analysis. tests/e2e/test_catalog_doc.py fails when this file is stale. -->

Every layer below is one linear time-varying recurrence, the Dynamical Systems Framework (DSF) of Sieber et al.
(NeurIPS 2024):

    h_t = A(u_t) h_(t-1) + B(u_t) u_t        y_t = C(u_t) h_t + D(u_t) u_t

Each section shows a spec of `specs/`: its header comment (what it models, after which reference code, and what is
left out), the spec itself, the structure report of `dsfc analyze`, and the DSF form the analysis derived from the
spec (A's diagonal decay or block entry, `B u`, the readout `C h` and `D u`, as SymPy expressions over the state row
indices). All of that is computed. Only the closing note, "What the DSF says", is written by hand (in
`dsfc/catalog.py`), from the maths reference `dsf-models.md` (sections 2, 3 and 5): eigenvalues, coupling, what the
normalisation means and how the model relates to the others. The last section is the LSTM, which dsfc rejects.

Columns of the table: **A** the structure class of the transition (identity, scalar per group, diagonal,
block-diagonal, dense; "I - rank-1" for delta-rule transitions), **B u** the form of the input term, **coupling**
the parameters and lets shared by A and B, **eigenvalues** the bound the analysis proves, **N** the state size
(symbolic and at the spec's default dims), **family** the algorithm the generated module uses.
"""


class _ManySpecErrors(SpecErrors):
    """The SpecErrors of several specs, rendered one after another (``dsfc catalog`` exits 2 with all of them)."""

    def __init__(self, each: list[SpecErrors]):
        super().__init__([e for x in each for e in x.errors], each[0].path, each[0].source)
        self.each = each

    def render(self) -> str:
        return "\n".join(x.render() for x in self.each)


def _other_intro(n_notes: int) -> str:
    """INTRO for specs other than the catalog's own (``dsfc catalog my_specs/*.dsf``): it said that every section was
    a spec of ``specs/`` with a hand-written note, that the last section was the LSTM and that a test of dsfc fails
    when the file is stale, none of which holds there."""
    head, rest = INTRO.split("Each section shows", 1)
    head = head.replace(" tests/e2e/test_catalog_doc.py fails when this file is stale. -->", " -->")
    columns = rest[rest.index("Columns of the table"):]
    computed = ("All of it is computed, except the closing note \"What the DSF says\" of the sections that are models "
                "of the catalog (`specs/`, same file and model name): that is written by hand (in `dsfc/catalog.py`)."
                if n_notes else "All of it is computed.")
    paragraph = textwrap.fill(
        "Each section shows a spec: its header comment, the spec itself, the structure report of `dsfc analyze`, and "
        "the DSF form the analysis derived from the spec (A's diagonal decay or block entry, `B u`, the readout `C h` "
        f"and `D u`, as SymPy expressions over the state row indices). {computed}", width=116, break_on_hyphens=False)
    return f"{head}{paragraph}\n\n{columns}"


def _sort_key(path) -> str:
    return Path(path).stem.lower()


def render_catalog(spec_paths, rejected_paths=None) -> str:
    """docs/catalog.md for these specs (any order; sections are sorted by spec name).

    ``rejected_paths``: specs dsfc must reject, each shown with its error; default: ``not_dsf/*.dsf`` next to the
    specs. A spec of ``spec_paths`` that does not compile raises its ``SpecErrors``.
    """
    from .cli import catalog_table

    paths = sorted((Path(p) for p in spec_paths), key=_sort_key)
    if rejected_paths is None:
        dirs = sorted({p.parent for p in paths})
        rejected_paths = [q for d in dirs for q in sorted((d / "not_dsf").glob("*.dsf"), key=_sort_key)]
    results, failed = [], []
    for p in paths:  # every bad spec's errors, as compile / analyze / check report them (it stopped at the first)
        try:
            results.append(_analyse(p))
        except SpecErrors as exc:
            failed.append(exc)
    if failed:
        raise _ManySpecErrors(failed)
    notes = [bool(_note(r.stem, r.sym.model)) for r in results]
    notes += [bool(_note(Path(q).stem, _rejected_model(Path(q).read_text(encoding="utf-8")))) for q in rejected_paths]
    lstm = any(Path(q).stem == "lstm" for q in rejected_paths)
    parts = [(INTRO if results and all(notes) and lstm else _other_intro(sum(notes))).rstrip("\n")]
    if results:
        parts.append(catalog_table(results))
    toc = [f"- [{r.sym.model}](#{r.stem}): {_md_escape(r.sym.description)}" for r in results]
    toc += [f"- [Not a DSF: {Path(p).stem}](#{Path(p).stem})" for p in rejected_paths]
    if toc:
        parts.append("\n".join(toc))
    parts += [_model_section(r) for r in results]
    parts += [_rejected_section(p) for p in rejected_paths]
    return "\n\n".join(parts) + "\n"
