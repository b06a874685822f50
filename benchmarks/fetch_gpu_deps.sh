#!/usr/bin/env bash
# Prepare what a GPU device session needs and its image lacks (run here, where pip can reach PyPI):
#   .whl/      wheels for Python 3.12 x86_64: lark and black (+ platformdirs, pytokens) for dsfc itself, fla-core
#              0.6.0 for the fla anchors (pure Python; einops is on the image)
#   .anchors/  mamba-ssm 2.3.2.post1's Triton files from its sdist (ssd_*, selective_state_update, layernorm_gated,
#              ...; its CUDA extension cannot be built in a session), importable with empty __init__.py files
# Both folders are git-ignored locally (.git/info/exclude) and never committed. Then, on the device:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/.anchors
#   bash benchmarks/gpu_check.sh $OUT --loop-max-T 1024       (carry: .whl .anchors)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info
for d in /.whl/ /.anchors/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
black_version=$(python -c "import black; print(black.__version__)")
lark_version=$(python -c "import lark; print(lark.__version__)")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "lark==$lark_version" "black==$black_version" platformdirs pytokens fla-core==0.6.0
tmp=$(mktemp -d)
url=$(curl -s https://pypi.org/simple/mamba-ssm/ | grep -o 'https://[^"#]*mamba_ssm-2.3.2.post1.tar.gz' | head -1)
curl -sL "$url" | tar xz -C "$tmp"
src="$tmp/mamba_ssm-2.3.2.post1/mamba_ssm"
rm -rf .anchors && mkdir -p .anchors/mamba_ssm/ops/triton .anchors/mamba_ssm/utils
cp "$src"/ops/triton/*.py .anchors/mamba_ssm/ops/triton/
cp "$src"/utils/determinism.py "$src"/utils/torch.py .anchors/mamba_ssm/utils/
touch .anchors/mamba_ssm/__init__.py .anchors/mamba_ssm/ops/__init__.py .anchors/mamba_ssm/utils/__init__.py
rm -rf "$tmp"
du -sh .whl .anchors
