"""Command line: ``dsfc compile | analyze | check | bench | plot | compare | catalog``.

User mistakes in a spec print ``path:line:col: error: ...`` with the line and a caret and exit with code 2 (no
traceback, no output file written). A failed numerical check exits with code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from pathlib import Path

from . import __version__
from .lang.errors import SpecErrors, SpecWarning

EXIT_SPEC_ERROR = 2
EXIT_INTERNAL_ERROR = 3  # a bug in dsfc, not in the spec: one line naming it (DSFC_TRACEBACK=1 for the traceback)
EXIT_CHECK_FAILED = 1


def _compile_all(paths, on_result):
    """Compile every spec; report every spec's errors; call on_result for the good ones. Returns ok flag."""
    from .pipeline import compile_spec

    ok = True
    results = []
    for p in paths:
        try:
            results.append(compile_spec(p))
        except SpecErrors as exc:
            print(exc.render(), file=sys.stderr)
            ok = False
    if ok:
        for r in results:
            on_result(r)
    return ok, results


def cmd_compile(args) -> int:
    from .check import run_check
    from .pipeline import write_result

    out_dir = Path(args.output)
    written = []
    # compile everything first: a bad spec anywhere means nothing is written
    ok, results = _compile_all(args.specs, lambda r: None)
    if not ok:
        print(f"dsfc: no files written ({len(args.specs)} spec(s) given)", file=sys.stderr)
        return EXIT_SPEC_ERROR
    clash = (_reserved_module_name(results, out_dir) or _output_clash(results)
             or _overwritten_spec([out_dir / f"{r.module_name}.py" for r in results], [r.spec.path for r in results]))
    if clash:  # the later spec's module silently replaced the earlier one's
        print(f"dsfc compile: error: {clash}; no files written", file=sys.stderr)
        return EXIT_SPEC_ERROR
    # the same spec twice (a glob and its name): written once
    first = {}
    for r in results:
        first.setdefault(Path(r.spec.path).resolve(), r)
    results = list(first.values())
    problem = _unwritable_dir(out_dir)  # before the first file: all or nothing
    if problem:
        print(f"dsfc compile: error: cannot write to {out_dir}: {problem}; no files written", file=sys.stderr)
        return EXIT_SPEC_ERROR
    # an output name taken by a directory (or a socket, ...): os.replace would fail after earlier files were written
    taken = next((p for p in (out_dir / f"{r.module_name}.py" for r in results) if p.exists() and not p.is_file()),
                 None)
    if taken is not None:
        kind = "a directory" if taken.is_dir() else "a special file"
        print(f"dsfc compile: error: cannot write {taken}: it is {kind}, not a file; no files written", file=sys.stderr)
        return EXIT_SPEC_ERROR
    # --check runs before the first write: a module that fails its check is not left in the output directory (nor
    # does it replace an earlier, good one there), and one failed spec leaves the others unwritten too
    failed = []
    for r in results if args.check else ():
        rep = run_check(r)
        ok_line = f"checked {r.spec.path}: ok ({len(rep.rows)} comparisons vs the reference)"
        print(rep.table() if args.verbose or not rep.ok else ok_line)
        if not rep.ok:
            failed.append(f"{r.spec.path}: {rep.worst()}")
    if failed:
        for line in failed:
            print(f"dsfc compile: check failed: {line}", file=sys.stderr)
        print(f"dsfc compile: no files written ({len(failed)} of {len(results)} spec(s) failed the check; without "
              "--check the modules are written unchecked)", file=sys.stderr)
        return EXIT_CHECK_FAILED
    for r in results:
        path = write_result(r, out_dir)
        written.append(path)
        print(f"compiled {r.spec.path} -> {path}  ({r.report.family}, N = {r.report.state_size})")
    return 0


def _output_clash(results) -> str | None:
    """Two different specs whose generated files have the same name (``a/x.dsf`` and ``b/x.dsf``, ``my-spec.dsf``
    and ``my_spec.dsf``), or None."""
    by_name, names = {}, {}
    for r in results:
        # by the name's case-folded form: s6.dsf and S6.dsf gave s6.py and S6.py, one file on a case-insensitive
        # file system (macOS, Windows), where the second replaced the first
        key = r.module_name.casefold()
        by_name.setdefault(key, {}).setdefault(Path(r.spec.path).resolve(), r.spec.path)
        names.setdefault(key, {}).setdefault(r.module_name)
    for key, paths in by_name.items():
        if len(paths) > 1:
            files = " and ".join(f"{n}.py" for n in names[key])
            case = " (names that differ only in case are one file on macOS and Windows)" if len(names[key]) > 1 else ""
            return (f"{' and '.join(paths.values())} would both be written to {files}{case}; rename one of them "
                    "or compile them into different -o directories")
    return None


def _overwritten_spec(outputs, specs) -> str | None:
    """An output path that is one of the input specs itself, or None: ``dsfc compile x/m.py -o x`` (a spec saved
    with a .py suffix) or ``dsfc catalog s.dsf -o s.dsf`` replaced the user's spec with the generated text without a
    word (symlinks and hard links to a spec count: the write follows them)."""
    import os

    for out in outputs:
        for spec in specs:
            try:
                same = os.path.samefile(out, spec)
            except (OSError, ValueError):  # the output does not exist yet (so it is not the spec)
                continue
            if same:
                return f"the output {out} is the spec {spec} itself: writing it would replace the spec"
    return None


def _reserved_module_name(results, out_dir: Path) -> str | None:
    """A spec whose module name is a dunder name (``__init__.dsf``, ``__main__.dsf``), or None: its module would
    replace the package's own ``__init__.py`` / ``__main__.py`` in the output directory (generated/ is a package)."""
    for r in results:
        name = r.module_name
        if len(name) > 4 and name.startswith("__") and name.endswith("__"):
            return (f"{r.spec.path} would be written to {out_dir / (name + '.py')}, a name Python reserves for "
                    "package files (__init__.py, __main__.py); rename the spec")
    return None


def _unwritable_dir(out_dir: Path) -> str | None:
    """Why files cannot be written into ``out_dir`` (created if missing), or None."""
    if out_dir.exists() and not out_dir.is_dir():
        return "it is a file, not a directory"
    if not out_dir.exists() and out_dir.suffix.lower() in (".py", ".dsf"):
        # `-o s6.py` made a directory s6.py holding s6.py/s6.py: -o names a directory, a module's file is named after
        # its spec. An existing directory of that name is still used.
        return ("-o names the output directory, and this looks like a file name (each module is written as "
                "<spec name>.py inside -o)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    import os

    return None if os.access(out_dir, os.W_OK | os.X_OK) else "permission denied"


def cmd_analyze(args) -> int:
    ok, results = _compile_all(args.specs, lambda r: None)
    if not ok:
        return EXIT_SPEC_ERROR
    if args.json:
        out = [r.report.to_dict() for r in results]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=2, default=list))
        return 0
    if args.latex:
        for r in results:
            print(latex_matrices(r))
        return 0
    if len(results) > 1 and not args.long:
        print(catalog_table(results))
        return 0
    for i, r in enumerate(results):
        if i:
            print()
        print(f"== {r.spec.path}")
        print(r.report.table())
    return 0


def catalog_table(results) -> str:
    header = ["spec", "A", "B u", "coupling", "eigenvalues", "N (default)", "family"]
    rows = [header]
    for r in results:
        rep = r.report
        a_kind = (rep.a_kind + (" (I - rank-1)" if rep.a_low_rank else "")
                  + (" (2x2: complex)" if rep.a_complex_diagonal else ""))
        n_default = "inf" if rep.state_size_default is None else rep.state_size_default
        rows.append([
            Path(r.spec.path).name, a_kind, rep.b_form, ", ".join(rep.coupling) or "-",
            rep.eigen_bound.replace("|", "\\|"), f"{rep.state_size} = {n_default}", rep.family,
        ])
    widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def latex_matrices(r) -> str:
    import sympy as sp

    out = [f"% {r.spec.path}: {r.sym.model}"]
    for name in ("A", "B", "C", "D"):
        m = r.sym.matrices.get(name)
        if m is None:
            out.append(f"{name} = 0")
            continue
        rows = ", ".join(sp.latex(s) for s in m.rows)
        cols = ", ".join(sp.latex(s) for s in m.cols)
        out.append(f"{name}_{{({rows}),({cols})}} = {sp.latex(m.entry)}")
    return "\n".join(out)


def cmd_check(args) -> int:
    from .check import run_check, small_dims
    from .plot import PlotError, override_dims

    try:
        overrides = _parse_dims_strict(args.dims)
    except ValueError as exc:
        print(f"dsfc check: error: {exc}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    ok, results = _compile_all(args.specs, lambda r: None)
    if not ok:
        return EXIT_SPEC_ERROR
    dims = {}
    for r in results:  # every spec's dims before the first check: an unknown name fails fast, naming the spec
        try:
            dims[r.spec.path] = override_dims(r, small_dims(r), overrides) if overrides else None
        except PlotError as exc:
            print(f"dsfc check: error: {r.spec.path}: {exc}", file=sys.stderr)
            return EXIT_SPEC_ERROR
    status = 0
    for r in results:
        t0 = time.perf_counter()
        rep = run_check(r, dims=dims[r.spec.path], seed=args.seed, triton=not args.no_triton)
        print(rep.table())
        print(f"  {'PASS' if rep.ok else 'FAIL'} in {time.perf_counter() - t0:.1f} s")
        if not rep.ok:
            print(f"dsfc check: {r.spec.path}: {rep.worst()}", file=sys.stderr)
        if not rep.ok:
            status = EXIT_CHECK_FAILED
    return status


def cmd_bench(args) -> int:
    if args.gpu:
        # the GPU benchmark times fixed groups (the catalog's S6, SSD, GLA, linear attention at set dims and
        # lengths) against anchors, not these specs: options of the CPU benchmark were silently ignored
        ignored = [name for name, given in (("spec arguments", args.specs), ("--dims", args.dims), ("-T", args.T),
                                            ("--batch", args.batch), ("--repeats", args.repeats),
                                            ("--compile", args.compile), ("--memory", args.memory)) if given]
        if ignored:
            print(f"dsfc bench: error: --gpu does not take {', '.join(ignored)}: it times fixed groups (generated S6, "
                  "SSD, GLA, linear and softmax attention at set dims and lengths) against mamba-ssm / fla / torch's "
                  "scaled_dot_product_attention, not given specs; "
                  "for its own -T, --batch, --groups, --dtype options run python benchmarks/gpu_bench.py --help",
                  file=sys.stderr)
            return EXIT_SPEC_ERROR
        from .gpu_bench import main as gpu_main

        return gpu_main(["--quick"] if args.quick else [])
    if args.quick:
        print("dsfc bench: --quick goes with --gpu", file=sys.stderr)
        return EXIT_SPEC_ERROR
    if not args.specs:
        print("dsfc bench: give one or more specs (or --gpu)", file=sys.stderr)
        return EXIT_SPEC_ERROR
    # None = not given (so that --gpu can refuse them); the CPU benchmark's defaults
    args.T = 4096 if args.T is None else args.T
    args.batch = 1 if args.batch is None else args.batch
    args.repeats = 3 if args.repeats is None else args.repeats
    from .bench import run_bench

    try:
        dims = _parse_dims_strict(args.dims)
    except ValueError as exc:
        print(f"dsfc bench: error: {exc}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    if args.T < 1 or args.batch < 1 or args.repeats < 1:
        print(f"dsfc bench: error: -T, --batch and --repeats must be at least 1, got {args.T}, {args.batch}, "
              f"{args.repeats}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    ok, results = _compile_all(args.specs, lambda r: None)
    if not ok:
        return EXIT_SPEC_ERROR
    from .bench import check_dims

    for r in results:  # every spec's dims before the first (long) run: a typo was a TypeError traceback
        try:
            check_dims(r, dims)
        except ValueError as exc:
            print(f"dsfc bench: error: {r.spec.path}: {exc}", file=sys.stderr)
            return EXIT_SPEC_ERROR
    for r in results:
        run_bench(r, batch=args.batch, T=args.T, dims=dims, repeats=args.repeats,
                  compiled=args.compile, memory=args.memory)
    return 0


MAX_DPI = 1200  # dsfc plot: 19200 x 6240 pixels, ~480 MB of RGBA while drawing
# below ~6 dpi FreeType cannot size the figure's smallest text (under one pixel per em): --dpi 1..5 was "internal
# error: RuntimeError: FT_Set_Char_Size ... invalid ppem value" after the plot was computed
MIN_DPI = 10


def cmd_plot(args) -> int:
    from .pipeline import compile_spec

    try:
        dims = _parse_dims_strict(args.dims)
    except ValueError as exc:
        print(f"dsfc plot: error: {exc}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    import importlib.util

    from .plot import PlotError, image_format, plot_spec, resolve_dims

    result = compile_spec(args.spec)  # SpecErrors -> exit 2 in main(), before anything is written
    try:
        dims = resolve_dims(result, dims)
        if args.T < 1:
            raise PlotError(f"--T must be at least 1, got {args.T}")
        if args.dpi < MIN_DPI:  # matplotlib's own ValueError came out as a traceback after the plot was computed
            raise PlotError(f"--dpi must be at least {MIN_DPI} (a {16 * MIN_DPI} x {round(5.2 * MIN_DPI)} pixel "
                            f"image; smaller, the text cannot be drawn), got {args.dpi}")
        if args.dpi > MAX_DPI:  # the 16 x 5.2 inch figure: --dpi 100000 was an internal error (std::bad_alloc)
            raise PlotError(f"--dpi must be at most {MAX_DPI} (a {16 * MAX_DPI} x {round(5.2 * MAX_DPI)} pixel "
                            f"image), got {args.dpi}")
    except PlotError as exc:
        print(f"dsfc plot: error: {exc}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    if importlib.util.find_spec("matplotlib") is None:  # an optional extra
        print("dsfc plot: needs matplotlib: pip install 'dsfc[plot]'", file=sys.stderr)
        return EXIT_CHECK_FAILED
    out = Path(args.output) if args.output else Path(f"{Path(args.spec).stem}.png")
    clash = _overwritten_spec([out], [args.spec])
    if clash:
        print(f"dsfc plot: error: {clash}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    try:
        image_format(out)  # a directory or a suffix matplotlib cannot write: refused before the plot is computed
        path = plot_spec(result, out, T=args.T, dims=dims, seed=args.seed, dpi=args.dpi)
    except PlotError as exc:
        print(f"dsfc plot: error: {exc}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    print(path)
    return 0


def cmd_compare(args) -> int:
    from .compare import compare_text

    ok, results = _compile_all([args.a, args.b], lambda r: None)
    if not ok:
        return EXIT_SPEC_ERROR
    print(compare_text(results[0], results[1], latex=args.latex, width=args.width))
    return 0


def cmd_catalog(args) -> int:
    from .catalog import render_catalog
    from .codegen.emit import write_atomic

    specs = args.specs or sorted(str(p) for p in Path("specs").glob("*.dsf"))
    if not specs:
        print("dsfc catalog: error: no specs given and no specs/*.dsf here", file=sys.stderr)
        return EXIT_SPEC_ERROR
    if Path(args.output).is_dir():  # was "cannot write docs: Is a directory" after every spec had been analysed
        print(f"dsfc catalog: error: -o {args.output} is a directory; give the output file (e.g. "
              f"{Path(args.output) / 'catalog.md'})", file=sys.stderr)
        return EXIT_SPEC_ERROR
    # a spec given twice (specs/*.dsf specs/s6.dsf) was two identical sections; two specs of one name (a/x.dsf,
    # b/x.dsf) two sections with one anchor id, where the table of contents led to the first for both
    unique, by_stem = {}, {}
    for spec in specs:
        unique.setdefault(Path(spec).resolve(), spec)
    for spec in unique.values():
        other = by_stem.setdefault(Path(spec).stem, spec)
        if other != spec:
            print(f"dsfc catalog: error: {other} and {spec} would share the section anchor #{Path(spec).stem}; "
                  "rename one", file=sys.stderr)
            return EXIT_SPEC_ERROR
    specs = list(unique.values())
    clash = _overwritten_spec([args.output], specs)
    if clash:
        print(f"dsfc catalog: error: {clash}; nothing written", file=sys.stderr)
        return EXIT_SPEC_ERROR
    try:
        text = render_catalog(specs)  # every bad spec's errors before anything is written
    except SpecErrors as exc:
        print(exc.render(), file=sys.stderr)
        bad = len(getattr(exc, "each", [exc]))
        print(f"dsfc catalog: nothing written ({bad} of {len(specs)} spec(s) have errors)", file=sys.stderr)
        return EXIT_SPEC_ERROR
    write_atomic(Path(args.output), text)
    print(f"wrote {args.output} ({len(specs)} spec(s))")
    return 0


def _parse_dims_strict(items) -> dict:
    """``['d=4', 'n=2']`` -> ``{'d': 4, 'n': 2}``; ValueError naming the bad item."""
    out = {}
    for item in items or []:
        k, eq, v = item.partition("=")
        k, v = k.strip(), v.strip()
        if not eq or not k.isidentifier():
            raise ValueError(f"--dims takes NAME=INT items, got {item!r}")
        try:
            value = int(v)
        except ValueError:
            raise ValueError(f"--dims {k}: expected an integer, got {v!r}") from None
        if k in out and out[k] != value:  # `d=3 d=4` silently ran at d = 4
            raise ValueError(f"--dims {k} is given twice, as {out[k]} and {value}")
        out[k] = value
    return out


def _refuse_extra_arguments(parsers: dict, command: str, extra: list[str]) -> None:
    """Arguments a subcommand does not take: the top-level parser's "dsfc: error: unrecognized arguments" printed the
    usage of ``dsfc`` itself, not of the subcommand, and did not say that ``compare`` takes two specs, ``plot`` one,
    or that an option belongs to another subcommand (``dsfc compile --dims``). Exits 2, as argparse does."""
    hints = []
    options = {a for a in extra if a.startswith("-")}
    if len(options) < len(extra) and command in ("compare", "plot"):
        hints.append("dsfc compare takes exactly two specs" if command == "compare"
                     else "dsfc plot takes one spec: run it once per spec")
    for option in sorted(options):
        owners = [name for name, p in parsers.items() if option.split("=")[0] in p._option_string_actions]
        if owners:
            hints.append(f"{option.split('=')[0]} is an option of dsfc {' / dsfc '.join(owners)}")
    hint = f" ({'; '.join(hints)})" if hints else ""
    parsers[command].error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dsfc", description="Compile DSF specs of sequence-model layers to PyTorch.")
    parser.add_argument("--version", action="version", version=f"dsfc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="generate a PyTorch module per spec")
    p.add_argument("specs", nargs="+")
    p.add_argument("-o", "--output", default="generated", help="output directory (default: generated/)")
    p.add_argument("--check", action="store_true",
                   help="also run dsfc check on each module before writing it; a failed check writes nothing (exit 1)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("analyze", help="print the structure report")
    p.add_argument("specs", nargs="+")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="the report as JSON")
    g.add_argument("--latex", action="store_true", help="A, B, C, D in LaTeX index form")
    g.add_argument("--long", action="store_true", help="the full report per spec even for several specs")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("check", help="generated forward/step (and Triton kernels) vs the float64 reference recurrence")
    p.add_argument("specs", nargs="+")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dims", nargs="*", action="extend", metavar="NAME=INT",
                   help="dim overrides of the small check dims, e.g. d=7 H=3 (default: the spec's dims shrunk)")
    p.add_argument("--no-triton", action="store_true",
                   help="skip the Triton path (checked by default; interpreted when there is no GPU)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("bench", help="generated CPU forward vs a per-step loop (selective_scan_ref style); --gpu: "
                       "the generated kernels vs mamba-ssm / fla on the GPU")
    p.add_argument("specs", nargs="*")
    p.add_argument("--gpu", action="store_true", help="the GPU benchmark of fixed groups (dsfc/gpu_bench.py; takes "
                   "no specs and none of the options below but --quick; its own options: python "
                   "benchmarks/gpu_bench.py --help)")
    p.add_argument("--quick", action="store_true", help="with --gpu: small sizes, T=1024 only")
    p.add_argument("--batch", type=int, help="batch size (default 1)")
    p.add_argument("-T", type=int, help="sequence length (default 4096)")
    p.add_argument("--dims", nargs="*", action="extend", help="dim overrides, e.g. d=256 n=16")
    p.add_argument("--repeats", type=int, help="timed runs per side, the median is reported (default 3)")
    p.add_argument("--compile", action="store_true", help="allow the torch.compile'd scan path")
    p.add_argument("--memory", action="store_true",
                   help="also measure each side's peak resident memory (one fresh process each; Linux)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("plot", help="kernel form |Phi|, eigenvalues of A_t over time and structure facts, as a PNG")
    p.add_argument("spec")
    p.add_argument("-o", "--output", help="output image; its suffix picks the format: .png, .pdf, .svg, ... "
                   "(default: <spec stem>.png in the current directory)")
    p.add_argument("--T", "-T", type=int, default=32, help="sequence length of the random input (default 32)")
    p.add_argument("--dims", nargs="*", action="extend", metavar="NAME=INT",
                   help="dim overrides of the small check dims, e.g. d=4 n=2")
    p.add_argument("--seed", type=int, default=0, help="seed of the parameters and of the random input")
    p.add_argument("--dpi", type=int, default=80, help="resolution of the image (default 80, 10 to 1200)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("compare", help="two specs side by side: structure, DSF matrices, differences")
    p.add_argument("a", metavar="A.dsf")
    p.add_argument("b", metavar="B.dsf")
    p.add_argument("--latex", action="store_true", help="DSF matrices in LaTeX instead of sympy.sstr")
    p.add_argument("--width", type=int, default=120,
                   help="line width of the side-by-side table (default 120, at most 10000)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("catalog", help="write the model catalog (docs/catalog.md): table, specs, analysis, notes")
    p.add_argument("specs", nargs="*", help="specs to include (default: specs/*.dsf)")
    p.add_argument("-o", "--output", default="docs/catalog.md", help="output file (default: docs/catalog.md)")
    p.set_defaults(func=cmd_catalog)

    args, extra = parser.parse_known_args(argv)
    if extra:
        _refuse_extra_arguments(sub.choices, args.command, extra)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _PipeSafe(sys.stdout), _PipeSafe(sys.stderr)
    try:
        return _run(args)
    finally:
        sys.stdout, sys.stderr = streams


def _run(args) -> int:
    problem = _option_problem(args)
    if problem:  # before any spec is compiled or file written
        print(f"dsfc {args.command}: error: {problem}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    try:
        with _spec_warnings_printed():
            return args.func(args)
    except SpecErrors as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_SPEC_ERROR
    except KeyboardInterrupt:
        return 130
    except FloatingPointError as exc:  # a module's NaN output of finite input (check_finite_output): the spec's maths
        print(f"dsfc {args.command}: error: the spec's layer gives NaN on this command's random input: {exc}",
              file=sys.stderr)
        return EXIT_SPEC_ERROR
    except ValueError as exc:  # check.CheckDimsError: a spec too large to check, or failing at the check dims
        from .check import CheckDimsError
        from .runtime.kernel_form import DenseSizeError

        # DenseSizeError: dense A_t (check's reference, plot) at sizes the user chose, not a bug in dsfc
        if not isinstance(exc, (CheckDimsError, DenseSizeError)):
            return _internal_error(args, exc)
        print(f"dsfc {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    except OSError as exc:  # an output path that cannot be written (write_atomic left no partial file)
        target = getattr(args, "output", None) or exc.filename  # the path asked for, not write_atomic's temp file
        reason = exc.strerror or exc
        blocking = next((d for d in Path(str(target)).parents if d.exists() and not d.is_dir()), None)
        if blocking is not None:  # mkdir of the parents said "File exists": name the file in the way
            reason = f"{blocking} is a file, not a directory"
        print(f"dsfc {args.command}: error: cannot write {target}: {reason}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    except Exception as exc:  # noqa: BLE001 - anything else is dsfc's bug: say so in one line, not a traceback
        return _internal_error(args, exc)


@contextlib.contextmanager
def _spec_warnings_printed():
    """Print each SpecWarning (``path:line:col: warning: ...``, a param nothing reads) once to stderr, as the errors
    are printed: Python's display added its own ``pipeline.py:83: SpecWarning:`` prefix and a line of dsfc's source,
    and a command that compiles a spec several times (check, compile --check) would repeat it. Other warnings go to
    Python's display as before."""
    shown: set[str] = set()
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, SpecWarning):
            return original(message, category, filename, lineno, file, line)
        if str(message) not in shown:
            shown.add(str(message))
            print(str(message), file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", SpecWarning)  # the registry of an earlier main() in this process hid them
        warnings.showwarning = show
        yield


class _PipeSafe:
    """stdout / stderr whose reader may go away (``dsfc compile bad.dsf 2>&1 | head -1``): a write to a closed pipe
    sends the rest of the stream to os.devnull and the command runs on, so its exit status is still the command's
    (it was 0, a spec error reported as success, and a compile stopped after its first file) and every file is
    still written or none is."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._discard()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard()

    def _discard(self) -> None:
        """Point the stream's file descriptor at os.devnull (so the interpreter's flush at exit does not complain
        either) and drop what was buffered for the closed pipe."""
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)


# torch.manual_seed takes -2**63 .. 2**64 - 1, and the check seeds generators with seed + 1 and seed + 2
_SEED_RANGE = (-(2**63), 2**63 - 1)
# compare pads both columns to --width: 10**11 ran out of memory padding the table ("out of memory; use smaller
# sizes", naming no option); no terminal or file viewer is wider than this
_MAX_WIDTH = 10_000
_DEFAULT_OUTPUT = {"compile": "generated/", "catalog": "docs/catalog.md", "plot": "<spec stem>.png"}


def _option_problem(args) -> str | None:
    """Why an option argparse accepted cannot be used, or None: an empty -o (``Path("")`` is the current directory,
    so compile wrote its modules there), a non-positive --width, a --seed torch cannot take (an overflow traceback
    after the spec compiled)."""
    if getattr(args, "output", None) == "":  # typically an unset shell variable: -o "$OUT"
        return (f"-o/--output is an empty path; give one, or leave -o out for the default "
                f"({_DEFAULT_OUTPUT[args.command]})")
    width = getattr(args, "width", None)
    if width is not None and width < 1:
        return f"--width must be at least 1, got {width}"
    if width is not None and width > _MAX_WIDTH:
        return f"--width must be at most {_MAX_WIDTH} (a line width in characters), got {width}"
    seed = getattr(args, "seed", None)
    if seed is not None and not _SEED_RANGE[0] <= seed <= _SEED_RANGE[1]:
        return f"--seed must be a 64-bit signed integer (-2**63 .. 2**63 - 1), got {seed}"
    return None


_SIZE_OPTIONS = {"bench": "a smaller -T, --batch or --dims", "check": "smaller --dims",
                 "plot": "a smaller --T or --dims"}


def _internal_error(args, exc: BaseException) -> int:
    """An exception the spec did not cause (an unsupported construct reaching a printer, say): one line naming it
    and where it was raised; the full traceback with DSFC_TRACEBACK=1."""
    import os
    import traceback

    if os.environ.get("DSFC_TRACEBACK") == "1":
        raise exc
    from dsfc.runtime.checks import out_of_memory

    if out_of_memory(exc):  # sizes the user chose (`bench -T 1000000000`): not a bug in dsfc
        import re

        asked = re.search(r"allocate (\d+) bytes", str(exc))
        size = f" ({int(asked.group(1)) / 2**30:.1f} GiB asked for)" if asked else ""
        options = _SIZE_OPTIONS.get(args.command, "smaller sizes")
        print(f"dsfc {args.command}: error: out of memory{size}; use {options}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    print(f"dsfc {args.command}: internal error: {type(exc).__name__}: {exc}{where}. This is a bug in dsfc, not in "
          "your spec; please report it with the spec (DSFC_TRACEBACK=1 prints the traceback)", file=sys.stderr)
    return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
