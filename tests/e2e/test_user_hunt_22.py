"""The twenty-second user hunt: the secondary CLI commands (``analyze`` plain / ``--json`` / ``--latex``, ``check``
with its Triton path, ``plot``, ``compare``, ``bench``, ``catalog``) on the 186 spec texts of the spec hunts 10-25
(DPLR / KDA / RWKV-7, GateLoop and complex S5, softmax with decays and a KV cache, HMM and Titans, Mamba-3 MIMO,
running lets, posts, drive, readout pre, out-projections in C, dims of 1), written to files as a user would.

Found and fixed:

- ``dsfc check`` failed (exit 1, "triton forward y ... rel 4.4e-7") on spec hunt 18's ``0.5 * exp(delta(i, 2))``: the
  Triton printer wrote ``delta`` as ``tl.where(i == 2, 1.0, 0.0)``, an fp32 tile, so ``tl.exp`` of it was e in fp32
  inside a float64 kernel. A delta (and the ``_sign`` / ``_step`` helpers) is now cast to the kernel's dtype.
- ``dsfc catalog`` of a user's own specs attached the catalog's hand-written note "What the DSF says" by file name
  alone: an HMM saved as ``s6.dsf`` got S6's note on Mamba's selective scan. A note now needs the file name and the
  model name of the spec it was written for. The introduction of such a catalog no longer says that every section
  is a spec of ``specs/`` with a hand-written note, that the last section is the LSTM, or that a test of dsfc fails
  when the file is stale (all true only of docs/catalog.md).
- ``dsfc catalog`` stopped at the first spec with errors (in name order): a user fixed it, reran and met the next.
  It now reports every bad spec's errors, as ``compile``, ``analyze`` and ``check`` do, and says that nothing was
  written.
- ``dsfc plot`` of a layer whose kernel form is exactly 0 (ReBased with every dim 1: the LayerNorm of a 1-vector is 0,
  so its query is 0) drew a blank first panel with no colour bar, which read as a failed plot; the panel now says
  "Phi = 0 exactly: y is 0 at these dims and this input".

Checked clean (not kept: minutes of CPU): every command on every spec text; the 16 that dsfc rejects (a cycle of
lets, a gate of the state, y fed back, an inexact dim split, a zero divisor at the default dims) exit 2 with
``file:line:col`` errors from each command; ``plot`` of the quadratic-attention specs exits 2 naming the infinite
state; ``check --no-triton`` and ``plot`` with every dim 1 pass or exit 2 naming the subscript that leaves its
range, the inexact split, or (a DPFP feature map) the inf reference. No command took over 35 s at the small dims.
"""

from __future__ import annotations

from tests.triton._device import DEVICE  # noqa: F401,I001  (sets TRITON_INTERPRET=1 before triton is imported)

import math
import shutil
from pathlib import Path

import pytest
import torch

from dsfc.cli import main

from dsf_testing import F64, INTERPRETER_WARNINGS, TRITON, compile_and_build, rel_err

pytestmark = INTERPRETER_WARNINGS

ROOT = Path(__file__).resolve().parents[2]

NESTED = """
model NestedPick "per-head constant decay picked by deltas, one of them inside exp: 0.8, 0.7 and 0.5 e"
dim H = 3
input u[H]
state h[H]
A[i, j] = delta(i, j) * (0.3 * delta(i, 0) + 0.2 * delta(i, 1) + 0.5 * exp(delta(i, 2)))
B[i, m] = delta(i, m)
C[o, i] = delta(o, i)
"""

# a small layer of the user's own (a per-channel leaky integrator), saved under a catalog spec's file name
LEAKY = """
# A leaky integrator per channel: h = sigmoid(a) h + u.
model Leaky "per-channel leaky integrator with a learned constant decay"
dim d = 2
input u[d]
state h[d]
param a[d] ~ normal(0, 1)
A[i, j] = delta(i, j) * sigmoid(a[i])
B[i, m] = delta(i, m)
C[o, i] = delta(o, i)
"""


def _nested_loop(u: torch.Tensor) -> torch.Tensor:
    """h_t = diag(0.8, 0.7, e / 2) h_(t-1) + u_t, y_t = h_t, in float64."""
    a = torch.tensor([0.8, 0.7, 0.5 * math.e], dtype=F64)
    h = torch.zeros(u.shape[0], 3, dtype=F64)
    ys = []
    for t in range(u.shape[1]):
        h = a * h + u[:, t]
        ys.append(h)
    return torch.stack(ys, 1)


@pytest.mark.skipif(not TRITON, reason="triton not installed")
def test_a_delta_inside_a_function_is_in_the_kernels_dtype():
    built = compile_and_build(NESTED, {"H": 3})
    u = torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    want = _nested_loop(u)
    for backend in ("torch", "triton"):
        built.model.backend = backend
        with torch.no_grad():
            got = built.model(u)
        # e / 2 rounded to fp32 was 4e-7 off; float64 summation order alone is ~1e-16
        assert rel_err(got, want) < 1e-12, (backend, rel_err(got, want))


@pytest.mark.skipif(not TRITON, reason="triton not installed")
def test_dsfc_check_passes_on_it(tmp_path, capsys):
    spec = tmp_path / "nested.dsf"
    spec.write_text(NESTED)
    assert main(["check", str(spec)]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "triton forward y" in out and "BAD" not in out, out


def test_a_users_spec_named_like_a_catalog_spec_gets_no_catalog_note(tmp_path, capsys):
    (tmp_path / "s6.dsf").write_text(LEAKY)
    out = tmp_path / "catalog.md"
    assert main(["catalog", str(tmp_path / "s6.dsf"), "-o", str(out)]) == 0, capsys.readouterr().err
    text = out.read_text()
    assert "## Leaky:" in text
    assert "What the DSF says" not in text  # S6's note (Mamba's selective scan) was attached to it
    assert "Mamba" not in text and "selective" not in text
    intro = text.split("| spec", 1)[0]
    assert "spec of `specs/`" not in intro and "LSTM" not in intro and "test_catalog_doc" not in intro, intro
    assert "All of it is computed." in intro, intro


def test_the_catalog_spec_itself_keeps_its_note_in_a_mixed_catalog(tmp_path, capsys):
    shutil.copy(ROOT / "specs" / "s6.dsf", tmp_path / "s6.dsf")
    (tmp_path / "leaky.dsf").write_text(LEAKY)
    out = tmp_path / "catalog.md"
    assert main(["catalog", str(tmp_path / "s6.dsf"), str(tmp_path / "leaky.dsf"), "-o", str(out)]) == 0, \
        capsys.readouterr().err
    text = out.read_text()
    s6 = text.split('<a id="s6"></a>', 1)[1]
    leaky = text.split('<a id="leaky"></a>', 1)[1].split('<a id="s6"></a>', 1)[0]
    assert "### What the DSF says" in s6
    assert "### What the DSF says" not in leaky
    intro = text.split("| spec", 1)[0]
    assert "same file and model name" in intro and "LSTM" not in intro, intro


# a centred readout: C = c^T with c = u - mean(u), exactly 0 when d = 1 (as ReBased's LayerNorm'd query at K = 1)
CENTRED = """
model Centred "a leaky integrator read through the centred input: y = (u - mean(u)) * h, zero when d = 1"
dim d = 2
input u[d]
state h[d]
let c[i: d] = u[i] - sum(m, u[m]) / d
A[i, j] = delta(i, j) * 0.5
B[i, m] = delta(i, m)
C[o, i] = delta(o, i) * c[i]
"""


def test_a_kernel_form_that_is_exactly_zero_is_said_so_on_the_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from dsfc.pipeline import compile_text
    from dsfc.plot import compute, draw

    result = compile_text(CENTRED, str(tmp_path / "centred.dsf"))
    data = compute(result, T=4, dims={"d": 1})
    assert not data.phi.any()  # y = 0 * h: the maths, not the plot, makes it zero
    texts = [t.get_text() for ax in draw(result, data).axes for t in ax.texts]
    assert any(t.startswith("Phi = 0 exactly") for t in texts), texts  # was a blank panel and no colour bar
    data = compute(result, T=4, dims={"d": 2})
    assert data.phi.any()
    texts = [t.get_text() for ax in draw(result, data).axes for t in ax.texts]
    assert not any(t.startswith("Phi = 0") for t in texts), texts


def test_catalog_reports_every_bad_spec_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "leaky.dsf").write_text(LEAKY)
    (tmp_path / "cycle.dsf").write_text(LEAKY.replace("sigmoid(a[i])", "z[i]") + "let z[i: d] = prev(w[i])\n"
                                        "let w[i: d] = z[i] * u[i]\n")
    (tmp_path / "typo.dsf").write_text(LEAKY.replace("sigmoid(a[i])", "sigmoid(aa[i])"))
    out = tmp_path / "catalog.md"
    specs = [str(tmp_path / n) for n in ("leaky.dsf", "cycle.dsf", "typo.dsf")]
    assert main(["catalog", *specs, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    # it stopped at the first bad spec (in name order): the user fixed it, reran and met the next
    assert "cycle.dsf:" in err and "typo.dsf:" in err, err
    assert "nothing written (2 of 3 spec(s) have errors)" in err, err
    assert not out.exists()
