"""Write the MIG capability files the driver lists under /proc/driver/nvidia/capabilities, for every GPU and compute
instance the simulated host has now, under ROOT/driver/nvidia/capabilities (the test's stand-in for a simulator that
does not list them yet). The driver's numbering of /dev/nvidia-caps minors: 1 config, 2 monitor, then per GPU 15 GPU
instances of 9 minors each (the GPU instance's, then its 8 compute instances')."""
import json
import os
import shutil
import subprocess
import sys

root = os.path.join(sys.argv[1], 'driver', 'nvidia', 'capabilities')
state = json.loads(subprocess.run(['gpusimctl', 'show'], capture_output=True, text=True, check=True).stdout)
shutil.rmtree(root, ignore_errors=True)
for gpu in state['gpus']:
    for gi in gpu.get('gpu_instances', []):
        minor = 3 + gpu['minor'] * 135 + gi['id'] * 9
        base = os.path.join(root, 'gpu%d' % gpu['minor'], 'mig', 'gi%d' % gi['id'])
        os.makedirs(base)
        with open(os.path.join(base, 'access'), 'w', encoding='utf-8') as f:
            f.write('DeviceFileMinor: %d\nDeviceFileMode: 292\nDeviceFileModify: 1\n' % minor)
        for ci in gi['compute_instances']:
            os.makedirs(os.path.join(base, 'ci%d' % ci['id']))
            with open(os.path.join(base, 'ci%d' % ci['id'], 'access'), 'w', encoding='utf-8') as f:
                f.write('DeviceFileMinor: %d\nDeviceFileMode: 292\nDeviceFileModify: 1\n' % (minor + 1 + ci['id']))
