"""The GPU benchmark: generated kernels vs mamba-ssm / fla anchors (see dsfc/gpu_bench.py, or --help).

    python benchmarks/gpu_bench.py [--quick] [--groups s6 ssd gla linear_attention] [-T 1024 4096] [-o out.json]

Same as ``python -m dsfc.cli bench --gpu``; writes benchmarks/results/<device>.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dsfc, not an installed one

from dsfc.gpu_bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
