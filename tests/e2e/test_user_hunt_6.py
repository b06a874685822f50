"""Found by the sixth user hunt (a new user following the README, then bad input to the CLI and the generated
modules). Each test failed before its fix."""

from __future__ import annotations

from pathlib import Path

from dsfc.cli import main
from dsfc.lang.errors import EXCERPT_WIDTH, Span, SpecError, render_error

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"


def test_module_names_that_differ_only_in_case_are_refused(tmp_path, capsys):
    # s6.dsf and S6.dsf were written to s6.py and S6.py: one file on macOS / Windows, where the second silently
    # replaced the first while both were reported as compiled
    (tmp_path / "a").mkdir()
    a, b = tmp_path / "s6.dsf", tmp_path / "a" / "S6.dsf"
    a.write_text((SPECS / "s6.dsf").read_text())
    b.write_text((SPECS / "hgrn.dsf").read_text())
    out = tmp_path / "out"
    assert main(["compile", str(a), str(b), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{a} and {b} would both be written to s6.py and S6.py" in err and "differ only in case" in err
    assert "no files written" in err and "Traceback" not in err
    assert not out.exists()


def test_a_long_source_line_is_cut_around_the_error(tmp_path, capsys):
    # the excerpt printed the whole line: a 3000-term sum gave a ~100 kB line and a caret underline as long, and a
    # binary file's first "line" filled the screen
    spec = (SPECS / "s6.dsf").read_text()
    let_b = "let b[j: n] = sum(k, W_B[j, k] * u[k])"
    assert let_b in spec
    bad = tmp_path / "long.dsf"
    bad.write_text(spec.replace(let_b, let_b + " + 0 * sum(k, W_B[j, k] * u[k])" * 3000))
    binary = tmp_path / "bin.dsf"
    binary.write_bytes(bytes(range(1, 256)) * 40 + b"\0")
    assert main(["compile", str(bad), str(binary), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "expression is nested too deeply" in err and "file is binary" in err
    assert max(len(line) for line in err.splitlines()) < EXCERPT_WIDTH + 200, [len(x) for x in err.splitlines()]


def test_the_caret_stays_under_the_error_in_a_cut_line():
    for before, after in ((300, 300), (300, 0), (4, 300)):
        src = "x" * before + "BAD" + "y" * after
        text, caret = render_error(SpecError("m", Span(1, before + 1, 1, before + 4)), "p", src).splitlines()[1:3]
        at = caret.index("^")
        assert text[at:at + 3] == "BAD" and caret[at:] == "^~~", (before, after, text, caret)
        assert len(text) <= 4 + 3 + EXCERPT_WIDTH + 3
    # an error just past the end of a long line (a missing token at the end of the line)
    text, caret = render_error(SpecError("m", Span(1, 401)), "p", "z" * 400).splitlines()[1:3]
    assert caret.index("^") == len(text)


def test_a_half_precision_attention_decode_loop_keeps_its_running_log_sum_finite():
    # the KV-cache state's running entry eta_prev (a log kernel sum) came back in the input's dtype: fp16 holds at
    # most 65504, so at large scores it was inf, and the next step() refused the state it had just returned
    # ("state['eta_prev'] contains NaN or inf") while forward's own output was right
    import torch
    import torch.nn.functional as F

    from generated.softmax_attention import SoftmaxAttention

    torch.manual_seed(0)
    H, K, V, d, T = 2, 2, 2, 4, 6
    model = SoftmaxAttention(d=d, H=H, K=K, V=V)
    with torch.no_grad():
        model.W_Q.mul_(2000)
        model.W_K.mul_(2000)
    u = torch.randn(1, T, d).half()
    state, ys = None, []
    for t in range(T):
        y_t, state = model.step(u[:, t], state)
        ys.append(y_t)
    assert state["eta_prev"].dtype == torch.float32 and state["cache:keys"].dtype == torch.float16
    # oracle: causal softmax attention in float64 on the fp16 input, per head, scale 1/sqrt(K)
    x, (wq, wk, wv) = u.double()[0], (w.detach().double() for w in (model.W_Q, model.W_K, model.W_V))
    q, k, v = (torch.einsum("ham,tm->hta", w, x) for w in (wq, wk, wv))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True).permute(1, 0, 2).reshape(T, H * V)
    got = torch.stack(ys, 1)[0].double()
    assert (got - want).abs().max() < 2e-2 * want.abs().max(), (got, want)


def test_plot_refuses_a_length_or_resolution_it_cannot_hold(tmp_path, capsys):
    # --T 100000 asked for a 2 TB kernel form and --dpi 100000 for a 1.6M x 520k pixel image: both were "internal
    # error ... a bug in dsfc" (exit 3) after the work had started
    out = tmp_path / "s6.png"
    spec = str(SPECS / "s6.dsf")
    assert main(["plot", spec, "--T", "100000", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the kernel form Phi of 100000 steps" in err and "use a smaller --T" in err and "internal" not in err
    assert main(["plot", spec, "--dpi", "100000", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--dpi must be at most" in err and "got 100000" in err and "internal" not in err
    assert not out.exists()


def test_an_allocation_the_sizes_make_impossible_is_a_usage_error(capsys):
    # `dsfc bench -T 1000000000` was "internal error: RuntimeError: [enforce fail at alloc_cpu.cpp:127] ... This is
    # a bug in dsfc" (exit 3): the size is the user's choice, so it is exit 2 naming the options to shrink
    assert main(["bench", str(SPECS / "s6.dsf"), "-T", str(10**12), "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert "dsfc bench: error: out of memory (" in err and "use a smaller -T, --batch or --dims" in err, err
    assert "internal error" not in err and len(err.strip().splitlines()) == 1


def test_hgrn_refuses_a_layer_number_past_the_last_layer():
    # HGRN(L=2, layer=5) was accepted: its lower bound gamma_l summed softmax weights up to 3 times, so the forget
    # gate f = gamma_l + (1 - gamma_l) sigmoid(.) exceeded 1 (A_t ~ 1.5, |y| ~ 1e35 after 200 steps) while
    # `dsfc analyze` reports |lambda| < 1
    import pytest
    import torch

    from generated.hgrn import HGRN

    with pytest.raises(ValueError, match=r"HGRN: at d=4, E=4, L=2, layer=3: dim later = L - layer \+ 1 must be"):
        HGRN(d=4, E=4, L=2, layer=3)
    torch.manual_seed(0)
    model = HGRN(d=4, E=4, L=2, layer=2).double()  # the last layer is fine, and its A_t is inside (0, 1)
    A = model.dsf_matrices(torch.randn(1, 6, 4, dtype=torch.float64))[0].diagonal(dim1=-2, dim2=-1)
    assert bool(((A > 0) & (A < 1)).all()), A
