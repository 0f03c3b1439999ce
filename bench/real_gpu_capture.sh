#!/usr/bin/env bash
# Read-only capture on a real NVIDIA GPU host: gpu_facts through NVML and through the nvidia-smi
# fallback, the raw nvidia-smi answers they parse, and the gpu_facts benchmark.
# Nothing here changes the GPU: only NVML reads and nvidia-smi queries.
# Usage (from the repository root): bench/real_gpu_capture.sh OUTDIR   (wheels for ansible-core in .whl/)
set -u
out=${1:?usage: real_gpu_capture.sh OUTDIR}
work=$(mktemp -d)
mkdir -p "$out" "$work/capture"
cap=$work/capture
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
mkdir -p .build/ansible_collections/gpuvirt
ln -sfn ../../.. .build/ansible_collections/gpuvirt/fleet
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/.build ANSIBLE_COLLECTIONS_PATH=$PWD/.build
{
    echo "# date: $(date -u +%FT%TZ)"
    python3 -c 'import sys, pynvml; print("python", sys.version.split()[0]); print("pynvml", pynvml.__file__)'
    python3 -m pip show nvidia-ml-py 2>/dev/null | grep -E '^(Name|Version)'
    ansible --version | head -1
    head -1 /proc/driver/nvidia/version
} > "$cap/environment.txt" 2>&1
for args in "-L" "-q -x" "mig -lgip" "mig -lgipp" "--query-gpu=index,name,uuid,pci.bus_id,memory.total,memory.used,mig.mode.current --format=csv"; do
    name=$(echo "$args" | tr -c 'a-zA-Z0-9\n' '_' | cut -c1-40)
    # shellcheck disable=SC2086
    { echo "# nvidia-smi $args"; nvidia-smi $args; echo "# rc=$?"; } > "$cap/smi$name.txt" 2>&1
done
for backend in nvml nvidia-smi; do
    echo "{\"ANSIBLE_MODULE_ARGS\": {\"backend\": \"$backend\"}}" | python3 plugins/modules/gpu_facts.py > "$cap/gpu_facts-$backend.json" 2>&1
done
ansible localhost -c local -i localhost, -m gpuvirt.fleet.gpu_facts > "$cap/adhoc-fqcn.txt" 2>&1
echo "# rc=$?" >> "$cap/adhoc-fqcn.txt"
python3 bench/bench_gpu_facts.py --repeat 20 --label real-h100 --json "$cap/bench.json" > "$cap/bench.txt" 2>&1
cat "$cap/bench.txt"
tar -C "$work" -czf "$out/capture.tar.gz" capture
cp "$cap/bench.txt" "$cap/gpu_facts-nvml.json" "$out/"
