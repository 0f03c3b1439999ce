#!/usr/bin/env bash
# Read-only capture on a real NVIDIA GPU host: gpu_facts through NVML and through the nvidia-smi
# fallback, the raw nvidia-smi answers they parse, and the gpu_facts benchmark.
# Nothing here changes the GPU: only NVML reads and nvidia-smi queries.
# Usage (from the repository root): bench/real_gpu_capture.sh OUTDIR   (wheels for ansible-core in .whl/)
# The run is labelled with the GPUs it found ("real-h200", "real-8x-h100-80gb-hbm3"; LABEL=... overrides) and the
# label, the GPU names and the UTC date go into environment.txt, so that every figure names its GPU and its date.
set -u
out=${1:?usage: real_gpu_capture.sh OUTDIR}
work=$(mktemp -d)
mkdir -p "$out" "$work/capture"
cap=$work/capture
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH  # keeps a read-only guard's path
fi
mkdir -p .build/ansible_collections/gpuvirt
ln -sfn ../../.. .build/ansible_collections/gpuvirt/fleet
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/.build ANSIBLE_COLLECTIONS_PATH=$PWD/.build
# The GPU model(s) present: nvidia-smi's names (a query), else NVML's; "NVIDIA H100 80GB HBM3" -> h100-80gb-hbm3.
names=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null) || names=""
[ -n "$names" ] || names=$(python3 -c 'import pynvml as n; n.nvmlInit(); print("\n".join(n.nvmlDeviceGetName(n.nvmlDeviceGetHandleByIndex(i)) for i in range(n.nvmlDeviceGetCount())))' 2>/dev/null) || names=""
label_of() {
    sort | uniq -c | while read -r count name; do
        slug=$(printf '%s' "$name" | sed -e 's/^NVIDIA //' | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed -e 's/^-*//' -e 's/-*$//')
        if [ "$count" -gt 1 ]; then printf '%sx-%s\n' "$count" "$slug"; else printf '%s\n' "$slug"; fi
    done | paste -sd+ -
}
found=$(printf '%s\n' "$names" | sed '/^$/d' | label_of)
label=${LABEL:-real-${found:-unknown-gpu}}
{
    echo "# date: $(date -u +%FT%TZ)"
    echo "# label: $label"
    printf '%s\n' "$names" | sed '/^$/d; s/^/# gpu: /'
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
python3 bench/bench_gpu_facts.py --repeat 20 --label "$label" --json "$cap/bench.json" > "$cap/bench.txt" 2>&1
cat "$cap/bench.txt"
tar -C "$work" -czf "$out/capture.tar.gz" capture
cp "$cap/environment.txt" "$cap/bench.txt" "$cap/gpu_facts-nvml.json" "$out/"
