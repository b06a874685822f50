"""A twenty-eighth spec hunt: layers from recent papers that no earlier hunt wrote, each spelt the way its paper or
code writes it, by a user who read only the README's and docs/language.md's spec-language sections.

Specs: PolaFormer (polarity-aware linear attention, power-3 features of q+ / q- and k+ / k-; the first half of the
values read by the same-sign query [q+, q-], the second by the opposite-sign one [q-, q+], switched by ``e // Vh``
in C) and the same layer with the polarity as its own state axis (PolaSplit); FLatten's focused linear attention
(``|x| x^3 / |x^3|`` of a scaled relu, a ``cumsum`` normaliser read by a post); Infini-attention's compressive
memory as a per-token delta rule (``M = M + s(k) (v - s(k) M / (1 + s(k).z_prev))^T``, ``s = elu + 1``, the readout
normalised by ``s(q).z`` in a post); Atlas' Omega rule with a linear memory (``M = al M - sum_i g_i (M k_i - v_i)
k_i^T`` over the last 2 tokens, through ``window`` lets and a windowed drive: a rank-2 A); a linear
AntisymmetricRNN (``h = h + eps ((W - W^T - gam I) h + V u)``); HiPPO-LegS with its ``1 / t`` step (``let t =
cumsum(1)``, the LegS triangle through ``min(max(n - k, 0), 1)``); S4 with a real normal-plus-low-rank A and the
bilinear transform, the inverse written by Woodbury; Transformer-VQ with soft codes (keys softmax-assigned to S
codewords, ``exp(q.c_s)`` read, normalised in a post).

Checked, each against a float64 loop written here from the paper's equations (S4's with a dense solve, not
Woodbury; PolaFormer's from the concatenated polarity parts): forward at T = 0, 1, 7, 9 from zero and a random state,
token-by-token step, gradients of the input and every parameter, every path against dsfc's reference (Triton,
interpreted, with gradients from a state), T = 1, 15, 63, 65 (torch, step) and 17 (Triton) from a carried state
(running entries from a real prefix: normalisers, a step count, windows); the family and the eigenvalue report
against the module's own A; the "unknown" bounds shown to be no provable claim (an eigenvalue beyond 1 where the
maths has one); a user's mistakes (a comparison, a wrong index, an undeclared dim, a projection or window missing an
axis, a third column index) each one positioned error. Every output was right.

Found and fixed (a slow family): PolaFormer as its code writes it ran the elementwise diagonal scan over all H 2K V
state entries (the query varies along the value axis). ``unflatten_state`` now splits a state axis that C reads in
blocks through its tied output index (``delta(e, b)`` with ``e // Vh`` used as a value); B's whole-subscript read
``W_v[h, b, m]`` reads the same entry at the digits' radix sum. The layer runs the chunked outer-product scan with
the half index a group axis, as PolaSplit does; its state stays [H, 2K, V] at the API. A block index read only
inside a subscript (GQA's ``q[o // R, a]``, SSD's ``Cm[h // R, j]``) keeps the axis whole, as before (the 20 spec
texts in tests/e2e with ``//`` or ``%`` in C compile to the same family and state as on main; generated/ unchanged).

Found and fixed (an unclear error): ``(n > k)`` got "unexpected character '>'" with the hint "names are ASCII
letters, digits and '_'"; now the hint says the language has no comparisons and gives ``min(max(n - k, 0), 1)``
and ``delta(n, k)``.

Found, not fixed (reports weaker than the truth, checked as such): the Omega rule's ``al I - sum_i g_i k_i k_i^T``
(unit keys, ``sum_i g_i < 1``: eigenvalues in (al - 1, al]) and S4's bilinear NPLR A (in (-1, 1)) are "unknown":
the prover has no rule for a sum of symmetric rank-1 terms, and does not range ``sum_a kw[h, a, i]^2`` of a window
of unit keys. Both run the dense scan, rightly: dsfc has no chunked rank-2 delta rule and no LTI convolution form.
Griffin's local attention written as window lets and a post (A, B, C zero) is refused as "not a DSF", correctly.

Not done: log-linear attention (its Fenwick levels need integer logic on the step index, which running lets, real
valued, cannot express); Triton gradients against the loops (checked against the reference instead); fp32 runs.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, TRITON, case_builds, matvec, rel_err, run_steps,  # noqa: E402
                         spec_hunt_tests, stack_steps, state_err)
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.lang.errors import SpecError, SpecErrors, render_error  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

pytestmark = INTERPRETER_WARNINGS
OMEGA_C = 2  # the Omega rule's window (the spec's dim c)

POLA = """
model PolaFormer "PolaFormer: polarity-aware linear attention, same-sign q.k read by half the values, opposite the rest"
dim d = 5
dim H = 2
dim K = 3
dim Vh = 2
dim V = 2 * Vh
input u[d]
state S[h: H, f: 2 * K, b: V]
output y[h: H, b: V]
param W_q[H, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_k[h, a, m] * u[m])
let kf[h: H, f: 2 * K] = relu((1 - 2 * (f // K)) * k[h, f % K]) ^ 3
let qs[h: H, f: 2 * K] = relu((1 - 2 * (f // K)) * q[h, f % K]) ^ 3
let qo[h: H, f: 2 * K] = relu((2 * (f // K) - 1) * q[h, f % K]) ^ 3
A[(h, f, b), (h2, f2, b2)] = delta(h, h2) * delta(f, f2) * delta(b, b2)
B[(h, f, b), m] = kf[h, f] * W_v[h, b, m]
C[(o, e), (h, f, b)] = delta(o, h) * delta(e, b) * ((1 - e // Vh) * qs[h, f] + (e // Vh) * qo[h, f])
"""

POLA_SPLIT = """
model PolaSplit "PolaFormer with the polarity as its own state axis s: s = 0 same-sign, s = 1 opposite-sign"
dim d = 5
dim H = 2
dim K = 3
dim Vh = 2
input u[d]
state S[h: H, s: 2, f: 2 * K, b: Vh]
output y[h: H, s: 2, b: Vh]
param W_q[H, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, 2, Vh, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_k[h, a, m] * u[m])
let kf[h: H, f: 2 * K] = relu((1 - 2 * (f // K)) * k[h, f % K]) ^ 3
let qf[h: H, s: 2, f: 2 * K] = relu((1 - 2 * ((f // K + s) % 2)) * q[h, f % K]) ^ 3
A[(h, s, f, b), (h2, s2, f2, b2)] = delta(h, h2) * delta(s, s2) * delta(f, f2) * delta(b, b2)
B[(h, s, f, b), m] = kf[h, f] * W_v[h, s, b, m]
C[(o, z, e), (h, s, f, b)] = delta(o, h) * delta(z, s) * delta(e, b) * qf[h, s, f]
"""

FOCUSED = """
model FocusedLA "FLatten focused linear attention: phi(x) = |x| x^3 / |x^3| of x = relu(.), normalised by a post"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_q[H, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
param sc[K] = 1
let qr[h: H, a: K] = relu(sum(m, W_q[h, a, m] * u[m])) / softplus(sc[a]) + 1e-6
let kr[h: H, a: K] = relu(sum(m, W_k[h, a, m] * u[m])) / softplus(sc[a]) + 1e-6
let qf[h: H, a: K] = qr[h, a] ^ 3 * sqrt(sum(a2, qr[h, a2] ^ 2)) / sqrt(sum(a2, qr[h, a2] ^ 6))
let kf[h: H, a: K] = kr[h, a] ^ 3 * sqrt(sum(a2, kr[h, a2] ^ 2)) / sqrt(sum(a2, kr[h, a2] ^ 6))
let z[h: H, a: K] = cumsum(kf[h, a])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2)
B[(h, a, b), m] = kf[h, a] * W_v[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * qf[h, a]
post o[h: H, b: V] = y[h, b] / (sum(a, qf[h, a] * z[h, a]) + 1e-6)
"""

INFINI = """
model InfiniMem "Infini-attention memory per token: M = M + s(k) (v - s(k) M / (1 + s(k).z))^T, y = s(q) M / s(q).z"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
state M[h: H, a: K, b: V]
output y[h: H, b: V]
param W_q[H, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
let sq[h: H, a: K] = elu(sum(m, W_q[h, a, m] * u[m])) + 1
let sk[h: H, a: K] = elu(sum(m, W_k[h, a, m] * u[m])) + 1
let z[h: H, a: K] = cumsum(sk[h, a])
let den[h: H] = 1 + sum(a, sk[h, a] * (z[h, a] - sk[h, a]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - sk[h, a] * sk[h, a2] / den[h])
B[(h, a, b), m] = sk[h, a] * W_v[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sq[h, a]
post r[h: H, b: V] = y[h, b] / sum(a, sq[h, a] * z[h, a])
"""

OMEGA = """
model OmegaLin "Atlas Omega rule, linear memory, window 2: M = al M - sum_i g_i (M k_i - v_i) k_i^T"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
dim c = 2
input u[d]
state M[h: H, a: K, b: V]
output y[h: H, b: V]
param W_q[H, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
param W_g[H, d] ~ normal(0, 0.5)
param W_a[H, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_q[h, a, m] * u[m])
let kr[h: H, a: K] = sum(m, W_k[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2) + 1e-6)
let v[h: H, b: V] = sum(m, W_v[h, b, m] * u[m])
let g[h: H] = sigmoid(sum(m, W_g[h, m] * u[m])) / c
let al[h: H] = sigmoid(sum(m, W_a[h, m] * u[m]) + 2)
let kw[h: H, a: K, i: c] = window(k[h, a])
let vw[h: H, b: V, i: c] = window(v[h, b])
let gw[h: H, i: c] = window(g[h])
drive vw
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2)
    * (al[h] * delta(a, a2) - sum(i, gw[h, i] * kw[h, a, i] * kw[h, a2, i]))
B[(h, a, b), (h2, b2, i)] = delta(h, h2) * delta(b, b2) * gw[h, i] * kw[h, a, i]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

ANTISYM = """
model AntisymLin "AntisymmetricRNN, linear: h = h + eps ((W - W^T - gam I) h + V u)"
dim d = 3
dim n = 4
input u[d]
state h[n]
output y[d]
param W[n, n] ~ normal(0, 0.5)
param Vi[n, d] ~ normal(0, 0.5)
param Wo[d, n] ~ normal(0, 0.5)
param eps = 0.1
param gam = 0.5
A[i, j] = delta(i, j) + eps * (W[i, j] - W[j, i] - gam * delta(i, j))
B[i, m] = eps * Vi[i, m]
C[o, i] = Wo[o, i]
"""

LEGS = """
model HiPPOLegS "HiPPO-LegS, Euler: c_t = (I - A / t) c_(t-1) + B f_t / t, one LegS memory per channel"
dim d = 2
dim N = 4
input u[d]
state c[ch: d, n: N]
output y[d]
param W_f[d, d] ~ normal(0, 0.5)
param Wo[d, N] ~ normal(0, 0.5)
let t = cumsum(1)
let Al[n: N, k: N] = sqrt(2 * n + 1) * sqrt(2 * k + 1) * min(max(n - k, 0), 1) + (n + 1) * delta(n, k)
A[(c1, n), (c2, k)] = delta(c1, c2) * (delta(n, k) - Al[n, k] / t)
B[(c1, n), m] = sqrt(2 * n + 1) * W_f[c1, m] / t
C[o, (c1, n)] = delta(o, c1) * Wo[o, n]
"""

S4_NPLR = """
model S4NPLR "S4, real NPLR A = -diag(lam) - p p^T, bilinear (I - dt/2 A)^-1 (I + dt/2 A) by Woodbury"
dim d = 2
dim n = 3
input u[d]
state x[c: d, i: n]
output y[d]
param lam_log[c: d, i: n] = log(0.5 + i)
param p[c: d, i: n] ~ normal(0, 0.5)
param Bp[c: d, i: n] ~ normal(0, 0.5)
param Cp[c: d, i: n] ~ normal(0, 0.5)
param log_dt[c: d] = log(0.1)
param Dp[d] = 1
let dt[c: d] = exp(log_dt[c])
let e[c: d, i: n] = 1 / (1 + dt[c] / 2 * exp(lam_log[c, i]))
let r[c: d] = (dt[c] / 2) / (1 + dt[c] / 2 * sum(k, e[c, k] * p[c, k] ^ 2))
let Mi[c: d, i: n, k: n] = e[c, i] * delta(i, k) - r[c] * e[c, i] * p[c, i] * p[c, k] * e[c, k]
let Np[c: d, k: n, j: n] = (1 - dt[c] / 2 * exp(lam_log[c, k])) * delta(k, j) - dt[c] / 2 * p[c, k] * p[c, j]
A[(c, i), (c2, j)] = delta(c, c2) * sum(k, Mi[c, i, k] * Np[c, k, j])
B[(c, i), m] = delta(c, m) * dt[c] * sum(k, Mi[c, i, k] * Bp[c, k])
C[o, (c, i)] = delta(o, c) * Cp[c, i]
D[o, m] = delta(o, m) * Dp[m]
"""

SOFT_VQ = """
model SoftVQ "Transformer-VQ, soft codes: M_s = M_s + w_s(k) v^T, y = sum_s e^(q.c_s) M_s / sum_s e^(q.c_s) n_s"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
dim S = 4
input u[d]
state M[h: H, s: S, b: V]
output y[h: H, b: V]
param W_q[H, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
param cb[H, S, K] ~ normal(0, 1)
param tau = 1
let q[h: H, a: K] = sum(m, W_q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_k[h, a, m] * u[m])
let lk[h: H, s: S] = exp(sum(a, k[h, a] * cb[h, s, a]) / tau)
let wk[h: H, s: S] = lk[h, s] / sum(s2, lk[h, s2])
let qs[h: H, s: S] = exp(sum(a, q[h, a] * cb[h, s, a]) / sqrt(K))
let n[h: H, s: S] = cumsum(wk[h, s])
A[(h, s, b), (h2, s2, b2)] = delta(h, h2) * delta(s, s2) * delta(b, b2)
B[(h, s, b), m] = wk[h, s] * W_v[h, b, m]
C[(o, e), (h, s, b)] = delta(o, h) * delta(e, b) * qs[h, s]
post r[h: H, b: V] = y[h, b] / sum(s, qs[h, s] * n[h, s])
"""

LOCAL_ATTN = """
model LocalAttn "Griffin local attention as window lets: softmax over the last W keys, no state beyond the windows"
dim d = 4
dim H = 2
dim K = 2
dim V = 2
dim W = 3
input u[d]
state S[h: H, b: V]
output y[h: H, b: V]
param W_q[H, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_k[h, a, m] * u[m])
let v[h: H, b: V] = sum(m, W_v[h, b, m] * u[m])
let kw[h: H, a: K, w: W] = window(k[h, a])
let vw[h: H, b: V, w: W] = window(v[h, b])
let s[h: H, w: W] = exp(sum(a, q[h, a] * kw[h, a, w]) / sqrt(K))
A[(h, b), (h2, b2)] = 0 * delta(h, h2) * delta(b, b2)
B[(h, b), m] = 0 * W_v[h, b, m]
C[(o, e), (h, b)] = 0 * delta(o, h) * delta(e, b)
post o[h: H, b: V] = sum(w, s[h, w] * vw[h, b, w]) / sum(w, s[h, w])
"""


sig, silu, softplus, relu, elu = (torch.sigmoid, torch.nn.functional.silu, torch.nn.functional.softplus, torch.relu,
                                  torch.nn.functional.elu)


# -- independent float64 implementations from the models' equations ---------------------------------------------------
# Each takes the parameters by spec name, u [B, T, d] and a carried state (None: from zero; a tensor: the recurrent
# state; a dict: the module's {"h": ..., <running let>: ...}, a window entry the last c raw values oldest first, a
# cumsum entry the running sum) and returns y [B, T, ...].


def _carried(h0, key, default):
    """The entry ``key`` of a carried state (a plain tensor is the recurrent state of a spec without running lets)."""
    if h0 is None:
        return default
    return h0[key] if isinstance(h0, dict) else h0


def _shift_in(w, x):
    """A window [..., c] one step on: the oldest value drops, x comes in last."""
    return torch.cat([w[..., 1:], x[..., None]], -1)


def _pola(P, u, h0=None):
    # PolaFormer (Meng et al. 2025) with a fixed power p = 3: q+ = relu(q)^3, q- = relu(-q)^3 (k likewise);
    # phi(k) = [k+, k-]; the same-sign query [q+, q-] reads the first half of v, the opposite-sign one [q-, q+] the
    # second: y = [[q+, q-] S[:, :Vh], [q-, q+] S[:, Vh:]], S = S + phi(k) v^T per head (no decay, no normaliser)
    Wv = P["W_v"].reshape(P["W_v"].shape[0], -1, P["W_v"].shape[-1])  # PolaSplit's [H, 2, Vh, d] is [H, V, d]
    H, K, _ = P["W_q"].shape
    V = Wv.shape[1]
    S = _carried(h0, "h", u.new_zeros(u.shape[0], H, 2 * K, V))
    if S.dim() == 5:  # PolaSplit's state [H, s, f, b] is PolaFormer's [H, f, (s, b)]
        S = S.transpose(2, 3).reshape(u.shape[0], H, 2 * K, V)
    ys = []
    for t in range(u.shape[1]):
        q, k, v = matvec(P["W_q"], u[:, t]), matvec(P["W_k"], u[:, t]), matvec(Wv, u[:, t])
        qp, qn, kp, kn = relu(q) ** 3, relu(-q) ** 3, relu(k) ** 3, relu(-k) ** 3
        S = S + torch.cat([kp, kn], -1)[..., None] * v[:, :, None, :]
        same = torch.einsum("zhf,zhfb->zhb", torch.cat([qp, qn], -1), S[..., :V // 2])
        opp = torch.einsum("zhf,zhfb->zhb", torch.cat([qn, qp], -1), S[..., V // 2:])
        ys.append(torch.cat([same, opp], -1))
    return stack_steps(ys, u, H, V)


def _focus(x):
    """FLatten's focused map: |x| x^3 / |x^3| (x >= 0 already)."""
    return x ** 3 * x.norm(dim=-1, keepdim=True) / (x ** 3).norm(dim=-1, keepdim=True)


def _flatten(P, u, h0=None):
    # FLatten Transformer (Han et al. 2023), causal: x = relu(W x) / softplus(s) + 1e-6, phi = focused map (p = 3);
    # S = S + phi(k) v^T, z = z + phi(k), o = phi(q)^T S / (phi(q).z + 1e-6)
    H, K, _ = P["W_q"].shape
    V = P["W_v"].shape[1]
    S = _carried(h0, "h", u.new_zeros(u.shape[0], H, K, V))
    z = _carried(h0, "z", u.new_zeros(u.shape[0], H, K))
    scale, ys = softplus(P["sc"]), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        qf = _focus(relu(matvec(P["W_q"], ut)) / scale + 1e-6)
        kf = _focus(relu(matvec(P["W_k"], ut)) / scale + 1e-6)
        S, z = S + kf[..., None] * matvec(P["W_v"], ut)[:, :, None, :], z + kf
        ys.append(torch.einsum("zha,zhab->zhb", qf, S) / ((qf * z).sum(-1, keepdim=True) + 1e-6))
    return stack_steps(ys, u, H, V)


def _infini(P, u, h0=None):
    # Infini-attention's compressive memory (Munkhdalai et al. 2024), its delta update taken per token: s = elu + 1,
    # M = M + s(k)^T (v - s(k) M / (1 + s(k).z_prev)), z = z_prev + s(k); A_mem = s(q) M / (s(q).z)
    H, K, _ = P["W_q"].shape
    V = P["W_v"].shape[1]
    M = _carried(h0, "h", u.new_zeros(u.shape[0], H, K, V))
    z, ys = _carried(h0, "z", u.new_zeros(u.shape[0], H, K)), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        sq, sk, v = elu(matvec(P["W_q"], ut)) + 1, elu(matvec(P["W_k"], ut)) + 1, matvec(P["W_v"], ut)
        retrieved = torch.einsum("zha,zhab->zhb", sk, M) / (1 + (sk * z).sum(-1, keepdim=True))
        M, z = M + sk[..., None] * (v - retrieved)[:, :, None, :], z + sk
        ys.append(torch.einsum("zha,zhab->zhb", sq, M) / (sq * z).sum(-1, keepdim=True))
    return stack_steps(ys, u, H, V)


def _omega(P, u, h0=None):
    # Atlas' Omega rule (Behrouz et al. 2025) with a linear memory and window c: M = al M - sum_(i in last c)
    # g_i grad_M |M k_i - v_i|^2 / 2 = al M - sum_i g_i (M k_i - v_i) k_i^T, all gradients at M_(t-1); the state is
    # S = M^T [K, V] per head; k L2-normalised, g = sigmoid(W_g u) / c, al = sigmoid(W_a u + 2); y = M q = S^T q
    H, K, _ = P["W_q"].shape
    V = P["W_v"].shape[1]
    S = _carried(h0, "h", u.new_zeros(u.shape[0], H, K, V))
    c = h0["gw"].shape[-1] if isinstance(h0, dict) else OMEGA_C
    kw = _carried(h0, "kw", u.new_zeros(u.shape[0], H, K, c))
    vw = _carried(h0, "vw", u.new_zeros(u.shape[0], H, V, c))
    gw, ys = _carried(h0, "gw", u.new_zeros(u.shape[0], H, c)), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        k = matvec(P["W_k"], ut)
        kw = _shift_in(kw, k / ((k * k).sum(-1, keepdim=True) + 1e-6).sqrt())
        vw, gw = _shift_in(vw, matvec(P["W_v"], ut)), _shift_in(gw, sig(ut @ P["W_g"].T) / c)
        al = sig(ut @ P["W_a"].T + 2)[..., None, None]
        M = S.transpose(-1, -2)  # [V, K]
        grad = torch.einsum("zhi,zhbi,zhai->zhba", gw, torch.einsum("zhba,zhai->zhbi", M, kw) - vw, kw)
        S = (al * M - grad).transpose(-1, -2)
        ys.append(torch.einsum("zha,zhab->zhb", matvec(P["W_q"], ut), S))
    return stack_steps(ys, u, H, V)


def _antisym(P, u, h0=None):
    # AntisymmetricRNN (Chang et al. 2019) without its tanh: h = h + eps ((W - W^T - gam I) h + V u); y = W_o h
    n = P["W"].shape[0]
    Ac = P["W"] - P["W"].T - P["gam"] * torch.eye(n, dtype=F64)
    h, ys = (u.new_zeros(u.shape[0], n) if h0 is None else h0), []
    for t in range(u.shape[1]):
        h = h + P["eps"] * (h @ Ac.T + u[:, t] @ P["Vi"].T)
        ys.append(h @ P["Wo"].T)
    return stack_steps(ys, u, P["Wo"].shape[0])


def _legs_matrix(N):
    n = torch.arange(N, dtype=F64)
    s = (2 * n + 1).sqrt()
    return torch.where(n[:, None] > n[None, :], s[:, None] * s[None, :], torch.zeros(())) + torch.diag(n + 1), s


def _legs(P, u, h0=None):
    # HiPPO-LegS (Gu et al. 2020), forward Euler of d/dt c = -A c / t + B f / t at step k = 1, 2, ...:
    # c_k = (I - A / k) c_(k-1) + B f_k / k, A[n, m] = sqrt(2n+1) sqrt(2m+1) (n > m), n + 1 (n = m); B[n] = sqrt(2n+1);
    # one LegS memory per channel c of f = W_f u; y[c] = W_o[c] . c_k[c]
    d, N = P["Wo"].shape
    Al, Bl = _legs_matrix(N)
    c = _carried(h0, "h", u.new_zeros(u.shape[0], d, N))
    k, ys = _carried(h0, "t", u.new_zeros(u.shape[0])), []
    for t in range(u.shape[1]):
        k = k + 1
        f = u[:, t] @ P["W_f"].T  # [B, d]
        c = c - torch.einsum("nm,zcm->zcn", Al, c) / k[:, None, None] + Bl * f[..., None] / k[:, None, None]
        ys.append((P["Wo"] * c).sum(-1))
    return stack_steps(ys, u, d)


def _s4nplr(P, u, h0=None):
    # S4 (Gu et al. 2022) per channel with a real NPLR matrix A = -diag(lam) - p p^T and the bilinear transform
    # Ab = (I - dt/2 A)^-1 (I + dt/2 A), Bb = (I - dt/2 A)^-1 dt B, taken with a dense solve (no Woodbury);
    # x = Ab x + Bb u_c, y_c = C . x + D u_c
    d, n = P["p"].shape
    eye = torch.eye(n, dtype=F64)
    Ac = -torch.diag_embed(P["lam_log"].exp()) - P["p"][:, :, None] * P["p"][:, None, :]
    dt = P["log_dt"].exp()[:, None, None]
    Ab = torch.linalg.solve(eye - dt / 2 * Ac, eye + dt / 2 * Ac)
    Bb = torch.linalg.solve(eye - dt / 2 * Ac, dt[..., 0] * P["Bp"])
    x, ys = (u.new_zeros(u.shape[0], d, n) if h0 is None else h0), []
    for t in range(u.shape[1]):
        x = torch.einsum("cij,zcj->zci", Ab, x) + Bb * u[:, t, :, None]
        ys.append((P["Cp"] * x).sum(-1) + P["Dp"] * u[:, t])
    return stack_steps(ys, u, d)


def _softvq(P, u, h0=None):
    # Transformer-VQ (Lingle 2024) with soft codes: a key's code weights w = softmax_s(k.c_s / tau); the cache per
    # code M_s = sum_j w_s(k_j) v_j, n_s = sum_j w_s(k_j); y = sum_s e^(q.c_s / sqrt(K)) M_s / sum_s e^(...) n_s
    H, K, _ = P["W_q"].shape
    S_, V = P["cb"].shape[1], P["W_v"].shape[1]
    M = _carried(h0, "h", u.new_zeros(u.shape[0], H, S_, V))
    n, ys = _carried(h0, "n", u.new_zeros(u.shape[0], H, S_)), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        w = torch.softmax(torch.einsum("zha,hsa->zhs", matvec(P["W_k"], ut), P["cb"]) / P["tau"], -1)
        e = torch.exp(torch.einsum("zha,hsa->zhs", matvec(P["W_q"], ut), P["cb"]) / K ** 0.5)
        M, n = M + w[..., None] * matvec(P["W_v"], ut)[:, :, None, :], n + w
        ys.append(torch.einsum("zhs,zhsb->zhb", e, M) / (e * n).sum(-1, keepdim=True))
    return stack_steps(ys, u, H, V)


CASES = {
    "pola": (POLA, Family.CHUNKED_OUTER),  # the diagonal scan on main (unflatten_state: the fix below)
    "pola_split": (POLA_SPLIT, Family.CHUNKED_OUTER),
    "focused": (FOCUSED, Family.CHUNKED_OUTER),
    "infini": (INFINI, Family.CHUNKED_DELTA),
    "omega": (OMEGA, Family.DENSE_SCAN),
    "antisym": (ANTISYM, Family.DENSE_SCAN),
    "legs": (LEGS, Family.DENSE_SCAN),
    "s4nplr": (S4_NPLR, Family.DENSE_SCAN),
    "softvq": (SOFT_VQ, Family.CHUNKED_OUTER),
}
INDEPENDENT = {"pola": _pola, "pola_split": _pola, "focused": _flatten, "infini": _infini, "omega": _omega,
               "antisym": _antisym, "legs": _legs, "s4nplr": _s4nplr, "softvq": _softvq}
EIGEN = {"pola": Bound.MARGINAL, "pola_split": Bound.MARGINAL, "focused": Bound.MARGINAL, "infini": Bound.UNKNOWN,
         "omega": Bound.UNKNOWN, "antisym": Bound.UNKNOWN, "legs": Bound.UNKNOWN, "s4nplr": Bound.UNKNOWN,
         "softvq": Bound.MARGINAL}
# reports weaker than the truth (checked on the module's own A): the Omega rule's al I - sum_i g_i k_i k_i^T with
# unit keys and sum_i g_i < 1 has its eigenvalues in (al - 1, al]; the bilinear transform of a negative definite A
# has them in (-1, 1)
TRUE_BOUND = {"omega": Bound.STABLE, "s4nplr": Bound.STABLE}

_compiled, _built = case_builds(CASES)  # each spec compiled once per test worker

# forward (T = 0, 1, 7, 9, from zero and a random state) and gradients against the loops on torch (Triton: the
# carried-state test below); every path against dsfc's reference (Triton with gradients from a state) and the
# structure report (dsf_testing.spec_hunt_tests)
(test_new_spec_matches_an_independent_implementation, test_new_spec_gradients_match_an_independent_implementation,
 test_new_spec_matches_the_reference, test_the_structure_report_is_true) = spec_hunt_tests(
    CASES, INDEPENDENT, EIGEN, _built, true_bound=TRUE_BOUND, backends=("torch",))


@pytest.mark.parametrize("name", list(CASES))
def test_odd_lengths_from_a_carried_state_match_the_loop(name):
    """T = 1 and the chunk lengths +- 1 (torch's 64: T = 63, 65; Triton's 16 on the CPU: T = 17) from a carried
    state (the recurrent state with noise, the running entries from a real 3-step prefix: a normaliser, a step
    count, windows), on torch, token by token (T <= 17) and on Triton, against the loop; the final state against
    dsfc's reference."""
    built = _built(name)
    P, gen = built.params(), torch.Generator().manual_seed(7)
    for t, backends in ((1, ("torch",)), (15, ("torch",)), (17, ("triton",) if TRITON else ()),
                        (63, ("torch",)), (65, ("torch",))):
        u = torch.randn(2, t, built.d_in(), generator=gen, dtype=F64)
        h0 = built.initial_state(2, gen)
        want = INDEPENDENT[name](P, u, h0).reshape(2, t, built.d_out())
        h_ref = built.reference(u, h0)[1] if t <= 17 else None
        for backend in backends:
            built.model.backend = backend
            with torch.no_grad():
                y, hT = built.model(u, initial_state=h0, output_final_state=True)
            assert rel_err(y, want) < 1e-8 and (h_ref is None or state_err(hT, h_ref) < 1e-8), (backend, t)
        built.model.backend = "torch"
        if t <= 17 and "torch" in backends:
            with torch.no_grad():
                y_s, h_s = run_steps(built.model, u, h0)
            assert rel_err(y_s, want) < 1e-8 and state_err(h_s, h_ref) < 1e-8, ("step", t)


def test_polaformer_written_with_a_value_half_switch_gets_the_chunked_family():
    """PolaFormer as its code writes it (one state S[h, f, b: V]; the first half of the values read by the
    same-sign query, the second by the opposite-sign one, ``e // Vh`` in C): two linear attentions sharing keys, the
    chunked outer-product scan a hand-written kernel runs. It ran the elementwise diagonal scan over all H 2K V
    entries: the query varied along the value axis. ``unflatten_state`` now splits b into (b // Vh, b % Vh): C's
    ``delta(e, b)`` lets e's digit reads count as b's, and B's ``W_v[h, b, m]`` (b the whole subscript) reads the same
    entry at the digits' radix sum; the output is then split through the delta, and the half index is a group axis
    (PolaSplit's form). The module keeps the declared state [H, 2K, V]."""
    result = _compiled("pola")
    assert result.structure.family == Family.CHUNKED_OUTER, result.structure.family_reason
    assert [a.name for a in result.core.state.axes] == ["h", "f", "b_0", "b_1"]
    built = _built("pola")
    u = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(8), dtype=F64)
    with torch.no_grad():
        _, hT = built.model(u, output_final_state=True)
    assert hT.shape == (2, 2, 6, 4)


GQA_GATHER = """
model GqaGather "linear attention, queries shared by groups of R heads, read as q[o // R, a]; a decay param per head"
dim d = 4
dim G = 2
dim R = 2
dim H = G * R
dim K = 2
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_q[G, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
param lam[h: H] = 1 + h
let q[g: G, a: K] = sum(m, W_q[g, a, m] * u[m])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * exp(-exp(lam[h]))
B[(h, a, b), m] = sum(m2, W_k[h, a, m2] * u[m2]) * W_v[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[o // R, a]
"""


def test_a_block_index_read_only_as_a_gather_keeps_the_axis_whole():
    """The split above asks for a block index used as a value ((e // Vh) * qo): a tied output read only inside a
    subscript (GQA's ``q[o // R, a]``, next to ``lam[h]``) keeps the head axis whole, as before (no (G, R) split:
    the gather already runs as it is; the catalog's SSD, ``Cm[h // R, j]``, generates the same file)."""
    result = compile_text(GQA_GATHER, "gqa_gather.dsf")
    assert result.structure.family == Family.CHUNKED_OUTER, result.structure.family_reason
    assert [a.name for a in result.core.state.axes] == ["h", "a", "b"]


def test_polaformer_and_its_split_spelling_are_the_same_layer():
    """PolaFormer (its value axis split by the compiler) and PolaSplit (the split written) at the same parameters
    (W_v [H, V, d] is [H, 2, Vh, d] row-major) give the same outputs, T = 33 on torch."""
    a, b = _built("pola"), _built("pola_split")
    with torch.no_grad():
        for name in ("W_q", "W_k", "W_v"):
            getattr(b.model, name).copy_(getattr(a.model, name).reshape(getattr(b.model, name).shape))
        u = torch.randn(2, 33, 5, generator=torch.Generator().manual_seed(3), dtype=F64)
        assert rel_err(b.model(u), a.model(u)) < 1e-10


@pytest.mark.parametrize("dims", [dict(d=1, H=1, K=1, Vh=1), dict(d=7, H=3, K=2, Vh=5)])
def test_the_split_polaformer_at_other_dims_matches_its_loop(dims):
    """The split PolaFormer built at every dim 1 and at distinct primes (the halves' digit extents 2 and Vh follow the
    constructor's dims): T = 9 from a random state in the declared layout [H, 2K, V], on torch and token by token,
    against the loop."""
    built = _built("pola", **dims)
    P, gen = built.params(), torch.Generator().manual_seed(9)
    u = torch.randn(2, 9, dims["d"], generator=gen, dtype=F64)
    h0 = torch.randn(2, dims["H"], 2 * dims["K"], 2 * dims["Vh"], generator=gen, dtype=F64)
    want = _pola(P, u, h0).reshape(2, 9, -1)
    with torch.no_grad():
        y, hT = built.model(u, initial_state=h0, output_final_state=True)
        assert rel_err(y, want) < 1e-8 and hT.shape == h0.shape
        assert rel_err(run_steps(built.model, u, h0)[0], want) < 1e-8


def _a_eigs(built, u, running0=None):
    with torch.no_grad():
        return torch.linalg.eigvals(built.model.dsf_matrices(u, running0)[0] if running0
                                    else built.model.dsf_matrices(u)[0]).abs()


def test_unknown_bounds_are_not_provable_claims():
    """The three specs reported "unknown" do have eigenvalues beyond 1 where their maths says so (a claim of
    stability there would be false): the antisymmetric RNN |1 - eps gam + i eps w| > 1 once eps |w| is large
    (W scaled by 10); HiPPO-LegS at its first step, 1 - (n + 1) / 1 = -3 at n = N - 1; Infini-attention's first
    update 1 - |s(k)|^2 at a large input."""
    anti = _built("antisym")
    with torch.no_grad():
        anti.model.W.mul_(10)
    assert _a_eigs(anti, torch.zeros(1, 2, 3, dtype=F64)).max() > 1
    legs = _built("legs")
    lam = _a_eigs(legs, torch.zeros(1, 1, 2, dtype=F64))
    assert abs(lam.max().item() - 3) < 1e-12
    infini = _built("infini")
    assert _a_eigs(infini, 5 * torch.ones(1, 1, 5, dtype=F64)).max() > 1


def _errors(text: str) -> str:
    """The errors as the CLI prints them, hints included."""
    with pytest.raises((SpecError, SpecErrors)) as info:
        compile_text(text, "x.dsf")
    exc = info.value
    return exc.render() if isinstance(exc, SpecErrors) else render_error(exc, "x.dsf", text)


@pytest.mark.parametrize("spec,old,new,message", [
    # the LegS matrix's lower triangle written as a comparison: the language has none (found: the hint said only
    # "names are ASCII letters, digits and '_'", about a '>')
    ("legs", "min(max(n - k, 0), 1)", "(n > k)", "the language has no comparisons"),
    # a key row read with the value index (a wrong index)
    ("infini", "sk[h, a2] / den", "sk[h, b2] / den", "index 'b2' ranges over 2 values but axis 1 of 'sk' has extent 3"),
    # a dim used before it is declared (a missing dim)
    ("pola", "dim Vh = 2\n", "", "unknown dim 'Vh' in dim 'V'"),
    # a head axis dropped from a projection (a shape mismatch)
    ("infini", "W_v[h, b, m]", "W_v[b, m]", "param 'W_v' has 3 axes but is indexed with 2"),
    # the window axis dropped from a windowed key
    ("omega", "kw[h, a2, i]", "kw[h, a2]", "let 'kw' has 3 axes but is indexed with 2"),
    # a third column index for a 2-axis state
    ("s4nplr", "A[(c, i), (c2, j)]", "A[(c, i), (c2, j, z)]", "which has 2 axes, but 3 index names are given"),
])
def test_a_users_mistakes_get_clear_errors(spec, old, new, message):
    """Each mistake one positioned error naming it (no traceback)."""
    text = CASES[spec][0]
    assert old in text
    err = _errors(text.replace(old, new))
    assert message in err, err
    assert "x.dsf:" in err and "Traceback" not in err


def test_the_comparison_hint_names_the_integer_spellings():
    err = _errors(LEGS.replace("min(max(n - k, 0), 1)", "(n > k)"))
    assert "min(max(n - k, 0), 1)" in err and "delta(n, k)" in err, err
    assert "names are ASCII letters" not in err


def test_a_layer_with_only_window_lets_and_a_post_is_refused_clearly():
    """Griffin's local attention written as window lets and a post with A, B, C all zero: not a DSF (no state the
    output reads), refused at C's line with that reason."""
    err = _errors(LOCAL_ATTN)
    assert "matrix C is zero: the output never reads the state" in err, err
